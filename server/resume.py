"""Continue a killed run from its last completed round (`resume-from = RUN_DIR`).

Every round the server has already checkpointed the global trainable tensors and appended
the round's line to metrics.jsonl, and FedAvg keeps no other state; so resuming means:
check the checkpoint belongs to this model, load its tensors, and start counting rounds
from there. Simulated sites keep their ledgers under the same run directory, so their
cumulative spend carries over too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.paths import RUN_FILE
from server.run_store import RunStore, load_checkpoint

log = logging.getLogger("fedpath.server")

# What must match between the checkpoint and the model the resumed run builds.
_MUST_MATCH = ("arch", "policy", "classes", "frozen_fingerprint")


class ResumeError(RuntimeError):
    """The run directory cannot be resumed with this configuration."""


@dataclass(frozen=True)
class ResumePoint:
    completed_round: int
    state: dict[str, np.ndarray]


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
