"""Hostile or broken updates are excluded from FedAvg, logged with the site, and counted."""

from __future__ import annotations

import numpy as np
import pytest

from client.identity import SiteIdentity
from client.round_types import RoundRequest
from client.site import run_round
from common.config.run_config import RunConfig
from common.data.sources import dataset_classes
from common.model.factory import initial_model
from common.model.network import frozen_fingerprint, get_trainable_state
from common.wire import reply as wire
from common.wire.records import from_array_record
from server.app import _round_summary
from server.report.compose import site_summaries
from server.screening import TrainingBound, UpdateScreen, dp_update_norm_bound
from server.strategy import FedPathFedAvg
from tests.conftest import tiny_run_config
from tests.helpers.flower_messages import BOUND, REFERENCE, reply_message


def _small(scale: float) -> dict[str, np.ndarray]:
    return {k: np.full_like(v, scale) for k, v in REFERENCE.items()}


def test_broken_and_hostile_updates_are_excluded_and_recorded(flower_process: None) -> None:
    strategy = FedPathFedAvg(screen=UpdateScreen(REFERENCE, dp_bound=BOUND), min_train_nodes=1, min_available_nodes=1)
    nan = _small(0.1)
    nan["a"][0, 0] = np.nan
    replies = [
        reply_message(1, _small(0.1), examples=10),
        reply_message(2, _small(0.4), examples=30),
        reply_message(3, nan),
        reply_message(4, {"a": REFERENCE["a"]}),  # missing tensor
        reply_message(5, {**_small(0.1), "c": np.zeros(1, np.float32)}),  # extra tensor
        reply_message(6, {"a": np.zeros((3, 2), np.float32), "b": REFERENCE["b"]}),  # wrong shape
        reply_message(7, {k: v.astype(np.float64) for k, v in _small(0.1).items()}),  # wrong dtype
        reply_message(8, _small(1e4)),  # far beyond what clipped DP-SGD can move
        reply_message(9, _small(0.1), examples=-3),
        reply_message(10, None, error="site crashed"),
        reply_message(11, _small(0.1), extra_metric="train-loss"),  # a value the schema does not declare
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    averaged = from_array_record(arrays)
    assert np.allclose(averaged["a"], (10 * 0.1 + 30 * 0.4) / 40)  # only sites 1 and 2, weighted by examples
    status = {r.site_id: (r.status, r.reason) for r in strategy.replies[1]}
    assert status["site-1"][0] == status["site-2"][0] == "trained"
    expected = {"site-3": "NaN or Inf", "site-4": "missing ['b']", "site-5": "extra ['c']", "site-6": "shape",
                "site-7": "dtype float64", "site-8": "beyond what this round's clipped training",
                "site-9": "num-examples must be a positive number"}
    assert status["node-11"][0] == "rejected" and "undeclared keys ['train-loss']" in status["node-11"][1]
    for site, reason in expected.items():
        assert status[site][0] == "rejected" and reason in status[site][1], status[site]
    assert status["node-10"] == ("failed", "site crashed")

    summary = site_summaries([{"round": 1, "sites": [r.as_dict() for r in strategy.replies[1]]}], {"dp": True})
    rejected = {s["site_id"] for s in summary if s["rejected_rounds"] == [1]}
    assert rejected == set(expected) | {"node-11"}


def test_round_keeps_the_model_when_too_few_updates_remain(flower_process: None) -> None:
    strategy = FedPathFedAvg(screen=UpdateScreen(REFERENCE, dp_bound=BOUND), min_accepted_updates=2,
                             min_train_nodes=1, min_available_nodes=1)
    arrays, metrics = strategy.aggregate_train(1, [reply_message(1, _small(0.1)), reply_message(2, _small(1e4))])
    assert arrays is None and metrics is None


@pytest.mark.slow  # site rounds, sigma calibrated
def test_real_dp_updates_pass_the_automatic_bound(tmp_path) -> None:
    """No false alarms: a genuine DP-SGD round moves the weights far less than the bound."""
    config = RunConfig.from_mapping(tiny_run_config(lr=0.5))
    classes = dataset_classes(config)
    model, _ = initial_model(config, len(classes))
    start = get_trainable_state(model)
    identity = SiteIdentity("site-0", False, tmp_path, 8.0, 1e-4, partition_id=0, num_partitions=2,
                            epsilon_per_job=8.0)
    result = run_round(identity, config, RoundRequest(1, 1, start, classes, frozen_fingerprint(model)))
    norm = float(np.sqrt(sum(np.sum((result.update[k] - start[k]) ** 2) for k in start)))
    bound = TrainingBound(config.lr, config.momentum, config.max_grad_norm, config.local_epochs, config.batch_size)
    limit = dp_update_norm_bound(bound, result.metrics["num-examples"], result.metrics["noise-multiplier"],
                                 sum(v.size for v in start.values()))
    assert 0 < norm < limit / 2
    assert UpdateScreen(start, dp_bound=bound).check(result.update, result.metrics) == ""


def test_flower_logs_only_aggregates_that_mean_something(flower_process: None) -> None:
    strategy = FedPathFedAvg(screen=UpdateScreen(REFERENCE, dp_bound=BOUND), min_train_nodes=1, min_available_nodes=1)
    _, metrics = strategy.aggregate_train(1, [reply_message(1, _small(0.1), examples=10), reply_message(2, _small(0.2), examples=30)])
    assert dict(metrics) == {"sites-aggregated": 2, "examples-aggregated": 40, "largest-site-epsilon": 1.0}


def test_largest_site_epsilon_counts_only_dp_sites_that_reported_one() -> None:
    """The one definition the round log, the report and the experiments share."""
    entries = [{"dp": 1, "epsilon": 2.5}, {"dp": 0, "epsilon": 9.0}, {"dp": 1, "epsilon": float("nan")},
               {"dp": True, "epsilon": None}, {"dp": 1, "epsilon": 3}]
    assert wire.largest_site_epsilon(entries) == 3.0
    assert wire.largest_site_epsilon(entries[1:2]) is None and wire.largest_site_epsilon([]) is None


def test_the_round_log_counts_only_sites_that_trained_this_round() -> None:
    def site(status: str, epsilon: float) -> dict:
        return {"status": status, "metrics": {"dp": 1, "epsilon": epsilon}, "bytes_down": 1024, "bytes_up": 2048}

    text = _round_summary([site("trained", 2.5), site("refused", 9.0), site("trained", 3.0)])
    assert "max site epsilon 3.00" in text and "1 site(s) without update" in text
    assert "max site epsilon" not in _round_summary([site("refused", 9.0)])
