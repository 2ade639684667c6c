"""The rules hospital exports break, one small function each; the loaders call them.

Data that is wrong in a way the loader cannot see becomes a model that is wrong in a way
nobody sees: 256 "classes" from labels that run to 255, black images from floats in
[0, 1], every image twice through a symlink. So each rule here either refuses with a
`DataError` naming the file (or line, or folder) and the fix, or, where the data is usable,
says in the log what was assumed. Messages go to the site's own log only; what a site
sends away is counts (see docs/PRIVACY.md).

Every message here is listed with its fix in docs/TROUBLESHOOTING.md ("Site data").
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
import os
import posixpath
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.data.imageset import DataError

log = logging.getLogger("fedpath.data")

MAX_PIXELS_KEY = "max-image-pixels"
DEFAULT_MAX_IMAGE_PIXELS = 80_000_000  # ~8,900 px square: far above any patch, below PIL's own bomb limit
_OS_CLUTTER = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini"})  # written by file managers, never data
_EXAMPLES = 5


class FileProblem(ValueError):
    """One file cannot be used; the loader skips it (strict=false) or stops (strict=true)."""


def _few(items: Sequence[object], limit: int = _EXAMPLES) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


# --- ImageFolder trees ---------------------------------------------------------------------


def is_hidden(name: str) -> bool:
    """Dot-files/folders (`.DS_Store`, `.ipynb_checkpoints`) and OS clutter are never data."""
    return name.startswith(".") or name in _OS_CLUTTER


def seen_before(directory: str, root_real: str, seen: dict[str, str]) -> str | None:
    """What `directory` (relative to the root) duplicates, or None after recording it.

    A directory reached twice (a symlink to another folder of the tree, or to the root or
    one of its parents) would feed the same images twice, possibly as another class.
    """
    real = os.path.realpath(os.path.join(root_real, directory))
    if real == root_real or root_real.startswith(real.rstrip(os.sep) + os.sep):
        return "." if real == root_real else real  # the root itself, or a folder above it: a loop
    if real in seen:
        return seen[real]
    seen[real] = directory
    return None


def _first_link(root: Path, rel: str) -> Path | None:
    """The first symlink on the way from `root` to `rel`, if any."""
    path = root
    for part in Path(rel).parts:
        path = path / part
        if path.is_symlink():
            return path
    return None


def aliases_error(root: Path, aliases: list[tuple[str, str]]) -> DataError:
    """The refusal for directories reached twice, naming each link and what it repeats."""
    lines = []
    for path, original in aliases:
        links = [link for link in (_first_link(root, path), _first_link(root, original) if original != "." and
                 not os.path.isabs(original) else None) if link is not None]
        via = f" (through the symlink {links[0]})" if links else ""
        if original == ".":
            lines.append(f"{root / path} is the data folder itself{via}")
        elif os.path.isabs(original):
            lines.append(f"{root / path} is {original}, a folder above the data folder (a loop){via}")
        else:
            lines.append(f"{root / path} and {root / original} are the same directory{via}")
    return DataError(
        "directories inside the data folder are reached twice, so their images would be read twice, possibly "
        "as another class: " + "; ".join(lines[:_EXAMPLES]) + (" ..." if len(lines) > _EXAMPLES else "")
        + ". Remove the link, or replace it by a real folder holding other images"
    )


def check_class_folders(
    root: Path, classes: list[str], counts: Sequence[int], known_classes: Sequence[str] | None = None,
    what: str = "files",
) -> list[str]:
    """Refuse a tree with fewer than 2 classes or with classes that hold no images.

    An empty folder would become a class that nothing is trained or tested on (macro
    metrics dragged down, nothing said). A deployed site may declare a class it has no
    images of with an empty folder, but only one the federation has (`known_classes`), and
    only if it has images of some class. Returns the classes so declared.
    """
    if known_classes is None and len(classes) < 2:
        raise DataError(
            f"{root} has only one class folder ({classes[0]!r}); a classifier needs at least 2 classes, one "
            f"sub-folder each. If {root / classes[0]} holds the class folders, point the data path there"
        )
    empty = [c for c, n in zip(classes, counts) if n == 0]
    declared = [c for c in empty if known_classes is not None and c in known_classes]
    wrong = empty if len(empty) == len(classes) else [c for c in empty if c not in declared]
    if wrong:
        named = ", ".join(str(root / c) for c in wrong)
        raise DataError(
            f"class folder(s) {named} hold no {what}, so each would be a class nothing is trained or tested "
            "on. Add its images or delete the folder"
            + ("" if what == "files" else " (the files there were skipped as unreadable; see the log above)")
        )
    return declared


def check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    """Refuse an image larger than `max-image-pixels` before it is decoded into memory."""
    width, height = size
    if width * height > max_pixels:
        raise FileProblem(
            f"{width} x {height} = {width * height:,} pixels, more than {MAX_PIXELS_KEY}={max_pixels:,} "
            f"(raise {MAX_PIXELS_KEY} if this is a real image, or export it smaller)"
        )


# --- groups.csv ----------------------------------------------------------------------------


@dataclass
class GroupRows:
    """`path,group` rows of a groups file, with the line each path came from."""

    source: Path
    group_of: dict[str, str] = field(default_factory=dict)
    line_of: dict[str, int] = field(default_factory=dict)


def normalise_relpath(path: str) -> str:
    """A groups.csv path in the loader's form: `/`-separated, no `./`, no stray spaces."""
    return posixpath.normpath(path.strip().replace("\\", "/")).removeprefix("./")


