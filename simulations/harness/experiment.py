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
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from common.versions import machine, versions
from common.paths import REPO

LC25000 = REPO.parent / "shared" / "data" / "lc25000-lung"
log = logging.getLogger("fedpath.experiment")


@dataclass(frozen=True)
class Scenario:
    """One federated configuration (every field maps to a run-config key)."""

    label: str
    dataset: str
    image_size: int
    rounds: int
    sites: int
    partitioning: str = "dirichlet"
    alpha: float = 0.5
    policy: str = "norm-head"
    dp: bool = True
    epsilon: float = 8.0
    delta: float = 0.0  # 1/(site records), per site
    weights: str = "none"
    stain_shift: float = 0.0
    batch_size: int = 64
    lr: float = 0.1
    local_epochs: int = 1
    fraction_train: float = 1.0
    seed: int = 42
    public_fraction: float = 0.2
    privacy_unit: str = "auto"  # auto = patient where the data names patients (LC25000's groups.csv)
    stain: str = "none"
    strategy: str = "fedavg"
    server_lr: float = 0.0  # 0 = Flower's default for the adaptive strategies
    bn_statistics: str = "backbone"  # or "public": re-estimated on the public share (common.bn_statistics)

    def run_config(self) -> str:
        values: dict[str, Any] = {
            "dataset": self.dataset, "image-size": self.image_size, "num-server-rounds": self.rounds,
            "partitioning": self.partitioning, "dirichlet-alpha": self.alpha, "policy": self.policy,
            "dp": self.dp, "epsilon": self.epsilon, "delta": self.delta, "weights": self.weights,
            "stain-shift": self.stain_shift, "batch-size": self.batch_size, "lr": self.lr,
            "local-epochs": self.local_epochs, "fraction-train": self.fraction_train, "seed": self.seed,
            "public-fraction": self.public_fraction, "min-train-nodes": 1, "min-available-nodes": self.sites,
            "bootstrap-samples": 1000, "privacy-unit": self.privacy_unit, "stain": self.stain,
            "strategy": self.strategy, "server-lr": self.server_lr, "bn-statistics": self.bn_statistics,
        }
        return " ".join(f"{k}={_toml(v)}" for k, v in values.items())

    def config(self) -> Any:
        from common.config import load_app_config

        return load_app_config(REPO / "pyproject.toml", [self.run_config()])


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"'{value}'"
    return repr(value)


# -- the three ways of training ------------------------------------------------------------
def federated(scenario: Scenario, workdir: Path) -> dict[str, Any]:
    """A real `flwr run` simulation; summarised from its report.json."""
    from simulations.run import run_simulation

    started = time.time()
    with open(workdir / f"{_slug(scenario.label)}.log", "w") as stream:
        run_dir = run_simulation(scenario.sites, [scenario.run_config()], workdir / "runs", workdir / "flwr-home",
                                 stream_to=stream, timeout=7200)
    report = json.loads((run_dir / "report.json").read_text())
    final = report["final"]
    sites = report["sites"]
    eps = [s["epsilon"] for s in sites if s["epsilon"] is not None]
    return {
        "label": scenario.label, "kind": "federated", "scenario": dataclasses.asdict(scenario),
        "accuracy": final["accuracy"], "accuracy_ci95": final["ci95"]["accuracy"],
        "balanced_accuracy": final["balanced_accuracy"], "macro_f1": final["macro_f1"],
        "macro_auc": final["macro_auc"], "ece": final["ece"],
        "rounds": [{"round": r["round"], "accuracy": r["accuracy"]} for r in report["rounds"]],
        "max_site_epsilon": max(eps) if eps else None,
        "site_delta": [s["delta"] for s in sites][:1],
        "refused_rounds": sum(len(s["refused_rounds"]) for s in sites),
        "rejected_updates": sum(len(s["rejected_rounds"]) for s in sites),
        "failed_replies": sum(len(s.get("failed_rounds", [])) for s in sites),
        "weights": report["run"]["weights_description"], "seconds": round(time.time() - started, 1),
        "privacy_units": sorted({s["privacy_unit"] for s in sites if s.get("privacy_unit")}),
        "site_histories": site_histories(report), "site_deltas": {s["site_id"]: s["delta"] for s in sites},
    }


