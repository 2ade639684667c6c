"""Local training (with or without Opacus DP-SGD) and evaluation of a model on an ImageSet.

Under DP the unit of privacy is a patch (`privacy_unit="patch"`: Opacus' `make_private`, Poisson
sampling over patches) or a patient (`privacy_unit="patient"`: `common.patient_dp`, Poisson
sampling over patients, each patient's summed gradient clipped).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import common.dp_layers  # noqa: F401 - registers the Opacus grad/norm samplers used below
from common.choices import CONV_POLICIES
from common.data.imageset import ImageSet
from common.data.stain_handling import StainAugmenter
from common.patient_dp import (
    DEFAULT_MAX_PATCHES_PER_PATIENT,
    PATCH,
    PATIENT,
    PRIVACY_UNITS,
    PatientPoissonSampler,
    PatientPrivateTraining,
    make_private_per_patient,
    patient_counts,  # noqa: F401 - planning helper, re-exported beside patient_steps_per_epoch
    patient_index,
    patient_sample_rate,
)
from common.progress import progress
from common.proximal import attach_proximal_term

log = logging.getLogger("fedpath.training")

# torchvision's ImageNet statistics: what pretrained backbones expect as input.
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class SiteSecretPrivacyEngine(PrivacyEngine):
    """Opacus' secure mode, driven by the site's secret generator.

    With `secure_mode=True` Opacus draws the Gaussian noise in the way that resists
    floating-point attacks (a sum of four draws) and uses one generator for noise and
    Poisson sampling. Opacus takes that generator from `torchcsprng`, which has no build for
    the pinned torch 2.14; we give it a generator seeded from the site's secret instead
    (`common.dp_randomness`: 64 fresh bits from the OS CSPRNG per round by default), so the
    coordinator cannot regenerate the noise or the batches.
    """

    def __init__(self, generator: torch.Generator) -> None:
        with warnings.catch_warnings():
            # Opacus warns that secure mode is off because we construct it without torchcsprng;
            # it is switched on two lines below with a secret generator.
            warnings.filterwarnings("ignore", message="Secure RNG turned off", category=UserWarning)
            super().__init__(accountant="rdp", secure_mode=False)
        self.secure_mode = True
        self.secure_rng = generator


def _derived_generator(seed: int, purpose: str) -> torch.Generator:
    """A generator for one purpose, independent of the other uses of the same round seed."""
    words = np.random.SeedSequence([seed % (2**64), *purpose.encode()]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(words[0]) | (int(words[1]) << 32))


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def as_tensor_dataset(data: ImageSet, rows: bool = False) -> TensorDataset:
    """uint8 NCHW images + labels (+ row numbers with `rows`); conversion to float happens per batch to save memory."""
    images = torch.from_numpy(np.ascontiguousarray(data.images)).permute(0, 3, 1, 2).contiguous()
    extra = (torch.arange(len(data)),) if rows else ()
    return TensorDataset(images, torch.from_numpy(data.labels), *extra)


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


# (trainable parameters, Poisson rate of the step) -> summed canary gradients per parameter, or None
GradientCanaries = Callable[[list[torch.Tensor], float], "list[torch.Tensor] | None"]


@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    seed: int  # at a site: the round's secret seed (common.dp_randomness), never the run config's
    dp: bool
    noise_multiplier: float = 0.0
    max_grad_norm: float = 1.0
    augment: bool = True
    grad_sample_mode: str = "hooks"  # Opacus: "hooks" (per-sample gradients) or "ghost" (ghost clipping)
    # Under DP: "patch" (each patch is a record) or "patient" (each group of `ImageSet.groups` is a
    # record: Poisson sampling over patients, per-patient clipping; see common.patient_dp).
    privacy_unit: str = PATCH
    max_patches_per_patient: int = DEFAULT_MAX_PATCHES_PER_PATIENT  # patient unit: patches per patient per step
    # Random stain-concentration perturbation per sample and step (common.data.stain_handling): a per-sample
    # transform, so under DP it costs no budget.
    stain_augment: bool = False
    proximal_mu: float = 0.0  # FedProx: mu of mu/2·||w - w_global||², added after clipping and noise (common.proximal)
    # Simulation audit only (simulations.harness.gradient_canaries): deployed sites never hold canaries and never set
    # this. Called once per step with the trainable parameters and the step's Poisson rate; returns the summed
    # gradients of the canary records that take part in the step (one tensor per parameter), or None.
    audit_gradient_canaries: GradientCanaries | None = None

    def __post_init__(self) -> None:
        if self.privacy_unit not in PRIVACY_UNITS:
            raise ValueError(f"privacy_unit must be one of {', '.join(PRIVACY_UNITS)}, got {self.privacy_unit!r}")
        if int(self.max_patches_per_patient) != self.max_patches_per_patient or self.max_patches_per_patient < 1:
            raise ValueError(f"max_patches_per_patient must be an integer >= 1, got {self.max_patches_per_patient!r}")


@dataclass(frozen=True)
class TrainOutcome:
    num_examples: int
    mean_loss: float
    steps: int  # DP steps taken (patient unit: steps over patients)
    sample_rate: float  # Poisson rate of the unit of privacy: per patch, or per patient
    history: list[tuple[float, float, int]] | None  # accountant history after training (DP only)
    privacy_unit: str = PATCH  # the unit the history is about ("patch" also for non-DP training)
    num_patients: int | None = None  # patient unit: patients in the training set


def grad_sample_mode_for(policy: str, requested: str = "auto") -> str:
    """Opacus mode for a policy: ghost clipping where convolutions train, hooks otherwise.

    Both clip each sample's gradient to the same norm and add the same noise; only how the
    per-sample norms are computed differs (benchmarked in docs/BENCHMARKS.md).
    """
    if requested != "auto":
        return requested
    return "ghost" if policy in CONV_POLICIES else "hooks"


def steps_per_epoch(num_examples: int, batch_size: int) -> tuple[int, float]:
    """(steps, Poisson sample rate) exactly as Opacus derives them.

    `make_private` sets q = 1 / len(loader) with len(loader) = ceil(n / batch), and its
    Poisson sampler then takes int(1 / q) steps per epoch, which in floating point is one
    fewer than ceil(n / batch) for some sizes (n = 93, batch 1: 92 steps). The ledger plans
    with the steps that will really be taken.
    """
    loader_len = max(1, -(-num_examples // batch_size))
    sample_rate = 1 / loader_len
    return int(1 / sample_rate), sample_rate


def patient_steps_per_epoch(num_patients: int, usable_patches: int, batch_size: int) -> tuple[int, float]:
    """(steps, patient sampling rate q) of one epoch at the patient unit, exactly as trained.

    `num_patients, usable_patches = common.patient_dp.patient_counts(data.groups, cap)`:
    usable patches = sum over patients of min(patches, cap). q = 1 / min(patients,
    ceil(usable_patches / batch_size)), so a step holds at most `batch_size` patches in
    expectation and an epoch samples every patient once in expectation; steps = int(1 / q).
    Depends only on these counts and the batch size, never on labels.
    """
    return patient_sample_rate(num_patients, usable_patches, batch_size)


def train_local(
    model: nn.Module,
    data: ImageSet,
    settings: TrainSettings,
    history: list[tuple[float, float, int]] | None = None,
    desc: str = "local training",
) -> TrainOutcome:
    """Train `model` in place; under DP the accountant starts from the site's `history`.

    With `settings.privacy_unit == "patient"` (DP only) the records are the patients of
    `data.groups`: steps, sample rate and history of the outcome are the patient-level ones.
    """
    if len(data) == 0:
        raise ValueError("no training examples")
    if settings.dp and settings.privacy_unit == PATIENT:
        return _train_patient_level(model, data, settings, history, desc)
    dev = device()
    model.to(dev).train()
    generator = torch.Generator().manual_seed(settings.seed)  # shuffling and augmentation
    stain = _stain_augmenter(data, settings)
    loader = DataLoader(
        as_tensor_dataset(data, rows=stain is not None), batch_size=min(settings.batch_size, len(data)), shuffle=True,
        generator=generator,
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum)
    proximal = attach_proximal_term(optimizer, settings.proximal_mu)  # before Opacus wraps the optimizer
    engine: PrivacyEngine | None = None
    train_model: nn.Module = model
    criterion: Any = nn.CrossEntropyLoss()
    if settings.dp:
        engine = SiteSecretPrivacyEngine(_derived_generator(settings.seed, "dp-noise-and-sampling"))
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
    rate = float(loader.sample_rate) if engine is not None else 1.0 / len(loader)  # type: ignore[attr-defined]
    canaries = _attach_gradient_canaries(optimizer, settings, rate, loader.batch_size or settings.batch_size)
    try:
        steps, mean_loss = _run_epochs(
            train_model, optimizer, criterion, settings, generator, desc,
            lambda: _PatchBatches(loader, stain),
        )
    finally:
        if proximal is not None:
            proximal.remove()
        if canaries is not None:
            canaries()
        if engine is not None:
            _detach_dp(model, train_model)
    model.eval()
    sample_rate = 1.0 / len(loader) if engine is None else float(loader.sample_rate)  # type: ignore[attr-defined]
    new_history = None
    if engine is not None:
        new_history = [(float(s), float(q), int(n)) for s, q, n in engine.accountant.state_dict()["history"]]
    return TrainOutcome(
        num_examples=len(data),
        mean_loss=mean_loss,
        steps=steps,
        sample_rate=sample_rate,
        history=new_history,
    )


def _run_epochs(
    train_model: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: Any,
    settings: TrainSettings,
    generator: torch.Generator,
    desc: str,
    epoch_batches: Any,
    begin_step: Any = None,
) -> tuple[int, float]:
    """(steps, mean loss): `settings.epochs` passes over `epoch_batches()`, one optimizer step per batch.

    A batch is (uint8 images, labels, step info); `begin_step(info)` runs before its forward pass.
    """
    total_loss, loss_batches, steps = 0.0, 0, 0
    dev = device()
    with warnings.catch_warnings():
        # Opacus' hooks on a network whose input needs no gradient make PyTorch warn that full
        # backward hooks fire without input gradients; harmless here, so silenced for this loop only.
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        for epoch in range(settings.epochs):
            batches = epoch_batches()
            for images, labels, info in progress(batches, desc=f"{desc} epoch {epoch + 1}/{settings.epochs}", unit="batch"):
                images, labels = images.to(dev), labels.to(dev)
                if settings.augment:
                    images = random_dihedral(images, generator)
                optimizer.zero_grad(set_to_none=True)
                if begin_step is not None:
                    begin_step(info)
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
    return steps, total_loss / max(loss_batches, 1)


def _attach_gradient_canaries(optimizer: torch.optim.Optimizer, settings: TrainSettings, sample_rate: float,
                              batch_size: int) -> Callable[[], None] | None:
    """Simulation audit only: add the canaries' gradients of each step; returns the detacher, or None.

    Under DP they join the clipped per-record gradients *before* the noise (Opacus' `add_noise`, on
    this optimizer instance only), exactly as records of their own: each canary gradient has norm
    at most C, so clipping would leave it as it is, and the accountant's rate is the one they are
    sampled with. Without DP they join the batch's mean gradient as one more record of a batch
    of `batch_size`. Nothing is attached when the settings hold no canaries (every deployed site).
    """
    canaries = settings.audit_gradient_canaries
    if canaries is None:
        return None
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if hasattr(optimizer, "add_noise"):  # an Opacus DPOptimizer: params are the same tensors
        add_noise = optimizer.add_noise

        @torch.no_grad()
        def add_noise_with_canaries() -> None:
            extra = canaries(params, sample_rate)
            for p, g in zip(params, extra or []):
                p.summed_grad.add_(g.to(p.summed_grad.device).view_as(p.summed_grad))  # type: ignore[attr-defined]
            add_noise()

        optimizer.add_noise = add_noise_with_canaries  # type: ignore[method-assign]
        return lambda: delattr(optimizer, "add_noise")

    @torch.no_grad()
    def add_to_mean(_optimizer: torch.optim.Optimizer, _args: object, _kwargs: object) -> None:
        for p, g in zip(params, canaries(params, sample_rate) or []):
            p.grad = g.to(p.device) / batch_size if p.grad is None else p.grad.add_(g.to(p.device), alpha=1 / batch_size)

    return optimizer.register_step_pre_hook(add_to_mean).remove


def _detach_dp(model: nn.Module, train_model: nn.Module) -> None:
    """Remove Opacus' hooks and the per-sample state it leaves on the parameters."""
    train_model.remove_hooks()  # type: ignore[attr-defined]
    model.zero_grad(set_to_none=True)
    for p in model.parameters():
        for attr in ("grad_sample", "_forward_counter", "_current_grad_sample", "_norm_sample", "summed_grad"):
            if hasattr(p, attr):
                delattr(p, attr)


