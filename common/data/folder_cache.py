"""The decoded-image cache of an ImageFolder tree: decode once, reload in milliseconds.

Keyed by the tree's files (path, label, size, modification time) and every setting that changes
what is decoded, so a changed file, a new file or another `image-size` decodes again. The cache
holds decoded copies of patient images: written 0600 in a 0700 directory on the site's own disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.data.imageset import LoadReport
from common.files import atomic_file

log = logging.getLogger("fedpath.data")
_CACHE_VERSION = "3"  # 2: skipped_files, max-image-pixels in the key; 3: content hashes, named conversions


@dataclass
class DecodedTree:
    """What decoding a tree's files gave: one row per readable file, and what was skipped or converted."""

    images: np.ndarray
    labels: np.ndarray
    paths: list[str]
    content: np.ndarray  # SHA-256 of each file's bytes
    report: LoadReport


def cache_dir() -> Path:
    """Where decoded arrays are cached: `$FEDPATH_CACHE_DIR`, else `~/.cache/fedpath`.

    The cache holds decoded copies of site images, so it belongs on the site's own disk,
    next to the data it was made from.
    """
    return Path(os.environ.get("FEDPATH_CACHE_DIR", Path.home() / ".cache" / "fedpath"))


def _file_key(path: Path) -> str:
    try:
        stat = path.stat()
    except OSError:  # a broken or looping link: it is skipped (or refused) on every load
        return "unreadable"
    return f"{stat.st_size}|{stat.st_mtime_ns}"


def cache_path(root: Path, files: list[tuple[str, int]], image_size: int, settings: str) -> Path:
    """The cache file of this tree decoded with these settings."""
    digest = hashlib.sha256(f"{_CACHE_VERSION}|{root.resolve()}|{image_size}|{settings}".encode())
    for rel, label in files:
        digest.update(f"{rel}|{label}|{_file_key(root / rel)}\n".encode())
    return cache_dir() / f"imagefolder-{digest.hexdigest()[:24]}.npz"


def load_cache(path: Path) -> DecodedTree | None:
    try:
        with np.load(path, allow_pickle=False) as blob:
            report = LoadReport(int(blob["skipped"]), blob["skipped_examples"].tolist(), int(blob["converted"]),
                                blob["skipped_files"].tolist(), conversions=json.loads(str(blob["conversions"])))
            return DecodedTree(blob["images"], blob["labels"], blob["paths"].tolist(), blob["content"], report)
    except (OSError, KeyError, ValueError) as err:
        log.warning("ignoring unreadable cache %s (%s); decoding again", path, err)
        return None


def save_cache(path: Path, tree: DecodedTree) -> None:
    report = tree.report
    try:
        with atomic_file(path, "wb", private=True) as handle:  # decoded patient images: 0600 in a 0700 directory
            np.savez(
                handle,
                images=tree.images,
                labels=tree.labels,
                paths=np.asarray(tree.paths, dtype=str),
                content=np.asarray(tree.content, dtype="<U64"),
                skipped=report.skipped,
                skipped_examples=np.asarray(report.skipped_examples, dtype=str),
                skipped_files=np.asarray(report.skipped_files, dtype=str),
                converted=report.converted,
                conversions=json.dumps(report.conversions),
            )
    except OSError as err:  # a read-only home must not stop training
        log.warning("could not write cache %s: %s", path, err)
