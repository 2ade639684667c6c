"""Where a run's files live, computed identically by the server and simulated sites."""

from __future__ import annotations

from pathlib import Path

from common.config import RunConfig, resolve_path


def run_dir(config: RunConfig, run_id: int) -> Path:
    """`output-dir/run-<flower run id>`, or the directory being resumed."""
    if config.resume_from:
        return resolve_path(config.resume_from)
    return resolve_path(config.output_dir) / f"run-{run_id}"
