"""fedpath ServerApp: a thin Flower layer over the run's model, strategy and store."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from common.config.run_config import RunConfig
from common.config.strategies import describe_strategy
from common.data.sources import (
    central_test_set,
    classes_without_training_images,
    dataset_classes,
    server_validation_set,
)
from common.logging_setup import setup_logging
from common.model.factory import initial_model
from common.model.network import frozen_fingerprint, get_trainable_state, trainable_names
from common.paths import AUDIT_FILE, FINAL_EVAL_FILE, RUN_FILE, run_dir
from common.versions import versions
from common.wire import instruction
from common.wire.records import from_array_record, to_array_record
from common.wire.reply import largest_site_epsilon
from server.evaluation import CentralEvaluator
from server.privacy_audit import RunAudit
from server.report import write_report
from server.report.advice import next_step
from server.resume import check_start, find_resume_point
from server.round_acceptance import Decision, RoundAcceptance
from server.run_store import RunStore
from server.screening import TrainingBound, UpdateScreen
from server.strategy import make_strategy
from server.target_statistics import head_input_mean, public_batchnorm_statistics

app = ServerApp()
log = logging.getLogger("fedpath.server")


@app.main()
def main(grid: Grid, context: Context) -> None:
    setup_logging()
    config = RunConfig.from_mapping(context.run_config)  # invalid config stops here, before anything runs
    root = run_dir(config, context.run_id)
    check_start(root, config.to_mapping())  # a finished run is never resumed, no run's records are overwritten
    store = RunStore(root)
    log.info("run %s writes to %s", context.run_id, store.root)
    start = _starting_point(config, store, context.run_id)
    strategy, audit = _strategy_for(config, store, start)
    recorder = _RoundRecorder(config, store, start, strategy, audit)
    strategy.acceptance = recorder.judge
    remaining = max(0, config.num_server_rounds - start.completed)
    if remaining == 0 and start.completed:
        log.info("all %d rounds were already completed; finishing the report", start.completed)
    strategy.start(grid=grid, initial_arrays=to_array_record(start.state), num_rounds=remaining,
                   timeout=config.round_timeout, train_config=_train_config(start, store),
                   evaluate_fn=recorder.evaluate)
    _finish(store, recorder, config)
    if remaining and not any(r.status == "trained" for replies in strategy.replies.values() for r in replies):
        raise NoSiteTrained(untrained_summary(strategy.replies, str(store.root)))


@dataclass
class _Start:
    """Where a run starts: the model and test set, and the round it resumes after (0 = a new run)."""

    classes: list[str]
    test: Any
    model: torch.nn.Module
    fingerprint: str
    state: dict[str, np.ndarray]
    meta: dict[str, Any]
    completed: int
    bn_statistics: bytes | None = None  # re-estimated on the public share (bn-statistics=public), sent every round
    head_input_mean: bytes | None = None  # center-head (on, or auto from scratch): over the validation images, sent every round
    validation: Any = None  # server-held data rounds are judged on (server.round_acceptance); never `test`
    kept_round: int | None = None  # a resumed job: the round its model was last kept in (its records say)


def _starting_point(config: RunConfig, store: RunStore, run_id: int) -> _Start:
    classes = dataset_classes(config)
    test = central_test_set(config)
    validation, validation_source = server_validation_set(config)
    model, source = initial_model(config, len(classes))
    bn_statistics, public_images = public_batchnorm_statistics(config, model, store.root)
    head_mean, head_mean_images = head_input_mean(config, model, validation, source.pretrained)
    fingerprint = frozen_fingerprint(model)
    state = get_trainable_state(model)
    meta = {
        "arch": config.arch, "policy": config.policy, "classes": classes, "weights": source.as_dict(),
        "frozen_fingerprint": fingerprint, "seed": config.seed, "image_size": config.image_size,
    }
    completed, kept_round = 0, None
    if config.resume_from:
        point = find_resume_point(store, meta, {k: tuple(v.shape) for k, v in state.items()})
        completed, state = point.completed_round, point.state
        kept = [r["acceptance"]["kept_round"] for r in store.rounds() if r["round"] == completed and r.get("acceptance")]
        kept_round = kept[0] if kept else None
        info = store.read_json(RUN_FILE)
        info.setdefault("resumed", []).append({"run_id": run_id, "after_round": completed, "time": time.time()})
        store.write_json(RUN_FILE, {**info, "end": None})
    else:
        store.write_json(RUN_FILE, {
            "run_id": run_id, "config": config.to_mapping(), "start": time.time(), "end": None,
            "versions": versions(), "weights": source.as_dict(), "classes": classes,
            "test_examples": len(test), "test_class_counts": test.class_counts(),
            "test_stain_fallbacks": test.report.stain_fallbacks,
            "classes_without_training_images": classes_without_training_images(config),  # issue 25
            "trainable_tensors": len(state), "trainable_parameters": int(sum(v.size for v in state.values())),
            "trainable_names": trainable_names(model), "frozen_fingerprint": fingerprint,
            "bn_statistics": {"setting": config.bn_statistics, "public_images": public_images},
            "head_centering": {"setting": config.center_head, "applied": head_mean is not None,
                               "validation_images": head_mean_images},
            "round_acceptance": {"setting": config.round_acceptance, "validation": validation_source or None,
                                 "validation_examples": len(validation) if validation is not None else 0},
        })
    log.info(
        "%s, policy %s: %d trainable parameters travel each round (%.1f KiB); weights: %s",
        config.arch, config.policy, sum(v.size for v in state.values()),
        sum(v.nbytes for v in state.values()) / 1024, source.description,
    )
    return _Start(classes, test, model, fingerprint, state, meta, completed, bn_statistics, head_mean, validation,
                  kept_round)


def _strategy_for(config: RunConfig, store: RunStore, start: _Start) -> tuple[Any, RunAudit | None]:
    """The configured Flower strategy with fedpath's screening, and the run's privacy audit if asked for."""
    bound = TrainingBound(config.lr, config.momentum, config.max_grad_norm, config.local_epochs, config.batch_size)
    strategy = make_strategy(config, UpdateScreen(start.state, config.max_update_norm, bound if config.dp else None),
                             round_offset=start.completed)
    log.info("strategy: %s", describe_strategy(config.to_mapping()))
    previous = store.read_json(AUDIT_FILE) if start.completed and (store.root / AUDIT_FILE).exists() else None
    audit = RunAudit(start.model, config.seed, config.audit_canaries, config.image_size, start.classes,
                     previous) if config.audit_canaries else None
    if audit is not None:
        strategy.on_update = audit.observe
    return strategy, audit


def _train_config(start: _Start, store: RunStore) -> ConfigRecord:
    """The server's part of every train instruction (`common.wire.instruction`; Flower adds the round).

    job-id: the run that started this job, kept when it is resumed, so a site's grant covers the
    whole job (a resumed job is not a new one); bn-statistics: public-data statistics the sites put
    into their frozen layers (bn-statistics = public only); head-input-mean: what the sites centre the head's
    input on in training (center-head on, or auto from scratch).
    """
    return ConfigRecord(instruction.build(start.classes, start.fingerprint, int(store.read_json(RUN_FILE)["run_id"]),
                                          start.bn_statistics, start.head_input_mean))


class _RoundJudge:
    """Round acceptance's server side: validation accuracy on server-held data, the rule's decision
    (`server.round_acceptance`; the strategy acts on it). Never the central test set."""

    def __init__(self, config: RunConfig, start: _Start) -> None:
        self.mode = config.round_acceptance
        self.rule = RoundAcceptance(self.mode)
        self.evaluator = (CentralEvaluator(copy.deepcopy(start.model), start.validation, config.eval_batch_size)
                          if start.validation is not None else None)

    def accuracy(self, state: dict[str, np.ndarray]) -> float | None:
        return None if self.evaluator is None else float(self.evaluator.round_metrics(state)["accuracy"])

    def start(self, server_round: int, state: dict[str, np.ndarray], kept_round: int | None) -> Decision:
        return self.rule.start(server_round, self.accuracy(state), kept_round)

    def judge(self, server_round: int, state: dict[str, np.ndarray]) -> Decision:
        return self.rule.judge(server_round, self.accuracy(state))

    def no_model(self, server_round: int, why: str) -> Decision:
        return self.rule.no_model(server_round, why)


class _RoundRecorder:
    """Flower's evaluate_fn: central evaluation of each global model, then its round on disk.

    The global model of a round not kept (round acceptance) is the last kept one: Flower hands it here, so
    the round's test metrics and checkpoint are the kept model's, and `latest_state` is the job's end model.
    """

    def __init__(self, config: RunConfig, store: RunStore, start: _Start, strategy: Any,
                 audit: RunAudit | None) -> None:
        self.config, self.store, self.strategy, self.audit = config, store, strategy, audit
        self.completed, self.meta = start.completed, start.meta
        self.evaluator = CentralEvaluator(copy.deepcopy(start.model), start.test, config.eval_batch_size)
        self.latest_round, self.latest_state = start.completed, start.state
        self.judge = _RoundJudge(config, start)
        self.start_kept_round = start.kept_round
        self.kept_round = start.completed if start.kept_round is None else start.kept_round

    def evaluate(self, flower_round: int, arrays: ArrayRecord) -> MetricRecord:
        server_round = flower_round + self.completed
        round_state = from_array_record(arrays)
        metrics = self.evaluator.round_metrics(round_state)
        if flower_round == 0:
            decision = self.judge.start(server_round, round_state, self.start_kept_round)
            self.strategy.decisions[server_round] = decision
        if flower_round > 0 or self.completed == 0:  # a resumed run's starting point is already recorded
            self._record(server_round, round_state, metrics)
        self.latest_round, self.latest_state = server_round, round_state
        decision = self.strategy.decisions.get(server_round)
        if decision is not None:
            self.kept_round = decision.kept_round
        return MetricRecord({k: float(v) for k, v in metrics.items()})

    def _record(self, server_round: int, round_state: dict[str, np.ndarray], metrics: dict[str, Any]) -> None:
        sites = [reply.as_dict() for reply in self.strategy.replies.get(server_round, [])]
        decision = self.strategy.decisions.get(server_round)
        acceptance = decision.as_dict() if decision is not None else None
        self.store.append_round({"round": server_round, **metrics, "acceptance": acceptance, "sites": sites,
                                 "time": time.time()})
        self.store.save_round_checkpoint(server_round, round_state, self.meta)
        if self.audit is not None:
            self.store.write_json(AUDIT_FILE, self.audit.as_dict())
        log.info(
            "round %d/%d: central accuracy %.3f, balanced %.3f, macro-F1 %.3f, AUC %.3f%s",
            server_round, self.config.num_server_rounds, metrics["accuracy"], metrics["balanced_accuracy"],
            metrics["macro_f1"], metrics["macro_auc"], _round_summary(sites),
        )
        if decision is not None:
            log.info("round %d %s: %s", server_round, "kept" if decision.kept else "not kept", decision.reason)


def _finish(store: RunStore, recorder: _RoundRecorder, config: RunConfig) -> None:
    """Final evaluation with CIs, the final model, the run's end time and the report."""
    final = recorder.evaluator.final_metrics(recorder.latest_state, config.bootstrap_samples, config.seed)
    # the end model is the last kept one (round acceptance): `kept_round` says which round's it is
    store.write_json(FINAL_EVAL_FILE, {"round": recorder.latest_round, "kept_round": recorder.kept_round, **final})
    store.save_final(recorder.evaluator.model, int(recorder.latest_round), recorder.meta)
    store.write_json(RUN_FILE, {**store.read_json(RUN_FILE), "end": time.time()})
    paths = write_report(store.root)
    log.info("final accuracy %.3f (95%% CI %.3f-%.3f); report: %s", final["accuracy"],
             *final["ci95"]["accuracy"], ", ".join(str(p) for p in paths))


