"""The data-protection officer's paragraph and each site's sentence say what the sites reported.

Before, the paragraph was fixed prose: "The guarantee protects single patches" at sites that trained
at the patient level, and "each site grants each job at most its own per-job cap", silent on the
coordinator that starts many runs. Now every sentence is generated from the sites' replies.
"""

from __future__ import annotations

from server.report.html import build_view
from server.report.officer import CAP, officer_text
from server.report.privacy_text import UNITS, privacy_statement


def _site(site_id: str, unit: str | None = "patient", per_period: float = 0.0, **extra: object) -> dict:
    return {"site_id": site_id, "dp": True, "epsilon": 1.2, "epsilon_budget": 8.0, "delta": 1e-5,
            "privacy_unit": unit, "epsilon_per_period": per_period, "period_days": 30.0 if per_period else 0.0,
            "epsilon_in_period": 0.7 if per_period else 0.0, "rounds_participated": [1], "rejected_rounds": [],
            **extra}


def test_a_patient_level_federation_is_never_told_it_protects_single_patches() -> None:
    text = officer_text([_site("site-0"), _site("site-1")])
    assert "single patch" not in text
    assert f"At site-0 and site-1 the guarantee {UNITS['patient'].guarantee}." in text
    assert "any single patient (with all of that patient's patches)" in text


def test_each_sites_unit_is_named_where_they_differ() -> None:
    text = officer_text([_site("site-0"), _site("site-1", unit="patch"), _site("site-2", unit=None)])
    assert f"At site-0 the guarantee {UNITS['patient'].guarantee}." in text
    assert f"At site-1 the guarantee {UNITS['patch'].guarantee}." in text
    assert "site-2 reported no unit of privacy." in text


def test_the_cap_is_said_not_to_bound_many_runs_and_the_allowance_is_per_site() -> None:
    text = officer_text([_site("site-0", per_period=2.0), _site("site-1"), _site("site-2")])
    assert CAP in text
    assert "the per-job cap does not bound a coordinator that starts many runs" in text
    assert "The lifetime budget holds whatever the coordinator does" in text
    assert "site-0 also bounds what the rounds of any trailing period may compose to, over every run " \
           "(site-0: ε ≤ 2 per 30 days)" in text
    assert "site-1 and site-2 set no allowance per period: new runs can spend their lifetime budget as fast as " \
           "they are started" in text
    nobody = officer_text([_site("site-0")])
    assert "site-0 sets no allowance per period" in nobody and "also bound" not in nobody


def test_a_run_without_dp_gets_no_privacy_sentences() -> None:
    text = officer_text([{**_site("site-0"), "dp": False}])
    assert "no formal privacy guarantee" in text and "per-job cap" not in text


def test_a_sites_sentence_states_its_allowance_and_its_use() -> None:
    with_allowance = privacy_statement(_site("site-0", per_period=2.0))
    assert "its allowance: ε ≤ 2 for the rounds of any 30 days, of every run (ε = 0.700 of it in its trailing " \
           "period at its last reply)" in with_allowance
    assert "allowance" not in privacy_statement(_site("site-0"))


def test_the_page_prints_the_generated_paragraph() -> None:
    sites = [_site("site-0"), _site("site-1", unit="patch")]
    report = {"run": {"run_id": 3, "config": {"dp": True, "epsilon": 8.0}}, "sites": sites, "rounds": []}
    assert build_view(report)["officer_text"] == officer_text(sites)
