"""How fedpath writes files: atomically (never a torn file), and a site's state privately (0700/0600).

**Atomic.** The one recipe fedpath uses wherever a crash must not leave half a file (the privacy ledger,
checkpoints, the report, caches, weights): write a temp file beside the target, flush and
fsync it, rename it over the target, then fsync the directory so the rename itself survives
a power loss. `private=True` (a site's ledger, its image cache) creates the temp file 0600 in a
0700 directory, so the renamed file is never readable by other users, not even for a moment.

**Private.** `state-dir` holds the privacy ledger (the site's whole spend and its jobs), the site's
own log (refusal reasons, names of unreadable files), the split key (which patients sit in
validation) and decoded copies of patient images (the cache). Other accounts on the same machine
must read none of it, whatever the umask: directories are created (and, when they already exist,
tightened to) 0700 and files created 0600.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("fedpath.site")

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) and make it 0700; an existing directory is tightened too."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    if path.stat().st_mode & 0o777 != PRIVATE_DIR_MODE:
        try:
            path.chmod(PRIVATE_DIR_MODE)
        except OSError as err:  # not ours to change (e.g. another owner): say so, never fail a round on it
            log.warning("could not make %s private (mode 0700): %s", path, err)
    return path


def open_private(path: Path, flags: int) -> int:
    """os.open with mode 0600 for a new file; an existing file keeps its content and is made 0600."""
    fd = os.open(path, flags | os.O_CREAT, PRIVATE_FILE_MODE)
    if os.fstat(fd).st_mode & 0o777 != PRIVATE_FILE_MODE:
        os.fchmod(fd, PRIVATE_FILE_MODE)
    return fd


def append_private(path: Path, text: str) -> None:
    """Append `text` to a 0600 file in a 0700 directory (the site's own log)."""
    private_dir(Path(path).parent)
    with os.fdopen(open_private(Path(path), os.O_WRONLY | os.O_APPEND), "a", encoding="utf-8") as handle:
        handle.write(text)


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

    `private`: the file is created 0600 and its directory made 0700 (`private_dir`, `open_private`).
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


def load_or_create_key(path: Path) -> bytes:
    """A site's secret key file (hex, 0600): read it, or create 32 random bytes atomically.

    Written to a temp file, then linked into place (link fails if another process got there first,
    whose key is then used). Used for the split key and the ledger's integrity key.
    """
    private_dir(path.parent)  # the state-dir: 0700
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = open_private(tmp, os.O_WRONLY | os.O_TRUNC)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_bytes(32).hex() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        _fsync_dir(path.parent)
    key = read_key(path)
    assert key is not None
    return key


def read_key(path: Path) -> bytes | None:
    """The hex key in `path` (at least 16 bytes), None when there is no such file; ValueError when unusable."""
    path = Path(path)
    if not path.exists():
        return None
    if path.stat().st_mode & 0o077:  # a key file from before state-dir files were private: tighten it
        path.chmod(PRIVATE_FILE_MODE)
    try:
        key = bytes.fromhex(path.read_text().strip())
    except ValueError:
        key = b""
    if len(key) < 16:
        raise ValueError(f"{path} does not hold a hex key of at least 16 bytes; restore it from backup")
    return key
