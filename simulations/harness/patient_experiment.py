"""`python -m simulations.harness.experiment patient-privacy [--quick]`: what protecting patients costs.

Issue 11's evidence on LC25000 (`groups.csv` groups standing in for patients, group-aware
splits), with the settings of the `baselines` experiment: pooled non-private, FedAvg
non-private, and FedAvg under DP at ε ∈ {1, 2, 4, 8} per site, once with one patch as the unit
of privacy and once with one patient. Every DP row carries both guarantees, computed from the
(σ, q, steps) history each site reported (`common.privacy.units`):

* a patch-level run's ε per patch is the accountant's; its ε per patient is an upper bound for
  patients of up to k patches (k = the largest patient at any site, measured on the sites'
  training data, which the harness can see because it made the partition);
* a patient-level run's ε per patient is the accountant's; its ε per patch is an upper bound
  (removing one patch changes one patient: two patient-level steps, Rényi weak triangle).

Issue 23's levers, each a set of patient-level rows beside the defaults (`LEVERS`): what the defaults
gained from each is the gap between the default row and the lever row at the same ε. The tighter
accountant (min of RDP and PRV, `common.privacy.accounting`) has no row: it is in every row, and what
it buys is a σ, tabulated in docs/PRIVACY.md ("How ε is computed"). Every row carries the server's
validation accuracy (never the test set) of its starting and end model: defaults are chosen on it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from common.data.sources import all_simulated_sites
from common.privacy.accounting import epsilon_of
from common.privacy.units import patch_epsilon_of_patient_run, patient_epsilon_of_patch_run
from simulations.harness.backbone import experiments_backbone
from simulations.harness.runs import federated, pooled
from simulations.harness.scenario import Scenario, base_scenario

EPSILONS = (1.0, 2.0, 4.0, 8.0)
UNITS = ("patch", "patient")
# (name, scenario fields, the ε it is measured at): each departs from the defaults in one respect.
LEVERS: tuple[tuple[str, dict[str, Any], tuple[float, ...]], ...] = (
    ("steps from the batch size alone (min-records-per-step=1, before issue 23)", {"min_records_per_step": 1},
     EPSILONS),
    ("every round kept (round-acceptance=all)", {"round_acceptance": "all"}, (1.0, 2.0)),
    ("head only (policy=head)", {"policy": "head"}, (1.0, 2.0)),
    ("head centred (center-head=on)", {"center_head": "on"}, EPSILONS),
)


def largest_patient(scenario: Scenario) -> int:
    """The most training patches any one patient has at any simulated site (k of the group bound)."""
    sites = all_simulated_sites(scenario.config(), scenario.sites)
    return max(int(np.unique(s.train.groups, return_counts=True)[1].max()) for s in sites if len(s.train))


def both_guarantees(row: dict[str, Any], unit: str, k: int) -> dict[str, float]:
    """Largest ε per patch and per patient over the row's sites, from their reported histories."""
    per_patch, per_patient = [], []
    for site, history in row["site_histories"].items():
        delta = float(row["site_deltas"][site])
        spent = epsilon_of(history, delta)
        if unit == "patch":
            per_patch.append(spent)
            per_patient.append(patient_epsilon_of_patch_run(history, delta, k))
        else:
            per_patient.append(spent)
            per_patch.append(patch_epsilon_of_patient_run(history, delta))
    return {"epsilon_per_patch": max(per_patch), "epsilon_per_patient": max(per_patient)}


def accuracy_cost(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Patient-level minus patch-level accuracy (points) at each ε."""
    by = {(r.get("privacy_unit_asked"), r.get("epsilon")): r["accuracy"] for r in rows
          if r.get("epsilon") and not r.get("lever")}
    return {f"{eps:g}": round(100 * (by[("patient", eps)] - by[("patch", eps)]), 2)
            for eps in EPSILONS if ("patient", eps) in by and ("patch", eps) in by}


def exp_patient_privacy(quick: bool, data: Path, out: Path, workdir: Path) -> dict[str, Any]:
    base = base_scenario(quick, data)
    weights = experiments_backbone(quick, data, out)
    base = dataclasses.replace(base, weights=str(weights), delta=0.0)
    k = largest_patient(base)
    rows = [pooled(base), federated(dataclasses.replace(base, label="FedAvg non-private", dp=False), workdir)]
    for unit in UNITS:
        for eps in EPSILONS:
            scenario = dataclasses.replace(base, label=f"DP {unit}-level, epsilon={eps:g}", epsilon=eps,
                                           privacy_unit=unit)
            row = federated(scenario, workdir)
            if row["privacy_units"] != [unit]:
                raise RuntimeError(f"{scenario.label}: sites trained at {row['privacy_units']}, not {unit}")
            row.update(epsilon=eps, privacy_unit_asked=unit, **both_guarantees(row, unit, k))
            rows.append(row)
    for lever, fields, epsilons in LEVERS:
        for eps in epsilons:
            scenario = dataclasses.replace(base, label=f"lever: {lever}, epsilon={eps:g}", epsilon=eps,
                                           privacy_unit="patient", **fields)
            row = federated(scenario, workdir)
            row.update(epsilon=eps, privacy_unit_asked="patient", lever=lever, **both_guarantees(row, "patient", k))
            rows.append(row)
    return {"rows": rows, "weights": str(weights.name), "largest_patient_patches": k,
            "max_patches_per_patient": base.config().max_patches_per_patient,
            "min_records_per_step": base.config().min_records_per_step,
            "targets": {"patient_minus_patch_points": accuracy_cost(rows), **patient_targets(rows)}}


def patient_targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 23's goals, read off the default patient-level rows: the gap to pooled non-private per ε (targets:
    ε = 2 within 2 points, ε = 1 within 5), and whether each job ended no worse than its start on the server's
    validation data."""
    pooled = next(r["accuracy"] for r in rows if r.get("kind") == "centralised")
    default = {r["epsilon"]: r for r in rows if r.get("privacy_unit_asked") == "patient" and not r.get("lever")
               and r.get("epsilon")}
    gap = {f"{eps:g}": round(100 * (row["accuracy"] - pooled), 2) for eps, row in sorted(default.items())}
    never_worse = {f"{eps:g}": bool(row["validation"]) and row["validation"]["end"] >= row["validation"]["start"]
                   for eps, row in sorted(default.items())}
    return {"patient_minus_pooled_points": gap,
            "epsilon_2_within_2_points": 2.0 in default and gap["2"] >= -2,
            "epsilon_1_within_5_points": 1.0 in default and gap["1"] >= -5,
            "never_worse_on_validation": never_worse}
