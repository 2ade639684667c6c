"""What a site decides about patient-level DP before training: the unit and the patient counts.

Pure NumPy, no Opacus: the site's round planning (noise calibration, the budget check) needs
the number of patients before any model exists; the steps and the rate q it derives from these
counts are `common.training.steps.epoch_steps`.
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



def check_cap(max_patches_per_patient: int) -> None:
    """Refuse a patch cap that is not a whole number >= 1 (it bounds what a patient brings to a step)."""
    if int(max_patches_per_patient) != max_patches_per_patient or max_patches_per_patient < 1:
        raise ValueError(f"max_patches_per_patient must be an integer >= 1, got {max_patches_per_patient!r}")
