"""Opacus' privacy engine driven by the site's round secret, and the generators derived from it.

Every random draw of DP training (the noise, the Poisson sampling, stain augmentation) must come
from the round's secret seed (`common.dp_randomness`), never from the global torch RNG or anything
the coordinator knows; this module is where that seed becomes generators, and nowhere else.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from opacus import PrivacyEngine

import common.dp_layers  # noqa: F401 - registers the Opacus grad/norm samplers `make_private` uses

AccountantHistory = list[tuple[float, float, int]]  # Opacus RDP history: (noise multiplier, sample rate, steps)


class SiteSecretPrivacyEngine(PrivacyEngine):
    """Opacus' secure mode, driven by the site's secret generator.

    With `secure_mode=True` Opacus draws the Gaussian noise in the way that resists
    floating-point attacks (a sum of four draws) and uses one generator for noise and
    Poisson sampling. Opacus takes that generator from `torchcsprng`, which has no build for
    the pinned torch 2.14; we give it a generator seeded from the site's secret instead
    (`common.dp_randomness`: 64 fresh bits from the OS CSPRNG per round by default), so the
    coordinator cannot regenerate the noise or the batches.
    """

    def __init__(self, generator: torch.Generator) -> None:
        with warnings.catch_warnings():
            # Opacus warns that secure mode is off because we construct it without torchcsprng;
            # it is switched on two lines below with a secret generator.
            warnings.filterwarnings("ignore", message="Secure RNG turned off", category=UserWarning)
            super().__init__(accountant="rdp", secure_mode=False)
        self.secure_mode = True
        self.secure_rng = generator


def derived_generator(seed: int, purpose: str) -> torch.Generator:
    """A generator for one purpose, independent of the other uses of the same round seed."""
    words = np.random.SeedSequence([seed % (2**64), *purpose.encode()]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(words[0]) | (int(words[1]) << 32))


def site_engine(seed: int, history: AccountantHistory | None) -> SiteSecretPrivacyEngine:
    """The round's engine: noise and sampling from the round seed, the accountant from the site's `history`."""
    engine = SiteSecretPrivacyEngine(derived_generator(seed, "dp-noise-and-sampling"))
    engine.accountant.load_state_dict({"history": list(history or []), "mechanism": "rdp"})
    return engine


def accountant_history(engine: PrivacyEngine) -> AccountantHistory:
    """The accountant's history after training, as plain numbers for the site's ledger."""
    return [(float(s), float(q), int(n)) for s, q, n in engine.accountant.state_dict()["history"]]
