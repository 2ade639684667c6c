"""Where a site's DP randomness comes from: a secret that only the site holds.

DP-SGD is private only while the noise (and the Poisson sampling) is unpredictable to the
party that sees the updates. fedpath's threat model is a curious coordinator, which knows or
chooses the run config (its `seed`), the run id, the round number and the site ids: none of
these may enter DP randomness, or the coordinator can replay a round and subtract the noise.

Two modes, both decided at the site:

* ``secure`` (the default everywhere): every round draws a fresh 64-bit seed from the
  operating system's CSPRNG (`secrets`). Nobody, the site included, can reproduce the round.
* ``site-seed``: the site's operator sets `dp-seed` in its own node config (simulation: the
  launcher may set it for its simulated sites, for reproducible experiments). The round seed
  is derived from that secret and the site's own ledger position, so a repeated request gets
  fresh noise while the same site state reproduces the same round. Private only as long as
  the seed stays secret; the report marks such sites as reproducible.

The seed itself is never logged, stored or sent.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import torch

SECURE = "secure"
SITE_SEED = "site-seed"
MODES = (SECURE, SITE_SEED)


@dataclass(frozen=True)
class RoundRandomness:
    """The secret seed of one round's DP step, and which mode produced it."""

    mode: str
    seed: int  # 64 bits; never log or send it

    def __repr__(self) -> str:  # keep the secret out of logs and tracebacks
        return f"RoundRandomness(mode={self.mode!r})"

    def generator(self, purpose: str) -> torch.Generator:
        """An independent torch generator for one use (noise and sampling, augmentation, ...)."""
        digest = hashlib.sha256(f"{purpose}:{self.seed}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def fresh_randomness() -> RoundRandomness:
    """64 fresh bits from the OS CSPRNG: unpredictable to everyone, reproducible by no one."""
    return RoundRandomness(SECURE, secrets.randbits(64))


def seeded_randomness(dp_seed: str, ledger_position: int) -> RoundRandomness:
    """Reproducible randomness from a site-held secret and the site's own ledger position.

    `ledger_position` (rounds already recorded in the site's ledger) advances with every
    answered request, so answering the same request twice never reuses noise.
    """
    if not dp_seed:
        raise ValueError("dp-seed is empty")
    digest = hashlib.sha256(f"fedpath-dp-seed:{dp_seed}:{ledger_position}".encode()).digest()
    return RoundRandomness(SITE_SEED, int.from_bytes(digest[:8], "little"))


def round_randomness(dp_seed: str, ledger_position: int) -> RoundRandomness:
    """The site's randomness for its next round: seeded when the site holds a dp-seed, else fresh."""
    return seeded_randomness(dp_seed, ledger_position) if dp_seed else fresh_randomness()
