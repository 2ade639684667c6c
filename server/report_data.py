"""Compose `report.json` from a run directory's raw records.

Kept apart from the server loop so a finished (or crashed) run's report can be rebuilt,
or compared with baselines, without retraining: `python -m server.report RUN_DIR`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from server.run_store import RunStore

HEADLINE_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "loss")


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(float(value)) else None


def site_summaries(rounds: list[dict[str, Any]], config: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-site totals over all rounds; epsilon is the latest cumulative spend reported."""
    by_site: dict[str, dict[str, Any]] = {}
    for line in rounds:
        for reply in line.get("sites", []):
            site = by_site.setdefault(reply["site_id"], {
                "site_id": reply["site_id"], "num_examples": 0, "class_counts": [], "rounds_participated": [],
                "local_val_accuracy": None, "epsilon": 0.0 if config.get("dp", True) else None,
                "epsilon_budget": None, "delta": None, "noise_multiplier": None,
                "max_grad_norm": config.get("max-grad-norm"), "refused_rounds": [], "failed_rounds": [],
                "rejected_rounds": [], "reasons": [], "skipped_files": 0,
            })
            metrics = reply.get("metrics") or {}
            if reply.get("class_counts"):
                site["class_counts"] = reply["class_counts"]
            for key, name in (("epsilon-budget", "epsilon_budget"), ("max-grad-norm", "max_grad_norm")):
                if _finite(metrics.get(key)) is not None:
                    site[name] = metrics[key]
            if metrics.get("skipped-files"):
                site["skipped_files"] = int(metrics["skipped-files"])
            if metrics.get("dp") and _finite(metrics.get("epsilon")) is not None:
                site["epsilon"] = max(float(site["epsilon"] or 0.0), float(metrics["epsilon"]))
            if _finite(metrics.get("delta")):
                site["delta"] = metrics["delta"]
            status = reply["status"]
            if status in ("trained", "rejected"):
                site["num_examples"] = int(metrics.get("num-examples", site["num_examples"]) or 0)
                site["rounds_participated"].append(line["round"])
                site["local_val_accuracy"] = _finite(metrics.get("val-accuracy"))
                if _finite(metrics.get("noise-multiplier")):
                    site["noise_multiplier"] = metrics["noise-multiplier"]
            if status != "trained":
                site[f"{status}_rounds"].append(line["round"])
                site["reasons"].append({"round": line["round"], "status": status, "reason": reply.get("reason", "")})
    return [by_site[k] for k in sorted(by_site, key=_natural_key)]


def _natural_key(text: str) -> tuple:
    import re

    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def communication(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    per_round = []
    totals: dict[str, int] = defaultdict(int)
    for line in rounds:
        for reply in line.get("sites", []):
            per_round.append({
                "round": line["round"], "site_id": reply["site_id"],
                "bytes_down": reply.get("bytes_down", 0), "bytes_up": reply.get("bytes_up", 0),
            })
            totals["down"] += int(reply.get("bytes_down", 0))
            totals["up"] += int(reply.get("bytes_up", 0))
    return {"per_site_round": per_round, "total_bytes_down": totals["down"], "total_bytes_up": totals["up"]}


def compose_report(run_dir: Path) -> dict[str, Any]:
    store = RunStore(run_dir)
    run = store.read_json("run.json")
    rounds = store.rounds()
    final = store.read_json("final-eval.json") if (run_dir / "final-eval.json").exists() else None
    config = run.get("config", {})
    weights = run.get("weights", {})
    return {
        "run": {
            "run_id": run.get("run_id"),
            "config": config,
            "start": run.get("start"),
            "end": run.get("end"),
            "versions": run.get("versions", {}),
            "weights_source": weights.get("kind"),
            "weights_description": weights.get("description"),
            "weights_sha256": weights.get("sha256"),
            "weights_path": weights.get("path"),
            "classes": run.get("classes", []),
            "test_examples": run.get("test_examples"),
            "test_class_counts": run.get("test_class_counts"),
            "trainable_parameters": run.get("trainable_parameters"),
            "complete": final is not None and run.get("end") is not None,
        },
        "rounds": [
            {"round": line["round"], **{k: line.get(k) for k in HEADLINE_KEYS}, "sites": line.get("sites", [])}
            for line in rounds
        ],
        "final": final,
        "sites": site_summaries(rounds, config),
        "communication": communication(rounds),
    }
