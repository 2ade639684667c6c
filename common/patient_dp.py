"""Patient-level DP-SGD: the unit of privacy is a patient (a group of patches), not a patch.

One DP step:

1. **Poisson-samples patients**: each patient is in the step independently with probability q
   (Opacus' `UniformWithReplacementSampler` over patients, driven by the site's secret
   generator);
2. each sampled patient brings its patches, at most `max_patches_per_patient` of them, chosen
   uniformly at random without replacement (same secret generator) where it has more;
3. the gradient **summed over that patient's patches** is clipped to L2 norm C;
4. the clipped patient gradients are summed and Gaussian noise N(0, sigma^2 C^2) is added
   (Opacus' DPOptimizer), and the result is divided by the expected number of patients per
   step, q * patients (pure post-processing: it does not affect privacy);
5. the accountant records (sigma, q, 1) for the step: Opacus' RDP accountant, unchanged.

Adding or removing one patient changes the sum in step 4 by at most C whatever the number of
its patches, and patients enter steps by Poisson sampling with rate q, so this is exactly the
sampled Gaussian mechanism that the RDP accountant analyses, with patients as records: the
(epsilon, delta) it reports is per patient. The patch cap is not needed for that bound (the
clipping is); it bounds the work of a step and keeps the expected number of patches per step
near the configured batch size.

How clipping happens per patient, using Opacus' own classes:

* `hooks` mode (policies `norm-head`, `head`): Opacus' GradSampleModule computes per-patch
  gradients; `PatientDPOptimizer` (a DPOptimizer) first sums each parameter's `grad_sample`
  rows per patient, so the DPOptimizer clips, sums and noises one row per patient.
* `ghost` mode (`full`, `last-block`): `PatientGhostClippingModule` (Opacus'
  GradSampleModuleFastGradientClipping) computes each patient's norm ||sum_i g_i|| exactly from
  activations and output gradients (`common.dp_layers.GROUP_NORM_SAMPLERS`), and gives every
  patch its patient's clipping factor, so Opacus' second backward pass yields
  sum_patients clip(sum_i g_i) and DPOptimizerFastGradientClipping adds the noise.

All randomness of a step (patient sampling, the per-patient patch subsampling and the noise)
comes from one generator, the privacy engine's secret one (`SiteSecretPrivacyEngine`, seeded
from the site's secret round seed); the global torch RNG is never used.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from opacus import GradSampleModule, PrivacyEngine
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.grad_sample.functorch import ft_compute_per_sample_gradient
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.optimizers.optimizer import _check_processed_flag
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping
from opacus.utils.module_utils import trainable_parameters
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from opacus.validators import ModuleValidator
from torch import nn

from common.dp_layers import GROUP_NORM_SAMPLERS, PatchGroups, group_norms_from_grad_samples

PATCH = "patch"
PATIENT = "patient"
PRIVACY_UNITS = (PATCH, PATIENT)
DEFAULT_MAX_PATCHES_PER_PATIENT = 16


# -- planning ---------------------------------------------------------------------------------
def patient_index(groups: np.ndarray) -> np.ndarray:
    """Each patch's patient as an integer 0..patients-1 (patients in sorted order of their ids)."""
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)


def patient_counts(groups: np.ndarray, max_patches_per_patient: int) -> tuple[int, int]:
    """(patients, usable patches): usable = sum over patients of min(patches, cap).

    These two counts, with the batch size, fix the patient sampling rate. They are dataset-level
    counts that the site treats as public (like `num-examples`, which it already sends); no
    label enters them.
    """
    _check_cap(max_patches_per_patient)
    if len(groups) == 0:
        return 0, 0
    sizes = np.bincount(patient_index(groups))
    return int(len(sizes)), int(np.minimum(sizes, max_patches_per_patient).sum())


