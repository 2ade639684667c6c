"""DP-SGD at a site, with patients or patches as the unit of privacy: one path for both.

A patch-level record is a patient with one patch: the same Poisson sampling over records, the same
per-record clipping (`common.training.patient_dp`), the same noise from the site's secret stream. So the two
units cannot drift apart, and neither uses a torch generator. The loop is `common.training.loop`'s.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from common.data.imageset import ImageSet
from common.data.stain_handling import StainAugmenter
from common.model.inputs import as_tensor_dataset, device
from common.training.dp_engine import AccountantHistory, accountant_history, site_accountant
from common.training.extra_records import attach_extra_records
from common.training.loop import detach_training, optimizer_for, run_epochs, stain_augmenter
from common.training.patient_dp import (
    PATIENT,
    PatientPoissonSampler,
    PatientPrivateTraining,
    PatientStep,
    make_private_per_patient,
    patient_index,
)
from common.training.patient_dp.group_norms import PatchGroups
from common.training.settings import TrainOutcome, TrainSettings


class _RecordBatches:
    """One epoch of DP steps: (uint8 images, labels, step) per Poisson step over records."""

    def __init__(self, sampler: PatientPoissonSampler, images: torch.Tensor, labels: torch.Tensor,
                 stain: StainAugmenter | None = None, withheld: np.ndarray | None = None) -> None:
        self.sampler, self.images, self.labels, self.stain = sampler, images, labels, stain
        self.withheld = torch.from_numpy(withheld) if withheld is not None and withheld.any() else None

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, Any]]:
        for step in self.sampler:
            if self.withheld is not None:
                step = without_rows(step, self.withheld)
            images = self.images[step.indices]
            yield (self.stain(images, step.indices) if self.stain else images), self.labels[step.indices], step


def without_rows(step: PatientStep, withheld: torch.Tensor) -> PatientStep:
    """The step without its withheld rows (a deployed site's copies of central test images).

    Dropped after sampling, by a rule per row that never looks at another: the sampling rate, the
    steps and every count stay those of all the site's records, so a coordinator that crafts the
    test hashes cannot read from them whether one image is there; a patient left with no rows sits
    the step out (docs/PRIVACY.md, "Test images at the sites").
    """
    keep = ~withheld[step.indices]
    if bool(keep.all()):
        return step
    kept = torch.bincount(step.groups.index[keep], minlength=step.groups.num_groups)
    present = kept > 0
    return PatientStep(step.indices[keep], PatchGroups.from_sizes(kept[present]), step.patients[present])


def record_sampler(data: ImageSet, settings: TrainSettings) -> PatientPoissonSampler:
    """Poisson sampling over the round's records: patients (at most the cap of patches each) or patches."""
    stream = settings.randomness.stream("dp-sampling")
    if settings.privacy_unit == PATIENT:
        return PatientPoissonSampler(patient_index(data.groups), settings.batch_size, settings.max_patches_per_patient,
                                     stream, settings.min_records_per_step)
    return PatientPoissonSampler(np.arange(len(data)), settings.batch_size, 1, stream, settings.min_records_per_step)


def train_private(
    model: nn.Module,
    data: ImageSet,
    settings: TrainSettings,
    history: AccountantHistory | None,
    desc: str,
) -> TrainOutcome:
    """DP-SGD over the records of `data` at `settings.privacy_unit`; the accountant starts from `history`."""
    model.to(device()).train()
    optimizer, proximal = optimizer_for(model, settings)  # FedProx's term before Opacus wraps the optimizer
    accountant = site_accountant(history)
    sampler = record_sampler(data, settings)
    private: PatientPrivateTraining = make_private_per_patient(
        accountant, settings.randomness.stream("dp-noise"), module=model, optimizer=optimizer,
        criterion=nn.CrossEntropyLoss(), sampler=sampler, noise_multiplier=settings.noise_multiplier,
        max_grad_norm=settings.max_grad_norm, grad_sample_mode=settings.grad_sample_mode,
    )
    tensors = as_tensor_dataset(data).tensors
    batches = _RecordBatches(sampler, tensors[0], tensors[1], stain_augmenter(data, settings), data.withheld)
    extra = attach_extra_records(private.optimizer, private.module, settings.extra_records, float(sampler.sample_rate), 0)
    try:
        steps, mean_loss, masked = run_epochs(
            private.module, private.optimizer, private.criterion, settings,
            settings.randomness.stream("augmentation"), desc, lambda: batches, private.begin_step,
        )
    finally:
        private.remove_sanitizers()
        detach_training(model, private.module, proximal, extra)
    model.eval()
    patient = settings.privacy_unit == PATIENT
    return TrainOutcome(
        num_examples=len(data),
        mean_loss=mean_loss,
        steps=steps,
        sample_rate=float(sampler.sample_rate),
        history=accountant_history(accountant),
        privacy_unit=settings.privacy_unit,
        num_patients=sampler.num_patients if patient else None,
        nonfinite_records=masked + private.nonfinite_records,
    )
