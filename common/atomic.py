"""Atomic file writes: readers see the old file or the new one, never a torn one.

The one recipe fedpath uses wherever a crash must not leave half a file (the privacy ledger,
checkpoints, the report, caches, weights): write a temp file beside the target, flush and
fsync it, rename it over the target, then fsync the directory so the rename itself survives
a power loss.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "w", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temp file for writing; on a clean exit it replaces `path` durably, on an error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    try:
        with open(tmp, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_file(path) as handle:
        handle.write(text)


def atomic_write_json(path: Path, payload: Any) -> None:
    with atomic_file(path) as handle:
        json.dump(payload, handle, indent=1)
