"""`python -m simulations.harness.experiment stain-strategy [--quick]`: the levers for hospitals that differ.

Issue 13's evidence on LC25000: the heterogeneity experiment's harshest setting (Dirichlet 0.1
label skew plus per-site stain shift 0.5) and its mildest (IID, no shift), each re-run with
stain handling at the sites (`stain` ∈ none, normalize, augment) crossed with the server
strategy (`strategy` ∈ fedavg, fedadam, fedprox), DP ε = 8 per site, the heterogeneity
experiment's sizes and pretrained backbone (for `normalize` rows, its twin pretrained on the
Macenko-normalised public share: sites that normalise must start from a backbone that has seen
normalised colours). The targets are computed from the rows: the best
lever on the harsh setting recovers at least half of what the stain shift and label skew cost
FedAvg without stain handling, reaches 86%, and costs nothing on the mild setting; a cell run
several times (the harsh setting without stain handling) counts with the mean of its runs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from common.config.stain_settings import normalises
from common.config.strategies import FEDADAM, FEDAVG, FEDPROX
from simulations.harness.backbone import experiments_backbone, heterogeneity_base
from simulations.harness.runs import federated

SETTINGS = {"harsh": ("dirichlet", 0.1, 0.5), "mild": ("iid", 1.0, 0.0)}
SETTING_NAMES = {"harsh": "Dirichlet 0.1 + stain shift 0.5", "mild": "IID, no stain shift"}
STAINS = ("none", "normalize", "augment")
STRATEGIES = (FEDAVG, FEDADAM, FEDPROX)
# FedAdam's server step moves every coordinate by about server-lr per round (Adam normalises), so
# Flower's 0.1 would overwrite a pretrained model's fine-tuned values in one round; 0.01 is of the
# size of one round's FedAvg update at these settings.
SERVER_LR = {FEDADAM: 0.01}
TARGET_ACCURACY = 0.86
# The harsh setting without stain handling is run this many times per strategy: same partition,
# fresh DP noise from the sites' secret randomness each time. A first grid showed FedAvg there
# ending at 75.5% once and 64.8% the next time, so one run per cell cannot rank the strategies.
REPEATS = 2


def exp_stain_strategy(quick: bool, data: Path, out: Path, workdir: Path) -> dict[str, Any]:
    base = heterogeneity_base(quick, data, out)
    weights = Path(base.weights)
    # Normalising sites start from the backbone pretrained on the normalised public share: the
    # un-normalised one scored 42% (from 89%) on the normalised test set in a first run.
    normalised = experiments_backbone(quick, data, out, stain="normalize")
    cells = [(setting, stain, strategy, 1) for setting in SETTINGS for stain in STAINS for strategy in STRATEGIES]
    cells += [("harsh", "none", strategy, repeat) for strategy in STRATEGIES for repeat in range(2, REPEATS + 1)]
    rows = []
    for setting, stain, strategy, repeat in cells:
        part, alpha, shift = SETTINGS[setting]
        label = f"{SETTING_NAMES[setting]}, stain {stain}, {strategy}" + (f", repeat {repeat}" if repeat > 1 else "")
        scenario = dataclasses.replace(base, label=label, partitioning=part, alpha=alpha, stain_shift=shift,
                                       stain=stain, strategy=strategy, server_lr=SERVER_LR.get(strategy, 0.0),
                                       weights=str(normalised if normalises(stain) else weights))
        row = federated(scenario, workdir)
        row.update(setting=setting, stain=stain, strategy=strategy, repeat=repeat)
        rows.append(row)
    return {"rows": rows, "weights": str(weights.name), "weights_normalised": str(normalised.name),
            "targets": stain_strategy_targets(rows)}


def stain_strategy_targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What the best lever recovers on the harsh setting and what it costs on the mild one."""
    runs: dict[tuple[str, str, str], list[float]] = {}
    for r in rows:
        runs.setdefault((r["setting"], r["stain"], r["strategy"]), []).append(r["accuracy"])
    acc = {cell: sum(values) / len(values) for cell, values in runs.items()}  # the mean over repeats
    reference = ("none", FEDAVG)
    if ("harsh", *reference) not in acc or ("mild", *reference) not in acc:
        return {}
    harsh_base, mild_base = acc[("harsh", *reference)], acc[("mild", *reference)]
    levers = [(stain, strategy) for stain in STAINS for strategy in STRATEGIES
              if (stain, strategy) != reference and ("harsh", stain, strategy) in acc]
    if not levers:
        return {}
    best = max(levers, key=lambda lever: acc[("harsh", *lever)])
    loss = mild_base - harsh_base
    recovered = acc[("harsh", *best)] - harsh_base
    mild_change = acc[("mild", *best)] - mild_base if ("mild", *best) in acc else None
    return {
        "reference": "stain none, fedavg", "best_lever": f"stain {best[0]}, {best[1]}",
        "harsh_reference_accuracy": harsh_base, "mild_reference_accuracy": mild_base,
        "loss_points": round(100 * loss, 2), "recovered_points": round(100 * recovered, 2),
        "best_harsh_accuracy": acc[("harsh", *best)],
        "mild_change_points": None if mild_change is None else round(100 * mild_change, 2),
        "recovers_half": loss > 0 and recovered >= loss / 2,
        "reaches_target_accuracy": acc[("harsh", *best)] >= TARGET_ACCURACY,
        "no_mild_loss": mild_change is not None and mild_change >= -0.01,
        "repeated": {f"stain {k[1]}, {k[2]}": values for k, values in runs.items() if len(values) > 1},
        "harsh_by_stain": _harsh_means(acc, 1), "harsh_by_strategy": _harsh_means(acc, 2),
    }


def _harsh_means(acc: dict[tuple[str, str, str], float], axis: int) -> dict[str, float]:
    """Harsh-setting accuracy averaged over the other lever's cells (stain: axis 1, strategy: axis 2)."""
    groups: dict[str, list[float]] = {}
    for cell, value in acc.items():
        if cell[0] == "harsh":
            groups.setdefault(cell[axis], []).append(value)
    return {name: sum(values) / len(values) for name, values in groups.items()}
