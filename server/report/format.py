"""Numbers and sentences as the report prints them.

One place decides how a percentage, an epsilon, a byte count or a time is written, so
report.html, report.json's plain-language statements and the tests agree. Everything here is
pure (no I/O, no plotting) so each rule is checked against hand-written cases.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool): NaN/Inf were stored as null, but be safe."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def pct(value: Any, digits: int = 1) -> str:
    """0.8123 -> '81.2%'; missing -> 'n/a'."""
    return f"{100 * float(value):.{digits}f}%" if is_number(value) else "n/a"


def num(value: Any, digits: int = 3) -> str:
    return f"{float(value):.{digits}f}" if is_number(value) else "n/a"


def eps(value: Any) -> str:
    """A privacy loss epsilon, to three decimals: as the sites log it, and precise enough that a
    spend just under the budget (7.996 of 8) is never printed as the budget itself."""
    return f"{float(value):.3f}" if is_number(value) else "n/a"


def spent_percent(fraction: float) -> str:
    """Share of a budget spent, rounded DOWN to 0.1% below 100% so 'under budget' never reads as '100%'."""
    value = 100.0 * fraction
    if value < 100.0:
        value = math.floor(value * 10) / 10
    return f"{value:.1f}%"


def short(value: Any) -> str:
    """Budgets and deltas as people write them: 8 -> '8', 1e-05 -> '1e-05', 0.5 -> '0.5'."""
    return f"{float(value):g}" if is_number(value) else "n/a"


def bytes_text(value: Any) -> str:
    """Binary units, as the README quotes sizes: 51984 -> '50.8 KiB'."""
    if not is_number(value):
        return "n/a"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def timestamp(value: Any) -> str:
    """Seconds since the epoch -> '2025-11-25 03:58:45 UTC' (UTC so sites in any zone agree)."""
    if not is_number(value):
        return "n/a"
    return datetime.fromtimestamp(float(value), tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: Any) -> str:
    """77.1 -> '1 min 17 s'; 3725 -> '1 h 02 min'."""
    if not is_number(seconds) or seconds < 0:
        return "n/a"
    total = int(round(float(seconds)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def round_list(rounds: list[int]) -> str:
    """[1, 2, 3, 5] -> '1-3, 5': compact, for sentences and tables."""
    if not rounds:
        return "none"
    values = sorted(set(int(r) for r in rounds))
    parts: list[str] = []
    start = prev = values[0]
    for value in values[1:] + [None]:  # type: ignore[list-item]
        if value is not None and value == prev + 1:
            prev = value
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if value is not None:
            start = prev = value
    return ", ".join(parts)


def budget_fraction(epsilon: Any, budget: Any) -> float | None:
    """Share of the budget spent, for the budget bar (may exceed 1: the report shows it, never hides it)."""
    if not (is_number(epsilon) and is_number(budget)) or float(budget) <= 0:
        return None
    return float(epsilon) / float(budget)


RANDOMNESS_TEXT = {
    "secure": "fresh noise from the operating system CSPRNG every round (nobody can regenerate it)",
    "site-seed": "noise reproducible from a seed the site holds (dp-seed): private only while that seed stays secret; "
                 "in a simulation the experimenter holds it, so it is NOT private there",
}


UNIT_TEXT = {
    "patient": "unit of privacy: one patient (every patch of a patient together)",
    "patch": "unit of privacy: one patch — a patient with k patches is protected only at group level",
}


def unit_text(sites: list[dict[str, Any]]) -> str:
    """What one DP record is at these sites; a mix is named per site."""
    units = {s.get("privacy_unit") or "patch" for s in sites}
    if len(units) == 1:
        return UNIT_TEXT[units.pop()]
    return "; ".join(f"{s['site_id']}: {UNIT_TEXT[s.get('privacy_unit') or 'patch']}" for s in sites)


def privacy_header(sites: list[dict[str, Any]], config: dict[str, Any]) -> str:
    """The header's privacy line: what the sites actually applied, never only what the job asked."""
    dp_sites = [s for s in sites if s.get("dp") and is_number(s.get("epsilon_budget"))]
    asked = short(config.get("epsilon"))
    if not dp_sites:
        return (f"DP-SGD (Opacus); the job asked each site for ε = {asked}; no site reported its accounting")
    granted = ", ".join(f"{s['site_id']} {short(s.get('epsilon_granted'))}" for s in dp_sites)
    lifetime = ", ".join(f"{s['site_id']} {short(s['epsilon_budget'])}" for s in dp_sites)
    return (f"{unit_text(dp_sites)}. DP-SGD (Opacus), clipping C = {short(config.get('max-grad-norm'))}; the job "
            f"asked each site for ε = {asked}; the sites granted: {granted}; their lifetime budgets: {lifetime}")


