"""Clipping per patient with Opacus' own classes, and `make_private_per_patient` that wires them.

`hooks` mode sums each parameter's per-patch gradient rows per patient before Opacus'
DPOptimizer clips; `ghost` mode computes each patient's gradient norm exactly and gives its
patches the patient's clipping factor. Either way one patient moves the noised sum by at most C.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from opacus import GradSampleModule, PrivacyEngine
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.grad_sample.functorch import ft_compute_per_sample_gradient
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.optimizers.optimizer import _check_processed_flag
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping
from opacus.utils.module_utils import trainable_parameters
from opacus.validators import ModuleValidator
from torch import nn

from common.group_norms import GROUP_NORM_SAMPLERS, PatchGroups, group_norms_from_grad_samples
from common.patient_dp.sampling import PatientPoissonSampler, PatientStep


class PatientDPOptimizer(DPOptimizer):
    """Opacus' DPOptimizer with one `grad_sample` row per patient.

    Before Opacus clips, each parameter's per-patch `grad_sample` rows are summed per patient
    (`patch_groups`, set for every step), so clipping, summing and noise act on per-patient
    gradients. An empty step has zero rows and so adds pure noise, as the accountant assumes.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.patch_groups: PatchGroups | None = None

    def clip_and_accumulate(self) -> None:
        groups = self.patch_groups
        if groups is None:
            raise RuntimeError("patient-level DP step without patch groups (call begin_step first)")
        for p in self.params:
            _check_processed_flag(p.grad_sample)
            p.grad_sample = groups.sum(self._get_flat_grad_sample(p))
        self.patch_groups = None  # one step only
        super().clip_and_accumulate()



class PatientGhostClippingModule(GradSampleModuleFastGradientClipping):
    """Opacus' ghost-clipping module with per-patient norms and clipping factors.

    With `patch_groups` set, every hooked layer records ||sum over a patient's patches of
    the per-patch gradient|| for each patient (exact: `GROUP_NORM_SAMPLERS`, else per-sample
    gradients summed per patient), and `get_clipping_coef` gives each patch its patient's
    factor min(1, C / ||patient gradient||), so Opacus' second backward pass computes the sum of
    the clipped per-patient gradients. Without groups it behaves exactly like its parent.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.patch_groups: PatchGroups | None = None

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
        groups = self.patch_groups
        if groups is None:
            return super().get_clipping_coef()
        per_patient = (self.max_grad_norm / (self.get_norm_sample() + 1e-6)).clamp(max=1.0)
        return groups.expand(per_patient)



@dataclass
class PatientPrivateTraining:
    """What `make_private_per_patient` returns: train with these, calling `begin_step` first."""

    module: nn.Module  # GradSampleModule (hooks) or PatientGhostClippingModule (ghost)
    optimizer: DPOptimizer
    criterion: Any
    sampler: PatientPoissonSampler

    def begin_step(self, step: PatientStep) -> None:
        """Tell the clipping which patient each row of the coming batch belongs to."""
        if isinstance(self.module, PatientGhostClippingModule):
            self.module.patch_groups = step.groups
        if isinstance(self.optimizer, PatientDPOptimizer):
            self.optimizer.patch_groups = step.groups



def make_private_per_patient(
    engine: PrivacyEngine,
    *,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: Any,
    sampler: PatientPoissonSampler,
    noise_multiplier: float,
    max_grad_norm: float,
    grad_sample_mode: str = "hooks",
) -> PatientPrivateTraining:
    """Patient-level counterpart of `PrivacyEngine.make_private` (Poisson sampling, flat clipping).

    `engine` must carry the site's secret generator (`SiteSecretPrivacyEngine`): it is the
    noise generator here and must be the one `sampler` draws from. Its accountant records
    (noise_multiplier, q_patient) for every step.
    """
    if engine.secure_rng is None:
        raise ValueError("patient-level DP needs a privacy engine with a secret generator (SiteSecretPrivacyEngine)")
    if sampler.generator is not engine.secure_rng:
        raise ValueError("the patient sampler must draw from the privacy engine's secret generator")
    if grad_sample_mode not in ("hooks", "ghost"):
        raise ValueError(f"grad_sample_mode must be 'hooks' or 'ghost' for patient-level DP, got {grad_sample_mode!r}")
    ModuleValidator.validate(module, strict=True)
    params = {id(p) for p in module.parameters()}
    if any(id(p) not in params for group in optimizer.param_groups for p in group["params"]):
        raise ValueError("Module parameters are different than optimizer Parameters")
    common = dict(
        noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
        expected_batch_size=sampler.expected_patients, loss_reduction="mean",
        generator=engine.secure_rng, secure_mode=engine.secure_mode,
    )
    dp_module: nn.Module
    if grad_sample_mode == "ghost":
        dp_module = PatientGhostClippingModule(
            module, batch_first=True, loss_reduction="mean", max_grad_norm=max_grad_norm, use_ghost_clipping=True
        )
        dp_optimizer: DPOptimizer = DPOptimizerFastGradientClipping(optimizer, **common)
        dp_criterion: Any = DPLossFastGradientClipping(dp_module, dp_optimizer, criterion, "mean")
    else:
        dp_module = GradSampleModule(module, batch_first=True, loss_reduction="mean", strict=True)
        dp_optimizer = PatientDPOptimizer(optimizer, **common)
        dp_criterion = criterion
    dp_module.forbid_grad_accumulation()
    dp_optimizer.attach_step_hook(engine.accountant.get_optimizer_hook_fn(sample_rate=sampler.sample_rate))
    return PatientPrivateTraining(dp_module, dp_optimizer, dp_criterion, sampler)
