"""The site's own secret for its train/validation split, kept in its state directory.

Which patients sit in a site's local validation split must not be something the coordinator
can predict or choose (validation patients are not protected by the DP update in the same way,
and moving records between sides changes the neighbouring datasets). The split is keyed
(`common.data.partition.keyed_train_val`); the key is the site's: `split-key` in its node
config, or 32 random bytes generated once into `state-dir/split-key` (mode 0600, back it up
with the ledger: a new key reshuffles the split).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from client.identity import SiteIdentity
from common.files import PRIVATE_FILE_MODE, open_private, private_dir

SPLIT_KEY_FILE = "split-key"


def site_split_key(identity: SiteIdentity) -> bytes:
    """The deployed site's split key: from its node config, else from (or created in) its state dir."""
    if identity.split_key:
        return hashlib.sha256(f"fedpath-split-key:{identity.split_key}".encode()).digest()
    return load_or_create_key(identity.state_dir / SPLIT_KEY_FILE)


def load_or_create_key(path: Path) -> bytes:
    """Read a hex key, or create it atomically: written to a temp file, then linked into place
    (link fails if another process got there first, whose key is then used)."""
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
    if path.stat().st_mode & 0o077:  # a key file from before state-dir files were private: tighten it
        path.chmod(PRIVATE_FILE_MODE)
    try:
        key = bytes.fromhex(path.read_text().strip())
    except ValueError:
        key = b""
    if len(key) < 16:
        raise ValueError(f"{path} does not hold a hex key of at least 16 bytes; restore it from backup")
    return key
