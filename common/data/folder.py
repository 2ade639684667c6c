"""ImageFolder trees (one sub-folder per class), decoded once and cached.

Hospital exports are messy: zero-byte files, thumbnails, stray text files, grayscale,
RGBA or 16-bit scans, oversized images, looping links. By default a file that fails to
open or decode, for whatever reason, is skipped, counted and named in the log; with
`strict` it is an error naming it. Hidden files and folders are never data. Problems of
the tree as a whole (empty or aliased class folders, malformed groups.csv) are refused
before anything is decoded (`common/data/tree_checks.py`, `common/data/groups_csv.py`). Every
image is converted to RGB and fitted to `image_size` by resize + centre crop
(`PIL.ImageOps.fit`), so odd sizes and aspect ratios are handled consistently.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from common.data.checks import DEFAULT_MAX_IMAGE_PIXELS, MAX_PIXELS_KEY, FileProblem, check_pixels
from common.data.groups_csv import GroupRows, read_group_rows, report_unmatched_rows
from common.data.imageset import DataError, ImageSet, LoadReport
from common.data.tree_checks import aliases_error, check_class_folders, is_hidden, seen_before
from common.files import atomic_file
from common.progress import progress

log = logging.getLogger("fedpath.data")
_CACHE_VERSION = "2"  # 2: skipped_files, max-image-pixels in the key


def cache_dir() -> Path:
    """Where decoded arrays are cached: `$FEDPATH_CACHE_DIR`, else `~/.cache/fedpath`.

    The cache holds decoded copies of site images, so it belongs on the site's own disk,
    next to the data it was made from.
    """
    return Path(os.environ.get("FEDPATH_CACHE_DIR", Path.home() / ".cache" / "fedpath"))


def to_rgb_array(img: Image.Image, image_size: int) -> tuple[np.ndarray, bool]:
    """RGB uint8 (image_size, image_size, 3); also says whether a mode conversion was needed."""
    converted = img.mode != "RGB"
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "P", "PA"):
        img = img.convert("RGBA")
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))  # slide background is white
        img = Image.alpha_composite(white, img)
    img = img.convert("RGB")
    if img.size != (image_size, image_size):
        img = ImageOps.fit(img, (image_size, image_size), method=Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8), converted


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


def _file_key(path: Path) -> str:
    try:
        stat = path.stat()
    except OSError:  # a broken or looping link: it is skipped (or refused) on every load
        return "unreadable"
    return f"{stat.st_size}|{stat.st_mtime_ns}"


def _fingerprint(root: Path, files: list[tuple[str, int]], image_size: int, settings: str) -> str:
    digest = hashlib.sha256(f"{_CACHE_VERSION}|{root.resolve()}|{image_size}|{settings}".encode())
    for rel, label in files:
        digest.update(f"{rel}|{label}|{_file_key(root / rel)}\n".encode())
    return digest.hexdigest()[:24]


def _let_pil_open(max_pixels: int) -> None:
    """PIL refuses images above 2 x `Image.MAX_IMAGE_PIXELS` by itself; let `max-image-pixels` decide.

    Only ever raised (process-wide), and only when a run asks for more than PIL allows.
    """
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels


def _decode(path: Path, image_size: int, max_pixels: int) -> tuple[np.ndarray, bool]:
    """One file as an RGB array; any failure is about this file alone."""
    if path.stat().st_size == 0:
        raise FileProblem("zero-byte file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # check_pixels decides
        try:
            img = Image.open(path)
        except Image.DecompressionBombError as err:
            raise FileProblem(f"{err} More than {MAX_PIXELS_KEY}={max_pixels:,} pixels (raise {MAX_PIXELS_KEY} if "
                              "this is a real image, or export it smaller)") from None
        with img:
            check_pixels(img.size, max_pixels)
            img.draft("RGB", (image_size, image_size))  # JPEG: decode at reduced scale
            return to_rgb_array(img, image_size)


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
        report_unmatched_rows(rows, {rel for rel, _ in tree.files})

    _let_pil_open(max_pixels)
    key = _fingerprint(root, tree.files, image_size, f"{max_pixels}") + ("-strict" if strict else "")
    cached = cache_dir() / f"imagefolder-{key}.npz"
    loaded = _load_cache(cached) if use_cache and cached.exists() else None
    if loaded is not None:
        images, label_array, paths, report = loaded
        log.info("loaded %d decoded images of %s from cache %s", len(label_array), root, cached)
    else:
        images, label_array, paths, report = _decode_all(root, tree, image_size, strict, max_pixels)
        if use_cache:
            _save_cache(cached, images, label_array, paths, report)
    for rel, err in unlistable:
        report.skip(rel, str(err))
    for rel in tree.hidden:
        report.hide(rel)
    _log_report(root, report)
    image_counts = np.bincount(label_array, minlength=len(tree.classes)).tolist()
    declared = check_class_folders(root, tree.classes, image_counts, known_classes, what="readable images")
    if declared:
        log.info("%s declares classes it has no images of (empty folders): %s", root, ", ".join(declared))
    return ImageSet(images, label_array, _groups_for(paths, rows), tree.classes, report, patient_groups=rows is not None)


def _decode_all(
    root: Path, tree: _Tree, image_size: int, strict: bool, max_pixels: int
) -> tuple[np.ndarray, np.ndarray, list[str], LoadReport]:
    report = LoadReport()
    images: list[np.ndarray] = []
    labels: list[int] = []
    paths: list[str] = []
    for rel, label in progress(tree.files, desc=f"decoding {root.name}", unit="img"):
        try:
            array, converted = _decode(root / rel, image_size, max_pixels)
        except Exception as err:  # noqa: BLE001 - any failure of one file must not end the run (strict=false)
            _skip_or_stop(report, root, rel, err, strict)
            continue
        report.converted += int(converted)
        images.append(array)
        labels.append(label)
        paths.append(rel)
    stacked = np.stack(images) if images else np.zeros((0, image_size, image_size, 3), np.uint8)
    return stacked, np.asarray(labels, dtype=np.int64), paths, report


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


def _groups_for(paths: list[str], rows: GroupRows | None) -> np.ndarray:
    if rows is None:
        return np.asarray(paths, dtype=str)
    missing = [p for p in paths if p not in rows.group_of]
    if missing:
        raise DataError(
            f"{len(missing)} images have no group in {rows.source} (e.g. {missing[:3]}); "
            "every image needs a row 'path,group' so splits can keep patients together"
        )
    return np.asarray([rows.group_of[p] for p in paths], dtype=str)


def _load_cache(path: Path) -> tuple[np.ndarray, np.ndarray, list[str], LoadReport] | None:
    try:
        with np.load(path, allow_pickle=False) as blob:
            report = LoadReport(int(blob["skipped"]), blob["skipped_examples"].tolist(), int(blob["converted"]),
                                blob["skipped_files"].tolist())
            return blob["images"], blob["labels"], blob["paths"].tolist(), report
    except (OSError, KeyError, ValueError) as err:
        log.warning("ignoring unreadable cache %s (%s); decoding again", path, err)
        return None


def _save_cache(path: Path, images: np.ndarray, labels: np.ndarray, paths: list[str], report: LoadReport) -> None:
    try:
        with atomic_file(path, "wb", private=True) as handle:  # decoded patient images: 0600 in a 0700 directory
            np.savez(
                handle,
                images=images,
                labels=labels,
                paths=np.asarray(paths, dtype=str),
                skipped=report.skipped,
                skipped_examples=np.asarray(report.skipped_examples, dtype=str),
                skipped_files=np.asarray(report.skipped_files, dtype=str),
                converted=report.converted,
            )
    except OSError as err:  # a read-only home must not stop training
        log.warning("could not write cache %s: %s", path, err)
