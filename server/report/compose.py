"""Compose `report.json` from a run directory's raw records.

Kept apart from the server loop so a finished (or crashed) run's report can be rebuilt,
or compared with baselines, without retraining: `python -m server.report RUN_DIR`.
The schema is documented in docs/REPORT.md; `REPORT_SCHEMA` names its version.
"""

from __future__ import annotations

import math
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from common.paths import AUDIT_FILE, FINAL_EVAL_FILE, RUN_FILE
from common.privacy.accounting import epsilon_of, noise_per_clip, with_steps
from server.privacy_audit import summarise
from server.report.advice import next_step
from server.report.applied import privacy_settings
from server.report.privacy_text import privacy_statement
from server.round_acceptance import NO_PRIVACY_COST, RULE
from server.run_store import RunStore

REPORT_SCHEMA = "fedpath-report/1"
HEADLINE_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "loss")
SITE_STATUSES = ("trained", "refused", "failed", "rejected")


def describe_bn_statistics(config: dict[str, Any], weights_kind: str | None, recorded: dict[str, Any] | None) -> str:
    """The report's sentence on where the frozen BatchNorm statistics came from, and when that is a risk."""
    full = config.get("policy") == "full" and weights_kind not in (None, "none")
    full_risk = ("; with policy full, a backbone from another domain ended below training from scratch even with "
                 "these statistics (docs/BENCHMARKS.md, cross-domain): compare with a from-scratch run before "
                 "trusting it") if full else ""
    if config.get("bn-statistics") == "public":
        images = (recorded or {}).get("public_images")
        count = f"{images} images of " if images else ""
        return (f"re-estimated by the server before round 1 on {count}its public share of {config.get('dataset')} "
                f"(public-fraction {config.get('public-fraction')}): the target domain's own statistics; no site "
                "data, no privacy cost (bn-statistics = public)" + full_risk)
    if weights_kind in (None, "none"):
        return "estimated from Gaussian noise (from scratch: no data, no privacy cost)"
    return ("the backbone's own, from the data it was pretrained on (bn-statistics = backbone). If that data is "
            "another domain than the sites' (another organ, stain, scanner, or synthetic images), these "
            "statistics do not fit and fine-tuning can end below training from scratch: use bn-statistics = "
            "public with norm-head or head; with full, do not use such a backbone at all (docs/BENCHMARKS.md, "
            "cross-domain)")


def describe_head_centering(config: dict[str, Any], recorded: dict[str, Any] | None, weights_kind: str | None) -> str:
    """The report's sentence on how the sites trained the head (`center-head`, common.model.head_centering)."""
    if recorded is None:  # a run from before the key
        return "trained on the features as they are (no center-head)"
    setting = recorded.get("setting", config.get("center-head", "auto"))
    images = recorded.get("validation_images") or 0
    if recorded.get("applied"):
        return (f"trained on centred features: W·(f - m) + b', the same model as W·f + b, with m the mean of the "
                f"head's input over the server's {images} validation images (never a site's, never the test set), "
                f"so DP noise on the head moves the logits by ξ·(f - m) instead of ξ·f; no privacy cost "
                f"(center-head = {setting})")
    if setting == "off":
        return "trained on the features as they are (center-head = off)"
    if setting == "auto" and weights_kind not in (None, "none"):
        return ("trained on the features as they are (center-head = auto centres from-scratch starts only: with a "
                "pretrained backbone it did not help on LC25000, docs/BENCHMARKS.md, patient-privacy)")
    return "trained on the features as they are: the server held no validation images to centre them on"


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(float(value)) else None


def _natural_key(text: str) -> tuple:
    """site-2 before site-10."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text))


def _node_names(rounds: list[dict[str, Any]]) -> dict[Any, str]:
    """node id -> the site id it gave in any reply.

    A failed reply carries no site id (the site never answered), only Flower's node id; the
    same node's other replies say which site it is, so its failure is shown under its name.
    """
    names: dict[Any, str] = {}
    for line in rounds:
        for reply in line.get("sites", []):
            if reply.get("status") != "failed" and reply.get("node_id") is not None:
                names.setdefault(reply["node_id"], reply["site_id"])
    return names


def site_summaries(rounds: list[dict[str, Any]], config: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-site totals over all rounds; epsilon is the latest cumulative spend reported."""
    names = _node_names(rounds)
    by_site: dict[str, dict[str, Any]] = {}
    for line in rounds:
        for reply in line.get("sites", []):
            site_id = reply["site_id"]
            if reply.get("status") == "failed":
                site_id = names.get(reply.get("node_id"), site_id)
            site = by_site.setdefault(site_id, _new_site(site_id, config))
            _add_reply(site, reply, line["round"])
    summaries = [by_site[k] for k in sorted(by_site, key=_natural_key)]
    for site in summaries:
        if not site["dp"]:
            site["epsilon"] = None
        site["epsilon_this_job"] = _epsilon_this_job(site)
        site["noise_per_clip"] = _noise_per_clip(site)
        site["privacy_statement"] = privacy_statement(site)
    return summaries


