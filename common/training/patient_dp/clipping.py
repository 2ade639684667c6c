"""Clipping per record with Opacus' own classes, and `make_private_per_patient` that wires them.

A record is a patient (patient-level DP) or a patch (patch-level DP: every patch its own patient,
one patch each). `hooks` mode sums each parameter's per-patch gradient rows per patient before
Opacus' DPOptimizer clips; `ghost` mode computes each patient's gradient norm exactly and gives its
patches the patient's clipping factor. Either way one record moves the noised sum by at most C,
and a record whose gradient is not finite contributes nothing (`common.training.dp_engine`). The noise comes
from the site's secret stream (`SecretNoise`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.grad_sample.functorch import ft_compute_per_sample_gradient
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.optimizers.optimizer import _check_processed_flag
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping, DPTensorFastGradientClipping
from opacus.utils.module_utils import trainable_parameters
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.hooks import RemovableHandle

from common.privacy.randomness import SecretStream
from common.training.dp_engine import SecretNoise, zero_nonfinite_records
from common.training.patient_dp.group_norms import GROUP_NORM_SAMPLERS, PatchGroups, group_norms_from_grad_samples
from common.training.patient_dp.sampling import PatientPoissonSampler, PatientStep


class PatientDPOptimizer(SecretNoise, DPOptimizer):
    """Opacus' DPOptimizer with one `grad_sample` row per patient, finite rows, and the site's noise.

    Before Opacus clips, each parameter's per-patch `grad_sample` rows are summed per patient
    (`patch_groups`, set for every step), and every patient whose summed gradient is not finite
    gets a zero row, so clipping, summing and noise act on finite per-patient gradients. An empty
    step has zero rows and so adds pure noise, as the accountant assumes.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.patch_groups: PatchGroups | None = None
        self.nonfinite_records = 0  # local diagnostic: records zeroed so far (never sent)

    def clip_and_accumulate(self) -> None:
        groups = self.patch_groups
        if groups is None:
            raise RuntimeError("patient-level DP step without patch groups (call begin_step first)")
        for p in self.params:
            _check_processed_flag(p.grad_sample)
            p.grad_sample = groups.sum(self._get_flat_grad_sample(p))
        self.nonfinite_records += zero_nonfinite_records([p.grad_sample for p in self.params])
        self.patch_groups = None  # one step only
        super().clip_and_accumulate()


class SecretNoiseGhostOptimizer(SecretNoise, DPOptimizerFastGradientClipping):
    """Opacus' ghost-clipping optimizer with the noise drawn from the site's secret stream."""



class PatientGhostClippingModule(GradSampleModuleFastGradientClipping):
    """Opacus' ghost-clipping module with per-patient norms and clipping factors.

    With `patch_groups` set, every hooked layer records ||sum over a patient's patches of
    the per-patch gradient|| for each patient (exact: `GROUP_NORM_SAMPLERS`, else per-sample
    gradients summed per patient), and `get_clipping_coef` gives each patch its patient's
    factor min(1, C / ||patient gradient||), so Opacus' second backward pass computes the sum of
    the clipped per-patient gradients; a patient whose norm is not finite gets factor 0 (and,
    through `FiniteGhostLoss`, no loss in the second pass).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.patch_groups: PatchGroups | None = None
        self.nonfinite_records = 0  # local diagnostic: records zeroed so far (never sent)

    def capture_backprops_hook(
        self,
        module: nn.Module,
        _forward_input: torch.Tensor,
        forward_output: torch.Tensor,
        loss_reduction: str,
        batch_first: bool,
    ) -> None:
        groups = self.patch_groups
        if groups is None:
            return super().capture_backprops_hook(module, _forward_input, forward_output, loss_reduction, batch_first)
        if not self.hooks_enabled:
            return None
        backprops = forward_output[0].detach()
        activations, backprops = self.rearrange_grad_samples(
            module=module, backprops=backprops, loss_reduction=loss_reduction, batch_first=batch_first
        )
        if backprops.shape[0] != len(groups):
            raise ValueError(f"batch of {backprops.shape[0]} patches but patch groups for {len(groups)}")
        params = [p for _, p in trainable_parameters(module)]
        if any(p._forward_counter != 1 for p in params):
            raise NotImplementedError("patient-level clipping does not support layers used twice in a forward pass")
        group_sampler = GROUP_NORM_SAMPLERS.get(type(module))
        if group_sampler is not None:
            norms = group_sampler(module, activations, backprops, groups)
        else:
            grad_sampler = self.GRAD_SAMPLERS.get(type(module), ft_compute_per_sample_gradient)
            if self.force_functorch:
                grad_sampler = ft_compute_per_sample_gradient
            norms = group_norms_from_grad_samples(grad_sampler(module, activations, backprops), groups)
        for p in params:
            p._norm_sample = norms[p]
            p._forward_counter -= 1
        if len(module.activations) == 0 and hasattr(module, "max_batch_len"):
            del module.max_batch_len
        return None

    def get_clipping_coef(self) -> torch.Tensor:
        """Each patch's factor: its patient's min(1, C / norm), and 0 where that norm is not finite."""
        groups = self.patch_groups
        if groups is None:
            raise RuntimeError("patient-level DP step without patch groups (call begin_step first)")
        norms = self.get_norm_sample()
        finite = torch.isfinite(norms)
        self.nonfinite_records += int((~finite).sum())
        per_patient = torch.where(finite, (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0), torch.zeros_like(norms))
        return groups.expand(per_patient)


class FiniteGhostLoss(DPLossFastGradientClipping):
    """Opacus' ghost-clipping loss whose second backward leaves out the records clipped to 0.

    A record with a non-finite norm gets factor 0, but 0 x NaN is NaN: its loss is replaced by an
    exact 0 (`torch.where`) before the second backward, so nothing of it reaches the sum.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> DPTensorFastGradientClipping:
        wrapped = super().__call__(*args, **kwargs)
        return _FiniteGhostTensor(wrapped.module, wrapped.optimizer, wrapped.loss_per_sample, wrapped.loss_reduction)


