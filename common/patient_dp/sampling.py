"""Which patients, and which of their patches, make each patient-level DP step.

Poisson sampling over patients (Opacus' sampler), then at most `max_patches_per_patient`
patches of each, all from the site's secret generator, so that the sampled Gaussian
mechanism the accountant analyses has patients as its records.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from opacus.utils.uniform_sampler import UniformWithReplacementSampler

from common.group_norms import PatchGroups
from common.patient_dp.planning import check_cap, patient_sample_rate


@dataclass(frozen=True)
class PatientStep:
    """One step's data: dataset rows grouped by patient, and which patient each row is."""

    indices: torch.Tensor  # (n,) int64 rows of the dataset, one patient's rows consecutive
    groups: PatchGroups  # step-local patient (0..patients in step - 1) of each row
    patients: torch.Tensor  # (patients in step,) dataset patient ids, in the order of `groups`



class PatientPoissonSampler:
    """Poisson sampling over patients, each bringing at most `max_patches_per_patient` patches.

    `generator` is the site's secret generator; it drives Opacus' patient sampler and the
    per-patient patch subsampling (and, in `make_private_per_patient`, the noise).
    """

    def __init__(
        self,
        patient_of_patch: np.ndarray,
        batch_size: int,
        max_patches_per_patient: int,
        generator: torch.Generator,
    ) -> None:
        check_cap(max_patches_per_patient)
        patient_of_patch = np.asarray(patient_of_patch, dtype=np.int64).reshape(-1)
        if len(patient_of_patch) == 0:
            raise ValueError("no training examples")
        sizes = np.bincount(patient_of_patch)
        if (sizes == 0).any():
            raise ValueError("patient ids must be 0..patients-1, each with at least one patch")
        self.generator = generator
        self.cap = int(max_patches_per_patient)
        self.num_patients = int(len(sizes))
        self.usable_patches = int(np.minimum(sizes, self.cap).sum())
        self.steps, self.sample_rate = patient_sample_rate(self.num_patients, self.usable_patches, batch_size)
        self.expected_patients = self.sample_rate * self.num_patients
        self._order = torch.from_numpy(np.argsort(patient_of_patch, kind="stable"))  # rows grouped by patient
        self._sizes = torch.from_numpy(sizes)
        self._starts = torch.cumsum(self._sizes, 0) - self._sizes
        self._poisson = UniformWithReplacementSampler(
            num_samples=self.num_patients, sample_rate=self.sample_rate, generator=generator, steps=self.steps
        )

    @property
    def expected_patches(self) -> float:
        """q * usable patches: the mean number of patches in a step (<= the batch size)."""
        return self.sample_rate * self.usable_patches

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[PatientStep]:
        for patients in self._poisson:
            yield self.step_for(torch.as_tensor(patients, dtype=torch.int64))

    def step_for(self, patients: torch.Tensor) -> PatientStep:
        """The rows of these sampled patients (a random `cap` of a patient's rows where it has more)."""
        parts = []
        for patient in patients.tolist():
            start, size = int(self._starts[patient]), int(self._sizes[patient])
            if size > self.cap:
                chosen = torch.randperm(size, generator=self.generator)[: self.cap].sort().values
                parts.append(self._order[start + chosen])
            else:
                parts.append(self._order[start : start + size])
        indices = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)
        taken = torch.clamp(self._sizes[patients], max=self.cap) if len(patients) else torch.zeros(0, dtype=torch.int64)
        return PatientStep(indices=indices, groups=PatchGroups.from_sizes(taken), patients=patients)