def period_text(site: dict[str, Any]) -> str:
    """'; its allowance: ...' when the site bounds the ε of its trailing period ('' when it reported none)."""
    allowance, days, used = site.get("epsilon_per_period"), site.get("period_days"), site.get("epsilon_in_period")
    if not (is_number(allowance) and allowance > 0):
        return ""
    return (f"; its allowance: ε ≤ {short(allowance)} for the rounds of any {short(days)} days, of every run "
            f"(ε = {eps(used)} of it in its trailing period at its last reply)")


def privacy_statement(site: dict[str, Any]) -> str:
    """One plain sentence: what this site spent, of what budget, and what it guarantees.

    Written for a hospital's data-protection officer: the cumulative spend against the site's
    own lifetime budget and this job's grant (and its allowance per period, if it sets one), delta,
    which rounds of this run it covers, the unit of privacy it reported, where its noise came from,
    and what else it sent outside DP.
    A site that trained without DP is told so, never given a number.
    """
    name = site.get("site_id", "?")
    trained = [r for r in site.get("rounds_participated", []) if r not in site.get("rejected_rounds", [])]
    epsilon, budget, delta = site.get("epsilon"), site.get("epsilon_budget"), site.get("delta")
    if site.get("dp") is False:
        return (f"Site {name} trained WITHOUT differential privacy (dp = false): the updates it sent carry "
                f"no formal privacy guarantee.")
    if not is_number(epsilon) or not is_number(budget):
        return (f"Site {name} reported no privacy accounting (it never completed a round in this run), "
                f"so no privacy loss is recorded for it here.")
    fraction = budget_fraction(epsilon, budget) or 0.0
    this_run = f"this run: round{'s' if len(trained) != 1 else ''} {round_list(trained)}" if trained else \
        "no update in this run"
    granted = site.get("epsilon_granted")
    grant = f"; this job was granted ε = {short(granted)}" if is_number(granted) and granted else ""
    grant += period_text(site)
    randomness = RANDOMNESS_TEXT.get(site.get("randomness") or "", "noise source not reported")
    extra = ("it also sent opt-in diagnostics (training loss, local validation accuracy, class counts, timings, "
             "skipped files) that are NOT differentially private" if site.get("shares_diagnostics") else
             "besides it, only the accounting and configured values listed under What each site sent")
    unit = site.get("privacy_unit") or "patch"
    protected = ("for each one of its patients, with all the patches of that patient (unit of privacy: one patient)"
                 if unit == "patient" else "for each one of its image patches (unit of privacy: one patch; a "
                 "patient with k patches is protected only at group level)")
    sentence = (
        f"Site {name} has spent ε = {eps(epsilon)} of its lifetime budget {short(budget)} (δ = {short(delta)}) in "
        f"total ({this_run}{grant}): each model update it sent is ({eps(epsilon)}, {short(delta)})-differentially "
        f"private {protected}; noise: {randomness}; {extra}"
    )
    if float(epsilon) > float(budget) + 1e-9:
        return sentence + f". WARNING: this exceeds its budget ({spent_percent(fraction)} spent)."
    return sentence + f"; {eps(max(float(budget) - float(epsilon), 0.0))} remains ({spent_percent(fraction)} spent)."
