"""The report of a real `flwr run` simulation: written by the ServerApp, re-made by the command."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from markupsafe import escape

from common.audit.bound import ceiling
from common.audit.canaries import run_coin_flips
from common.privacy.ledger import LEDGER_FILE
from tests.helpers.report_support import SECTION_IDS, Page, assert_self_contained, check_schema, png_sizes

pytestmark = pytest.mark.integration


def test_the_server_writes_both_reports_at_the_end_of_a_run(tiny_simulation_run: Path) -> None:
    run_dir = tiny_simulation_run
    report = json.loads((run_dir / "report.json").read_text())
    check_schema(report)
    assert report["run"]["complete"] and [r["round"] for r in report["rounds"]] == [0, 1, 2]
    for site in report["sites"]:
        ledger = json.loads((run_dir / "sites" / site["site_id"] / LEDGER_FILE).read_text())
        assert site["epsilon"] == pytest.approx(ledger["epsilon_spent"]) and site["epsilon"] <= site["epsilon_budget"]

    # Written inside Flower (the app as a FAB): the template, a .py module, travelled with it.
    text = (run_dir / "report.html").read_text()
    page = assert_self_contained(text)
    assert page.title == f"fedpath report: run {report['run']['run_id']}"
    assert all(section in page.ids for section in SECTION_IDS)
    assert report["run"]["weights_source"] == "none" and "weights-warning" in page.ids  # scratch, and it says so
    assert len(png_sizes(text)) == 4
    for site in report["sites"]:
        assert escape(site["privacy_statement"]) in text
        # issue 24: this job's ε from the real replies' σ, q, steps, never above the ledger's cumulative ε
        assert 0 < site["epsilon_this_job"] <= site["epsilon"] * (1 + 1e-9)
        assert f"[unit of privacy: one {site['privacy_unit']}" in site["privacy_statement"]
    level = report["final"]["patient_level"]  # the synthetic test set names its slides
    assert level["patches"] == report["final"]["num_examples"] and 0 < level["patients"] < level["patches"]
    assert "patients" in page.ids
    # The strategy and its hyper-parameters (Flower's FedAdam defaults) are stated, with the full config.
    assert report["run"]["config"]["strategy"] == "fedadam"
    assert "<dt>Strategy</dt><dd>fedadam (server-lr 0.1, beta-1 0.9, beta-2 0.99, tau 0.001)" in text
    # audit-canaries=40: site-0 trained with canaries; the server scored them from the models sent and returned.
    # 40 canaries can prove at most ε ≈ 2 (every guess right), below the ε ≈ 8 the site claims: the audit
    # cannot contradict that claim whatever the implementation does, and the report must say so rather than
    # call the site "consistent" (the audit's power and failures: tests/audit/test_audit_gradient_canaries.py).
    [audited] = report["privacy_audit"]["sites"]
    site0 = next(s for s in report["sites"] if s["site_id"] == "site-0")
    assert audited["site_id"] == "site-0" and audited["rounds"] == [1, 2] and audited["canaries"] == 40
    assert audited["claimed_epsilon"] == site0["epsilon"]
    assert audited["ceiling"] == ceiling(run_coin_flips(1, 40), audited["delta"]) < audited["claimed_epsilon"]
    assert audited["verdict"] == "inconclusive" and "cannot contradict the claim" in report["privacy_audit"]["reading"]
    assert 0 <= audited["epsilon_lower_bound"] <= audited["ceiling"] and 0 <= audited["canary_auc"] <= 1
    assert "privacy-audit" in page.ids and report["privacy_audit"]["reading"] in text


def test_the_command_remakes_the_report_without_retraining(tiny_simulation_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / tiny_simulation_run.name
    shutil.copytree(tiny_simulation_run, copy, ignore=shutil.ignore_patterns("report.*", "checkpoints"))
    script = Path(sys.executable).with_name("fedpath-report")  # the console script pyproject.toml declares
    assert script.exists(), f"{script} missing: is fedpath installed in this environment (pip install -e .)?"
    for command in ([sys.executable, "-m", "server.report", str(copy)], [str(script), str(copy)]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.split() == [str(copy / "report.json"), str(copy / "report.html")]

    original = json.loads((tiny_simulation_run / "report.json").read_text())
    remade = json.loads((copy / "report.json").read_text())
    for key in ("rounds", "final", "sites", "communication"):
        assert remade[key] == original[key], key  # the same facts, from the run's records alone
    assert remade["run"]["config"] == original["run"]["config"]
    assert Page((copy / "report.html").read_text()).title == Page((tiny_simulation_run / "report.html").read_text()).title
