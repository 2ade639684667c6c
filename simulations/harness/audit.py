"""Empirical privacy audit of one simulated site, from the coordinator's point of view.

The coordinator sees every update a site sends and every global model. Two attacks on one
audited site (site 0) of a small FedAvg federation:

* **Membership inference** on real records: members are the site's training patches,
  non-members are patches of other groups (the central test set: same source, never trained
  on by anyone), class-matched. Scores, higher = "member":
  `gradient` (the coordinator's white-box view): per round, how far the site's update moved
  the model along the record's own descent direction at the model it was sent
  (`common.audit.canaries.update_alignment`), summed over rounds; `update` (calibrated loss): per
  round, the record's loss under the global model the site started from minus its loss under
  the model the site sent back, summed over rounds; `final-global` (anyone holding the final global model): minus the loss;
  `last-update`: minus the loss under the site's last returned model.
* **One-run canary audit** (Steinke, Nasr & Jagielski 2023): m canaries, each made a record of
  the audited site with probability ½ (coin flips from the experiment seed). `gradient` (the
  default, `simulations.harness.gradient_canaries`): Dirac canaries in gradient space, C·e_j added to the
  site's clipped gradient sum before the noise whenever Poisson sampling takes them, scored by
  how far the site's updates moved their coordinate: the worst case DP-SGD must cover, and the
  only kind that gave the audit power here. Image canaries (`noise`: uniform noise with random
  labels; `blocks`; `mislabelled`: patches of groups no participating site holds, with wrong
  labels) join the site's training data and are scored by `CANARY_SCORE` (fixed from pilot runs
  on another seed). The top/bottom k are guessed in/out for a fixed grid of k with a Bonferroni
  correction, and `common.audit.bound` turns the correct guesses into a lower bound on ε at the
  run's δ.

The training is fedpath's own site code path, called in process: `train_local` with the
run's policy and Opacus DP-SGD (`dp=True`), noise from `calibrate_noise` so that all planned
rounds fit the budget, a fresh secret seed per site and round (`fresh_randomness`), the
site's accountant history carried across rounds, FedAvg weighted by examples over the
trainable tensors. DP trains at the unit of privacy a site would use (`privacy-unit`, auto =
patient where the data names patients: then noise and steps are the patient-level ones, and
each canary is a made-up patient of its own). Only data selection, canaries and coin flips
derive from the experiment seed. Deployed sites never hold canaries: this module is for
simulations only.

A run's report (`audit-canaries = m`) audits with the same pieces (`common.audit.canaries`,
`common.audit.bound`, `common.audit.mia`): see `server.privacy_audit`.
"""


from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.audit.bound import audit_scores
from common.audit.canaries import concat, per_example_loss, update_alignment
from common.audit.mia import mia_metrics
from common.config.run_config import load_app_config
from common.data.sources import dataset_classes
from common.evaluation.metrics import accuracy
from common.model.factory import initial_model
from common.model.network import get_trainable_state, set_trainable_state
from common.privacy.accounting import epsilon_of
from common.privacy.delta import DEFAULT_DELTA
from common.training.local import predict, train_local
from common.training.patient_dp import PATCH
from simulations.harness import audit_sites, gradient_canaries
from simulations.harness.audit_data import AuditData, AuditPlan, prepare, privacy_unit
from simulations.harness.scenario import PYPROJECT, Scenario

log = logging.getLogger("fedpath.audit")

SCORES = ("gradient", "update", "final-global", "last-update")
# The one score the canary bound is computed from: fixed from pilot runs on another audit seed (7), before
# the published seeds ran (docs/BENCHMARKS.md).
CANARY_SCORE = "gradient"


