"""BatchNorm statistics re-estimated on target-domain public data (`bn-statistics = public`).

A backbone pretrained on another domain (another organ, another stain, synthetic images) keeps
its source domain's BatchNorm running mean/variance as frozen buffers (`common.model.dp_layers`): no
policy trains them, because Opacus cannot. On target-domain images those statistics no longer
normalise anything, and `norm-head`/`head` fine-tuning can end below training from scratch
(docs/BENCHMARKS.md, cross-domain). `estimate_statistics` replaces every BatchNorm's statistics
by the exact per-channel mean and (population) variance of its input over images the
coordinating centre holds and may use freely (the run's public share), layer by layer in
forward order, each layer seeing the layers before it already re-estimated: what eval-mode
BatchNorm would have had if the network had been trained on that data.

The server does this once, before round 1, and sends the statistics with every round's
instructions (`pack`/`unpack`: 2 x float32 per channel, 37.5 KiB for ResNet-18; the key
`bn-statistics` of `common.wire.instruction`); sites put them into their frozen layers before the
frozen-layer fingerprint check. No site data is touched, so it costs no privacy budget.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from common.config.choices import BN_STATISTICS_SETTINGS
from common.model.dp_layers import FrozenBatchNorm2d

__all__ = ["BN_STATISTICS_SETTINGS", "estimate_statistics", "pack", "unpack"]


def frozen_batchnorms(model: nn.Module) -> list[FrozenBatchNorm2d]:
    """Every frozen BatchNorm in registration order, in which each one's inputs come after its inputs' layers."""
    return [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]


class _Reached(Exception):
    """Raised by the hook once the layer being estimated has seen its input: the rest need not run."""


@torch.no_grad()
def estimate_statistics(model: nn.Module, images: torch.Tensor, batch_size: int = 256,
                        prepare: Callable[[torch.Tensor], torch.Tensor] = lambda batch: batch) -> None:
    """Set every frozen BatchNorm's statistics to those of its input over `images` (NCHW).

    `prepare` turns a batch into the network's input (e.g. uint8 pixels into normalised floats),
    so only one batch is ever held as floats. One pass per layer (stopped at that layer): layer
    k's input depends on the statistics of layers before it, which are already replaced. Sums in
    float64; the variance is the population variance, what BatchNorm divides by.
    """
    if len(images) == 0:
        raise ValueError("no images to estimate BatchNorm statistics from")
    was_training = model.training
    model.eval()
    try:
        for layer in frozen_batchnorms(model):
            _estimate_layer(model, layer, images, batch_size, prepare)
    finally:
        model.train(was_training)


def _estimate_layer(model: nn.Module, layer: FrozenBatchNorm2d, images: torch.Tensor, batch_size: int,
                    prepare: Callable[[torch.Tensor], torch.Tensor]) -> None:
    sums = torch.zeros(layer.num_features, dtype=torch.float64)
    squares = torch.zeros(layer.num_features, dtype=torch.float64)
    count = 0

    def accumulate(_: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        nonlocal count
        x = inputs[0].detach().double().cpu()
        sums.add_(x.sum(dim=(0, 2, 3)))
        squares.add_(x.pow(2).sum(dim=(0, 2, 3)))
        count += x.shape[0] * x.shape[2] * x.shape[3]
        raise _Reached

    handle = layer.register_forward_pre_hook(accumulate)
    try:
        for start in range(0, len(images), batch_size):
            try:
                model(prepare(images[start:start + batch_size]))
            except _Reached:
                pass
    finally:
        handle.remove()
    mean = sums / count
    variance = (squares / count - mean.pow(2)).clamp(min=0.0)
    layer.running_mean.copy_(mean.to(layer.running_mean.dtype))
    layer.running_var.copy_(variance.to(layer.running_var.dtype))


def pack(model: nn.Module) -> bytes:
    """The frozen statistics as bytes: all means, then all variances, float32 little-endian, layer order."""
    layers = frozen_batchnorms(model)
    values = [layer.running_mean for layer in layers] + [layer.running_var for layer in layers]
    return torch.cat([v.detach().cpu().float() for v in values]).numpy().astype("<f4").tobytes()


def unpack(model: nn.Module, blob: bytes) -> None:
    """Put statistics made by `pack` into `model`'s frozen BatchNorms; a blob of another model is refused."""
    layers = frozen_batchnorms(model)
    channels = sum(layer.num_features for layer in layers)
    if len(blob) != 2 * 4 * channels:
        raise ValueError(f"BatchNorm statistics of {len(blob)} bytes do not fit this model "
                         f"({len(layers)} BatchNorms, {channels} channels: {8 * channels} bytes expected)")
    values = torch.from_numpy(np.frombuffer(blob, dtype="<f4").astype(np.float32))
    means, variances = values[:channels], values[channels:]
    if not bool(torch.isfinite(values).all()) or bool((variances < 0).any()):
        raise ValueError("BatchNorm statistics must be finite with variances >= 0")
    offset = 0
    with torch.no_grad():
        for layer in layers:
            width = layer.num_features
            layer.running_mean.copy_(means[offset:offset + width])
            layer.running_var.copy_(variances[offset:offset + width])
            offset += width
