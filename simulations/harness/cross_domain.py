"""`python -m simulations.harness.experiment cross-domain [--quick]`: a backbone from another domain.

Pretraining happens on whatever public data the coordinating centre holds, which is rarely the
sites' tissue or stain. Two source -> target pairs on LC25000 lung (issue 13):

* **synthetic -> LC25000**: a ResNet-18 pretrained (non-privately, `server.pretrain.pretrain`) on
  the project's synthetic H&E-like images (4 classes of painted tissue, nothing from LC25000), then
  fine-tuned federally under DP ε = 8 on LC25000;
* **unshifted -> stain-shifted sites**: the backbone pretrained on LC25000's public share (the
  other experiments' backbone), fine-tuned at sites whose images carry stain shift 0.5.

For each pair and policy (norm-head, head, full; the stain pair: norm-head): from scratch
and pretrained, each with the frozen BatchNorm statistics of the backbone (`bn-statistics =
backbone`; for scratch: estimated from noise) and re-estimated on the server's public share of
LC25000 (`bn-statistics = public`, no site data, no privacy cost). Heterogeneity-quick sizes (32 px,
5 sites, 3 rounds, IID). The targets compare each pretrained row with the better scratch row.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

from common.data.synthetic import make_synthetic
from server.pretrain import pretrain, write_weights
from simulations.harness.backbone import experiments_backbone
from simulations.harness.runs import federated
from simulations.harness.scenario import Scenario, base_scenario, transfer_lr

log = logging.getLogger("fedpath.experiment")

SYNTHETIC_IMAGES = 4000
SYNTHETIC_EPOCHS = 3
PAIRS = {
    "synthetic": ("synthetic -> LC25000", 0.0, ("norm-head", "head", "full")),
    "stain": ("LC25000 unshifted -> stain-shifted sites (0.5)", 0.5, ("norm-head",)),
}
STARTS = (("scratch", "backbone"), ("scratch", "public"), ("pretrained", "backbone"), ("pretrained", "public"))


def synthetic_weights(scenario: Scenario, out: Path) -> Path:
    """ResNet-18 pretrained on synthetic images at the scenario's size (made once, then reused)."""
    path = out / "weights" / f"resnet18-synthetic-{scenario.image_size}px-s{scenario.seed}-e{SYNTHETIC_EPOCHS}.pth"
    if path.exists():
        return path
    data = make_synthetic(SYNTHETIC_IMAGES, scenario.image_size, scenario.seed)
    started = time.time()
    net, stats = pretrain(data, "resnet18", SYNTHETIC_EPOCHS, 64, 0.05, scenario.seed, None)
    described = f"the synthetic H&E-like generator (common.data.synthetic, seed {scenario.seed}): no LC25000 image"
    write_weights(net, path, {
        "description": (f"resnet18 pretrained (non-private) by server.pretrain on {len(data)} synthetic images "
                        f"of {described}; from random initialisation. Another domain than LC25000; not ImageNet."),
        "arch": "resnet18", "classes": data.classes, "image_size": scenario.image_size, "epochs": SYNTHETIC_EPOCHS,
        "seed": scenario.seed, "data": described, "images": len(data), "seconds": round(time.time() - started, 1),
        **stats,
    })
    return path


def exp_cross_domain(quick: bool, data: Path, out: Path, workdir: Path) -> dict[str, Any]:
    base = dataclasses.replace(base_scenario(quick, data), partitioning="iid")
    if quick:
        base = dataclasses.replace(base, rounds=3, sites=5)
    weights = {"synthetic": synthetic_weights(base, out),
               "stain": experiments_backbone(quick, data, out)}
    rows = []
    for pair, (pair_name, shift, policies) in PAIRS.items():
        for policy in policies:
            for start, statistics in STARTS:
                label = f"{pair_name}, {policy}, {start}, BatchNorm statistics: {statistics}"
                scenario = dataclasses.replace(
                    base, label=label, policy=policy, stain_shift=shift, bn_statistics=statistics,
                    weights=str(weights[pair]) if start == "pretrained" else "none", lr=transfer_lr(policy, True))
                row = federated(scenario, workdir)
                row.update(pair=pair, policy=policy, start=start, bn_statistics=statistics)
                rows.append(row)
    return {"rows": rows, "weights": {k: v.name for k, v in weights.items()},
            "source_validation_accuracy": _source_accuracy(weights["synthetic"]),
            "targets": cross_domain_targets(rows)}


def _source_accuracy(path: Path) -> float | None:
    history = json.loads(path.with_name(path.name + ".json").read_text()).get("history") or [{}]
    return history[-1].get("val_accuracy")


def cross_domain_targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per pair and policy: pretrained (each statistics setting) minus the better scratch row, in points."""
    acc = {(r["pair"], r["policy"], r["start"], r["bn_statistics"]): r["accuracy"] for r in rows}
    out: dict[str, Any] = {}
    for pair, policy in sorted({(r["pair"], r["policy"]) for r in rows}):
        scratch = [acc[k] for k in acc if k[:3] == (pair, policy, "scratch")]
        if not scratch:
            continue
        best_scratch = max(scratch)
        entry = {"best_scratch_accuracy": best_scratch}
        for statistics in ("backbone", "public"):
            pretrained = acc.get((pair, policy, "pretrained", statistics))
            if pretrained is not None:
                entry[f"pretrained_{statistics}_minus_scratch_points"] = round(100 * (pretrained - best_scratch), 2)
        public = acc.get((pair, policy, "pretrained", "public"))
        entry["remedy_reaches_scratch"] = public is not None and public >= best_scratch
        out[f"{pair}/{policy}"] = entry
    out["all_pairs_reach_scratch"] = all(v["remedy_reaches_scratch"] for v in out.values() if isinstance(v, dict))
    return out
