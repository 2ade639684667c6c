"""One round of local training at a site: the privacy-critical path, free of Flower types.

Order matters here. Everything that can be checked without training (config, classes,
frozen layers, data size, delta, the job's grant, the round's budget) is checked first;
training happens only when the whole round fits; and the ledger records the round's spend
before the update is handed back to Flower, so a crash can only over-count.

What leaves the site is built by `common.wire.reply` alone: the DP update, accounting values and
fixed codes. Free text (refusal details, file names, exception messages) stays in the site's
own log, `state-dir/site-rounds.jsonl`.

The round's steps live beside this module: its request and result (`client.round_types`), what it
knows as it goes and its reply (`client.round_state`), the model it starts from
(`client.site_model`) and its privacy plan (`client.job_planning`).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np
import torch

from client.identity import SiteIdentity
from client.job_planning import open_site_ledger, plan_job, planned_steps, round_over_budget, spend_on_record
from client.overrides import announce_job, ignored_run_config
from client.privacy_unit import UnitUndecided, resolve_privacy_unit, unit_statement
from client.round_state import RoundState
from client.round_types import RoundRequest, RoundResult
from client.server_input import ServerInputError, check_server_input
from client.site_keys import site_split_key
from client.site_model import ModelMismatch, start_model
from common.config.run_config import ConfigError, RunConfig
from common.config.stain_settings import augments
from common.config.strategies import proximal_mu_ok
from common.data.content import read_hash_list
from common.data.imageset import DataError
from common.data.sources import SiteData, check_classes, deployed_site, simulated_site, stain_handled
from common.files import append_private
from common.model.head_centering import OFF, centred_head, from_bytes
from common.model.network import get_trainable_state
from common.paths import AUDITED_PARTITION, SITE_LOG
from common.privacy.accounting import epsilon_of
from common.privacy.delta import auto_delta, check_delta
from common.privacy.ledger import LedgerError, PrivacyLedger, site_lock
from common.privacy.period import rounds_in_period
from common.privacy.randomness import RoundRandomness, round_randomness
from common.training.local import predict, train_local
from common.training.patient_dp import PATCH, PATIENT, patient_counts
from common.training.settings import TrainSettings
from common.training.steps import grad_sample_mode_for
from common.wire.instruction import InstructionError

log = logging.getLogger("fedpath.site")


def failure_code(err: BaseException) -> str:
    """The fixed code (common.wire.reply.FAILURES) under which a site's exception crosses the wire."""
    if isinstance(err, DataError):
        return "data"
    if isinstance(err, UnitUndecided):
        return "privacy-unit"
    if isinstance(err, ConfigError):
        return "config"
    if isinstance(err, ModelMismatch):
        return "model"
    if isinstance(err, LedgerError):
        return "ledger"
    if isinstance(err, (ServerInputError, InstructionError)):
        return "server-input"
    return "internal"


def load_site_data(identity: SiteIdentity, config: RunConfig, classes: list[str] | None = None) -> SiteData:
    if identity.deployed:
        assert identity.data_path is not None
        test_hashes = read_hash_list(identity.test_hashes) if identity.test_hashes else frozenset()
        return stain_handled(deployed_site(identity.data_path, config.image_size, identity.val_fraction,
                                           site_split_key(identity), strict=identity.strict, classes=classes,
                                           groups_csv=identity.groups_csv, test_hashes=test_hashes), config)
    data = simulated_site(config, identity.partition_id, identity.num_partitions)
    if identity.partition_id != AUDITED_PARTITION or config.audit_canaries <= 0:
        return data
    # Simulation audit only: the audit's code is loaded here, never at a deployed site nor in a run without canaries.
    from common.audit.canaries import with_run_canaries

    return with_run_canaries(data, config)


def run_round(identity: SiteIdentity, config: RunConfig, request: RoundRequest) -> RoundResult:
    """Train one round at this site, or refuse with a reason. Raises on broken setups.

    Every outcome, failures included, is appended to `state-dir/site-rounds.jsonl`, the
    site's own record, which keeps what must not leave the site (reasons, file paths).
    """
    try:
        check_server_input(request)  # before any record is read: the refusal depends on the server's input only
        data = load_site_data(identity, config, request.classes)
        if data.train.report.skipped:
            log.warning(
                "site %s skipped %d unreadable files (first: %s)", identity.site_id, data.train.report.skipped,
                "; ".join(data.train.report.skipped_examples),
            )
        result = _run_round(identity, config, request, data)
    except Exception as err:
        _append_site_log(identity, request, {"status": "failed", "code": failure_code(err),
                                             "error": f"{type(err).__name__}: {err}"})
        raise
    _append_site_log(identity, request, {
        "status": result.status, "reason": result.local_reason, "metrics": result.metrics, **result.local,
        "proximal_mu": request.proximal_mu,  # what the server's train config asked (FedProx), as received
        "diagnostics": _local_diagnostics(data, result),
        "skipped_files": data.train.report.skipped, "skipped_examples": data.train.report.skipped_examples,
        "stain_fallbacks": data.train.report.stain_fallbacks,  # stays here: counts of images, never names
        "test_copies_withheld": data.test_copies,  # copies of central test images (test-hashes): never sent
    })
    return result


