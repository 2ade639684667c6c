"""FedAvg that knows about sites: it records each site's reply and screens updates.

Flower's FedAvg does the weighted averaging. Around it this subclass:

* keeps every site's per-round metrics (epsilon, loss, refusals) for metrics.jsonl and
  the report: FedAvg itself only keeps the weighted average;
* leaves refused rounds (no update) and failed sites out of the average;
* screens updates before they are averaged (`server.screening`), so one broken or
  hostile site cannot poison the global model;
* counts bytes sent to and received from each site.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from common.records import from_array_record, record_bytes
from server.screening import UpdateScreen

log = logging.getLogger("fedpath.server")


@dataclass
class SiteReply:
    """One site's answer in one round, as recorded for the report."""

    node_id: int
    site_id: str
    status: str  # trained | refused | failed | rejected
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    class_counts: list[int] = field(default_factory=list)
    bytes_down: int = 0
    bytes_up: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "site_id": self.site_id,
            "status": self.status,
            "reason": self.reason,
            "metrics": self.metrics,
            "class_counts": self.class_counts,
            "bytes_down": self.bytes_down,
            "bytes_up": self.bytes_up,
        }


_EXCEPTION_LINE = re.compile(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception|Exhausted)): (.+)$", re.MULTILINE)


def failure_reason(reason: str) -> str:
    """The site's own exception ("DataError: ...") from Flower's error text.

    In simulation Flower wraps a ClientApp's exception in Ray's traceback; the line that
    says what went wrong is the last `SomethingError: message` line.
    """
    found = [m for m in _EXCEPTION_LINE.finditer(reason) if "RayTaskError" not in m.group(1)]
    return f"{found[-1].group(1)}: {found[-1].group(2).strip()}" if found else reason.strip()


def registered_node_names(grid: Grid) -> dict[int, str]:
    """Node id -> the name its key was registered under (`flwr supernode register --name`).

    Only a deployment's SuperLink knows names; simulated nodes have none. Used to name a site
    whose reply is an error, since such a site sent nothing that says who it is.
    """
    try:
        return {int(n.node_id): str(n.name) for n in grid.get_nodes() if getattr(n, "name", "")}
    except Exception as err:  # noqa: BLE001 - names are a courtesy; a round must not fail for them
        log.debug("could not read registered node names: %s", err)
        return {}


class FedPathFedAvg(FedAvg):
    """Flower FedAvg (weighted by `num-examples`) with per-site bookkeeping and screening."""

    def __init__(
        self, screen: UpdateScreen, round_offset: int = 0, min_accepted_updates: int = 1, **kwargs: Any
    ) -> None:
        super().__init__(fraction_evaluate=0.0, **kwargs)  # evaluation is central, on the server
        self.screen = screen
        self.round_offset = round_offset
        self.min_accepted_updates = min_accepted_updates
        self.replies: dict[int, list[SiteReply]] = {}
        self._bytes_down: dict[int, int] = {}
        self._instructions: list[Message] = []
        self._node_names: dict[int, str] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.screen.set_reference(from_array_record(arrays))
        messages = list(super().configure_train(server_round + self.round_offset, arrays, config, grid))
        self._bytes_down[server_round + self.round_offset] = record_bytes(arrays)
        self._instructions = messages  # Flower sets their message ids when it pushes them
        self._node_names = registered_node_names(grid)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        accepted: list[Message] = []
        records: list[SiteReply] = []
        for msg in replies:
            record, ok = self._inspect(msg, server_round)
            records.append(record)
            if ok:
                accepted.append(msg)
        self.replies[server_round] = records
        for r in records:
            if r.status != "trained":
                log.warning("round %d: site %s %s: %s", server_round, r.site_id, r.status, r.reason)
        if len(accepted) < self.min_accepted_updates:
            log.warning(
                "round %d: %d usable update(s), fewer than min-accepted-updates=%d; the global model stays as it was",
                server_round, len(accepted), self.min_accepted_updates,
            )
            return None, None
        return super().aggregate_train(server_round, accepted)

    def _addressee(self, reply: Message) -> int:
        """The node an (error) reply is about.

        A site that crashes never replies: the SuperLink answers for it ("Node Unavailable")
        with its own node id as the sender, so the site is found via the instruction replied to.
        """
        for instruction in self._instructions:
            if instruction.metadata.message_id and instruction.metadata.message_id == reply.metadata.reply_to_message_id:
                return instruction.metadata.dst_node_id
        return reply.metadata.src_node_id

    def _inspect(self, msg: Message, server_round: int) -> tuple[SiteReply, bool]:
        node_id = msg.metadata.src_node_id
        down = self._bytes_down.get(server_round, 0)
        if msg.has_error():
            node_id = self._addressee(msg)
            name = self._node_names.get(node_id, f"node-{node_id}")
            return SiteReply(node_id, name, "failed", failure_reason(msg.error.reason), bytes_down=down), False
        content = msg.content
        site = content.config_records.get("site", ConfigRecord())
        site_id = str(site.get("site-id", f"node-{node_id}"))
        metrics_records = list(content.metric_records.values())
        metrics = dict(metrics_records[0]) if metrics_records else {}
        counts = [int(c) for c in site.get("class-counts", [])]
        status = str(site.get("status", "trained"))
        arrays = content.array_records.get("arrays")
        up = record_bytes(arrays) if arrays is not None else 0
        reply = SiteReply(node_id, site_id, status, str(site.get("reason", "")), metrics, counts, down, up)
        if status == "refused" or arrays is None:
            reply.status = "refused"
            reply.reason = reply.reason or "no update sent"
            return reply, False
        problem = self.screen.check(from_array_record(arrays), metrics)
        if problem:
            reply.status, reply.reason = "rejected", problem
            return reply, False
        return reply, True
