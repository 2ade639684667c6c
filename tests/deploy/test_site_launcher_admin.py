"""The site launcher as a hospital's IT administrator uses it (issue 24): what `--check` may not do, what a
start records, the unit and classes checked before anything connects, leftovers of a killed daemon.

Fast: in-process, nothing connects. The real commands as subprocesses: tests/deploy/test_site_launcher_processes.py.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from common.privacy import integrity
from common.privacy.ledger import LEDGER_FILE, PrivacyLedger
from deploy import run as deploy_run
from deploy.site import leftovers
from deploy.site.command import SiteConfigError, build_parser, plan_site
from deploy.site.command import main as site_main
from tests.helpers.site_inputs import new_site


@pytest.fixture
def site(tmp_path: Path) -> dict[str, Path]:
    data = tmp_path / "export"
    for c, name in enumerate(("benign", "tumour")):
        (data / name).mkdir(parents=True)
        for i in range(3):  # every image distinct: a copy under two classes would be dropped (issue 25)
            Image.new("RGB", (8, 8), (60 * i, 100 + 50 * c, 150)).save(data / name / f"{i}.png")
    return {"data": data, "state": tmp_path / "state"}


def _config(site: dict[str, Path], **override: object) -> str:
    values: dict[str, object] = {"data-path": str(site["data"]), "site-id": "site-a", "epsilon-budget": 8.0,
                                 "delta": 1e-5, "state-dir": str(site["state"]), **new_site(), **override}
    return " ".join(f'{k}="{v}"' if isinstance(v, str) else f"{k}={v}" for k, v in values.items() if v is not None)


def _argv(site: dict[str, Path], *extra: str, **override: object) -> list[str]:
    return ["--superlink", "127.0.0.1:9092", "--insecure-local-testing", "--node-config", _config(site, **override),
            *extra]


def _spent(state: Path, budget: float = 8.0) -> bytes:
    ledger = PrivacyLedger.open(state, "site-a", 1e-5, budget)
    ledger.commit_round([(1.0, 0.2, 50)], {"round": 1})
    return (state / LEDGER_FILE).read_bytes()


def test_check_writes_nothing_to_the_ledger_and_a_start_records_the_change(site: dict[str, Path],
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """The defect: `--check` ("connects nowhere") wrote a budget change into the ledger."""
    before = _spent(site["state"])
    assert site_main(_argv(site, "--check", **{"epsilon-budget": 12.0, "accept-budget-change": "8->12"})) == 0
    assert (site["state"] / LEDGER_FILE).read_bytes() == before  # byte-identical
    assert "a start would record in the ledger: the budget change below (--check writes nothing)" in capsys.readouterr().err
    plan_site(build_parser().parse_args(_argv(site, **{"epsilon-budget": 12.0, "accept-budget-change": "8->12"})))
    [change] = json.loads((site["state"] / LEDGER_FILE).read_text())["budget_changes"]
    assert (change["old"], change["new"], change["how"]) == (8.0, 12.0, "accept-budget-change")


def test_a_cut_below_the_spend_is_allowed_and_says_the_site_is_exhausted(site: dict[str, Path]) -> None:
    _spent(site["state"])
    spent = PrivacyLedger.open(site["state"], "site-a", 1e-5, 8.0).epsilon()
    plan = plan_site(build_parser().parse_args(_argv(site, **{"epsilon-budget": round(spent / 2, 3)})))
    assert any("EXHAUSTED" in note for note in plan.notes)
    assert any("(lowered below spent: exhausted)" in note for note in plan.notes)


def test_a_hand_edited_ledger_or_a_missing_one_stops_the_launcher_with_the_fix(site: dict[str, Path]) -> None:
    _spent(site["state"], budget=12.0)
    data = json.loads((site["state"] / LEDGER_FILE).read_text())
    data["epsilon_budget"] = 100.0
    (site["state"] / LEDGER_FILE).write_text(json.dumps(data))
    with pytest.raises(SiteConfigError, match=r"failed its integrity check: .*epsilon_budget is 100.0 in the file "
                                              r"but was 12.0.*accept-ledger-edit="):
        plan_site(build_parser().parse_args(_argv(site, "--check", **{"epsilon-budget": 100.0})))
    (site["state"] / LEDGER_FILE).unlink()  # "a fresh state-dir for a site that has trained"
    with pytest.raises(SiteConfigError, match=r"no privacy ledger .*has been used before: its ledger's integrity key"):
        plan_site(build_parser().parse_args(_argv(site, **{"accept-new-ledger": None})))


def test_a_new_site_acknowledges_its_new_ledger_and_check_creates_none(site: dict[str, Path]) -> None:
    plan = plan_site(build_parser().parse_args(_argv(site, "--check")))
    assert not (site["state"] / LEDGER_FILE).exists() and not (site["state"] / integrity.KEY_FILE).exists()
    assert any("which a start creates at epsilon 0 (--check writes nothing)" in note for note in plan.notes)
    plan = plan_site(build_parser().parse_args(_argv(site)))
    created = PrivacyLedger.open(site["state"], "site-a", 1e-5, 8.0)
    assert created.head.began.startswith(f"created (accept-new-ledger={dt.date.today().isoformat()}) by ")
    assert created.unit == "patch" and any("this site starts at epsilon 0" in note for note in plan.notes)
    again = plan_site(build_parser().parse_args(_argv(site)))  # the line left in the config: said, harmless
    assert any("the acknowledgement only matters for a new ledger (remove the line)" in n for n in again.notes)


def test_the_unit_is_decided_before_the_start_and_stated_in_the_banner(site: dict[str, Path],
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SiteConfigError, match='never falls back to the patch.*privacy-unit="patch" in its node config'):
        plan_site(build_parser().parse_args(_argv(site, "--check", **{"privacy-unit": None})))
    assert site_main(_argv(site, "--check")) == 0
    assert "unit of privacy: one patch (privacy-unit=patch; a patient with k patches" in capsys.readouterr().err
    named = shutil.copytree(site["data"], site["data"].with_name("export-with-groups"))  # the loaders cache by path
    rows = [f"{c}/{i}.png,p-{c}-{i % 2}" for c in ("benign", "tumour") for i in range(3)]
    (named / "groups.csv").write_text("path,group\n" + "\n".join(rows) + "\n")
    assert site_main(_argv(site, "--check", **{"privacy-unit": None, "data-path": str(named)})) == 0
    assert "unit of privacy: one patient (privacy-unit=auto, the data names patients)" in capsys.readouterr().err


def test_classes_are_checked_in_preflight_and_a_folder_one_level_too_high_is_named(site: dict[str, Path],
                                                                                  tmp_path: Path) -> None:
    export = tmp_path / "hospital-export"
    export.mkdir()
    site["data"].rename(export / "batch-2026")
    (export / "scanner-log").mkdir()
    Image.new("RGB", (8, 8), (7, 8, 9)).save(export / "scanner-log" / "a.png")  # distinct: a copy would be dropped
    with pytest.raises(SiteConfigError, match=r"unexpected classes \['batch-2026', 'scanner-log'\].*one level too "
                                              r"high: .*batch-2026 holds class folders \(benign, tumour\); point "
                                              r"data-path at .*batch-2026"):
        plan_site(build_parser().parse_args(_argv(site, "--check", "--classes", "benign,tumour",
                                                  **{"data-path": str(export)})))
    plan = plan_site(build_parser().parse_args(_argv(site, "--check", "--classes", "benign,tumour",
                                                     **{"data-path": str(export / "batch-2026")})))
    assert not any("no --classes" in note for note in plan.notes)


def test_leftovers_of_a_killed_daemon_are_ended_by_pid_and_a_live_one_stops_the_start(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    env = {**os.environ}
    leftovers.mark_daemon(state, env)  # as the launcher does before exec, with a fresh token for the daemon
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    started: list[subprocess.Popen[bytes]] = []

    def start(environment: dict[str, str]) -> subprocess.Popen[bytes]:
        started.append(subprocess.Popen(sleeper, env=environment))
        return started[-1]

    def record_daemon(pid: int) -> None:
        record = json.loads((state / leftovers.PID_FILE).read_text())
        (state / leftovers.PID_FILE).write_text(json.dumps({**record, "pid": pid}))

    try:
        orphan = start(env)  # a ClientApp that outlived its daemon: it carries the daemon's token
        stranger = start({**os.environ, leftovers.TOKEN_ENV: "another-site"})
        record_daemon(stranger.pid)  # the daemon's PID, reused by an unrelated process (no token): the daemon is gone
        said = leftovers.end_leftovers(state, act=False)
        assert len(said) == 1 and "a start would end 1 Flower process(es)" in said[0] and str(orphan.pid) in said[0]
        assert orphan.poll() is None  # --check ends nothing
        said = leftovers.end_leftovers(state)
        assert "ended 1 Flower process(es) left by this site's previous daemon" in said[0]
        assert orphan.wait(timeout=20) == -signal.SIGTERM and stranger.poll() is None  # only the token's process
        daemon = start(env)
        record_daemon(daemon.pid)  # the daemon itself, alive
        with pytest.raises(SiteConfigError, match=f"is still running \\(PID {daemon.pid}.*stop it first"):
            leftovers.end_leftovers(state)
        assert daemon.poll() is None
    finally:
        for process in started:
            process.kill()
            process.wait(timeout=10)


def test_deploy_run_names_the_key_the_superlink_would_refuse_without_naming_it(capsys) -> None:
    """Flower's SuperLink answers `share-diagnostics=true` with a bare 'Invalid run configuration.'."""
    assert deploy_run.main(["--check", "--run-config", "share-diagnostics=true num-server-rounds=2"]) == 2
    said = capsys.readouterr().err
    assert "share-diagnostics is a site's node-config key" in said and "site-share-diagnostics stands in" in said
    assert deploy_run.main(["--check", "--run-config", "polcy='head'"]) == 2
    assert "polcy is not a run-config key (did you mean policy?)" in capsys.readouterr().err
    assert deploy_run.main(["--check", "--run-config", "lr=-1"]) == 2  # fedpath's own value checks too
    assert "lr" in capsys.readouterr().err
    assert deploy_run.main(["--check", "--connection", "x", "--run-config", "num-server-rounds=2"]) == 0
    assert capsys.readouterr().out.split()[1:5] == ["run", str(Path(deploy_run.REPO)), "x", "--stream"]
