"""Baselines the report sets beside the federated result: pooled, local-only, other runs.

A baseline comes from one of:

* another fedpath run directory (its final-eval.json and report facts), e.g. a non-private run;
* a JSON file holding one baseline object, a list of them, or `{"rows": [...]}` (the benchmark
  harness' results.json), where an object is at least `{"name": ..., "accuracy": 0.87}`.

Every source is reduced to the same small record (`BASELINE_KEYS`), so the report never has to
know where a number came from beyond the `source` it names. docs/REPORT.md documents the format.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from common.paths import BASELINES_FILE, FINAL_EVAL_FILE, RUN_FILE
from common.wire.reply import largest_site_epsilon
from server.report.compose import compose_report
from server.run_store import RunStore

METRIC_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "ece")
BASELINE_KEYS = ("name", "kind", "accuracy", "accuracy_ci95", "balanced_accuracy", "macro_f1", "macro_auc", "ece",
                 "epsilon", "test_examples", "notes", "source")


class BaselineError(ValueError):
    """A baseline that cannot be read, with the file and what is wrong."""


def _metric(value: Any, where: str, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise BaselineError(f"{where}: '{key}' must be a number between 0 and 1, got {value!r}")
    if key != "ece" and not 0.0 <= float(value) <= 1.0:
        raise BaselineError(f"{where}: '{key}' must be a fraction between 0 and 1 (not a percentage), got {value!r}")
    return float(value)


def _scenario_note(scenario: Any) -> str:
    """The benchmark harness describes each row's setting in `scenario`: say what data it used."""
    if not isinstance(scenario, dict):
        return ""
    parts = [Path(str(scenario["dataset"])).name if scenario.get("dataset") else None,
             f"{scenario['image_size']} px" if scenario.get("image_size") else None,
             f"{scenario['sites']} sites" if scenario.get("sites") else None,
             f"{scenario['rounds']} rounds" if scenario.get("rounds") else None]
    return ", ".join(p for p in parts if p)


def normalise(entry: dict[str, Any], source: str, name: str | None = None) -> dict[str, Any]:
    """One baseline record from a loosely written object; clear errors for what cannot be used."""
    if not isinstance(entry, dict):
        raise BaselineError(f"{source}: a baseline must be a JSON object, got {type(entry).__name__}")
    label = name or entry.get("name") or entry.get("label")
    if not label:
        raise BaselineError(f"{source}: a baseline needs a 'name' (or give one on the command line: NAME=PATH)")
    if entry.get("accuracy") is None:
        raise BaselineError(f"{source}: baseline '{label}' has no 'accuracy'")
    out: dict[str, Any] = {"name": str(label), "kind": str(entry.get("kind") or "baseline")}
    for key in METRIC_KEYS:
        out[key] = _metric(entry.get(key), f"{source} ('{label}')", key)
    ci = entry.get("accuracy_ci95")
    if ci is None and isinstance(entry.get("ci95"), dict):
        ci = entry["ci95"].get("accuracy")
    if ci is not None:
        if not (isinstance(ci, (list, tuple)) and len(ci) == 2):
            raise BaselineError(f"{source} ('{label}'): 'accuracy_ci95' must be [low, high], got {ci!r}")
        ci = [_metric(c, f"{source} ('{label}')", "accuracy_ci95") for c in ci]
        if None in ci:
            ci = None
    out["accuracy_ci95"] = ci
    epsilon = entry.get("epsilon", entry.get("max_site_epsilon"))
    out["epsilon"] = float(epsilon) if isinstance(epsilon, (int, float)) and not isinstance(epsilon, bool) else None
    out["test_examples"] = entry.get("test_examples") if isinstance(entry.get("test_examples"), int) else None
    out["notes"] = str(entry.get("notes", "")) if entry.get("notes") else _scenario_note(entry.get("scenario"))
    out["source"] = source
    return out


def from_run_dir(path: Path, name: str | None = None) -> dict[str, Any]:
    """A finished fedpath run as a baseline: its final evaluation and its largest per-site epsilon."""
    if not (path / FINAL_EVAL_FILE).exists():
        raise BaselineError(f"{path}: run directory has no final-eval.json (the run did not finish)")
    report = compose_report(path)
    final, run = report["final"], report["run"]
    dp = bool(run["config"].get("dp", True))
    entry = {
        "name": name or f"run {run.get('run_id')}",
        "kind": "federated" if dp else "federated, non-private",
        **{k: final.get(k) for k in METRIC_KEYS},
        "accuracy_ci95": final.get("ci95", {}).get("accuracy"),
        "epsilon": largest_site_epsilon(report["sites"]) if dp else None,
        "test_examples": final.get("num_examples", run.get("test_examples")),
        "notes": f"{len(report['sites'])} sites, {run.get('rounds_completed')} rounds, weights {run.get('weights_source')}",
    }
    return normalise(entry, str(path), name)


def load(spec: str) -> list[dict[str, Any]]:
    """`NAME=PATH` or `PATH` (a run directory or a JSON file) -> baseline records."""
    name, _, path_text = ("", "", spec) if Path(spec).expanduser().exists() or "=" not in spec else spec.partition("=")
    path = Path(path_text).expanduser()
    if path.is_dir():
        if not (path / RUN_FILE).exists():
            raise BaselineError(f"{path}: a directory baseline must be a fedpath run directory (no run.json)")
        return [from_run_dir(path, name or None)]
    if not path.exists():
        raise BaselineError(f"{path}: no such baseline file or run directory")
    try:
        payload = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BaselineError(f"{path}: not a readable JSON file ({err})") from err
    entries = payload.get("rows") if isinstance(payload, dict) and "rows" in payload else payload
    if isinstance(entries, dict):
        return [normalise(entries, str(path), name or None)]
    if not isinstance(entries, list) or not entries:
        raise BaselineError(f"{path}: expected a baseline object, a non-empty list, or {{\"rows\": [...]}}")
    if len(entries) == 1:
        return [normalise(entries[0], str(path), name or None)]
    out = []
    for i, entry in enumerate(entries):
        label = entry.get("name") or entry.get("label") if isinstance(entry, dict) else None
        out.append(normalise(entry, f"{path} [{i}]", f"{name}: {label}" if name and label else None))
    return out


def save(run_dir: Path, baselines: list[dict[str, Any]]) -> Path:
    """Keep the baselines with the run, so a later plain regeneration still shows them."""
    return RunStore(run_dir).write_json(BASELINES_FILE, {"baselines": baselines})


def stored(run_dir: Path) -> list[dict[str, Any]]:
    """Baselines saved with the run (none if the file is absent); re-checked like fresh ones."""
    path = run_dir / BASELINES_FILE
    if not path.exists():
        return []
    try:
        payload = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise BaselineError(f"{path}: not a readable JSON file ({err})") from err
    return [normalise(entry, str(entry.get("source", path)) if isinstance(entry, dict) else str(path))
            for entry in payload.get("baselines", [])]
