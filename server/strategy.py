"""Flower's strategies, made to know about sites: each site's reply is recorded and screened.

Flower's FedAvg, FedProx, FedAdam, FedYogi or FedAdagrad (run-config `strategy`,
`make_strategy`) does the aggregation. Around it the `FedPathStrategy` mixin:

* keeps every site's per-round metrics (epsilon, loss, refusals) for metrics.jsonl and
  the report: FedAvg itself only keeps the weighted average;
* leaves refused rounds (no update) and failed sites out of the average;
* screens updates before they are averaged (`server.screening`), so one broken or
  hostile site cannot poison the global model;
* counts bytes sent to and received from each site.

The mixin sits before the Flower class in the MRO, so screening happens before any Flower
aggregation and a round with too few usable updates never reaches it: FedOpt's server state
(`current_arrays`, set in its configure_train; moments `m_t`, `v_t`) is then left as it was.

Round acceptance (`round-acceptance`, `server.round_acceptance`): after aggregation the mixin asks
`acceptance` (set by `server.app`) whether to keep the new model. A round not kept returns the model that
was sent (the last kept one) as the round's model, so Flower's loop sends it again next round and FedOpt's
configure_train sets `current_arrays` to it; the moments `m_t`, `v_t` are put back as they were before the
round, and under `validation` FedOpt's bias correction counts kept rounds only, so the server's optimiser
state is exactly that of a job in which the dropped rounds never happened.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedProx, FedYogi

from common.config.run_config import RunConfig
from common.config.strategies import (
    FEDADAGRAD,
    FEDADAM,
    FEDAVG,
    FEDOPT,
    FEDPROX,
    FEDYOGI,
    strategy_settings,
)
from common.wire import reply as wire
from common.wire.records import from_array_record, record_bytes, to_array_record
from server.round_acceptance import VALIDATION, Decision
from server.screening import UpdateScreen

log = logging.getLogger("fedpath.server")


@dataclass
class SiteReply:
    """One site's answer in one round, as recorded for the report (decoded by `common.wire.reply`)."""

    node_id: int
    site_id: str
    status: str  # trained | refused | failed | rejected
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    diagnostics: dict[str, Any] | None = None
    randomness: str = ""
    privacy_unit: str = ""
    refusal: str = ""
    bytes_down: int = 0
    bytes_up: int = 0
    overridden: list[str] = field(default_factory=list)  # run-config keys the site's own settings won over

    def as_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "site_id": self.site_id,
            "status": self.status,
            "reason": self.reason,
            "refusal": self.refusal,
            "randomness": self.randomness,
            "privacy_unit": self.privacy_unit,
            "metrics": self.metrics,
            "diagnostics": self.diagnostics,
            "bytes_down": self.bytes_down,
            "bytes_up": self.bytes_up,
            "overridden": self.overridden,
        }


def aggregate_round_metrics(replies: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """What Flower logs for a round: only aggregates that mean something across sites.

    Flower's default averages every metric (a mean of site budgets or of δ means nothing);
    per-site values are in the run's metrics.jsonl and the report.
    """
    values = [next(iter(r.metric_records.values()), {}) for r in replies]
    largest = wire.largest_site_epsilon(values)
    return MetricRecord({
        "sites-aggregated": len(values),
        "examples-aggregated": int(sum(int(m.get(weighted_by_key, 0)) for m in values)),
        **({"largest-site-epsilon": largest} if largest is not None else {}),
    })


_EXCEPTION_LINE = re.compile(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception|Exhausted)): (.+)$", re.MULTILINE)


# FedOpt's server state that an aggregation changes (Flower's FedAdam, FedYogi, FedAdagrad): put back when a
# round is not kept. `current_arrays` is not among them: configure_train sets it from the model sent.
_SERVER_OPTIMISER_STATE = ("m_t", "v_t")


class Acceptance(Protocol):
    """What the strategy asks about each round's aggregated model (`server.app._RoundJudge`)."""

    mode: str

    def judge(self, server_round: int, state: dict[str, np.ndarray]) -> Decision: ...

    def no_model(self, server_round: int, why: str) -> Decision: ...


