"""How each site of an audited federation trains: its noise, its round seed, and faults planted on purpose.

An audit that cannot fail proves nothing, so the experiment can run a DP setting with the implementation
broken on purpose while the site still *claims* the calibrated mechanism (`FAULTS`):

* `noise-off`: DP-SGD adds no noise (σ_actual = 0) while the ledger records the calibrated σ;
* `clipping-off`: per-record gradients are not clipped (the clipping bound is 10^6·C) while the ledger
  records C; the noise keeps its claimed standard deviation σ·C.

Both run fedpath's own training path with other settings, not a patched copy of it, and the claimed
accountant history is what a site with that bug would write. The audit must find such runs inconsistent
(bound > claimed ε); `tests/audit/test_audit_gradient_canaries.py` checks that it does, with the odds computed.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

from common.privacy.accounting import calibrate_noise
from common.privacy.randomness import RoundRandomness, fresh_randomness, public_randomness, seeded_randomness
from common.training.patient_dp import DEFAULT_MAX_PATCHES_PER_PATIENT, PATIENT, patient_counts
from common.training.settings import ExtraRecords, TrainSettings
from common.training.steps import epoch_steps, grad_sample_mode_for

NOISE_OFF, CLIPPING_OFF = "noise-off", "clipping-off"
FAULTS = (NOISE_OFF, CLIPPING_OFF)
UNCLIPPED = 1e6  # clipping-off: the clipping bound, in multiples of the claimed C


@functools.lru_cache(maxsize=64)
def _noise_multiplier(rate: float, steps: int, epsilon: float, delta: float) -> float:
    """`calibrate_noise` from an empty history: a pure function of its arguments, and slow at rates near 1
    (seconds per call), so sites (and settings) of the same size share it."""
    return calibrate_noise([], rate, steps, epsilon, delta)


def noise_multipliers(config: Any, rounds: int, local_epochs: int, delta: float, train_sets: list[Any], unit: str,
                      epsilon: float | None) -> list[float]:
    """Each site's σ so that all planned rounds fit ε at its own sampling rate (0 without DP: `epsilon` None)."""
    if epsilon is None:
        return [0.0 for _ in train_sets]
    sigmas = []
    for site in train_sets:
        records, usable = patient_counts(site.groups, patch_cap(config)) if unit == PATIENT else (len(site), len(site))
        steps, rate = epoch_steps(records, usable, config.batch_size, config.min_records_per_step)
        sigmas.append(_noise_multiplier(rate, steps * local_epochs * rounds, epsilon, delta))
    return sigmas


def patch_cap(config: Any) -> int:
    return int(getattr(config, "max_patches_per_patient", DEFAULT_MAX_PATCHES_PER_PATIENT))


def site_dp_seed(dp_seed: str, site: int) -> str:
    """Simulated site k's own dp-seed (256 bits, hex) from the experimenter's `dp_seed`: no two sites share noise."""
    return hashlib.sha256(f"fedpath-audit-site:{site}:{dp_seed}".encode()).hexdigest()


def round_randomness(dp: bool, dp_seed: str, seed: int, site: int, rnd: int) -> RoundRandomness:
    """Site `site`'s key for round `rnd`. DP: as a site draws it, from its own dp-seed and ledger position
    (round − 1) when the experimenter pinned one (tests: the same on every machine), else fresh from the OS
    CSPRNG; never from the experiment seed. Non-private rows promise nothing: a public key from the
    experiment seed."""
    if not dp:
        return public_randomness(f"audit-nonprivate:{seed}:{rnd}:{site}")
    if dp_seed:
        return seeded_randomness(site_dp_seed(dp_seed, site), f"site-{site}", rnd - 1)
    return fresh_randomness()


def site_settings(config: Any, local_epochs: int, randomness: RoundRandomness, dp: bool, sigma: float, unit: str,
                  fault: str | None = None, extra: ExtraRecords | None = None) -> TrainSettings:
    """A site's training settings: the claimed mechanism (σ, C), or what a `fault` makes of it."""
    if fault is not None and fault not in FAULTS:
        raise ValueError(f"fault must be one of {', '.join(FAULTS)}, got {fault!r}")
    clip = config.max_grad_norm
    if fault == NOISE_OFF:
        sigma = 0.0
    elif fault == CLIPPING_OFF:  # the same noise σ·C, no clipping
        sigma, clip = sigma / UNCLIPPED, clip * UNCLIPPED
    return TrainSettings(epochs=local_epochs, batch_size=config.batch_size, lr=config.lr, momentum=config.momentum,
                         randomness=randomness, dp=dp, noise_multiplier=sigma, max_grad_norm=clip,
                         grad_sample_mode=grad_sample_mode_for(config.policy, config.grad_sample_mode),
                         privacy_unit=unit, max_patches_per_patient=patch_cap(config),
                         min_records_per_step=config.min_records_per_step, extra_records=extra)


def claimed_history(history: list[Any], sigma: float) -> list[tuple[float, float, int]]:
    """The accountant history the site writes: every step at its claimed σ (what a faulty site would claim)."""
    return [(float(sigma), float(q), int(n)) for _, q, n in history]
