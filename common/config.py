"""The run configuration: every knob of `[tool.flwr.app.config]`, parsed and validated.

Validation happens once, before anything starts, and names the valid values: a typo in a
policy name must not surface an hour later as a crash inside a Ray actor.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.booleans import parse_bool
from common.data.checks import DEFAULT_MAX_IMAGE_PIXELS
from common.choices import ARCHITECTURE_NAMES, BN_STATISTICS_SETTINGS, POLICIES
from common.stain_settings import stain_problems
from common.strategies import strategy_problems

PARTITIONINGS = ("iid", "dirichlet")
NAMED_DATASETS = ("synthetic", "pathmnist")
NAMED_WEIGHTS = ("auto", "imagenet", "none")
GRAD_SAMPLE_MODES = ("auto", "hooks", "ghost")
# auto: patient where the data names patients (groups.csv, synthetic slides), patch otherwise.
PRIVACY_UNIT_SETTINGS = ("auto", "patient", "patch")


class ConfigError(ValueError):
    """A run-config value is invalid; the message says which and what is valid."""


@dataclass(frozen=True)
class RunConfig:
    """Typed view of the Flower run config (keys are the TOML names with `_`)."""

    num_server_rounds: int = 8
    dataset: str = "synthetic"
    synthetic_images: int = 4000
    groups_csv: str = ""
    image_size: int = 64
    arch: str = "resnet18"
    weights: str = "auto"
    weights_sha256: str = ""
    policy: str = "norm-head"
    # frozen BatchNorm statistics: the backbone's, or re-estimated on the public share (common.bn_statistics)
    bn_statistics: str = "backbone"
    local_epochs: int = 1
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    dp: bool = True
    epsilon: float = 8.0  # what this job asks each site for; each site grants at most its own cap
    delta: float = 1e-5
    # Simulation only: the node config of simulated sites (deployed sites use their own node config).
    site_epsilon_budget: float = 32.0
    site_epsilon_per_job: float = 0.0
    site_accept_budget_change: str = ""
    site_share_diagnostics: bool = False
    site_dp_seed: str = ""
    privacy_unit: str = "auto"  # simulation (deployed sites: node config): auto = patient where groups are known
    max_patches_per_patient: int = 16
    noise_multiplier: float = 0.0
    max_grad_norm: float = 1.0
    grad_sample_mode: str = "auto"
    # Simulation only: simulated site 0 trains with this many audit canaries, each with probability ½,
    # and the report gets a "Privacy audit" (server.privacy_audit); deployed sites refuse any > 0.
    audit_canaries: int = 0
    partitioning: str = "iid"
    dirichlet_alpha: float = 0.5
    stain_shift: float = 0.0
    # stain handling at the sites (common.data.stain_handling): none | normalize | augment | normalize+augment
    stain: str = "none"
    stain_reference: str = ""  # Macenko target, 8 numbers; "" = torchstain's reference
    test_fraction: float = 0.2
    public_fraction: float = 0.0
    val_fraction: float = 0.15
    seed: int = 42
    output_dir: str = "runs"
    ledger_dir: str = ""
    fraction_train: float = 1.0
    min_train_nodes: int = 2
    min_available_nodes: int = 2
    round_timeout: float = 3600.0
    eval_batch_size: int = 256
    bootstrap_samples: int = 1000
    min_site_examples: int = 10
    min_accepted_updates: int = 1
    max_update_norm: float = 0.0
    # server strategy (common.strategies): Flower's FedAvg, FedProx, FedAdam, FedYogi or FedAdagrad
    strategy: str = "fedavg"
    proximal_mu: float = 0.01
    server_lr: float = 0.0  # 0 = Flower's default eta
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-3
    strict: bool = False
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    resume_from: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunConfig:
        """Build from Flower's `context.run_config` (dash-separated keys) and validate."""
        known = {f.name: f for f in dataclasses.fields(cls) if f.name != "extra"}
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in known:
                extra[key] = value
                continue
            kwargs[name] = _coerce(key, value, known[name].type)
        config = cls(**kwargs, extra=extra)
        config.validate()
        return config

    def to_mapping(self) -> dict[str, Any]:
        """Dash-separated keys, as in pyproject.toml (for reports and checkpoints)."""
        out = {
            f.name.replace("_", "-"): getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "extra"
        }
        out.update(self.extra)
        return out

    def validate(self) -> None:
        problems: list[str] = []

        def need(ok: bool, message: str) -> None:
            if not ok:
                problems.append(message)

        need(self.num_server_rounds >= 0, f"num-server-rounds must be >= 0, got {self.num_server_rounds}")
        need(self.arch in ARCHITECTURE_NAMES,
             f"arch {self.arch!r} is unknown; valid values: {', '.join(ARCHITECTURE_NAMES)}")
        need(self.policy in POLICIES, f"policy {self.policy!r} is unknown; valid values: {', '.join(POLICIES)}")
        need(
            self.partitioning in PARTITIONINGS,
            f"partitioning {self.partitioning!r} is unknown; valid values: {', '.join(PARTITIONINGS)}",
        )
        need(
            self.weights in NAMED_WEIGHTS or self.weights.endswith((".pth", ".pt")),
            f"weights {self.weights!r} is not valid; use one of {', '.join(NAMED_WEIGHTS)} "
            "or a path to a .pth/.pt state dict",
        )
        need(
            self.dataset in NAMED_DATASETS or bool(self.dataset),
            f"dataset must be one of {', '.join(NAMED_DATASETS)} or a path to an .npz file "
            "or an ImageFolder directory",
        )
        need(16 <= self.image_size <= 1024, f"image-size must be in [16, 1024], got {self.image_size}")
        need(self.synthetic_images >= 10, f"synthetic-images must be >= 10, got {self.synthetic_images}")
        need(self.local_epochs >= 1, f"local-epochs must be >= 1, got {self.local_epochs}")
        need(self.batch_size >= 1, f"batch-size must be >= 1, got {self.batch_size}")
        need(self.eval_batch_size >= 1, f"eval-batch-size must be >= 1, got {self.eval_batch_size}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        need(self.max_grad_norm > 0, f"max-grad-norm must be > 0, got {self.max_grad_norm}")
        need(
            self.grad_sample_mode in GRAD_SAMPLE_MODES,
            f"grad-sample-mode {self.grad_sample_mode!r} is unknown; valid values: {', '.join(GRAD_SAMPLE_MODES)}",
        )
        need(self.noise_multiplier >= 0, f"noise-multiplier must be >= 0 (0 = calibrate from epsilon), got {self.noise_multiplier}")
        if self.dp:
            need(self.epsilon > 0, f"epsilon must be > 0, got {self.epsilon}")
            need(
                0 <= self.delta <= MAX_DELTA_FACTOR,
                f"delta must be at most 1/(10·n) for a site of n training records, so at most {MAX_DELTA_FACTOR} "
                f"even for n = 1 (0 = 1/(10·n) per site), got {self.delta}",
            )
        need(math.isfinite(self.site_epsilon_budget) and self.site_epsilon_budget > 0,
             f"site-epsilon-budget must be finite and > 0, got {self.site_epsilon_budget}")
        need(self.site_epsilon_per_job >= 0,
             f"site-epsilon-per-job must be >= 0 (0 = a quarter of site-epsilon-budget), got {self.site_epsilon_per_job}")
        need(self.privacy_unit in PRIVACY_UNIT_SETTINGS,
             f"privacy-unit {self.privacy_unit!r} is unknown; valid values: {', '.join(PRIVACY_UNIT_SETTINGS)}")
        need(self.max_patches_per_patient >= 1,
             f"max-patches-per-patient must be >= 1, got {self.max_patches_per_patient}")
        need(0 <= self.audit_canaries <= MAX_AUDIT_CANARIES,
             f"audit-canaries must be in [0, {MAX_AUDIT_CANARIES}] (0 = no privacy audit), got {self.audit_canaries}")
        need(self.dirichlet_alpha > 0, f"dirichlet-alpha must be > 0, got {self.dirichlet_alpha}")
        need(0 <= self.stain_shift <= 1, f"stain-shift must be in [0, 1], got {self.stain_shift}")
        problems.extend(stain_problems(self.stain, self.stain_reference))
        need(0 < self.test_fraction < 1, f"test-fraction must be in (0, 1), got {self.test_fraction}")
        need(0 <= self.public_fraction < 1, f"public-fraction must be in [0, 1), got {self.public_fraction}")
        need(self.bn_statistics in BN_STATISTICS_SETTINGS, f"bn-statistics {self.bn_statistics!r} is unknown; "
             f"valid values: {', '.join(BN_STATISTICS_SETTINGS)}")
        need(self.bn_statistics != "public" or self.public_fraction > 0,
             "bn-statistics=public re-estimates BatchNorm statistics on the run's public share: set public-fraction > 0")
        need(0 <= self.val_fraction < 1, f"val-fraction must be in [0, 1), got {self.val_fraction}")
        need(0 < self.fraction_train <= 1, f"fraction-train must be in (0, 1], got {self.fraction_train}")
        need(self.min_train_nodes >= 1, f"min-train-nodes must be >= 1, got {self.min_train_nodes}")
        need(self.min_available_nodes >= 1, f"min-available-nodes must be >= 1, got {self.min_available_nodes}")
        need(self.round_timeout > 0, f"round-timeout must be > 0, got {self.round_timeout}")
        need(self.min_accepted_updates >= 1, f"min-accepted-updates must be >= 1, got {self.min_accepted_updates}")
        need(self.max_update_norm >= 0, f"max-update-norm must be >= 0 (0 = automatic DP bound), got {self.max_update_norm}")
        problems.extend(strategy_problems(self.strategy, self.proximal_mu, self.server_lr, self.beta_1, self.beta_2,
                                          self.tau, self.lr))
        need(self.min_site_examples >= 1, f"min-site-examples must be >= 1, got {self.min_site_examples}")
        need(self.max_image_pixels >= 1, f"max-image-pixels must be >= 1, got {self.max_image_pixels}")
        need(self.bootstrap_samples >= 0, f"bootstrap-samples must be >= 0, got {self.bootstrap_samples}")
        need(bool(self.output_dir), "output-dir must not be empty")
        if self.weights_sha256:
            need(
                len(self.weights_sha256) == 64 and all(c in "0123456789abcdef" for c in self.weights_sha256.lower()),
                f"weights-sha256 must be 64 hex digits, got {self.weights_sha256!r}",
            )
        if problems:
            raise ConfigError("invalid run config:\n  - " + "\n  - ".join(problems))

    def site_delta(self, num_training_records: int) -> float:
        """The delta of a simulated site with n training records (delta = 0 means 1/(10·n))."""
        return self.delta if self.delta > 0 else auto_delta(num_training_records)


# The one-run bound's δ term is 2·m·δ: far more canaries than 1/(2δ) would drown it, and each
# canary is an image the audited site trains on.
MAX_AUDIT_CANARIES = 10_000


# δ must be well below 1/n: a mechanism that publishes one random record in the clear has
# δ = 1/n. fedpath requires δ <= 1/(10·n), and the automatic δ is exactly that bound.
MAX_DELTA_FACTOR = 0.1


def auto_delta(num_training_records: int) -> float:
    """1/(10·n): the largest δ fedpath accepts for a site of n training records."""
    return MAX_DELTA_FACTOR / max(num_training_records, 1)


def check_delta(delta: float, num_training_records: int) -> str:
    """'' when δ suits a site of n training records, else why not (no counts: it may cross the wire)."""
    if delta > auto_delta(num_training_records) * (1 + 1e-12):
        return ("delta must be at most 1/(10·n) for a site of n training records (a mechanism that releases one "
                "record in the clear has delta = 1/n); lower delta or use delta = 0 for 1/(10·n)")
    return ""


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    kind = annotation if isinstance(annotation, type) else {"int": int, "float": float, "bool": bool, "str": str}.get(
        str(annotation).split("|")[0].strip(), None
    )
    try:
        if kind is bool:
            return parse_bool(value, key)
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is str:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"invalid run config: {key}={value!r} is not a valid {kind.__name__ if kind else annotation}") from None
    return value


def load_app_config(pyproject: Path, overrides: list[str] | None = None) -> RunConfig:
    """The run config `flwr run` would build: pyproject defaults plus `--run-config` overrides.

    Lets launchers reject a bad configuration before starting any Flower process.
    """
    import tomllib

    import click
    from flwr.common.config import parse_config_args

    defaults = tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]["config"]
    try:
        parsed = parse_config_args(list(overrides or []))
    except (click.ClickException, ValueError) as err:
        message = err.message if isinstance(err, click.ClickException) else str(err)
        raise ConfigError(f"cannot parse --run-config {overrides}: {message} (strings need quotes: policy='head')") from None
    unknown = sorted(set(parsed) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown run-config keys {unknown}; valid keys: {', '.join(sorted(defaults))}")
    return RunConfig.from_mapping({**defaults, **parsed})


def resolve_path(path: str, base: Path | None = None) -> Path:
    """Expand `~` and make relative paths absolute against `base` (default: cwd)."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = (base or Path.cwd()) / p
    return p
