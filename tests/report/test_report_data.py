"""report.json: its schema, per-site bookkeeping, incomplete runs and baselines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.report import baselines as report_baselines
from server.report import main, write_report
from server.report.compose import communication, compose_report, site_summaries
from tests.helpers.report_support import BUDGET, DELTA, build_run_dir, check_schema, site_reply


def test_a_finished_run_has_every_key(tmp_path: Path) -> None:
    run_dir = build_run_dir(tmp_path, rounds=3, sites=3)
    report = compose_report(run_dir)
    check_schema(report)
    assert report["run"]["complete"] and report["run"]["incomplete_reason"] is None
    assert report["run"]["duration_s"] == 95.0 and report["run"]["rounds_completed"] == 3
    assert [s["site_id"] for s in report["sites"]] == ["site-0", "site-1", "site-2"]
    site = report["sites"][0]
    assert site["rounds_participated"] == [1, 2, 3] and site["epsilon"] == pytest.approx(BUDGET * 0.9999)
    assert site["delta"] == DELTA and site["num_examples"] == 130 and site["class_counts"] == [31, 35, 31, 36]
    assert len(report["communication"]["per_site_round"]) == 9  # 3 sites x 3 rounds
    assert report["communication"]["per_site"][0] == {"site_id": "site-0", "bytes_down": 3 * 51984,
                                                       "bytes_up": 3 * 51984, "replies": 3}
    assert "200 resamples" in report["final"]["ci95_method"]


def test_sites_without_update_are_listed_with_their_reasons() -> None:
    rounds = [
        {"round": 1, "sites": [site_reply(0, 1, 3), site_reply(1, 1, 3)]},
        {"round": 2, "sites": [site_reply(0, 2, 3, "refused", "round would spend epsilon to 8.4 > budget 8"),
                               site_reply(1, 2, 3, "failed", "DataError: x.png is not an image")]},
        {"round": 3, "sites": [site_reply(0, 3, 3, "rejected", "update norm 412 exceeds the DP bound 35"),
                               site_reply(1, 3, 3)]},
    ]
    by_id = {s["site_id"]: s for s in site_summaries(rounds, {"dp": True, "max-grad-norm": 1.0})}
    assert set(by_id) == {"site-0", "site-1"}  # the failed node 1001 is site-1, known from its other replies
    zero, one = by_id["site-0"], by_id["site-1"]
    assert zero["refused_rounds"] == [2] and zero["rejected_rounds"] == [3] and zero["failed_rounds"] == []
    assert zero["rounds_participated"] == [1, 3]  # a rejected update was trained (privacy spent), not averaged
    assert one["failed_rounds"] == [2] and one["rounds_participated"] == [1, 3]
    assert zero["reasons"] == [
        {"round": 2, "status": "refused", "reason": "round would spend epsilon to 8.4 > budget 8"},
        {"round": 3, "status": "rejected", "reason": "update norm 412 exceeds the DP bound 35"},
    ]
    assert zero["epsilon"] == pytest.approx(BUDGET * 0.9999)  # the largest cumulative spend reported
    comm = communication(rounds)
    assert {e["site_id"] for e in comm["per_site_round"]} == {"site-0", "site-1"}
    assert comm["total_bytes_up"] == 4 * 51984  # refused and failed replies sent nothing back


def test_a_site_that_never_answered_has_no_made_up_privacy_numbers() -> None:
    summary = site_summaries([{"round": 1, "sites": [site_reply(4, 1, 2, "failed", "timeout")]}], {"dp": True})
    assert summary[0]["site_id"] == "node-1004" and summary[0]["epsilon"] is None
    assert summary[0]["epsilon_budget"] is None and "no privacy loss is recorded" in summary[0]["privacy_statement"]


def test_a_non_private_run_reports_no_epsilon(tmp_path: Path) -> None:
    report = compose_report(build_run_dir(tmp_path, dp=False))
    check_schema(report)
    assert all(s["epsilon"] is None and s["dp"] is False for s in report["sites"])
    assert all("WITHOUT differential privacy" in s["privacy_statement"] for s in report["sites"])


def test_site_order_is_natural() -> None:
    rounds = [{"round": 1, "sites": [site_reply(s, 1, 1) for s in (10, 2, 1)]}]
    assert [s["site_id"] for s in site_summaries(rounds, {})] == ["site-1", "site-2", "site-10"]


def test_an_incomplete_run_reports_what_exists(tmp_path: Path) -> None:
    run_dir = build_run_dir(tmp_path, rounds=4, complete=False)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    (run_dir / "metrics.jsonl").write_text("\n".join(lines[:3]) + '\n{"round": 3, "accur')  # torn by a crash
    report = compose_report(run_dir)
    check_schema(report)
    assert not report["run"]["complete"] and report["final"] is None
    assert [r["round"] for r in report["rounds"]] == [0, 1, 2]
    assert "no final evaluation" in report["run"]["incomplete_reason"]
    assert "rounds up to 2 of 4 planned" in report["run"]["incomplete_reason"]


def test_a_run_that_crashed_before_round_0_still_gets_a_report(tmp_path: Path) -> None:
    run_dir = build_run_dir(tmp_path, complete=False)
    (run_dir / "metrics.jsonl").unlink()
    paths = write_report(run_dir, strict=True)
    assert [p.name for p in paths] == ["report.json", "report.html"]
    report = json.loads(paths[0].read_text())
    assert report["rounds"] == [] and report["sites"] == [] and "no round of 3 planned" in report["run"][
        "incomplete_reason"]


# ---- baselines ---------------------------------------------------------------------------------------


def test_baseline_json_formats(tmp_path: Path) -> None:
    single = tmp_path / "pooled.json"
    single.write_text(json.dumps({"name": "pooled non-private", "kind": "pooled", "accuracy": 0.887,
                                  "accuracy_ci95": [0.875, 0.898], "macro_f1": 0.88, "test_examples": 160}))
    [pooled] = report_baselines.load(str(single))
    assert pooled == {"name": "pooled non-private", "kind": "pooled", "accuracy": 0.887,
                      "accuracy_ci95": [0.875, 0.898], "balanced_accuracy": None, "macro_f1": 0.88,
                      "macro_auc": None, "ece": None, "epsilon": None, "test_examples": 160, "notes": "",
                      "source": str(single)}
    assert report_baselines.load(f"renamed={single}")[0]["name"] == "renamed"

    harness = tmp_path / "results.json"  # the benchmark harness' results.json
    harness.write_text(json.dumps({"rows": [
        {"label": "local-only, mean of sites", "kind": "summary", "accuracy": 0.72, "accuracy_ci95": None},
        {"label": "FedAvg DP (epsilon=8)", "kind": "federated", "accuracy": 0.889, "max_site_epsilon": 7.99,
         "scenario": {"dataset": "/data/lc25000-lung", "image_size": 32, "sites": 10, "rounds": 4}},
    ]}))
    rows = report_baselines.load(f"bench={harness}")
    assert [r["name"] for r in rows] == ["bench: local-only, mean of sites", "bench: FedAvg DP (epsilon=8)"]
    assert rows[1]["epsilon"] == 7.99 and rows[1]["notes"] == "lc25000-lung, 32 px, 10 sites, 4 rounds"

    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([{"name": "a", "accuracy": 0.5}, {"name": "b", "accuracy": 0.6}]))
    assert [r["name"] for r in report_baselines.load(str(listed))] == ["a", "b"]


@pytest.mark.parametrize(("content", "message"), [
    ({"accuracy": 0.8}, "needs a 'name'"),
    ({"name": "x"}, "has no 'accuracy'"),
    ({"name": "x", "accuracy": 88.7}, "not a percentage"),
    ({"name": "x", "accuracy": "high"}, "must be a number"),
    ({"name": "x", "accuracy": 0.8, "accuracy_ci95": [0.7]}, "must be [low, high]"),
    ([], "non-empty list"),
])
def test_bad_baselines_are_refused_with_the_reason(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(report_baselines.BaselineError, match=message.replace("[", r"\[")) as err:
        report_baselines.load(str(path))
    assert str(path) in str(err.value)


def test_another_run_directory_as_a_baseline(tmp_path: Path) -> None:
    other = build_run_dir(tmp_path / "other", dp=False)
    [row] = report_baselines.load(f"non-private={other}")
    final = json.loads((other / "final-eval.json").read_text())
    assert row["name"] == "non-private" and row["kind"] == "federated, non-private" and row["epsilon"] is None
    assert row["accuracy"] == final["accuracy"] and row["accuracy_ci95"] == final["ci95"]["accuracy"]
    unfinished = build_run_dir(tmp_path / "unfinished", complete=False)
    with pytest.raises(report_baselines.BaselineError, match="did not finish"):
        report_baselines.load(str(unfinished))
    with pytest.raises(report_baselines.BaselineError, match="no such baseline"):
        report_baselines.load(str(tmp_path / "missing.json"))


@pytest.mark.slow  # renders the report several times
def test_command_adds_keeps_and_clears_baselines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = build_run_dir(tmp_path / "fed")
    pooled = tmp_path / "pooled.json"
    pooled.write_text(json.dumps({"name": "pooled", "accuracy": 0.9}))
    assert main([str(run_dir), "--baseline", str(pooled)]) == 0
    assert capsys.readouterr().out.split() == [str(run_dir / "report.json"), str(run_dir / "report.html")]
    assert [b["name"] for b in json.loads((run_dir / "report.json").read_text())["baselines"]] == ["pooled"]

    assert main([str(run_dir)]) == 0  # a plain regeneration keeps them (RUN_DIR/baselines.json)
    assert [b["name"] for b in json.loads((run_dir / "report.json").read_text())["baselines"]] == ["pooled"]
    pooled.write_text(json.dumps({"name": "pooled", "accuracy": 0.95}))
    assert main([str(run_dir), "--baseline", str(pooled)]) == 0  # the same name again replaces it
    assert [b["accuracy"] for b in json.loads((run_dir / "report.json").read_text())["baselines"]] == [0.95]

    assert main([str(run_dir), "--clear-baselines"]) == 0
    assert json.loads((run_dir / "report.json").read_text())["baselines"] == []


def test_command_refuses_what_is_not_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path)]) == 2
    assert "not a fedpath run directory" in capsys.readouterr().err
    run_dir = build_run_dir(tmp_path / "fed")
    assert main([str(run_dir), "--baseline", str(tmp_path / "nope.json")]) == 2
    assert "no such baseline" in capsys.readouterr().err
    assert not (run_dir / "report.json").exists()
