"""Every privacy sentence of the report agrees with what the sites replied, in every combination.

Issue 24: the header said "patient-level", the officer's text "single patches", the per-site explainer
"any single patch", and a site's sentence called its cumulative total "each model update it sent is
(16, 1e-5)-DP"; "99.9% spent" stood beside "0.000 remains". Here each combination of unit
(patient/patch), one job or several, a budget this job used up, and an allowance per period on or off
is written as replies whose accounting adds up (tests/helpers/accounted_runs.py), composed into a
report, and every sentence is checked against numbers computed here with Opacus directly.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest

from common.wire.reply import REFUSALS
from server.report.compose import compose_report
from server.report.officer import officer_text
from server.report.privacy_text import explainer, privacy_header, unit_text
from tests.helpers.accounted_runs import (
    ALLOWANCE,
    DELTA,
    EARLIER,
    PERIOD_DAYS,
    RATE,
    SIGMA,
    STEPS,
    SiteCase,
    accountant_epsilon,
    site_history,
    write_accounted_run,
)

ROUNDS = 3
COMBINATIONS = list(itertools.product(("patient", "patch"), (False, True), (False, True), (False, True)))
WORDS = {  # what each unit must be called, and what the other unit's wording would be
    "patient": ("each one of its patients, with all the patches of that patient", "image patches"),
    "patch": ("each one of its image patches, not for a patient as a whole", "each one of its patients"),
}


def _three(value: float) -> str:
    return f"{value:.3f}"


@pytest.mark.parametrize(("unit", "earlier", "exhausted", "allowance"), COMBINATIONS)
def test_each_sentence_agrees_with_the_replies(tmp_path: Path, unit: str, earlier: bool, exhausted: bool,
                                               allowance: bool) -> None:
    case = SiteCase("site-0", unit, earlier_jobs=earlier, exhausted=exhausted, allowance=allowance)
    report = compose_report(write_accounted_run(tmp_path, [case], ROUNDS))
    site = report["sites"][0]
    text = site["privacy_statement"]
    job, refused, budget = site_history(case, ROUNDS)
    job_epsilon = accountant_epsilon(job)
    cumulative = accountant_epsilon((EARLIER if earlier else []) + job)
    trained = [r for r in range(1, ROUNDS + 1) if r not in refused]

    # this job: the composition of the rounds it trained in, never the cumulative total
    assert site["epsilon_this_job"] == pytest.approx(job_epsilon, rel=1e-9)
    rounds = f"round {trained[0]}" if len(trained) == 1 else f"rounds {trained[0]}-{trained[-1]}"
    protects, other_unit = WORDS[unit]
    assert (f"the updates it sent in this job ({rounds}) are together ({_three(job_epsilon)}, 1e-05)-differentially "
            f"private for {protects};") in text
    assert other_unit not in text and "each model update it sent is" not in text
    # cumulative: the ledger's total, against the lifetime budget; what remains is never rounded up
    assert site["epsilon"] == pytest.approx(cumulative, rel=1e-9)
    assert f"its cumulative ε over everything it has ever released is {_three(cumulative)} of its lifetime budget " \
           f"{budget:g}" in text
    left = math.floor((budget - cumulative) * 1000) / 1000
    assert (f"{left:.3f} remains" if left > 0 else "less than 0.001 remains") in text
    # one job or many: said from the two numbers
    assert ("(this job is all it has released)" in text) == (not earlier)
    assert ("(the rest comes from its other jobs" in text) == earlier
    # a budget this job used up: said, with the rounds refused and the fixed reason
    assert ("its lifetime budget is used up (under 1% left), so it grants no new job" in text) == exhausted
    assert (f"it refused rounds 2-3: {REFUSALS['budget-exhausted']}" in text) == exhausted
    # the allowance per period: stated where the site set one, and only there
    assert (f"its allowance: ε ≤ {ALLOWANCE:g} for the rounds of any {PERIOD_DAYS:g} days" in text) == allowance
    officer = officer_text(report["sites"])
    assert ("site-0 sets no allowance per period" in officer) == (not allowance)
    # one unit in every place: masthead, header, explainer, officer, statement
    header = privacy_header(report["sites"], report["run"]["config"])
    assert header.startswith(unit_text(report["sites"]) + ".")
    assert f"site-0 {report['sites'][0]['epsilon_granted']:g} / {_three(job_epsilon)} / {_three(cumulative)} of " \
           f"{budget:g}" in header
    single = {"patient": "any single patient (with all of that patient's patches)", "patch": "any single patch"}
    assert f"whether or not {single[unit]} was in its data" in explainer(report["sites"])
    assert single[unit] in officer
    for words in (header, explainer(report["sites"]), officer, text):
        assert ("one patch" in words or "single patch" in words) == (unit == "patch"), words
        assert ("one patient" in words or "single patient" in words) == (unit == "patient"), words


def test_a_federation_of_both_units_names_each_sites_own() -> None:
    sites = [{"site_id": "site-0", "dp": True, "epsilon_budget": 8.0, "privacy_unit": "patient"},
             {"site_id": "site-1", "dp": True, "epsilon_budget": 8.0, "privacy_unit": "patch"},
             {"site_id": "site-2", "dp": True, "epsilon_budget": 8.0, "privacy_unit": None}]
    assert unit_text(sites) == ("site-0: unit of privacy: one patient (every patch of a patient together); "
                                "site-1: unit of privacy: one patch — a patient with k patches is protected only "
                                "at group level; site-2: unit of privacy not reported")
    assert "any single record of the site's unit of privacy (site-0: one patient" in explainer(sites)
    assert "site-2: unit of privacy not reported" in explainer(sites)  # never a default unit
    assert "whether or not any single training record was in its data" in explainer([])  # nobody reported


def test_a_site_whose_numbers_do_not_add_up_is_flagged(tmp_path: Path) -> None:
    report = compose_report(write_accounted_run(tmp_path, [SiteCase("site-0", "patient")], ROUNDS))
    site = {**report["sites"][0], "epsilon": report["sites"][0]["epsilon_this_job"] / 2}
    from server.report.privacy_text import privacy_statement

    assert privacy_statement(site).endswith("WARNING: its cumulative ε is less than the ε of this job's own updates, "
                                            "so the site's accounting does not add up; do not rely on its numbers.")


def test_this_jobs_epsilon_is_recomputed_from_the_replies_alone(tmp_path: Path) -> None:
    report = compose_report(write_accounted_run(tmp_path, [SiteCase("site-0", "patch", earlier_jobs=True)], ROUNDS))
    site = report["sites"][0]
    assert site["job_history"] == [[SIGMA, RATE, STEPS * ROUNDS]]  # what anyone can recompute it from
    assert site["epsilon_this_job"] < site["epsilon"]


def test_a_round_without_its_accounting_leaves_this_jobs_epsilon_unknown(tmp_path: Path) -> None:
    run_dir = write_accounted_run(tmp_path, [SiteCase("site-0", "patient")], ROUNDS)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    lines[2] = lines[2].replace('"sample-rate": 0.05', '"sample-rate": null')
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    site = compose_report(run_dir)["sites"][0]
    assert site["epsilon_this_job"] is None  # a smaller number from two of three rounds would understate it
    assert "it sent updates in rounds 1-3 (their ε is not known: the replies lack σ, q or steps)" in \
        site["privacy_statement"]


def test_the_sites_explainer_and_table_print_both_numbers(tmp_path: Path) -> None:
    from server.report.tables import site_rows

    report = compose_report(write_accounted_run(tmp_path, [SiteCase("site-0", "patch", earlier_jobs=True)], ROUNDS))
    row = site_rows(report)[0]
    assert row["epsilon_job"] == _three(accountant_epsilon([(SIGMA, RATE, STEPS)] * ROUNDS))
    assert row["epsilon"] == _three(accountant_epsilon(EARLIER + [(SIGMA, RATE, STEPS)] * ROUNDS))
    assert DELTA == 1e-5 and row["delta"] == "1e-05"


def test_no_site_trained_for_budgets_never_advises_a_resume(tmp_path: Path) -> None:
    report = compose_report(write_accounted_run(tmp_path, [SiteCase("site-0", "patient", refuses_all=True)], 2))
    assert report["run"]["no_site_trained"]
    advice = report["run"]["next_step"]
    assert advice.startswith("Resuming cannot help: a resumed run is the same job, and the sites refused it for "
                             "their budgets.") and "resume-from='" not in advice
    site = report["sites"][0]
    assert site["epsilon_this_job"] == 0.0 and "it sent no update in this job" in site["privacy_statement"]
    assert "its lifetime budget is used up" in site["privacy_statement"]


def test_the_advice_follows_why_no_site_trained() -> None:
    from server.app import untrained_summary
    from server.report.advice import next_step
    from server.strategy import SiteReply

    failed = next_step(True, [("failed", ""), ("refused", "too-few-examples")], "/runs/run-1")
    assert failed.startswith("Nothing was trained, so nothing is lost: fix what the reasons") and \
        "start a new run" in failed and "Resuming cannot help" not in failed
    both = next_step(True, [("refused", "period-allowance-exceeded"), ("failed", "")], "/runs/run-1")
    assert "trains again once its older rounds leave its trailing period" in both
    assert "Where a site failed or refused for another reason, fix" in both
    assert next_step(False, [], "/runs/run-1").startswith("This report shows what was recorded. Continue the run "
                                                         "with the same configuration and resume-from='/runs/run-1'")
    summary = untrained_summary({1: [SiteReply(1, "site-0", "refused", "no room", refusal="budget-exhausted")]})
    assert summary.splitlines()[-1].startswith("Resuming cannot help")


README_BEGIN = "<!-- report-sentences: generated by tests/report/test_report_sentences.py from two sites' replies; a test keeps it equal -->"
README_END = "<!-- end report-sentences -->"
README_CASES = [SiteCase("site-0", "patient", allowance=True),
                SiteCase("site-1", "patch", earlier_jobs=True, exhausted=True)]


def readme_block(tmp_path: Path) -> str:
    """The README's example: what the report writes for two sites, from their replies."""
    report = compose_report(write_accounted_run(tmp_path, README_CASES, ROUNDS))
    sites = report["sites"]
    lines = [README_BEGIN, "", f"> **Privacy** (the header): {privacy_header(sites, report['run']['config'])}", ">",
             f"> {explainer(sites)}", ">", *[f"> * {s['privacy_statement']}" for s in sites], README_END]
    return "\n".join(lines)


def test_the_readmes_example_sentences_are_what_the_report_writes(tmp_path: Path) -> None:
    expected = readme_block(tmp_path)
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert expected in readme, "README.md's example is stale; replace its block with:\n" + expected


def test_privacy_md_quotes_the_reports_own_unit_line() -> None:
    from server.report.privacy_text import UNITS

    privacy = " ".join((Path(__file__).resolve().parents[2] / "docs" / "PRIVACY.md").read_text().split())
    assert f'("{UNITS["patch"].header}" where it is the patch' in privacy
