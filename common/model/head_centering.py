"""The head trained on centred features (`head-centering`): the same model, a parametrisation DP noise hurts less.

A ResNet's pooled features come after a ReLU, so every feature is positive and most of a feature vector is the
mean all images share (the README's from-scratch ResNet-18: |f| ≈ 42, of which the mean ≈ 41; |f - mean| ≈ 12).
DP-SGD adds isotropic noise ξ to the head's weights W, and the logits then move by ξ·f: mostly ξ·mean, a random
per-class offset that is the same for every image and shifts predictions toward one class. The per-record gradient
(p - y) ⊗ f is dominated by the same shared mean, so clipping spends most of each record's budget on it.

Training the head as W·(f - m) + b' instead (m: the mean feature vector of images the server holds and may use
freely, `feature_mean`; b' = b + W·m) computes exactly the same function, yet the noise moves the logits by
ξ·(f - m) only, and a record's clipped gradient carries the part of f that tells images apart (De et al. 2022 and
Tramèr & Boneh 2021 normalise features before DP training for the same reason). `centred_head` does this
around a site's local training and folds it back afterwards (b = b' - W·m), so the model that travels, is
averaged, saved and evaluated is the plain torchvision ResNet it always was.

Privacy: m comes from the server (server-held images, never a site's), the fold is arithmetic on the site's DP
output and the public m: post-processing, no privacy cost. A crafted m can make logits overflow for some record;
such a record gets a zero gradient like any other non-finite one (`common.training.dp_engine`), and m is screened
before any data is read (`client.server_input`: finite, bounded, the head's width).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

AUTO, ON, OFF = "auto", "on", "off"  # common.config.choices.CENTER_HEAD_SETTINGS


def centring_applies(setting: str, pretrained: bool) -> bool:
    """Whether a run trains the head on centred features: `on`, or `auto` from scratch (not pretrained weights).

    Measured (README, "Why the head is trained on centred features"; docs/BENCHMARKS.md, patient-privacy): from
    scratch the pooled features are mostly their shared mean and centring took the README run from 0.61-0.72 to
    0.83-0.88; on LC25000 with the public-share pretrained backbone, the DP rows with it ended at their start
    more often than without (4 of 8 kept no round, against 0 of 8), so `auto` leaves a pretrained head as it is.
    """
    return setting == ON or (setting == AUTO and not pretrained)


def head(model: nn.Module) -> nn.Linear:
    """The classification head (torchvision's `fc`)."""
    fc = getattr(model, "fc", None)
    if not isinstance(fc, nn.Linear):
        raise ValueError("the model has no linear classification head `fc`")
    return fc


@torch.no_grad()
def feature_mean(model: nn.Module, images: torch.Tensor, batch_size: int = 256,
                 prepare: Callable[[torch.Tensor], torch.Tensor] = lambda batch: batch) -> np.ndarray:
    """The mean of the head's input over `images` (NCHW; `prepare` makes a batch the network's input), float32."""
    if len(images) == 0:
        raise ValueError("no images to estimate the head's input mean on")
    fc = head(model)
    total = torch.zeros(fc.in_features, dtype=torch.float64)

    def add(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        total.add_(args[0].detach().double().sum(dim=0))

    handle = fc.register_forward_pre_hook(add)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(images), batch_size):
            model(prepare(images[start:start + batch_size]))
    finally:
        handle.remove()
        model.train(was_training)
    return (total / len(images)).float().numpy()


@contextmanager
def centred_head(model: nn.Module, mean: np.ndarray | None) -> Iterator[None]:
    """Train the head as W·(f - mean) + b' inside the block; the same function before, inside and after.

    On entry b' = b + W·mean and the head's input is shifted by -mean (a forward pre-hook, which Opacus' per-sample
    hooks see, so per-record gradients are those of the centred head); on exit the hook goes and b = b' - W·mean.
    `mean=None` does nothing.
    """
    if mean is None:
        yield
        return
    fc = head(model)
    shift = torch.as_tensor(np.asarray(mean, dtype=np.float32), device=fc.weight.device)
    if shift.shape != (fc.in_features,):
        raise ValueError(f"a head input mean has {fc.in_features} values, got shape {tuple(shift.shape)}")
    if fc.bias is None:
        raise ValueError("centring the head needs its bias")
    with torch.no_grad():
        fc.bias.add_(fc.weight @ shift)
    handle = fc.register_forward_pre_hook(lambda _module, args: (args[0] - shift, *args[1:]))
    try:
        yield
    finally:
        handle.remove()
        with torch.no_grad():
            fc.bias.sub_(fc.weight @ shift)


def to_bytes(mean: np.ndarray) -> bytes:
    """The wire form: float32 little-endian."""
    return np.asarray(mean, dtype="<f4").tobytes()


def from_bytes(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)