def site_histories(report: dict[str, Any]) -> dict[str, list[tuple[float, float, int]]]:
    """Each site's accountant history (σ, q, steps per trained DP round), from what it sent."""
    out: dict[str, list[tuple[float, float, int]]] = {}
    for line in report["rounds"]:
        for reply in line.get("sites", []):
            metrics = reply.get("metrics") or {}
            if reply.get("status") == "trained" and metrics.get("dp") and metrics.get("steps"):
                entry = (float(metrics["noise-multiplier"]), float(metrics["sample-rate"]), int(metrics["steps"]))
                out.setdefault(reply["site_id"], []).append(entry)
    return out


def _central_model_and_data(scenario: Scenario) -> tuple[Any, Any, list[Any], Any]:
    from common.data.sources import all_simulated_sites, central_test_set, dataset_classes
    from common.factory import initial_model

    config = scenario.config()
    model, _ = initial_model(config, len(dataset_classes(config)))
    return config, central_test_set(config), all_simulated_sites(config, scenario.sites), model


def _train_and_test(config: Any, model: Any, train: Any, test: Any, epochs: int, seed: int) -> dict[str, Any]:
    from common.metrics import full_evaluation
    from common.training import TrainSettings, predict, train_local

    settings = TrainSettings(epochs=epochs, batch_size=config.batch_size, lr=config.lr, momentum=config.momentum,
                             seed=seed, dp=False)
    import torch

    torch.manual_seed(seed)
    train_local(model, train, settings, desc="centralised training")
    probs, _ = predict(model, test, config.eval_batch_size)
    return full_evaluation(test.labels, probs, test.classes, bootstrap_samples=1000, seed=seed)


def pooled(scenario: Scenario) -> dict[str, Any]:
    """All sites' training data in one place, non-private: the upper reference."""
    import copy

    from common.data.imageset import ImageSet

    config, test, sites, model = _central_model_and_data(scenario)
    parts = [s.train for s in sites]
    train = ImageSet(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]),
                     np.concatenate([p.groups for p in parts]), parts[0].classes)
    started = time.time()
    result = _train_and_test(config, copy.deepcopy(model), train, test, scenario.rounds * scenario.local_epochs,
                             scenario.seed)
    return _central_summary(scenario, "pooled non-private", result, time.time() - started, len(train))


def local_only(scenario: Scenario) -> list[dict[str, Any]]:
    """Each site alone, non-private (its model never leaves), tested on the same test set."""
    import copy

    config, test, sites, model = _central_model_and_data(scenario)
    out = []
    for k, site in enumerate(sites):
        started = time.time()
        result = _train_and_test(config, copy.deepcopy(model), site.train, test,
                                 scenario.rounds * scenario.local_epochs, scenario.seed + k)
        out.append(_central_summary(scenario, f"local-only site-{k}", result, time.time() - started, len(site.train)))
    return out


def _central_summary(scenario: Scenario, label: str, result: dict[str, Any], seconds: float, n: int) -> dict[str, Any]:
    return {
        "label": label, "kind": "centralised", "scenario": dataclasses.asdict(scenario), "train_examples": n,
        "accuracy": result["accuracy"], "accuracy_ci95": result["ci95"]["accuracy"],
        "balanced_accuracy": result["balanced_accuracy"], "macro_f1": result["macro_f1"],
        "macro_auc": result["macro_auc"], "ece": result["ece"], "seconds": round(seconds, 1),
    }


