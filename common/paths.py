"""Where a run's files live, computed identically by the server and simulated sites."""

from __future__ import annotations

from pathlib import Path

from common.config.run_config import RunConfig, resolve_path

# The checkout: the Flower app's root (pyproject.toml), beside which ../shared/ holds the data.
REPO: Path = Path(__file__).resolve().parent.parent


def run_dir(config: RunConfig, run_id: int) -> Path:
    """`output-dir/run-<flower run id>`, or the directory being resumed."""
    if config.resume_from:
        return resolve_path(config.resume_from)
    return resolve_path(config.output_dir) / f"run-{run_id}"


def simulated_site_id(partition_id: int) -> str:
    """The name of the simulated site of Flower's partition `partition_id` (its ledger's directory too)."""
    return f"site-{partition_id}"
