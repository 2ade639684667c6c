"""A consortium's next job starts from the last job's global model: `weights=<run>/checkpoints/final.pt`.

In process and fast: `RunStore.save_final` is what the ServerApp calls when a job ends, and
`RunConfig` + `initial_model` is what the server and every site call to build a job's
starting model from `weights` / `weights-sha256`.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

from common.config.run_config import RunConfig
from common.model.factory import initial_model
from common.model.network import frozen_fingerprint, get_trainable_state
from common.model.weights import WeightsError, resolve_weights
from server.run_store import RunStore
from tests.conftest import tiny_run_config

CLASSES = ["benign", "stroma", "tumour"]


def finished_job(weights_file: Path, run_dir: Path) -> tuple[nn.Module, Path]:
    """A job's global model after 'training' (every trainable tensor moved), saved as the ServerApp does."""
    config = RunConfig.from_mapping(tiny_run_config(weights=str(weights_file)))
    model, source = initial_model(config, len(CLASSES))
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))
    meta = {"arch": config.arch, "policy": config.policy, "classes": CLASSES, "weights": source.as_dict(),
            "frozen_fingerprint": frozen_fingerprint(model), "seed": config.seed, "image_size": config.image_size}
    return model, RunStore(run_dir).save_final(model, 8, meta)


def job_config(final: Path, sha256: str) -> RunConfig:
    return RunConfig.from_mapping(tiny_run_config(**{"weights": str(final), "weights-sha256": sha256}))


def test_next_job_starts_from_the_last_jobs_final_model(weights_file: Path, tmp_path: Path) -> None:
    model, final = finished_job(weights_file, tmp_path / "runs" / "run-7")
    digest = (final.parent / "final.pt.sha256").read_text().split()[0]  # what the run wrote next to it
    assert digest == hashlib.sha256(final.read_bytes()).hexdigest()

    continued, source = initial_model(job_config(final, digest), len(CLASSES))
    assert source.kind == "file" and source.sha256 == digest
    assert "run-7/final.pt after round 8" in source.description and "resnet18-selfmade.pth" in source.description
    before, after = model.state_dict(), continued.state_dict()
    assert set(before) == set(after)
    differs = [name for name in before if not name.startswith("fc.") and not torch.equal(before[name], after[name])]
    assert differs == []  # frozen layers, statistics and every trained BatchNorm scale/shift carry over
    trained = [name for name in get_trainable_state(model) if not name.startswith("fc.")]
    assert trained and all(torch.equal(before[name], after[name]) for name in trained)
    # The classification head is new in every job: build_resnet never loads `fc.*` (common/model/network.py).


def test_wrong_hash_and_altered_checkpoint_are_refused(weights_file: Path, tmp_path: Path) -> None:
    _, final = finished_job(weights_file, tmp_path / "run-8")
    with pytest.raises(WeightsError, match="refusing to use it"):
        initial_model(job_config(final, "0" * 64), len(CLASSES))
    final.write_bytes(final.read_bytes() + b"\0")  # altered after the run wrote its sidecar
    with pytest.raises(WeightsError, match="refusing to use it"):
        initial_model(job_config(final, ""), len(CLASSES))  # the sidecar alone catches it


def test_sidecar_is_sha256sum_format_and_round_checkpoints_are_refused(weights_file: Path, tmp_path: Path) -> None:
    model, final = finished_job(weights_file, tmp_path / "run-9")
    if shutil.which("sha256sum"):
        checked = subprocess.run(["sha256sum", "-c", "final.pt.sha256"], cwd=final.parent, capture_output=True,
                                 text=True, check=False)
        assert checked.returncode == 0 and "final.pt: OK" in checked.stdout
    partial = RunStore(tmp_path / "run-9").save_round_checkpoint(3, get_trainable_state(model), {})
    with pytest.raises(WeightsError, match="per-round checkpoint.*checkpoints/final.pt"):
        resolve_weights(str(partial), "resnet18")