# -- weights ---------------------------------------------------------------------------------
def pretrained_weights(scenario: Scenario, out: Path, epochs: int) -> Path:
    """Backbone pretrained on the public share of groups (made once, then reused)."""
    from common.data.sources import public_share
    from common.weights import resolve_weights
    from server.pretrain import pretrain, write_weights

    path = out / "weights" / f"resnet18-lc25000-public-{scenario.image_size}px-s{scenario.seed}-e{epochs}.pth"
    if path.exists():
        return path
    config = scenario.config()
    data = public_share(config)
    init, state = resolve_weights("auto", "resnet18", download=False)
    log.info("pretraining on the public share: %d images, %d groups", len(data), len(set(data.groups.tolist())))
    started = time.time()
    net, stats = pretrain(data, "resnet18", epochs, 64, 0.05, scenario.seed, state)
    described = (f"public share (public-fraction={config.public_fraction}, seed={config.seed}, "
                 f"test-fraction={config.test_fraction}) of LC25000 lung: groups held out from every simulated "
                 "site and from the test set")
    write_weights(net, path, {
        "description": (f"resnet18 pretrained (non-private) by server.pretrain on {len(data)} images, "
                        f"{len(set(data.groups.tolist()))} groups of {described}; starting from "
                        f"{init.description}. Not ImageNet weights."),
        "arch": "resnet18", "classes": data.classes, "image_size": scenario.image_size, "epochs": epochs,
        "seed": scenario.seed, "data": described, "images": len(data), "seconds": round(time.time() - started, 1),
        **stats,
    })
    return path


def imagenet_available() -> bool:
    from common.weights import imagenet_file

    return imagenet_file("resnet18")[0].exists()


# -- the experiments -------------------------------------------------------------------------
def _base(quick: bool, data: Path) -> Scenario:
    if quick:
        return Scenario("base", str(data), image_size=32, rounds=4, sites=10)
    return Scenario("base", str(data), image_size=64, rounds=10, sites=10)


def exp_baselines(quick: bool, data: Path, out: Path, workdir: Path) -> dict[str, Any]:
    base = _base(quick, data)
    weights = pretrained_weights(base, out, epochs=5 if quick else 15)
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
    base = _base(quick, data)
    weights = pretrained_weights(base, out, epochs=5 if quick else 15)
    base = dataclasses.replace(base, weights=str(weights), partitioning="dirichlet", alpha=0.5, sites=10, delta=0.0)
    rows = []
    for eps in (1.0, 2.0, 4.0, 8.0, float("inf")):
        if np.isinf(eps):
            rows.append(federated(dataclasses.replace(base, label="epsilon=inf (non-private)", dp=False), workdir))
        else:
            rows.append(federated(dataclasses.replace(base, label=f"epsilon={eps:g}", epsilon=eps), workdir))
        rows[-1]["epsilon"] = eps if np.isfinite(eps) else None
    return {"rows": rows, "weights": str(weights.name)}


def transfer_lr(policy: str, dp: bool) -> float:
    """Learning rates per policy: training convolutions needs smaller steps, and without
    DP's clipping smaller still (at 0.02 unclipped full training from scratch diverges to NaN
    with frozen BatchNorm statistics, and the server rightly rejects every update)."""
    if policy in ("norm-head", "head"):
        return 0.1
    return 0.02 if dp else 0.005


def exp_transfer(quick: bool, data: Path, out: Path, workdir: Path) -> dict[str, Any]:
    from common.model import POLICIES

    base = _base(quick, data)
    if quick:  # 16 federated runs: 2 of 5 sites train per round to stay under 15 minutes
        base = dataclasses.replace(base, rounds=3, sites=5, partitioning="iid", fraction_train=0.4)
    weights = pretrained_weights(_base(quick, data), out, epochs=5 if quick else 15)
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
    base = _base(quick, data)
    if quick:
        base = dataclasses.replace(base, rounds=3, sites=5)
    weights = pretrained_weights(_base(quick, data), out, epochs=5 if quick else 15)
    base = dataclasses.replace(base, weights=str(weights))
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


def audit_plan(quick: bool) -> Any:
    """Sizes of the audit experiment (see simulations.harness.audit): small sites, many local epochs."""
    from simulations.harness.audit import AuditPlan

    # Gradient canaries (the default kind) cost almost nothing, so m = 1000 (the bound grows with m).
    if quick:  # sized for a shared, busy 2-core machine: a few minutes per setting
        return AuditPlan(sites=2, rounds=2, local_epochs=4, per_group=2, canaries=1000)
    return AuditPlan(sites=3, rounds=5, local_epochs=20, per_group=3, canaries=1000)


