"""The accountant seam `epsilon_of`: min(RDP ε, PRV ε upper bound), checked against independent accountants.

* Opacus' stock accountants: the seam is exactly min(RDPAccountant, PRVAccountant) over the same
  history (the memoised RDP and the cached PRV domain change no bit of either bound);
* Google's `dp-accounting` PLD accountant, a separate implementation of the same mechanism's
  privacy loss distribution (add-or-remove neighbours): its *optimistic* PLD is a lower bound on
  the true ε, so a valid upper bound can never be below it (no tolerance needed), and the
  pessimistic PLD is an upper bound the seam should be close to (within 5%).
"""

from __future__ import annotations

import math
import warnings

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from common.privacy import accounting
from common.privacy.accounting import calibrate_noise, epsilon_of, prv_eps_error, rdp_epsilon, with_steps

DELTA = 1e-4
# Heterogeneous site histories: jobs with their own σ and q (patients or patches as records).
HISTORIES = [
    [(1.0, 0.25, 16)],  # one job at a patient-level site of ~47 patients, 4 rounds of 4 steps
    [(1.0, 0.25, 4), (0.8, 0.25, 4), (1.2, 0.2, 8)],
    [(0.7, 0.05, 100), (1.5, 0.1, 50)],
    [(1.0, 0.02, 400)],
    [(2.5, 0.25, 16), (0.9, 1 / 3, 12), (1.1, 0.125, 40)],
    [(6.5, 1.0, 3), (1.76, 0.9, 10)],  # no or almost no subsampling (a site of few records, the audit's rates)
]


