"""`python -m simulations.harness.experiment audit [--quick]`: the empirical privacy audit.

Membership inference and a one-run canary audit of one site (in process, fedpath's site
training path, `simulations.harness.audit`), for non-private FedAvg, DP at ε 8 and 2, and DP at
ε 2 broken on purpose (noise off; clipping off) while the sites claim ε 2: the audit must find
those inconsistent, and ε 2 lies below what it can certify, so it could.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from simulations.harness import audit
from simulations.harness.audit import AuditPlan
from simulations.harness.audit_sites import FAULTS
from simulations.harness.backbone import audit_weights, backbone_epochs, weights_provenance
from simulations.harness.results import row_ceiling
from simulations.harness.scenario import base_scenario


def audit_plan(quick: bool) -> AuditPlan:
    """Sizes of the audit experiment (see simulations.harness.audit): small sites, many local epochs."""
    # Gradient canaries (the default kind) cost almost nothing, so m = 1000 (the bound grows with m).
    if quick:  # sized for a shared, busy 2-core machine: a few minutes per setting
        return AuditPlan(sites=2, rounds=2, local_epochs=4, per_group=2, canaries=1000)
    return AuditPlan(sites=3, rounds=5, local_epochs=20, per_group=3, canaries=1000)


AUDIT_IMAGE_SIZE = {True: 16, False: 32}  # quick: 16 px (the 32 px backbone applied to 16 px patches)


AUDIT_SEEDS = {True: (42,), False: (42, 43, 44)}
AUDIT_EPSILONS = (8.0, 2.0)  # 8: the default claim (above what one run can certify); 2: one it can contradict
BROKEN = tuple((2.0, fault) for fault in FAULTS)  # DP at ε 2 broken on purpose (simulations.harness.audit_sites)


def exp_audit(quick: bool, data: Path, out: Path, workdir: Path) -> dict[str, Any]:
    """Membership inference and a one-run canary audit of one site (in process, fedpath's site
    training path), for non-private FedAvg, DP at epsilon 8 and 2 and the broken DP rows, on every seed."""
    base = base_scenario(quick, data)
    weights = audit_weights(base, out, backbone_epochs(quick))
    plan = audit_plan(quick)
    # The splits (test set, public share the backbone saw, sites) stay those of the experiments'
    # seed; each audit seed redraws the records, canaries and coin flips.
    size = AUDIT_IMAGE_SIZE[quick]
    config = audit.audit_config(str(data), size, str(weights), base.seed, delta=plan.delta)
    rows = []
    for seed in AUDIT_SEEDS[quick]:
        rows.extend(audit.settings_rows(config, plan, seed, AUDIT_EPSILONS, faults=BROKEN))
    return {"rows": rows, "plan": audit.plan_dict(plan), "weights": str(weights.name),
            "weights_description": weights_provenance(weights), "targets": targets(rows), "policy": "norm-head",
            "image_size": size, "canary_score": audit.CANARY_SCORE}


def targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 12's and 21's targets, per row and overall (each conservative for the claim it supports).

    * DP rows (as implemented): the canary lower bound stays at or below the claimed ε (and the ledger's
      spend too), and we say at which claims that could have failed (claim below the audit's ceiling);
    * DP rows broken on purpose (`fault`): the bound exceeds the claimed ε (the audit catches them);
    * non-private rows have power: the `update` MIA AUC ≥ 0.6 or the canary bound ≥ 1;
    * DP rows with ε ≤ 8: the *largest* MIA AUC over all scores ≤ 0.55;
    * the audit of a DP run costs at most 2x the run.
    """
    dp = [r for r in rows if r["dp"] and not r.get("fault")]
    broken = [r for r in rows if r["dp"] and r.get("fault")]
    nonprivate = [r for r in rows if not r["dp"]]
    bound_ok = [r["canary"]["epsilon_lower_bound"] <= r["claimed_epsilon"] for r in dp]
    power = [r["mia"]["update"]["auc"] >= 0.6 or r["canary"]["epsilon_lower_bound"] >= 1.0 for r in nonprivate]
    dp_auc = [max(m["auc"] for m in r["mia"].values()) for r in dp if r["claimed_epsilon"] <= 8]
    cost = [r["audit_cost_ratio"] for r in dp]
    return {
        "bound_below_claimed_epsilon": bool(all(bound_ok)) if dp else None,
        "max_bound_over_claimed": max((r["canary"]["epsilon_lower_bound"] / r["claimed_epsilon"] for r in dp), default=None),
        "conclusive_claims": sorted({r["claimed_epsilon"] for r in dp if row_ceiling(r) > r["claimed_epsilon"]}),
        "inconclusive_claims": sorted({r["claimed_epsilon"] for r in dp if row_ceiling(r) <= r["claimed_epsilon"]}),
        "broken_runs_caught": bool(all(r["canary"]["epsilon_lower_bound"] > r["claimed_epsilon"] for r in broken))
        if broken else None,
        "broken_min_bound": min((r["canary"]["epsilon_lower_bound"] for r in broken), default=None),
        "spent_within_claimed": bool(all(r["site_epsilon_spent"] <= r["claimed_epsilon"] * (1 + 1e-6) for r in dp)),
        "nonprivate_has_power": bool(all(power)) if nonprivate else None,
        "nonprivate_min_update_auc": min((r["mia"]["update"]["auc"] for r in nonprivate), default=None),
        "nonprivate_min_bound": min((r["canary"]["epsilon_lower_bound"] for r in nonprivate), default=None),
        "dp_max_auc": max(dp_auc, default=None),
        "dp_auc_at_most_0_55": bool(all(a <= 0.55 for a in dp_auc)) if dp_auc else None,
        "max_audit_cost_ratio": max(cost, default=None),
        "audit_cost_at_most_2x": bool(all(c <= 2.0 for c in cost)) if cost else None,
    }
