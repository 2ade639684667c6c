"""What a site decides about patient-level DP before training: the unit, patient counts, the rate q.

Pure NumPy, no Opacus: the site's round planning (noise calibration, the budget check) needs
the number of patients and the steps an epoch takes before any model exists.
"""

from __future__ import annotations

import numpy as np

PATCH = "patch"
PATIENT = "patient"
PRIVACY_UNITS = (PATCH, PATIENT)


def patient_index(groups: np.ndarray) -> np.ndarray:
    """Each patch's patient as an integer 0..patients-1 (patients in sorted order of their ids)."""
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)



def patient_counts(groups: np.ndarray, max_patches_per_patient: int) -> tuple[int, int]:
    """(patients, usable patches): usable = sum over patients of min(patches, cap).

    These two counts, with the batch size, fix the patient sampling rate. They are dataset-level
    counts that the site treats as public (like `num-examples`, which it already sends); no
    label enters them.
    """
    check_cap(max_patches_per_patient)
    if len(groups) == 0:
        return 0, 0
    sizes = np.bincount(patient_index(groups))
    return int(len(sizes)), int(np.minimum(sizes, max_patches_per_patient).sum())



def patient_sample_rate(num_patients: int, usable_patches: int, batch_size: int) -> tuple[int, float]:
    """(steps per epoch, patient sampling rate q), exactly what the training takes.

    Rule: q = 1 / min(patients, ceil(usable_patches / batch_size)). A sampled patient brings
    min(k, cap) patches, so a step holds q * usable_patches <= batch_size patches in expectation
    (the configured batch size keeps meaning "expected patches per step"), and an epoch is
    1/q steps, in which every patient is sampled once in expectation. Where even one patient
    per step exceeds the batch size (patients with more usable patches than batch_size on
    average), q = 1/patients: one patient per step in expectation.
    Steps = int(1 / q), as Opacus' Poisson sampler takes them (see `steps_per_epoch`).
    """
    if num_patients < 1:
        raise ValueError("patient-level DP needs at least one patient")
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    loader_len = max(1, min(num_patients, -(-usable_patches // batch_size)))
    sample_rate = 1 / loader_len
    return int(1 / sample_rate), sample_rate



def check_cap(max_patches_per_patient: int) -> None:
    """Refuse a patch cap that is not a whole number >= 1 (it bounds what a patient brings to a step)."""
    if int(max_patches_per_patient) != max_patches_per_patient or max_patches_per_patient < 1:
        raise ValueError(f"max_patches_per_patient must be an integer >= 1, got {max_patches_per_patient!r}")
