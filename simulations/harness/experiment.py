"""Experiments on real pathology data: `python -m simulations.harness.experiment NAME [--quick]`.

    baselines        pooled non-private, local-only per site, FedAvg non-private, FedAvg DP
    privacy-utility  FedAvg DP with per-site epsilon in {1, 2, 4, 8, inf}, 10 sites, Dirichlet 0.5
    transfer         pretrained vs from scratch, for each policy, DP and non-DP
    heterogeneity    IID vs Dirichlet 0.1 / 0.5 / 1.0, with and without stain shift
    stain-strategy   stain handling x server strategy at the harshest and the mildest heterogeneity
    cross-domain     a backbone from another domain (synthetic -> LC25000; unshifted -> stain-shifted sites)
                     vs from scratch, with the backbone's BatchNorm statistics or public-data ones
    audit            empirical privacy audit of one site: membership inference and a one-run
                     canary lower bound on epsilon (non-private, DP epsilon 8 and 1)

All accuracy comes from LC25000 lung (`../shared/data/lc25000-lung`, or `--data`), with
group-aware splits (`groups.csv`): a central test set and a "public share" of groups are
held out from every hospital, the rest is split across the simulated hospitals. Federated
runs are real `flwr run` simulations (Flower's simulation engine); pooled and local-only
baselines train in-process with the same model, policy, image size, training function and
test set. The pretrained backbone is made by `server.pretrain` on the public share (no
ImageNet weights can be downloaded here; with ImageNet weights in the torch hub cache the
transfer experiment adds the ImageNet variant).

Each experiment writes `results.json`, `plot.png` and `table.md` under `--out/NAME[-quick]/`;
`python -m simulations.harness.publish` assembles docs/BENCHMARKS.md from them.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from common.config.choices import POLICIES
from common.logging_setup import log_levels, setup_logging
from common.paths import REPO
from common.versions import machine, versions
from simulations.harness.audit_experiment import exp_audit
from simulations.harness.backbone import experiments_backbone, heterogeneity_base, imagenet_available
from simulations.harness.cross_domain import exp_cross_domain
from simulations.harness.patient_experiment import exp_patient_privacy
from simulations.harness.results import write_outputs
from simulations.harness.runs import federated, local_only, pooled
from simulations.harness.scenario import LC25000, base_scenario, transfer_lr
from simulations.harness.stain_strategy import exp_stain_strategy


def exp_baselines(quick: bool, data: Path, out: Path, workdir: Path) -> dict[str, Any]:
    base = base_scenario(quick, data)
    weights = experiments_backbone(quick, data, out)
    base = dataclasses.replace(base, weights=str(weights))
    rows = [pooled(base)]
    local = local_only(base)
    accs = [r["accuracy"] for r in local]
    rows.append({"label": "local-only, mean of sites", "kind": "summary", "accuracy": float(np.mean(accs)),
                 "accuracy_ci95": None, "min": float(np.min(accs)), "max": float(np.max(accs))})
    rows.append({"label": "local-only, worst site", "kind": "summary", "accuracy": float(np.min(accs)),
                 "accuracy_ci95": None})
    rows.append(federated(dataclasses.replace(base, label="FedAvg non-private", dp=False), workdir))
    rows.append(federated(dataclasses.replace(base, label="FedAvg DP (epsilon=8)", dp=True, epsilon=8.0), workdir))
    pooled_acc, dp_acc = rows[0]["accuracy"], rows[-1]["accuracy"]
    checks = {
        "dp_minus_pooled_points": round(100 * (dp_acc - pooled_acc), 2),
        "within_2_points_of_pooled": bool(pooled_acc - dp_acc <= 0.02),
        "dp_minus_mean_local_points": round(100 * (dp_acc - float(np.mean(accs))), 2),
        "above_mean_local_only": bool(dp_acc > float(np.mean(accs))),
    }
    return {"rows": rows, "local_only_sites": local, "targets": checks, "weights": str(weights.name)}


def exp_privacy_utility(quick: bool, data: Path, out: Path, workdir: Path) -> dict[str, Any]:
    base = base_scenario(quick, data)
    weights = experiments_backbone(quick, data, out)
    base = dataclasses.replace(base, weights=str(weights), partitioning="dirichlet", alpha=0.5, sites=10, delta=0.0)
    rows = []
    for eps in (1.0, 2.0, 4.0, 8.0, float("inf")):
        if np.isinf(eps):
            rows.append(federated(dataclasses.replace(base, label="epsilon=inf (non-private)", dp=False), workdir))
        else:
            rows.append(federated(dataclasses.replace(base, label=f"epsilon={eps:g}", epsilon=eps), workdir))
        rows[-1]["epsilon"] = eps if np.isfinite(eps) else None
    return {"rows": rows, "weights": str(weights.name)}


def exp_transfer(quick: bool, data: Path, out: Path, workdir: Path) -> dict[str, Any]:
    base = base_scenario(quick, data)
    if quick:  # 16 federated runs: 2 of 5 sites train per round to stay under 15 minutes
        base = dataclasses.replace(base, rounds=3, sites=5, partitioning="iid", fraction_train=0.4)
    weights = experiments_backbone(quick, data, out)
    sources = [("public-share pretrained", str(weights)), ("from scratch", "none")]
    if imagenet_available():
        sources.insert(0, ("ImageNet", "imagenet"))
    rows = []
    for policy in POLICIES:
        for source, spec in sources:
            for dp in (True, False):
                label = f"{policy}, {source}, {'DP epsilon=8' if dp else 'non-private'}"
                scenario = dataclasses.replace(base, label=label, policy=policy, weights=spec, dp=dp,
                                               lr=transfer_lr(policy, dp))
                row = federated(scenario, workdir)
                row.update(policy=policy, source=source, dp=dp)
                rows.append(row)
    return {"rows": rows, "weights": str(weights.name), "imagenet": imagenet_available()}


def exp_heterogeneity(quick: bool, data: Path, out: Path, workdir: Path) -> dict[str, Any]:
    base = heterogeneity_base(quick, data, out)
    weights = Path(base.weights)
    rows = []
    for shift in (0.0, 0.5):
        for part, alpha in (("iid", 1.0), ("dirichlet", 0.1), ("dirichlet", 0.5), ("dirichlet", 1.0)):
            name = "IID" if part == "iid" else f"Dirichlet {alpha:g}"
            label = f"{name}, {'stain shift 0.5' if shift else 'no stain shift'}"
            row = federated(dataclasses.replace(base, label=label, partitioning=part, alpha=alpha, stain_shift=shift),
                            workdir)
            row.update(partitioning=name, stain_shift=shift)
            rows.append(row)
    return {"rows": rows, "weights": str(weights.name)}


EXPERIMENTS: dict[str, Callable[[bool, Path, Path, Path], dict[str, Any]]] = {
    "baselines": exp_baselines,
    "privacy-utility": exp_privacy_utility,
    "transfer": exp_transfer,
    "heterogeneity": exp_heterogeneity,
    "audit": exp_audit,
    "patient-privacy": exp_patient_privacy,
    "stain-strategy": exp_stain_strategy,
    "cross-domain": exp_cross_domain,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations.harness.experiment", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(EXPERIMENTS))
    parser.add_argument("--quick", action="store_true", help="the under-15-minutes size (2 CPU cores)")
    parser.add_argument("--data", type=Path, default=LC25000, help="LC25000 lung ImageFolder with groups.csv")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results")
    parser.add_argument("--keep-runs", type=Path, help="keep the federated run directories here; a re-run with "
                        "the same directory reuses every finished run whose run config is unchanged (resume)")
    args = parser.parse_args(argv)
    setup_logging()
    if not (args.data / "groups.csv").exists():
        print(f"skipped: LC25000 lung data not found at {args.data} (expected an ImageFolder with groups.csv; "
              "it is in this project's ../shared/data). Published accuracy must come from it.", file=sys.stderr)
        return 0
    name = args.name + ("-quick" if args.quick else "")
    target = args.out / name
    target.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix=f"fedpath-{name}-") as tmp:
        workdir = args.keep_runs or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        # Scratch rows are labelled as such; the from-scratch banner would repeat for every model built.
        with log_levels({"fedpath.weights": logging.ERROR}):
            result = EXPERIMENTS[args.name](args.quick, args.data.resolve(), args.out, workdir)
    result.update(
        experiment=args.name, quick=args.quick, seconds=round(time.time() - started, 1),
        command=f"python -m simulations.harness.experiment {args.name}" + (" --quick" if args.quick else ""),
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), machine=machine(), versions=versions(),
        data=str(args.data),
    )
    paths = write_outputs(result, target)
    print("\n".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