def _decode_csv(path: Path, raw: bytes) -> str:
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DataError(f"{path} is UTF-16 (Excel's 'Unicode Text'); save it as 'CSV UTF-8 (comma delimited)'")
    try:
        return raw.decode("utf-8-sig")  # Excel's "CSV UTF-8" starts with a byte-order mark
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(
            f"{path} line {line} is not UTF-8 text (byte {raw[err.start]:#04x}); save it as "
            "'CSV UTF-8 (comma delimited)'"
        ) from None


def read_group_rows(path: Path) -> GroupRows:
    """Parse a `path,group` file; any malformed row is an error naming its line.

    UTF-8 with or without a BOM, LF or CRLF, comma, semicolon or tab separated (the
    separator is read from the header). A row without a group must not put its image
    into a shared group, so it stops the load.
    """
    try:
        text = _decode_csv(path, path.read_bytes())
    except OSError as err:
        raise DataError(f"cannot read groups file {path}: {err}") from err
    first = text.splitlines()[0] if text else ""
    delimiter = max(",;\t", key=first.count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = [h.strip().lower() for h in next(reader, [])]
    if "path" not in header or "group" not in header:
        raise DataError(f"{path} must have the header 'path,group' on its first line, got {first[:80]!r}")
    ip, ig = header.index("path"), header.index("group")
    rows = GroupRows(path)
    problems: list[str] = []
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) > len(header):
            problems.append(f"line {line}: {len(row)} fields, the header has {len(header)} (quote a path or "
                            "group that holds the separator)")
            continue
        cells = row + [""] * (len(header) - len(row))
        rel, group = normalise_relpath(cells[ip]), cells[ig].strip()
        if not cells[ip].strip():
            problems.append(f"line {line}: no path")
        elif not group:
            problems.append(f"line {line}: {cells[ip].strip()!r} has no group")
        elif posixpath.isabs(rel) or rel.startswith("../"):
            problems.append(f"line {line}: {cells[ip].strip()!r} is not relative to the data folder")
        elif rel in rows.group_of and rows.group_of[rel] != group:
            problems.append(f"line {line}: {rel!r} is given group {group!r}, but {rows.group_of[rel]!r} on line "
                            f"{rows.line_of[rel]}")
        else:
            rows.group_of.setdefault(rel, group)
            rows.line_of.setdefault(rel, line)
    if problems:
        raise DataError(
            f"{path} has {len(problems)} malformed row(s): {'; '.join(problems[:_EXAMPLES])}"
            + (" ..." if len(problems) > _EXAMPLES else "")
            + ". Every row is 'path,group': the image's path relative to the data folder and the patient or "
            "slide it comes from"
        )
    return rows


def report_unmatched_rows(rows: GroupRows, present: set[str]) -> list[str]:
    """Warn about rows naming files the tree does not hold (renamed, moved, deleted)."""
    missing = sorted((rows.line_of[p], p) for p in rows.group_of if p not in present)
    if missing:
        log.warning(
            "%s lists %d file(s) that are not in the data folder (ignored; renamed, moved or deleted?): %s",
            rows.source, len(missing), _few([f"line {n}: {p}" for n, p in missing]),
        )
    return [p for _, p in missing]


