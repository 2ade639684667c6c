"""One round of local training at a site: the privacy-critical path, free of Flower types.

Order matters here. Everything that can be checked without training (config, classes,
frozen layers, data size, delta, budget) is checked first; training happens only when
the whole round fits the budget; and the ledger records the round's spend before the
update is handed back to Flower, so a crash can only over-count.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from client.identity import SiteIdentity
from common.config import RunConfig
from common.data.imageset import ImageSet
from common.data.sources import SiteData, check_classes, deployed_site, simulated_site
from common.factory import initial_model
from common.ledger import PrivacyLedger, site_lock
from common.model import frozen_fingerprint, get_trainable_state, set_trainable_state
from common.privacy import BudgetExhausted, calibrate_noise, check_round
from common.training import TrainSettings, grad_sample_mode_for, predict, steps_per_epoch, train_local

log = logging.getLogger("fedpath.site")


@dataclass
class RoundRequest:
    """What the server sent: global trainable weights and the round's instructions."""

    run_id: int
    server_round: int
    arrays: Mapping[str, np.ndarray]
    classes: list[str]
    frozen_fingerprint: str


@dataclass
class RoundResult:
    """What goes back: an update (or none, when refused) and aggregate metrics only."""

    site_id: str
    status: str  # "trained" | "refused"
    reason: str
    update: dict[str, np.ndarray] | None
    metrics: dict[str, float]
    class_counts: list[int] = field(default_factory=list)
    skipped_files: int = 0


def load_site_data(identity: SiteIdentity, config: RunConfig, classes: list[str] | None = None) -> SiteData:
    if identity.deployed:
        assert identity.data_path is not None
        return deployed_site(config, identity.data_path, strict=identity.strict, classes=classes)
    return simulated_site(config, identity.partition_id, identity.num_partitions)


def _round_seed(config: RunConfig, identity: SiteIdentity, request: RoundRequest) -> int:
    """Reproducible in simulation, different for every site, round and run."""
    words = [config.seed, request.server_round, request.run_id % (2**32), abs(hash(identity.site_id)) % (2**32)]
    if not identity.deployed:
        words[3] = identity.partition_id
    return int(np.random.SeedSequence(words).generate_state(1)[0])


def _metrics(
    *, num_examples: int, train_loss: float, val_accuracy: float, val_examples: int, epsilon: float,
    delta: float, sigma: float, clip: float, steps: int, sample_rate: float, refused: bool, dp: bool,
    budget: float, skipped: int, seconds: float,
) -> dict[str, float]:
    """The fixed set of metric keys every reply carries (Flower requires identical keys)."""
    return {
        "num-examples": num_examples,
        "train-loss": train_loss,
        "val-accuracy": val_accuracy,
        "val-examples": val_examples,
        "epsilon": epsilon,
        "epsilon-budget": budget,
        "delta": delta,
        "noise-multiplier": sigma,
        "max-grad-norm": clip,
        "steps": steps,
        "sample-rate": sample_rate,
        "refused": int(refused),
        "dp": int(dp),
        "skipped-files": skipped,
        "train-seconds": seconds,
    }


def _refusal(identity: SiteIdentity, data: ImageSet | None, reason: str, ledger: PrivacyLedger | None,
             config: RunConfig, delta: float) -> RoundResult:
    log.warning("site %s refuses this round: %s", identity.site_id, reason)
    epsilon = ledger.epsilon() if ledger is not None else PrivacyLedger.spent_so_far(identity.state_dir)
    return RoundResult(
        site_id=identity.site_id,
        status="refused",
        reason=reason,
        update=None,
        metrics=_metrics(
            num_examples=0, train_loss=float("nan"), val_accuracy=float("nan"), val_examples=0, epsilon=epsilon,
            delta=delta, sigma=0.0, clip=config.max_grad_norm, steps=0, sample_rate=0.0, refused=True,
            dp=config.dp, budget=identity.epsilon_budget, skipped=data.report.skipped if data is not None else 0,
            seconds=0.0,
        ),
        class_counts=data.class_counts() if data is not None else [],
        skipped_files=data.report.skipped if data is not None else 0,
    )


