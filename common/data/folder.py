"""ImageFolder trees (one sub-folder per class), decoded once and cached.

Hospital exports are messy: zero-byte files, thumbnails, stray text files, grayscale,
RGBA, 16-bit or float scans, rotated JPEGs, oversized images, looping links, the same image
twice. By default a file that fails to open or decode, for whatever reason, is skipped,
counted and named in the log; with `strict` it is an error naming it. Hidden files and folders
are never data. Problems of the tree as a whole (empty, aliased or same-named class folders,
malformed groups.csv) are refused before anything is decoded (`common/data/tree_checks.py`,
`common/data/groups_csv.py`). Every file is decoded as a viewer shows it (`common/data/decode.py`:
stored bit depth and EXIF orientation) and fitted to `image_size` by resize + centre crop
(`PIL.ImageOps.fit`); byte-identical files under different classes are dropped (`strict`: refused).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from common.data.checks import DEFAULT_MAX_IMAGE_PIXELS, FileProblem, few
from common.data.content import conflicting_labels, describe_conflicts, file_hash
from common.data.decode import decode_file
from common.data.folder_cache import DecodedTree, cache_dir, cache_path, load_cache, save_cache
from common.data.groups_csv import GroupRows, nfc, read_group_rows, report_unmatched_rows
from common.data.imageset import DataError, ImageSet, LoadReport
from common.data.tree_checks import aliases_error, check_class_folders, check_class_names, is_hidden, seen_before
from common.progress import progress

log = logging.getLogger("fedpath.data")
__all__ = ["cache_dir", "load_image_folder", "read_groups_csv"]


@dataclass
class _Tree:
    """What a scan of an ImageFolder tree found, before any image is opened."""

    classes: list[str]
    files: list[tuple[str, int]] = field(default_factory=list)
    hidden: list[str] = field(default_factory=list)
    unlistable: list[tuple[str, str]] = field(default_factory=list)
    aliases: list[tuple[str, str]] = field(default_factory=list)


def _scan(root: Path) -> _Tree:
    """Class folders and their files, following symlinks but never into the same directory twice."""
    hidden = [p.name for p in root.iterdir() if is_hidden(p.name)]
    tree = _Tree(sorted(p.name for p in root.iterdir() if not is_hidden(p.name) and p.is_dir()), hidden=hidden)
    if not tree.classes:
        raise DataError(f"{root} has no class sub-folders; an ImageFolder tree has one folder per class")
    check_class_names(root, tree.classes)
    root_real, seen = os.path.realpath(root), dict[str, str]()

    def unlistable(err: OSError) -> None:
        tree.unlistable.append((os.path.relpath(err.filename or "?", root), err.strerror or str(err)))

    for label, name in enumerate(tree.classes):
        for dirpath, dirnames, filenames in os.walk(root / name, onerror=unlistable, followlinks=True):
            rel_dir = os.path.relpath(dirpath, root)
            original = seen_before(rel_dir, root_real, seen)
            if original is not None:
                tree.aliases.append((rel_dir, original))
                dirnames[:] = []
                continue
            tree.hidden += [os.path.join(rel_dir, d) for d in dirnames if is_hidden(d)]
            dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
            for filename in sorted(filenames):
                rel = os.path.join(rel_dir, filename)
                if is_hidden(filename):
                    tree.hidden.append(rel)
                elif filename != "groups.csv":
                    tree.files.append((rel, label))
    tree.files.sort()
    return tree


def read_groups_csv(path: Path) -> dict[str, str]:
    """`path,group` rows (paths relative to the data root) as a mapping."""
    return read_group_rows(path).group_of


def _let_pil_open(max_pixels: int) -> None:
    """PIL refuses images above 2 x `Image.MAX_IMAGE_PIXELS` by itself; let `max-image-pixels` decide.

    Only ever raised (process-wide), and only when a run asks for more than PIL allows.
    """
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels


_EXPECTED = (FileProblem, UnidentifiedImageError, OSError, ValueError, SyntaxError)


def _skip_or_stop(report: LoadReport, root: Path, rel: str, err: BaseException, strict: bool) -> None:
    reason = str(err) or type(err).__name__
    if not isinstance(err, _EXPECTED):
        reason = f"{type(err).__name__}: {reason}"
    if strict:
        raise DataError(f"unreadable image {root / rel}: {reason} (strict=true; remove it or set strict=false)") from err
    report.skip(rel, reason)


def load_image_folder(
    root: Path, image_size: int, groups_csv: Path | None = None, strict: bool = False, use_cache: bool = True,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, known_classes: Sequence[str] | None = None,
) -> ImageSet:
    """Decode an ImageFolder tree into an `ImageSet`, checking it before and after.

    Groups come from `groups_csv` (default: `root/groups.csv` when present); without one
    every image is its own group, which is only right if no patient has several images.
    `known_classes` is the federation's class list at a deployed site: an empty folder
    named after one of them declares a class the site has no images of.
    """
    if not root.exists():
        raise DataError(f"data path {root} does not exist")
    if not root.is_dir():
        raise DataError(f"data path {root} is not a directory (expected an ImageFolder tree or an .npz file)")
    tree = _scan(root)
    if tree.aliases:
        raise aliases_error(root, tree.aliases)
    closed = [f"{root / rel} ({reason})" for rel, reason in tree.unlistable if rel in tree.classes]
    if closed:
        raise DataError(f"cannot list class folder(s) {', '.join(closed)}; give the site's user read access")
    unlistable = [(rel, OSError(f"cannot list this folder: {reason}")) for rel, reason in tree.unlistable]
    if strict and unlistable:
        _skip_or_stop(LoadReport(), root, *unlistable[0], strict=True)
    file_counts = np.bincount([label for _, label in tree.files], minlength=len(tree.classes)).tolist()
    check_class_folders(root, tree.classes, file_counts, known_classes)
    groups_path = groups_csv or (root / "groups.csv" if (root / "groups.csv").exists() else None)
    rows = read_group_rows(groups_path) if groups_path else None
    if rows is not None:
        report_unmatched_rows(rows, {nfc(rel) for rel, _ in tree.files})

    _let_pil_open(max_pixels)
    decoded = _decoded(root, tree, image_size, strict, max_pixels, use_cache)
    report = decoded.report
    for rel, err in unlistable:
        report.skip(rel, str(err))
    for rel in tree.hidden:
        report.hide(rel)
    _log_report(root, report)
    decoded = _drop_conflicting(root, tree.classes, decoded, strict)
    image_counts = np.bincount(decoded.labels, minlength=len(tree.classes)).tolist()
    declared = check_class_folders(root, tree.classes, image_counts, known_classes, what="readable images")
    if declared:
        log.info("%s declares classes it has no images of (empty folders): %s", root, ", ".join(declared))
    return ImageSet(decoded.images, decoded.labels, _groups_for(decoded.paths, rows), tree.classes, report,
                    patient_groups=rows is not None, content=decoded.content)


def _decoded(root: Path, tree: _Tree, image_size: int, strict: bool, max_pixels: int, use_cache: bool) -> DecodedTree:
    """The tree's files decoded: from the cache where these files were decoded with these settings."""
    cached = cache_path(root, tree.files, image_size, f"{max_pixels}{'-strict' if strict else ''}")
    loaded = load_cache(cached) if use_cache and cached.exists() else None
    if loaded is not None:
        log.info("loaded %d decoded images of %s from cache %s", len(loaded.labels), root, cached)
        return loaded
    decoded = _decode_all(root, tree, image_size, strict, max_pixels)
    if use_cache:
        save_cache(cached, decoded)
    return decoded