@dataclass
class _Federation:
    """One audited federation's state across rounds: what trains, and what the audit accumulates."""

    config: Any
    plan: AuditPlan
    data: AuditData
    label: str
    dp: bool
    seed: int
    base: Any  # the initial model
    train_sets: list[Any]  # site 0 (with its included image canaries) first
    site0_records: int  # site 0's records, canaries included: its FedAvg weight
    unit: str
    sigmas: list[float]
    scored: dict[str, Any]  # the record sets the MIA and image-canary scores are computed for
    planted: Any = None  # gradient canaries of site 0 (None for image canaries)
    coordinates: Any = None
    dirac_scores: Any = None
    histories: list[list[Any]] = field(default_factory=list)
    drops: dict[str, np.ndarray] = field(default_factory=dict)
    aligned: dict[str, np.ndarray] = field(default_factory=dict)
    last_update: dict[str, np.ndarray] = field(default_factory=dict)
    audit_seconds: float = 0.0
    site_seconds: np.ndarray = field(default_factory=lambda: np.zeros(0))
    dp_seed: str = ""  # the simulated sites' dp-seed (opt-in reproducibility); "" = fresh OS randomness
    site0_steps: int = 0  # the audited site's steps over all rounds, and its Poisson rate per step
    site0_rate: float = 0.0
    fault: str | None = None  # an implementation broken on purpose (audit_sites.FAULTS), or None

    @property
    def dirac(self) -> bool:
        """Gradient canaries: records of site 0 that live in its training step, not in its data."""
        return self.data.canaries is None


def _start(config: Any, plan: AuditPlan, data: AuditData, label: str, dp: bool, epsilon: float | None,
           seed: int, dp_seed: str = "", fault: str | None = None) -> _Federation:
    """The initial model, site 0's canaries planted, each site's noise."""
    base, _ = initial_model(config, len(dataset_classes(config)))
    dirac = data.canaries is None
    audited = data.sites[0] if dirac else concat([data.sites[0], data.canaries.subset(np.flatnonzero(data.included))])
    train_sets = [audited, *data.sites[1:]]
    unit = privacy_unit(config, plan, data.sites[0]) if dp else PATCH
    scored = {"members": data.members, "nonmembers": data.nonmembers, **({} if dirac else {"canaries": data.canaries})}
    run = _Federation(
        config, plan, data, label, dp, seed, base, train_sets,
        site0_records=len(audited) + (int(data.included.sum()) if dirac else 0),  # the canaries are records too
        unit=unit, scored=scored,
        sigmas=audit_sites.noise_multipliers(config, plan.rounds, plan.local_epochs, plan.delta, train_sets, unit,
                                             epsilon if dp else None),
        histories=[[] for _ in train_sets], drops={k: np.zeros(len(v)) for k, v in scored.items()},
        aligned={k: np.zeros(len(v)) for k, v in scored.items()}, site_seconds=np.zeros(len(train_sets)),
        dp_seed=dp_seed, fault=fault)
    if dirac:
        run.coordinates = canary_coordinates(base, data, seed)
        run.planted = gradient_canaries.DiracCanaries(run.coordinates, data.included,
                                                      canary_norm(plan, dp) * config.max_grad_norm,
                                                      np.random.default_rng([seed, 14, int(dp), int(epsilon or 0)]))
        run.dirac_scores = np.zeros(len(data.included))
    return run


def canary_norm(plan: AuditPlan, dp: bool) -> float:
    """A gradient canary's per-record gradient norm, in multiples of C: far above 1 under DP, so that clipping
    shows (it must cut the canary to C); 1 without DP, where nothing clips: the size DP leaves it, so that the
    non-private row shows the power against the same push and its model is not wrecked by tenfold pushes."""
    return plan.canary_norm if dp else 1.0


def canary_coordinates(base: Any, data: AuditData, seed: int) -> np.ndarray:
    """The trainable coordinates the gradient canaries own, where the real records push least: ranked on the
    audited site's own records (the experimenter plays the site), then on public ones, at the starting model,
    before training and without the coin flips, so the choice cannot favour included canaries."""
    return gradient_canaries.choose_coordinates(base, [data.sites[0], data.public], len(data.included),
                                                np.random.default_rng([seed, 13]))


