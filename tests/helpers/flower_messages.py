"""Real Flower `Message`s built like a site's reply, and a Grid of three nodes, for strategy tests.

The aggregation tests (tests/server/test_update_screening.py, tests/server/test_strategies.py,
tests/model/test_bn_statistics.py) run real Flower strategies on these; they need the identity
Flower gives a ServerApp process, which the `flower_process` fixture (tests/conftest.py) sets.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from common.wire import reply as wire
from common.wire.records import to_array_record
from server.screening import TrainingBound

REFERENCE = {"a": np.zeros((2, 3), np.float32), "b": np.zeros(4, np.float32)}
BOUND = TrainingBound(lr=0.1, momentum=0.9, max_grad_norm=1.0, local_epochs=1, batch_size=16)
START = {k: np.full_like(v, 0.5) for k, v in REFERENCE.items()}  # the global model sent this round


def reply_message(node: int, arrays: dict[str, np.ndarray] | None, examples: float = 10, error: str = "",
                  extra_metric: str = "") -> Message:
    """A trained site's reply from `node` (or Flower's error reply when `error` is set)."""
    TaskIdentity.node_id = 0
    instruction = Message(RecordDict(), dst_node_id=node, message_type="train")
    TaskIdentity.node_id = node
    if error:
        return Message(Error(code=1, reason=error), reply_to=instruction)
    metrics = {f.key: 0 for f in wire.FIELDS if f.record == wire.METRICS}
    metrics.update({"num-examples": examples, "noise-multiplier": 1.0, "epsilon": 1.0, "dp": 1})
    records = wire.encode(wire.SiteReplyContent(f"site-{node}", "trained", "", "secure", "patch", metrics))
    if extra_metric:
        records[wire.METRICS][extra_metric] = 0.5
    content = RecordDict({"metrics": MetricRecord(records[wire.METRICS]), "site": ConfigRecord(records[wire.SITE])})
    if arrays is not None:
        content["arrays"] = to_array_record(arrays)
    return Message(content, reply_to=instruction)


def refused_message(node: int) -> Message:
    """A site's refusal, as `client.app` encodes it: no arrays, a fixed code."""
    TaskIdentity.node_id = 0
    instruction = Message(RecordDict(), dst_node_id=node, message_type="train")
    TaskIdentity.node_id = node
    metrics = {f.key: 0 for f in wire.FIELDS if f.record == wire.METRICS}
    records = wire.encode(wire.SiteReplyContent(f"site-{node}", "refused", "budget-exhausted", "secure", "patch",
                                                metrics))
    return Message(RecordDict({"metrics": MetricRecord(records[wire.METRICS]),
                               "site": ConfigRecord(records[wire.SITE])}), reply_to=instruction)


def mixed_replies() -> list[Message]:
    """Two good updates (nodes 1, 2), a NaN one, one beyond the DP bound, a crash and a refusal."""
    nan = {k: np.full_like(v, 0.6) for k, v in REFERENCE.items()}
    nan["b"][1] = np.nan
    return [
        reply_message(1, {k: np.full_like(v, 0.6) for k, v in REFERENCE.items()}, examples=10),
        reply_message(2, {k: np.full_like(v, 0.3) for k, v in REFERENCE.items()}, examples=30),
        reply_message(3, nan),
        reply_message(4, {k: np.full_like(v, 1e4) for k, v in REFERENCE.items()}),  # beyond the DP bound
        reply_message(5, None, error="site crashed"),
        refused_message(6),
    ]


class GridStub(Grid):
    """A Grid whose run and message plumbing the tests never use: subclasses add what a test reads."""

    def set_run(self, run):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    @property
    def run(self):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def create_message(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def push_messages(self, messages):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def pull_messages(self, message_ids):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def send_and_receive(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise NotImplementedError


class ThreeNodes(GridStub):
    """The part of a Grid that configure_train reads: which nodes are connected (nodes 1-3)."""

    def get_node_ids(self) -> Iterable[int]:
        return [1, 2, 3]