SITE_LOG = "site-rounds.jsonl"


def run_round(identity: SiteIdentity, config: RunConfig, request: RoundRequest) -> RoundResult:
    """Train one round at this site, or refuse with a reason. Raises on broken setups.

    Every outcome is also appended to `state-dir/site-rounds.jsonl`, the site's own record,
    which keeps what must not leave the site (e.g. the paths of unreadable files).
    """
    data = load_site_data(identity, config, request.classes)
    if data.train.report.skipped:
        log.warning(
            "site %s skipped %d unreadable files (first: %s)", identity.site_id, data.train.report.skipped,
            "; ".join(data.train.report.skipped_examples),
        )
    result = _run_round(identity, config, request, data)
    _append_site_log(identity, request, result, data)
    return result


def _append_site_log(identity: SiteIdentity, request: RoundRequest, result: RoundResult, data: SiteData) -> None:
    record = {
        "time": time.time(), "run_id": request.run_id, "round": request.server_round, "status": result.status,
        "reason": result.reason, "metrics": result.metrics,
        "skipped_files": data.train.report.skipped, "skipped_examples": data.train.report.skipped_examples,
    }
    identity.state_dir.mkdir(parents=True, exist_ok=True)
    with open(identity.state_dir / SITE_LOG, "a") as handle:
        handle.write(json.dumps(record, default=str) + "\n")