def _epsilon_this_job(site: dict[str, Any]) -> float | None:
    """The ε of the composition of the rounds this run recorded from the site, at the site's δ.

    From the σ, q and steps its replies carry, by the accountant its ledger uses
    (`common.privacy.accounting.epsilon_of`); None without DP, without a δ, or when a round it
    trained in lacks one of them (then the number would be too small).
    """
    delta = site.get("delta")
    if not site["dp"] or not (_finite(delta) and 0 < delta < 1) or site["job_history"] is None:
        return None
    return epsilon_of([tuple(h) for h in site["job_history"]], float(delta))


def _noise_per_clip(site: dict[str, Any]) -> float | None:
    """σ/(q·N) of the site's last DP round (`common.privacy.accounting.noise_per_clip`), from values its reply
    already carries (σ, q and N = `privacy-records`, all accounting values treated as public); None without DP
    or when a value is missing."""
    values = (_finite(site.get(k)) for k in ("noise_multiplier", "sample_rate", "privacy_records"))
    sigma, rate, records = values
    if not site["dp"] or sigma is None or rate is None or records is None:
        return None
    return noise_per_clip(sigma, rate, int(records))


def _new_site(site_id: str, config: dict[str, Any]) -> dict[str, Any]:
    """A site's summary before any of its replies is read: what the run config says, unknowns as None."""
    return {
        "site_id": site_id, "num_examples": 0, "class_counts": [], "rounds_participated": [],
        "local_val_accuracy": None, "epsilon": None,  # unknown until the site reports it
        "epsilon_budget": None, "epsilon_asked": None, "epsilon_granted": None, "delta": None,
        "noise_multiplier": None, "max_grad_norm": None, "refused_rounds": [],  # None until a reply says
        "sample_rate": None, "privacy_records": None, "noise_per_clip": None,  # of its last round trained
        "failed_rounds": [], "rejected_rounds": [], "reasons": [], "refusals": [], "skipped_files": None,
        "job_history": [],  # [σ, q, steps] of the rounds it trained in, merged (None once a round lacks one)
        "dp": bool(config.get("dp", True)), "val_examples": None, "steps": 0, "randomness": None,
        "privacy_unit": None, "shares_diagnostics": False, "replied": False,  # replied: sent its values
        "epsilon_per_period": None, "period_days": None, "epsilon_in_period": None,
        "overridden": [],  # run-config keys the site's own settings won over, as its replies named them
    }


def _add_reply(site: dict[str, Any], reply: dict[str, Any], round_number: int) -> None:
    """Fold one round's reply into the site's summary: its settings, its spend, its participation."""
    metrics = reply.get("metrics") or {}
    diagnostics = reply.get("diagnostics") or {}
    site["replied"] = site["replied"] or bool(metrics)
    if reply.get("privacy_unit"):
        site["privacy_unit"] = reply["privacy_unit"]
    site["overridden"] = sorted(set(site["overridden"]) | set(reply.get("overridden") or []))
    if reply.get("randomness") and reply.get("status") in ("trained", "rejected"):
        site["randomness"] = reply["randomness"]  # a refusal comes before the site draws its randomness
    if diagnostics or metrics.get("shares-diagnostics"):
        site["shares_diagnostics"] = True
    if diagnostics:
        if diagnostics.get("class-counts"):
            site["class_counts"] = diagnostics["class-counts"]
        if _finite(diagnostics.get("skipped-files")) is not None:
            site["skipped_files"] = int(diagnostics["skipped-files"])
    if "dp" in metrics and _finite(metrics["dp"]) is not None:
        site["dp"] = bool(metrics["dp"])
        if not site["dp"]:
            site["epsilon"] = None
    for key, name in (("epsilon-budget", "epsilon_budget"), ("max-grad-norm", "max_grad_norm"),
                      ("epsilon-asked", "epsilon_asked"), ("epsilon-per-period", "epsilon_per_period"),
                      ("period-days", "period_days"), ("epsilon-in-period", "epsilon_in_period")):
        if _finite(metrics.get(key)) is not None:
            site[name] = metrics[key]
    if _finite(metrics.get("epsilon-granted")):
        site["epsilon_granted"] = metrics["epsilon-granted"]
    if site["dp"] and metrics.get("dp") and _finite(metrics.get("epsilon")) is not None:
        site["epsilon"] = max(float(site["epsilon"] or 0.0), float(metrics["epsilon"]))
    if _finite(metrics.get("delta")):
        site["delta"] = metrics["delta"]
    _add_participation(site, reply, metrics, diagnostics, round_number)


