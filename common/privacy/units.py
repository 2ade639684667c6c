"""What a DP run guarantees for the *other* unit of privacy: patients of a patch-level run,
patches of a patient-level run.

A site's ledger holds its accountant history, a list of (σ, q, steps) entries, at the unit
the site trained with. Reviewers and privacy officers also ask the converse question, and
the evidence in docs/BENCHMARKS.md answers it with these two upper bounds (both rigorous,
neither claimed to be tight):

* **Patients of a patch-level run** (`patient_epsilon_of_patch_run`). A patient holds at most
  k patches, each Poisson-sampled with rate q and clipped to C. Removing the patient removes
  a mixture over which of its patches were sampled: with probability p = 1 − (1 − q)^k at
  least one, and then a shift of norm at most k·C. The mixture is a convex combination of
  sampled Gaussians with rate p and shifts ≤ k·C; Rényi divergence terms ∫P^α Q^(1−α) are
  convex in each argument and grow with the shift, so every order's RDP is at most that of
  the sampled Gaussian with rate p and noise multiplier σ/k. With LC25000's ~20 patches per
  patient this is essentially no protection: that is the point the number makes.
* **Patches of a patient-level run** (`patch_epsilon_of_patient_run`). Removing one patch
  changes one patient's (capped, clipped) contribution; it is not an add/remove neighbour of
  the patient relation, but it is two such steps away through the dataset without that
  patient. Mironov's weak triangle inequality for Rényi divergence (RDP, 2017, Prop. 11, with
  p = q = 2) gives D_α(P‖R) ≤ (α − ½)/(α − 1)·D_2α(P‖Q) + D_(2α−1)(Q‖R), both terms being the
  patient-level mechanism's own RDP at orders 2α and 2α − 1. The result is at most a small
  factor above the patient-level ε; a patch whose removal removes its patient is covered by
  the patient-level ε itself, which this bound exceeds.

Both are arguments about Rényi divergences, so both use Opacus' RDP analysis of the sampled
Gaussian and its (ε, δ) conversion, from `common.privacy.accounting` (the same memoised per-step
RDP as the ledgers' RDP bound). The ledgers' own ε (`accounting.epsilon_of`) is min(RDP, PRV) and
so at most these bounds' k = 1 case; these conversions keep the RDP alone (their arguments are made
order by order), which is the looser, still valid side.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from common.privacy.accounting import RDP_ORDERS, history_rdp
from common.privacy.accounting import rdp_epsilon_of_curve as _epsilon

History = Sequence[tuple[float, float, int]]
ORDERS: tuple[float, ...] = RDP_ORDERS


def patient_epsilon_of_patch_run(history: History, delta: float, max_patches_per_patient: int) -> float:
    """Upper bound on ε per patient for a patch-level history, patients holding ≤ k patches."""
    k = int(max_patches_per_patient)
    if k < 1:
        raise ValueError("a patient holds at least one patch")
    as_patients = [(sigma / k, 1.0 - (1.0 - q) ** k, steps) for sigma, q, steps in history]
    return _epsilon(ORDERS, history_rdp(as_patients, ORDERS), delta) if history else 0.0


def patch_epsilon_of_patient_run(history: History, delta: float) -> float:
    """Upper bound on ε per patch (remove one patch of a patient) for a patient-level history."""
    if not history:
        return 0.0
    orders = np.asarray(ORDERS, dtype=float)
    at_double = history_rdp(history, list(2 * orders))
    at_double_minus_one = history_rdp(history, list(2 * orders - 1))
    rdp = (orders - 0.5) / (orders - 1) * at_double + at_double_minus_one
    return _epsilon(list(orders), rdp, delta)
