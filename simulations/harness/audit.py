"""Empirical privacy audit of one simulated site, from the coordinator's point of view.

The coordinator sees every update a site sends and every global model. Two attacks on one
audited site (site 0) of a small FedAvg federation:

* **Membership inference** on real records: members are the site's training patches,
  non-members are patches of other groups (the central test set: same source, never trained
  on by anyone), class-matched. Scores, higher = "member":
  `gradient` (the coordinator's white-box view): per round, how far the site's update moved
  the model along the record's own descent direction at the model it was sent
  (`common.canaries.update_alignment`), summed over rounds; `update` (calibrated loss): per
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
  correction, and `common.audit_bound` turns the correct guesses into a lower bound on ε at the
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

A run's report (`audit-canaries = m`) audits with the same pieces (`common.canaries`,
`common.audit_bound`, `common.mia`): see `server.privacy_audit`.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.audit_bound import audit_scores
from common.canaries import coin_flips, concat, make_canaries, noise_canaries, per_example_loss, update_alignment
from common.mia import mia_metrics
from common.paths import REPO
from simulations.harness import gradient_canaries

log = logging.getLogger("fedpath.audit")

SCORES = ("gradient", "update", "final-global", "last-update")
# The one score the canary bound is computed from: fixed from pilot runs on another audit seed (7), before
# the published seeds ran (docs/BENCHMARKS.md).
CANARY_SCORE = "gradient"


@dataclass(frozen=True)
class AuditPlan:
    """Sizes of an audit federation. `per_group` caps the records taken from each group."""

    sites: int = 3  # participating sites; site 0 is audited
    rounds: int = 3
    local_epochs: int = 10
    per_group: int = 3
    site_records: int = 0  # > 0: each site keeps only this many records (whole groups of at most per_group)
    canaries: int = 300
    # "gradient" (simulations.harness.gradient_canaries: Dirac canaries in gradient space), "noise", "blocks"
    # (common.canaries.noise_canaries) or "mislabelled" (real patches)
    canary_kind: str = "gradient"
    delta: float = 1e-5  # the sites' δ; must be far below 1/m for the canary bound (its δ term is 2·m·δ)
    privacy_unit: str = "auto"  # "patch", "patient", or "auto" = the run config's setting, as a site resolves it
    mia_bootstrap: int = 1000


@dataclass
class AuditData:
    sites: list[Any]  # ImageSet per participating site, site 0 without canaries
    members: Any  # ImageSet: site 0's real training records that the MIA scores (class-matched)
    nonmembers: Any  # ImageSet: held-out records of other groups, class-matched to `members`
    canaries: Any  # ImageSet of all m canaries, with their (wrong) training labels; None for gradient canaries
    included: np.ndarray  # bool per canary
    test: Any  # central test set
    public: Any = None  # gradient canaries: records no site holds, to rank the coordinates they own


def _cap_per_group(data: Any, per_group: int, rng: np.random.Generator, records: int = 0) -> Any:
    """At most `per_group` records of each group (chosen at random), in a stable order; with
    `records` > 0, groups (in random order) only until that many records are kept."""
    keep: list[int] = []
    for group in rng.permutation(np.unique(data.groups)):
        if records and len(keep) >= records:
            break
        idx = np.flatnonzero(data.groups == group)
        keep.extend(rng.choice(idx, size=min(per_group, len(idx)), replace=False).tolist())
    return data.subset(np.sort(np.asarray(keep, dtype=np.int64)))


def _class_matched(a: Any, b: Any, rng: np.random.Generator) -> tuple[Any, Any]:
    """Subsets of a and b with the same number of records of every class."""
    ia, ib = [], []
    for c in range(len(a.classes)):
        xa, xb = np.flatnonzero(a.labels == c), np.flatnonzero(b.labels == c)
        k = min(len(xa), len(xb))
        ia.extend(rng.choice(xa, k, replace=False).tolist())
        ib.extend(rng.choice(xb, k, replace=False).tolist())
    return a.subset(np.sort(np.asarray(ia, dtype=np.int64))), b.subset(np.sort(np.asarray(ib, dtype=np.int64)))


@functools.lru_cache(maxsize=64)
def _noise_multiplier(rate: float, steps: int, epsilon: float, delta: float) -> float:
    """`calibrate_noise` from an empty history: a pure function of its arguments, and slow at rates near 1
    (seconds per call), so sites (and settings) of the same size share it."""
    from common.privacy.accounting import calibrate_noise

    return calibrate_noise([], rate, steps, epsilon, delta)


def privacy_unit(config: Any, plan: AuditPlan, data: Any) -> str:
    """The DP unit the audited sites train at: the plan's, or (auto) the run config's as a site
    resolves it: patient where the data names patients, else patch."""
    from common.patient_dp import PATCH, PATIENT

    setting = getattr(config, "privacy_unit", PATCH) if plan.privacy_unit == "auto" else plan.privacy_unit
    if setting == "auto":
        return PATIENT if getattr(data, "patient_groups", False) else PATCH
    return setting


def prepare(config: Any, plan: AuditPlan, seed: int) -> AuditData:
    """Sites, members, non-members and canaries; partition `plan.sites` (one more than take
    part) is the canary source, so canaries share no group with any site or non-member."""
    from common.data.sources import central_test_set, simulated_site

    rng = np.random.default_rng([seed, 12])
    shares = [simulated_site(config, k, plan.sites + 1) for k in range(plan.sites + 1)]
    sites = [_cap_per_group(s.train, plan.per_group, rng, plan.site_records) for s in shares[:plan.sites]]
    test = central_test_set(config)
    members, nonmembers = _class_matched(sites[0], _cap_per_group(test, plan.per_group, rng), rng)
    source = concat([shares[plan.sites].train, shares[plan.sites].val])
    public = None
    if plan.canary_kind == "gradient":
        canaries, public = None, source.subset(np.sort(rng.permutation(len(source))[:256]))
    elif plan.canary_kind in ("noise", "blocks"):
        canaries = noise_canaries(plan.canaries, config.image_size, list(source.classes), rng, source.patient_groups,
                                  block=4 if plan.canary_kind == "blocks" else 1)
    else:
        canaries = make_canaries(source, plan.canaries, rng)
    included = coin_flips(plan.canaries, rng)
    return AuditData(sites, members, nonmembers, canaries, included, test, public)


def run_setting(config: Any, plan: AuditPlan, data: AuditData, label: str, dp: bool, epsilon: float | None,
                seed: int) -> dict[str, Any]:
    """One federation (non-private or DP at `epsilon`) with the audit; returns the row."""
    import torch

    from common.data.sources import dataset_classes
    from common.dp_randomness import fresh_randomness
    from common.factory import initial_model
    from common.privacy.accounting import epsilon_of
    from common.metrics import accuracy
    from common.model import get_trainable_state, set_trainable_state
    from common.patient_dp import PATCH, PATIENT, patient_counts
    from common.training import (TrainSettings, grad_sample_mode_for, patient_steps_per_epoch, predict,
                                 steps_per_epoch, train_local)

    classes = dataset_classes(config)
    base, _ = initial_model(config, len(classes))
    global_state = get_trainable_state(base)
    dirac = data.canaries is None  # gradient canaries: records of site 0 that live in its training step
    if dirac:
        coordinates = gradient_canaries.choose_coordinates(base, data.public, len(data.included),
                                                           np.random.default_rng([seed, 13]))
        planted = gradient_canaries.DiracCanaries(coordinates, data.included, config.max_grad_norm,
                                                  np.random.default_rng([seed, 14, int(dp), int(epsilon or 0)]))
        dirac_scores = np.zeros(len(data.included))
    audited = data.sites[0] if dirac else concat([data.sites[0], data.canaries.subset(np.flatnonzero(data.included))])
    site0_records = len(audited) + (int(data.included.sum()) if dirac else 0)  # the canaries are records too
    train_sets = [audited, *data.sites[1:]]
    mode = grad_sample_mode_for(config.policy, config.grad_sample_mode)
    unit = privacy_unit(config, plan, data.sites[0]) if dp else PATCH
    cap = int(getattr(config, "max_patches_per_patient", 16))
    sigmas, histories = [], [[] for _ in train_sets]
    for site in train_sets:
        if unit == PATIENT:
            steps, rate = patient_steps_per_epoch(*patient_counts(site.groups, cap), config.batch_size)
        else:
            steps, rate = steps_per_epoch(len(site), config.batch_size)
        sigmas.append(_noise_multiplier(rate, steps * plan.local_epochs * plan.rounds, epsilon, plan.delta)
                      if dp else 0.0)
    scored = {"members": data.members, "nonmembers": data.nonmembers, **({} if dirac else {"canaries": data.canaries})}
    drops = {k: np.zeros(len(v)) for k, v in scored.items()}
    aligned = {k: np.zeros(len(v)) for k, v in scored.items()}
    last_update: dict[str, np.ndarray] = {}
    train_seconds, audit_seconds, site_seconds = 0.0, 0.0, np.zeros(len(train_sets))
    model = copy.deepcopy(base)
    for rnd in range(1, plan.rounds + 1):
        states, weights = [], []
        set_trainable_state(model, global_state)
        started = time.time()
        before = {k: per_example_loss(model, v) for k, v in scored.items()}
        audit_seconds += time.time() - started
        for k, site in enumerate(train_sets):
            started = time.time()
            set_trainable_state(model, global_state)
            # DP: the site's secret round seed, never derived from the experiment seed. Non-private
            # rows are reproducible from the experiment seed (they promise nothing).
            round_seed = fresh_randomness().seed if dp else int(np.random.SeedSequence([seed, rnd, k]).generate_state(1)[0])
            torch.manual_seed(round_seed)
            settings = TrainSettings(epochs=plan.local_epochs, batch_size=config.batch_size, lr=config.lr,
                                     momentum=config.momentum, seed=round_seed, dp=dp, noise_multiplier=sigmas[k],
                                     max_grad_norm=config.max_grad_norm, grad_sample_mode=mode,
                                     privacy_unit=unit, max_patches_per_patient=cap,
                                     audit_gradient_canaries=planted if dirac and k == 0 else None)
            outcome = train_local(model, site, settings, history=histories[k], desc=f"audit {label} site-{k} round {rnd}")
            if dp:
                histories[k] = outcome.history or []
            states.append(get_trainable_state(model))
            weights.append(site0_records if k == 0 else outcome.num_examples)
            site_seconds[k] += time.time() - started
            if k == 0:  # what the coordinator receives from the audited site
                started = time.time()
                after = {name: per_example_loss(model, v) for name, v in scored.items()}
                for name in scored:
                    drops[name] += before[name] - after[name]
                last_update = after
                for name, v in scored.items():
                    aligned[name] += update_alignment(model, v, global_state, states[0])
                if dirac:
                    dirac_scores += gradient_canaries.score(global_state, states[0], coordinates)
                audit_seconds += time.time() - started
        total = float(sum(weights))
        global_state = {name: sum(w / total * s[name] for w, s in zip(weights, states)) for name in states[0]}
    started = time.time()
    set_trainable_state(model, global_state)
    probs, _ = predict(model, data.test, config.eval_batch_size)
    test_accuracy = accuracy(data.test.labels, probs.argmax(axis=1))
    eval_seconds = time.time() - started
    started = time.time()
    final = {k: per_example_loss(model, v) for k, v in scored.items()}
    scores = {
        "gradient": aligned,
        "update": drops,
        "final-global": {k: -v for k, v in final.items()},
        "last-update": {k: -v for k, v in last_update.items()},
    }
    mia = {name: mia_metrics(s["members"], s["nonmembers"], data.members.groups, data.nonmembers.groups,
                             samples=plan.mia_bootstrap, seed=seed) for name, s in scores.items()}
    if dirac:  # one score: the canary's own coordinate (the image scores have no canary images to score)
        scores = {CANARY_SCORE: {"canaries": dirac_scores}}
    canary = audit_scores(scores[CANARY_SCORE]["canaries"], data.included, plan.delta)
    canary_auc = mia_metrics(scores[CANARY_SCORE]["canaries"][data.included],
                             scores[CANARY_SCORE]["canaries"][~data.included], samples=plan.mia_bootstrap, seed=seed)
    canary_aucs = {name: mia_metrics(s["canaries"][data.included], s["canaries"][~data.included], samples=1)["auc"]
                   for name, s in scores.items()}
    canary_bounds = {name: audit_scores(s["canaries"], data.included, plan.delta).epsilon_lower_bound
                     for name, s in scores.items()}
    audit_seconds += time.time() - started
    train_seconds = float(site_seconds.sum()) + eval_seconds
    # Canaries also lengthen the audited site's training: charged to the audit, pro rata.
    canary_share = 0.0 if dirac else float(data.included.sum()) / len(audited)
    audit_cost = audit_seconds + site_seconds[0] * canary_share
    spent = epsilon_of(histories[0], plan.delta) if dp else None
    return {
        "label": label, "kind": "audit", "dp": dp, "claimed_epsilon": epsilon, "delta": plan.delta,
        "privacy_unit": unit if dp else None,
        "site_epsilon_spent": spent, "noise_multiplier": sigmas[0] if dp else None,
        "site_records": len(data.sites[0]), "site_train_examples": site0_records, "canary_kind": plan.canary_kind,
        "mia": mia, "canary": canary.as_dict(), "canary_auc": canary_auc["auc"], "canary_auc_ci95": canary_auc["auc_ci95"],
        "canary_auc_by_score": canary_aucs, "canary_bound_by_score": canary_bounds,
        "test_accuracy": test_accuracy,
        "train_seconds": round(train_seconds, 1), "audit_seconds": round(audit_cost, 1),
        "audit_cost_ratio": round((train_seconds + audit_seconds) / max(train_seconds - site_seconds[0] * canary_share, 1e-9), 2),
        "seed": seed,
    }


def audit_config(dataset: str, image_size: int, weights: str, seed: int, policy: str = "norm-head",
                 lr: float = 0.1, batch_size: int = 64, delta: float = 1e-5, run_config: str = "",
                 **scenario: Any) -> Any:
    """The run config the audited federation uses (the sites' own keys, IID split); `scenario`
    sets further `Scenario` fields, `run_config` adds `key=value` pairs Scenario does not hold."""
    from common.config import load_app_config
    from simulations.harness.experiment import Scenario

    scenario = Scenario("audit", dataset, image_size=image_size, rounds=1, sites=2, partitioning="iid",
                        policy=policy, weights=weights, seed=seed, lr=lr, batch_size=batch_size, delta=delta,
                        **scenario)
    return load_app_config(REPO / "pyproject.toml", [scenario.run_config() + (" " + run_config if run_config else "")])


def settings_rows(config: Any, plan: AuditPlan, seed: int, epsilons: tuple[float, ...] = (8.0, 1.0)) -> list[dict[str, Any]]:
    data = prepare(config, plan, seed)
    log.info("audit data: site-0 %d records (%d scored), %d non-members, %d canaries (%d included)",
             len(data.sites[0]), len(data.members), len(data.nonmembers), len(data.included), int(data.included.sum()))
    rows = [run_setting(config, plan, data, "non-private", False, None, seed)]
    for eps in epsilons:
        rows.append(run_setting(config, plan, data, f"DP epsilon={eps:g}", True, eps, seed))
    return rows


def plan_dict(plan: AuditPlan) -> dict[str, Any]:
    return dataclasses.asdict(plan)


def targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 12's targets, per row and overall (each conservative for the claim it supports).

    * DP rows: the canary lower bound stays at or below the claimed ε (and the ledger's spend too);
    * non-private rows have power: the `update` MIA AUC ≥ 0.6 or the canary bound ≥ 1;
    * DP rows with ε ≤ 8: the *largest* MIA AUC over all scores ≤ 0.55;
    * the audit of a DP run costs at most 2x the run.
    """
    dp = [r for r in rows if r["dp"]]
    nonprivate = [r for r in rows if not r["dp"]]
    bound_ok = [r["canary"]["epsilon_lower_bound"] <= r["claimed_epsilon"] for r in dp]
    power = [r["mia"]["update"]["auc"] >= 0.6 or r["canary"]["epsilon_lower_bound"] >= 1.0 for r in nonprivate]
    dp_auc = [max(m["auc"] for m in r["mia"].values()) for r in dp if r["claimed_epsilon"] <= 8]
    cost = [r["audit_cost_ratio"] for r in dp]
    return {
        "bound_below_claimed_epsilon": bool(all(bound_ok)) if dp else None,
        "max_bound_over_claimed": max((r["canary"]["epsilon_lower_bound"] / r["claimed_epsilon"] for r in dp), default=None),
        "spent_within_claimed": bool(all(r["site_epsilon_spent"] <= r["claimed_epsilon"] * (1 + 1e-6) for r in dp)),
        "nonprivate_has_power": bool(all(power)) if nonprivate else None,
        "nonprivate_min_update_auc": min((r["mia"]["update"]["auc"] for r in nonprivate), default=None),
        "nonprivate_min_bound": min((r["canary"]["epsilon_lower_bound"] for r in nonprivate), default=None),
        "dp_max_auc": max(dp_auc, default=None),
        "dp_auc_at_most_0_55": bool(all(a <= 0.55 for a in dp_auc)) if dp_auc else None,
        "max_audit_cost_ratio": max(cost, default=None),
        "audit_cost_at_most_2x": bool(all(c <= 2.0 for c in cost)) if cost else None,
    }
