"""Round acceptance (issue 23): the job never ends worse, on server-held validation data, than where it started.

The rule (`server.round_acceptance`), its run-config key, the validation data (never the central test set) and
the strategy's part: a round not kept sends the last kept model again and leaves FedOpt's server state as if the
round never happened (real Flower strategies on real `Message`s, tests/helpers/flower_messages.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedYogi

from common.config.run_config import RunConfig
from common.data import sources
from common.wire.records import from_array_record, to_array_record
from server.round_acceptance import ALL, VALIDATION, Decision, RoundAcceptance, keeps
from server.screening import UpdateScreen
from server.strategy import make_strategy
from tests.conftest import tiny_run_config
from tests.helpers.flower_messages import BOUND, REFERENCE, START, ThreeNodes, mixed_replies, reply_message

# --- the rule ---------------------------------------------------------------------------------------------


def test_a_round_is_kept_iff_its_validation_accuracy_is_at_least_the_starts_ties_keep() -> None:
    assert keeps(0.75, 0.75) and keeps(0.76, 0.75) and not keeps(0.7499, 0.75)
    rule = RoundAcceptance(VALIDATION)
    start = rule.start(0, 0.5)
    assert start.kept and start.kept_round == 0 and "the starting model" in start.reason
    assert rule.judge(1, 0.5).kept  # a tie keeps
    second = rule.judge(2, 0.75)
    assert second.kept and (second.kept_round, second.kept_accuracy) == (2, 0.75)
    assert second.reason == "validation accuracy 0.7500 >= the start's 0.5000"
    third = rule.judge(3, 0.49)
    assert not third.kept and (third.kept_round, third.kept_accuracy) == (2, 0.75)
    assert third.reason == "validation accuracy 0.4900 < the start's 0.5000; the model of round 2 stays"
    fourth = rule.judge(4, 0.6)  # below the last kept, above the start: kept (the floor is the start, not the best)
    assert fourth.kept and (fourth.kept_round, fourth.kept_accuracy) == (4, 0.6)
    gap = rule.no_model(5, "0 usable update(s) < min-accepted-updates=1")
    assert not gap.kept and gap.validation_accuracy is None and "model of round 4 stays" in gap.reason
    assert gap.as_dict() == {"round": 5, "kept": False, "validation_accuracy": None, "kept_round": 4,
                             "kept_validation_accuracy": 0.6, "reason": gap.reason}


def test_the_kept_models_accuracy_never_falls_below_the_start() -> None:
    rng = np.random.default_rng(3)
    rule = RoundAcceptance(VALIDATION)
    rule.start(0, 0.4)
    dropped = 0
    for r in range(1, 60):
        accuracy = float(rng.uniform(0, 1))
        decision = rule.judge(r, accuracy)
        dropped += not decision.kept
        assert decision.kept == (accuracy >= 0.4) and decision.kept_accuracy >= 0.4  # the end model: never below
    assert 0 < dropped < 59  # both branches taken


def test_all_keeps_every_round_with_or_without_validation_data() -> None:
    rule = RoundAcceptance(ALL)
    rule.start(0, None)
    assert rule.judge(1, None).kept and rule.judge(2, 0.1).kept and rule.kept_round == 2
    assert rule.judge(2, 0.1).reason == "round-acceptance = all: every round is kept"
    with pytest.raises(ValueError, match="needs a validation accuracy"):
        fresh = RoundAcceptance(VALIDATION)
        fresh.start(0, None)
        fresh.judge(1, 0.5)
    with pytest.raises(ValueError):
        RoundAcceptance("best")


def test_a_resumed_job_starts_from_the_round_its_model_was_kept_in() -> None:
    rule = RoundAcceptance(VALIDATION)
    start = rule.start(4, 0.6, kept_round=2)
    assert start.kept_round == 2 and "resumed from (round 2)" in start.reason
    assert rule.judge(5, 0.59).reason == "validation accuracy 0.5900 < the start's 0.6000; the model of round 2 stays"


# --- the validation data: never the test set ---------------------------------------------------------------


def _groups(images: object) -> set:
    return set(images.groups.tolist())  # type: ignore[attr-defined]


def test_without_a_public_share_a_quarter_of_the_held_out_groups_validates_and_the_test_set_keeps_the_rest() -> None:
    judged = RunConfig.from_mapping(tiny_run_config())
    every = RunConfig.from_mapping(tiny_run_config(**{"round-acceptance": "all"}))
    validation, source = sources.server_validation_set(judged)
    test = sources.central_test_set(judged)
    held_out = set(sources.load_pool(judged)[0].groups) - set().union(
        *(_groups(s.train) | _groups(s.val) for s in sources.all_simulated_sites(judged, 3)))
    assert validation is not None and source == "server validation part of the held-out groups"
    assert not _groups(validation) & _groups(test)  # group-disjoint from the test set and from every site
    assert _groups(validation) | _groups(test) == held_out  # together: every held-out group
    assert 0.1 < len(validation) / (len(validation) + len(test)) < 0.4  # about a quarter
    # the cut does not depend on the setting: `all` is tested on the same images and still reports validation
    assert _groups(sources.central_test_set(every)) == _groups(test)
    assert _groups(sources.server_validation_set(every)[0]) == _groups(validation)


def test_with_a_public_share_the_public_share_never_validates() -> None:
    """A backbone pretrained on the public share would be judged on its own training data: round 0 would look
    best and every round would be dropped. The held-out groups validate, the public share stays as it was."""
    judged = RunConfig.from_mapping(tiny_run_config(**{"public-fraction": 0.2}))
    every = RunConfig.from_mapping(tiny_run_config(**{"public-fraction": 0.2, "round-acceptance": "all"}))
    validation, source = sources.server_validation_set(judged)
    assert validation is not None and source == "server validation part of the held-out groups"
    public = _groups(sources.public_share(judged))
    assert public == _groups(sources.public_share(every)) and not _groups(validation) & public
    test = _groups(sources.central_test_set(judged))
    assert not _groups(validation) & test and test == _groups(sources.central_test_set(every))


# --- the strategy: a round not kept leaves no trace in the server's state --------------------------------


class _Scripted:
    """An acceptance that keeps the rounds it is told to (the rule itself is tested above)."""

    mode = VALIDATION

    def __init__(self, kept: dict[int, bool]) -> None:
        self.kept, self.states = kept, {}

    def judge(self, server_round: int, state: dict[str, np.ndarray]) -> Decision:
        self.states[server_round] = state
        return Decision(server_round, self.kept[server_round], 0.5, server_round, 0.5, "scripted")

    def no_model(self, server_round: int, why: str) -> Decision:
        return Decision(server_round, False, None, 0, 0.5, why)


def _second_replies() -> list:
    return [reply_message(1, {k: np.full_like(v, 0.7) for k, v in REFERENCE.items()}, examples=20),
            reply_message(2, {k: np.full_like(v, 0.4) for k, v in REFERENCE.items()}, examples=20)]


@pytest.mark.parametrize("name", ["fedavg", "fedadam", "fedyogi", "fedadagrad"])
def test_a_round_not_kept_returns_the_model_sent_and_the_next_round_is_as_if_it_never_happened(
    name: str, flower_process: None
) -> None:
    config = RunConfig.from_mapping({"min-train-nodes": 1, "min-available-nodes": 1, "strategy": name})
    strategy = make_strategy(config, UpdateScreen(REFERENCE, dp_bound=BOUND))
    strategy.acceptance = _Scripted({1: False, 2: True})
    list(strategy.configure_train(1, to_array_record(START), ConfigRecord({}), ThreeNodes()))
    dropped, metrics = strategy.aggregate_train(1, mixed_replies())
    assert metrics["sites-aggregated"] == 2 and not strategy.decisions[1].kept
    for key in REFERENCE:  # the model sent (the last kept one) is the round's model
        np.testing.assert_array_equal(from_array_record(dropped)[key], START[key])
    assert not np.allclose(strategy.acceptance.states[1]["a"], START["a"])  # what was judged was the new model
    if name != "fedavg":
        assert strategy.v_t is None and strategy.m_t is None  # FedOpt's moments as before the round
    list(strategy.configure_train(2, dropped, ConfigRecord({}), ThreeNodes()))
    second, _ = strategy.aggregate_train(2, _second_replies())

    # The same strategy in a job in which round 1 never happened: round 2's updates in its first round.
    fresh = make_strategy(config, UpdateScreen(REFERENCE, dp_bound=BOUND))
    fresh.acceptance = _Scripted({1: True})
    list(fresh.configure_train(1, to_array_record(START), ConfigRecord({}), ThreeNodes()))
    expected, _ = fresh.aggregate_train(1, _second_replies())
    for key in REFERENCE:
        np.testing.assert_array_equal(from_array_record(second)[key], from_array_record(expected)[key])
    if name != "fedavg":
        for moments, want in ((strategy.v_t, fresh.v_t), (strategy.m_t, fresh.m_t)):
            for key in REFERENCE:
                np.testing.assert_array_equal(moments[key], want[key])
    assert isinstance(strategy, (FedAdam, FedYogi, FedAdagrad)) == (name != "fedavg")


def test_a_round_without_enough_updates_is_recorded_as_no_model(flower_process: None) -> None:
    config = RunConfig.from_mapping({"min-train-nodes": 1, "min-available-nodes": 1, "min-accepted-updates": 3})
    strategy = make_strategy(config, UpdateScreen(REFERENCE, dp_bound=BOUND))
    strategy.acceptance = _Scripted({})
    list(strategy.configure_train(1, to_array_record(START), ConfigRecord({}), ThreeNodes()))
    assert strategy.aggregate_train(1, mixed_replies()) == (None, None)
    assert not strategy.decisions[1].kept and "min-accepted-updates=3" in strategy.decisions[1].reason