def _local_diagnostics(data: SiteData, result: RoundResult) -> dict[str, Any]:
    return result.reply.diagnostics or {"class-counts": data.train.class_counts(), "val-examples": len(data.val)}


def _append_site_log(identity: SiteIdentity, request: RoundRequest, record: dict[str, Any]) -> None:
    line = {"time": time.time(), "run_id": request.run_id, "round": request.server_round, **record}
    append_private(identity.state_dir / SITE_LOG, json.dumps(line, default=str) + "\n")  # 0600 in a 0700 state-dir


def _run_round(identity: SiteIdentity, config: RunConfig, request: RoundRequest, data: SiteData) -> RoundResult:
    """One round at the site, privacy first: refuse early, plan, then train under the ledger's lock."""
    check_classes(data.train.classes, request.classes, f"site {identity.site_id}'s data")
    state, usable = _open_round(identity, config, request, data)
    refusal = _refusal_before_training(state)
    if refusal is not None:
        return refusal
    model = start_model(identity, config, request)
    if not config.dp:
        return _train_non_private(state, model)
    problem = check_delta(state.delta, state.records)
    if problem:
        raise ConfigError(f"site {identity.site_id}: delta={state.delta:.4g} with n={state.records} training "
                          f"records (unit: {state.unit}): {problem}")
    steps, sample_rate = planned_steps(state, usable)
    with site_lock(identity.state_dir):
        return _train_private(state, model, steps, sample_rate)


def _open_round(identity: SiteIdentity, config: RunConfig, request: RoundRequest,
                data: SiteData) -> tuple[RoundState, int]:
    """The round's unit of privacy, its record count and δ, all decided by the site's own data and config."""
    n = len(data.train)
    unit = resolve_privacy_unit(identity.privacy_unit, data, identity.deployed) if config.dp else PATCH
    records, usable = patient_counts(data.train.groups, config.max_patches_per_patient) if unit == PATIENT else (n, n)
    delta = identity.delta if identity.delta is not None else auto_delta(records)
    ignored = ignored_run_config(identity, config, unit)
    announce_job(identity, config, request.run_id, unit, delta, ignored)  # the job's banner, once
    epsilon, epsilon_in_period = spend_on_record(identity)
    state = RoundState(identity, config, request, data, delta, time.time(), unit=unit, records=records,
                       epsilon=epsilon, epsilon_in_period=epsilon_in_period, overridden=list(ignored))
    if ignored:
        state.local["ignored_run_config"] = ignored  # the site's own log, every round; only the names are sent
    return state, usable


def _refusal_before_training(state: RoundState) -> RoundResult | None:
    """Refusals that need neither a model nor the ledger."""
    identity, config, request = state.identity, state.config, state.request
    if identity.deployed and config.audit_canaries > 0:
        return state.refuse("audit-canaries-not-allowed", "the run asks for audit canaries (audit-canaries="
                            f"{config.audit_canaries}); only simulated sites train with canaries")
    if not proximal_mu_ok(request.proximal_mu):
        return state.refuse("invalid-proximal-mu", f"the server sent proximal-mu={request.proximal_mu!r}; "
                            "FedProx needs a finite number >= 0")
    if len(state.data.train) < config.min_site_examples:
        return state.refuse("too-few-examples", f"only {len(state.data.train)} training examples, fewer than "
                            f"min-site-examples={config.min_site_examples} needed for a meaningful DP step")
    if identity.deployed and not config.dp and not identity.allow_non_private:
        return state.refuse("non-private-not-allowed", "the run asks for non-private training (dp=false) but this "
                            "site only trains under DP (start the SuperNode with allow-non-private=true to permit it)")
    return None


def _train_settings(state: RoundState, randomness: RoundRandomness, sigma: float = 0.0) -> TrainSettings:
    """Local training settings: the round's key and σ are the site's alone, the rest the run's."""
    config, request = state.config, state.request
    state.randomness = randomness.mode
    return TrainSettings(
        epochs=config.local_epochs, batch_size=config.batch_size, lr=config.lr, momentum=config.momentum,
        randomness=randomness, dp=config.dp, noise_multiplier=sigma, max_grad_norm=config.max_grad_norm,
        grad_sample_mode=grad_sample_mode_for(config.policy, config.grad_sample_mode),
        privacy_unit=state.unit, max_patches_per_patient=config.max_patches_per_patient,
        min_records_per_step=config.min_records_per_step, proximal_mu=float(request.proximal_mu), stain_augment=augments(config.stain),
    )