# --- .npz files ----------------------------------------------------------------------------


def check_npz_container(path: Path) -> None:
    """Refuse files that are not a zip of .npy arrays before NumPy guesses (and suggests pickle)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(64)
    except OSError as err:
        raise DataError(f"cannot read {path}: {err}") from err
    if head.startswith(b"\x93NUMPY"):
        raise DataError(f"{path} is a single NumPy array (.npy), not an .npz archive; save the arrays with "
                        "numpy.savez(path, train_images=..., train_labels=..., test_images=..., test_labels=...)")
    if not head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        looks = "text" if head and all(32 <= b < 127 or b in b"\t\r\n" for b in head) else "binary data"
        raise DataError(f"{path} is not a valid .npz file (a zip archive of .npy arrays): it holds {looks} "
                        f"starting {head[:16]!r}. Export it with numpy.savez")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(f"{path} is a damaged zip archive ({err}); copy or export it again") from None
    if not any(n.endswith(".npy") for n in names):
        raise DataError(
            f"{path} is a zip archive of {len(names)} file(s) ({_few(names)}), not of NumPy arrays. If these are "
            "images, unpack them into an ImageFolder tree (one sub-folder per class) and use that folder"
        )


def label_vector(raw: np.ndarray, name: str, path: Path) -> np.ndarray:
    """One integer class per image, or an error saying what the array looks like instead."""
    labels = np.asarray(raw)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"{path}: {name} has shape {labels.shape}; fedpath needs one integer class per image. "
                        "For one-hot labels store labels.argmax(1); multi-label data is not supported")
    if labels.dtype.kind in "iub":
        return labels.astype(np.int64)
    if labels.dtype.kind == "f":
        bad = labels[~np.isfinite(labels) | (labels != np.round(labels))] if len(labels) else labels
        if len(bad) == 0:
            return labels.astype(np.int64)
        raise DataError(f"{path}: {name} holds non-integer values ({_few(sorted(set(bad.tolist())))}); "
                        "labels are class numbers 0..K-1")
    raise DataError(f"{path}: {name} holds {labels.dtype} values; store class numbers 0..K-1 (keep the class "
                    "names in order elsewhere)")


def check_label_range(labels: np.ndarray, name: str, classes: Sequence[str], path: Path) -> None:
    """Refuse labels the given class list does not explain."""
    bad = labels[(labels < 0) | (labels >= len(classes))]
    if len(bad):
        raise DataError(
            f"{path}: {name} holds labels {sorted(set(bad.tolist()))[:10]} outside 0..{len(classes) - 1}; "
            f"the federation has {len(classes)} classes ({', '.join(classes)})"
        )


def classes_from_labels(labels: Sequence[np.ndarray], path: Path, names: Sequence[str] = ()) -> list[str]:
    """The class list an .npz's labels imply, K >= 2.

    `names` (PathMNIST's, for a file named so) explain labels below len(names); a class
    with no images is then said in the log. Otherwise labels must run 0..K-1 without
    gaps and the classes are `class-0..class-K-1`: labels such as {0, 1, 255} would
    otherwise make 256 classes, 253 of them empty.
    """
    present = np.unique(np.concatenate([np.asarray(x) for x in labels])) if labels else np.zeros(0, int)
    if len(present) and present[0] < 0:
        raise DataError(f"{path}: negative labels {present[present < 0][:10].tolist()}; labels are class "
                        "numbers 0..K-1")
    if len(present) < 2:
        raise DataError(f"{path}: every image has label {present.tolist()}; a classifier needs at least 2 "
                        "classes")
    top = int(present[-1])
    if top < len(names):
        absent = [names[i] for i in range(len(names)) if i not in set(present.tolist())]
        if absent:
            log.warning("%s has no images of %d of its %d classes (%s): they are never trained or tested on",
                        path, len(absent), len(names), _few(absent))
        return list(names)
    if len(present) != top + 1:
        gaps = sorted(set(range(top + 1)) - set(present.tolist()))
        raise DataError(
            f"{path}: the labels are {_few(present.tolist(), 10)}, not 0..K-1 without gaps: they would make "
            f"{top + 1} classes, {len(gaps)} of them with no images (e.g. {gaps[:5]}). If a value such as "
            f"{top} marks 'unlabelled' or 'ignore', remove those images; if labels are codes, renumber them "
            "0..K-1 in a fixed order"
        )
    return [f"class-{i}" for i in range(top + 1)]


def to_uint8(images: np.ndarray, name: str, path: Path) -> np.ndarray:
    """Pixel values as uint8, saying which scale was assumed; refuse values no scale explains.

    Floats must be in [0, 1] or [0, 255]; integers in 0..255 or 0..65535 (16-bit).
    """
    if images.dtype == np.uint8:
        return images
    kind = images.dtype.kind
    if kind not in "iuf":
        raise DataError(f"{path}: {name} holds {images.dtype} values, not pixel intensities")
    if kind == "f" and images.size and not np.isfinite(images).all():
        raise DataError(f"{path}: {name} holds {int((~np.isfinite(images)).sum())} NaN or infinite values")
    low, high = (float(images.min()), float(images.max())) if images.size else (0.0, 0.0)
    if low < 0:
        raise DataError(f"{path}: {name} ({images.dtype}) has values down to {low:g}: pixels cannot be negative "
                        "(normalised with a mean and std?); store the raw pixel values")
    if kind == "f" and high <= 1.0:
        top, scale = 1.0, "[0, 1]"
    elif high <= 255:
        top, scale = 255.0, "[0, 255]"
    elif kind != "f" and high <= 65535:
        top, scale = 65535.0, "16-bit [0, 65535]"
    else:
        valid = "[0, 1] nor [0, 255]" if kind == "f" else "0..255 nor 0..65535"
        raise DataError(f"{path}: {name} ({images.dtype}) has values up to {high:g}, which fit neither {valid}; "
                        "store 8-bit pixel values")
    log.warning("%s: %s are %s in [%g, %g]; assumed the %s scale", path, name, images.dtype, low, high, scale)
    return np.clip(images.astype(np.float32) * np.float32(255.0 / top) + np.float32(0.5), 0, 255).astype(np.uint8)


def check_image_shape(images: np.ndarray, name: str, path: Path, max_pixels: int) -> None:
    """(N, H, W) or (N, H, W, 1|3|4), within `max-image-pixels`."""
    if images.ndim == 4 and images.shape[-1] not in (1, 3, 4) and images.shape[1] in (1, 3, 4):
        raise DataError(f"{path}: {name} has shape {images.shape}, channels first; store (N, H, W, C) "
                        "(numpy.transpose(images, (0, 2, 3, 1)))")
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3, 4)):
        raise DataError(f"{path}: expected {name} of shape (N, H, W[, 1|3|4]), got {images.shape}")
    try:
        check_pixels((int(images.shape[2]), int(images.shape[1])), max_pixels)
    except FileProblem as err:
        raise DataError(f"{path}: {name} are {err}") from None


# --- the whole dataset ---------------------------------------------------------------------


def check_splittable(labels: np.ndarray, groups: np.ndarray, classes: Sequence[str], where: str) -> None:
    """Refuse a pool no group-aware test hold-out can serve, naming the real cause.

    A group (patient, slide) is never split, so a class needs images from 2 or more groups
    to be both in the central test set and at the sites. Without this, such data fails
    later with a message about test-fraction, which is not what is wrong.
    """
    if len(labels) == 0:
        raise DataError(f"{where} holds no images")
    present = sorted(set(labels.tolist()))
    if len(present) < 2:
        raise DataError(f"{where}: only class {classes[present[0]]!r} has images; a classifier needs images of "
                        "at least 2 classes")
    lonely = [classes[c] for c in present if len(set(groups[labels == c].tolist())) < 2]
    if not lonely:
        return
    layout = (" Most classes hold a single group: if each sub-folder is one patient or slide rather than one "
              "class, arrange the images in one sub-folder per class (and name patients in groups.csv)."
              if len(lonely) > len(present) / 2 else "")
    raise DataError(
        f"{where}: {len(lonely)} of {len(present)} classes have images of only one group (patient or slide): "
        f"{_few(lonely)}. A group is never split, so such a class cannot be both in the held-out test set and "
        f"at the sites: add images of more patients, or check groups.csv.{layout}"
    )
