"""ImageFolder trees (one sub-folder per class), decoded once and cached.

Hospital exports are messy: zero-byte files, thumbnails, stray text files, grayscale,
RGBA or 16-bit scans. By default such files are skipped and counted; with `strict` any of
them is an error. Every image is converted to RGB and fitted to `image_size` by resize +
centre crop (`PIL.ImageOps.fit`), so odd sizes and aspect ratios are handled consistently.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from common.data.imageset import DataError, ImageSet, LoadReport
from common.progress import progress

log = logging.getLogger("fedpath.data")
_CACHE_VERSION = "1"


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


def _list_files(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root} has no class sub-folders; an ImageFolder tree has one folder per class")
    files: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        for dirpath, _, filenames in os.walk(root / name):
            for filename in sorted(filenames):
                rel = os.path.relpath(os.path.join(dirpath, filename), root)
                files.append((rel, label))
    files.sort()
    return classes, files


def read_groups_csv(path: Path) -> dict[str, str]:
    """`path,group` rows (paths relative to the data root) as a mapping."""
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or not {"path", "group"} <= set(reader.fieldnames):
                raise DataError(f"{path} must have the header 'path,group', got {reader.fieldnames}")
            return {row["path"].lstrip("./"): row["group"] for row in reader}
    except OSError as err:
        raise DataError(f"cannot read groups file {path}: {err}") from err


def _fingerprint(root: Path, files: list[tuple[str, int]], image_size: int) -> str:
    digest = hashlib.sha256(f"{_CACHE_VERSION}|{root.resolve()}|{image_size}".encode())
    for rel, label in files:
        stat = (root / rel).stat()
        digest.update(f"{rel}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def load_image_folder(
    root: Path, image_size: int, groups_csv: Path | None = None, strict: bool = False, use_cache: bool = True
) -> ImageSet:
    """Decode an ImageFolder tree into an `ImageSet`.

    Groups come from `groups_csv` (default: `root/groups.csv` when present); without one
    every image is its own group, which is only right if no patient has several images.
    """
    if not root.exists():
        raise DataError(f"data path {root} does not exist")
    if not root.is_dir():
        raise DataError(f"data path {root} is not a directory (expected an ImageFolder tree or an .npz file)")
    classes, files = _list_files(root)
    groups_path = groups_csv or (root / "groups.csv" if (root / "groups.csv").exists() else None)
    group_of = read_groups_csv(groups_path) if groups_path else {}

    key = _fingerprint(root, files, image_size) + ("-strict" if strict else "")
    cached = cache_dir() / f"imagefolder-{key}.npz"
    if use_cache and cached.exists():
        try:
            with np.load(cached, allow_pickle=False) as blob:
                report = LoadReport(int(blob["skipped"]), blob["skipped_examples"].tolist(), int(blob["converted"]))
                images, labels, paths = blob["images"], blob["labels"], blob["paths"].tolist()
            log.info("loaded %d decoded images of %s from cache %s", len(labels), root, cached)
            return ImageSet(images, labels, _groups_for(paths, group_of, groups_path), classes, report)
        except (OSError, KeyError, ValueError) as err:
            log.warning("ignoring unreadable cache %s (%s); decoding again", cached, err)

    report = LoadReport()
    images: list[np.ndarray] = []
    labels: list[int] = []
    paths: list[str] = []
    for rel, label in progress(files, desc=f"decoding {root.name}", unit="img"):
        path = root / rel
        if path.name == "groups.csv":
            continue
        try:
            if path.stat().st_size == 0:
                raise ValueError("zero-byte file")
            with Image.open(path) as img:
                img.draft("RGB", (image_size, image_size))  # JPEG: decode at reduced scale
                array, converted = to_rgb_array(img, image_size)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
            reason = str(err) or type(err).__name__
            if strict:
                raise DataError(f"unreadable image {path}: {reason} (strict=true; remove it or set strict=false)") from err
            report.skip(rel, reason)
            continue
        report.converted += int(converted)
        images.append(array)
        labels.append(label)
        paths.append(rel)
    if report.skipped:
        log.warning(
            "skipped %d unreadable or non-image files under %s, e.g. %s",
            report.skipped,
            root,
            "; ".join(report.skipped_examples),
        )
    stacked = np.stack(images) if images else np.zeros((0, image_size, image_size, 3), np.uint8)
    label_array = np.asarray(labels, dtype=np.int64)
    if use_cache:
        _save_cache(cached, stacked, label_array, paths, report)
    return ImageSet(stacked, label_array, _groups_for(paths, group_of, groups_path), classes, report)


def _groups_for(paths: list[str], group_of: dict[str, str], groups_path: Path | None) -> np.ndarray:
    if not group_of:
        return np.asarray(paths, dtype=str)
    missing = [p for p in paths if p not in group_of]
    if missing:
        raise DataError(
            f"{len(missing)} images have no group in {groups_path} (e.g. {missing[:3]}); "
            "every image needs a row 'path,group' so splits can keep patients together"
        )
    return np.asarray([group_of[p] for p in paths], dtype=str)


def _save_cache(path: Path, images: np.ndarray, labels: np.ndarray, paths: list[str], report: LoadReport) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
        np.savez(
            tmp,
            images=images,
            labels=labels,
            paths=np.asarray(paths, dtype=str),
            skipped=report.skipped,
            skipped_examples=np.asarray(report.skipped_examples, dtype=str),
            converted=report.converted,
        )
        os.replace(tmp, path)
    except OSError as err:  # a read-only home must not stop training
        log.warning("could not write cache %s: %s", path, err)
