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

It also registers the per-sample gradient *norm* samplers that make Opacus' ghost clipping
fast for convolutions (see `conv2d_norm_sample`); their per-group (per-patient) counterparts
for patient-level DP-SGD live in `common.training.patient_dp.group_norms`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from opacus.grad_sample import register_grad_sampler, register_norm_sampler
from opacus.grad_sample.conv import compute_conv_grad_sample
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


@register_norm_sampler(ChannelAffine)
def channel_affine_norm_sample(
    layer: ChannelAffine, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradient norms for Opacus' ghost clipping (the gradients are tiny anyway)."""
    return {p: g.norm(dim=1) for p, g in channel_affine_grad_sample(layer, activations, backprops).items()}


@register_norm_sampler(nn.Conv2d)
def conv2d_norm_sample(
    layer: nn.Conv2d, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradient norms of a convolution without materialising the gradients.

    Opacus ships norm samplers for Linear and Embedding only, so in ghost mode every
    convolution fell back to instantiating per-sample gradients (B x C_out x C_in x k x k:
    600 MB per batch for one ResNet layer4 conv), which made DP training of `full` and
    `last-block` ~25x slower than non-private. For sample n with unfolded input
    A_n (D x T) and output gradient G_n (C x T), the weight gradient is G_n A_n^T, and
    ||G_n A_n^T||_F^2 = sum_{t,s} (G_n^T G_n)_{ts} (A_n^T A_n)_{ts}: the "ghost norm" trick,
    cheaper whenever T^2 < C*D (deep layers). Otherwise G_n A_n^T is formed directly, which
    is still cheap there (early layers have few channels). Exact, not an approximation:
    tests/training/test_dp_fast_paths.py checks it against per-sample gradients.
    """
    if layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        grads = compute_conv_grad_sample(layer, activations, backprops)
        return {p: g.reshape(len(g), -1).norm(dim=1) for p, g in grads.items()}
    x = activations[0].to(backprops.dtype)
    out: dict[nn.Parameter, torch.Tensor] = {}
    g = backprops.flatten(start_dim=2)  # n, C_out, T (works for an empty Poisson batch too)
    if layer.weight.requires_grad:
        a = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)  # n, C_in*k*k, T
        positions, channels, inputs = g.shape[2], g.shape[1], a.shape[1]
        if positions * positions <= channels * inputs:
            squared = (torch.bmm(g.transpose(1, 2), g) * torch.bmm(a.transpose(1, 2), a)).sum(dim=(1, 2))
        else:
            squared = torch.bmm(g, a.transpose(1, 2)).pow(2).sum(dim=(1, 2))
        out[layer.weight] = squared.clamp(min=0).sqrt()
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = g.sum(dim=2).norm(dim=1)
    return out


# -- per-group (patient-level) gradient norms ------------------------------------------------
#
