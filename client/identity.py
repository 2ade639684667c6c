"""Who this site is and where its data and privacy ledger live.

The same ClientApp serves both worlds:

* simulation: Flower gives `partition-id`/`num-partitions`; the site's share is cut from
  the run's `dataset`, and its ledger lives under the run directory (or `ledger-dir`).
* deployment: the hospital's operator starts `flower-supernode --node-config` with
  `data-path`, `site-id`, `epsilon-budget`, `delta` and `state-dir`. These come from the
  site, never from the coordinator, so no run config can move a site's ledger, raise its
  budget, point it at other data, choose which patients sit in its validation split,
  switch `strict` or read its DP randomness. Optional keys: `epsilon-per-job`,
  `epsilon-per-period`, `period-days`, `accept-budget-change`, `val-fraction`, `share-diagnostics`, `dp-seed`, `split-key`,
  `allow-non-private`, `strict`, `test-hashes`, `privacy-unit`, `groups-csv`, and the operator's acknowledgements
  `accept-new-ledger` (a new ledger at ε 0: `common.privacy.new_ledger`) and `accept-ledger-edit` (a ledger
  changed outside fedpath: `common.privacy.integrity`) (docs/DEPLOYMENT.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config.booleans import parse_bool
from common.config.checks import DEFAULT_PERIOD_DAYS, PRIVACY_UNIT_SETTINGS, period_problem
from common.config.run_config import ConfigError, RunConfig, resolve_path
from common.paths import SITES_DIR, run_dir, simulated_site_id
from common.privacy.dp_seed import dp_seed_problem
from common.privacy.new_ledger import parse_ack

DEPLOYMENT_KEYS = ("data-path", "site-id", "epsilon-budget", "delta", "state-dir")
OPTIONAL_DEPLOYMENT_KEYS = (
    "allow-non-private", "strict", "epsilon-per-job", "accept-budget-change", "val-fraction", "share-diagnostics",
    "dp-seed", "split-key", "privacy-unit", "groups-csv", "epsilon-per-period", "period-days", "test-hashes", "accept-new-ledger",
    "accept-ledger-edit",
)
# A per-job cap of a quarter of the lifetime budget: one run (or one resumed job) spends at most a
# quarter. It does not bound a coordinator that starts many runs: each opens a grant of its own, up to
# the lifetime budget (common.privacy.jobs); the allowance per period (epsilon-per-period) bounds those.
DEFAULT_JOB_SHARE = 0.25
DEFAULT_VAL_FRACTION = 0.15


@dataclass(frozen=True)
class SiteIdentity:
    """Who the site is and the settings that are the site's own (never the coordinator's)."""

    site_id: str
    deployed: bool
    state_dir: Path
    epsilon_budget: float  # lifetime budget
    delta: float | None  # None: derived from the site's size (simulation, delta = 0)
    partition_id: int = -1
    num_partitions: int = 0
    data_path: Path | None = None
    allow_non_private: bool = False
    strict: bool = False
    epsilon_per_job: float = 0.0  # 0: DEFAULT_JOB_SHARE of the lifetime budget
    epsilon_per_period: float = 0.0  # 0: no allowance per period (common.privacy.period)
    period_days: float = DEFAULT_PERIOD_DAYS
    accept_budget_change: str = ""  # "OLD->NEW": the operator's acknowledgement of a budget raise
    val_fraction: float = DEFAULT_VAL_FRACTION
    share_diagnostics: bool = False
    dp_seed: str = field(default="", repr=False)  # secret; "" = fresh OS randomness every round
    split_key: str = field(default="", repr=False)  # secret; "" = generated once into state-dir
    privacy_unit: str = "auto"  # auto | patient | patch
    groups_csv: Path | None = None  # deployed: the site's own patient mapping (default data-path/groups.csv)
    test_hashes: Path | None = None  # deployed: the centre's test-image SHA-256s (sha256sum format), never trained on
    accept_new_ledger: str = ""  # "YYYY-MM-DD": the operator acknowledges a new ledger at ε 0 that day (deployed)
    accept_ledger_edit: str = ""  # hex digest prefix: the operator accepts a ledger changed outside fedpath

    @property
    def job_cap(self) -> float:
        """The most ε one job may spend at this site."""
        return self.epsilon_per_job if self.epsilon_per_job > 0 else DEFAULT_JOB_SHARE * self.epsilon_budget


def truthy(node_config: Mapping[str, Any], key: str) -> bool:
    """A yes/no node-config key (absent = no), read by the one shared parser."""
    try:
        return parse_bool(node_config.get(key, False), key)
    except ValueError as err:
        raise ConfigError(f"{err} in --node-config") from None


def _number(node_config: Mapping[str, Any], key: str, default: float) -> float:
    try:
        return float(node_config.get(key, default))
    except (TypeError, ValueError):
        raise ConfigError(f"{key} in --node-config must be a number, got {node_config.get(key)!r}") from None


def check_deployment_node_config(node_config: Mapping[str, Any]) -> tuple[float, float]:
    """(epsilon budget, delta) of a deployed site, or a ConfigError naming what is missing or wrong.

    Used by the ClientApp on every round and by the site launcher (`python -m deploy site`)
    before the SuperNode starts, so both reject the same node configs in the same words.
    """
    missing = [key for key in DEPLOYMENT_KEYS if key not in node_config or str(node_config[key]) == ""]
    if missing:
        raise ConfigError(
            f"this SuperNode's --node-config lacks {', '.join(missing)}; a deployed site needs "
            + " ".join(f'{k}=...' for k in DEPLOYMENT_KEYS)
            + " (see docs/DEPLOYMENT.md)"
        )
    try:
        budget, delta = float(node_config["epsilon-budget"]), float(node_config["delta"])
    except (TypeError, ValueError) as err:
        raise ConfigError(f"epsilon-budget and delta in --node-config must be numbers: {err}") from None
    # An infinite budget would switch the budget check off; NaN makes every comparison with it false.
    if not (math.isfinite(budget) and budget > 0) or not 0 < delta < 1:
        raise ConfigError(f"--node-config needs finite epsilon-budget > 0 and 0 < delta < 1, got {budget}, {delta}")
    per_job = _number(node_config, "epsilon-per-job", 0.0)
    if not (math.isfinite(per_job) and per_job >= 0):
        raise ConfigError(f"epsilon-per-job in --node-config must be >= 0 (0 = a quarter of epsilon-budget), got {per_job}")
    period = period_problem(_number(node_config, "epsilon-per-period", 0.0),
                            _number(node_config, "period-days", DEFAULT_PERIOD_DAYS))
    if period:
        raise ConfigError(f"{period} in --node-config")
    val = _number(node_config, "val-fraction", DEFAULT_VAL_FRACTION)
    if not 0 <= val < 1:
        raise ConfigError(f"val-fraction in --node-config must be in [0, 1), got {val}")
    unit = str(node_config.get("privacy-unit", "auto"))
    if unit not in PRIVACY_UNIT_SETTINGS:
        raise ConfigError(f"privacy-unit in --node-config must be one of {', '.join(PRIVACY_UNIT_SETTINGS)}, got {unit!r}")
    seed_problem = dp_seed_problem(str(node_config.get("dp-seed", "")))
    if seed_problem:
        raise ConfigError(f"--node-config: {seed_problem}")
    change = str(node_config.get("accept-budget-change", ""))
    if change and parse_budget_change(change) is None:
        raise ConfigError(f'accept-budget-change must read "OLD->NEW" (e.g. "8->12"), got {change!r}')
    _check_acknowledgements(node_config)
    return budget, delta


def _check_acknowledgements(node_config: Mapping[str, Any]) -> None:
    new_ledger = str(node_config.get("accept-new-ledger", ""))
    if new_ledger and parse_ack(new_ledger) is None:
        raise ConfigError(f'accept-new-ledger must be a date "YYYY-MM-DD" (today\'s), got {new_ledger!r}')
    edit = str(node_config.get("accept-ledger-edit", ""))
    if edit and (len(edit) < 16 or any(c not in "0123456789abcdefABCDEF" for c in edit)):
        raise ConfigError(f"accept-ledger-edit must be the 16 hex digits the ledger's integrity refusal printed, "
                          f"got {edit!r}")


def parse_budget_change(text: str) -> tuple[float, float] | None:
    """("8->12") -> (8.0, 12.0); None when malformed."""
    old, sep, new = text.partition("->")
    try:
        return (float(old), float(new)) if sep else None
    except ValueError:
        return None


def site_identity(node_config: Mapping[str, Any], config: RunConfig, run_id: int) -> SiteIdentity:
    """Resolve the site from Flower's node config; deployment keys must all be present.

    Simulated sites have no node config of their own: the run config's `site-*` keys stand in
    for it (the experimenter plays every hospital). Deployed sites take every privacy- and
    data-handling setting from their own node config; the run config cannot change them.
    """
    if "partition-id" in node_config and "data-path" not in node_config:
        pid, num = int(node_config["partition-id"]), int(node_config["num-partitions"])
        base = resolve_path(config.ledger_dir) if config.ledger_dir else run_dir(config, run_id) / SITES_DIR
        return SiteIdentity(
            site_id=simulated_site_id(pid),
            deployed=False,
            state_dir=base / simulated_site_id(pid),
            epsilon_budget=config.site_epsilon_budget,
            delta=config.delta if config.delta > 0 else None,
            partition_id=pid,
            num_partitions=num,
            strict=config.strict,
            epsilon_per_job=config.site_epsilon_per_job,
            epsilon_per_period=config.site_epsilon_per_period,
            period_days=config.site_period_days,
            accept_budget_change=config.site_accept_budget_change,
            val_fraction=config.val_fraction,
            share_diagnostics=config.site_share_diagnostics,
            dp_seed=config.site_dp_seed,
            privacy_unit=config.privacy_unit,
        )
    budget, delta = check_deployment_node_config(node_config)
    return SiteIdentity(
        site_id=str(node_config["site-id"]),
        deployed=True,
        state_dir=resolve_path(str(node_config["state-dir"])),
        epsilon_budget=budget,
        delta=delta,
        data_path=resolve_path(str(node_config["data-path"])),
        allow_non_private=truthy(node_config, "allow-non-private"),
        strict=truthy(node_config, "strict"),
        epsilon_per_job=_number(node_config, "epsilon-per-job", 0.0),
        epsilon_per_period=_number(node_config, "epsilon-per-period", 0.0),
        period_days=_number(node_config, "period-days", DEFAULT_PERIOD_DAYS),
        accept_budget_change=str(node_config.get("accept-budget-change", "")),
        val_fraction=_number(node_config, "val-fraction", DEFAULT_VAL_FRACTION),
        share_diagnostics=truthy(node_config, "share-diagnostics"),
        dp_seed=str(node_config.get("dp-seed", "")),
        split_key=str(node_config.get("split-key", "")),
        privacy_unit=str(node_config.get("privacy-unit", "auto")),
        groups_csv=resolve_path(str(node_config["groups-csv"])) if node_config.get("groups-csv") else None,
        test_hashes=resolve_path(str(node_config["test-hashes"])) if node_config.get("test-hashes") else None,
        accept_new_ledger=str(node_config.get("accept-new-ledger", "")),
        accept_ledger_edit=str(node_config.get("accept-ledger-edit", "")),
    )
