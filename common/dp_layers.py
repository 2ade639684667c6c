"""Layers that let Opacus train a pretrained ResNet without destroying it.

Opacus cannot compute per-sample gradients for BatchNorm (its batch statistics mix
samples) and `ModuleValidator.fix` swaps BatchNorm for freshly initialised GroupNorm,
which throws away the pretrained statistics. We instead freeze each BatchNorm into two
modules:

* `FrozenBatchNorm2d`: the pretrained running mean/variance as buffers, no parameters.
  Opacus never hooks it (it has nothing to train), so holding buffers is allowed.
* `ChannelAffine`: the per-channel scale/shift as trainable parameters, no buffers,
  with a per-sample gradient sampler registered with Opacus below.

Together they compute exactly what eval-mode `nn.BatchNorm2d` computes.
"""

from __future__ import annotations

import torch
from opacus.grad_sample import register_grad_sampler
from torch import nn


class FrozenBatchNorm2d(nn.Module):
    """Normalise with fixed (pretrained) statistics; nothing here is trainable."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Same arithmetic as F.batch_norm in eval mode, so outputs match torchvision.
        inv_std = torch.rsqrt(self.running_var + self.eps)
        scale = inv_std.view(1, -1, 1, 1)
        shift = (-self.running_mean * inv_std).view(1, -1, 1, 1)
        return x * scale + shift

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class ChannelAffine(nn.Module):
    """Trainable per-channel scale and shift (the BatchNorm gamma/beta)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias.view(1, -1, 1, 1), x, self.weight.view(1, -1, 1, 1))

    def extra_repr(self) -> str:
        return f"{self.num_features}"


class FrozenStatsBatchNorm(nn.Sequential):
    """Drop-in replacement for `nn.BatchNorm2d` that keeps its pretrained state."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = FrozenBatchNorm2d(num_features, eps)
        self.affine = ChannelAffine(num_features)

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d) -> FrozenStatsBatchNorm:
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError("BatchNorm without running statistics cannot be frozen")
        frozen = cls(bn.num_features, bn.eps)
        with torch.no_grad():
            frozen.norm.running_mean.copy_(bn.running_mean)
            frozen.norm.running_var.copy_(bn.running_var)
            if bn.affine:
                frozen.affine.weight.copy_(bn.weight)
                frozen.affine.bias.copy_(bn.bias)
        return frozen


@register_grad_sampler(ChannelAffine)
def channel_affine_grad_sample(
    layer: ChannelAffine, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradients of y = x * w + b, summed over the spatial positions."""
    x = activations[0]
    grads: dict[nn.Parameter, torch.Tensor] = {}
    if layer.weight.requires_grad:
        grads[layer.weight] = torch.einsum("nchw,nchw->nc", x, backprops)
    if layer.bias.requires_grad:
        grads[layer.bias] = backprops.sum(dim=(2, 3))
    return grads
