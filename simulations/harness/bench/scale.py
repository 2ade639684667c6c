"""Scale: real `flwr run` simulations with more and more sites, timed per round, memory sampled."""

from __future__ import annotations

import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

from common.paths import METRICS_FILE
from simulations.harness.bench.base import DEFAULT_POLICY, emit
from simulations.processes import processes_with_env
from simulations.run import run_simulation


def _sample_memory(flwr_home: Path, stop: threading.Event, peak: dict[str, float]) -> None:
    while not stop.is_set():
        total = 0
        for pid in processes_with_env("FLWR_HOME", str(flwr_home)):
            try:
                with open(f"/proc/{pid}/status") as handle:
                    for line in handle:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1]) * 1024
            except OSError:
                continue
        peak["rss"] = max(peak.get("rss", 0.0), float(total))
        stop.wait(0.5)


def bench_scale(quick: bool, out: Path | None) -> None:
    """Real `flwr run` simulations with 5..50 sites; rounds after the first are timed."""
    per_site, rounds = (60, 3) if quick else (120, 4)
    for sites in (5, 10, 20, 50):
        with tempfile.TemporaryDirectory(prefix="fedpath-scale-") as tmp:
            home = Path(tmp) / "flwr-home"
            overrides = (
                f"num-server-rounds={rounds} synthetic-images={int(per_site * sites / 0.68)} image-size=32 "
                f"batch-size=32 epsilon=8.0 delta=1e-4 min-site-examples=5 bootstrap-samples=0 seed=3"
            )
            stop, peak = threading.Event(), {}
            sampler = threading.Thread(target=_sample_memory, args=(home.resolve(), stop, peak), daemon=True)
            sampler.start()
            started = time.monotonic()
            with open(Path(tmp) / "run.log", "w") as log:
                run_dir = run_simulation(sites, [overrides], Path(tmp) / "runs", home, stream_to=log, timeout=3000)
            total = time.monotonic() - started
            stop.set()
            sampler.join()
            lines = [json.loads(t) for t in (run_dir / METRICS_FILE).read_text().splitlines()]
            steady = lines[2:]  # round 1 includes starting Ray actors and loading data in them
            walls = [b["time"] - a["time"] for a, b in zip(lines[1:], lines[2:])]
            train = [sum(s["metrics"].get("train-seconds", 0.0) for s in line["sites"]) for line in steady]
            emit({
                "bench": "scale", "sites": sites, "rounds_timed": len(walls), "images_per_site": per_site,
                "image_size": 32, "policy": DEFAULT_POLICY, "dp": True,
                "wall_s_per_round": round(statistics.mean(walls), 2),
                "local_training_s_per_round": round(statistics.mean(train), 2),
                "share_outside_local_training": round(1 - statistics.mean(train) / statistics.mean(walls), 3),
                "first_round_s": round(lines[1]["time"] - lines[0]["time"], 2),
                "total_run_s": round(total, 1),
                "peak_rss_mib": round(peak.get("rss", 0.0) / 2**20, 1),
            }, out)
