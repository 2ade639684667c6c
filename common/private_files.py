"""A site's state on disk is readable by the site's own user only: directories 0700, files 0600.

`state-dir` holds the privacy ledger (the site's whole spend and its jobs), the site's own log
(refusal reasons, names of unreadable files), the split key (which patients sit in validation)
and decoded copies of patient images (the cache). Other accounts on the same machine must read
none of it, whatever the umask: directories are created (and, when they already exist,
tightened to) 0700 and files created 0600. Atomic writes use the same modes
(`common.atomic.atomic_file(..., private=True)`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

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
