"""Asked vs applied at a site: the coordinator's run-config keys a deployed site ignores, said once per job.

Why: a deployed site takes δ, its unit of privacy, its budget, cap and allowance, its validation split,
`strict`, what it shares and its DP randomness from its own node config (`client.identity`); the run config's
`delta`, `privacy-unit`, `site-*` keys and the like do not apply there. A coordinator that sets them must not be
left believing they did, and a site's operator should see what was asked. So each round computes which of
those keys asked for something other than what the site applies (`ignored_run_config`); the site logs them
once per job (its first round of the run, with the job's banner: the unit of privacy, δ, the budget), keeps
them in every line of its own log (`site-rounds.jsonl`, `ignored_run_config`), and sends only their names in
its reply (`overridden`, from the fixed list `common.wire.reply.OVERRIDABLE`), so the report can mark each key
as applied or overridden from what the sites say, not from the config. A simulated site applies the run
config (it stands in for the simulated hospitals' node configs), so it ignores nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from client.identity import SiteIdentity
from client.privacy_unit import unit_statement
from common.config.run_config import RunConfig
from common.paths import SITE_LOG
from common.training.patient_dp import PATIENT
from common.wire.reply import OVERRIDABLE

log = logging.getLogger("fedpath.site")

# For each key of OVERRIDABLE: (what the run config asks, what a deployed site applies), as the site logs them.
# The DP seeds are secrets (the site's) or meant as ones (the coordinator's): only whether one is set is logged.
_SEED = lambda seed: "set" if seed else "not set"  # noqa: E731
_SIDES: dict[str, Callable[[RunConfig, SiteIdentity], tuple[Any, Any]]] = {
    "delta": lambda c, s: (c.delta, s.delta),
    "privacy-unit": lambda c, s: (c.privacy_unit, s.privacy_unit),  # applied: the unit in force (below)
    "val-fraction": lambda c, s: (c.val_fraction, s.val_fraction),
    "strict": lambda c, s: (c.strict, s.strict),
    "ledger-dir": lambda c, s: (c.ledger_dir, str(s.state_dir) if c.ledger_dir else ""),
    "site-epsilon-budget": lambda c, s: (c.site_epsilon_budget, s.epsilon_budget),
    "site-epsilon-per-job": lambda c, s: (c.site_epsilon_per_job, s.epsilon_per_job),
    "site-epsilon-per-period": lambda c, s: (c.site_epsilon_per_period, s.epsilon_per_period),
    "site-period-days": lambda c, s: (c.site_period_days, s.period_days),
    "site-accept-budget-change": lambda c, s: (c.site_accept_budget_change, s.accept_budget_change),
    "site-share-diagnostics": lambda c, s: (c.site_share_diagnostics, s.share_diagnostics),
    "site-dp-seed": lambda c, s: (_SEED(c.site_dp_seed), _SEED(s.dp_seed)),
}


def ignored_run_config(identity: SiteIdentity, config: RunConfig, unit: str) -> dict[str, dict[str, Any]]:
    """{key: {"asked": run config's value, "applied": the site's}} for each key the site does not take from the run.

    `unit` is the unit in force: a run config that names that very unit (`privacy-unit=patient` at a site whose
    `auto` resolved to the patient) asked for what applies.
    """
    if not identity.deployed:
        return {}
    ignored = {}
    for key in OVERRIDABLE:
        asked, applied = _SIDES[key](config, identity)
        if key == "privacy-unit":
            if not config.dp or asked == unit or (asked == "auto" and unit == PATIENT):
                continue  # what the run asked is what applies (auto: the patient, where the data names them)
            applied = unit
        if not _same(asked, applied):
            ignored[key] = {"asked": asked, "applied": applied}
    return ignored


def announce_job(identity: SiteIdentity, config: RunConfig, run_id: int, unit: str,
                 delta: float, ignored: dict[str, dict[str, Any]]) -> None:
    """The site's banner for a job, once (its first round of this run): the unit, δ, budget, ignored keys."""
    if _seen_run(identity.state_dir / SITE_LOG, run_id):
        return
    log.info("fedpath site %s, run %d: %s; delta %.3g; lifetime budget epsilon %g (per job at most %g)",
             identity.site_id, run_id, unit_statement(unit, identity.privacy_unit, config.dp), delta,
             identity.epsilon_budget, identity.job_cap)
    if ignored:
        log.warning("site %s ignores the coordinator's run-config keys %s in run %d, because its own settings "
                    "win: %s", identity.site_id, ", ".join(ignored), run_id, "; ".join(
                        f"{key}={_shown(v['asked'])} (applies {_shown(v['applied'])})" for key, v in ignored.items()))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(a)), abs(float(b)))
        except (TypeError, ValueError):
            return False
    return a == b


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _seen_run(site_log: Path, run_id: int) -> bool:
    """True when the site's own log already holds a round of this run (so its banner was said)."""
    if not site_log.exists():
        return False
    for line in site_log.read_text(errors="replace").splitlines():
        try:
            if json.loads(line).get("run_id") == run_id:
                return True
        except (ValueError, AttributeError):
            continue
    return False

