"""One federated configuration of an experiment, and the experiments' shared base sizes.

A `Scenario` carries what the experiments set; every other run-config value, and the default
of each field the experiments only sometimes change, is pyproject's (`DEFAULTS`), so a default
is written once, in pyproject.toml.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.config.choices import CONV_POLICIES
from common.config.run_config import RunConfig, load_app_config
from common.config.toml_values import toml_assignments
from common.paths import REPO

LC25000 = REPO.parent / "shared" / "data" / "lc25000-lung"
PYPROJECT = REPO / "pyproject.toml"
DEFAULTS: RunConfig = load_app_config(PYPROJECT)  # the run config `flwr run` builds without overrides


@dataclass(frozen=True)
class Scenario:
    """One federated configuration (every field maps to a run-config key).

    Defaults that differ from pyproject's are the experiments' own choices: Dirichlet label
    skew, δ = 0 (each site's 1/(10 x its records)), no pretrained weights unless an experiment
    makes them, and a public share of groups held out from every site to pretrain on.
    """

    label: str
    dataset: str
    image_size: int
    rounds: int
    sites: int
    partitioning: str = "dirichlet"
    alpha: float = DEFAULTS.dirichlet_alpha
    policy: str = DEFAULTS.policy
    dp: bool = DEFAULTS.dp
    epsilon: float = DEFAULTS.epsilon
    delta: float = 0.0  # 0 = 1/(10·n) per site (common.privacy.delta.auto_delta)
    weights: str = "none"
    stain_shift: float = DEFAULTS.stain_shift
    batch_size: int = DEFAULTS.batch_size
    min_records_per_step: int = DEFAULTS.min_records_per_step  # under DP (common.training.steps.epoch_steps)
    round_acceptance: str = DEFAULTS.round_acceptance  # validation | all (server.round_acceptance)
    lr: float = DEFAULTS.lr
    local_epochs: int = DEFAULTS.local_epochs
    fraction_train: float = DEFAULTS.fraction_train
    seed: int = DEFAULTS.seed
    public_fraction: float = 0.2
    privacy_unit: str = DEFAULTS.privacy_unit  # auto = patient where the data names patients (LC25000's groups.csv)
    stain: str = DEFAULTS.stain
    strategy: str = DEFAULTS.strategy
    server_lr: float = DEFAULTS.server_lr  # 0 = Flower's default for the adaptive strategies
    bn_statistics: str = DEFAULTS.bn_statistics  # or "public": re-estimated on the public share (common.model.bn_statistics)
    center_head: str = DEFAULTS.center_head  # auto | on | off: the head trained on centred features (common.model.head_centering)

    def run_config(self) -> str:
        """The `--run-config` overrides: every field, and sites that need not all answer each round."""
        values: dict[str, Any] = {
            "dataset": self.dataset, "image-size": self.image_size, "num-server-rounds": self.rounds,
            "partitioning": self.partitioning, "dirichlet-alpha": self.alpha, "policy": self.policy,
            "dp": self.dp, "epsilon": self.epsilon, "delta": self.delta, "weights": self.weights,
            "stain-shift": self.stain_shift, "batch-size": self.batch_size, "lr": self.lr,
            "local-epochs": self.local_epochs, "fraction-train": self.fraction_train, "seed": self.seed,
            "public-fraction": self.public_fraction, "min-train-nodes": 1, "min-available-nodes": self.sites,
            "privacy-unit": self.privacy_unit, "stain": self.stain, "strategy": self.strategy,
            "server-lr": self.server_lr, "bn-statistics": self.bn_statistics,
            "min-records-per-step": self.min_records_per_step, "round-acceptance": self.round_acceptance,
            "center-head": self.center_head,
        }
        return toml_assignments(values)

    def config(self) -> RunConfig:
        return load_app_config(PYPROJECT, [self.run_config()])


def base_scenario(quick: bool, data: Path) -> Scenario:
    """The experiments' common size: 10 sites; quick 32 px x 4 rounds, full 64 px x 10 rounds."""
    if quick:
        return Scenario("base", str(data), image_size=32, rounds=4, sites=10)
    return Scenario("base", str(data), image_size=64, rounds=10, sites=10)


def transfer_lr(policy: str, dp: bool) -> float:
    """Learning rates per policy: training convolutions needs smaller steps, and without
    DP's clipping smaller still (at 0.02 unclipped full training from scratch diverges to NaN
    with frozen BatchNorm statistics, and the server rightly rejects every update)."""
    if policy not in CONV_POLICIES:
        return 0.1
    return 0.02 if dp else 0.005
