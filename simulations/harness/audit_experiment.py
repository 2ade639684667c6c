"""`python -m simulations.harness.experiment audit [--quick]`: the empirical privacy audit.

Membership inference and a one-run canary audit of one site (in process, fedpath's site
training path, `simulations.harness.audit`), for non-private FedAvg and DP at ε 8 and 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from simulations.harness import audit
from simulations.harness.audit import AuditPlan
from simulations.harness.backbone import audit_weights, backbone_epochs, weights_provenance
from simulations.harness.scenario import base_scenario


def audit_plan(quick: bool) -> AuditPlan:
    """Sizes of the audit experiment (see simulations.harness.audit): small sites, many local epochs."""
    # Gradient canaries (the default kind) cost almost nothing, so m = 1000 (the bound grows with m).
    if quick:  # sized for a shared, busy 2-core machine: a few minutes per setting
        return AuditPlan(sites=2, rounds=2, local_epochs=4, per_group=2, canaries=1000)
    return AuditPlan(sites=3, rounds=5, local_epochs=20, per_group=3, canaries=1000)


AUDIT_IMAGE_SIZE = {True: 16, False: 32}  # quick: 16 px (the 32 px backbone applied to 16 px patches)


AUDIT_SEEDS = {True: (42,), False: (42, 43, 44)}


def exp_audit(quick: bool, data: Path, out: Path, workdir: Path) -> dict[str, Any]:
    """Membership inference and a one-run canary audit of one site (in process, fedpath's site
    training path), for non-private FedAvg and DP at epsilon 8 and 1, on every seed."""
    base = base_scenario(quick, data)
    weights = audit_weights(base, out, backbone_epochs(quick))
    plan = audit_plan(quick)
    # The splits (test set, public share the backbone saw, sites) stay those of the experiments'
    # seed; each audit seed redraws the records, canaries and coin flips.
    size = AUDIT_IMAGE_SIZE[quick]
    config = audit.audit_config(str(data), size, str(weights), base.seed, delta=plan.delta)
    rows = []
    for seed in AUDIT_SEEDS[quick]:
        rows.extend(audit.settings_rows(config, plan, seed))
    return {"rows": rows, "plan": audit.plan_dict(plan), "weights": str(weights.name),
            "weights_description": weights_provenance(weights), "targets": targets(rows), "policy": "norm-head",
            "image_size": size, "canary_score": audit.CANARY_SCORE}


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
