"""The privacy ledger: cumulative epsilon across rounds, runs and restarts; budget refusal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from client.identity import SiteIdentity
from client.round_types import RoundRequest
from client.site import run_round
from common.config.run_config import RunConfig
from common.data.sources import dataset_classes, simulated_site
from common.model.factory import initial_model
from common.model.network import frozen_fingerprint, get_trainable_state
from common.privacy.accounting import calibrate_noise, epsilon_of
from common.privacy.ledger import LEDGER_FILE, LedgerError, PrivacyLedger
from common.training.steps import epoch_steps
from tests.conftest import tiny_run_config


def _site(state_dir: Path, budget: float = 8.0, pid: int = 0, per_job: float | None = None) -> SiteIdentity:
    """A simulated site whose per-job cap is its whole budget unless `per_job` says otherwise."""
    return SiteIdentity(site_id=f"site-{pid}", deployed=False, state_dir=state_dir, epsilon_budget=budget,
                        delta=1e-4, partition_id=pid, num_partitions=3,
                        epsilon_per_job=budget if per_job is None else per_job, privacy_unit="patch")


def _request(config: RunConfig, server_round: int, run_id: int = 1) -> RoundRequest:
    model, _ = initial_model(config, len(dataset_classes(config)))
    return RoundRequest(run_id, server_round, get_trainable_state(model), dataset_classes(config),
                        frozen_fingerprint(model))


@pytest.mark.slow  # three site rounds, sigma calibrated
def test_three_rounds_spend_what_one_accountant_over_the_same_steps_spends(tmp_path: Path) -> None:
    config = RunConfig.from_mapping(tiny_run_config(**{"num-server-rounds": 3}))
    site = _site(tmp_path / "site-0")
    results = [run_round(site, config, _request(config, r)) for r in (1, 2, 3)]
    assert [r.status for r in results] == ["trained"] * 3
    eps = [r.metrics["epsilon"] for r in results]
    assert 0 < eps[0] < eps[1] < eps[2] <= 8.0  # cumulative, not per round

    n = len(simulated_site(config, 0, 3).train)
    steps, rate = epoch_steps(n, n, config.batch_size)
    sigma = results[0].metrics["noise-multiplier"]
    assert sigma == pytest.approx(calibrate_noise([], rate, 3 * steps, 8.0, 1e-4))
    # Opacus' stock accountants, stepped one by one as training steps them: the ledger's ε is their minimum
    rdp, prv = RDPAccountant(), PRVAccountant()
    for _ in range(3 * steps):
        rdp.step(noise_multiplier=sigma, sample_rate=rate)
        prv.step(noise_multiplier=sigma, sample_rate=rate)
    stock = min(rdp.get_epsilon(delta=1e-4), prv.get_epsilon(1e-4, eps_error=0.01, delta_error=1e-7))
    assert eps[2] == pytest.approx(stock, rel=1e-9) and stock < rdp.get_epsilon(delta=1e-4)
    assert eps[2] == pytest.approx(8.0, rel=0.01)  # the plan uses the budget, and no more

    ledger = json.loads((tmp_path / "site-0" / LEDGER_FILE).read_text())
    assert ledger["accountant"]["history"] == [[sigma, rate, 3 * steps]]
    assert [r["round"] for r in ledger["rounds"]] == [1, 2, 3]


@pytest.mark.slow  # a site process restarted, rounds with sigma calibrated
def test_a_restart_does_not_reset_the_spend(tmp_path: Path) -> None:
    config = RunConfig.from_mapping(tiny_run_config(**{"num-server-rounds": 2}))
    state = tmp_path / "site-1"
    first = run_round(_site(state, pid=1), config, _request(config, 1, run_id=10))
    # A fresh interpreter (a restarted site) reads the ledger from disk.
    code = (
        "from common.privacy.ledger import PrivacyLedger; from pathlib import Path;"
        f"print(PrivacyLedger.open(Path({str(state)!r}), 'site-1', 1e-4, 8.0).epsilon())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2], env={**os.environ})
    assert float(out.stdout) == pytest.approx(first.metrics["epsilon"])
    # A new run (another run id) continues from the old spend rather than starting at 0.
    second = run_round(_site(state, pid=1), config, _request(config, 1, run_id=11))
    assert second.status == "trained" and second.metrics["epsilon"] > first.metrics["epsilon"]
    assert second.metrics["epsilon"] <= 8.0 + 1e-9


def test_site_refuses_a_round_past_its_budget(tmp_path: Path) -> None:
    # A fixed noise multiplier far too small for the budget: the first round already exceeds it.
    config = RunConfig.from_mapping(tiny_run_config(**{"noise-multiplier": 0.3, "epsilon": 2.0}))
    site = _site(tmp_path / "site-2", budget=2.0, pid=2)
    result = run_round(site, config, _request(config, 1))
    assert result.status == "refused" and result.update is None
    assert "beyond the site's budget" in result.reason
    assert result.reply.refusal == "round-exceeds-budget" and result.metrics["epsilon"] == 0.0
    ledger = PrivacyLedger.open(tmp_path / "site-2", "site-2", 1e-4, 2.0)
    assert ledger.history == [] and len(ledger.refusals) == 1


@pytest.mark.slow  # site rounds, sigma calibrated
def test_exhausted_budget_is_refused_in_the_next_run(tmp_path: Path) -> None:
    config = RunConfig.from_mapping(tiny_run_config(**{"num-server-rounds": 1}))
    state = tmp_path / "site-0"
    assert run_round(_site(state), config, _request(config, 1, run_id=1)).status == "trained"
    again = run_round(_site(state), config, _request(config, 1, run_id=2))  # a coordinator asks for more
    assert again.status == "refused" and again.reply.refusal == "budget-exhausted" and "too little" in again.reason
    assert again.metrics["epsilon"] == pytest.approx(8.0, rel=0.01)


def test_corrupt_ledger_stops_the_site_instead_of_resetting(tmp_path: Path) -> None:
    state = tmp_path / "site-0"
    state.mkdir()
    (state / LEDGER_FILE).write_text('{"format": "fedpath-privacy-ledger/1", "accountant": {"hist')
    with pytest.raises(LedgerError, match="corrupt.*never reset"):
        PrivacyLedger.open(state, "site-0", 1e-4, 8.0)
    config = RunConfig.from_mapping(tiny_run_config())
    with pytest.raises(LedgerError, match="corrupt.*never reset"):
        run_round(_site(state), config, _request(config, 1))
    assert "hist" in (state / LEDGER_FILE).read_text()  # left untouched for the operator


def test_changing_delta_of_an_existing_ledger_is_refused(tmp_path: Path) -> None:
    ledger = PrivacyLedger.open(tmp_path, "s", 1e-5, 8.0)
    ledger.commit_round([(1.0, 0.1, 10)], {"round": 1})
    with pytest.raises(LedgerError, match="delta"):
        PrivacyLedger.open(tmp_path, "s", 1e-3, 8.0)
    with pytest.raises(LedgerError, match="belongs to site"):
        PrivacyLedger.open(tmp_path, "other", 1e-5, 8.0)


def test_calibrated_noise_uses_remaining_budget_after_earlier_spend() -> None:
    fresh = calibrate_noise([], 0.1, 100, 4.0, 1e-5)
    after_spend = calibrate_noise([(fresh, 0.1, 100)], 0.1, 100, 8.0, 1e-5)
    assert epsilon_of([(fresh, 0.1, 100), (after_spend, 0.1, 100)], 1e-5) <= 8.0
    assert epsilon_of([(fresh, 0.1, 100), (after_spend * 0.98, 0.1, 100)], 1e-5) > 8.0  # tight
    assert np.isfinite(after_spend) and after_spend > 0


@pytest.mark.slow  # site rounds, sigma calibrated
def test_a_refusal_before_training_still_reports_the_real_cumulative_spend(tmp_path: Path) -> None:
    """E.g. a site that spent budget in an earlier run and now has too few examples."""
    config = RunConfig.from_mapping(tiny_run_config(**{"num-server-rounds": 2}))
    state = tmp_path / "site-0"
    spent = run_round(_site(state), config, _request(config, 1)).metrics["epsilon"]
    strict = RunConfig.from_mapping(tiny_run_config(**{"num-server-rounds": 2, "min-site-examples": 10_000}))
    refused = run_round(_site(state), strict, _request(strict, 2))
    assert spent > 0 and refused.status == "refused" and refused.metrics["epsilon"] == pytest.approx(spent)


def test_planned_steps_are_the_steps_opacus_takes_where_ceil_differs() -> None:
    """Opacus takes int(1/q) steps with q = 1/ceil(n/batch), one fewer than ceil(n/batch) for ~6% of sizes."""
    import torch
    from opacus.data_loader import DPDataLoader
    from torch.utils.data import TensorDataset

    differ = [(n, b) for n in range(1, 400) for b in (1, 3, 7, 64) if int(1 / (1 / -(-n // b))) != -(-n // b)]
    assert (93, 1) in differ and len(differ) > 10  # the sizes where a ceil(n/batch) plan would be wrong
    for n, b in [*differ[:20], (93, 1), (5952, 64), (100, 64)]:
        loader = DPDataLoader(TensorDataset(torch.zeros(n, 1)), sample_rate=1 / -(-n // b))
        steps, rate = epoch_steps(n, n, b, 1)  # from the batch size alone, as Opacus plans
        assert (steps, rate) == (len(loader), loader.sample_rate), (n, b)
    assert epoch_steps(93, 93, 1, 1)[0] == 92


@pytest.mark.parametrize(("history", "rate", "steps"), [
    ([], 0.05, 30), ([], 0.5, 30), ([(1.0, 0.02, 1000)], 0.02, 400), ([(2.0, 0.3, 50)], 0.3, 10),
])
@pytest.mark.slow  # RDP bisection, up to 14 s a case
def test_calibrated_noise_is_the_smallest_that_fits_within_a_tenth_of_a_percent(history, rate, steps) -> None:
    sigma = calibrate_noise(history, rate, steps, 8.0, 1e-3)
    assert epsilon_of([*history, (sigma, rate, steps)], 1e-3) <= 8.0  # never over the budget
    assert epsilon_of([*history, (sigma / 1.001, rate, steps)], 1e-3) > 8.0  # and not needlessly noisy
