"""Everything a run writes under its directory, written so that a crash loses nothing.

The names are `common.paths`' (one definition for every reader):

    run.json            what ran: config, versions, weights, classes, sites (at start)
    metrics.jsonl       one JSON line per evaluated round, appended and fsynced
    checkpoints/        round-NNNN.pt (trainable tensors) per round, final.pt (full model)
                        and final.pt.sha256 (`sha256sum` format) for the next job's weights=
    final-eval.json     the final model's full evaluation
    report.json/.html   composed from the above by `server.report` (baselines.json: baselines attached)
    audit.json          the privacy audit's canary scores (audit-canaries > 0, `server.privacy_audit`)
    bn-statistics.bin   bn-statistics = public: the statistics sent to the sites (`server.target_statistics`)
    sites/site-K/       simulated sites' ledgers and logs (`client.identity`)

Per-round checkpoints hold only the trainable tensors (what changes); together with the
weights source recorded in run.json they rebuild the model exactly, and `final.pt` is a
complete, self-contained state dict, which `weights=` accepts (common/model/weights.py), so the
next job of a consortium can start from it; its `.sha256` sidecar is checked on load.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from common.files import atomic_file, atomic_write_json, atomic_write_text
from common.model.weights import FEDPATH_CHECKPOINT_FORMAT, sha256_of
from common.paths import CHECKPOINTS_DIR, FINAL_CHECKPOINT, METRICS_FILE, ROUND_CHECKPOINTS, round_checkpoint

CHECKPOINT_FORMAT = FEDPATH_CHECKPOINT_FORMAT


def jsonable(value: Any) -> Any:
    """JSON-safe copy: NaN/Inf become None, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    return value


class RunStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.checkpoints = root / CHECKPOINTS_DIR
        self.checkpoints.mkdir(parents=True, exist_ok=True)

    @property
    def metrics_path(self) -> Path:
        return self.root / METRICS_FILE

    def write_json(self, name: str, payload: dict[str, Any]) -> Path:
        path = self.root / name
        atomic_write_json(path, jsonable(payload))
        return path

    def read_json(self, name: str) -> dict[str, Any]:
        return json.loads((self.root / name).read_text())

    def append_round(self, line: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(jsonable(line), allow_nan=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def rounds(self) -> list[dict[str, Any]]:
        """The recorded rounds; the latest line for a round wins (a resumed run may redo one)."""
        if not self.metrics_path.exists():
            return []
        by_round: dict[int, dict[str, Any]] = {}
        for text in self.metrics_path.read_text().splitlines():
            if not text.strip():
                continue
            try:
                line = json.loads(text)
            except json.JSONDecodeError:
                continue  # a line torn by a crash mid-write
            by_round[int(line["round"])] = line
        return [by_round[r] for r in sorted(by_round)]

    def save_round_checkpoint(self, server_round: int, trainable: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
        path = self.checkpoints / round_checkpoint(server_round)
        payload = {
            "format": CHECKPOINT_FORMAT,
            "kind": "trainable",
            "round": server_round,
            "meta": meta,
            "trainable": {k: torch.from_numpy(np.array(v)) for k, v in trainable.items()},
        }
        _atomic_torch_save(payload, path)
        return path

    def save_final(self, model: nn.Module, server_round: int, meta: dict[str, Any]) -> Path:
        """The whole final model, and `final.pt.sha256` so a later job can pin it (`weights-sha256`).

        The old sidecar goes first: a crash between the two writes leaves a checkpoint without a
        sidecar (loaded unchecked, unless weights-sha256 is given), never one with a wrong one.
        """
        path = self.checkpoints / FINAL_CHECKPOINT
        sidecar = path.with_name(path.name + ".sha256")
        payload = {
            "format": CHECKPOINT_FORMAT,
            "kind": "full",
            "round": server_round,
            "meta": meta,
            "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        }
        sidecar.unlink(missing_ok=True)
        _atomic_torch_save(payload, path)
        atomic_write_text(sidecar, f"{sha256_of(path)}  {path.name}\n")
        return path

    def latest_round_checkpoint(self) -> Path | None:
        found = sorted(self.checkpoints.glob(ROUND_CHECKPOINTS))
        return found[-1] if found else None


def _atomic_torch_save(payload: dict[str, Any], path: Path) -> None:
    with atomic_file(path, "wb") as handle:
        torch.save(payload, handle)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A fedpath checkpoint, with a clear error for anything else."""
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"cannot read checkpoint {path}: {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a fedpath checkpoint (expected format {CHECKPOINT_FORMAT})")
    return payload
