"""The run config's rules: which values are valid, grouped by what they configure.

`RunConfig.validate` applies them all and raises one error naming every problem, before
anything starts. Torch-free, like the config itself: a site's pre-flight check validates a
config without loading torch.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from common.config.choices import (
    ARCHITECTURE_NAMES,
    BN_STATISTICS_SETTINGS,
    CENTER_HEAD_SETTINGS,
    POLICIES,
    ROUND_ACCEPTANCE_SETTINGS,
)
from common.config.stain_settings import stain_problems
from common.config.strategies import strategy_problems
from common.privacy.delta import MAX_DELTA_FACTOR
from common.privacy.dp_seed import dp_seed_problem

if TYPE_CHECKING:
    from common.config.run_config import RunConfig

PARTITIONINGS = ("iid", "dirichlet")
NAMED_DATASETS = ("synthetic", "pathmnist")
NAMED_WEIGHTS = ("auto", "imagenet", "none")
GRAD_SAMPLE_MODES = ("auto", "hooks", "ghost")
# auto: patient where the data names patients (groups.csv, synthetic slides); data that names none is refused
# (client.privacy_unit): a site trains at patch level only when its configuration says `patch`.
PRIVACY_UNIT_SETTINGS = ("auto", "patient", "patch")

# A site's ε allowance per period (common.privacy.period): the period's default length, in days.
DEFAULT_PERIOD_DAYS = 30.0

# The one-run bound's δ term is 2·m·δ: far more canaries than 1/(2δ) would drown it, and each
# canary is an image the audited site trains on.
MAX_AUDIT_CANARIES = 10_000


def period_problem(epsilon: float, days: float, prefix: str = "") -> str:
    """'' when an allowance of `epsilon` per `days` days is a valid setting, else why not.

    One rule for a deployed site's node config (`epsilon-per-period`, `period-days`) and a
    simulation's run config (`site-` + the same names): `prefix` says which.
    """
    if not (math.isfinite(epsilon) and epsilon >= 0):
        return f"{prefix}epsilon-per-period must be a finite number >= 0 (0 = no allowance per period), got {epsilon}"
    if not (math.isfinite(days) and days > 0):
        return f"{prefix}period-days must be a finite number > 0, got {days}"
    return ""


class _Problems(list[str]):
    """The run config's problems, collected so that one error names all of them."""

    def need(self, ok: bool, message: str) -> None:
        if not ok:
            self.append(message)


def config_problems(config: RunConfig) -> list[str]:
    """Every problem of `config`, in the order of the groups below ([] when it is valid)."""
    problems = _Problems()
    _check_finite(config, problems)
    for check in (_check_model, _check_training, _check_privacy, _check_data, _check_federation, _check_outputs):
        check(config, problems)
    return list(problems)


def _check_finite(config: RunConfig, problems: _Problems) -> None:
    """Every number is finite: `lr=inf`, `max-grad-norm=inf` or `noise-multiplier=nan` would pass the
    range rules below (inf > 0) and make every site's update non-finite."""
    for name, value in vars(config).items():
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{name.replace('_', '-')} must be a finite number, got {value}")


def _check_model(config: RunConfig, problems: _Problems) -> None:
    """What is trained and on which data: rounds, architecture, policy, partitioning, weights, dataset, sizes."""
    problems.need(config.num_server_rounds >= 0, f"num-server-rounds must be >= 0, got {config.num_server_rounds}")
    problems.need(config.arch in ARCHITECTURE_NAMES,
                  f"arch {config.arch!r} is unknown; valid values: {', '.join(ARCHITECTURE_NAMES)}")
    problems.need(
        config.policy in POLICIES,
        f"policy {config.policy!r} is unknown; valid values: {', '.join(POLICIES)}",
    )
    problems.need(
        config.partitioning in PARTITIONINGS,
        f"partitioning {config.partitioning!r} is unknown; valid values: {', '.join(PARTITIONINGS)}",
    )
    problems.need(
        config.weights in NAMED_WEIGHTS or config.weights.endswith((".pth", ".pt")),
        f"weights {config.weights!r} is not valid; use one of {', '.join(NAMED_WEIGHTS)} "
        "or a path to a .pth/.pt state dict",
    )
    problems.need(
        config.dataset in NAMED_DATASETS or bool(config.dataset),
        f"dataset must be one of {', '.join(NAMED_DATASETS)} or a path to an .npz file "
        "or an ImageFolder directory",
    )
    problems.need(16 <= config.image_size <= 1024, f"image-size must be in [16, 1024], got {config.image_size}")
    problems.need(config.synthetic_images >= 10, f"synthetic-images must be >= 10, got {config.synthetic_images}")


