"""The run configuration: every knob of `[tool.flwr.app.config]`, parsed and validated.

Validation happens once, before anything starts, and names the valid values: a typo in a
policy name must not surface an hour later as a crash inside a Ray actor.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config.booleans import parse_bool
from common.config.checks import DEFAULT_PERIOD_DAYS, config_problems
from common.config.choices import DEFAULT_MAX_PATCHES_PER_PATIENT, DEFAULT_MIN_RECORDS_PER_STEP
from common.config.strategies import DEFAULT_STRATEGY
from common.data.checks import DEFAULT_MAX_IMAGE_PIXELS
from common.privacy.delta import DEFAULT_DELTA, auto_delta


class ConfigError(ValueError):
    """A run-config value is invalid; the message says which and what is valid."""


@dataclass(frozen=True)
class RunConfig:
    """Typed view of the Flower run config (keys are the TOML names with `_`)."""

    num_server_rounds: int = 12
    dataset: str = "synthetic"
    synthetic_images: int = 4000
    groups_csv: str = ""
    image_size: int = 64
    arch: str = "resnet18"
    weights: str = "auto"
    weights_sha256: str = ""
    policy: str = "norm-head"
    # frozen BatchNorm statistics: the backbone's, or re-estimated on the public share (common.model.bn_statistics)
    bn_statistics: str = "backbone"
    # train the head on centred features (the server sends the mean of the head's input over its validation images;
    # common.model.head_centering): auto = from scratch only, on, off
    center_head: str = "auto"
    local_epochs: int = 1
    batch_size: int = 64
    min_records_per_step: int = DEFAULT_MIN_RECORDS_PER_STEP  # under DP: q raised so a step expects at least this many
    lr: float = 0.1
    momentum: float = 0.9
    dp: bool = True
    epsilon: float = 8.0  # what this job asks each site for; each site grants at most its own cap
    delta: float = DEFAULT_DELTA  # common.privacy.delta: at most 1/(10·n) at each site
    # Simulation only: the node config of simulated sites (deployed sites use their own node config).
    site_epsilon_budget: float = 32.0
    site_epsilon_per_job: float = 0.0
    site_epsilon_per_period: float = 0.0  # 0 = no allowance per period (common.privacy.period)
    site_period_days: float = DEFAULT_PERIOD_DAYS
    site_accept_budget_change: str = ""
    site_share_diagnostics: bool = False
    site_dp_seed: str = ""
    privacy_unit: str = "auto"  # simulation (deployed sites: node config): auto = patient, no groups: refused
    max_patches_per_patient: int = DEFAULT_MAX_PATCHES_PER_PATIENT
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
    # validation | all: which rounds' models the server keeps (server.round_acceptance)
    round_acceptance: str = "validation"
    # server strategy (common.config.strategies): Flower's FedAvg, FedProx, FedAdam, FedYogi or FedAdagrad
    strategy: str = DEFAULT_STRATEGY
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
        """Every problem of the run config at once (one ConfigError naming each), grouped by what it configures."""
        problems = config_problems(self)
        if problems:
            raise ConfigError("invalid run config:\n  - " + "\n  - ".join(problems))

    def site_delta(self, num_training_records: int) -> float:
        """The delta of a simulated site with n training records (delta = 0 means 1/(10·n))."""
        return self.delta if self.delta > 0 else auto_delta(num_training_records)


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
