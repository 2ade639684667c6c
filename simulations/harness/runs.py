"""The three ways an experiment trains: a real federation, all data pooled, each site alone.

Federated rows are real `flwr run` simulations summarised from their report.json; pooled and
local-only baselines train in process with the same model, policy, training function and test set.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from common.data.imageset import ImageSet
from common.data.sources import all_simulated_sites, central_test_set, dataset_classes
from common.evaluation.metrics import full_evaluation
from common.files import atomic_write_json
from common.model.factory import initial_model
from common.paths import REPORT_FILE
from common.privacy.randomness import public_randomness
from common.training.local import predict, train_local
from common.training.settings import TrainSettings
from common.wire.reply import largest_site_epsilon
from simulations.harness.scenario import Scenario
from simulations.run import run_simulation

log = logging.getLogger("fedpath.experiment")


def federated(scenario: Scenario, workdir: Path) -> dict[str, Any]:
    """A real `flwr run` simulation, summarised from its report.json; with a kept work directory
    (`--keep-runs`) a finished run whose run config is unchanged is reused, so an interrupted
    experiment resumes where it stopped instead of re-training hours of rows."""
    saved = workdir / "rows" / f"{_slug(scenario.label)}.json"
    if saved.exists() and (kept := json.loads(saved.read_text()))["run_config"] == scenario.run_config():
        log.info("reusing the finished run of %r (%s)", scenario.label, saved)
        return kept["row"]
    row = _run_federated(scenario, workdir)
    saved.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(saved, {"run_config": scenario.run_config(), "row": row})
    return row


def _run_federated(scenario: Scenario, workdir: Path) -> dict[str, Any]:
    started = time.time()
    with open(workdir / f"{_slug(scenario.label)}.log", "w") as stream:
        run_dir = run_simulation(scenario.sites, [scenario.run_config()], workdir / "runs", workdir / "flwr-home",
                                 stream_to=stream, timeout=7200)
    return summarise_run(scenario, json.loads((run_dir / REPORT_FILE).read_text()), time.time() - started)


def summarise_run(scenario: Scenario, report: dict[str, Any], seconds: float) -> dict[str, Any]:
    """An experiment row from a finished run's report.json (the scenario says what was asked)."""
    final = report["final"]
    sites = report["sites"]
    return {
        "label": scenario.label, "kind": "federated", "scenario": dataclasses.asdict(scenario),
        "accuracy": final["accuracy"], "accuracy_ci95": final["ci95"]["accuracy"],
        "balanced_accuracy": final["balanced_accuracy"], "macro_f1": final["macro_f1"],
        "macro_auc": final["macro_auc"], "ece": final["ece"],
        "rounds": [{"round": r["round"], "accuracy": r["accuracy"]} for r in report["rounds"]],
        "max_site_epsilon": largest_site_epsilon(report["sites"]),
        "site_delta": [s["delta"] for s in sites][:1],
        "refused_rounds": sum(len(s["refused_rounds"]) for s in sites),
        "rejected_updates": sum(len(s["rejected_rounds"]) for s in sites),
        "failed_replies": sum(len(s.get("failed_rounds", [])) for s in sites),
        "weights": report["run"]["weights_description"], "seconds": round(seconds, 1),
        "privacy_units": sorted({s["privacy_unit"] for s in sites if s.get("privacy_unit")}),
        "site_histories": site_histories(report), "site_deltas": {s["site_id"]: s["delta"] for s in sites},
        "validation": validation_summary(report),
    }


def validation_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The server's validation accuracy (never the test set) of the starting and the end model, and the kept
    rounds: what hyper-parameters are chosen on (docs/BENCHMARKS.md, "patient-privacy"). Under
    round-acceptance = all every round is kept and the end model is the last round's."""
    decisions = [line["acceptance"] for line in report["rounds"] if line.get("acceptance")]
    judged = [d for d in decisions if d.get("validation_accuracy") is not None]
    if not judged:
        return {}
    return {"start": judged[0]["validation_accuracy"], "end": decisions[-1].get("kept_validation_accuracy"),
            "kept_rounds": [d["round"] for d in decisions if d.get("kept")],
            "examples": (report.get("round_acceptance") or {}).get("validation_examples")}


def site_histories(report: dict[str, Any]) -> dict[str, list[tuple[float, float, int]]]:
    """Each site's accountant history (σ, q, steps per trained DP round), from what it sent."""
    out: dict[str, list[tuple[float, float, int]]] = {}
    for line in report["rounds"]:
        for reply in line.get("sites", []):
            metrics = reply.get("metrics") or {}
            if reply.get("status") == "trained" and metrics.get("dp") and metrics.get("steps"):
                entry = (float(metrics["noise-multiplier"]), float(metrics["sample-rate"]), int(metrics["steps"]))
                out.setdefault(reply["site_id"], []).append(entry)
    return out


def _central_model_and_data(scenario: Scenario) -> tuple[Any, Any, list[Any], Any]:
    config = scenario.config()
    model, _ = initial_model(config, len(dataset_classes(config)))
    return config, central_test_set(config), all_simulated_sites(config, scenario.sites), model


def _train_and_test(config: Any, model: Any, train: Any, test: Any, epochs: int, seed: int) -> dict[str, Any]:
    settings = TrainSettings(epochs=epochs, batch_size=config.batch_size, lr=config.lr, momentum=config.momentum,
                             randomness=public_randomness(f"harness-{seed}"), dp=False)
    train_local(model, train, settings, desc="centralised training")
    probs, _ = predict(model, test, config.eval_batch_size)
    return full_evaluation(test.labels, probs, test.classes, bootstrap_samples=config.bootstrap_samples, seed=seed)


def pooled(scenario: Scenario) -> dict[str, Any]:
    """All sites' training data in one place, non-private: the upper reference."""
    config, test, sites, model = _central_model_and_data(scenario)
    parts = [s.train for s in sites]
    train = ImageSet(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]),
                     np.concatenate([p.groups for p in parts]), parts[0].classes)
    started = time.time()
    result = _train_and_test(config, copy.deepcopy(model), train, test, scenario.rounds * scenario.local_epochs,
                             scenario.seed)
    return _central_summary(scenario, "pooled non-private", result, time.time() - started, len(train))


def local_only(scenario: Scenario) -> list[dict[str, Any]]:
    """Each site alone, non-private (its model never leaves), tested on the same test set."""
    config, test, sites, model = _central_model_and_data(scenario)
    out = []
    for k, site in enumerate(sites):
        started = time.time()
        result = _train_and_test(config, copy.deepcopy(model), site.train, test,
                                 scenario.rounds * scenario.local_epochs, scenario.seed + k)
        out.append(_central_summary(scenario, f"local-only site-{k}", result, time.time() - started, len(site.train)))
    return out


def _central_summary(scenario: Scenario, label: str, result: dict[str, Any], seconds: float, n: int) -> dict[str, Any]:
    return {
        "label": label, "kind": "centralised", "scenario": dataclasses.asdict(scenario), "train_examples": n,
        "accuracy": result["accuracy"], "accuracy_ci95": result["ci95"]["accuracy"],
        "balanced_accuracy": result["balanced_accuracy"], "macro_f1": result["macro_f1"],
        "macro_auc": result["macro_auc"], "ece": result["ece"], "seconds": round(seconds, 1),
    }


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