def _check_training(config: RunConfig, problems: _Problems) -> None:
    """Local training: epochs, batches, optimiser, clipping, noise."""
    problems.need(config.local_epochs >= 1, f"local-epochs must be >= 1, got {config.local_epochs}")
    problems.need(config.batch_size >= 1, f"batch-size must be >= 1, got {config.batch_size}")
    problems.need(config.min_records_per_step >= 1,
                  f"min-records-per-step must be >= 1, got {config.min_records_per_step}")
    problems.need(config.eval_batch_size >= 1, f"eval-batch-size must be >= 1, got {config.eval_batch_size}")
    problems.need(config.lr > 0, f"lr must be > 0, got {config.lr}")
    problems.need(0 <= config.momentum < 1, f"momentum must be in [0, 1), got {config.momentum}")
    problems.need(config.max_grad_norm > 0, f"max-grad-norm must be > 0, got {config.max_grad_norm}")
    problems.need(
        config.grad_sample_mode in GRAD_SAMPLE_MODES,
        f"grad-sample-mode {config.grad_sample_mode!r} is unknown; valid values: {', '.join(GRAD_SAMPLE_MODES)}",
    )
    problems.need(
        config.noise_multiplier >= 0,
        f"noise-multiplier must be >= 0 (0 = calibrate from epsilon), got {config.noise_multiplier}",
    )


def _check_privacy(config: RunConfig, problems: _Problems) -> None:
    """The privacy contract: ε, δ, budgets, the unit of privacy, audit canaries."""
    if config.dp:
        problems.need(config.epsilon > 0, f"epsilon must be > 0, got {config.epsilon}")
        problems.need(
            0 <= config.delta <= MAX_DELTA_FACTOR,
            f"delta must be at most 1/(10·n) for a site of n training records, so at most {MAX_DELTA_FACTOR} "
            f"even for n = 1 (0 = 1/(10·n) per site), got {config.delta}",
        )
    problems.need(math.isfinite(config.site_epsilon_budget) and config.site_epsilon_budget > 0,
                  f"site-epsilon-budget must be finite and > 0, got {config.site_epsilon_budget}")
    problems.need(config.site_epsilon_per_job >= 0,
                  f"site-epsilon-per-job must be >= 0 (0 = a quarter of site-epsilon-budget), got "
                  f"{config.site_epsilon_per_job}")
    seed_problem = dp_seed_problem(config.site_dp_seed)
    problems.need(seed_problem is None, f"site-{seed_problem}")
    period = period_problem(config.site_epsilon_per_period, config.site_period_days, prefix="site-")
    problems.need(not period, period)
    problems.need(config.privacy_unit in PRIVACY_UNIT_SETTINGS,
                  f"privacy-unit {config.privacy_unit!r} is unknown; "
                  f"valid values: {', '.join(PRIVACY_UNIT_SETTINGS)}")
    problems.need(config.max_patches_per_patient >= 1,
                  f"max-patches-per-patient must be >= 1, got {config.max_patches_per_patient}")
    problems.need(0 <= config.audit_canaries <= MAX_AUDIT_CANARIES,
                  f"audit-canaries must be in [0, {MAX_AUDIT_CANARIES}] (0 = no privacy audit), got "
                  f"{config.audit_canaries}")


