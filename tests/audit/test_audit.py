"""Empirical privacy audit: the one-run ε lower bound, membership-inference metrics, and a tiny
real federation with canaries (fedpath's own site training, non-private and DP)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from common.audit.bound import audit_scores, epsilon_lower_bound, guess, p_value
from common.audit.mia import auc, mia_metrics, tpr_at_fpr
from tests.helpers.audit_runs import AUDIT_DP_SEED


# -- the bound (Steinke, Nasr & Jagielski 2023) -------------------------------------------------
def _reference_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """The theorem's bound, written out term by term with exact binomial coefficients."""
    q = 1 / (1 + math.exp(-eps))

    def tail(k: int) -> float:  # P[Binomial(r, q) >= k]
        return sum(math.comb(r, j) * q**j * (1 - q) ** (r - j) for j in range(max(k, 0), r + 1))

    alpha = max(((tail(v - i) - tail(v)) / i for i in range(1, v + 1)), default=0.0)
    return min(1.0, tail(v) + 2 * m * delta * alpha)


@pytest.mark.parametrize("m,r,v,eps,delta", [
    (100, 20, 15, 0.5, 0.0), (100, 20, 20, 2.0, 1e-3), (1000, 50, 40, 1.0, 1e-5), (60, 60, 45, 0.0, 1e-2),
    (500, 30, 30, 6.0, 1e-4), (10, 10, 1, 3.0, 0.01),
])
def test_p_value_is_the_theorem_term_by_term(m: int, r: int, v: int, eps: float, delta: float) -> None:
    assert p_value(m, r, v, eps, delta) == pytest.approx(_reference_p_value(m, r, v, eps, delta), rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("r", [10, 100, 1000, 5000])
def test_all_guesses_right_at_delta_0_has_the_closed_form(r: int) -> None:
    # P[Binomial(r, q) = r] = q^r = 0.05  =>  q = 0.05^(1/r),  ε = log(q / (1 - q))
    q = Fraction(1) * 0.05 ** (1 / r)
    expected = math.log(q / (1 - q))
    assert epsilon_lower_bound(r, r, r, 0.0, 0.95) == pytest.approx(expected, abs=1e-5)


def test_known_values_and_limits() -> None:
    # 100 / 1000 perfect guesses at 95%, δ = 0: ε ≥ 3.49 / 5.81
    assert epsilon_lower_bound(100, 100, 100, 0.0) == pytest.approx(3.4930, abs=1e-3)
    assert epsilon_lower_bound(1000, 1000, 1000, 0.0) == pytest.approx(5.8091, abs=1e-3)
    # chance-level guessing proves nothing
    assert epsilon_lower_bound(1000, 1000, 500, 1e-5) == 0.0
    assert epsilon_lower_bound(1000, 1000, 520, 1e-5) == 0.0
    # more confidence, more δ, or fewer right: never a larger bound
    assert epsilon_lower_bound(1000, 100, 90, 1e-5, 0.99) < epsilon_lower_bound(1000, 100, 90, 1e-5, 0.95)
    assert epsilon_lower_bound(1000, 100, 90, 1e-3) < epsilon_lower_bound(1000, 100, 90, 1e-5) < \
        epsilon_lower_bound(1000, 100, 90, 0.0)
    assert epsilon_lower_bound(1000, 100, 80, 1e-5) < epsilon_lower_bound(1000, 100, 90, 1e-5)
    # δ comparable to 1/m drowns the bound: the δ term is 2·m·δ times a probability
    assert epsilon_lower_bound(1000, 1000, 1000, 1e-3) < epsilon_lower_bound(1000, 1000, 1000, 0.0) - 2
    # many perfect guesses give a large bound
    assert epsilon_lower_bound(20000, 20000, 20000, 1e-6) > 8.0
    with pytest.raises(ValueError, match="need 0 <= correct guesses v <= guesses r <= canaries m"):
        epsilon_lower_bound(10, 20, 5, 0.0)


def test_bound_is_valid_for_randomized_response() -> None:
    """ε-DP randomized response per canary: the 95% bound exceeds the true ε in <= 5% of runs."""
    rng = np.random.default_rng(0)
    true_eps, m, runs = 1.0, 200, 400
    q = math.exp(true_eps) / (1 + math.exp(true_eps))
    correct = rng.binomial(m, q, size=runs)
    bounds = {v: epsilon_lower_bound(m, m, int(v), 0.0) for v in np.unique(correct)}
    exceed = np.mean([bounds[v] > true_eps for v in correct])
    assert exceed <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / runs)
    assert np.median([bounds[v] for v in correct]) > 0.3  # and it is not vacuous


