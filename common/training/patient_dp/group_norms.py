"""Exact per-patient gradient norms for patient-level ghost clipping (`common.training.patient_dp`).

`PatchGroups` says which patient each row of a batch belongs to; `GROUP_NORM_SAMPLERS` maps a
layer type to the function that computes, for every patient in a step, the norm of the gradient
summed over that patient's patches, without forming per-patch gradients where it can avoid it.
The per-sample (patch-level) samplers that Opacus uses stay in `common.model.dp_layers`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from opacus.grad_sample.conv import compute_conv_grad_sample
from torch import nn

from common.model.dp_layers import ChannelAffine, channel_affine_grad_sample

# Patient-level DP-SGD clips, per patient, the gradient summed over that patient's patches in
# the step: g_P = sum_{i in P} g_i. Ghost clipping only needs ||g_P||, and for the layers below it
# comes from the same activations A_i and output gradients G_i that the per-sample samplers use:
# for a convolution (or a linear layer over positions), g_i = G_i A_i^T, so
#     g_P = sum_{i in P} G_i A_i^T = [G_i1 .. G_ik] [A_i1 .. A_ik]^T,
# i.e. the group behaves like one sample whose positions are its members' positions side by side,
# and ||g_P||^2 = sum_{i,j in P} <G_i^T G_j, A_i^T A_j> (the cross-sample Gram blocks), or g_P is
# formed directly as a (C x D) matrix, whichever takes fewer operations. Exact in both cases, checked against
# per-patient gradients computed by a loop in tests/training/test_patient_dp.py.


class PatchGroups:
    """Which group (patient) each row of a batch belongs to, for per-group sums and norms.

    `index[i]` is the group of row i, in 0..num_groups-1. Rows of one group need not be
    contiguous. `pad` lays the rows out as (num_groups, width, ...) with zero rows where a group
    has fewer than `width` (the largest group's size) members.
    """

    def __init__(self, index: torch.Tensor, num_groups: int | None = None) -> None:
        index = torch.as_tensor(index, dtype=torch.int64).reshape(-1)
        if len(index) and int(index.min()) < 0:
            raise ValueError("group indices must be >= 0")
        groups = int(index.max()) + 1 if len(index) else 0
        if num_groups is not None:
            if num_groups < groups:
                raise ValueError(f"group index {groups - 1} out of range for {num_groups} groups")
            groups = num_groups
        self.index = index
        self.num_groups = groups
        self.sizes = torch.bincount(index, minlength=groups)
        self.width = int(self.sizes.max()) if groups else 0
        order = torch.argsort(index, stable=True)
        starts = torch.cumsum(self.sizes, 0) - self.sizes
        rank = torch.empty_like(index)
        rank[order] = torch.arange(len(index)) - starts[index[order]]
        self.slot = index * self.width + rank  # row i's position in the padded layout

    @classmethod
    def from_sizes(cls, sizes: torch.Tensor | list[int]) -> PatchGroups:
        """Groups of consecutive rows: the first sizes[0] rows are group 0, and so on."""
        sizes = torch.as_tensor(sizes, dtype=torch.int64)
        return cls(torch.repeat_interleave(torch.arange(len(sizes)), sizes), len(sizes))

    def __len__(self) -> int:
        """Number of rows (patches)."""
        return len(self.index)

    def sum(self, rows: torch.Tensor) -> torch.Tensor:
        """(num_groups, ...): the rows of each group summed."""
        self._check(rows)
        out = rows.new_zeros((self.num_groups, *rows.shape[1:]))
        return out.index_add_(0, self.index.to(rows.device), rows)

    def pad(self, rows: torch.Tensor) -> torch.Tensor:
        """(num_groups, width, ...): each group's rows, zero-padded to the largest group."""
        self._check(rows)
        out = rows.new_zeros((self.num_groups * self.width, *rows.shape[1:]))
        out[self.slot.to(rows.device)] = rows
        return out.view(self.num_groups, self.width, *rows.shape[1:])

    def expand(self, per_group: torch.Tensor) -> torch.Tensor:
        """(rows, ...): each row gets its group's value."""
        return per_group[self.index.to(per_group.device)]

    def _check(self, rows: torch.Tensor) -> None:
        if rows.shape[0] != len(self.index):
            raise ValueError(f"{rows.shape[0]} rows but group indices for {len(self.index)}")


GroupNormSampler = Callable[[nn.Module, list[torch.Tensor], torch.Tensor, PatchGroups], dict[nn.Parameter, torch.Tensor]]
GROUP_NORM_SAMPLERS: dict[type, GroupNormSampler] = {}


def register_group_norm_sampler(*layer_types: type) -> Callable[[GroupNormSampler], GroupNormSampler]:
    """Register an exact per-group gradient norm sampler (patient-level ghost clipping)."""

    def decorator(fn: GroupNormSampler) -> GroupNormSampler:
        for layer_type in layer_types:
            GROUP_NORM_SAMPLERS[layer_type] = fn
        return fn

    return decorator


def group_norms_from_grad_samples(
    grad_samples: dict[nn.Parameter, torch.Tensor], groups: PatchGroups
) -> dict[nn.Parameter, torch.Tensor]:
    """Exact per-group norms from per-sample gradients: sum each group's rows, then the norm."""
    return {p: groups.sum(g).flatten(start_dim=1).norm(dim=1) for p, g in grad_samples.items()}


def _grouped_product_norms(g: torch.Tensor, a: torch.Tensor, groups: PatchGroups) -> torch.Tensor:
    """||sum_{i in group} g_i a_i^T||_F per group, for g (n, C, T) and a (n, D, T).

    Each group's members are laid side by side as one sample with S = width*T positions
    (zero-padded: padding adds nothing to either product). Then either the Gram blocks,
    ||G A^T||^2 = sum_{s,t} (G^T G)_{st} (A^T A)_{st}, at S^2 (C + D) operations per group, or the
    (C x D) gradient G A^T itself, at S C D, whichever is fewer. Both are exact.
    """
    channels, positions = g.shape[1], g.shape[2]
    inputs = a.shape[1]
    if groups.num_groups == 0:
        return g.new_zeros((0,))
    span = groups.width * positions
    gg = groups.pad(g).permute(0, 2, 1, 3).reshape(groups.num_groups, channels, span)
    aa = groups.pad(a).permute(0, 2, 1, 3).reshape(groups.num_groups, inputs, span)
    if span * (channels + inputs) <= channels * inputs:
        squared = (torch.bmm(gg.transpose(1, 2), gg) * torch.bmm(aa.transpose(1, 2), aa)).sum(dim=(1, 2))
    else:
        squared = torch.bmm(gg, aa.transpose(1, 2)).pow(2).sum(dim=(1, 2))
    return squared.clamp(min=0).sqrt()


@register_group_norm_sampler(nn.Conv2d)
def conv2d_group_norm_sample(
    layer: nn.Conv2d, activations: list[torch.Tensor], backprops: torch.Tensor, groups: PatchGroups
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-group norms of a convolution's summed gradients, without per-sample gradients."""
    if layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        return group_norms_from_grad_samples(compute_conv_grad_sample(layer, activations, backprops), groups)
    x = activations[0].to(backprops.dtype)
    out: dict[nn.Parameter, torch.Tensor] = {}
    g = backprops.flatten(start_dim=2)  # n, C_out, T
    if layer.weight.requires_grad:
        a = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)  # n, C_in*k*k, T
        out[layer.weight] = _grouped_product_norms(g, a, groups)
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = groups.sum(g.sum(dim=2)).norm(dim=1)
    return out


@register_group_norm_sampler(nn.Linear)
def linear_group_norm_sample(
    layer: nn.Linear, activations: list[torch.Tensor], backprops: torch.Tensor, groups: PatchGroups
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-group norms of a linear layer's summed gradients (inputs (n, ..., D), any positions)."""
    a = activations[0].to(backprops.dtype)
    b = backprops
    if b.dim() == 2:  # one position per sample
        a, b = a.unsqueeze(1), b.unsqueeze(1)
    else:  # (n, ..., features): every middle index is a position
        a, b = a.flatten(1, -2), b.flatten(1, -2)
    # a: n, L, D and b: n, L, C
    out: dict[nn.Parameter, torch.Tensor] = {}
    if layer.weight.requires_grad:
        out[layer.weight] = _grouped_product_norms(b.transpose(1, 2), a.transpose(1, 2), groups)
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = groups.sum(b.sum(dim=1)).norm(dim=1)
    return out


@register_group_norm_sampler(ChannelAffine)
def channel_affine_group_norm_sample(
    layer: ChannelAffine, activations: list[torch.Tensor], backprops: torch.Tensor, groups: PatchGroups
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-group norms of the BatchNorm scale/shift gradients (per-sample gradients are tiny)."""
    return group_norms_from_grad_samples(channel_affine_grad_sample(layer, activations, backprops), groups)
