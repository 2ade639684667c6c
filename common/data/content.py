"""Which records are the same image: content hashes, one image under two labels, copies of test images.

A record's content hash is the SHA-256 of its bytes as stored: a file's bytes (what `sha256sum`
prints for it), or, for an array record (`.npz`, images made in memory), its dtype, shape and
bytes. Hospital exports repeat images (a PACS exports a study twice; an `.npz` copies test images
from train), so the same image can sit under two labels, or at a site and in the central test
set. The first trains on noise; the second makes the report state accuracy on images the model
trained on. Byte-identical copies are found exactly here; re-encoded copies are not (see
docs/PRIVACY.md, "Test images at the sites").

The central test set's hashes are public (hashes of the centre's own images): the centre writes
them in `sha256sum` format (`python -m server.test_hashes`), a deployed site reads them from the
file its node config names (`test-hashes`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from common.data.imageset import DataError

_HEX = re.compile(r"[0-9a-f]{64}")


def file_hash(path: Path) -> str:
    """SHA-256 of a file's bytes, as `sha256sum` prints it."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def array_hashes(images: np.ndarray) -> np.ndarray:
    """SHA-256 of each array record: its dtype and shape, then its bytes (equal bytes of another shape differ)."""
    rows = np.ascontiguousarray(images).reshape(len(images), -1)
    header = f"{images.dtype.str}{images.shape[1:]}".encode()
    return np.asarray([hashlib.sha256(header + row.tobytes()).hexdigest() for row in rows], dtype="<U64")


def conflicting_labels(content: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """A mask of the records whose bytes are also stored under another label.

    Which label is right cannot be known from the data, so every copy is dropped (not one kept).
    """
    if len(content) == 0:
        return np.zeros(0, dtype=bool)
    _, inverse = np.unique(content, return_inverse=True)
    pairs = np.unique(np.stack([inverse, labels]), axis=1)  # one column per (image, label) seen
    labels_per_image = np.bincount(pairs[0], minlength=int(inverse.max()) + 1)
    return labels_per_image[inverse] > 1


def copies_of(content: np.ndarray, known: Iterable[str]) -> np.ndarray:
    """A mask of the records whose hash is in `known` (e.g. the central test set's)."""
    known = set(known)
    return np.fromiter((h in known for h in content.tolist()), dtype=bool, count=len(content))


def hash_lines(content: np.ndarray, names: Iterable[str]) -> str:
    """`sha256sum` lines (`<hash>  <name>`), one per distinct hash."""
    seen: dict[str, str] = {}
    for digest, name in zip(content.tolist(), names):
        seen.setdefault(digest, name)
    return "".join(f"{digest}  {name}\n" for digest, name in sorted(seen.items()))


def read_hash_list(path: Path) -> frozenset[str]:
    """The SHA-256 hashes of a `sha256sum`-format file (a bare hash per line works too; `#` starts a comment).

    A line that holds no SHA-256 stops the load naming it, rather than leaving a test image in training.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read test-hashes file {path}: {err}") from None
    hashes: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        first = line.split()[0].lower().removeprefix("\\")
        if not _HEX.fullmatch(first):
            raise DataError(f"{path} line {number} does not start with a SHA-256 (64 hexadecimal digits): "
                            f"{line[:80]!r}; the file is `sha256sum` output of the centre's test images")
        hashes.add(first)
    return frozenset(hashes)


def describe_conflicts(content: np.ndarray, labels: np.ndarray, names: list[str], classes: list[str],
                       mask: np.ndarray) -> list[str]:
    """One line per image stored under several labels: 'a/1.png (benign) = b/7.png (tumour)'."""
    copies: dict[str, list[str]] = {}
    for i in np.flatnonzero(mask).tolist():
        copies.setdefault(str(content[i]), []).append(f"{names[i]} ({classes[int(labels[i])]})")
    return [" = ".join(group) for group in copies.values()]
