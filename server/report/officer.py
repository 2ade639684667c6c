"""The report's paragraph for a hospital's data-protection officer, generated from what the sites reported.

Every sentence about the unit of privacy, the per-job cap and the allowance per period is built
from the sites' own replies (their unit, their allowance), never fixed prose, with the unit's
wording from `server/report/privacy_text.UNITS`, which the header and each site's sentence use
too: a site that trained at the patient level is not told that it protects single patches, and a
site without an allowance is not said to have one. What the cap and the allowance do NOT stop is said as plainly as what
they do (docs/PRIVACY.md, "The per-job cap and the allowance per period").
"""

from __future__ import annotations

from typing import Any

from server.report.format import short
from server.report.privacy_text import NOISE_PER_CLIP, UNITS, noise_text, period_text, private_sites, unit_of

CAP = ("Each site charges a run to one job only: the run's own, or a job its ledger already holds that the run "
       "resumes (a job id the coordinator names is not trusted otherwise); it grants a new job at most its own "
       "per-job cap and refuses any round past that grant or past its lifetime budget. The lifetime budget holds "
       "whatever the coordinator does; the per-job cap does not bound a coordinator that starts many runs, since "
       "each new run opens a grant of its own.")
RISK = ("ε measures the remaining risk (smaller is safer; it adds up over rounds, runs and jobs), δ is the small "
        "probability the guarantee may fail. Each site's sentence gives two ε: that of the updates it sent in this "
        "job, and its cumulative ε over every job it has run, which is what its lifetime budget bounds.")


def names(sites: list[dict[str, Any]]) -> str:
    """'site-0', 'site-0 and site-1', 'site-0, site-1 and site-2'."""
    ids = [str(s.get("site_id", "?")) for s in sites]
    return ids[0] if len(ids) == 1 else ", ".join(ids[:-1]) + " and " + ids[-1]


def officer_text(sites: list[dict[str, Any]]) -> str:
    """The paragraph "For the data-protection officer", from the sites' report summaries."""
    private = private_sites(sites)
    if not private:
        return ("No image left any hospital. No site reported training under differential privacy in this run: "
                "the updates it received carry no formal privacy guarantee.")
    units = sorted({unit_of(s) for s in private} - {None})
    about = " or ".join(UNITS[u].any_single for u in units) or "any single training record"
    sentences = [
        "No image left any hospital.",
        f"Each site sent its DP-SGD model update (clipped and noised so that it reveals almost nothing about {about}) "
        "together with the values listed under \"What each site sent\", each with how it is protected; values "
        "marked opt-in are NOT differentially private and were sent only by sites whose operator chose to.",
        RISK, CAP, *allowance_sentences(private), *unit_sentences(private), *noise_sentences(private),
    ]
    return " ".join(sentences)


def allowance_sentences(sites: list[dict[str, Any]]) -> list[str]:
    """Which sites bound the ε of any trailing period (and by how much), and which do not."""
    with_allowance = [s for s in sites if period_text(s)]
    without = [s for s in sites if s not in with_allowance]
    out = []
    if with_allowance:
        each = "; ".join(f"{s['site_id']}: ε ≤ {short(s['epsilon_per_period'])} per {short(s.get('period_days'))} days"
                         for s in with_allowance)
        out.append(f"{names(with_allowance)} also bound{'s' if len(with_allowance) == 1 else ''} what the rounds of any "
                   f"trailing period may compose to, over every run ({each}), so that new runs cannot spend "
                   f"{'its' if len(with_allowance) == 1 else 'their'} lifetime budget faster than that.")
    if without:
        out.append(f"{names(without)} set{'s' if len(without) == 1 else ''} no allowance per period: new runs can "
                   f"spend {'its' if len(without) == 1 else 'their'} lifetime budget as fast as they are started, "
                   "one per-job cap each.")
    return out


def unit_sentences(sites: list[dict[str, Any]]) -> list[str]:
    """What the guarantee protects at each site, by the unit of privacy it reported."""
    out = []
    for unit in ("patient", "patch"):
        at = [s for s in sites if unit_of(s) == unit]
        if at:
            out.append(f"At {names(at)} the guarantee {UNITS[unit].guarantee}.")
    unknown = [s for s in sites if unit_of(s) is None]
    if unknown:
        out.append(f"{names(unknown)} reported no unit of privacy.")
    return out


def noise_sentences(sites: list[dict[str, Any]]) -> list[str]:
    """What each site's ε bought: its σ/(q·N), next to each other so that sites can be compared."""
    listed = [text for text in map(noise_text, sites) if text]
    if not listed:
        return []
    return [f"What each site's ε buys, as the {NOISE_PER_CLIP}: {'; '.join(listed)}."]