def _train_site(run: _Federation, model: Any, k: int, rnd: int) -> int:
    """Site k's local training this round, from the global model already in `model`; its FedAvg weight."""
    randomness = audit_sites.round_randomness(run.dp, run.dp_seed, run.seed, k, rnd)
    settings = audit_sites.site_settings(run.config, run.plan.local_epochs, randomness, run.dp, run.sigmas[k], run.unit,
                                         run.fault, run.planted if run.dirac and k == 0 else None)
    outcome = train_local(model, run.train_sets[k], settings, history=run.histories[k],
                          desc=f"audit {run.label} site-{k} round {rnd}")
    if run.dp:  # what the site's ledger holds: the claimed σ (a faulty site claims it too)
        run.histories[k] = audit_sites.claimed_history(outcome.history or [], run.sigmas[k])
    if k == 0:
        run.site0_steps += outcome.steps
        run.site0_rate = outcome.sample_rate
    return run.site0_records if k == 0 else outcome.num_examples


def _observe_site0(run: _Federation, model: Any, before: dict[str, np.ndarray], sent: dict[str, Any],
                   returned: dict[str, Any]) -> None:
    """What the coordinator learns from the audited site's update: loss drops, alignment, canary coordinates."""
    after = {name: per_example_loss(model, v) for name, v in run.scored.items()}
    for name, records in run.scored.items():
        run.drops[name] += before[name] - after[name]
        run.aligned[name] += update_alignment(model, records, sent, returned)
    run.last_update = after
    if run.dirac:
        run.dirac_scores += gradient_canaries.score(sent, returned, run.coordinates)


def _round(run: _Federation, model: Any, global_state: dict[str, Any], rnd: int) -> dict[str, Any]:
    """One FedAvg round over all sites, observing site 0; the new global state."""
    states, weights = [], []
    set_trainable_state(model, global_state)
    started = time.time()
    before = {k: per_example_loss(model, v) for k, v in run.scored.items()}
    run.audit_seconds += time.time() - started
    for k in range(len(run.train_sets)):
        started = time.time()
        set_trainable_state(model, global_state)
        weights.append(_train_site(run, model, k, rnd))
        states.append(get_trainable_state(model))
        run.site_seconds[k] += time.time() - started
        if k == 0:  # what the coordinator receives from the audited site
            started = time.time()
            _observe_site0(run, model, before, global_state, states[0])
            run.audit_seconds += time.time() - started
    total = float(sum(weights))
    return {name: sum(w / total * s[name] for w, s in zip(weights, states)) for name in states[0]}


def _attacks(run: _Federation, model: Any) -> dict[str, Any]:
    """Every MIA score on the real records, and the canary bound and AUCs, from the final model."""
    data, plan, seed = run.data, run.plan, run.seed
    final = {k: per_example_loss(model, v) for k, v in run.scored.items()}
    scores = {
        "gradient": run.aligned,
        "update": run.drops,
        "final-global": {k: -v for k, v in final.items()},
        "last-update": {k: -v for k, v in run.last_update.items()},
    }
    mia = {name: mia_metrics(s["members"], s["nonmembers"], data.members.groups, data.nonmembers.groups,
                             samples=plan.mia_bootstrap, seed=seed) for name, s in scores.items()}
    if run.dirac:  # one score: the canary's own coordinate (the image scores have no canary images to score)
        scores = {CANARY_SCORE: {"canaries": run.dirac_scores}}
    chosen = scores[CANARY_SCORE]["canaries"]
    canary_auc = mia_metrics(chosen[data.included], chosen[~data.included], samples=plan.mia_bootstrap, seed=seed)
    return {
        "mia": mia, "canary": audit_scores(chosen, data.included, plan.delta).as_dict(),
        "canary_auc": canary_auc["auc"], "canary_auc_ci95": canary_auc["auc_ci95"],
        "canary_auc_by_score": {name: mia_metrics(s["canaries"][data.included], s["canaries"][~data.included],
                                                  samples=1)["auc"] for name, s in scores.items()},
        "canary_bound_by_score": {name: audit_scores(s["canaries"], data.included, plan.delta).epsilon_lower_bound
                                  for name, s in scores.items()},
    }


