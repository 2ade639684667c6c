"""Which patients, and which of their patches, make each patient-level DP step.

Poisson sampling over patients (each in a step independently with probability q, as Opacus'
`UniformWithReplacementSampler` does), then at most `max_patches_per_patient` patches of each,
all from the site's secret stream (ChaCha20, `common.privacy.randomness`), so that the sampled Gaussian
mechanism the accountant analyses has patients as its records. Patch-level DP uses the same
sampler with every patch its own patient.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from common.config.choices import DEFAULT_MIN_RECORDS_PER_STEP
from common.privacy.randomness import SecretStream
from common.training.patient_dp.group_norms import PatchGroups
from common.training.patient_dp.planning import check_cap
from common.training.steps import epoch_steps


@dataclass(frozen=True)
class PatientStep:
    """One step's data: dataset rows grouped by patient, and which patient each row is."""

    indices: torch.Tensor  # (n,) int64 rows of the dataset, one patient's rows consecutive
    groups: PatchGroups  # step-local patient (0..patients in step - 1) of each row
    patients: torch.Tensor  # (patients in step,) dataset patient ids, in the order of `groups`



class PatientPoissonSampler:
    """Poisson sampling over patients, each bringing at most `max_patches_per_patient` patches.

    `stream` is one of the round's secret streams; it draws which patients take part in each
    step and which of their patches (the noise has a stream of its own).
    """

    def __init__(
        self,
        patient_of_patch: np.ndarray,
        batch_size: int,
        max_patches_per_patient: int,
        stream: SecretStream,
        min_records_per_step: int = DEFAULT_MIN_RECORDS_PER_STEP,
    ) -> None:
        check_cap(max_patches_per_patient)
        patient_of_patch = np.asarray(patient_of_patch, dtype=np.int64).reshape(-1)
        if len(patient_of_patch) == 0:
            raise ValueError("no training examples")
        sizes = np.bincount(patient_of_patch)
        if (sizes == 0).any():
            raise ValueError("patient ids must be 0..patients-1, each with at least one patch")
        if not isinstance(stream, SecretStream):
            raise TypeError("patients must be sampled from the site's secret stream (common.privacy.randomness.SecretStream)")
        self.stream = stream
        self.cap = int(max_patches_per_patient)
        self.num_patients = int(len(sizes))
        self.usable_patches = int(np.minimum(sizes, self.cap).sum())
        self.steps, self.sample_rate = epoch_steps(self.num_patients, self.usable_patches, batch_size,
                                                   min_records_per_step)
        self.expected_patients = self.sample_rate * self.num_patients
        self._order = torch.from_numpy(np.argsort(patient_of_patch, kind="stable"))  # rows grouped by patient
        self._sizes = torch.from_numpy(sizes)
        self._starts = torch.cumsum(self._sizes, 0) - self._sizes

    @property
    def expected_patches(self) -> float:
        """q * usable patches: the mean number of patches in a step (<= the batch size)."""
        return self.sample_rate * self.usable_patches

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[PatientStep]:
        for _ in range(self.steps):
            taken = self.stream.bernoulli(self.num_patients, self.sample_rate)
            yield self.step_for(torch.nonzero(taken).reshape(-1))

    def step_for(self, patients: torch.Tensor) -> PatientStep:
        """The rows of these sampled patients (a random `cap` of a patient's rows where it has more)."""
        parts = []
        for patient in patients.tolist():
            start, size = int(self._starts[patient]), int(self._sizes[patient])
            if size > self.cap:
                chosen = self.stream.permutation(size)[: self.cap].sort().values
                parts.append(self._order[start + chosen])
            else:
                parts.append(self._order[start : start + size])
        indices = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)
        taken = torch.clamp(self._sizes[patients], max=self.cap) if len(patients) else torch.zeros(0, dtype=torch.int64)
        return PatientStep(indices=indices, groups=PatchGroups.from_sizes(taken), patients=patients)
