"""Where a run's files live, computed identically by the server and simulated sites; a site's state-dir names."""

from __future__ import annotations

from pathlib import Path

from common.config.run_config import RunConfig, resolve_path

# The checkout: the Flower app's root (pyproject.toml), beside which ../shared/ holds the data.
REPO: Path = Path(__file__).resolve().parent.parent

# A site's state-dir (simulation: <run>/sites/site-K): its privacy ledger, its own log of every round and its split
# key (the ledger's integrity key is named in common.privacy.integrity).
LEDGER_FILE = "privacy-ledger.json"
SITE_LOG = "site-rounds.jsonl"
SPLIT_KEY_FILE = "split-key"


def run_dir(config: RunConfig, run_id: int) -> Path:
    """`output-dir/run-<flower run id>`, or the directory being resumed."""
    if config.resume_from:
        return resolve_path(config.resume_from)
    return resolve_path(config.output_dir) / f"run-{run_id}"
