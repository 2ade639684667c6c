"""Who this site is and where its data and privacy ledger live.

The same ClientApp serves both worlds:

* simulation: Flower gives `partition-id`/`num-partitions`; the site's share is cut from
  the run's `dataset`, and its ledger lives under the run directory (or `ledger-dir`).
* deployment: the hospital's operator starts `flower-supernode --node-config` with
  `data-path`, `site-id`, `epsilon-budget`, `delta` and `state-dir`. These come from the
  site, never from the coordinator, so no run config can move a site's ledger, raise its
  budget or point it at other data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.config import ConfigError, RunConfig, resolve_path
from common.paths import run_dir

DEPLOYMENT_KEYS = ("data-path", "site-id", "epsilon-budget", "delta", "state-dir")
OPTIONAL_DEPLOYMENT_KEYS = ("allow-non-private", "strict")


@dataclass(frozen=True)
class SiteIdentity:
    site_id: str
    deployed: bool
    state_dir: Path
    epsilon_budget: float
    delta: float | None  # None: derived from the site's size (simulation, delta = 0)
    partition_id: int = -1
    num_partitions: int = 0
    data_path: Path | None = None
    allow_non_private: bool = False
    strict: bool = False


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() in ("1", "true", "yes")


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
    return budget, delta


def site_identity(node_config: Mapping[str, Any], config: RunConfig, run_id: int) -> SiteIdentity:
    """Resolve the site from Flower's node config; deployment keys must all be present."""
    if "partition-id" in node_config and "data-path" not in node_config:
        pid, num = int(node_config["partition-id"]), int(node_config["num-partitions"])
        base = resolve_path(config.ledger_dir) if config.ledger_dir else run_dir(config, run_id) / "sites"
        return SiteIdentity(
            site_id=f"site-{pid}",
            deployed=False,
            state_dir=base / f"site-{pid}",
            epsilon_budget=config.epsilon,
            delta=config.delta if config.delta > 0 else None,
            partition_id=pid,
            num_partitions=num,
            strict=config.strict,
        )
    budget, delta = check_deployment_node_config(node_config)
    return SiteIdentity(
        site_id=str(node_config["site-id"]),
        deployed=True,
        state_dir=resolve_path(str(node_config["state-dir"])),
        epsilon_budget=budget,
        delta=delta,
        data_path=resolve_path(str(node_config["data-path"])),
        allow_non_private=_truthy(node_config.get("allow-non-private", False)),
        strict=_truthy(node_config.get("strict", config.strict)),
    )