def _run_round(identity: SiteIdentity, config: RunConfig, request: RoundRequest, data: SiteData) -> RoundResult:
    started = time.time()
    check_classes(data.train.classes, request.classes, f"site {identity.site_id}'s data")
    train = data.train
    delta = identity.delta if identity.delta is not None else config.site_delta(len(train) + len(data.val))

    if len(train) < config.min_site_examples:
        return _refusal(
            identity, train,
            f"only {len(train)} training examples, fewer than min-site-examples={config.min_site_examples} "
            "needed for a meaningful DP step",
            None, config, delta,
        )
    if identity.deployed and not config.dp and not identity.allow_non_private:
        return _refusal(
            identity, train,
            "the run asks for non-private training (dp=false) but this site only trains under DP "
            "(start the SuperNode with allow-non-private=true to permit it)",
            None, config, delta,
        )

    model, _ = initial_model(config, len(request.classes))
    local_print = frozen_fingerprint(model)
    if local_print != request.frozen_fingerprint:
        raise RuntimeError(
            f"site {identity.site_id}'s frozen layers differ from the server's (fingerprint {local_print[:12]} vs "
            f"{request.frozen_fingerprint[:12]}): both must start from the same weights ({config.weights}) and "
            "the same arch/policy/seed, or averaged updates are meaningless"
        )
    set_trainable_state(model, request.arrays)
    seed = _round_seed(config, identity, request)
    torch.manual_seed(seed)

    steps, sample_rate = steps_per_epoch(len(train), config.batch_size)
    steps *= config.local_epochs
    settings = TrainSettings(
        epochs=config.local_epochs, batch_size=config.batch_size, lr=config.lr, momentum=config.momentum,
        seed=seed, dp=config.dp, max_grad_norm=config.max_grad_norm,
        grad_sample_mode=grad_sample_mode_for(config.policy, config.grad_sample_mode),
    )

    if not config.dp:
        outcome = train_local(model, train, settings, desc=f"{identity.site_id} round {request.server_round}")
        return _trained(identity, data, model, outcome, config, delta, 0.0, float("nan"), started)

    if not delta < 1.0 / len(train):
        hint = " (delta=0 means 1/(all site records), which needs a local validation split)" if config.delta == 0 else ""
        raise ValueError(
            f"delta={delta:.4g} must be below 1/n = {1.0 / len(train):.4g} for site {identity.site_id} with "
            f"n={len(train)} training records (otherwise releasing one record in the clear satisfies it){hint}"
        )
    with site_lock(identity.state_dir):
        ledger = PrivacyLedger.open(identity.state_dir, identity.site_id, delta, identity.epsilon_budget)
        plan_key = str(request.run_id)
        if config.noise_multiplier > 0:
            sigma = config.noise_multiplier
        elif plan_key in ledger.plans:
            sigma = float(ledger.plans[plan_key]["noise_multiplier"])
        else:
            remaining_rounds = max(1, config.num_server_rounds - request.server_round + 1)
            try:
                sigma = calibrate_noise(
                    ledger.history, sample_rate, steps * remaining_rounds, identity.epsilon_budget, delta
                )
            except BudgetExhausted as err:
                ledger.record_refusal({"run_id": request.run_id, "round": request.server_round, "reason": str(err)})
                return _refusal(identity, train, str(err), ledger, config, delta)
            ledger.plans[plan_key] = {
                "noise_multiplier": sigma, "sample_rate": sample_rate, "steps_per_round": steps,
                "planned_rounds": remaining_rounds, "from_round": request.server_round,
            }
            ledger.save()
            log.info(
                "site %s: noise multiplier %.3f so that %d rounds x %d steps stay within epsilon=%.3g (delta=%.2g)",
                identity.site_id, sigma, remaining_rounds, steps, identity.epsilon_budget, delta,
            )
        budget = check_round(ledger.history, sigma, sample_rate, steps, identity.epsilon_budget, delta)
        if not budget.fits:
            reason = (
                f"this round would raise epsilon from {budget.epsilon_before:.3f} to {budget.epsilon_after:.3f}, "
                f"beyond the site's budget {identity.epsilon_budget} (delta={delta:.3g})"
            )
            ledger.record_refusal({"run_id": request.run_id, "round": request.server_round, "reason": reason})
            return _refusal(identity, train, reason, ledger, config, delta)

        settings = TrainSettings(**{**settings.__dict__, "noise_multiplier": sigma})
        outcome = train_local(model, train, settings, history=ledger.history,
                              desc=f"{identity.site_id} round {request.server_round}")
        assert outcome.history is not None
        if outcome.steps != steps:
            log.warning("site %s took %d steps, %d were planned", identity.site_id, outcome.steps, steps)
        # The spend is on disk before the update can leave this function.
        ledger.commit_round(outcome.history, {
            "run_id": request.run_id, "round": request.server_round, "steps": outcome.steps,
            "noise_multiplier": sigma, "sample_rate": outcome.sample_rate, "num_examples": len(train),
        })
        epsilon = ledger.epsilon()
    log.info("site %s round %d: epsilon spent so far %.3f of %.3g", identity.site_id, request.server_round,
             epsilon, identity.epsilon_budget)
    return _trained(identity, data, model, outcome, config, delta, sigma, epsilon, started)


def _trained(identity: SiteIdentity, data: SiteData, model: torch.nn.Module, outcome: Any, config: RunConfig,
             delta: float, sigma: float, epsilon: float, started: float) -> RoundResult:
    val_accuracy = float("nan")
    if len(data.val):
        probs, _ = predict(model, data.val, config.eval_batch_size)
        val_accuracy = float(np.mean(probs.argmax(axis=1) == data.val.labels))
    return RoundResult(
        site_id=identity.site_id,
        status="trained",
        reason="",
        update=dict(get_trainable_state(model)),
        metrics=_metrics(
            num_examples=outcome.num_examples, train_loss=outcome.mean_loss, val_accuracy=val_accuracy,
            val_examples=len(data.val), epsilon=epsilon if config.dp else float("inf"), delta=delta if config.dp else 0.0,
            sigma=sigma, clip=config.max_grad_norm, steps=outcome.steps, sample_rate=outcome.sample_rate,
            refused=False, dp=config.dp, budget=identity.epsilon_budget, skipped=data.train.report.skipped,
            seconds=time.time() - started,
        ),
        class_counts=data.train.class_counts(),
        skipped_files=data.train.report.skipped,
    )
