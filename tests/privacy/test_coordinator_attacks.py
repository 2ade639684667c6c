"""Attacks a curious coordinator would try, written first, each made to fail.

The coordinator knows or chooses the run config (its seed), the run id, the round number, the
site ids, the global weights and every value a site sends. Here it tries to (1) regenerate a
site's DP noise by replaying the round, (2) difference two answers to the same request, (3)
move patients between a site's training and validation sides, and (4) read anything off the
wire that the reply schema does not declare (file paths in error texts included).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict

import client.app as client_app
from client.identity import SiteIdentity, site_identity
from client.round_types import RoundRequest
from client.site import load_site_data, run_round
from common.config.run_config import RunConfig
from common.data.partition import keyed_train_val
from common.data.sources import dataset_classes
from common.model.factory import initial_model
from common.model.network import frozen_fingerprint, get_trainable_state
from common.wire import reply as wire
from common.wire.records import to_array_record
from tests.conftest import tiny_run_config, write_image_tree

# Large noise, tiny clipping: the update is almost all noise, so equal noise shows as equal updates.
NOISY = {"num-server-rounds": 1, "noise-multiplier": 2.0, "max-grad-norm": 0.01, "momentum": 0.0, "lr": 1.0,
         "site-epsilon-budget": 1000.0, "epsilon": 1000.0, "synthetic-images": 160}


def _config(**extra: object) -> RunConfig:
    return RunConfig.from_mapping(tiny_run_config(**{**NOISY, **extra}))


HOSPITAL_SEED, OTHER_SEED = "a1" * 32, "b2" * 32  # site-held dp-seeds: 256 bits of key material each


def _site(state_dir: Path, dp_seed: str = "") -> SiteIdentity:
    return SiteIdentity(site_id="site-0", deployed=False, state_dir=state_dir, epsilon_budget=1000.0, delta=1e-4,
                        partition_id=0, num_partitions=2, epsilon_per_job=1000.0, dp_seed=dp_seed)


def _request(config: RunConfig, run_id: int = 1) -> RoundRequest:
    model, _ = initial_model(config, len(dataset_classes(config)))
    return RoundRequest(run_id, 1, get_trainable_state(model), dataset_classes(config), frozen_fingerprint(model))


def _step(result, request: RoundRequest) -> np.ndarray:
    assert result.status == "trained"
    return np.concatenate([(result.update[k] - request.arrays[k]).ravel() for k in sorted(request.arrays)])


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


@pytest.mark.slow  # two site rounds, sigma calibrated
def test_coordinator_replay_of_a_round_does_not_reproduce_the_noise(tmp_path: Path) -> None:
    """Attack 1: replay the site's round with everything the coordinator knows (here even the
    site's own images), then subtract. Before the fix the replay was identical bit for bit."""
    config = _config()
    request = _request(config)
    site = _step(run_round(_site(tmp_path / "site"), config, request), request)
    replay = _step(run_round(_site(tmp_path / "coordinator-replica"), config, request), request)
    assert np.abs(site).max() > 0
    assert abs(_correlation(site, replay)) < 0.3, "the coordinator regenerated the site's noise"


@pytest.mark.slow  # two site rounds, sigma calibrated
def test_two_identical_requests_get_fresh_noise_and_are_both_charged(tmp_path: Path) -> None:
    """Attack 2: send the same request twice and difference the answers to cancel the noise."""
    config = _config()
    request = _request(config)
    state = tmp_path / "site"
    first = run_round(_site(state), config, request)
    second = run_round(_site(state), config, request)
    assert abs(_correlation(_step(first, request), _step(second, request))) < 0.3
    assert second.metrics["epsilon"] > first.metrics["epsilon"]  # the repeat cost budget too
    ledger = json.loads((state / "privacy-ledger.json").read_text())
    assert len(ledger["rounds"]) == 2 and {r["randomness"] for r in ledger["rounds"]} == {"secure"}


@pytest.mark.slow  # four site rounds, sigma calibrated
def test_a_site_held_dp_seed_makes_a_round_reproducible_and_a_repeat_still_fresh(tmp_path: Path) -> None:
    """The mode switch itself: only a seed the *site* holds reproduces a round."""
    config = _config()
    request = _request(config)
    a = run_round(_site(tmp_path / "a", dp_seed=HOSPITAL_SEED), config, request)
    b = run_round(_site(tmp_path / "b", dp_seed=HOSPITAL_SEED), config, request)
    assert a.reply.randomness == "site-seed"
    np.testing.assert_array_equal(_step(a, request), _step(b, request))
    other = run_round(_site(tmp_path / "c", dp_seed=OTHER_SEED), config, request)
    assert abs(_correlation(_step(a, request), _step(other, request))) < 0.3
    again = run_round(_site(tmp_path / "a", dp_seed=HOSPITAL_SEED), config, request)  # same site, same request
    assert abs(_correlation(_step(a, request), _step(again, request))) < 0.3


@pytest.mark.slow  # two site rounds, sigma calibrated
def test_the_run_id_and_round_do_not_enter_the_noise(tmp_path: Path) -> None:
    """With the site's seed and state fixed, the coordinator's run id and round label change nothing."""
    config = _config()
    request = _request(config)
    base = run_round(_site(tmp_path / "a", dp_seed=HOSPITAL_SEED), config, request)
    moved = RoundRequest(99, 5, request.arrays, request.classes, request.frozen_fingerprint)
    same = run_round(_site(tmp_path / "b", dp_seed=HOSPITAL_SEED), config, moved)
    np.testing.assert_array_equal(_step(base, request), _step(same, request))


# -- 3. the train/validation split ------------------------------------------------------