def patient_sample_rate(num_patients: int, usable_patches: int, batch_size: int) -> tuple[int, float]:
    """(steps per epoch, patient sampling rate q), exactly what the training takes.

    Rule: q = 1 / min(patients, ceil(usable_patches / batch_size)). A sampled patient brings
    min(k, cap) patches, so a step holds q * usable_patches <= batch_size patches in expectation
    (the configured batch size keeps meaning "expected patches per step"), and an epoch is
    1/q steps, in which every patient is sampled once in expectation. Where even one patient
    per step exceeds the batch size (patients with more usable patches than batch_size on
    average), q = 1/patients: one patient per step in expectation.
    Steps = int(1 / q), as Opacus' Poisson sampler takes them (see `steps_per_epoch`).
    """
    if num_patients < 1:
        raise ValueError("patient-level DP needs at least one patient")
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    loader_len = max(1, min(num_patients, -(-usable_patches // batch_size)))
    sample_rate = 1 / loader_len
    return int(1 / sample_rate), sample_rate


def _check_cap(max_patches_per_patient: int) -> None:
    if int(max_patches_per_patient) != max_patches_per_patient or max_patches_per_patient < 1:
        raise ValueError(f"max_patches_per_patient must be an integer >= 1, got {max_patches_per_patient!r}")


# -- sampling ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class PatientStep:
    """One step's data: dataset rows grouped by patient, and which patient each row is."""

    indices: torch.Tensor  # (n,) int64 rows of the dataset, one patient's rows consecutive
    groups: PatchGroups  # step-local patient (0..patients in step - 1) of each row
    patients: torch.Tensor  # (patients in step,) dataset patient ids, in the order of `groups`


class PatientPoissonSampler:
    """Poisson sampling over patients, each bringing at most `max_patches_per_patient` patches.

    `generator` is the site's secret generator; it drives Opacus' patient sampler and the
    per-patient patch subsampling (and, in `make_private_per_patient`, the noise).
    """

    def __init__(
        self,
        patient_of_patch: np.ndarray,
        batch_size: int,
        max_patches_per_patient: int,
        generator: torch.Generator,
    ) -> None:
        _check_cap(max_patches_per_patient)
        patient_of_patch = np.asarray(patient_of_patch, dtype=np.int64).reshape(-1)
        if len(patient_of_patch) == 0:
            raise ValueError("no training examples")
        sizes = np.bincount(patient_of_patch)
        if (sizes == 0).any():
            raise ValueError("patient ids must be 0..patients-1, each with at least one patch")
        self.generator = generator
        self.cap = int(max_patches_per_patient)
        self.num_patients = int(len(sizes))
        self.usable_patches = int(np.minimum(sizes, self.cap).sum())
        self.steps, self.sample_rate = patient_sample_rate(self.num_patients, self.usable_patches, batch_size)
        self.expected_patients = self.sample_rate * self.num_patients
        self._order = torch.from_numpy(np.argsort(patient_of_patch, kind="stable"))  # rows grouped by patient
        self._sizes = torch.from_numpy(sizes)
        self._starts = torch.cumsum(self._sizes, 0) - self._sizes
        self._poisson = UniformWithReplacementSampler(
            num_samples=self.num_patients, sample_rate=self.sample_rate, generator=generator, steps=self.steps
        )

    @property
    def expected_patches(self) -> float:
        """q * usable patches: the mean number of patches in a step (<= the batch size)."""
        return self.sample_rate * self.usable_patches

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[PatientStep]:
        for patients in self._poisson:
            yield self.step_for(torch.as_tensor(patients, dtype=torch.int64))

    def step_for(self, patients: torch.Tensor) -> PatientStep:
        """The rows of these sampled patients (a random `cap` of a patient's rows where it has more)."""
        parts = []
        for patient in patients.tolist():
            start, size = int(self._starts[patient]), int(self._sizes[patient])
            if size > self.cap:
                chosen = torch.randperm(size, generator=self.generator)[: self.cap].sort().values
                parts.append(self._order[start + chosen])
            else:
                parts.append(self._order[start : start + size])
        indices = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)
        taken = torch.clamp(self._sizes[patients], max=self.cap) if len(patients) else torch.zeros(0, dtype=torch.int64)
        return PatientStep(indices=indices, groups=PatchGroups.from_sizes(taken), patients=patients)


# -- clipping per patient ----------------------------------------------------------------------
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
