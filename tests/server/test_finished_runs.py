"""Finished is finished: a finished run is never resumed, and no later run overwrites a run's report.

Issue 24 (5): `resume-from` a finished run was accepted, ran rounds past the plan, was refused by every
site (the same job), raised "no site trained", marked the run failed and overwrote its finished report
(`rounds_completed 3` of 2 planned). Now `server.resume.check_start` refuses it before anything is
loaded or written, in the ServerApp (checked with a real `flwr run`) and in the launcher's preflight.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from common.config.run_config import ConfigError, RunConfig
from common.paths import REPO
from deploy.flower import flower_bin
from server.report.compose import compose_report
from server.resume import ResumeError, check_start
from simulations.local_superlink import LocalSuperLink
from simulations.processes import processes_with_env
from simulations.run import preflight
from tests.helpers.report_support import build_run_dir


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def _finished(tmp_path: Path) -> Path:
    run_dir = build_run_dir(tmp_path / "runs", rounds=2)
    (run_dir / "report.json").write_text(json.dumps(compose_report(run_dir)))
    return run_dir


def _config(run_dir: Path, **changes: object) -> dict:
    recorded = json.loads((run_dir / "run.json").read_text())["config"]
    return {**recorded, "resume-from": str(run_dir), **changes}


def test_a_finished_run_is_not_resumed(tmp_path: Path) -> None:
    run_dir = _finished(tmp_path)
    before = _snapshot(run_dir)
    with pytest.raises(ResumeError, match=r"is a finished run \(run\.json has its end time; 2 rounds planned") as err:
        check_start(run_dir, _config(run_dir, **{"num-server-rounds": 3}))
    assert f"weights='{run_dir / 'checkpoints' / 'final.pt'}'" in str(err.value)  # the documented way on
    assert "a finished run's report is never overwritten" in str(err.value)
    assert _snapshot(run_dir) == before


def test_the_launcher_refuses_it_before_any_flower_process_starts(tmp_path: Path) -> None:
    run_dir = _finished(tmp_path)
    before = _snapshot(run_dir)
    with pytest.raises(ConfigError, match="is a finished run"):
        preflight([f"resume-from='{run_dir}'"])
    assert _snapshot(run_dir) == before


def test_an_unfinished_run_resumes_only_with_its_own_configuration(tmp_path: Path) -> None:
    run_dir = build_run_dir(tmp_path / "runs", rounds=3, complete=False)
    check_start(run_dir, _config(run_dir, **{"round-timeout": 60.0, "output-dir": "elsewhere"}))  # may differ
    with pytest.raises(ResumeError, match=r"another configuration than this run's \(num-server-rounds=5, "
                                          r"policy='head'\).*--run-config 'num-server-rounds=3 "
                                          r"policy=\"norm-head\"'"):
        check_start(run_dir, _config(run_dir, **{"num-server-rounds": 5, "policy": "head"}))


def test_a_new_run_never_writes_into_another_runs_directory(tmp_path: Path) -> None:
    run_dir = _finished(tmp_path)
    with pytest.raises(ResumeError, match="already holds a run"):
        check_start(run_dir, RunConfig().to_mapping())
    check_start(tmp_path / "runs" / "run-1", RunConfig().to_mapping())  # a fresh directory is fine


@pytest.mark.integration
def test_flower_refuses_to_resume_a_finished_run_and_leaves_its_report(tmp_path: Path) -> None:
    """The ServerApp itself (no launcher preflight): a real `flwr run` against a private SuperLink."""
    run_dir = _finished(tmp_path)
    before = _snapshot(run_dir)
    home = (tmp_path / "flwr-home").resolve()
    with LocalSuperLink(home, cwd=REPO) as link:
        completed = subprocess.run(
            [flower_bin("flwr"), "run", str(REPO), "--stream", "--federation-config", "num-supernodes=2",
             "--run-config", f"resume-from='{run_dir}' num-server-rounds=3 synthetic-images=200 image-size=32"],
            env=link.env, cwd=REPO, capture_output=True, text=True, timeout=400, check=False)
    output = completed.stdout + completed.stderr
    assert "is a finished run" in output, output[-3000:]
    assert _snapshot(run_dir) == before  # run.json, metrics, checkpoints and the report untouched
    assert processes_with_env("FLWR_HOME", str(home)) == []