def _stain_augmenter(data: ImageSet, settings: TrainSettings) -> StainAugmenter | None:
    """Stain augmentation over `data` (stain matrices fitted once per image set, cached), or None.

    Its draws come from the round's secret seed (a generator of their own), never from the run config.
    """
    if not settings.stain_augment:
        return None
    augmenter = StainAugmenter(data.images, _derived_generator(settings.seed, "stain-augmentation"))
    if augmenter.unusable:
        log.info("stain augmentation leaves %d of %d images as they are (no stain estimate)", augmenter.unusable,
                 len(data))
    return augmenter


class _PatchBatches:
    """One epoch of a (DP or plain) DataLoader as (uint8 images, labels, None), stain-augmented if asked."""

    def __init__(self, loader: Iterable[Any], stain: StainAugmenter | None = None) -> None:
        self.loader, self.stain = loader, stain

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, Any]]:
        for images, labels, *rows in self.loader:
            yield (self.stain(images, rows[0]) if self.stain else images), labels, None


class _PatientBatches:
    """One epoch of patient-level steps: (uint8 images, labels, step) per Poisson step over patients."""

    def __init__(self, sampler: PatientPoissonSampler, images: torch.Tensor, labels: torch.Tensor,
                 stain: StainAugmenter | None = None) -> None:
        self.sampler, self.images, self.labels, self.stain = sampler, images, labels, stain

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, Any]]:
        for step in self.sampler:
            images = self.images[step.indices]
            yield (self.stain(images, step.indices) if self.stain else images), self.labels[step.indices], step