def _stock(history, delta: float) -> tuple[float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rdp = RDPAccountant()
        rdp.history = list(history)
        prv = PRVAccountant()
        prv.history = list(history)
        return (float(rdp.get_epsilon(delta=delta)),
                float(prv.get_epsilon(delta, eps_error=prv_eps_error(len(history)), delta_error=delta / 1000)))


@pytest.mark.parametrize("history", HISTORIES)
def test_the_seam_is_the_minimum_of_opacus_stock_rdp_and_prv_upper_bound(history) -> None:
    rdp, prv = _stock(history, DELTA)
    assert rdp_epsilon(history, DELTA) == rdp  # bit for bit: the per-step RDP cache changes nothing (no (σ, q) recurs here)
    assert accounting.prv_epsilon(history, DELTA) == prv  # and neither does the cached PRV domain
    assert epsilon_of(history, DELTA) == min(rdp, prv)


@pytest.mark.parametrize("history", HISTORIES)
def test_the_seam_is_strictly_below_rdp_for_typical_histories(history) -> None:
    rdp = rdp_epsilon(history, DELTA)
    assert epsilon_of(history, DELTA) < 0.95 * rdp  # the gain is 10-20% here, not rounding


@pytest.mark.parametrize(("history", "delta"), [
    ([(0.3, 0.5, 1000)], 1e-5),  # ε in the thousands: the PRV's domain would take minutes, then give inf
    ([(1.0, 0.25, 10**7)], 1e-5),  # absurd step count: the PRV's domain would not fit in memory
    ([(1.0, 0.25, 16)], 1e-30),  # δ below the PRV's floating point: it raises
    ([(1.0, 1.0, 10)], 1e-5),  # q = 1: no subsampling
    ([(50.0, 0.01, 10)], 1e-5), ([(1.0, 1e-6, 100)], 1e-5),  # almost no spend
    ([], 1e-5), ([(1.0, 0.25, 0)], 1e-5),
])
def test_the_seam_never_fails_and_never_exceeds_rdp(history, delta) -> None:
    eps = epsilon_of(history, delta)
    assert 0 <= eps <= rdp_epsilon(history, delta)
    assert (eps == 0) == (not [h for h in history if h[2] > 0])


def test_where_the_prv_fails_the_rdp_bound_stands(monkeypatch) -> None:
    def broken(history, delta):
        raise ValueError("domain error")

    accounting._epsilon_of.cache_clear()
    monkeypatch.setattr(accounting, "prv_epsilon", broken)
    try:
        assert epsilon_of([(1.0, 0.25, 16)], DELTA) == rdp_epsilon([(1.0, 0.25, 16)], DELTA)
        monkeypatch.setattr(accounting, "prv_epsilon", lambda history, delta: -1.0)  # nonsense is not a bound
        accounting._epsilon_of.cache_clear()
        assert epsilon_of([(1.0, 0.25, 16)], DELTA) == rdp_epsilon([(1.0, 0.25, 16)], DELTA)
    finally:
        accounting._epsilon_of.cache_clear()


def test_the_seam_is_pure() -> None:
    history = [(1.0, 0.25, 4), (0.8, 0.25, 4)]
    first = epsilon_of(history, DELTA)
    accounting._epsilon_of.cache_clear()
    assert epsilon_of(list(history), DELTA) == first
    assert epsilon_of([list(h) for h in history], DELTA) == first  # a ledger's JSON lists
    assert history == [(1.0, 0.25, 4), (0.8, 0.25, 4)]


def _pld_epsilon(history, delta: float, pessimistic: bool) -> float:
    from dp_accounting.pld import privacy_loss_distribution as pld

    composed = None
    for sigma, q, steps in history:
        one = pld.from_gaussian_mechanism(standard_deviation=sigma, sensitivity=1.0, sampling_prob=q,
                                          pessimistic_estimate=pessimistic, value_discretization_interval=1e-3,
                                          use_connect_dots=pessimistic)  # the optimistic side: Privacy Buckets
        one = one.self_compose(steps)
        composed = one if composed is None else composed.compose(one)
    return float(composed.get_epsilon_for_delta(delta))


@pytest.mark.slow  # dp-accounting PLD compositions, ~1-3 s a history
@pytest.mark.parametrize("history", HISTORIES)
def test_an_independent_pld_accountant_agrees_and_never_says_less(history) -> None:
    pytest.importorskip("dp_accounting", reason="the `test` extra installs dp-accounting")
    # dp-accounting rounds the privacy loss down (optimistic) or up (pessimistic): the hockey-stick
    # divergence, and so the ε at δ, is then below or above the mechanism's true one
    lower = _pld_epsilon(history, DELTA, pessimistic=False)  # ≤ the true ε of the mechanism
    upper = _pld_epsilon(history, DELTA, pessimistic=True)  # ≥ the true ε
    assert lower <= upper
    eps = epsilon_of(history, DELTA)
    assert eps >= lower  # a valid upper bound cannot be below a lower bound on the truth
    # nor noticeably below the independent tight upper bound: measured 0.010-0.013 above it (the PRV's
    # ε_err on top of an estimate that matches the pessimistic PLD); 0.005 is the stated slack
    assert eps >= upper - 0.005
    assert eps <= 1.05 * upper  # and the seam is tight: within 5% of the independent upper bound


# A patient-level site of ~47 patients, batches of ~12 (q = 1/4), 4 steps a round, 4 rounds.
SITE_RATE, SITE_STEPS = 0.25, 16


@pytest.mark.slow  # eight calibrations, ~1 s each
@pytest.mark.parametrize("budget", [1.0, 2.0, 4.0, 8.0])
def test_calibration_lands_within_budget_with_less_noise_than_rdp_alone(budget, monkeypatch) -> None:
    sigma = calibrate_noise([], SITE_RATE, SITE_STEPS, budget, DELTA)
    assert epsilon_of(with_steps([], sigma, SITE_RATE, SITE_STEPS), DELTA) <= budget
    with monkeypatch.context() as rdp_only:
        rdp_only.setattr(accounting, "epsilon_of", rdp_epsilon)
        sigma_rdp = calibrate_noise([], SITE_RATE, SITE_STEPS, budget, DELTA)
    assert rdp_epsilon(with_steps([], sigma_rdp, SITE_RATE, SITE_STEPS), DELTA) <= budget
    assert sigma < 0.95 * sigma_rdp  # the same budget buys at least 5% less noise


def test_an_earlier_spend_recomputed_by_the_seam_is_no_larger_than_the_rdp_on_record() -> None:
    """Ledgers store (σ, q, steps), not ε: an old ledger's spend, recomputed, only shrinks (and stays valid)."""
    old_ledger = [(1.2, 0.25, 16), (0.9, 0.25, 8)]
    assert epsilon_of(old_ledger, 1e-5) <= rdp_epsilon(old_ledger, 1e-5)
    assert math.isfinite(epsilon_of(old_ledger, 1e-5))


def test_recurring_entries_compose_as_one_in_any_order() -> None:
    """A site back at an earlier job's (σ, q): the steps add up wherever they are (composition commutes)."""
    spread = [(1.0, 0.25, 8), (0.8, 0.2, 10), (1.0, 0.25, 8)]
    assert accounting.history_key(spread) == ((1.0, 0.25, 16), (0.8, 0.2, 10))
    assert epsilon_of(spread, DELTA) == epsilon_of([(1.0, 0.25, 16), (0.8, 0.2, 10)], DELTA)
    rdp, prv = _stock([(1.0, 0.25, 16), (0.8, 0.2, 10)], DELTA)
    assert rdp_epsilon(spread, DELTA) == pytest.approx(rdp, rel=1e-12) and prv < rdp


def test_a_ledger_written_under_rdp_alone_still_opens_and_its_spend_only_shrinks(tmp_path, monkeypatch) -> None:
    """A ledger written before the seam (its ε from the RDP accountant alone) verifies unchanged: the chain
    seals the recorded numbers, and the history on disk is the mechanism's (σ, q, steps), so the spend
    recomputed now is the seam's, below the recorded one and still a valid bound; the next write records it."""
    import json

    from common.privacy import ledger as ledger_module
    from common.privacy.ledger import LEDGER_FILE, PrivacyLedger

    with monkeypatch.context() as before:
        before.setattr(ledger_module, "epsilon_of", rdp_epsilon)
        old = PrivacyLedger.open(tmp_path, "site-a", 1e-5, 12.0)
        old.commit_round([(1.0, 0.25, 16)], {"round": 1})
    recorded = json.loads((tmp_path / LEDGER_FILE).read_text())
    assert recorded["epsilon_spent"] == rdp_epsilon([(1.0, 0.25, 16)], 1e-5)

    now = PrivacyLedger.open(tmp_path, "site-a", 1e-5, 12.0)  # verifies: nothing on disk had to change
    assert now.history == [(1.0, 0.25, 16)]
    assert now.epsilon() == epsilon_of([(1.0, 0.25, 16)], 1e-5) < 0.95 * recorded["epsilon_spent"]
    now.save("reopened")
    assert json.loads((tmp_path / LEDGER_FILE).read_text())["epsilon_spent"] == now.epsilon()
    assert PrivacyLedger.open(tmp_path, "site-a", 1e-5, 12.0).epsilon() == now.epsilon()
