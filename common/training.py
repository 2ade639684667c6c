"""Local training (with or without Opacus DP-SGD) and evaluation of a model on an ImageSet."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import common.dp_layers  # noqa: F401 - registers the Opacus grad/norm samplers used below
from common.data.imageset import ImageSet
from common.progress import progress

log = logging.getLogger("fedpath.training")

# torchvision's ImageNet statistics: what pretrained backbones expect as input.
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

warnings.filterwarnings("ignore", message="Secure RNG turned off")
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")
warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def as_tensor_dataset(data: ImageSet) -> TensorDataset:
    """uint8 NCHW images + labels; conversion to float happens per batch to save memory."""
    images = torch.from_numpy(np.ascontiguousarray(data.images)).permute(0, 3, 1, 2).contiguous()
    return TensorDataset(images, torch.from_numpy(data.labels))


def normalise(batch: torch.Tensor) -> torch.Tensor:
    return (batch.float().div_(255.0) - IMAGENET_MEAN.to(batch.device)) / IMAGENET_STD.to(batch.device)


def random_dihedral(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-sample random flips and 90-degree rotation: tissue has no canonical orientation."""
    if batch.shape[0] == 0:
        return batch
    flags = torch.rand(3, batch.shape[0], generator=generator) < 0.5
    pick = lambda mask, a, b: torch.where(mask.view(-1, 1, 1, 1).to(a.device), a, b)  # noqa: E731
    batch = pick(flags[0], batch.flip(3), batch)
    batch = pick(flags[1], batch.flip(2), batch)
    if batch.shape[2] == batch.shape[3]:
        batch = pick(flags[2], batch.transpose(2, 3), batch)
    return batch


@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    seed: int
    dp: bool
    noise_multiplier: float = 0.0
    max_grad_norm: float = 1.0
    augment: bool = True
    grad_sample_mode: str = "hooks"  # Opacus: "hooks" (per-sample gradients) or "ghost" (ghost clipping)


@dataclass(frozen=True)
class TrainOutcome:
    num_examples: int
    mean_loss: float
    steps: int
    sample_rate: float
    history: list[tuple[float, float, int]] | None  # accountant history after training (DP only)


def grad_sample_mode_for(policy: str, requested: str = "auto") -> str:
    """Opacus mode for a policy: ghost clipping where convolutions train, hooks otherwise.

    Both clip each sample's gradient to the same norm and add the same noise; only how the
    per-sample norms are computed differs (benchmarked in docs/BENCHMARKS.md).
    """
    if requested != "auto":
        return requested
    return "ghost" if policy in ("full", "last-block") else "hooks"


def steps_per_epoch(num_examples: int, batch_size: int) -> tuple[int, float]:
    """(steps, Poisson sample rate) exactly as Opacus' DPDataLoader derives them."""
    loader_len = max(1, -(-num_examples // batch_size))
    return loader_len, 1.0 / loader_len


def train_local(
    model: nn.Module,
    data: ImageSet,
    settings: TrainSettings,
    history: list[tuple[float, float, int]] | None = None,
    desc: str = "local training",
) -> TrainOutcome:
    """Train `model` in place; under DP the accountant starts from the site's `history`."""
    if len(data) == 0:
        raise ValueError("no training examples")
    dev = device()
    model.to(dev).train()
    generator = torch.Generator().manual_seed(settings.seed)
    loader = DataLoader(
        as_tensor_dataset(data), batch_size=min(settings.batch_size, len(data)), shuffle=True, generator=generator
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum)
    engine: PrivacyEngine | None = None
    train_model: nn.Module = model
    criterion: Any = nn.CrossEntropyLoss()
    if settings.dp:
        engine = PrivacyEngine(accountant="rdp")
        engine.accountant.load_state_dict({"history": list(history or []), "mechanism": "rdp"})
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
    total_loss, loss_batches, steps = 0.0, 0, 0
    try:
        for epoch in range(settings.epochs):
            for images, labels in progress(loader, desc=f"{desc} epoch {epoch + 1}/{settings.epochs}", unit="batch"):
                images, labels = images.to(dev), labels.to(dev)
                if settings.augment:
                    images = random_dihedral(images, generator)
                optimizer.zero_grad(set_to_none=True)
                logits = train_model(normalise(images))
                if len(labels):
                    loss = criterion(logits, labels)
                    total_loss += float(loss.detach())
                    loss_batches += 1
                    loss.backward()
                else:  # an empty Poisson batch still takes a (pure-noise) step, as the accountant assumes
                    (logits.sum() * 0.0).backward()
                optimizer.step()
                steps += 1
    finally:
        if engine is not None:
            train_model.remove_hooks()  # type: ignore[union-attr]
            model.zero_grad(set_to_none=True)
            for p in model.parameters():
                for attr in ("grad_sample", "_forward_counter", "_current_grad_sample"):
                    if hasattr(p, attr):
                        delattr(p, attr)
    model.eval()
    sample_rate = 1.0 / len(loader) if engine is None else float(loader.sample_rate)  # type: ignore[attr-defined]
    new_history = None
    if engine is not None:
        new_history = [(float(s), float(q), int(n)) for s, q, n in engine.accountant.state_dict()["history"]]
    return TrainOutcome(
        num_examples=len(data),
        mean_loss=total_loss / max(loss_batches, 1),
        steps=steps,
        sample_rate=sample_rate,
        history=new_history,
    )


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
