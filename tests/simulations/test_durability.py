"""Nothing lost on a crash: real processes killed with SIGKILL, then checked and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.privacy.ledger import LEDGER_FILE, PrivacyLedger
from simulations.processes import kill_processes_with_env, processes_with_env
from simulations.run import run_simulation
from tests.conftest import REPO

PYTHON = sys.executable
pytestmark = pytest.mark.slow  # every test here starts and kills real processes


def _spawn(code: str, env_extra: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PYTHON, "-u", "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **(env_extra or {})}, start_new_session=True,
    )


def _wait_for(process: subprocess.Popen[str], marker: str, timeout: float = 120) -> list[str]:
    deadline, seen = time.monotonic() + timeout, []
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"process ended before {marker!r}: {''.join(seen[-20:])}")
        seen.append(line)
        if marker in line:
            return seen
    raise AssertionError(f"{marker!r} not seen in {timeout}s")


def _kill(process: subprocess.Popen[str]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


def test_ledger_file_is_never_torn_by_sigkill(tmp_path: Path) -> None:
    """A process committing as fast as it can is killed 5 times; the ledger always parses
    and holds at least every commit the process had acknowledged."""
    writer = (
        "from common.privacy.ledger import PrivacyLedger; from pathlib import Path\n"
        f"state = Path({str(tmp_path)!r})\n"
        "while True:\n"
        "    ledger = PrivacyLedger.open(state, 'site-x', 1e-5, 1e9)\n"
        "    n = ledger.total_steps() + 1\n"
        "    ledger.commit_round([(1.0, 0.01, n)], {'round': n})\n"
        "    print('committed', n, flush=True)\n"
    )
    for attempt in range(5):
        process = _spawn(writer)
        lines = _wait_for(process, "committed")
        time.sleep(0.05 * (attempt + 1))
        _kill(process)
        acknowledged = max(int(t.split()[1]) for t in lines + process.stdout.readlines() if t.startswith("committed"))
        ledger = PrivacyLedger.open(tmp_path, "site-x", 1e-5, 1e9)  # parses: never a torn file
        assert ledger.total_steps() >= acknowledged
        assert len(ledger.rounds) == ledger.total_steps()


SITE_ROUND = """
import sys
from pathlib import Path
from client.identity import SiteIdentity
from client.round_types import RoundRequest
from client.site import run_round
from common.config.run_config import RunConfig
from common.data.sources import dataset_classes
from common.model.factory import initial_model
from common.logging_setup import setup_logging
from common.model.network import frozen_fingerprint, get_trainable_state
setup_logging()
config = RunConfig.from_mapping({{"synthetic-images": 400, "image-size": 32, "batch-size": 8, "num-server-rounds": 4,
                                  "local-epochs": {epochs}, "seed": 5, "delta": 1e-4}})