def _decode_all(root: Path, tree: _Tree, image_size: int, strict: bool, max_pixels: int) -> DecodedTree:
    report = LoadReport()
    images: list[np.ndarray] = []
    labels: list[int] = []
    paths: list[str] = []
    content: list[str] = []
    for rel, label in progress(tree.files, desc=f"decoding {root.name}", unit="img"):
        try:
            done = decode_file(root / rel, image_size, max_pixels)
            digest = file_hash(root / rel)
        except Exception as err:  # noqa: BLE001 - any failure of one file must not end the run (strict=false)
            _skip_or_stop(report, root, rel, err, strict)
            continue
        report.count(done.conversions)
        images.append(done.array)
        labels.append(label)
        paths.append(rel)
        content.append(digest)
    stacked = np.stack(images) if images else np.zeros((0, image_size, image_size, 3), np.uint8)
    return DecodedTree(stacked, np.asarray(labels, dtype=np.int64), paths, np.asarray(content, dtype="<U64"), report)


def _drop_conflicting(root: Path, classes: list[str], decoded: DecodedTree, strict: bool) -> DecodedTree:
    """Byte-identical files under different classes: every copy dropped (named in the log), or refused (strict)."""
    mask = conflicting_labels(decoded.content, decoded.labels)
    if not mask.any():
        return decoded
    copies = describe_conflicts(decoded.content, decoded.labels, decoded.paths, classes, mask)
    what = (f"{int(mask.sum())} files under {root} are byte-identical copies filed under different classes, so "
            f"their class cannot be known: {few(copies)}")
    if strict:
        raise DataError(f"{what}. Delete the copy in the wrong class folder (strict=true refuses them; with "
                        "strict=false every copy is dropped)")
    for line in copies:
        log.info("dropped under %s (one image under several classes): %s", root, line)
    log.warning("%s; dropped every copy. Delete the copy in the wrong class folder to keep the image", what)
    keep = ~mask
    decoded.report.conflicting = int(mask.sum())
    return DecodedTree(decoded.images[keep], decoded.labels[keep], [p for p, k in zip(decoded.paths, keep) if k],
                       decoded.content[keep], decoded.report)


def _log_report(root: Path, report: LoadReport) -> None:
    """Name every skipped file in this process's log (the site's own); counts go elsewhere."""
    for entry in report.skipped_files:
        log.info("skipped under %s: %s", root, entry)
    if report.skipped:
        log.warning(
            "skipped %d unreadable or non-image files under %s, e.g. %s",
            report.skipped, root, "; ".join(report.skipped_examples),
        )
    if report.hidden:
        log.warning(
            "skipped %d hidden files or folders under %s (never used as data), e.g. %s",
            report.hidden, root, ", ".join(report.hidden_examples),
        )
    if report.conversions:
        log.info("converted %d files under %s: %s", report.converted, root, report.summary())


def _groups_for(paths: list[str], rows: GroupRows | None) -> np.ndarray:
    if rows is None:
        return np.asarray(paths, dtype=str)
    missing = [p for p in paths if nfc(p) not in rows.group_of]
    if missing:
        raise DataError(
            f"{len(missing)} images have no group in {rows.source} (e.g. {missing[:3]}); "
            "every image needs a row 'path,group' so splits can keep patients together"
        )
    return np.asarray([rows.group_of[nfc(p)] for p in paths], dtype=str)