AUDIT_IMAGE_SIZE = {True: 16, False: 32}  # quick: 16 px (the 32 px backbone applied to 16 px patches)


AUDIT_SEEDS = {True: (42,), False: (42, 43, 44)}


def exp_audit(quick: bool, data: Path, out: Path, workdir: Path) -> dict[str, Any]:
    """Membership inference and a one-run canary audit of one site (in process, fedpath's site
    training path), for non-private FedAvg and DP at epsilon 8 and 1, on every seed."""
    from simulations.harness import audit

    base = _base(quick, data)
    weights = _audit_weights(base, out, epochs=5 if quick else 15)
    plan = audit_plan(quick)
    # The splits (test set, public share the backbone saw, sites) stay those of the experiments'
    # seed; each audit seed redraws the records, canaries and coin flips.
    size = AUDIT_IMAGE_SIZE[quick]
    config = audit.audit_config(str(data), size, str(weights), base.seed, delta=plan.delta)
    rows = []
    for seed in AUDIT_SEEDS[quick]:
        rows.extend(audit.settings_rows(config, plan, seed))
    return {"rows": rows, "plan": audit.plan_dict(plan), "weights": str(weights.name),
            "weights_description": _provenance(weights), "targets": audit.targets(rows), "policy": "norm-head",
            "image_size": size, "canary_score": audit.CANARY_SCORE}


def _provenance(weights: Path) -> str:
    """The weights file's own description and SHA-256 (the copy used, wherever it lives)."""
    sidecar = weights.with_name(weights.name + ".json")
    if not sidecar.exists():
        return "provenance file not found"
    data = json.loads(sidecar.read_text())
    return f"{data['description']} SHA-256 {data.get('sha256', '?')[:16]}…"


def _audit_weights(scenario: Scenario, out: Path, epochs: int) -> Path:
    """The experiments' public-share backbone; made in a git-ignored cache when the published
    copy is absent, so re-making it never rewrites the published provenance files."""
    published = out / "weights" / f"resnet18-lc25000-public-{scenario.image_size}px-s{scenario.seed}-e{epochs}.pth"
    if published.exists():
        return published
    return pretrained_weights(scenario, REPO / ".cache" / "experiment", epochs)


EXPERIMENTS: dict[str, Callable[[bool, Path, Path, Path], dict[str, Any]]] = {
    "baselines": exp_baselines,
    "privacy-utility": exp_privacy_utility,
    "transfer": exp_transfer,
    "heterogeneity": exp_heterogeneity,
    "audit": exp_audit,
    "patient-privacy": lambda *args: _patient_privacy(*args),
    "stain-strategy": lambda *args: _stain_strategy(*args),
    "cross-domain": lambda *args: _cross_domain(*args),
}


def _patient_privacy(quick: bool, data: Path, out: Path, workdir: Path) -> dict[str, Any]:
    from simulations.harness.patient_experiment import exp_patient_privacy  # it builds on this module

    return exp_patient_privacy(quick, data, out, workdir)


def _stain_strategy(quick: bool, data: Path, out: Path, workdir: Path) -> dict[str, Any]:
    from simulations.harness.stain_strategy import exp_stain_strategy  # it builds on this module

    return exp_stain_strategy(quick, data, out, workdir)


def _cross_domain(quick: bool, data: Path, out: Path, workdir: Path) -> dict[str, Any]:
    from simulations.harness.cross_domain import exp_cross_domain  # it builds on this module

    return exp_cross_domain(quick, data, out, workdir)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations.harness.experiment", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(EXPERIMENTS))
    parser.add_argument("--quick", action="store_true", help="the under-15-minutes size (2 CPU cores)")
    parser.add_argument("--data", type=Path, default=LC25000, help="LC25000 lung ImageFolder with groups.csv")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results")
    parser.add_argument("--keep-runs", type=Path, help="keep the federated run directories here")
    args = parser.parse_args(argv)
    from common.logging_setup import log_levels, setup_logging

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
    from simulations.harness.results import write_outputs

    paths = write_outputs(result, target)
    print("\n".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
