"""Run directories whose site replies carry accounting that adds up, for the report's privacy sentences.

Each simulated site's reply is what a site sends (`server.strategy.SiteReply`, the keys of
`common/wire/reply.py`): its cumulative ε is the smaller of Opacus' stock RDP and PRV accountants'
upper bounds over the site's whole history
(its earlier jobs, then this job's rounds, each (σ, q, steps)), so "this job", "cumulative", "what
remains" and "exhausted" can be checked against numbers computed here, independently of the report.
A `SiteCase` is one combination the report must word correctly: the unit, one job or several, a
budget that this job used up, an allowance per period or none.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant

from common.config.run_config import RunConfig
from common.evaluation.metrics import full_evaluation, headline_metrics
from common.evaluation.patients import patient_evaluation
from server.run_store import RunStore
from server.strategy import SiteReply

SIGMA, RATE, STEPS, DELTA, ASKED = 1.1, 0.05, 40, 1e-5, 8.0
BUDGET = 32.0  # a site's lifetime budget, unless this job (or an earlier one) used it up
EARLIER = [(0.9, 0.1, 120)]  # an earlier job's rounds at the site, before this run
ALLOWANCE, PERIOD_DAYS = 6.0, 30.0
CLASSES = ["benign", "tumour"]


@dataclass(frozen=True)
class SiteCase:
    site_id: str
    unit: str  # "patient" | "patch"
    earlier_jobs: bool = False  # the site had spent in other jobs before this run
    exhausted: bool = False  # this job's first round uses up its lifetime budget; it refuses the rest
    allowance: bool = False  # an allowance per period (epsilon-per-period)
    refuses_all: bool = False  # earlier jobs used up its budget: it refuses every round of this run
    overridden: tuple[str, ...] = ()  # run-config keys its own settings won over, as its replies name them


def accountant_epsilon(history: list[tuple[float, float, int]]) -> float:
    """ε of a (σ, q, steps) history at DELTA, straight from Opacus (not through the report's code)."""
    return _epsilon(tuple(history))


@functools.cache  # the combinations share their histories; each takes Opacus ~0.5 s
def _epsilon(history: tuple[tuple[float, float, int], ...]) -> float:
    if not history:
        return 0.0
    merged: list[tuple[float, float, int]] = []
    for sigma, rate, steps in history:  # equal (σ, q) compose as one entry: RDP adds up linearly in steps
        if merged and merged[-1][:2] == (sigma, rate):
            merged[-1] = (sigma, rate, merged[-1][2] + steps)
        else:
            merged.append((sigma, rate, steps))
    rdp, prv = RDPAccountant(), PRVAccountant()
    rdp.history, prv.history = list(merged), list(merged)
    return min(float(rdp.get_epsilon(delta=DELTA)),
               float(prv.get_epsilon(DELTA, eps_error=0.01, delta_error=DELTA / 1000)))  # the upper end of its interval


def site_history(case: SiteCase, rounds: int) -> tuple[list, list[int], float]:
    """(this job's trained rounds' history, the rounds it refused, its lifetime budget)."""
    prior = list(EARLIER) if case.earlier_jobs or case.refuses_all else []
    if case.refuses_all:
        return [], list(range(1, rounds + 1)), _just_above(accountant_epsilon(prior))
    if case.exhausted:  # after round 1 less than 1% of the budget is left: the site grants nothing more
        return [(SIGMA, RATE, STEPS)], list(range(2, rounds + 1)), _just_above(
            accountant_epsilon(prior + [(SIGMA, RATE, STEPS)]))
    return [(SIGMA, RATE, STEPS)] * rounds, [], BUDGET


def _just_above(spent: float) -> float:
    """A budget, in hundredths, of which `spent` leaves less than 1%: spent / 0.995 rounded up."""
    return math.ceil(spent / 0.995 * 100) / 100


def replies(case: SiteCase, rounds: int, node: int, asked: float = ASKED) -> dict[int, dict[str, Any]]:
    """round -> the site's reply as the strategy records it."""
    prior = list(EARLIER) if case.earlier_jobs or case.refuses_all else []
    job, refused, budget = site_history(case, rounds)
    granted = 0.0 if case.refuses_all else min(asked, budget - accountant_epsilon(prior))  # no per-job cap
    out = {}
    for r in range(1, rounds + 1):
        trained = r not in refused
        done = job[:r] if trained else job
        metrics = {
            "num-examples": 400 if trained else 0, "epsilon": accountant_epsilon(prior + done),
            "epsilon-budget": budget, "epsilon-asked": asked, "epsilon-granted": granted,
            "epsilon-per-period": ALLOWANCE if case.allowance else 0.0,
            "period-days": PERIOD_DAYS if case.allowance else 0.0,
            "epsilon-in-period": accountant_epsilon(done) if case.allowance else 0.0, "delta": DELTA,
            "noise-multiplier": SIGMA if trained else 0.0, "max-grad-norm": 1.0,
            "privacy-records": (40 if case.unit == "patient" else 400) if trained else 0,
            "sample-rate": RATE if trained else 0.0, "steps": STEPS if trained else 0, "dp": 1,
            "shares-diagnostics": 0,
        }
        out[r] = SiteReply(node, case.site_id, "trained" if trained else "refused",
                           "" if trained else "the site's privacy budget leaves no room for this job",
                           metrics, None, "secure", case.unit, "" if trained else "budget-exhausted",
                           51984, 51984 if trained else 0, list(case.overridden)).as_dict()
    return out


def write_accounted_run(root: Path, cases: list[SiteCase], rounds: int = 3, config: dict | None = None,
                        patients: bool = False) -> Path:
    """A finished run directory whose sites are `cases` (a small final evaluation, patient-level if asked)."""
    store = RunStore(root / "run-77")
    run_config = {**RunConfig().to_mapping(), "num-server-rounds": rounds, "dp": True, "epsilon": ASKED,
                  "delta": DELTA, "max-grad-norm": 1.0,
                  "privacy-unit": "auto", "noise-multiplier": 0.0, "bootstrap-samples": 50, **(config or {})}
    rng = np.random.default_rng(5)
    labels = np.repeat(rng.integers(0, 2, 30), 4)  # 30 patients of 4 patches, one label each
    groups = np.repeat([f"patient-{i:02d}" for i in range(30)], 4)
    probs = np.clip(0.5 + 0.35 * (2 * labels - 1) + rng.normal(0, 0.3, len(labels)), 0.01, 0.99)
    probs = np.stack([1 - probs, probs], axis=1)
    store.write_json("run.json", {
        "run_id": 77, "config": run_config, "start": 1_764_000_000.0, "end": 1_764_000_100.0,
        "versions": {"fedpath": "0.1.0"}, "weights": {"kind": "none", "description": "none"}, "classes": CLASSES,
        "test_examples": len(labels), "test_class_counts": np.bincount(labels, minlength=2).tolist(),
    })
    per_site = [replies(case, rounds, 2000 + i, run_config["epsilon"]) for i, case in enumerate(cases)]
    for r in range(rounds + 1):
        store.append_round({"round": r, **headline_metrics(labels, probs), "loss": 0.5, "time": 1_764_000_000.0 + r,
                            "sites": [site[r] for site in per_site] if r else []})
    final = full_evaluation(labels, probs, CLASSES, bootstrap_samples=50, seed=1)
    final["patient_level"] = patient_evaluation(labels, probs, groups, CLASSES, 50, 1) if patients else None
    store.write_json("final-eval.json", {"round": rounds, **final, "loss": 0.5})
    return store.root
