"""Asked vs applied: each privacy key of the run config, against what every site reported it applied.

A coordinator may set `privacy-unit=patch`, `delta=0.05`, `site-epsilon-budget=1000` or a
`site-dp-seed` in the run config; a deployed site takes none of them from the coordinator (its
node config and ledger win) and a simulated site takes the `site-*` keys as its node config. So
the report must not list the run config as if it applied: for each privacy key this module reads
the site summaries (`server/report/compose.py`, folded from the replies) and says, per site,
whether the value it reported is the one the job asked for, or its own. For keys whose value no
reply carries but that a site compares with its own settings (`common.wire.reply.OVERRIDABLE`),
the reply's `overridden` names the ones its own setting won over. Where nothing in the reply shows
a key, it is marked "not reported": the report cannot confirm it, and says so instead of guessing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from common.config.toml_values import toml_value
from common.wire.reply import OVERRIDABLE
from server.report.format import is_number, short

APPLIED, OVERRIDDEN, SITE_DECIDES, NOT_REPORTED, NO_REPLY = (
    "applied", "overridden", "site-decides", "not-reported", "no-reply")
VERDICT_TEXT = {
    APPLIED: "applied by every site that reported it",
    OVERRIDDEN: "overridden by the sites' own settings",
    SITE_DECIDES: "each site decides",
    NOT_REPORTED: "not reported by the sites: cannot be confirmed",
    NO_REPLY: "no site reported its settings",
}


@dataclass(frozen=True)
class Check:
    """How one run-config key is compared with what a site reported.

    `reported(site)` is the site's applied value (None when its replies did not carry it);
    `matches(asked, applied)` is True when the site applied what the job asked for, and None
    when the key asks a site to decide (`privacy-unit = auto`, `noise-multiplier = 0`, `delta = 0`).
    """

    key: str
    reply: str  # which reply value shows it ('' = none)
    reported: Callable[[dict[str, Any]], Any] | None = None
    matches: Callable[[Any, Any], bool | None] | None = None


def _same(asked: Any, applied: Any) -> bool:
    if is_number(asked) and is_number(applied):
        return abs(float(asked) - float(applied)) <= 1e-9 * max(1.0, abs(float(asked)))
    return asked == applied


def _unit(asked: Any, applied: Any) -> bool | None:
    return None if asked == "auto" else asked == applied


def _decided_when_zero(asked: Any, applied: Any) -> bool | None:
    return None if is_number(asked) and float(asked) == 0 else _same(asked, applied)


def _granted(asked: Any, applied: Any) -> bool:
    return _same(asked, applied)  # granted in full, or cut to the site's per-job cap / what remains


def _seed(asked: Any, applied: Any) -> bool:
    return (applied == "site-seed") == bool(asked)


def _flag(asked: Any, applied: Any) -> bool:
    return bool(asked) == bool(applied)


REFUSED_NON_PRIVATE = "refused to train without DP (non-private-not-allowed)"


def _dp(site: dict[str, Any]) -> Any:
    if any(r.get("code") == "non-private-not-allowed" for r in site.get("refusals", [])):
        return REFUSED_NON_PRIVATE
    return site.get("dp") if site.get("replied") else None


def _dp_matches(asked: Any, applied: Any) -> bool:
    return applied != REFUSED_NON_PRIVATE and _flag(asked, applied)


def _sigmas(site: dict[str, Any]) -> Any:
    history = site.get("job_history") or []
    sigmas = sorted({round(float(h[0]), 6) for h in history})
    return sigmas[0] if len(sigmas) == 1 else (sigmas or None)


CHECKS: tuple[Check, ...] = (
    Check("dp", "dp", _dp, _dp_matches),
    Check("epsilon", "epsilon-granted", lambda s: s.get("epsilon_granted"), _granted),
    Check("delta", "delta", lambda s: s.get("delta"), _decided_when_zero),
    Check("privacy-unit", "privacy-unit", lambda s: s.get("privacy_unit"), _unit),
    Check("noise-multiplier", "noise-multiplier", _sigmas, _decided_when_zero),
    Check("max-grad-norm", "max-grad-norm", lambda s: s.get("max_grad_norm"), _same),
    Check("site-epsilon-budget", "epsilon-budget", lambda s: s.get("epsilon_budget"), _same),
    Check("site-epsilon-per-period", "epsilon-per-period", lambda s: s.get("epsilon_per_period"), _same),
    Check("site-period-days", "period-days",
          lambda s: s.get("period_days") if (s.get("epsilon_per_period") or 0) > 0 else None, _same),
    Check("site-dp-seed", "randomness", lambda s: s.get("randomness"), _seed),
    Check("site-share-diagnostics", "shares-diagnostics",
          lambda s: s.get("shares_diagnostics") if s.get("replied") else None, _flag),
    Check("site-epsilon-per-job", ""),
    Check("site-accept-budget-change", ""),
    Check("max-patches-per-patient", ""),
    Check("strict", ""),
    Check("val-fraction", ""),
    Check("min-site-examples", ""),
)
PRIVACY_KEYS = tuple(c.key for c in CHECKS)


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(short(v) for v in value)
    if isinstance(value, bool):
        return toml_value(value)
    return short(value) if is_number(value) else str(value)


AS_ASKED, OWN_SETTING = "the value asked", "its own setting"


def _named_overridden(key: str) -> Callable[[dict[str, Any]], Any]:
    """For a key whose applied value no reply carries: what a site that replied says through `overridden`."""
    return lambda site: (OWN_SETTING if key in site.get("overridden", []) else AS_ASKED) if site.get("replied") else None


def _setting(check: Check, config: dict[str, Any], sites: list[dict[str, Any]]) -> dict[str, Any]:
    asked = config.get(check.key)
    row: dict[str, Any] = {"key": check.key, "asked": toml_value(asked),
                           "reply_value": check.reply, "sites": []}
    if check.reported is None or check.matches is None:
        if check.key not in OVERRIDABLE:
            return {**row, "verdict": NOT_REPORTED, "text": f"{check.key}: {VERDICT_TEXT[NOT_REPORTED]} (no reply "
                    "value shows it; a deployed site takes it from its own node config)"}
        check = Check(check.key, "overridden", _named_overridden(check.key), lambda _, applied: applied == AS_ASKED)
    for site in sites:
        value = check.reported(site)
        status = NO_REPLY if value is None else \
            {True: APPLIED, False: OVERRIDDEN, None: SITE_DECIDES}[check.matches(asked, value)]
        if status == APPLIED and check.key in site.get("overridden", []):
            status = OVERRIDDEN  # the site says its own setting won, whatever value it reports
        row["sites"].append({"site_id": site["site_id"], "applied": None if value is None else _shown(value),
                             "status": status})
    statuses = {s["status"] for s in row["sites"]} - {NO_REPLY}
    verdict = OVERRIDDEN if OVERRIDDEN in statuses else SITE_DECIDES if SITE_DECIDES in statuses else \
        APPLIED if statuses else NO_REPLY
    return {**row, "verdict": verdict, "text": _sentence(check, row, verdict)}


def _sentence(check: Check, row: dict[str, Any], verdict: str) -> str:
    """'delta = 0.05: overridden by the sites' own settings (site-0 applied 1e-05; site-1 ...)'."""
    per_site = "; ".join(f"{s['site_id']} {'reported none' if s['applied'] is None else 'applied ' + s['applied']}"
                         for s in row["sites"])
    return f"{check.key} = {row['asked']}: {VERDICT_TEXT[verdict]}" + (f" ({per_site})" if per_site else "")


def privacy_settings(config: dict[str, Any], sites: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """report.json's `privacy_settings`: every privacy key the run config sets, asked vs applied per site."""
    return [_setting(check, config, sites) for check in CHECKS if check.key in config]  # older runs lack some
