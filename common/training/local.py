"""Local training (with or without DP-SGD) and evaluation of a model on an ImageSet.

Under DP the unit of privacy is a patch or a patient (`settings.privacy_unit`); both run through
`common.training.private` (Poisson sampling over records, per-record clipping, noise from the site's
secret stream). Without DP the batches are a secret-stream shuffle. What every path shares lives in
`common.training.loop`; every random draw comes from the round's key (`settings.randomness`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from common.data.imageset import ImageSet
from common.data.stain_handling import StainAugmenter
from common.model.inputs import as_tensor_dataset, device, normalise
from common.privacy.randomness import SecretStream
from common.training.dp_engine import AccountantHistory
from common.training.extra_records import attach_extra_records
from common.training.loop import detach_training, optimizer_for, run_epochs, stain_augmenter
from common.training.private import train_private
from common.training.settings import TrainOutcome, TrainSettings


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
    if settings.dp:
        return train_private(model, data, settings, history, desc)
    data = data.trainable()  # without DP no count is protected: withheld records are simply left out
    if len(data) == 0:
        raise ValueError("no training examples left once copies of central test images are withheld")
    model.to(device()).train()
    tensors = as_tensor_dataset(data).tensors
    batches = _ShuffledBatches(tensors[0], tensors[1], min(settings.batch_size, len(data)),
                               settings.randomness.stream("shuffle"), stain_augmenter(data, settings))
    optimizer, proximal = optimizer_for(model, settings)
    extra = attach_extra_records(optimizer, model, settings.extra_records, 1.0 / len(batches), batches.batch_size)
    try:
        steps, mean_loss, masked = run_epochs(model, optimizer, nn.CrossEntropyLoss(), settings,
                                              settings.randomness.stream("augmentation"), desc, lambda: batches)
    finally:
        detach_training(model, None, proximal, extra)
    model.eval()
    return TrainOutcome(num_examples=len(data), mean_loss=mean_loss, steps=steps, sample_rate=1.0 / len(batches),
                        history=None, nonfinite_records=masked)


class _ShuffledBatches:
    """Non-private epochs: a fresh secret-stream shuffle each epoch, cut into batches of `batch_size`."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, stream: SecretStream,
                 stain: StainAugmenter | None) -> None:
        self.images, self.labels, self.batch_size, self.stream, self.stain = images, labels, batch_size, stream, stain

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, Any]]:
        order = self.stream.permutation(len(self.labels))
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            images = self.images[rows]
            yield (self.stain(images, rows) if self.stain else images), self.labels[rows], None


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
