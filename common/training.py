"""Local training (with or without Opacus DP-SGD) and evaluation of a model on an ImageSet.

Under DP the unit of privacy is a patch (`privacy_unit="patch"`: Opacus' `make_private`, Poisson
sampling over patches) or a patient (`privacy_unit="patient"`: `common.patient_training`, Poisson
sampling over patients, each patient's summed gradient clipped). What both paths share lives in
`common.training_loop`; the DP randomness comes only from `common.dp_engine` (the round's secret).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from common.data.imageset import ImageSet
from common.data.stain_handling import StainAugmenter
from common.dp_engine import AccountantHistory, SiteSecretPrivacyEngine, accountant_history, site_engine
from common.extra_records import attach_extra_records
from common.image_tensors import as_tensor_dataset, device, normalise
from common.patient_dp import PATIENT
from common.patient_training import train_patient_level
from common.train_settings import TrainOutcome, TrainSettings
from common.training_loop import detach_training, optimizer_for, run_epochs, stain_augmenter


def train_local(
    model: nn.Module,
    data: ImageSet,
    settings: TrainSettings,
    history: AccountantHistory | None = None,
    desc: str = "local training",
) -> TrainOutcome:
    """Train `model` in place; under DP the accountant starts from the site's `history`.

    With `settings.privacy_unit == "patient"` (DP only) the records are the patients of
    `data.groups`: steps, sample rate and history of the outcome are the patient-level ones.
    """
    if len(data) == 0:
        raise ValueError("no training examples")
    if settings.dp and settings.privacy_unit == PATIENT:
        return train_patient_level(model, data, settings, history, desc)
    model.to(device()).train()
    generator = torch.Generator().manual_seed(settings.seed)  # shuffling and augmentation
    stain = stain_augmenter(data, settings)
    loader = DataLoader(
        as_tensor_dataset(data, rows=stain is not None), batch_size=min(settings.batch_size, len(data)), shuffle=True,
        generator=generator,
    )
    optimizer, proximal = optimizer_for(model, settings)  # FedProx's term before Opacus wraps the optimizer
    engine, train_model, optimizer, criterion, loader = _private_or_plain(model, optimizer, loader, settings, history)
    rate = float(loader.sample_rate) if engine is not None else 1.0 / len(loader)  # type: ignore[attr-defined]
    extra = attach_extra_records(optimizer, train_model, settings.extra_records, rate,
                                 loader.batch_size or settings.batch_size)
    try:
        steps, mean_loss = run_epochs(
            train_model, optimizer, criterion, settings, generator, desc,
            lambda: _PatchBatches(loader, stain),
        )
    finally:
        detach_training(model, train_model if engine is not None else None, proximal, extra)
    model.eval()
    return TrainOutcome(
        num_examples=len(data),
        mean_loss=mean_loss,
        steps=steps,
        sample_rate=rate,
        history=accountant_history(engine) if engine is not None else None,
    )


def _private_or_plain(
    model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, settings: TrainSettings,
    history: AccountantHistory | None,
) -> tuple[SiteSecretPrivacyEngine | None, nn.Module, torch.optim.Optimizer, Any, DataLoader]:
    """(engine, model, optimizer, criterion, loader) to train with: Opacus' patch-level DP-SGD, or as given.

    Under DP the loader becomes Opacus' Poisson sampler over patches, driven (like the noise) by the
    round's secret seed; with ghost clipping the criterion is Opacus' too.
    """
    criterion: Any = nn.CrossEntropyLoss()
    if not settings.dp:
        return None, model, optimizer, criterion, loader
    engine = site_engine(settings.seed, history)
    private = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=settings.noise_multiplier,
        max_grad_norm=settings.max_grad_norm,
        poisson_sampling=True,
        grad_sample_mode=settings.grad_sample_mode,
        **({"criterion": criterion} if settings.grad_sample_mode == "ghost" else {}),
    )
    if settings.grad_sample_mode == "ghost":
        train_model, optimizer, criterion, loader = private
    else:
        train_model, optimizer, loader = private
    return engine, train_model, optimizer, criterion, loader


class _PatchBatches:
    """One epoch of a (DP or plain) DataLoader as (uint8 images, labels, None), stain-augmented if asked."""

    def __init__(self, loader: Iterable[Any], stain: StainAugmenter | None = None) -> None:
        self.loader, self.stain = loader, stain

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, Any]]:
        for images, labels, *rows in self.loader:
            yield (self.stain(images, rows[0]) if self.stain else images), labels, None


@torch.no_grad()
def predict(model: nn.Module, data: ImageSet, batch_size: int = 256) -> tuple[np.ndarray, float]:
    """(class probabilities (N, C), mean cross-entropy) of `model` on `data`."""
    dev = device()
    model.to(dev).eval()
    if len(data) == 0:
        return np.zeros((0, len(data.classes)), dtype=np.float64), float("nan")
    probs, loss_sum = [], 0.0
    loader = DataLoader(as_tensor_dataset(data), batch_size=batch_size, shuffle=False)
    for images, labels in loader:
        logits = model(normalise(images.to(dev)))
        loss_sum += float(nn.functional.cross_entropy(logits, labels.to(dev), reduction="sum"))
        probs.append(torch.softmax(logits.double(), dim=1).cpu().numpy())
    return np.concatenate(probs), loss_sum / len(data)
