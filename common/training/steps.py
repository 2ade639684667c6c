"""How many DP steps a round takes, at what sampling rate, and in which Opacus mode.

The site's ledger grants a job and calibrates its noise *before* training, from the steps that
training will really take; these functions derive them exactly as Opacus and
`common.training.patient_dp` will, from counts and the batch size alone (never labels).
"""

from __future__ import annotations

from common.config.choices import CONV_POLICIES
from common.training.patient_dp import patient_sample_rate


def grad_sample_mode_for(policy: str, requested: str = "auto") -> str:
    """Opacus mode for a policy: ghost clipping where convolutions train, hooks otherwise.

    Both clip each sample's gradient to the same norm and add the same noise; only how the
    per-sample norms are computed differs (benchmarked in docs/BENCHMARKS.md).
    """
    if requested != "auto":
        return requested
    return "ghost" if policy in CONV_POLICIES else "hooks"


def steps_per_epoch(num_examples: int, batch_size: int) -> tuple[int, float]:
    """(steps, Poisson sample rate) exactly as Opacus derives them.

    `make_private` sets q = 1 / len(loader) with len(loader) = ceil(n / batch), and its
    Poisson sampler then takes int(1 / q) steps per epoch, which in floating point is one
    fewer than ceil(n / batch) for some sizes (n = 93, batch 1: 92 steps). The ledger plans
    with the steps that will really be taken.
    """
    loader_len = max(1, -(-num_examples // batch_size))
    sample_rate = 1 / loader_len
    return int(1 / sample_rate), sample_rate


def patient_steps_per_epoch(num_patients: int, usable_patches: int, batch_size: int) -> tuple[int, float]:
    """(steps, patient sampling rate q) of one epoch at the patient unit, exactly as trained.

    `num_patients, usable_patches = common.training.patient_dp.patient_counts(data.groups, cap)`:
    usable patches = sum over patients of min(patches, cap). q = 1 / min(patients,
    ceil(usable_patches / batch_size)), so a step holds at most `batch_size` patches in
    expectation and an epoch samples every patient once in expectation; steps = int(1 / q).
    Depends only on these counts and the batch size, never on labels.
    """
    return patient_sample_rate(num_patients, usable_patches, batch_size)
