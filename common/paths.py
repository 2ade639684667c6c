"""Where a run's files live, computed identically by the server and simulated sites, and their names.

Every name a run directory holds is defined here once: the server writes them, the report, a
resumed run, the launcher and the harness read them (what each file holds: `server.run_store`);
so are the names a site's state-dir holds.
"""

from __future__ import annotations

from pathlib import Path

from common.config.run_config import RunConfig, resolve_path

# The checkout: the Flower app's root (pyproject.toml), beside which ../shared/ holds the data.
REPO: Path = Path(__file__).resolve().parent.parent

# What `output-dir/run-<run id>/` holds.
RUN_FILE = "run.json"  # what ran: config, versions, weights, classes (at start; its end time at the end)
METRICS_FILE = "metrics.jsonl"  # one line per evaluated round
FINAL_EVAL_FILE = "final-eval.json"  # the final model's full evaluation
REPORT_FILE = "report.json"
REPORT_HTML_FILE = "report.html"
BASELINES_FILE = "baselines.json"  # baselines attached to the report
AUDIT_FILE = "audit.json"  # the privacy audit's canary scores (audit-canaries > 0)
BN_STATISTICS_FILE = "bn-statistics.bin"  # bn-statistics = public: the statistics the sites are sent
CHECKPOINTS_DIR = "checkpoints"
FINAL_CHECKPOINT = "final.pt"  # in CHECKPOINTS_DIR, with FINAL_CHECKPOINT + ".sha256"
ROUND_CHECKPOINTS = "round-*.pt"  # in CHECKPOINTS_DIR: `round_checkpoint(r)`
SITES_DIR = "sites"  # simulated sites' state (ledger, site log) unless ledger-dir says otherwise


def round_checkpoint(server_round: int) -> str:
    """The name of a round's checkpoint in CHECKPOINTS_DIR (sorts by round)."""
    return f"round-{server_round:04d}.pt"


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


def simulated_site_id(partition_id: int) -> str:
    """The name of the simulated site of Flower's partition `partition_id` (its ledger's directory too)."""
    return f"site-{partition_id}"


# The simulated site (partition id) that trains with a run's audit canaries (`audit-canaries`), and its name in
# replies, records and the report. Here, not in common.audit, so the site can tell it is the one without
# importing the audit (which it loads, lazily, only when a simulation asks for canaries).
AUDITED_PARTITION = 0
AUDITED_SITE = simulated_site_id(AUDITED_PARTITION)
