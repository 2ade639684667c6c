"""Every sentence the report writes about a site's unit of privacy, ε and δ, from what the sites reported.

One module, one definition per fact: the page's header, the explainer above the per-site
sentences, each site's sentence, the sites table and the data-protection officer's paragraph
(`server/report/officer.py`) all take the unit's wording from `UNITS` and the numbers from the
site summaries that `server/report/compose.py` folds from the replies, never from the run config
(a site may apply other settings than the job asked for) and never with a default: a site that
reported no unit is said to have reported none.

Two numbers are kept apart because they answer different questions:

* **ε of this job** (`epsilon_this_job`): the ε of the composition of the rounds this run recorded
  from the site, from the σ, q and steps of its replies (`common.privacy.accounting.epsilon_of`, the
  same accountant the site's ledger uses). It is the guarantee of the updates this job received.
* **cumulative ε** (`epsilon`): what the site's ledger has spent over every round of every job,
  against its lifetime budget. It is at least the ε of this job; a site whose cumulative ε is lower
  reported numbers that do not add up, and the sentence says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from common.privacy.accounting import MIN_REMAINING_SHARE
from common.wire.reply import REFUSALS
from server.report.format import budget_fraction, eps, is_number, round_list, short, spent_percent


@dataclass(frozen=True)
class UnitWords:
    """How the report names one unit of privacy, in each place it does."""

    header: str  # the masthead and the header's privacy line
    protects: str  # "... (ε, δ)-differentially private for <protects>"
    any_single: str  # "... whether or not <any_single> was in its data"
    guarantee: str  # the officer's "At site-0 the guarantee <guarantee>."


UNITS: dict[str, UnitWords] = {
    "patient": UnitWords(
        header="unit of privacy: one patient (every patch of a patient together)",
        protects="each one of its patients, with all the patches of that patient",
        any_single="any single patient (with all of that patient's patches)",
        guarantee="protects each patient with all of their patches (unit of privacy: one patient)",
    ),
    "patch": UnitWords(
        header="unit of privacy: one patch — a patient with k patches is protected only at group level",
        protects="each one of its image patches, not for a patient as a whole",
        any_single="any single patch",
        guarantee="protects single patches only (unit of privacy: one patch): a patient with k patches is "
                  "protected only as a group of k records (group privacy: up to k times the ε, with a larger δ)",
    ),
}
UNIT_NOT_REPORTED = "unit of privacy not reported"

RANDOMNESS_TEXT = {
    "secure": "fresh noise from the operating system CSPRNG every round (nobody can regenerate it)",
    "site-seed": "noise reproducible from a seed the site holds (dp-seed): private only while that seed stays secret; "
                 "in a simulation the experimenter holds it, so it is NOT private there",
}
# What each site's ε buys (issue 23): the noise of a step against the signal its records can give, σ/(q·N)
# (`common.privacy.accounting.noise_per_clip`), from σ, q and N = privacy-records, all already in its reply.
NOISE_PER_CLIP = ("noise per step σ/(q·N): the noise on each DP-SGD step's averaged gradient (per coordinate, in "
                  "units of the clipping norm C, the largest that average can be), for noise multiplier σ, sampling "
                  "rate q and N records in the unit of privacy; smaller means more signal per step from the site's "
                  "records at the same ε, comparable across sites whatever their C")


def noise_text(site: dict[str, Any]) -> str:
    """'site-0: 0.0532' as the officer's paragraph lists it ('' without the number)."""
    value = site.get("noise_per_clip")
    return f"{site.get('site_id', '?')}: {noise_number(value)}" if is_number(value) else ""


def noise_number(value: Any) -> str:
    """σ/(q·N) to three significant digits (0.0532, 1.1)."""
    return f"{float(value):.3g}" if is_number(value) else "n/a"


# Refusals that say a budget, a grant or an allowance left no room (the others are not about ε).
BUDGET_REFUSALS = ("budget-exhausted", "round-exceeds-budget", "period-allowance-exceeded")
# Two ε of the same accountant closer than this are the same number (floating point).
SAME_EPSILON = 1e-6


def unit_of(site: dict[str, Any]) -> str | None:
    """The unit the site reported ('patient' or 'patch'), or None: never a default."""
    unit = site.get("privacy_unit")
    return unit if unit in UNITS else None


def unit_header(site: dict[str, Any]) -> str:
    unit = unit_of(site)
    return UNITS[unit].header if unit else UNIT_NOT_REPORTED


def unit_text(sites: list[dict[str, Any]]) -> str:
    """What one DP record is at these sites; a mix (or a site that did not say) is named per site."""
    if not sites:
        return UNIT_NOT_REPORTED
    words = {unit_header(s) for s in sites}
    if len(words) == 1:
        return words.pop()
    return "; ".join(f"{s['site_id']}: {unit_header(s)}" for s in sites)


