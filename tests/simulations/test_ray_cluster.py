"""The same simulation on an existing Ray cluster (how users outgrow one machine).

Flower's Ray backend calls `ray.init()` without an address, and Ray then joins the cluster
named by `RAY_ADDRESS`. This starts a real Ray head on 127.0.0.1 (a one-node "cluster"; a
multi-node one is the same with workers joined by `ray start --address=HEAD:PORT`), runs a
real `flwr run` simulation with `RAY_ADDRESS` set, and checks in the cluster's own logs that
the simulation's ClientApp actors ran there (Ray's "Connecting to existing Ray cluster" line is
printed by the simulation process and does not reach `flwr run --stream`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from simulations.local_superlink import free_port
from simulations.processes import kill_processes_with_env
from simulations.run import run_simulation

pytestmark = pytest.mark.integration


def test_simulation_joins_an_existing_ray_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ray = Path(sys.executable).parent / "ray"
    marker = f"fedpath-ray-test-{uuid.uuid4().hex}"
    port = free_port()
    env = {**os.environ, "FEDPATH_RAY_TEST": marker, "RAY_USAGE_STATS_ENABLED": "0"}
    temp_dir = Path("/tmp") / f"ray-{marker[-8:]}"  # Ray's socket paths must stay short
    started = subprocess.run(
        [str(ray), "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
         f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
        log = tmp_path / "flwr-run.log"
        with open(log, "w") as stream:
            run_dir = run_simulation(
                2, ["num-server-rounds=1 synthetic-images=300 image-size=32 batch-size=32 delta=1e-4 "
                    "bootstrap-samples=20"],
                tmp_path / "runs", tmp_path / "flwr-home", stream_to=stream, timeout=400,
            )
        cluster_logs = temp_dir / "session_latest" / "logs"
        actors_run_by_cluster = [
            f.name for f in cluster_logs.glob("worker-*.out") if "ClientAppActor" in f.read_text(errors="replace")
        ]
        assert actors_run_by_cluster, (
            f"no ClientAppActor ran on the Ray cluster ({cluster_logs}); simulation log tail:\n"
            + log.read_text()[-3000:]
        )
        report = json.loads((run_dir / "report.json").read_text())
        assert [r["round"] for r in report["rounds"]] == [0, 1]
        assert all(s["rounds_participated"] == [1] for s in report["sites"])
    finally:
        kill_processes_with_env("FEDPATH_RAY_TEST", marker)
        shutil.rmtree(temp_dir, ignore_errors=True)