def test_guesses_and_the_bonferroni_grid() -> None:
    np.testing.assert_array_equal(guess(np.array([0.1, 0.9, 0.5, 0.3]), 2), [-1, 1, 0, 0])
    np.testing.assert_array_equal(guess(np.array([0.1, 0.9, 0.5, 0.3]), 3), [-1, 1, 1, 0])
    included = np.arange(400) % 2 == 0
    perfect = audit_scores(included.astype(float) + np.linspace(0, 0.1, 400), included, delta=1e-5)
    assert perfect.correct == perfect.guesses and perfect.epsilon_lower_bound > 3
    # each grid point is tested at 0.05 / 5: below the single-test bound for the same (r, v)
    assert perfect.epsilon_lower_bound < epsilon_lower_bound(400, perfect.guesses, perfect.correct, 1e-5, 0.95)
    noise = audit_scores(np.random.default_rng(1).normal(size=400), included, delta=1e-5)
    assert noise.epsilon_lower_bound < 0.5 and len(noise.grid) == 5


# -- membership-inference metrics ---------------------------------------------------------------
def test_mia_metrics_by_hand() -> None:
    assert auc([3, 2], [1, 0]) == 1.0 and auc([1, 2], [1, 0]) == 0.875
    assert tpr_at_fpr([3, 2, 1], [0, 0.5, 2.5], 0.34) == 1.0  # one false positive of three allowed
    assert tpr_at_fpr([3, 2, 1], [0, 0.5, 2.5], 0.01) == pytest.approx(1 / 3)  # none allowed
    assert tpr_at_fpr([1, 1], [1, 0], 0.0) == 0.0  # a tie with a non-member cannot be flagged alone


def test_mia_bootstrap_covers_the_truth_and_groups_widen_it() -> None:
    rng = np.random.default_rng(0)
    members, nonmembers = rng.normal(0.5, 1, 600), rng.normal(0, 1, 600)  # true AUC = Φ(0.5/√2) ≈ 0.638
    plain = mia_metrics(members, nonmembers, samples=400, seed=0)
    assert plain["auc_ci95"][0] < 0.638 < plain["auc_ci95"][1]
    assert plain["tpr_at_fpr"]["0.01"]["false_positives_allowed"] == 6
    # records sharing a group effect are not independent: the group bootstrap is wider
    g = np.repeat(np.arange(30), 20)
    mem, non = members + rng.normal(0, 1, 30)[g], nonmembers + rng.normal(0, 1, 30)[g]
    grouped = mia_metrics(mem, non, g, g, samples=400, seed=0)
    naive = mia_metrics(mem, non, samples=400, seed=0)
    width = lambda r: r["auc_ci95"][1] - r["auc_ci95"][0]  # noqa: E731
    assert grouped["bootstrap"] == "groups" and width(grouped) > width(naive)


