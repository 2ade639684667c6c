"""A budget that lasts a hospital's lifetime: per-job grants, deliberate budget changes, no overstatement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client.identity import DEFAULT_JOB_SHARE, SiteIdentity, parse_budget_change, site_identity
from common.config.run_config import RunConfig
from common.privacy.accounting import BudgetExhausted, calibrate_noise, epsilon_of, grant_job
from common.privacy.ledger import LEDGER_FILE, LedgerError, PrivacyLedger
from server.report.compose import NO_SITE_TRAINED, _status, any_site_trained


def test_a_job_is_granted_the_smallest_of_ask_cap_and_remainder() -> None:
    assert grant_job(asked=8, cap=2, budget=8, spent_before=0).granted == 2  # the site's cap wins
    assert grant_job(asked=1, cap=2, budget=8, spent_before=0).granted == 1  # a modest ask is honoured
    last = grant_job(asked=8, cap=2, budget=8, spent_before=7.5)
    assert last.granted == pytest.approx(0.5) and last.limit == pytest.approx(8.0)  # never past the lifetime
    with pytest.raises(BudgetExhausted, match="too little"):
        grant_job(asked=1000, cap=2, budget=8, spent_before=7.99)


def test_the_default_cap_leaves_room_for_four_jobs() -> None:
    site = SiteIdentity("s", True, Path("/x"), 8.0, 1e-5)
    assert site.job_cap == DEFAULT_JOB_SHARE * 8.0 == 2.0
    assert SiteIdentity("s", True, Path("/x"), 8.0, 1e-5, epsilon_per_job=5.0).job_cap == 5.0


def test_noise_calibrated_to_a_grant_spends_the_grant_not_the_remainder() -> None:
    grant = grant_job(asked=8, cap=2, budget=8, spent_before=0)
    sigma = calibrate_noise([], 0.1, 50, grant.limit, 1e-5)
    assert epsilon_of([(sigma, 0.1, 50)], 1e-5) == pytest.approx(2.0, rel=0.01)


def test_raising_a_budget_needs_an_acknowledgement_naming_old_and_new(tmp_path: Path) -> None:
    ledger = PrivacyLedger.open(tmp_path, "site-a", 1e-5, 8.0)
    ledger.commit_round([(1.0, 0.1, 10)], {"round": 1})
    with pytest.raises(LedgerError, match='accept-budget-change="8->12"'):
        PrivacyLedger.open(tmp_path, "site-a", 1e-5, 12.0)
    with pytest.raises(LedgerError, match="raised from 8 to 12"):
        PrivacyLedger.open(tmp_path, "site-a", 1e-5, 12.0, accept_budget_change=(8.0, 20.0))  # wrong new value
    raised = PrivacyLedger.open(tmp_path, "site-a", 1e-5, 12.0, accept_budget_change=(8.0, 12.0))
    assert raised.epsilon_budget == 12.0 and raised.budget_changed
    assert json.loads((tmp_path / LEDGER_FILE).read_text())["epsilon_budget"] == 8.0  # a reader never writes
    raised.save()  # what the site (its round, or `deploy site` at start) does with a change
    on_disk = json.loads((tmp_path / LEDGER_FILE).read_text())
    assert on_disk["epsilon_budget"] == 12.0
    [change] = on_disk["budget_changes"]
    assert (change["old"], change["new"], change["how"]) == (8.0, 12.0, "accept-budget-change") and "@" in change["by"]
    lowered = PrivacyLedger.open(tmp_path, "site-a", 1e-5, 6.0)  # lowering needs nothing
    assert lowered.epsilon_budget == 6.0 and [c["how"] for c in lowered.budget_changes] == [
        "accept-budget-change", "lowered"]
    lowered.save()
    again = PrivacyLedger.open(tmp_path, "site-a", 1e-5, 6.0)
    assert again.budget_changes == lowered.budget_changes and not again.budget_changed  # no-op


def test_the_unit_of_privacy_cannot_change_once_budget_is_spent(tmp_path: Path) -> None:
    ledger = PrivacyLedger.open(tmp_path, "s", 1e-5, 8.0)
    ledger.commit_round([(1.0, 0.1, 10)], {"round": 1})
    with pytest.raises(LedgerError, match="privacy unit 'patch'.*'patient'"):
        PrivacyLedger.open(tmp_path, "s", 1e-5, 8.0, unit="patient")


def test_budget_change_acknowledgement_is_parsed_and_checked() -> None:
    assert parse_budget_change("8->12") == (8.0, 12.0)
    assert parse_budget_change("8 to 12") is None
    node = {"data-path": "/d", "site-id": "s", "epsilon-budget": 8.0, "delta": 1e-5, "state-dir": "/s"}
    with pytest.raises(ValueError, match="OLD->NEW"):
        site_identity({**node, "accept-budget-change": "yes"}, RunConfig(), 1)
    identity = site_identity({**node, "accept-budget-change": "8->12", "epsilon-per-job": 3}, RunConfig(), 1)
    assert identity.accept_budget_change == "8->12" and identity.job_cap == 3.0


def test_the_run_config_cannot_set_a_deployed_sites_budget_cap_seed_or_split() -> None:
    node = {"data-path": "/d", "site-id": "s", "epsilon-budget": 8.0, "delta": 1e-5, "state-dir": "/s"}
    hostile = RunConfig.from_mapping({"epsilon": 1000.0, "site-epsilon-budget": 1e6, "site-epsilon-per-job": 1e6,
                                      "site-dp-seed": "0f" * 16, "site-share-diagnostics": True, "val-fraction": 0.9,
                                      "strict": True, "site-accept-budget-change": "8->1000000"})
    identity = site_identity(node, hostile, 1)
    assert (identity.epsilon_budget, identity.job_cap, identity.dp_seed) == (8.0, 2.0, "")
    assert not identity.share_diagnostics and identity.val_fraction == 0.15 and not identity.strict
    assert identity.accept_budget_change == ""


def test_a_run_in_which_no_site_trained_is_not_complete() -> None:
    rounds = [{"round": 0, "sites": []},
              {"round": 1, "sites": [{"status": "refused"}, {"status": "failed"}]}]
    run = {"config": {"num-server-rounds": 1}, "end": 1.0}
    assert not any_site_trained(rounds)
    assert _status(run, rounds, {"round": 1}) == (False, NO_SITE_TRAINED)
    rounds[1]["sites"].append({"status": "trained"})
    assert _status(run, rounds, {"round": 1}) == (True, None)


def test_the_launcher_fails_with_each_sites_reason_when_no_site_trained(tmp_path: Path) -> None:
    from simulations.run import NoSiteTrained, check_outcome

    report = {"run": {"no_site_trained": True}, "sites": [
        {"site_id": "site-0", "rounds_participated": [], "rejected_rounds": [],
         "reasons": [{"round": 1, "status": "refused", "reason": "the site's privacy budget leaves no room"}]},
        {"site_id": "site-1", "rounds_participated": [], "rejected_rounds": [],
         "reasons": [{"round": 1, "status": "failed", "reason": "fedpath site failure [data]: ..."}]}]}
    (tmp_path / "report.json").write_text(json.dumps(report))
    with pytest.raises(NoSiteTrained, match="no site trained") as caught:
        check_outcome(tmp_path)
    lines = str(caught.value).splitlines()
    assert "no site trained" in lines[0]
    assert lines[1:] == ["  - site-0: never trained; refused: the site's privacy budget leaves no room",
                         "  - site-1: never trained; failed: fedpath site failure [data]: ..."]
    report["run"]["no_site_trained"] = False
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert check_outcome(tmp_path)["sites"][0]["site_id"] == "site-0"


def test_the_launcher_refuses_a_delta_no_simulated_site_could_accept() -> None:
    from common.config.run_config import ConfigError
    from simulations.run import preflight_privacy

    with pytest.raises(ConfigError, match=r"delta=0.01 is too large for 3 of 3 simulated sites.*1/\(10·n\)"):
        preflight_privacy(["synthetic-images=240 image-size=16 delta=0.01"], 3)
    preflight_privacy(["synthetic-images=240 image-size=16 delta=0.0001"], 3)  # 1e-4 <= 1/(10·~64): accepted


def test_a_small_ask_from_a_large_budget_is_granted() -> None:
    assert grant_job(asked=1.0, cap=250.0, budget=1000.0, spent_before=0.0).granted == 1.0


@pytest.mark.slow  # two simulated jobs
def test_two_consecutive_simulated_jobs_at_default_settings_both_train(tmp_path: Path) -> None:
    """Simulation takes the same path as deployment: with ledger-dir, budgets persist across jobs."""
    from client.round_types import RoundRequest
    from client.site import run_round
    from common.data.sources import dataset_classes
    from common.model.factory import initial_model
    from common.model.network import frozen_fingerprint, get_trainable_state
    from tests.conftest import tiny_run_config

    values = tiny_run_config(**{"num-server-rounds": 1, "ledger-dir": str(tmp_path / "ledgers")})
    values = {k: v for k, v in values.items() if k not in ("epsilon", "delta")}  # the defaults: ask 8, delta 1e-5
    config = RunConfig.from_mapping({**values, "delta": 1e-4})
    model, _ = initial_model(config, len(dataset_classes(config)))
    for run_id in (1, 2):
        identity = site_identity({"partition-id": 0, "num-partitions": 2}, config, run_id)
        request = RoundRequest(run_id, 1, get_trainable_state(model), dataset_classes(config),
                               frozen_fingerprint(model))
        assert run_round(identity, config, request).status == "trained"
    ledger = json.loads((tmp_path / "ledgers" / "site-0" / LEDGER_FILE).read_text())
    assert [job["granted"] for job in ledger["jobs"].values()] == [8.0, 8.0]  # a quarter of 32, twice
    assert 8.0 < ledger["epsilon_spent"] <= 16.0 + 1e-9 and ledger["epsilon_budget"] == 32.0
