"""The benchmark and experiment harness: output formats, not speeds (those are in BENCHMARKS.md)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from common.config.run_config import ConfigError
from common.wire.reply import largest_site_epsilon
from simulations.harness import bench, experiment
from simulations.harness.bench.model_cost import bench_communication
from simulations.harness.bench.throughput import throughput_once
from simulations.harness.cross_domain import cross_domain_targets
from simulations.harness.publish.experiments import reading
from simulations.harness.results import markdown_table
from simulations.harness.runs import federated
from simulations.harness.scenario import DEFAULTS, Scenario
from simulations.harness.stain_strategy import stain_strategy_targets


def test_communication_bench_prints_one_json_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    bench_communication(quick=True, out=None)
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 3 * 2 * 4  # archs x class counts x policies
    norm_head = next(r for r in rows if r["arch"] == "resnet18" and r["classes"] == 3 and r["policy"] == "norm-head")
    # 2 x 4,800 BatchNorm channels (scale and shift) + a 512 x 3 head with bias
    assert norm_head["values"] == 2 * 4800 + 512 * 3 + 3 and norm_head["raw_bytes"] == 4 * norm_head["values"]
    assert norm_head["default"] and norm_head["wire_bytes"] >= norm_head["raw_bytes"]


def test_throughput_measures_the_sites_training_function() -> None:
    speed = throughput_once("head", 16, dp=True, images=64, batch=32, seed=0)
    assert speed > 0


def test_bench_writes_its_command_and_machine_beside_the_lines(tmp_path: Path) -> None:
    out = tmp_path / "communication.jsonl"
    assert bench.main(["communication", "--out", str(out)]) == 0
    meta = json.loads(out.with_name(out.name + ".meta.json").read_text())
    assert meta["command"] == "python -m simulations.harness.bench communication"
    assert meta["machine"]["cores"] >= 1 and "torch" in meta["versions"]
    assert len(out.read_text().splitlines()) == 24


def test_experiment_skips_clearly_without_the_real_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert experiment.main(["baselines", "--quick", "--data", str(tmp_path / "absent"), "--out", str(tmp_path)]) == 0
    assert "skipped: LC25000 lung data not found" in capsys.readouterr().err


def test_scenario_run_config_is_valid_for_the_app() -> None:
    scenario = Scenario("x", "synthetic", image_size=32, rounds=2, sites=3, epsilon=2.0, dp=True)
    config = scenario.config()
    assert (config.epsilon, config.image_size, config.num_server_rounds, config.partitioning) == (2.0, 32, 2, "dirichlet")
    # What a scenario does not set is pyproject's default, written once there.
    assert (config.lr, config.batch_size, config.bootstrap_samples) == (DEFAULTS.lr, DEFAULTS.batch_size,
                                                                        DEFAULTS.bootstrap_samples)


def test_largest_site_epsilon_reads_the_sites_of_a_report() -> None:
    sites = [{"dp": True, "epsilon": 1.5}, {"dp": True, "epsilon": None}, {"dp": True, "epsilon": 7.9}]
    assert largest_site_epsilon(sites) == 7.9
    assert largest_site_epsilon([{"dp": True, "epsilon": None}, {"dp": False, "epsilon": 99.0}]) is None


def test_markdown_table_states_whether_targets_are_met() -> None:
    rows = [{"label": "pooled non-private", "kind": "centralised", "accuracy": 0.9, "accuracy_ci95": [0.88, 0.92]},
            {"label": "FedAvg DP", "kind": "federated", "accuracy": 0.87, "accuracy_ci95": [0.85, 0.89],
             "max_site_epsilon": 7.99}]
    text = markdown_table({"rows": rows, "targets": {
        "dp_minus_pooled_points": -3.0, "within_2_points_of_pooled": False,
        "dp_minus_mean_local_points": 10.0, "above_mean_local_only": True}})
    assert "90.0 (88.0-92.0)" in text and "7.99" in text and "NOT met" in text


def _federated(accuracy: float, ci: tuple[float, float], **scenario: object) -> dict:
    return {"kind": "federated", "accuracy": accuracy, "accuracy_ci95": list(ci),
            "rounds": [{"round": 0, "accuracy": 0.5}], "scenario": scenario}


def test_published_reading_follows_the_numbers_not_the_other_way_round() -> None:
    def eps(accuracy: float, ci: tuple[float, float]) -> dict:
        return _federated(accuracy, ci, policy="norm-head")

    flat = {"experiment": "privacy-utility", "rows": [eps(0.88, (0.86, 0.90)), eps(0.89, (0.87, 0.91))]}
    steep = {"experiment": "privacy-utility", "rows": [eps(0.70, (0.68, 0.72)), eps(0.89, (0.87, 0.91))]}
    assert "overlapping 95% CIs" in reading(flat) and "no measurable accuracy" in reading(flat)
    assert "do not all overlap" in reading(steep) and "no measurable" not in reading(steep)

    stain = {"experiment": "heterogeneity", "rows": [
        _federated(0.88, (0, 1), stain_shift=0.0), _federated(0.87, (0, 1), stain_shift=0.0),
        _federated(0.80, (0, 1), stain_shift=0.5)]}
    assert "costs 7.5 points" in reading(stain) and "hurts more than class mix" in reading(stain)
    skew = {"experiment": "heterogeneity", "rows": [
        _federated(0.88, (0, 1), stain_shift=0.0), _federated(0.78, (0, 1), stain_shift=0.0),
        _federated(0.83, (0, 1), stain_shift=0.5)]}
    assert "hurts more" not in reading(skew)

    transfer = {"experiment": "transfer", "rows": [
        _federated(0.9, (0, 1), weights="pre.pth", policy="head", dp=True),
        _federated(0.6, (0, 1), weights="none", policy="head", dp=True)]}
    assert "head DP +30.0" in reading(transfer)


def _cell(setting: str, stain: str, strategy: str, accuracy: float, start: float | None = None) -> dict:
    return {"kind": "federated", "accuracy": accuracy, "accuracy_ci95": [accuracy - 0.01, accuracy + 0.01],
            "setting": setting, "stain": stain, "strategy": strategy, "label": f"{setting} {stain} {strategy}",
            **({"rounds": [{"round": 0, "accuracy": start}]} if start is not None else {})}


def test_stain_strategy_targets_pick_the_best_harsh_lever_and_check_it_on_the_mild_setting() -> None:
    rows = [_cell("mild", "none", "fedavg", 0.89), _cell("harsh", "none", "fedavg", 0.81),
            _cell("harsh", "normalize", "fedavg", 0.87), _cell("mild", "normalize", "fedavg", 0.885),
            _cell("harsh", "augment", "fedprox", 0.84), _cell("mild", "augment", "fedprox", 0.90)]
    t = stain_strategy_targets(rows)
    assert t["best_lever"] == "stain normalize, fedavg"
    assert t["loss_points"] == 8.0 and t["recovered_points"] == 6.0 and t["mild_change_points"] == -0.5
    assert t["recovers_half"] and t["reaches_target_accuracy"] and t["no_mild_loss"]
    text = reading({"experiment": "stain-strategy", "rows": rows, "targets": t})
    assert "stain normalize, fedavg, reaches 87.0" in text and "+6.0 points (half the loss: met" in text
    assert "One run per cell" in text and "round 0" not in text  # made-up rows carry no round history

    repeated = [*rows, _cell("harsh", "none", "fedavg", 0.75)]  # the reference cell run twice: 81% and 75%
    t = stain_strategy_targets(repeated)
    assert t["harsh_reference_accuracy"] == pytest.approx(0.78) and t["repeated"] == {"stain none, fedavg": [0.81, 0.75]}
    assert t["harsh_by_strategy"]["fedavg"] == pytest.approx((0.78 + 0.87) / 2)
    assert "stain none, fedavg: 81.0%, 75.0%" in reading({"experiment": "stain-strategy", "rows": repeated, "targets": t})

    worse = [_cell("mild", "none", "fedavg", 0.89), _cell("harsh", "none", "fedavg", 0.81),
             _cell("harsh", "augment", "fedadam", 0.83), _cell("mild", "augment", "fedadam", 0.85)]
    t = stain_strategy_targets(worse)
    assert not t["recovers_half"] and not t["reaches_target_accuracy"] and not t["no_mild_loss"]
    assert "NOT met" in reading({"experiment": "stain-strategy", "rows": worse, "targets": t})

    started = [_cell("mild", "none", "fedavg", 0.89, start=0.88), _cell("harsh", "none", "fedavg", 0.81, start=0.88),
               _cell("harsh", "none", "fedadam", 0.87, start=0.88)]
    text = reading({"experiment": "stain-strategy", "rows": started, "targets": stain_strategy_targets(started)})
    assert "scores 88.0% (3 rows, 1 of them end above it)" in text


def test_a_kept_run_is_reused_only_while_its_run_config_is_unchanged(tmp_path: Path) -> None:
    scenario = Scenario("tiny, kept", "synthetic", image_size=16, rounds=1, sites=2)
    saved = tmp_path / "rows" / "tiny--kept.json"
    saved.parent.mkdir()
    saved.write_text(json.dumps({"run_config": scenario.run_config(), "row": {"label": "kept", "accuracy": 0.5}}))
    assert federated(scenario, tmp_path) == {"label": "kept", "accuracy": 0.5}  # no flwr run started
    elsewhere = dataclasses.replace(scenario, dataset=str(tmp_path / "absent"))  # same label, another run config
    with pytest.raises(ConfigError, match="not found"):  # not reused: a real run is attempted, its pre-flight finds no data
        federated(elsewhere, tmp_path)
    assert json.loads(saved.read_text())["row"] == {"label": "kept", "accuracy": 0.5}


def test_cross_domain_reading_names_where_the_remedy_falls_short() -> None:
    def row(policy: str, start: str, statistics: str, accuracy: float) -> dict:
        return {"kind": "federated", "accuracy": accuracy, "pair": "synthetic", "policy": policy, "start": start,
                "bn_statistics": statistics, "label": f"{policy} {start} {statistics}"}

    rows = [row("head", "scratch", "backbone", 0.76), row("head", "scratch", "public", 0.66),
            row("head", "pretrained", "backbone", 0.44), row("head", "pretrained", "public", 0.77),
            row("full", "scratch", "backbone", 0.46), row("full", "pretrained", "public", 0.33)]
    targets = cross_domain_targets(rows)
    assert targets["synthetic/head"]["remedy_reaches_scratch"] and not targets["all_pairs_reach_scratch"]
    text = reading({"experiment": "cross-domain", "rows": rows, "targets": targets})
    assert "synthetic/head: backbone's statistics -32.0, public-share statistics +1.0" in text
    assert "reaches scratch for synthetic/head and not for synthetic/full" in text