def _check_data(config: RunConfig, problems: _Problems) -> None:
    """How the data is split and handled: skew, stain, held-out fractions, BatchNorm statistics."""
    problems.need(config.dirichlet_alpha > 0, f"dirichlet-alpha must be > 0, got {config.dirichlet_alpha}")
    problems.need(0 <= config.stain_shift <= 1, f"stain-shift must be in [0, 1], got {config.stain_shift}")
    problems.extend(stain_problems(config.stain, config.stain_reference))
    problems.need(0 < config.test_fraction < 1, f"test-fraction must be in (0, 1), got {config.test_fraction}")
    problems.need(0 <= config.public_fraction < 1, f"public-fraction must be in [0, 1), got {config.public_fraction}")
    problems.need(config.bn_statistics in BN_STATISTICS_SETTINGS, f"bn-statistics {config.bn_statistics!r} is unknown; "
                  f"valid values: {', '.join(BN_STATISTICS_SETTINGS)}")
    problems.need(config.center_head in CENTER_HEAD_SETTINGS, f"center-head {config.center_head!r} is unknown; "
                  f"valid values: {', '.join(CENTER_HEAD_SETTINGS)}")
    problems.need(config.bn_statistics != "public" or config.public_fraction > 0,
                  "bn-statistics=public re-estimates BatchNorm statistics on the run's public share: set "
                  "public-fraction > 0")
    problems.need(0 <= config.val_fraction < 1, f"val-fraction must be in [0, 1), got {config.val_fraction}")


def _check_federation(config: RunConfig, problems: _Problems) -> None:
    """The federation: sampling, minimums, timeouts, screening, the server strategy."""
    problems.need(0 < config.fraction_train <= 1, f"fraction-train must be in (0, 1], got {config.fraction_train}")
    problems.need(config.min_train_nodes >= 1, f"min-train-nodes must be >= 1, got {config.min_train_nodes}")
    problems.need(
        config.min_available_nodes >= 1,
        f"min-available-nodes must be >= 1, got {config.min_available_nodes}",
    )
    problems.need(config.round_timeout > 0, f"round-timeout must be > 0, got {config.round_timeout}")
    problems.need(
        config.min_accepted_updates >= 1,
        f"min-accepted-updates must be >= 1, got {config.min_accepted_updates}",
    )
    problems.need(
        config.max_update_norm >= 0,
        f"max-update-norm must be >= 0 (0 = automatic DP bound), got {config.max_update_norm}",
    )
    problems.need(
        config.round_acceptance in ROUND_ACCEPTANCE_SETTINGS,
        f"round-acceptance {config.round_acceptance!r} is unknown; valid values: {', '.join(ROUND_ACCEPTANCE_SETTINGS)} "
        "(validation: a round is kept iff its validation accuracy is >= the starting model's; all: every round)",
    )
    problems.extend(strategy_problems(config.strategy, config.proximal_mu, config.server_lr, config.beta_1, config.beta_2,
                                      config.tau, config.lr))


def _check_outputs(config: RunConfig, problems: _Problems) -> None:
    """Site minimums, image limits, bootstrap, outputs, the weights checksum."""
    problems.need(config.min_site_examples >= 1, f"min-site-examples must be >= 1, got {config.min_site_examples}")
    problems.need(config.max_image_pixels >= 1, f"max-image-pixels must be >= 1, got {config.max_image_pixels}")
    problems.need(config.bootstrap_samples >= 0, f"bootstrap-samples must be >= 0, got {config.bootstrap_samples}")
    problems.need(bool(config.output_dir), "output-dir must not be empty")
    if config.weights_sha256:
        problems.need(
            len(config.weights_sha256) == 64 and all(c in "0123456789abcdef" for c in config.weights_sha256.lower()),
            f"weights-sha256 must be 64 hex digits, got {config.weights_sha256!r}",
        )