class NoSiteTrained(RuntimeError):
    """A job in which no site trained: the model is the starting model; the run must not look complete."""


def untrained_summary(replies: dict[int, list], run_dir: str = "") -> str:
    """One readable block: why each site never trained (its last answer), and what to do next (never a resume
    that cannot help: the report's advice, `server.report.advice.next_step`)."""
    last: dict[str, str] = {}
    for server_round in sorted(replies):
        for reply in replies[server_round]:
            last[reply.site_id] = f"round {server_round}: {reply.status}: {reply.reason}"
    lines = [f"  - {site}: {text}" for site, text in sorted(last.items())] or ["  - no site answered"]
    advice = next_step(True, ((r.status, r.refusal) for answers in replies.values() for r in answers), run_dir)
    return ("no site trained in any round: the global model is the starting model (the report says so).\n"
            + "\n".join(lines) + "\n" + advice)


def _round_summary(sites: list[dict]) -> str:
    """Privacy spent, sites without update, bytes on the wire."""
    spent = largest_site_epsilon(s["metrics"] for s in sites if s["status"] == "trained")
    missing = sum(1 for s in sites if s["status"] != "trained")
    text = f"; max site epsilon {spent:.2f}" if spent is not None else ""
    text += f"; {missing} site(s) without update" if missing else ""
    if sites:
        down = sum(s["bytes_down"] for s in sites) / 1024
        up = sum(s["bytes_up"] for s in sites) / 1024
        text += f"; {down:.1f} KiB sent to {len(sites)} sites, {up:.1f} KiB received"
    return text