def private_sites(sites: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sites that reported DP accounting (a budget): the ones the privacy sentences are about."""
    return [s for s in sites if s.get("dp") and is_number(s.get("epsilon_budget"))]


def explainer(sites: list[dict[str, Any]]) -> str:
    """The lead above the per-site sentences: what (ε, δ) means, for the unit(s) the sites reported."""
    private = private_sites(sites)
    units = {unit_of(s) for s in private}
    if not private:
        single = "any single training record"
    elif len(units) == 1 and None not in units:
        single = UNITS[units.pop()].any_single
    else:
        single = ("any single record of the site's unit of privacy (" +
                  "; ".join(f"{s['site_id']}: {unit_header(s).removeprefix('unit of privacy: ')}" for s in private) +
                  ")")
    return ("(ε, δ)-differential privacy: anything computed from a site's updates (the model included) is almost "
            f"equally likely whether or not {single} was in its data; the probabilities differ by at most a factor "
            "e^ε, except with probability δ. Smaller ε is more private. Each sentence gives the ε of the updates "
            "the site sent in this job and, apart from it, the site's cumulative ε over everything it has ever "
            "released, against its lifetime budget.")


def privacy_header(sites: list[dict[str, Any]], config: dict[str, Any]) -> str:
    """The header's privacy line: what the sites applied, per site, never only what the job asked."""
    private = private_sites(sites)
    asked = short(config.get("epsilon"))
    if not private:
        return f"DP-SGD (Opacus); the job asked each site for ε = {asked}; no site reported its accounting"
    clips = sorted({short(s.get("max_grad_norm")) for s in private})
    per_site = "; ".join(
        f"{s['site_id']} {short(s.get('epsilon_granted'))} / {eps(s.get('epsilon_this_job'))} / "
        f"{eps(s.get('epsilon'))} of {short(s['epsilon_budget'])}" for s in private)
    return (f"{unit_text(private)}. DP-SGD (Opacus), clipping C = {', '.join(clips)}; the job asked each site for "
            f"ε = {asked}; per site, ε granted to this job / ε of this job's updates / cumulative ε of its lifetime "
            f"budget: {per_site}")


def remaining_text(epsilon: float, budget: float) -> str:
    """What remains of a budget, never rounded up (a remainder under 0.001 is not printed as 0.001)."""
    left = max(float(budget) - float(epsilon), 0.0)
    if left <= 0:
        return "nothing remains"
    floored = math.floor(left * 1000) / 1000
    return "less than 0.001 remains" if floored <= 0 else f"{floored:.3f} remains"


def exhausted(site: dict[str, Any]) -> bool:
    """True when so little of the lifetime budget is left that the site grants no new job (grant_job)."""
    epsilon, budget = site.get("epsilon"), site.get("epsilon_budget")
    return is_number(epsilon) and is_number(budget) and budget - epsilon <= MIN_REMAINING_SHARE * budget


def period_text(site: dict[str, Any]) -> str:
    """'; its allowance: ...' when the site bounds the ε of its trailing period ('' when it reported none)."""
    allowance, days, used = site.get("epsilon_per_period"), site.get("period_days"), site.get("epsilon_in_period")
    if not (is_number(allowance) and allowance > 0):
        return ""
    return (f"; its allowance: ε ≤ {short(allowance)} for the rounds of any {short(days)} days, of every run "
            f"(ε = {eps(used)} of it in its trailing period at its last reply)")


def trained_rounds(site: dict[str, Any]) -> list[int]:
    """Rounds whose update the server accepted (a rejected update was trained and charged, but not used)."""
    return [r for r in site.get("rounds_participated", []) if r not in site.get("rejected_rounds", [])]


def _job_part(site: dict[str, Any], unit: UnitWords | None) -> str:
    """What the updates of this job are: their own (ε, δ), or that there were none."""
    sent = site.get("rounds_participated", [])
    if not sent:
        return "it sent no update in this job"
    rounds = f"round{'s' if len(sent) != 1 else ''} {round_list(sent)}"
    job = site.get("epsilon_this_job")
    protects = unit.protects if unit else "each record of its unit of privacy, which it did not report"
    if not is_number(job):
        return f"it sent updates in {rounds} (their ε is not known: the replies lack σ, q or steps)"
    return (f"the updates it sent in this job ({rounds}) are together ({eps(job)}, {short(site.get('delta'))})-"
            f"differentially private for {protects}")


def _cumulative_part(site: dict[str, Any]) -> str:
    """The site's lifetime spend, how it relates to this job's ε, and what remains."""
    epsilon, budget, job = float(site["epsilon"]), float(site["epsilon_budget"]), site.get("epsilon_this_job")
    fraction = budget_fraction(epsilon, budget) or 0.0
    text = (f"its cumulative ε over everything it has ever released is {eps(epsilon)} of its lifetime budget "
            f"{short(budget)}")
    if is_number(job) and job > 0 and epsilon <= job + SAME_EPSILON * max(1.0, job) and not adds_up_wrong(site):
        text += " (this job is all it has released)"
    elif is_number(job) and job > 0 and not adds_up_wrong(site):
        text += " (the rest comes from its other jobs, or rounds this run did not record)"
    if epsilon > budget * (1 + 1e-9):
        return text + f" ({spent_percent(fraction)} spent)"
    text += f": {remaining_text(epsilon, budget)} ({spent_percent(fraction)} spent)"
    if exhausted(site):
        text += (f"; its lifetime budget is used up (under {MIN_REMAINING_SHARE:.0%} left), so it grants no new "
                 "job until its operator raises it")
    return text


def adds_up_wrong(site: dict[str, Any]) -> bool:
    """True when the cumulative ε is below the ε of this job's own rounds: impossible for one accountant."""
    epsilon, job = site.get("epsilon"), site.get("epsilon_this_job")
    return is_number(epsilon) and is_number(job) and epsilon < job - SAME_EPSILON * max(1.0, job)


def _warnings(site: dict[str, Any]) -> str:
    """What must not be read past: a spend over budget, numbers that do not add up."""
    out = ""
    if float(site["epsilon"]) > float(site["epsilon_budget"]) * (1 + 1e-9):
        out += " WARNING: its cumulative ε exceeds its lifetime budget."
    if adds_up_wrong(site):
        out += (" WARNING: its cumulative ε is less than the ε of this job's own updates, so the site's accounting "
                "does not add up; do not rely on its numbers.")
    return out


def _grant_part(site: dict[str, Any]) -> str:
    """What the job asked, what the site granted, and what the grant bounds."""
    asked, granted, job = site.get("epsilon_asked"), site.get("epsilon_granted"), site.get("epsilon_this_job")
    if not (is_number(granted) and granted > 0):
        return ""
    text = (f"; this job asked for ε = {short(asked)} and was granted ε = {short(granted)}, the most the site's "
            "cumulative ε may rise in this job")
    if is_number(job) and job > granted + SAME_EPSILON * max(1.0, granted):
        text += " (the ε of a job's updates alone can exceed the rise they cause in a site that had spent before)"
    return text


def _refusal_part(site: dict[str, Any]) -> str:
    """The rounds the site refused, with the fixed sentence of each refusal code."""
    by_code: dict[str, list[int]] = {}
    for entry in site.get("refusals", []):
        by_code.setdefault(entry["code"], []).append(entry["round"])
    return "".join(f"; it refused round{'s' if len(r) != 1 else ''} {round_list(r)}: {REFUSALS.get(code, code)}"
                   for code, r in by_code.items())


def privacy_statement(site: dict[str, Any]) -> str:
    """One plain paragraph for a hospital's data-protection officer: what this site applied and spent.

    The unit it reported; the (ε, δ) of the updates it sent in this job; apart from it, its
    cumulative ε against its lifetime budget and what remains; the grant; its allowance per period;
    the rounds it refused and why; where its noise came from; what else it sent outside DP. A site
    that trained without DP is told so, and a site that reported no accounting gets no number.
    """
    name = site.get("site_id", "?")
    if site.get("dp") is False:
        return (f"Site {name} trained WITHOUT differential privacy (dp = false): the updates it sent carry "
                f"no formal privacy guarantee.")
    if not is_number(site.get("epsilon")) or not is_number(site.get("epsilon_budget")):
        return (f"Site {name} reported no privacy accounting (it never completed a round in this run), "
                f"so no privacy loss is recorded for it here.")
    unit = unit_of(site)
    randomness = RANDOMNESS_TEXT.get(site.get("randomness") or "", "noise source not reported")
    extra = ("it also sent opt-in diagnostics (training loss, local validation accuracy, class counts, timings, "
             "skipped files) that are NOT differentially private" if site.get("shares_diagnostics") else
             "besides its updates, only the accounting and configured values listed under What each site sent")
    return (f"Site {name} [{unit_header(site)}]: {_job_part(site, UNITS[unit] if unit else None)}; "
            f"{_cumulative_part(site)}{_grant_part(site)}{period_text(site)}{_refusal_part(site)}; "
            f"noise: {randomness}; {extra}.{_warnings(site)}")
