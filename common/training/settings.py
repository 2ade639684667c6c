"""What one call of local training is told (`TrainSettings`) and what it reports (`TrainOutcome`).

Kept apart from the trainers so that the patch-level and patient-level paths, the site and the
experiments share one definition; the settings validate themselves, so a bad unit of privacy or
patch cap stops before any model or data is touched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from common.config.choices import DEFAULT_MIN_RECORDS_PER_STEP
from common.privacy.randomness import RoundRandomness
from common.training.patient_dp import DEFAULT_MAX_PATCHES_PER_PATIENT, PATCH, PRIVACY_UNITS

# Simulation only: (trainable parameters, the step's Poisson rate) -> per-record gradients of the step's extra
# records, one (k, *p.shape) tensor per parameter, or None (common.training.extra_records)
ExtraRecords = Callable[[list[torch.Tensor], float], "list[torch.Tensor] | None"]


@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    # The round's secret key (common.privacy.randomness): every random draw of training comes from its streams.
    # At a site: fresh OS randomness or the site's own dp-seed, never anything from the run config.
    randomness: RoundRandomness
    dp: bool
    noise_multiplier: float = 0.0
    max_grad_norm: float = 1.0
    augment: bool = True
    grad_sample_mode: str = "hooks"  # Opacus: "hooks" (per-sample gradients) or "ghost" (ghost clipping)
    # Under DP: "patch" (each patch is a record) or "patient" (each group of `ImageSet.groups` is a
    # record: Poisson sampling over patients, per-patient clipping; see common.training.patient_dp).
    privacy_unit: str = PATCH
    max_patches_per_patient: int = DEFAULT_MAX_PATCHES_PER_PATIENT  # patient unit: patches per patient per step
    # Under DP: q is raised so that a step expects at least this many records (common.training.steps.epoch_steps).
    min_records_per_step: int = DEFAULT_MIN_RECORDS_PER_STEP
    # Random stain-concentration perturbation per sample and step (common.data.stain_handling): a per-sample
    # transform, so under DP it costs no budget.
    stain_augment: bool = False
    proximal_mu: float = 0.0  # FedProx: mu of mu/2·||w - w_global||², added after clipping and noise (common.training.proximal)
    # Simulation only (the audit's gradient canaries); deployed sites never set it. Extra per-record gradients
    # of each step, clipped with the rest (common.training.extra_records): called once per step with the trainable
    # parameters and the step's Poisson rate, returns one (k, *p.shape) tensor per parameter, or None.
    extra_records: ExtraRecords | None = None

    def __post_init__(self) -> None:
        if self.privacy_unit not in PRIVACY_UNITS:
            raise ValueError(f"privacy_unit must be one of {', '.join(PRIVACY_UNITS)}, got {self.privacy_unit!r}")
        if int(self.max_patches_per_patient) != self.max_patches_per_patient or self.max_patches_per_patient < 1:
            raise ValueError(f"max_patches_per_patient must be an integer >= 1, got {self.max_patches_per_patient!r}")
        if int(self.min_records_per_step) != self.min_records_per_step or self.min_records_per_step < 1:
            raise ValueError(f"min_records_per_step must be an integer >= 1, got {self.min_records_per_step!r}")


@dataclass(frozen=True)
class TrainOutcome:
    num_examples: int
    mean_loss: float
    steps: int  # DP steps taken (patient unit: steps over patients)
    sample_rate: float  # Poisson rate of the unit of privacy: per patch, or per patient
    history: list[tuple[float, float, int]] | None  # accountant history after training (DP only)
    privacy_unit: str = PATCH  # the unit the history is about ("patch" also for non-DP training)
    num_patients: int | None = None  # patient unit: patients in the training set
    # Records (patients or patches) whose logits or gradient were not finite and so contributed nothing:
    # a local diagnostic for the site's own log, never sent (it depends on the data without DP).
    nonfinite_records: int = 0
