"""DP-SGD with patients as the unit of privacy: Poisson sampling over patients, per-patient clipping.

The sampling and clipping are `common.patient_dp`'s; this module runs them through the same loop
as patch-level training (`common.training_loop`), with noise and sampling from the round's secret.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from common.data.imageset import ImageSet
from common.data.stain_handling import StainAugmenter
from common.dp_engine import AccountantHistory, accountant_history, site_engine
from common.extra_records import attach_extra_records
from common.image_tensors import as_tensor_dataset, device
from common.patient_dp import (
    PATIENT,
    PatientPoissonSampler,
    PatientPrivateTraining,
    make_private_per_patient,
    patient_index,
)
from common.train_settings import TrainOutcome, TrainSettings
from common.training_loop import detach_training, optimizer_for, run_epochs, stain_augmenter


class _PatientBatches:
    """One epoch of patient-level steps: (uint8 images, labels, step) per Poisson step over patients."""

    def __init__(self, sampler: PatientPoissonSampler, images: torch.Tensor, labels: torch.Tensor,
                 stain: StainAugmenter | None = None) -> None:
        self.sampler, self.images, self.labels, self.stain = sampler, images, labels, stain

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, Any]]:
        for step in self.sampler:
            images = self.images[step.indices]
            yield (self.stain(images, step.indices) if self.stain else images), self.labels[step.indices], step


def train_patient_level(
    model: nn.Module,
    data: ImageSet,
    settings: TrainSettings,
    history: AccountantHistory | None,
    desc: str,
) -> TrainOutcome:
    """DP-SGD with patients as the unit of privacy (common.patient_dp), same loop as patches."""
    model.to(device()).train()
    generator = torch.Generator().manual_seed(settings.seed)  # augmentation
    optimizer, proximal = optimizer_for(model, settings)  # FedProx's term before Opacus wraps the optimizer
    engine = site_engine(settings.seed, history)
    sampler = PatientPoissonSampler(
        patient_index(data.groups), settings.batch_size, settings.max_patches_per_patient, engine.secure_rng
    )
    private: PatientPrivateTraining = make_private_per_patient(
        engine, module=model, optimizer=optimizer, criterion=nn.CrossEntropyLoss(), sampler=sampler,
        noise_multiplier=settings.noise_multiplier, max_grad_norm=settings.max_grad_norm,
        grad_sample_mode=settings.grad_sample_mode,
    )
    tensors = as_tensor_dataset(data).tensors
    batches = _PatientBatches(sampler, tensors[0], tensors[1], stain_augmenter(data, settings))
    extra = attach_extra_records(private.optimizer, private.module, settings.extra_records,
                                 float(sampler.sample_rate), 0)
    try:
        steps, mean_loss = run_epochs(
            private.module, private.optimizer, private.criterion, settings, generator, desc,
            lambda: batches, private.begin_step,
        )
    finally:
        detach_training(model, private.module, proximal, extra)
    model.eval()
    return TrainOutcome(
        num_examples=len(data),
        mean_loss=mean_loss,
        steps=steps,
        sample_rate=float(sampler.sample_rate),
        history=accountant_history(engine),
        privacy_unit=PATIENT,
        num_patients=sampler.num_patients,
    )