def _train_patient_level(
    model: nn.Module,
    data: ImageSet,
    settings: TrainSettings,
    history: list[tuple[float, float, int]] | None,
    desc: str,
) -> TrainOutcome:
    """DP-SGD with patients as the unit of privacy (common.patient_dp), same loop as patches."""
    dev = device()
    model.to(dev).train()
    generator = torch.Generator().manual_seed(settings.seed)  # augmentation
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum)
    proximal = attach_proximal_term(optimizer, settings.proximal_mu)  # before Opacus wraps the optimizer
    engine = SiteSecretPrivacyEngine(_derived_generator(settings.seed, "dp-noise-and-sampling"))
    engine.accountant.load_state_dict({"history": list(history or []), "mechanism": "rdp"})
    sampler = PatientPoissonSampler(
        patient_index(data.groups), settings.batch_size, settings.max_patches_per_patient, engine.secure_rng
    )
    private: PatientPrivateTraining = make_private_per_patient(
        engine, module=model, optimizer=optimizer, criterion=nn.CrossEntropyLoss(), sampler=sampler,
        noise_multiplier=settings.noise_multiplier, max_grad_norm=settings.max_grad_norm,
        grad_sample_mode=settings.grad_sample_mode,
    )
    tensors = as_tensor_dataset(data).tensors
    batches = _PatientBatches(sampler, tensors[0], tensors[1], _stain_augmenter(data, settings))
    canaries = _attach_gradient_canaries(private.optimizer, settings, float(sampler.sample_rate), 0)
    try:
        steps, mean_loss = _run_epochs(
            private.module, private.optimizer, private.criterion, settings, generator, desc,
            lambda: batches, private.begin_step,
        )
    finally:
        if proximal is not None:
            proximal.remove()
        if canaries is not None:
            canaries()
        _detach_dp(model, private.module)
    model.eval()
    new_history = [(float(s), float(q), int(n)) for s, q, n in engine.accountant.state_dict()["history"]]
    return TrainOutcome(
        num_examples=len(data),
        mean_loss=mean_loss,
        steps=steps,
        sample_rate=float(sampler.sample_rate),
        history=new_history,
        privacy_unit=PATIENT,
        num_patients=sampler.num_patients,
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
