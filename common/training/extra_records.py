"""Simulation only: extra per-record gradients that a training step clips together with its real records.

`TrainSettings.extra_records` (None at every deployed site, which never sets it) is called once per
step with the trainable parameters and the step's Poisson rate; it returns the per-record gradients of
the extra records that take part in the step, one (k, *p.shape) tensor per parameter, or None. They enter
the step exactly where the real records' per-record gradients are, so whatever clipping the step does
(or fails to do) to a record, it does to them: this is how the empirical audit
(`simulations.harness.gradient_canaries`) plants canaries whose gradients pass through the clipping,
so that an audit notices clipping that does not clip. Nothing here knows about canaries.

* Opacus `hooks` mode (patch or patient level): the rows are appended to each parameter's per-record
  `grad_sample` rows just before the DPOptimizer clips; at the patient level they join as patients of
  their own, after the per-patient grouping. Opacus' own clipping, summing and noise then act on them.
* `ghost` mode: no per-record rows exist to append to; each extra row is clipped with Opacus' ghost rule,
  min(1, C / (‖row‖ + 1e-6)), C the clipping module's own bound, and added to the clipped sum before the
  noise.
* Without DP: no record is clipped, so neither are they; they join the step's mean gradient as records of
  a batch of `batch_size`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from torch import nn

from common.training.patient_dp.group_norms import PatchGroups
from common.training.settings import ExtraRecords


def attach_extra_records(optimizer: torch.optim.Optimizer, module: nn.Module, extra: ExtraRecords | None,
                         sample_rate: float, batch_size: int) -> Callable[[], None] | None:
    """Make this optimizer instance take `extra`'s records into every step; returns the detacher, or None."""
    if extra is None:
        return None
    params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
    if isinstance(optimizer, DPOptimizerFastGradientClipping):
        return _wrap(optimizer, "accumulate", lambda: _add_ghost_clipped(params, extra(params, sample_rate), module))
    if isinstance(optimizer, DPOptimizer):
        return _wrap(optimizer, "clip_and_accumulate", lambda: _append_rows(optimizer, params, extra(params, sample_rate)),
                     before=True)

    @torch.no_grad()
    def add_to_mean(_optimizer: torch.optim.Optimizer, _args: object, _kwargs: object) -> None:
        for p, rows in zip(params, extra(params, sample_rate) or []):
            total = rows.to(p.device).sum(dim=0) / batch_size
            p.grad = total if p.grad is None else p.grad.add_(total)

    return optimizer.register_step_pre_hook(add_to_mean).remove


def _wrap(optimizer: torch.optim.Optimizer, name: str, action: Callable[[], None],
          before: bool = False) -> Callable[[], None]:
    """Run `action` before or after this instance's `name` method; returns what undoes it."""
    original = getattr(optimizer, name)

    def wrapped() -> None:
        if before:
            action()
        original()
        if not before:
            action()

    setattr(optimizer, name, wrapped)
    return lambda: delattr(optimizer, name)


@torch.no_grad()
def _append_rows(optimizer: DPOptimizer, params: list[torch.Tensor], rows: list[torch.Tensor] | None) -> None:
    """hooks mode: the extra rows become per-record rows of the step (patients of their own at patient level)."""
    if not rows or len(rows[0]) == 0:
        return
    groups: PatchGroups | None = getattr(optimizer, "patch_groups", None)
    if groups is not None:  # patient level: summed per patient before clipping; each extra row its own patient
        extra = groups.num_groups + torch.arange(len(rows[0]))
        optimizer.patch_groups = PatchGroups(torch.cat([groups.index, extra]), groups.num_groups + len(rows[0]))
    for p, r in zip(params, rows):
        own = optimizer._get_flat_grad_sample(p)
        p.grad_sample = torch.cat([own, r.to(device=own.device, dtype=own.dtype)])  # type: ignore[attr-defined]


@torch.no_grad()
def _add_ghost_clipped(params: list[torch.Tensor], rows: list[torch.Tensor] | None, module: nn.Module) -> None:
    """ghost mode: each extra row clipped as Opacus' ghost clipping clips a record, added to the clipped sum."""
    if not rows or len(rows[0]) == 0:
        return
    norms = torch.stack([r.reshape(len(r), -1).norm(2, dim=1) for r in rows], dim=1).norm(2, dim=1)
    factor = (module.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)  # type: ignore[operator]
    for p, r in zip(params, rows):
        p.summed_grad.add_(torch.einsum("i,i...", factor.to(r.device), r).to(p.summed_grad))  # type: ignore[attr-defined]