def _groups(n: int, per_group: int = 3) -> np.ndarray:
    return np.asarray([f"patient-{i // per_group:04d}" for i in range(n)])


def _sides(groups: np.ndarray, key: bytes) -> dict[int, bool]:
    train, val = keyed_train_val(groups, np.arange(len(groups)), 0.3, key)
    return {**{int(i): False for i in train}, **{int(i): True for i in val}}


@pytest.mark.parametrize("new_group", ["patient-9999", "patient-0007"], ids=["new patient", "existing patient"])
def test_adding_one_patch_moves_no_other_record_between_train_and_validation(new_group: str) -> None:
    key = b"k" * 32
    groups = _groups(300)
    before = _sides(groups, key)
    after = _sides(np.append(groups, new_group), key)
    assert {i: after[i] for i in before} == before
    assert 0 < sum(before.values()) < len(before)  # both sides are populated
    if new_group in set(groups):  # the new patch joins its patient's side
        assert after[len(groups)] == before[int(np.flatnonzero(groups == new_group)[0])]


def test_the_split_depends_on_the_sites_key_not_on_anything_the_coordinator_sets(tmp_path: Path) -> None:
    write_image_tree(tmp_path / "data", per_class=30)
    node = {"data-path": str(tmp_path / "data"), "site-id": "h", "epsilon-budget": 8.0, "delta": 1e-5,
            "state-dir": str(tmp_path / "state"), "val-fraction": 0.3}
    configs = [RunConfig.from_mapping({"image-size": 32, "seed": s, "val-fraction": v}) for s, v in ((1, 0.1), (2, 0.5))]
    splits = [load_site_data(site_identity(node, c, 1), c) for c in configs]
    assert len(splits[0].val) > 0
    np.testing.assert_array_equal(splits[0].train.groups, splits[1].train.groups)
    assert (tmp_path / "state" / "split-key").exists()
    rekeyed = load_site_data(site_identity({**node, "split-key": "another"}, configs[0], 1), configs[0])
    assert set(rekeyed.val.groups) != set(splits[0].val.groups)


# -- 4. what crosses the wire -----------------------------------------------------------

def test_every_value_in_a_real_reply_is_declared_and_nothing_else_is_accepted(tmp_path: Path) -> None:
    config = _config()
    request = _request(config)
    result = run_round(_site(tmp_path / "s"), config, request)
    records = wire.encode(result.reply)
    assert set(records) == {wire.METRICS, wire.SITE}  # no diagnostics unless the site opts in
    for name, values in records.items():
        for key in values:
            assert wire.FIELD_BY_KEY[key].record == name
    assert wire.decode(records, result.update).metrics == result.metrics
    with pytest.raises(wire.ReplyError, match="undeclared"):
        wire.decode({**records, wire.METRICS: {**records[wire.METRICS], "train-loss": 0.1}}, None)
    with pytest.raises(wire.ReplyError, match="refusal code"):
        wire.decode({**records, wire.SITE: {**records[wire.SITE], "refusal": "only 3 examples"}}, None)


def test_diagnostics_travel_only_when_the_site_opts_in(tmp_path: Path) -> None:
    config = _config(**{"site-share-diagnostics": True})
    identity = site_identity({"partition-id": 0, "num-partitions": 2}, config, run_id=1)
    assert identity.share_diagnostics
    result = run_round(identity, config, _request(config))
    records = wire.encode(result.reply)
    assert set(records[wire.DIAGNOSTICS]) == {f.key for f in wire.FIELDS if f.protection == wire.OPT_IN}


def test_a_data_error_crosses_the_wire_as_a_fixed_code_without_the_file_name(tmp_path: Path) -> None:
    """strict=true makes an unreadable file an error; its path must stay at the site."""
    data = write_image_tree(tmp_path / "export-of-patient-ANON-4711", per_class=20)
    (data / "tumour" / "patient-4711-slide-2.png").write_bytes(b"\x89PNG truncated")
    run_config = {"image-size": 32, "batch-size": 16, "num-server-rounds": 1}
    config = RunConfig.from_mapping(run_config)
    model, _ = initial_model(config, 2)
    node = {"data-path": str(data), "site-id": "h", "epsilon-budget": 8.0, "delta": 1e-5,
            "state-dir": str(tmp_path / "state"), "strict": "true"}
    msg = Message(RecordDict({
        "arrays": to_array_record(get_trainable_state(model)),
        "config": ConfigRecord({"server-round": 1, "classes": ["benign", "tumour"],
                                "frozen-fingerprint": frozen_fingerprint(model)}),
    }), metadata=Metadata(run_id=1, message_id="m1", src_node_id=0, dst_node_id=1, reply_to_message_id="",
                          group_id="", created_at=0.0, ttl=3600.0, message_type="train"))
    context = Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config=run_config)
    with pytest.raises(client_app.SiteError, match=re.escape(wire.failure_text("data"))) as caught:
        client_app.train(msg, context)
    text = str(caught.value)
    assert text == wire.failure_text("data")
    assert "4711" not in text and str(tmp_path) not in text
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    local = (tmp_path / "state" / "site-rounds.jsonl").read_text()
    assert "patient-4711-slide-2.png" in local  # the operator still sees which file


def test_privacy_doc_table_is_the_reply_schema() -> None:
    """docs/PRIVACY.md's 'what crosses the wire' table is generated from common/wire/reply.py, not written by hand."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "PRIVACY.md").read_text()
    start, end = doc.index(wire.WIRE_TABLE_BEGIN), doc.index(wire.WIRE_TABLE_END) + len(wire.WIRE_TABLE_END)
    assert doc[start:end] == wire.wire_markdown(), "regenerate with: python -m common.wire.reply"
