"""The parts every training path shares: optimizer, epochs of steps, stain draws, clean-up.

Non-private, patch-level DP and patient-level DP training differ only in how a step's records are
sampled and clipped; the optimizer, the loop over steps and the removal of what training attached
(including the simulation's extra records, `common.training.extra_records`) are written once here, so the three
paths cannot drift apart.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from common.data.imageset import ImageSet
from common.data.stain_handling import StainAugmenter
from common.model.inputs import device, normalise, random_dihedral
from common.privacy.randomness import SecretStream
from common.progress import progress
from common.training.dp_engine import finite_rows
from common.training.proximal import attach_proximal_term
from common.training.settings import TrainSettings

log = logging.getLogger("fedpath.training")


def optimizer_for(model: nn.Module, settings: TrainSettings) -> tuple[torch.optim.Optimizer, RemovableHandle | None]:
    """SGD over the trainable parameters, and FedProx's term (its handle, or None) attached before Opacus wraps it."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum)
    return optimizer, attach_proximal_term(optimizer, settings.proximal_mu)


def run_epochs(
    train_model: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: Any,
    settings: TrainSettings,
    augmentation: SecretStream,
    desc: str,
    epoch_batches: Any,
    begin_step: Any = None,
) -> tuple[int, float, int]:
    """(steps, mean loss, records with non-finite logits): `settings.epochs` passes over `epoch_batches()`.

    One optimizer step per batch. A batch is (uint8 images, labels, step info); `begin_step(info)`
    runs before its forward pass. Dihedral augmentation draws from `augmentation` (a secret stream).
    A record whose logits are not finite (e.g. under weights crafted to overflow on one patient)
    gets an exact zero gradient (`common.training.dp_engine.finite_rows`), so the update stays finite and
    does not reveal whether that record was there; the count stays local.
    """
    total_loss, loss_batches, steps, nonfinite = 0.0, 0, 0, 0
    dev = device()
    with warnings.catch_warnings():
        # Opacus' hooks on a network whose input needs no gradient make PyTorch warn that full
        # backward hooks fire without input gradients; harmless here, so silenced for this loop only.
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        for epoch in range(settings.epochs):
            batches = epoch_batches()
            for images, labels, info in progress(batches, desc=f"{desc} epoch {epoch + 1}/{settings.epochs}", unit="batch"):
                images, labels = images.to(dev), labels.to(dev)
                if settings.augment:
                    images = random_dihedral(images, augmentation)
                optimizer.zero_grad(set_to_none=True)
                if begin_step is not None:
                    begin_step(info)
                logits, masked = finite_rows(train_model(normalise(images)))
                nonfinite += masked
                if len(labels):
                    loss = criterion(logits, labels)
                    total_loss += float(loss.detach())
                    loss_batches += 1
                    loss.backward()
                else:  # an empty Poisson batch still takes a (pure-noise) step, as the accountant assumes
                    (logits.sum() * 0.0).backward()
                optimizer.step()
                steps += 1
    return steps, total_loss / max(loss_batches, 1), nonfinite


def detach_training(model: nn.Module, private_model: nn.Module | None, proximal: RemovableHandle | None,
                    extra: Callable[[], None] | None) -> None:
    """Remove what training attached: FedProx's term, the extra records (simulation) and (under DP) Opacus' hooks."""
    if proximal is not None:
        proximal.remove()
    if extra is not None:
        extra()
    if private_model is not None:
        _detach_dp(model, private_model)


def _detach_dp(model: nn.Module, train_model: nn.Module) -> None:
    """Remove Opacus' hooks and the per-sample state it leaves on the parameters."""
    train_model.remove_hooks()  # type: ignore[attr-defined]
    model.zero_grad(set_to_none=True)
    for p in model.parameters():
        for attr in ("grad_sample", "_forward_counter", "_current_grad_sample", "_norm_sample", "summed_grad"):
            if hasattr(p, attr):
                delattr(p, attr)


def stain_augmenter(data: ImageSet, settings: TrainSettings) -> StainAugmenter | None:
    """Stain augmentation over `data` (stain matrices fitted once per image set, cached), or None.

    Its draws come from the round's secret key (a stream of their own), never from the run config.
    """
    if not settings.stain_augment:
        return None
    augmenter = StainAugmenter(data.images, settings.randomness.stream("stain-augmentation"))
    if augmenter.unusable:
        log.info("stain augmentation leaves %d of %d images as they are (no stain estimate)", augmenter.unusable,
                 len(data))
    return augmenter