def _head_input_mean(state: RoundState) -> np.ndarray | None:
    """The server's mean of the head's input (checked by `client.server_input`) unless center-head = off, or None.

    The server sends one only where centring applies (`common.model.head_centering.centring_applies`: on, or auto
    from scratch) and it holds validation images; otherwise the head is trained as it is. The same function either
    way, so nothing about the reply or the budget depends on it.
    """
    blob = state.request.head_input_mean
    return from_bytes(blob) if state.config.center_head != OFF and isinstance(blob, bytes) else None


def _desc(state: RoundState) -> str:
    return f"{state.identity.site_id} round {state.request.server_round}"


def _train_non_private(state: RoundState, model: torch.nn.Module) -> RoundResult:
    settings = _train_settings(state, round_randomness(state.identity.dp_seed, state.identity.site_id, 0))
    with centred_head(model, _head_input_mean(state)):
        outcome = train_local(model, state.data.train, settings, desc=_desc(state))
    return _trained(state, model, outcome, 0.0)


def _train_private(state: RoundState, model: torch.nn.Module, steps: int, sample_rate: float) -> RoundResult:
    """Under the site lock: grant and σ, budget check, DP-SGD, and the spend on disk before any reply."""
    identity, request = state.identity, state.request
    ledger = open_site_ledger(state)
    state.epsilon = ledger.epsilon()
    planned = plan_job(state, ledger, sample_rate, steps)
    if planned.refusal is not None:
        return planned.refusal
    sigma = planned.sigma
    refusal = round_over_budget(state, ledger, sigma, sample_rate, steps)
    if refusal is not None:
        return refusal
    randomness = round_randomness(identity.dp_seed, identity.site_id, ledger.position())
    settings = _train_settings(state, randomness, sigma)
    with centred_head(model, _head_input_mean(state)):
        outcome = train_local(model, state.data.train, settings, history=ledger.history, desc=_desc(state))
    assert outcome.history is not None
    if outcome.steps != steps:
        log.warning("site %s took %d steps, %d were planned", identity.site_id, outcome.steps, steps)
    # The spend is on disk before the update can leave this function.
    ledger.commit_round(outcome.history, {
        "run_id": request.run_id, "round": request.server_round, "job": state.local.get("job"), "steps": outcome.steps,
        "noise_multiplier": sigma, "sample_rate": outcome.sample_rate, "num_examples": len(state.data.train),
        "privacy_records": state.records, "unit": state.unit, "randomness": randomness.mode,
        **_period_use(state, ledger, (sigma, outcome.sample_rate, outcome.steps)),
    })
    state.epsilon = ledger.epsilon()
    state.local["ledger_head"] = ledger.head.short() if ledger.head else ""  # matches the ledger's chain (auditors)
    log.info("site %s round %d: epsilon spent so far %.3f of %.3g (this job may reach %.3f); %s; ledger %s",
             identity.site_id, request.server_round, state.epsilon, identity.epsilon_budget, state.grant.limit,
             unit_statement(state.unit, identity.privacy_unit), state.local["ledger_head"])
    return _trained(state, model, outcome, sigma)


def _period_use(state: RoundState, ledger: PrivacyLedger, spent: tuple[float, float, int]) -> dict[str, float]:
    """With an allowance per period: the period's ε with this round's (σ, q, steps), for the reply and the ledger."""
    identity = state.identity
    if identity.epsilon_per_period <= 0:
        return {}
    window = rounds_in_period(ledger.rounds, identity.period_days) + [spent]
    state.epsilon_in_period = epsilon_of(window, ledger.delta)
    return {"epsilon_in_period": state.epsilon_in_period, "epsilon_per_period": identity.epsilon_per_period,
            "period_days": identity.period_days}


def _trained(state: RoundState, model: torch.nn.Module, outcome: Any, sigma: float) -> RoundResult:
    val_accuracy = float("nan")
    if state.identity.share_diagnostics and len(state.data.val):
        probs, _ = predict(model, state.data.val, state.config.eval_batch_size)
        val_accuracy = float(np.mean(probs.argmax(axis=1) == state.data.val.labels))
    update = dict(get_trainable_state(model))
    if not all(np.isfinite(t).all() for t in update.values()):
        # Cannot happen: every record's gradient is finite or zero and the noise is finite. Should it, the
        # update must not leave (a NaN could depend on one record); the failure code is "internal".
        raise RuntimeError("the trained update holds non-finite values; nothing is sent")
    reply = state.reply("trained", update=update, sigma=sigma, steps=outcome.steps,
                        sample_rate=outcome.sample_rate, train_loss=outcome.mean_loss, val_accuracy=val_accuracy)
    if outcome.nonfinite_records:
        log.warning("site %s: %d records had non-finite logits or gradients and contributed nothing this round "
                    "(the server's weights may be crafted or diverged)", state.identity.site_id, outcome.nonfinite_records)
    # A count over the data without DP: the site's own log only, never the reply.
    return RoundResult(reply, local={**state.local, "nonfinite_records": outcome.nonfinite_records})
