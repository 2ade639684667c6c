"""The server's train instruction has one declared schema (`common.wire.instruction`), like the reply.

The server builds its keys with it, real Flower strategies add theirs, and the site parses the
whole with it: undeclared keys are refused before the site reads any data.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict

import client.app as client_app
from common.config.run_config import RunConfig
from common.config.strategies import FEDPROX, STRATEGIES
from common.model.factory import initial_model
from common.model.network import frozen_fingerprint, get_trainable_state
from common.wire import instruction
from common.wire import reply as wire
from common.wire.records import to_array_record
from server.screening import UpdateScreen
from server.strategy import make_strategy
from tests.helpers.flower_messages import REFERENCE, START, ThreeNodes

SENT = {"server-round": 3, "classes": ["benign", "tumour"], "frozen-fingerprint": "ab" * 32, "job-id": 7}


def test_parse_reads_the_declared_keys_and_leaves_optional_ones_unset() -> None:
    told = instruction.parse(SENT)
    assert (told.server_round, told.classes, told.frozen_fingerprint, told.job_id) == (3, ["benign", "tumour"],
                                                                                       "ab" * 32, 7)
    assert told.bn_statistics is None and told.proximal_mu is None


@pytest.mark.parametrize(("config", "message"), [
    ({**SENT, "lr": 5.0}, "undeclared keys ['lr'] in the server's train instruction"),
    ({k: v for k, v in SENT.items() if k != "classes"}, "keys ['classes'] missing from the server's train instruction"),
    ({**SENT, "server-round": "3"}, "server-round must be a whole number, got str"),
    ({**SENT, "classes": [1, 2]}, "classes must be a list of text, got list"),
    ({**SENT, "bn-statistics": "not bytes"}, "bn-statistics must be bytes, got str"),
])
def test_parse_refuses_undeclared_missing_and_mistyped_keys(config: dict, message: str) -> None:
    with pytest.raises(instruction.InstructionError, match=re.escape(message)):
        instruction.parse(config)


@pytest.mark.parametrize("name", STRATEGIES)
def test_what_each_flower_strategy_sends_is_exactly_what_the_site_parses(name: str, flower_process: None) -> None:
    """The keys Flower adds (`server-round`, FedProx's `proximal-mu`) are declared, with the setter the schema names."""
    config = RunConfig.from_mapping({"min-train-nodes": 1, "min-available-nodes": 1, "strategy": name,
                                     "proximal-mu": 0.2})
    strategy = make_strategy(config, UpdateScreen(REFERENCE), round_offset=2)
    built = instruction.build(["benign", "tumour"], "ab" * 32, 7, b"\0" * 8)
    [sent, *_] = strategy.configure_train(1, to_array_record(START), ConfigRecord(built), ThreeNodes())
    told = instruction.parse(sent.content["config"])
    assert (told.server_round, told.job_id, told.bn_statistics) == (3, 7, b"\0" * 8)
    assert (told.proximal_mu == 0.2) == (name == FEDPROX) and (told.proximal_mu is None) == (name != FEDPROX)
    by_flower = set(sent.content["config"]) - set(built)
    assert by_flower == {f.key for f in instruction.FIELDS if f.set_by in (instruction.FLOWER, instruction.FLOWER_FEDPROX)
                         and (f.set_by == instruction.FLOWER or name == FEDPROX)}


def test_a_coordinators_undeclared_instruction_is_refused_before_any_data_is_read(tmp_path: Path) -> None:
    """A key the schema does not declare crosses back only as the fixed `server-input` failure; the site's
    data path does not exist, so a round that got as far as loading data would fail with `data` instead."""
    run_config = {"image-size": 32, "batch-size": 16, "num-server-rounds": 1}
    model, _ = initial_model(RunConfig.from_mapping(run_config), 2)
    node = {"data-path": str(tmp_path / "no-such-export"), "site-id": "h", "epsilon-budget": 8.0, "delta": 1e-5,
            "state-dir": str(tmp_path / "state")}
    config = {"server-round": 1, **instruction.build(["benign", "tumour"], frozen_fingerprint(model), 1),
              "noise-multiplier": 0.0}
    msg = Message(RecordDict({"arrays": to_array_record(get_trainable_state(model)), "config": ConfigRecord(config)}),
                  metadata=Metadata(run_id=1, message_id="m1", src_node_id=0, dst_node_id=1, reply_to_message_id="",
                                    group_id="", created_at=0.0, ttl=3600.0, message_type="train"))
    context = Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config=run_config)
    with pytest.raises(client_app.SiteError, match=re.escape(wire.failure_text("server-input"))):
        client_app.train(msg, context)