_SITE_FAILURE = re.compile(re.escape(wire.FAILURE_PREFIX) + r" \[([a-z-]+)\]")


def failure_reason(reason: str) -> str:
    """The site's own exception ("DataError: ...") from Flower's error text.

    In simulation Flower wraps a ClientApp's exception in Ray's traceback; the line that
    says what went wrong is the last `SomethingError: message` line.
    """
    fixed = _SITE_FAILURE.search(reason)
    if fixed:  # a fedpath site sends only a code; its sentence is fixed (common.wire.reply.failure_text)
        return wire.failure_text(fixed.group(1))
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


class FedPathStrategy:
    """Mixin for a Flower FedAvg-family strategy: per-site bookkeeping and screening (`make_strategy`).

    `round_offset` is the rounds a resumed job had completed: sites and the run's records see the
    job's round numbers, while the Flower strategy sees its own (1, 2, ...), which is what FedAdam's
    bias correction needs, since its moments start from zero in every ServerApp process.
    """

    def __init__(
        self, screen: UpdateScreen, round_offset: int = 0, min_accepted_updates: int = 1, **kwargs: Any
    ) -> None:
        kwargs.setdefault("train_metrics_aggr_fn", aggregate_round_metrics)
        super().__init__(fraction_evaluate=0.0, **kwargs)  # type: ignore[call-arg]  # evaluation is central
        self.screen = screen
        self.round_offset = round_offset
        self.min_accepted_updates = min_accepted_updates
        self.replies: dict[int, list[SiteReply]] = {}
        # Called with (round, site id, model sent, model returned) for every accepted update.
        self.on_update: Callable[[int, str, dict[str, np.ndarray], dict[str, np.ndarray]], None] | None = None
        self._bytes_down: dict[int, int] = {}
        self._instructions: list[Message] = []
        self._node_names: dict[int, str] = {}
        # round acceptance (server.app sets it; None = every aggregated model is the next global model)
        self.acceptance: Acceptance | None = None
        self.decisions: dict[int, Decision] = {}
        self._kept_updates = 0  # aggregated models kept in this process (FedOpt's bias correction, `validation`)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.screen.set_reference(from_array_record(arrays))
        messages = list(super().configure_train(  # type: ignore[misc]
            server_round + self.round_offset, arrays, config, grid))
        # the tensors, plus binary instructions (bn-statistics=public: the BatchNorm statistics, 37.5 KiB; head centring: the head input mean, 2 KiB)
        self._bytes_down[server_round + self.round_offset] = record_bytes(arrays) + sum(
            len(value) for value in config.values() if isinstance(value, bytes))
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
            self._no_model(server_round, f"{len(accepted)} usable update(s) < min-accepted-updates="
                                         f"{self.min_accepted_updates}")
            return None, None
        judged = self.acceptance is not None and self.acceptance.mode == VALIDATION
        flower_round = self._kept_updates + 1 if judged else server_round - self.round_offset
        before = {name: getattr(self, name) for name in _SERVER_OPTIMISER_STATE if hasattr(self, name)}
        arrays, metrics = super().aggregate_train(flower_round, accepted)  # type: ignore[misc]
        arrays = _same_dtype(arrays, self.screen.reference)
        if arrays is None:
            self._no_model(server_round, "the aggregation returned none")
            return None, metrics
        if self.acceptance is None:
            return arrays, metrics
        decision = self.acceptance.judge(server_round, from_array_record(arrays))
        self.decisions[server_round] = decision
        if decision.kept:
            self._kept_updates += 1
            return arrays, metrics
        log.warning("round %d not kept: %s; the next round starts from the model of round %d",
                    server_round, decision.reason, decision.kept_round)
        for name, value in before.items():  # Flower rebinds these dicts each round: the old ones are untouched
            setattr(self, name, value)
        return to_array_record(self.screen.reference), metrics

    def _no_model(self, server_round: int, why: str) -> None:
        if self.acceptance is not None:
            self.decisions[server_round] = self.acceptance.no_model(server_round, why)

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
        arrays = content.array_records.get(wire.ARRAYS)
        up = record_bytes(arrays) if arrays is not None else 0
        records = {name: dict(rec) for name, rec in (*content.metric_records.items(), *content.config_records.items())}
        try:
            decoded = wire.decode(records, None)
        except wire.ReplyError as err:
            name = self._node_names.get(node_id, f"node-{node_id}")
            return SiteReply(node_id, name, "rejected", f"reply does not follow the fedpath schema: {err}",
                             bytes_down=down, bytes_up=up), False
        reply = SiteReply(node_id, decoded.site_id, decoded.status, decoded.reason, decoded.metrics,
                          decoded.diagnostics, decoded.randomness, decoded.privacy_unit, decoded.refusal, down, up,
                          decoded.overridden_keys)
        if decoded.status == "refused" or arrays is None:
            reply.status = "refused"
            reply.reason = reply.reason or "no update sent"
            return reply, False
        update = from_array_record(arrays)
        problem = self.screen.check(update, decoded.metrics)
        if problem:
            reply.status, reply.reason = "rejected", problem
            return reply, False
        if self.on_update is not None:  # e.g. the privacy audit (server.privacy_audit): model sent vs returned
            self.on_update(server_round, reply.site_id, self.screen.reference, update)
        return reply, True


