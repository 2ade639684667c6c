"""Rules of a MedMNIST-format `.npz` file: the container, the labels, the pixel scale, the image shape.

NumPy would unpickle, guess or silently cast what a hospital's export gets wrong; each rule
here refuses with the fix, or says in the log which scale it assumed.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.data.checks import FileProblem, check_pixels, few
from common.data.imageset import DataError
from common.data.pixels import PixelProblem, PixelScale
from common.data.pixels import to_uint8 as pixels_to_uint8

log = logging.getLogger("fedpath.data")


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
            f"{path} is a zip archive of {len(names)} file(s) ({few(names)}), not of NumPy arrays. If these are "
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
        raise DataError(f"{path}: {name} holds non-integer values ({few(sorted(set(bad.tolist())))}); "
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
                        path, len(absent), len(names), few(absent))
        return list(names)
    if len(present) != top + 1:
        gaps = sorted(set(range(top + 1)) - set(present.tolist()))
        raise DataError(
            f"{path}: the labels are {few(present.tolist(), 10)}, not 0..K-1 without gaps: they would make "
            f"{top + 1} classes, {len(gaps)} of them with no images (e.g. {gaps[:5]}). If a value such as "
            f"{top} marks 'unlabelled' or 'ignore', remove those images; if labels are codes, renumber them "
            "0..K-1 in a fixed order"
        )
    return [f"class-{i}" for i in range(top + 1)]



def to_uint8(images: np.ndarray, name: str, path: Path) -> tuple[np.ndarray, PixelScale]:
    """Pixel values as uint8 by the one rule of `common.data.pixels` (the scale read from the whole array's
    range), saying which scale was assumed; values no scale explains are refused naming the array."""
    try:
        converted, scale = pixels_to_uint8(images)
    except PixelProblem as err:
        raise DataError(f"{path}: {name} {err}") from None
    if not scale.as_stored:
        low, high = (float(images.min()), float(images.max())) if images.size else (0.0, 0.0)
        log.warning("%s: %s are %s in [%g, %g]; assumed the %s scale", path, name, images.dtype, low, high, scale.name)
    return converted, scale



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
