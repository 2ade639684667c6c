"""fedpath ServerApp: a thin Flower layer over the run's model, strategy and store."""

from __future__ import annotations

import copy
import logging
import time

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from common.config import RunConfig
from common.data.sources import central_test_set, dataset_classes
from common.factory import initial_model
from common.logging_setup import setup_logging
from common.model import frozen_fingerprint, get_trainable_state, trainable_names
from common.paths import run_dir
from common.records import from_array_record, to_array_record
from common.strategies import describe_strategy
from common.versions import versions
from server.evaluation import CentralEvaluator
from server.privacy_audit import AUDIT_FILE, RunAudit
from server.report import write_report
from server.resume import find_resume_point
from server.run_store import RunStore
from server.screening import TrainingBound, UpdateScreen
from server.strategy import make_strategy

app = ServerApp()
log = logging.getLogger("fedpath.server")


@app.main()
def main(grid: Grid, context: Context) -> None:
    setup_logging()
    config = RunConfig.from_mapping(context.run_config)  # invalid config stops here, before anything runs
    root = run_dir(config, context.run_id)
    store = RunStore(root)
    log.info("run %s writes to %s", context.run_id, root)

    classes = dataset_classes(config)
    test = central_test_set(config)
    model, source = initial_model(config, len(classes))
    fingerprint = frozen_fingerprint(model)
    state = get_trainable_state(model)
    meta = {
        "arch": config.arch, "policy": config.policy, "classes": classes, "weights": source.as_dict(),
        "frozen_fingerprint": fingerprint, "seed": config.seed, "image_size": config.image_size,
    }
    completed = 0
    if config.resume_from:
        point = find_resume_point(store, meta, {k: tuple(v.shape) for k, v in state.items()})
        completed, state = point.completed_round, point.state
        info = store.read_json("run.json")
        info.setdefault("resumed", []).append({"run_id": context.run_id, "after_round": completed, "time": time.time()})
        store.write_json("run.json", {**info, "end": None})
    else:
        store.write_json("run.json", {
            "run_id": context.run_id, "config": config.to_mapping(), "start": time.time(), "end": None,
            "versions": versions(), "weights": source.as_dict(), "classes": classes,
            "test_examples": len(test), "test_class_counts": test.class_counts(),
            "test_stain_fallbacks": test.report.stain_fallbacks,
            "trainable_tensors": len(state), "trainable_parameters": int(sum(v.size for v in state.values())),
            "trainable_names": trainable_names(model), "frozen_fingerprint": fingerprint,
        })
    log.info(
        "%s, policy %s: %d trainable parameters travel each round (%.1f KiB); weights: %s",
        config.arch, config.policy, sum(v.size for v in state.values()),
        sum(v.nbytes for v in state.values()) / 1024, source.description,
    )

    evaluator = CentralEvaluator(copy.deepcopy(model), test, config.eval_batch_size)
    bound = TrainingBound(config.lr, config.momentum, config.max_grad_norm, config.local_epochs, config.batch_size)
    strategy = make_strategy(config, UpdateScreen(state, config.max_update_norm, bound if config.dp else None),
                             round_offset=completed)
    log.info("strategy: %s", describe_strategy(config.to_mapping()))
    previous = store.read_json(AUDIT_FILE) if completed and (root / AUDIT_FILE).exists() else None
    audit = RunAudit(model, config.seed, config.audit_canaries, config.image_size, classes,
                     previous) if config.audit_canaries else None
    if audit is not None:
        strategy.on_update = audit.observe
    latest = {"round": completed, "state": state}

    def evaluate(flower_round: int, arrays: ArrayRecord) -> MetricRecord:
        server_round = flower_round + completed
        round_state = from_array_record(arrays)
        metrics = evaluator.round_metrics(round_state)
        if flower_round > 0 or completed == 0:  # a resumed run's starting point is already recorded
            sites = [reply.as_dict() for reply in strategy.replies.get(server_round, [])]
            store.append_round({"round": server_round, **metrics, "sites": sites, "time": time.time()})
            store.save_round_checkpoint(server_round, round_state, meta)
            if audit is not None:
                store.write_json(AUDIT_FILE, audit.as_dict())
            log.info(
                "round %d/%d: central accuracy %.3f, balanced %.3f, macro-F1 %.3f, AUC %.3f%s",
                server_round, config.num_server_rounds, metrics["accuracy"], metrics["balanced_accuracy"],
                metrics["macro_f1"], metrics["macro_auc"], _round_summary(sites),
            )
        latest.update(round=server_round, state=round_state)
        return MetricRecord({k: float(v) for k, v in metrics.items()})

    remaining = max(0, config.num_server_rounds - completed)
    if remaining == 0 and completed:
        log.info("all %d rounds were already completed; finishing the report", completed)
    strategy.start(
        grid=grid,
        initial_arrays=to_array_record(state),
        num_rounds=remaining,
        timeout=config.round_timeout,
        # job-id: the run that started this job, kept when it is resumed, so a site's grant covers the
        # whole job (a resumed job is not a new one)
        train_config=ConfigRecord({"classes": classes, "frozen-fingerprint": fingerprint,
                                   "job-id": int(store.read_json("run.json")["run_id"])}),
        evaluate_fn=evaluate,
    )

    final = evaluator.final_metrics(latest["state"], config.bootstrap_samples, config.seed)
    store.write_json("final-eval.json", {"round": latest["round"], **final})
    store.save_final(evaluator.model, int(latest["round"]), meta)
    store.write_json("run.json", {**store.read_json("run.json"), "end": time.time()})
    paths = write_report(root)
    log.info("final accuracy %.3f (95%% CI %.3f-%.3f); report: %s", final["accuracy"],
             *final["ci95"]["accuracy"], ", ".join(str(p) for p in paths))
    if remaining and not any(r.status == "trained" for replies in strategy.replies.values() for r in replies):
        raise NoSiteTrained(untrained_summary(strategy.replies))


class NoSiteTrained(RuntimeError):
    """A job in which no site trained: the model is the starting model; the run must not look complete."""


def untrained_summary(replies: dict[int, list]) -> str:
    """One readable block: why each site never trained (its last answer)."""
    last: dict[str, str] = {}
    for server_round in sorted(replies):
        for reply in replies[server_round]:
            last[reply.site_id] = f"round {server_round}: {reply.status}: {reply.reason}"
    lines = [f"  - {site}: {text}" for site, text in sorted(last.items())] or ["  - no site answered"]
    return ("no site trained in any round: the global model is the starting model (the report says so).\n"
            + "\n".join(lines))


def _round_summary(sites: list[dict]) -> str:
    """Privacy spent, sites without update, bytes on the wire."""
    spent = [s["metrics"].get("epsilon") for s in sites if s["status"] == "trained" and s["metrics"].get("dp")]
    missing = sum(1 for s in sites if s["status"] != "trained")
    text = f"; max site epsilon {max(spent):.2f}" if spent else ""
    text += f"; {missing} site(s) without update" if missing else ""
    if sites:
        down = sum(s["bytes_down"] for s in sites) / 1024
        up = sum(s["bytes_up"] for s in sites) / 1024
        text += f"; {down:.1f} KiB sent to {len(sites)} sites, {up:.1f} KiB received"
    return text