# -- the odds that an audit outcome flips (simulations.harness.audit_power) -------------------------
def _simulated_scores(model: object, runs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`runs` draws of the score model itself: coin flips, Poisson counts, noise, and D uniform in [−d, d]."""
    shape = (runs, model.canaries)
    included = rng.random(shape) < 0.5
    counts = rng.binomial(model.steps, model.rate, shape)
    scores = included * model.push * counts + model.noise * rng.normal(size=shape) \
        + rng.uniform(-model.data_push, model.data_push, shape)
    return scores, included


def test_the_order_statistics_of_the_score_model_match_simulation() -> None:
    """P[≥ a included among the top 20] and P[≥ a excluded among the bottom 20] of 200 canaries: the quadrature
    against 40,000 simulated audits (4 binomial standard errors + 1e-3 apart at most)."""
    from simulations.harness.audit_power import CanaryScores, _order_statistic_sides

    model = CanaryScores(200, 60, 0.5, push=1.0, noise=15.0, data_push=0.0)
    scores, included = _simulated_scores(model, 40_000, np.random.default_rng(1))
    order = np.argsort(-scores, axis=1)
    top = np.take_along_axis(included, order[:, :20], axis=1).sum(axis=1)
    bottom = (~np.take_along_axis(included, order[:, -20:], axis=1)).sum(axis=1)
    top_at_least, top_at_most = _order_statistic_sides(model, 20, 0.0, 0.0, top=True)
    bottom_at_least, _ = _order_statistic_sides(model, 20, 0.0, 0.0, top=False)
    for a in range(12, 21):
        for computed, seen in ((top_at_least[a], np.mean(top >= a)), (top_at_most[a], np.mean(top <= a - 1)),
                               (bottom_at_least[a], np.mean(bottom >= a))):
            assert abs(computed - seen) <= 4 * math.sqrt(max(seen * (1 - seen), 1e-4) / 40_000) + 1e-3


@pytest.mark.parametrize("noise,claim", [(15.5, 2.0), (0.0, 2.5)])
def test_the_failure_odds_bound_what_simulated_audits_show(noise: float, claim: float) -> None:
    """Both odds are upper bounds: never below the rate 400 simulated audits show (less 3 standard errors)."""
    from simulations.harness.audit_power import CanaryScores, odds_bound_exceeds, odds_bound_within

    model = CanaryScores(200, 60 if noise else 10, 0.5 if noise else 0.3, push=1.0, noise=noise, data_push=0.3)
    scores, included = _simulated_scores(model, 400, np.random.default_rng(2))
    bounds = np.array([audit_scores(s, i, 1e-5).epsilon_lower_bound for s, i in zip(scores, included)])
    above = np.mean(bounds > claim)
    slack = lambda p: 3 * math.sqrt(p * (1 - p) / 400)  # noqa: E731
    assert odds_bound_exceeds(model, claim, 1e-5) >= above - slack(above)
    assert odds_bound_within(model, claim, 1e-5) >= (1 - above) - slack(above)
    assert 0.02 < above < 0.98  # a case where neither side is trivial


# -- a tiny real federation with canaries -------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_audit() -> list[dict]:
    """2 synthetic sites, 1 round of 5 local epochs (batch 8) of a linear head on 16 px scratch features,
    40 mislabelled canaries, non-private and DP at ε = 2, through fedpath's site training function: the
    image-canary path end to end. Data, canaries, coin flips and (dp-seed) the DP noise are seeded. 40 image
    canaries cannot show power or a broken claim (at most ε ≈ 2.1 with every guess right): the gradient
    canaries below do that."""
    from simulations.harness import audit

    plan = audit.AuditPlan(sites=2, rounds=1, local_epochs=5, per_group=1, site_records=12, canaries=40,
                           canary_kind="mislabelled", mia_bootstrap=100)
    config = audit.audit_config("synthetic", 16, "none", 42, policy="head", lr=0.5, batch_size=8,
                                public_fraction=0.0, run_config="synthetic-images=240")
    return audit.settings_rows(config, plan, seed=7, epsilons=(2.0,), dp_seed=AUDIT_DP_SEED)


@pytest.mark.slow  # a tiny federation trains in the fixture
def test_tiny_run_audits_the_site_it_trained(tiny_audit: list[dict]) -> None:
    from simulations.harness.audit import SCORES

    nonprivate, dp = tiny_audit
    assert (nonprivate["dp"], dp["dp"], dp["claimed_epsilon"]) == (False, True, 2.0)
    for row in tiny_audit:
        canary = row["canary"]
        assert canary["canaries"] == 40 and 0 < canary["included"] < 40
        assert row["site_train_examples"] == row["site_records"] + canary["included"]
        assert 0 <= canary["correct"] <= canary["guesses"] <= 40 and len(canary["grid"]) == 5
        assert set(row["mia"]) == set(SCORES) and set(row["canary_auc_by_score"]) == set(SCORES)
        assert all(0 <= m["auc"] <= 1 and m["bootstrap"] == "groups" for m in row["mia"].values())
    assert dp["noise_multiplier"] > 0 and nonprivate["noise_multiplier"] is None
    assert dp["privacy_unit"] == "patient"  # as a site resolves privacy-unit=auto: the synthetic data names slides
    assert dp["site_epsilon_spent"] <= 2.0 * (1 + 1e-6)


# -- how the audit is published ---------------------------------------------------------------
def _row(label: str, dp: bool, eps: float | None, bound: float, auc_update: float, seed: int = 42,
         fault: str | None = None) -> dict:
    mia = {name: {"auc": auc_update if name == "update" else 0.5, "auc_ci95": [auc_update - 0.05, auc_update + 0.05],
                  "tpr_at_fpr": {"0.01": {"tpr": 0.02, "ci95": [0.0, 0.05]}, "0.001": {"tpr": 0.0, "ci95": [0.0, 0.01]}}}
           for name in ("update", "final-global", "last-update")}
    return {"label": label, "dp": dp, "claimed_epsilon": eps, "site_epsilon_spent": eps and eps * 0.999, "seed": seed,
            "canary": {"epsilon_lower_bound": bound, "correct": 9, "guesses": 10, "canaries": 200, "included": 100},
            "canary_auc": 0.6, "mia": mia, "delta": 1e-5, "fault": fault,
            "test_accuracy": 0.85, "audit_cost_ratio": 1.3, "site_records": 270}


def test_audit_table_and_reading_state_the_targets() -> None:
    """200 canaries at δ = 1e-5 certify at most ε ≈ 3.7 (`ceiling`): the table and reading say that a claim of 8
    is inconclusive and one of 1 is not, and that rows broken on purpose were (or were not) caught."""
    from common.audit.bound import ceiling
    from simulations.harness.audit_experiment import targets
    from simulations.harness.publish.audit import audit_setup
    from simulations.harness.publish.experiments import reading
    from simulations.harness.results import markdown_table

    rows = [_row("non-private", False, None, 1.4, 0.66), _row("DP epsilon=8", True, 8.0, 0.3, 0.52),
            _row("DP epsilon=1", True, 1.0, 0.0, 0.50),
            _row("DP epsilon=1, noise off (broken)", True, 1.0, 3.1, 0.5, fault="noise-off")]
    result = {"experiment": "audit", "quick": True, "rows": rows, "targets": targets(rows), "image_size": 32,
              "policy": "norm-head", "plan": {"sites": 2, "per_group": 2, "rounds": 2, "local_epochs": 8,
                                              "delta": 1e-5, "canaries": 200, "canary_kind": "gradient",
                                              "canary_norm": 100.0}}
    top = ceiling(np.arange(200) < 100, 1e-5)
    assert 1.0 < top < 8.0 and result["targets"]["conclusive_claims"] == [1.0]
    assert result["targets"]["inconclusive_claims"] == [8.0] and result["targets"]["broken_runs_caught"] is True
    table = markdown_table(result)
    assert "**1.40** (9/10)" in table and "8 (7.99)" in table and "∞ (non-private)" in table
    assert f"| {top:.2f} | inconclusive |" in table and "| **inconsistent** |" in table and "| consistent |" in table
    assert "NOT met" not in table
    text = reading(result)
    assert "stays below the claimed ε" in text and "has the power" in text and "At ε = 8 it means nothing" in text
    assert "finds each inconsistent" in text
    assert "200 canaries" in audit_setup(result) and "*before* clipping" in audit_setup(result)
    broken = [_row("DP epsilon=1", True, 1.0, 1.7, 0.7)]
    assert targets(broken)["bound_below_claimed_epsilon"] is False
    assert "NOT met" in markdown_table({**result, "rows": broken, "targets": targets(broken)})
    assert "broken" in reading({**result, "rows": broken, "targets": targets(broken)})
    missed = [*rows[:3], _row("DP epsilon=1, clipping off (broken)", True, 1.0, 0.4, 0.5, fault="clipping-off")]
    assert targets(missed)["broken_runs_caught"] is False
    assert "does not catch every one" in reading({**result, "rows": missed, "targets": targets(missed)})