def _same_dtype(arrays: ArrayRecord | None, reference: dict[str, np.ndarray]) -> ArrayRecord | None:
    """The new global model in the dtype that was sent (float32).

    FedAdam's step multiplies by a float64 numpy scalar, which NumPy 2 promotes to float64
    arrays: twice the bytes on the wire, and updates the screen would reject as the wrong dtype.
    """
    if arrays is None:
        return None
    state = from_array_record(arrays)
    if all(state[k].dtype == reference[k].dtype for k in state if k in reference):
        return arrays
    return to_array_record({k: v.astype(reference[k].dtype if k in reference else v.dtype) for k, v in state.items()})


class FedPathFedAvg(FedPathStrategy, FedAvg):
    """Flower FedAvg: the average of the screened updates, weighted by `num-examples`."""


class FedPathFedProx(FedPathStrategy, FedProx):
    """Flower FedProx: FedAvg that sends `proximal-mu`; each site adds the proximal term (common.training.proximal)."""


class FedPathFedAdam(FedPathStrategy, FedAdam):
    """Flower FedAdam: the averaged update is a pseudo-gradient for Adam on the server."""


class FedPathFedYogi(FedPathStrategy, FedYogi):
    """Flower FedYogi: like FedAdam with Yogi's additive second-moment update."""


class FedPathFedAdagrad(FedPathStrategy, FedAdagrad):
    """Flower FedAdagrad: Adagrad on the averaged update (no momentum)."""


STRATEGY_CLASSES: dict[str, type[FedPathStrategy]] = {  # one per name of common.config.strategies.STRATEGIES
    FEDAVG: FedPathFedAvg, FEDPROX: FedPathFedProx, FEDADAM: FedPathFedAdam,
    FEDYOGI: FedPathFedYogi, FEDADAGRAD: FedPathFedAdagrad,
}


def make_strategy(config: RunConfig, screen: UpdateScreen, round_offset: int = 0) -> FedPathStrategy:
    """The run's strategy (`config.strategy`) with its hyper-parameters, screening and bookkeeping."""
    kwargs: dict[str, Any] = {
        "fraction_train": config.fraction_train, "min_train_nodes": config.min_train_nodes,
        "min_available_nodes": config.min_available_nodes,
    }
    if config.strategy == FEDPROX:
        kwargs["proximal_mu"] = config.proximal_mu
    if config.strategy in FEDOPT:
        settings = strategy_settings(config.to_mapping())
        # eta_l is not used by Flower's server code (only logged); the sites' rate is `lr`.
        kwargs.update(eta=settings["server-lr"], eta_l=config.lr, tau=config.tau)
        if "beta-1" in settings:
            kwargs.update(beta_1=config.beta_1, beta_2=config.beta_2)
    return STRATEGY_CLASSES[config.strategy](
        screen=screen, round_offset=round_offset, min_accepted_updates=config.min_accepted_updates, **kwargs
    )
