"""Continue a killed run from its last completed round (`resume-from = RUN_DIR`), and only such a run.

Every round the server has already checkpointed the global trainable tensors and appended
the round's line to metrics.jsonl, and FedAvg keeps no other state; so resuming means:
check the checkpoint belongs to this model, load its tensors, and start counting rounds
from there. Simulated sites keep their ledgers under the same run directory, so their
cumulative spend carries over too.

Finished is finished (`check_start`, before anything is loaded or written): a run whose run.json
has its end time is never resumed, so its report is never overwritten by a later run (a resumed
finished run would ask the sites for rounds past the plan, be refused by every site, and replace
the report with one of a failed run); a resumed run must have the configuration it was started
with, which its report states as the one to reproduce it by; and a new run never writes into a
directory that already holds one. Training a finished model further is a new job with its own run
directory and report: `weights = RUN_DIR/checkpoints/final.pt` (docs/DEPLOYMENT.md).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.config.toml_values import toml_value
from common.paths import CHECKPOINTS_DIR, FINAL_CHECKPOINT, REPORT_HTML_FILE, RUN_FILE
from server.run_store import RunStore, load_checkpoint

log = logging.getLogger("fedpath.server")

# What must match between the checkpoint and the model the resumed run builds.
_MUST_MATCH = ("arch", "policy", "classes", "frozen_fingerprint")
# Run-config keys a resumed run may set otherwise: where it is, and how long the server waits for a round.
MAY_DIFFER = ("resume-from", "output-dir", "round-timeout")


class ResumeError(RuntimeError):
    """The run directory cannot be resumed with this configuration."""


@dataclass(frozen=True)
class ResumePoint:
    completed_round: int
    state: dict[str, np.ndarray]


def check_start(run_dir: Path, config: Mapping[str, Any]) -> None:
    """Refuse a run that would overwrite another's records: see the module's docstring.

    `run_dir` is where this run writes (`common.paths.run_dir`); `config` its run config as
    `RunConfig.to_mapping` gives it. Reads run.json only, so a launcher can ask before Flower starts.
    """
    recorded_path = Path(run_dir) / RUN_FILE
    if not config.get("resume-from"):
        if recorded_path.exists():
            raise ResumeError(f"{run_dir} already holds a run (run.json); a new run never writes into another run's "
                              "directory, so its report is never overwritten: choose another output-dir")
        return
    if not recorded_path.exists():
        raise ResumeError(f"resume-from={run_dir} is not a fedpath run directory (no run.json)")
    recorded = json.loads(recorded_path.read_text())
    if recorded.get("end") is not None:
        raise ResumeError(finished_message(Path(run_dir), recorded))
    differ = {key: (recorded["config"][key], value) for key, value in config.items()
              if key not in MAY_DIFFER and key in recorded.get("config", {}) and recorded["config"][key] != value}
    if differ:
        given = ", ".join(f"{k}={new!r}" for k, (_, new) in differ.items())
        original = " ".join(f"{k}={toml_value(old)}" for k, (old, _) in differ.items())
        raise ResumeError(f"resume-from={run_dir} was started with another configuration than this run's ({given}); "
                          f"a resumed run continues the same job: resume with --run-config '{original}' "
                          "(its run.json holds every key), or start a new run")


def finished_message(run_dir: Path, recorded: Mapping[str, Any]) -> str:
    """Why a finished run is not resumed, and the documented way to train its model further."""
    planned = recorded.get("config", {}).get("num-server-rounds", "?")
    return (f"resume-from={run_dir} is a finished run (run.json has its end time; {planned} rounds planned; its "
            f"report is {run_dir / REPORT_HTML_FILE}): resume-from continues only a run that did not finish, and a "
            "finished run's report is never overwritten. To train its model further, start a new job from it: "
            f"--run-config \"weights='{run_dir / CHECKPOINTS_DIR / FINAL_CHECKPOINT}'\" (a new run directory and report; "
            "each site grants the new job from what remains of its own budget). To re-make its report: "
            f"python -m server.report {run_dir}")


def find_resume_point(store: RunStore, meta: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> ResumePoint:
    """The last completed round of `store` and its global tensors, checked against `meta`."""
    if not (store.root / RUN_FILE).exists():
        raise ResumeError(f"resume-from={store.root} is not a fedpath run directory (no run.json)")
    path = store.latest_round_checkpoint()
    if path is None:
        raise ResumeError(f"{store.root} has no round checkpoint yet (checkpoints/round-*.pt); start a new run")
    try:
        payload = load_checkpoint(path)
    except (OSError, ValueError) as err:
        raise ResumeError(str(err)) from err
    saved = payload.get("meta", {})
    for key in _MUST_MATCH:
        if saved.get(key) != meta.get(key):
            raise ResumeError(
                f"checkpoint {path} was made with {key}={saved.get(key)!r}, but this run has {key}={meta.get(key)!r}; "
                "resume with the original configuration (see run.json) or start a new run"
            )
    state = {name: tensor.numpy() for name, tensor in payload.get("trainable", {}).items()}
    wrong = {name: (tuple(v.shape), shapes.get(name)) for name, v in state.items() if tuple(v.shape) != shapes.get(name)}
    if set(state) != set(shapes) or wrong:
        raise ResumeError(
            f"checkpoint {path} does not fit the model: expected tensors {len(shapes)}, found {len(state)}; "
            f"mismatched shapes {list(wrong.items())[:3]}"
        )
    completed = int(payload["round"])
    log.info("resuming %s after round %d (checkpoint %s)", store.root, completed, path.name)
    return ResumePoint(completed, state)
