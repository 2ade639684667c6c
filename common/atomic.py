"""Atomic file writes: readers see the old file or the new one, never a torn one.

The one recipe fedpath uses wherever a crash must not leave half a file (the privacy ledger,
checkpoints, the report, caches, weights): write a temp file beside the target, flush and
fsync it, rename it over the target, then fsync the directory so the rename itself survives
a power loss. `private=True` (a site's ledger, its image cache) creates the temp file 0600 in a
0700 directory (`common.private_files`), so the renamed file is never readable by other users,
not even for a moment.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from common.private_files import open_private, private_dir


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "w", encoding: str | None = None,
                private: bool = False) -> Iterator[IO[Any]]:
    """Open a temp file for writing; on a clean exit it replaces `path` durably, on an error it is removed.

    `private`: the file is created 0600 and its directory made 0700 (see `common.private_files`).
    """
    path = Path(path)
    if private:
        private_dir(path.parent)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    opener = (lambda name, flags: open_private(Path(name), flags)) if private else None
    try:
        with open(tmp, mode, encoding=encoding, opener=opener) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str, private: bool = False) -> None:
    with atomic_file(path, private=private) as handle:
        handle.write(text)


def atomic_write_json(path: Path, payload: Any, private: bool = False) -> None:
    with atomic_file(path, private=private) as handle:
        json.dump(payload, handle, indent=1)