def run_setting(config: Any, plan: AuditPlan, data: AuditData, label: str, dp: bool, epsilon: float | None,
                seed: int, dp_seed: str = "", fault: str | None = None) -> dict[str, Any]:
    """One federation (non-private or DP at `epsilon`) with the audit; returns the row.

    `dp_seed` pins the DP sites' randomness as a site-held `dp-seed` does (each simulated site gets its own,
    `audit_sites.site_dp_seed`); "" draws it fresh from the OS each round, as sites do by default. `fault`
    breaks the DP implementation on purpose while the sites claim ε (`audit_sites.FAULTS`).
    """
    run = _start(config, plan, data, label, dp, epsilon, seed, dp_seed, fault)
    global_state = get_trainable_state(run.base)
    model = copy.deepcopy(run.base)
    for rnd in range(1, plan.rounds + 1):
        global_state = _round(run, model, global_state, rnd)
    started = time.time()
    set_trainable_state(model, global_state)
    probs, _ = predict(model, data.test, config.eval_batch_size)
    test_accuracy = accuracy(data.test.labels, probs.argmax(axis=1))
    eval_seconds = time.time() - started
    started = time.time()
    attacks = _attacks(run, model)
    run.audit_seconds += time.time() - started
    train_seconds = float(run.site_seconds.sum()) + eval_seconds
    # Canaries also lengthen the audited site's training: charged to the audit, pro rata.
    canary_share = 0.0 if run.dirac else float(data.included.sum()) / len(run.train_sets[0])
    audit_cost = run.audit_seconds + run.site_seconds[0] * canary_share
    return {
        "label": label, "kind": "audit", "dp": dp, "claimed_epsilon": epsilon, "delta": plan.delta, "fault": fault,
        "privacy_unit": run.unit if dp else None,
        "site_epsilon_spent": epsilon_of(run.histories[0], plan.delta) if dp else None,
        "noise_multiplier": run.sigmas[0] if dp else None,
        "site_records": len(data.sites[0]), "site_train_examples": run.site0_records, "canary_kind": plan.canary_kind,
        "site_steps": run.site0_steps, "site_sample_rate": run.site0_rate,
        "canary_norm": canary_norm(plan, dp) if run.dirac else None,
        **attacks, "test_accuracy": test_accuracy,
        "train_seconds": round(train_seconds, 1), "audit_seconds": round(audit_cost, 1),
        "audit_cost_ratio": round((train_seconds + run.audit_seconds)
                                  / max(train_seconds - run.site_seconds[0] * canary_share, 1e-9), 2),
        "seed": seed,
    }


def audit_config(dataset: str, image_size: int, weights: str, seed: int, policy: str = "norm-head",
                 lr: float = 0.1, batch_size: int = 64, delta: float = DEFAULT_DELTA, run_config: str = "",
                 **scenario: Any) -> Any:
    """The run config the audited federation uses (the sites' own keys, IID split); `scenario`
    sets further `Scenario` fields, `run_config` adds `key=value` pairs Scenario does not hold."""
    scenario = Scenario("audit", dataset, image_size=image_size, rounds=1, sites=2, partitioning="iid",
                        policy=policy, weights=weights, seed=seed, lr=lr, batch_size=batch_size, delta=delta,
                        **scenario)
    return load_app_config(PYPROJECT, [scenario.run_config() + (" " + run_config if run_config else "")])


def settings_rows(config: Any, plan: AuditPlan, seed: int, epsilons: tuple[float, ...] = (8.0, 1.0),
                  dp_seed: str = "", faults: tuple[tuple[float, str], ...] = ()) -> list[dict[str, Any]]:
    """The non-private row, a DP row per ε, and a row per (ε, fault): DP broken on purpose at that claim."""
    data = prepare(config, plan, seed)
    log.info("audit data: site-0 %d records (%d scored), %d non-members, %d canaries (%d included)",
             len(data.sites[0]), len(data.members), len(data.nonmembers), len(data.included), int(data.included.sum()))
    rows = [run_setting(config, plan, data, "non-private", False, None, seed)]
    for eps in epsilons:
        rows.append(run_setting(config, plan, data, f"DP epsilon={eps:g}", True, eps, seed, dp_seed))
    for eps, fault in faults:
        rows.append(run_setting(config, plan, data, f"DP epsilon={eps:g}, {fault.replace('-', ' ')} (broken)", True,
                                eps, seed, dp_seed, fault))
    return rows


def plan_dict(plan: AuditPlan) -> dict[str, Any]:
    return dataclasses.asdict(plan)
