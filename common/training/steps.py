"""How many DP steps a round takes, at what sampling rate, and in which Opacus mode.

The site's ledger grants a job and calibrates its noise *before* training, from the steps that
training will really take. One rule (`epoch_steps`) serves both: the training's Poisson sampler
(`common.training.patient_dp.sampling`) takes its steps and rate from it, and the site's budget
planning (`client.job_planning`), the audit harness and the benchmarks plan with it, from counts
and the batch size alone (never labels).
"""

from __future__ import annotations

from common.config.choices import CONV_POLICIES, DEFAULT_MIN_RECORDS_PER_STEP


def grad_sample_mode_for(policy: str, requested: str = "auto") -> str:
    """Opacus mode for a policy: ghost clipping where convolutions train, hooks otherwise.

    Both clip each sample's gradient to the same norm and add the same noise; only how the
    per-sample norms are computed differs (benchmarked in docs/BENCHMARKS.md).
    """
    if requested != "auto":
        return requested
    return "ghost" if policy in CONV_POLICIES else "hooks"




def epoch_steps(
    records: int, usable_patches: int, batch_size: int, min_records_per_step: int = DEFAULT_MIN_RECORDS_PER_STEP,
) -> tuple[int, float]:
    """(steps, Poisson sampling rate q) of one epoch over a site's records, exactly as training takes them.

    The one rule for both units of privacy: a record is a patient, or a patch (a patient of one
    patch, `records == usable_patches`). `records, usable_patches = patient_counts(groups, cap)`
    at the patient unit (usable = sum over patients of min(patches, cap)); `(n, n)` at the patch unit.

    q = 1 / min(records, ceil(usable_patches / batch_size)): a sampled patient brings min(k, cap)
    patches, so a step holds q * usable_patches <= batch_size patches in expectation (the batch
    size keeps meaning "expected patches per step") and an epoch samples every record once in
    expectation; where even one patient per step exceeds the batch size, q = 1/patients. At the
    patch unit this is q = 1 / ceil(n / batch), what Opacus' `make_private` sets.

    Planned for signal (issue 23): q is raised so that a step expects at least `min_records_per_step`
    records (q >= 1 / (records // min_records_per_step); q = 1 with fewer records than that), even where
    the step then holds more than `batch_size` patches. DP-SGD adds σ·C to the sum of a step's clipped
    records, so what the model sees is σ/(q·N), the noise per record in the step (De et al. 2022; Sander
    et al. 2023, "TAN"): with few patients of many patches, a step of 4 patients is mostly noise. The
    accountant calibrates σ to the steps really taken, so the budget is what it was. At the patch unit a
    batch of `min_records_per_step` patches or more is unaffected; 1 plans from the batch size alone.

    Steps = int(1 / q), as Opacus' Poisson sampler takes them, which in floating point is one
    fewer than 1/q for some sizes (n = 93, batch 1: 92 steps); the ledger plans with the steps
    that will really be taken. Depends only on these counts and the batch size, never on labels.
    """
    if records < 1:
        raise ValueError("DP-SGD needs at least one record (a patient or a patch)")
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if min_records_per_step < 1:
        raise ValueError(f"min-records-per-step must be >= 1, got {min_records_per_step}")
    loader_len = max(1, min(records, -(-usable_patches // batch_size), records // min_records_per_step))
    sample_rate = 1 / loader_len
    return int(1 / sample_rate), sample_rate


def round_steps(
    records: int, usable_patches: int, batch_size: int, local_epochs: int,
    min_records_per_step: int = DEFAULT_MIN_RECORDS_PER_STEP,
) -> tuple[int, float]:
    """(steps, q) of a round of `local_epochs` epochs (`epoch_steps`): what a site plans its budget with."""
    steps, sample_rate = epoch_steps(records, usable_patches, batch_size, min_records_per_step)
    return steps * local_epochs, sample_rate
