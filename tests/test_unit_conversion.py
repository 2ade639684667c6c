"""Converting a run's ε to the other unit of privacy (common.privacy.units).

The patient bound of a patch-level run rests on a convexity argument; the test checks it
against the exact Rényi divergence of the real mixture (a patient's k patches, each sampled
with rate q, all pushing the same way: the worst case), computed by numerical integration.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from opacus.accountants.analysis.rdp import compute_rdp
from scipy import integrate, stats

from common.privacy.accounting import epsilon_of
from common.privacy.units import patch_epsilon_of_patient_run, patient_epsilon_of_patch_run

HISTORY = [(1.1, 0.02, 300), (1.5, 0.05, 40)]
DELTA = 1e-5


def _exact_patient_rdp(q: float, sigma: float, k: int, alpha: float) -> float:
    """max of both directions of D_α between a patient's mixture and the mechanism without it (1-d)."""
    weights = stats.binom.pmf(np.arange(k + 1), k, q)

    def mixture(x: float) -> float:
        return float(sum(w * stats.norm.pdf(x, loc=j, scale=sigma) for j, w in enumerate(weights)))

    def divergence(p, r) -> float:
        value, _ = integrate.quad(lambda x: p(x) ** alpha * r(x) ** (1 - alpha), -12 * sigma, k + 12 * sigma,
                                  limit=200)
        return math.log(value) / (alpha - 1)

    base = lambda x: float(stats.norm.pdf(x, scale=sigma))  # noqa: E731
    return max(divergence(mixture, base), divergence(base, mixture))


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("alpha", [2.0, 4.0])
def test_patient_bound_of_a_patch_run_is_above_the_exact_divergence(k: int, alpha: float) -> None:
    q, sigma = 0.1, 2.0
    exact = _exact_patient_rdp(q, sigma, k, alpha)
    bound = float(compute_rdp(q=1 - (1 - q) ** k, noise_multiplier=sigma / k, steps=1, orders=[alpha])[0])
    assert exact <= bound + 1e-9
    assert 0 < exact  # (the bound is loose: 5x the exact RDP at k=2, 40x at k=3, alpha=4; it is an upper bound)


def test_one_patch_per_patient_changes_nothing() -> None:
    assert patient_epsilon_of_patch_run(HISTORY, DELTA, 1) == pytest.approx(epsilon_of(HISTORY, DELTA), rel=1e-9)


def test_patient_epsilon_of_a_patch_run_grows_with_patches_per_patient() -> None:
    eps = [patient_epsilon_of_patch_run(HISTORY, DELTA, k) for k in (1, 2, 5, 20)]
    assert eps == sorted(eps) and eps[1] > 2 * eps[0]
    with pytest.raises(ValueError):
        patient_epsilon_of_patch_run(HISTORY, DELTA, 0)


def test_patch_epsilon_of_a_patient_run_is_a_small_multiple_of_the_patient_epsilon() -> None:
    patient = epsilon_of(HISTORY, DELTA)
    patch = patch_epsilon_of_patient_run(HISTORY, DELTA)
    assert patient < patch < 4 * patient


def test_empty_history_spends_nothing() -> None:
    assert patient_epsilon_of_patch_run([], DELTA, 5) == 0.0
    assert patch_epsilon_of_patient_run([], DELTA) == 0.0
