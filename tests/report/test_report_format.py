"""How the report writes numbers and privacy sentences, against hand-written expectations."""

from __future__ import annotations

import math

import pytest

from server.report.format import (
    budget_fraction,
    bytes_text,
    duration,
    eps,
    num,
    pct,
    round_list,
    short,
    spent_percent,
    timestamp,
)
from server.report.privacy_text import privacy_statement, remaining_text


def test_percentages_and_missing_values() -> None:
    assert pct(0.8123) == "81.2%"
    assert pct(1) == "100.0%"
    assert pct(0.5, 0) == "50%"
    assert pct(None) == pct(float("nan")) == pct(True) == "n/a"  # null, NaN and bools are not numbers
    assert num(1.0587632) == "1.059" and num(None) == "n/a"


def test_epsilon_is_never_rounded_up_to_the_budget() -> None:
    assert eps(7.9962) == "7.996"  # two decimals would print 8.00: the budget itself
    assert short(8.0) == "8" and short(1e-5) == "1e-05" and short(0.0001) == "0.0001"
    assert spent_percent(7.9962 / 8) == "99.9%"  # 99.95% rounded down, not up to 100.0%
    assert spent_percent(1.0) == "100.0%"
    assert spent_percent(8.4 / 8) == "105.0%"
    assert budget_fraction(2.0, 8.0) == 0.25
    assert budget_fraction(2.0, 0.0) is None and budget_fraction(None, 8.0) is None


def test_bytes_in_binary_units() -> None:
    assert bytes_text(0) == "0 B"
    assert bytes_text(1023) == "1023 B"
    assert bytes_text(51984) == "50.8 KiB"  # 51984 / 1024 = 50.77
    assert bytes_text(43 * 1024 * 1024) == "43.0 MiB"
    assert bytes_text(3 * 1024**4) == "3072.0 GiB"
    assert bytes_text(None) == "n/a"


def test_times_and_durations() -> None:
    assert timestamp(0) == "1970-01-01 00:00:00 UTC"
    assert timestamp(86400 + 3661) == "1970-01-02 01:01:01 UTC"
    assert timestamp(None) == "n/a"
    assert duration(7.4) == "7 s"
    assert duration(77.1) == "1 min 17 s"
    assert duration(3725) == "1 h 02 min"
    assert duration(-1) == duration(None) == "n/a"


def test_round_lists_are_compact() -> None:
    assert round_list([1, 2, 3, 5]) == "1-3, 5"
    assert round_list([3, 1, 2]) == "1-3"
    assert round_list([4]) == "4"
    assert round_list([1, 3, 5]) == "1, 3, 5"
    assert round_list([]) == "none"


def _site(**overrides: object) -> dict:
    site = {"site_id": "site-0", "epsilon": 7.9962, "epsilon_budget": 8.0, "delta": 1e-5, "dp": True,
            "rounds_participated": [1, 2, 3, 4], "rejected_rounds": [3], "privacy_unit": "patch",
            "epsilon_this_job": 6.1}
    site.update(overrides)
    return site


def test_privacy_sentence_separates_this_job_from_the_cumulative_spend() -> None:
    text = privacy_statement(_site())
    assert text.startswith("Site site-0 [unit of privacy: one patch — a patient with k patches is protected only at "
                           "group level]: the updates it sent in this job (rounds 1-4) are together (6.100, 1e-05)-"
                           "differentially private for each one of its image patches")
    assert ("its cumulative ε over everything it has ever released is 7.996 of its lifetime budget 8 (the rest comes "
            "from its other jobs, or rounds this run did not record): 0.003 remains (99.9% spent)") in text
    assert "each model update it sent is (7.996" not in text  # the cumulative total is never called one update's ε


def test_privacy_sentence_states_the_protection_in_force() -> None:
    secure = privacy_statement(_site(randomness="secure", epsilon_granted=2.0, epsilon_asked=8.0))
    assert "unit of privacy: one patch" in secure and "protected only at group level" in secure
    assert "this job asked for ε = 8 and was granted ε = 2, the most the site's cumulative ε may rise" in secure
    assert "(the ε of a job's updates alone can exceed the rise they cause" in secure  # 6.1 > 2: said why
    assert "operating system CSPRNG" in secure and "NOT differentially private" not in secure
    seeded = privacy_statement(_site(randomness="site-seed", shares_diagnostics=True))
    assert "reproducible from a seed the site holds" in seeded and "NOT private there" in seeded
    assert "opt-in diagnostics" in seeded and "NOT differentially private" in seeded


def test_privacy_sentence_for_one_round_and_for_overspending() -> None:
    assert "in this job (round 2) are together" in privacy_statement(_site(rounds_participated=[2],
                                                                           rejected_rounds=[]))
    over = privacy_statement(_site(epsilon=8.4))
    assert "(105.0% spent)" in over and over.endswith("WARNING: its cumulative ε exceeds its lifetime budget.")


def test_what_remains_is_never_rounded_up() -> None:
    assert remaining_text(7.9996, 8.0) == "less than 0.001 remains"  # beside '99.9% spent', not '0.000'
    assert remaining_text(7.9962, 8.0) == "0.003 remains" and remaining_text(8.0, 8.0) == "nothing remains"
    assert remaining_text(9.0, 8.0) == "nothing remains"


def test_privacy_sentence_never_invents_a_number() -> None:
    no_dp = privacy_statement(_site(dp=False))
    assert "WITHOUT differential privacy" in no_dp and "ε" not in no_dp
    unknown = privacy_statement(_site(epsilon=None, epsilon_budget=None))
    assert "no privacy loss is recorded" in unknown and "ε" not in unknown


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_values_print_as_missing(value: float) -> None:
    assert pct(value) == eps(value) == short(value) == bytes_text(value) == "n/a"
