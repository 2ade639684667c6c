"""A real job, in process: fedpath's ServerApp `main` and ClientApp `train` exchange real Flower messages through a
Grid that hands each instruction to the site's ClientApp (no Ray, no SuperLink), two simulated sites with the pinned
dp-seed, so the run is the same on every machine. Validation accuracies are scripted (the rule, the strategy and the
records are fedpath's own), so that round 2 is not kept: the job must end with round 1's model.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

import server.app as server_app
from client.app import train as site_train
from common.paths import FINAL_CHECKPOINT, FINAL_EVAL_FILE, REPORT_FILE, round_checkpoint
from common.wire.records import from_array_record
from tests.conftest import tiny_run_config
from tests.helpers.audit_runs import AUDIT_DP_SEED
from tests.helpers.flower_messages import GridStub


class _InProcessGrid(GridStub):
    """Each instruction goes to the ClientApp of its node (partition node - 1), in this process."""

    def __init__(self, run_config: dict, sites: int = 2) -> None:
        self.run_config, self.sites, self.sent = run_config, sites, []

    def get_node_ids(self) -> Iterable[int]:
        return list(range(1, self.sites + 1))

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            self.sent.append((int(message.content["config"]["server-round"]),
                              from_array_record(message.content["arrays"])))
            context = Context(run_id=1, node_id=node, node_config={"partition-id": node - 1,
                                                                   "num-partitions": self.sites},
                              state=RecordDict(), run_config=self.run_config)
            TaskIdentity.node_id = node
            try:
                replies.append(site_train(message, context))
            finally:
                TaskIdentity.node_id = 0
        return replies


def test_a_round_not_kept_leaves_the_end_model_equal_to_the_last_kept_one(
    tmp_path: Path, flower_process: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_config = tiny_run_config(**{"output-dir": str(tmp_path), "site-dp-seed": AUDIT_DP_SEED, "strategy": "fedadam",
                                    "synthetic-images": 160, "bootstrap-samples": 10, "min-train-nodes": 2})
    scripted = iter([0.50, 0.60, 0.45])  # round 0 (start), round 1 (kept: 0.60 >= 0.50), round 2 (0.45 < 0.50)
    judged: list[dict[str, np.ndarray]] = []

    def accuracy(self: object, state: dict[str, np.ndarray]) -> float:
        assert self.evaluator is not None  # type: ignore[attr-defined]  # the server's validation part exists
        judged.append(state)
        return next(scripted)

    monkeypatch.setattr(server_app._RoundJudge, "accuracy", accuracy)
    grid = _InProcessGrid(run_config)
    server_app.main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config))

    root = tmp_path / "run-1"
    rounds = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]
    acceptance = [r["acceptance"] for r in rounds]
    assert [(a["round"], a["kept"], a["kept_round"]) for a in acceptance] == [(0, True, 0), (1, True, 1), (2, False, 1)]
    assert acceptance[2]["reason"] == "validation accuracy 0.4500 < the start's 0.5000; the model of round 1 stays"
    assert all(r["status"] == "trained" for row in rounds[1:] for r in row["sites"])  # the sites did train in round 2

    def trainable(path: Path) -> dict[str, torch.Tensor]:
        return torch.load(path, map_location="cpu", weights_only=True)["trainable"]

    first, second = trainable(root / "checkpoints" / round_checkpoint(1)), trainable(root / "checkpoints" / round_checkpoint(2))
    assert not np.array_equal(judged[2]["fc.weight"], first["fc.weight"].numpy())  # round 2 did produce a new model
    final = torch.load(root / "checkpoints" / FINAL_CHECKPOINT, map_location="cpu", weights_only=True)["state_dict"]
    for name, tensor in first.items():
        assert torch.equal(second[name], tensor)  # round 2's global model is round 1's
        assert torch.equal(final[name], tensor)  # and so is the job's end model
    # round 2's instructions sent round 1's model (the kept one); round 1's the starting model
    for server_round, arrays in grid.sent:
        want = first if server_round == 2 else None
        if want is not None:
            assert all(np.array_equal(arrays[k], want[k].numpy()) for k in want)
    evaluation = json.loads((root / FINAL_EVAL_FILE).read_text())
    assert evaluation["kept_round"] == 1 and evaluation["accuracy"] == pytest.approx(rounds[1]["accuracy"])
    report = json.loads((root / REPORT_FILE).read_text())
    assert report["round_acceptance"]["kept_rounds"] == [0, 1]
    assert report["round_acceptance"]["end_model_round"] == 1