classes = dataset_classes(config)
model, _ = initial_model(config, len(classes))
site = SiteIdentity("site-0", False, Path({state!r}), 1000.0, 1e-4, partition_id=0, num_partitions=2)
print("training", flush=True)
request = RoundRequest({run}, {round}, get_trainable_state(model), classes, frozen_fingerprint(model))
result = run_round(site, config, request)
print("UPDATE READY", result.status, result.metrics["epsilon"], flush=True)
import time; time.sleep(60)
"""


def test_a_round_is_on_the_ledger_before_its_update_can_leave(tmp_path: Path) -> None:
    state = tmp_path / "site-0"
    # Killed the moment the update exists (before any reply could be sent): the spend is recorded.
    process = _spawn(SITE_ROUND.format(epochs=1, state=str(state), round=1, run=1))
    line = _wait_for(process, "UPDATE READY")[-1]
    _kill(process)
    assert "trained" in line
    reported = float(line.split()[-1])
    ledger = PrivacyLedger.open(state, "site-0", 1e-4, 1000.0)
    assert len(ledger.rounds) == 1 and ledger.epsilon() == pytest.approx(reported)

    # Killed mid-training: nothing released, so the recorded spend is intact and unchanged.
    process = _spawn(SITE_ROUND.format(epochs=40, state=str(state), round=2, run=2))
    _wait_for(process, "epoch 1/40")
    _kill(process)
    after_kill = PrivacyLedger.open(state, "site-0", 1e-4, 1000.0)
    assert after_kill.history == ledger.history and after_kill.rounds == ledger.rounds

    # The restarted site carries on from the recorded spend.
    process = _spawn(SITE_ROUND.format(epochs=1, state=str(state), round=2, run=1))
    line = _wait_for(process, "UPDATE READY")[-1]
    _kill(process)
    assert "trained" in line and float(line.split()[-1]) > reported
    assert len(PrivacyLedger.open(state, "site-0", 1e-4, 1000.0).rounds) == 2


@pytest.mark.integration
def test_server_killed_mid_run_resumes_from_its_last_round(tmp_path: Path) -> None:
    """Also the real-run coverage of FedProx: sites receive Flower's proximal-mu before and after the resume."""
    overrides = ("num-server-rounds=3 synthetic-images=600 image-size=32 batch-size=32 epsilon=8.0 "
                 "delta=1e-4 seed=2 bootstrap-samples=50 strategy='fedprox' proximal-mu=0.5")
    runs, home = tmp_path / "runs", tmp_path / "flwr-home"
    launcher = subprocess.Popen(
        [PYTHON, "-m", "simulations.run", "--sites", "3", "--run-config", overrides,
         "--output-dir", str(runs), "--flwr-home", str(home)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        metrics = None
        while time.monotonic() < deadline:
            found = list(runs.glob("run-*/metrics.jsonl"))
            if found and len(found[0].read_text().splitlines()) >= 2:  # rounds 0 and 1 are recorded
                metrics = found[0]
                break
            assert launcher.poll() is None, "the run ended before it could be killed"
            time.sleep(0.5)
        assert metrics is not None, "round 1 never completed"
        # The coordinator dies at once: SuperLink, SuperExec, ServerApp, simulation engine, Ray.
        killed = kill_processes_with_env("FLWR_HOME", str(home.resolve()))
        assert len(killed) >= 3
    finally:
        _kill(launcher)  # type: ignore[arg-type]
    run_dir = metrics.parent
    assert not (run_dir / "report.json").exists()
    done = [json.loads(t)["round"] for t in metrics.read_text().splitlines()]
    spent = {p.parent.name: PrivacyLedger.open(p.parent, p.parent.name, 1e-4, 8.0).epsilon()
             for p in run_dir.glob("sites/*/" + LEDGER_FILE)}
    # round 1 is recorded, so every site trained in it and its spend is on its ledger
    assert sorted(spent) == ["site-0", "site-1", "site-2"] and all(eps > 0 for eps in spent.values()), spent

    with open(tmp_path / "resume.log", "w") as stream:
        resumed = run_simulation(3, [overrides, f"resume-from='{run_dir}'"], runs, home, stream_to=stream, timeout=400)
    assert resumed == run_dir
    report = json.loads((run_dir / "report.json").read_text())
    assert [r["round"] for r in report["rounds"]] == [0, 1, 2, 3]
    assert report["rounds"][1]["accuracy"] == pytest.approx(
        json.loads(metrics.read_text().splitlines()[done.index(1)])["accuracy"])
    assert report["final"] is not None and report["run"]["complete"]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["resumed"][0]["after_round"] == max(done)
    assert sorted(site["site_id"] for site in report["sites"]) == sorted(spent)
    for site in report["sites"]:
        assert spent[site["site_id"]] < site["epsilon"] <= 8.0  # the ledger continued, never reset
    assert processes_with_env("FLWR_HOME", str(home.resolve())) == []  # nothing left running
    assert report["run"]["config"]["strategy"] == "fedprox"
    logs = sorted(run_dir.glob("sites/*/site-rounds.jsonl"))
    assert [log.parent.name for log in logs] == sorted(spent)
    for log in logs:  # every round, before and after the resume, got mu
        records = [json.loads(line) for line in log.read_text().splitlines()]
        assert {r["round"] for r in records} >= {1, 2, 3}, records  # round 2 may be there twice: killed, then redone
        assert {r["proximal_mu"] for r in records} == {0.5}