def _add_participation(site: dict[str, Any], reply: dict[str, Any], metrics: dict[str, Any],
                       diagnostics: dict[str, Any], round_number: int) -> None:
    """A round the site trained in (counts, steps, σ) or missed (refused, failed, rejected, with why)."""
    status = reply["status"]
    if status in ("trained", "rejected"):
        site["num_examples"] = int(metrics.get("num-examples", site["num_examples"]) or 0)
        site["rounds_participated"].append(round_number)
        site["local_val_accuracy"] = _finite(diagnostics.get("val-accuracy"))
        if _finite(diagnostics.get("val-examples")) is not None:
            site["val_examples"] = int(diagnostics["val-examples"])
        site["steps"] += int(_finite(metrics.get("steps")) or 0)
        if _finite(metrics.get("noise-multiplier")):
            site["noise_multiplier"] = metrics["noise-multiplier"]
        for key, name in (("sample-rate", "sample_rate"), ("privacy-records", "privacy_records")):
            if _finite(metrics.get(key)):
                site[name] = metrics[key]
        _add_to_job_history(site, metrics)
    if status != "trained" and status in SITE_STATUSES:
        site[f"{status}_rounds"].append(round_number)
        site["reasons"].append({"round": round_number, "status": status, "reason": reply.get("reason", "")})
    if status == "refused" and reply.get("refusal"):
        site["refusals"].append({"round": round_number, "code": reply["refusal"]})


def _add_to_job_history(site: dict[str, Any], metrics: dict[str, Any]) -> None:
    """[σ, q, steps] of a round the site trained in under DP; the history becomes None if one is missing."""
    if site["job_history"] is None or not metrics.get("dp"):
        return
    sigma, rate, steps = (_finite(metrics.get(k)) for k in ("noise-multiplier", "sample-rate", "steps"))
    if sigma is None or rate is None or steps is None or sigma <= 0 or not 0 < rate <= 1:
        site["job_history"] = None
    elif steps > 0:  # merged as the site's accountant merges: the same ε, computed once
        site["job_history"] = [list(h) for h in with_steps(site["job_history"], sigma, rate, int(steps))]