class _FiniteGhostTensor(DPTensorFastGradientClipping):
    def backward(self) -> None:  # Opacus' two passes, with the zero-factor records' losses masked out
        reduced = self.loss_per_sample.mean(dim=0) if self.loss_reduction == "mean" else self.loss_per_sample.sum(dim=0)
        reduced.backward(retain_graph=True)
        self.optimizer.zero_grad()
        coeff = self.module.get_clipping_coef().to(self.loss_per_sample.device)
        kept = torch.where(coeff > 0, self.loss_per_sample, torch.zeros_like(self.loss_per_sample))
        self.module.disable_hooks()
        (coeff * kept).sum().backward()
        self.module.enable_hooks()


def sanitize_inputs(module: nn.Module) -> list[RemovableHandle]:
    """Ghost mode: every trainable layer sees its input with non-finite values replaced by 0.

    Ghost clipping forms the summed gradient by autograd over all records at once, where a record
    with an infinite activation would poison the sum (0 x inf). Replacing such values is a rule per
    record and per value, blind to the other records, so each record's gradient stays a function of
    that record alone and clipping still bounds it. Finite inputs pass unchanged.
    """
    def hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(torch.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0) if torch.is_tensor(a) and a.is_floating_point()
                     else a for a in args)

    return [m.register_forward_pre_hook(hook) for m in module.modules()
            if any(p.requires_grad for p in m.parameters(recurse=False))]



@dataclass
class PatientPrivateTraining:
    """What `make_private_per_patient` returns: train with these, calling `begin_step` first."""

    module: nn.Module  # GradSampleModule (hooks) or PatientGhostClippingModule (ghost)
    optimizer: DPOptimizer
    criterion: Any
    sampler: PatientPoissonSampler
    sanitizers: list[RemovableHandle]  # ghost mode: the input sanitizers to remove after training

    def begin_step(self, step: PatientStep) -> None:
        """Tell the clipping which patient each row of the coming batch belongs to."""
        if isinstance(self.module, PatientGhostClippingModule):
            self.module.patch_groups = step.groups
        if isinstance(self.optimizer, PatientDPOptimizer):
            self.optimizer.patch_groups = step.groups

    @property
    def nonfinite_records(self) -> int:
        """Records (patients, or patches) whose gradient was not finite and so contributed nothing."""
        owner = self.module if isinstance(self.module, PatientGhostClippingModule) else self.optimizer
        return int(getattr(owner, "nonfinite_records", 0))

    def remove_sanitizers(self) -> None:
        for handle in self.sanitizers:
            handle.remove()
        self.sanitizers.clear()


def make_private_per_patient(
    accountant: RDPAccountant,
    noise_stream: SecretStream,
    *,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: Any,
    sampler: PatientPoissonSampler,
    noise_multiplier: float,
    max_grad_norm: float,
    grad_sample_mode: str = "hooks",
) -> PatientPrivateTraining:
    """Per-record counterpart of `PrivacyEngine.make_private` (Poisson sampling, flat clipping).

    `noise_stream` is the site's secret noise stream; `sampler` draws from another of the
    round's secret streams. `accountant` (the site's, with its whole history) records
    (noise_multiplier, q) for every step.
    """
    if not isinstance(noise_stream, SecretStream):
        raise TypeError("the noise must come from the site's secret stream (common.privacy.randomness.SecretStream)")
    if grad_sample_mode not in ("hooks", "ghost"):
        raise ValueError(f"grad_sample_mode must be 'hooks' or 'ghost' for per-record DP, got {grad_sample_mode!r}")
    ModuleValidator.validate(module, strict=True)
    params = {id(p) for p in module.parameters()}
    if any(id(p) not in params for group in optimizer.param_groups for p in group["params"]):
        raise ValueError("Module parameters are different than optimizer Parameters")
    common = dict(noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                  expected_batch_size=sampler.expected_patients, loss_reduction="mean")
    dp_module: nn.Module
    sanitizers: list[RemovableHandle] = []
    if grad_sample_mode == "ghost":
        sanitizers = sanitize_inputs(module)  # before Opacus' hooks, so they see the sanitized inputs
        dp_module = PatientGhostClippingModule(
            module, batch_first=True, loss_reduction="mean", max_grad_norm=max_grad_norm, use_ghost_clipping=True
        )
        dp_optimizer: DPOptimizer = SecretNoiseGhostOptimizer(optimizer, **common)
        dp_criterion: Any = FiniteGhostLoss(dp_module, dp_optimizer, criterion, "mean")
    else:
        dp_module = GradSampleModule(module, batch_first=True, loss_reduction="mean", strict=True)
        dp_optimizer = PatientDPOptimizer(optimizer, **common)
        dp_criterion = criterion
    dp_optimizer.noise_stream = noise_stream  # type: ignore[attr-defined]
    dp_module.forbid_grad_accumulation()
    dp_optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=sampler.sample_rate))
    return PatientPrivateTraining(dp_module, dp_optimizer, dp_criterion, sampler, sanitizers)
