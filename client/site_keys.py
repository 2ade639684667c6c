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

from client.identity import SiteIdentity
from common.files import load_or_create_key
from common.paths import SPLIT_KEY_FILE

__all__ = ["SPLIT_KEY_FILE", "load_or_create_key", "site_split_key"]


def site_split_key(identity: SiteIdentity) -> bytes:
    """The deployed site's split key: from its node config, else from (or created in) its state dir."""
    if identity.split_key:
        return hashlib.sha256(f"fedpath-split-key:{identity.split_key}".encode()).digest()
    return load_or_create_key(identity.state_dir / SPLIT_KEY_FILE)