def communication(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Bytes on the wire per site per round (what the server sent and received), and totals."""
    names = _node_names(rounds)
    per_round = []
    per_site: dict[str, dict[str, int]] = defaultdict(lambda: {"bytes_down": 0, "bytes_up": 0, "replies": 0})
    totals: dict[str, int] = defaultdict(int)
    for line in rounds:
        for reply in line.get("sites", []):
            site_id = names.get(reply.get("node_id"), reply["site_id"]) if reply.get("status") == "failed" \
                else reply["site_id"]
            down, up = int(reply.get("bytes_down", 0) or 0), int(reply.get("bytes_up", 0) or 0)
            per_round.append({"round": line["round"], "site_id": site_id, "bytes_down": down, "bytes_up": up})
            per_site[site_id]["bytes_down"] += down
            per_site[site_id]["bytes_up"] += up
            per_site[site_id]["replies"] += 1
            totals["down"] += down
            totals["up"] += up
    return {
        "per_site_round": per_round,
        "per_site": [{"site_id": k, **per_site[k]} for k in sorted(per_site, key=_natural_key)],
        "total_bytes_down": totals["down"],
        "total_bytes_up": totals["up"],
    }


def any_site_trained(rounds: list[dict[str, Any]]) -> bool:
    return any(reply.get("status") == "trained" for line in rounds for reply in line.get("sites", []))


NO_SITE_TRAINED = ("No site trained: every site refused or failed in every round, so the model evaluated here is "
                   "the starting model, not a federated one.")


def _status(run: dict[str, Any], rounds: list[dict[str, Any]], final: dict[str, Any] | None) -> tuple[bool, str | None]:
    """Whether the run finished with a trained model, and if not, what the report can and cannot show."""
    planned = run.get("config", {}).get("num-server-rounds")
    done = rounds[-1]["round"] if rounds else None
    if planned and any(line["round"] > 0 for line in rounds) and not any_site_trained(rounds):
        return False, NO_SITE_TRAINED
    if final is not None and run.get("end") is not None:
        return True, None
    recorded = (f"rounds up to {done} of {planned} planned were recorded" if rounds else
                f"no round of {planned} planned was recorded")
    if final is None:
        return False, (f"The run did not finish: there is no final evaluation (final-eval.json), so no "
                       f"confidence intervals, confusion matrix or calibration; {recorded}. "
                       f"It crashed, was stopped, or is still running.")
    return False, (f"The run did not record its end (run.json has no end time); {recorded}, "
                   f"and the final evaluation describes round {final.get('round')}.")


def round_acceptance(run: dict[str, Any], rounds: list[dict[str, Any]], final: dict[str, Any] | None) -> dict[str, Any]:
    """Which rounds' models the server kept (`server.round_acceptance`), on which data, and which is the end model."""
    recorded = run.get("round_acceptance") or {}
    decisions = [line["acceptance"] for line in rounds if line.get("acceptance")]
    kept = [d["round"] for d in decisions if d.get("kept")]
    end = (final or {}).get("kept_round")
    if end is None and decisions:
        end = decisions[-1].get("kept_round")
    return {
        "setting": recorded.get("setting", run.get("config", {}).get("round-acceptance")),
        "validation": recorded.get("validation"),
        "validation_examples": recorded.get("validation_examples"),
        "rule": RULE,
        "privacy": NO_PRIVACY_COST,
        "recorded": bool(decisions),  # runs from before round acceptance recorded none
        "kept_rounds": kept,
        "not_kept": [{"round": d["round"], "reason": d.get("reason", "")} for d in decisions if not d.get("kept")],
        "end_model_round": end,
    }


def compose_report(run_dir: Path, baselines: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The whole report as one JSON-able dict (see docs/REPORT.md for every key)."""
    store = RunStore(run_dir)
    run = store.read_json(RUN_FILE)
    rounds = store.rounds()
    final = store.read_json(FINAL_EVAL_FILE) if (run_dir / FINAL_EVAL_FILE).exists() else None
    config = run.get("config", {})
    weights = run.get("weights", {})
    complete, incomplete_reason = _status(run, rounds, final)
    if final is not None:
        final = {**final, "ci95_method": (
            f"percentile bootstrap over test examples, {config.get('bootstrap-samples', 'n/a')} resamples")}
    start, end = _finite(run.get("start")), _finite(run.get("end"))
    sites = site_summaries(rounds, config)
    audit = store.read_json(AUDIT_FILE) if (Path(run_dir) / AUDIT_FILE).exists() else None
    return {
        "schema": REPORT_SCHEMA,
        "generated": time.time(),
        "run": {
            "run_id": run.get("run_id"),
            "run_dir": str(Path(run_dir).resolve()),
            "config": config,
            "start": run.get("start"),
            "end": run.get("end"),
            "duration_s": end - start if start is not None and end is not None else None,
            "resumed": run.get("resumed", []),
            "versions": run.get("versions", {}),
            "weights_source": weights.get("kind"),
            "weights_pretrained": weights.get("kind") not in (None, "none"),
            "weights_description": weights.get("description"),
            "weights_sha256": weights.get("sha256"),
            "weights_path": weights.get("path"),
            "bn_statistics": describe_bn_statistics(config, weights.get("kind"), run.get("bn_statistics")),
            "head_centering": describe_head_centering(config, run.get("head_centering"), weights.get("kind")),
            "classes": run.get("classes", []),
            "test_examples": run.get("test_examples"),
            "test_class_counts": run.get("test_class_counts"),
            "test_stain_fallbacks": run.get("test_stain_fallbacks"),  # stain normalisation kept these as they were
            # issue 25: test-set classes the run's dataset holds no image of outside the test set (simulation: no site)
            "classes_without_training_images": run.get("classes_without_training_images", []),
            "trainable_parameters": run.get("trainable_parameters"),
            "rounds_planned": config.get("num-server-rounds"),
            "rounds_completed": max((line["round"] for line in rounds), default=None),
            "complete": complete,
            "incomplete_reason": incomplete_reason,
            "no_site_trained": incomplete_reason == NO_SITE_TRAINED,
            "next_step": None if complete else next_step(
                incomplete_reason == NO_SITE_TRAINED,
                ((r.get("status", ""), r.get("refusal", "")) for line in rounds for r in line.get("sites", [])),
                str(Path(run_dir).resolve())),
        },
        "rounds": [
            {"round": line["round"], **{k: _finite(line.get(k)) for k in HEADLINE_KEYS},
             "acceptance": line.get("acceptance"), "sites": line.get("sites", [])}
            for line in rounds
        ],
        "round_acceptance": round_acceptance(run, rounds, final),
        "final": final,
        "sites": sites,
        "privacy_settings": privacy_settings(config, sites),
        "privacy_audit": summarise(audit, sites, config) if audit else None,
        "communication": communication(rounds),
        "baselines": list(baselines or []),
    }
