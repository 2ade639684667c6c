"""What a site's operator is told (issue 24, the site's half): its unit of privacy, what it ignored, its ledger.

Attacks and defects, as a hospital's IT administrator met them: a coordinator asking `delta=0.05`,
`privacy-unit=patch`, `site-epsilon-budget=1000`, a foreign `site-dp-seed`, `strict=true` and diagnostics got
nothing it asked for, and nobody was told; a hand-edited ledger was believed; a wiped state-dir started at ε 0.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

import pytest

from client.identity import site_identity
from client.overrides import ignored_run_config
from client.site import run_round
from common.paths import SITE_LOG
from common.privacy.ledger import LEDGER_FILE, LedgerError
from common.wire import reply as wire
from tests.helpers.site_inputs import deployed_node, round_request, site_config, site_tree

HOSTILE = {  # the coordinator's run config: every key a deployed site takes from its own node config instead
    "delta": 0.05, "privacy-unit": "patient", "site-epsilon-budget": 1000.0, "site-dp-seed": "0f" * 16,
    "strict": True, "site-share-diagnostics": True, "val-fraction": 0.5, "ledger-dir": "/tmp/coordinator-says",
    "site-epsilon-per-job": 500.0, "site-epsilon-per-period": 0.5, "site-period-days": 1.0,
    "site-accept-budget-change": "8->1000",
}


def test_every_overridable_key_is_compared_and_only_names_cross_the_wire(tmp_path: Path) -> None:
    node = site_identity(deployed_node(tmp_path, tmp_path / "data"), site_config(), 1)
    ignored = ignored_run_config(node, site_config(**HOSTILE), "patch")
    assert list(ignored) == list(wire.OVERRIDABLE)  # each one is named, none is missed
    assert ignored["site-dp-seed"] == {"asked": "set", "applied": "not set"}  # never a seed's value
    assert ignored["privacy-unit"] == {"asked": "patient", "applied": "patch"}
    # a run config at its defaults still differs where the site's own settings do (δ 1e-5 vs 1e-4, budget 32 vs 8,
    # val-fraction 0.2 vs 0.15, auto vs the patch its operator chose): those are named too, since the report
    # would otherwise list them as applied
    assert set(ignored_run_config(node, site_config(), "patch")) == {"delta", "val-fraction", "site-epsilon-budget",
                                                                    "privacy-unit"}
    assert "privacy-unit" not in ignored_run_config(node, site_config(), "patient")  # auto: the patient applies
    simulated = site_identity({"partition-id": 0, "num-partitions": 2}, site_config(**HOSTILE), 1)
    assert ignored_run_config(simulated, site_config(**HOSTILE), "patch") == {}  # the run config is its node config
    with pytest.raises(wire.ReplyError, match=r"overridden names keys \['seed; rm -rf'\]"):
        wire.decode({wire.SITE: {"site-id": "a", "status": "refused", "refusal": "too-few-examples",
                                 "randomness": "secure", "privacy-unit": "patch", "overridden": "delta,seed; rm -rf"},
                     wire.METRICS: {f.key: 0 for f in wire.FIELDS if f.record == wire.METRICS}}, None)


@pytest.mark.slow  # two site rounds, sigma calibrated
def test_a_site_logs_the_keys_it_ignored_once_per_job_and_its_reply_names_them(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = site_tree(tmp_path / "data", per_class=20)
    config = site_config(**HOSTILE, **{"num-server-rounds": 2})
    identity = site_identity(deployed_node(tmp_path, data), config, 1)
    with caplog.at_level(logging.INFO, logger="fedpath.site"):
        first = run_round(identity, config, round_request(config))
        request = round_request(config)
        request.server_round = 2
        second = run_round(identity, config, request)
    assert first.status == second.status == "trained"
    warned = [r.getMessage() for r in caplog.records if "ignores the coordinator's run-config keys" in r.getMessage()]
    assert len(warned) == 1  # once per job, not per round
    for key, shown in (("delta", "delta=0.05 (applies 0.0001)"), ("privacy-unit", 'privacy-unit="patient" '
                       '(applies "patch")'), ("site-epsilon-budget", "site-epsilon-budget=1000 (applies 8)"),
                       ("site-dp-seed", 'site-dp-seed="set" (applies "not set")'), ("strict", "strict=true (applies "
                       "false)"), ("site-share-diagnostics", "site-share-diagnostics=true (applies false)")):
        assert shown in warned[0], key
    for result in (first, second):  # the reply names them (fixed words), the values applied are the site's
        encoded = wire.encode(result.reply)
        assert encoded[wire.SITE]["overridden"].split(",") == list(wire.OVERRIDABLE)
        assert encoded[wire.METRICS]["delta"] == 1e-4 and encoded[wire.METRICS]["epsilon-budget"] == 8.0
        assert result.reply.randomness == "secure" and result.reply.diagnostics is None
    log = [json.loads(line) for line in (tmp_path / "state" / SITE_LOG).read_text().splitlines()]
    assert [set(line["ignored_run_config"]) for line in log] == [set(wire.OVERRIDABLE)] * 2
    banner = [r.getMessage() for r in caplog.records if r.getMessage().startswith("fedpath site hospital-a, run 1")]
    assert len(banner) == 1 and "unit of privacy: one patch (privacy-unit=patch; a patient with k patches" in banner[0]
    rounds = [r.getMessage() for r in caplog.records if "epsilon spent so far" in r.getMessage()]
    assert len(rounds) == 2 and all("unit of privacy: one patch" in line and "ledger link" in line for line in rounds)


@pytest.mark.slow  # a site round
def test_a_hand_edited_ledger_stops_the_site_before_it_trains(tmp_path: Path) -> None:
    data = site_tree(tmp_path / "data", per_class=20)
    config = site_config()
    identity = site_identity(deployed_node(tmp_path, data, **{"epsilon-budget": 12.0}), config, 1)
    assert run_round(identity, config, round_request(config)).status == "trained"
    ledger = json.loads((tmp_path / "state" / LEDGER_FILE).read_text())
    ledger["epsilon_budget"] = 100.0  # the hand edit: 12 -> 100
    (tmp_path / "state" / LEDGER_FILE).write_text(json.dumps(ledger))
    raised = site_identity(deployed_node(tmp_path, data, **{"epsilon-budget": 100.0}), config, 2)
    with pytest.raises(LedgerError, match="epsilon_budget is 100.0 in the file but was 12.0"):
        run_round(raised, config, round_request(config))
    failed = json.loads((tmp_path / "state" / SITE_LOG).read_text().splitlines()[-1])
    assert failed["status"] == "failed" and failed["code"] == "ledger"


def test_a_deployed_site_whose_ledger_is_gone_does_not_start_again_at_zero(tmp_path: Path) -> None:
    data = site_tree(tmp_path / "data", per_class=8)
    config = site_config(**{"min-site-examples": 1})
    stale = (dt.date.today() - dt.timedelta(days=30)).isoformat()  # the acknowledgement of its first start
    identity = site_identity(deployed_node(tmp_path, data, **{"accept-new-ledger": stale}), config, 1)
    with pytest.raises(LedgerError, match=r"no privacy ledger .* would start at epsilon 0 .*from an earlier day"):
        run_round(identity, config, round_request(config))
    assert not (tmp_path / "state" / LEDGER_FILE).exists()
