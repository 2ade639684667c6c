"""The report page's tables, one row dict per site, class, round, baseline or transfer.

Each function decides what a row of report.html shows (formatted text, flags the template
styles by, such as a site over its budget or a weak class), from report.json's dict only, so
the page's content is tested without parsing HTML; `server/report/html.py` puts the tables
together with the summary into what the template prints.
"""

from __future__ import annotations

from typing import Any

from common.wire.reply import largest_site_epsilon
from server.report.format import (
    budget_fraction,
    bytes_text,
    eps,
    is_number,
    num,
    pct,
    round_list,
    short,
    spent_percent,
)
from server.report.privacy_text import noise_number

METRICS = (("accuracy", "Accuracy"), ("balanced_accuracy", "Balanced accuracy"), ("macro_f1", "Macro-F1"),
           ("macro_auc", "Macro AUC"))


def ci_text(ci: Any) -> str:
    """A 95% confidence interval as the page prints it; '' where none was computed."""
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(is_number(c) for c in ci):
        return f"95% CI {100 * ci[0]:.1f}-{100 * ci[1]:.1f}%"
    return ""


def site_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    bytes_by_site = {s["site_id"]: s for s in report.get("communication", {}).get("per_site", [])}
    rows = []
    for site in report.get("sites", []):
        fraction = budget_fraction(site.get("epsilon"), site.get("epsilon_budget"))
        trained = [r for r in site.get("rounds_participated", []) if r not in site.get("rejected_rounds", [])]
        missing = {k: site.get(f"{k}_rounds", []) for k in ("refused", "failed", "rejected")}
        traffic = bytes_by_site.get(site["site_id"], {})
        rows.append({
            "site_id": site["site_id"],
            "trained": round_list(trained) if trained else "none",
            "trained_count": len(trained),
            "missing": ", ".join(f"{k} {round_list(v)}" for k, v in missing.items() if v) or "-",
            "has_missing": any(missing.values()),
            "examples": str(site.get("num_examples") or 0),
            "class_counts": " / ".join(str(c) for c in site.get("class_counts") or []) or "n/a",
            "val_accuracy": pct(site.get("local_val_accuracy")),
            "val_examples": site.get("val_examples"),
            "dp": site.get("dp", True),
            "epsilon": eps(site.get("epsilon")),
            "epsilon_job": eps(site.get("epsilon_this_job")),
            "granted": short(site.get("epsilon_granted")),
            "budget": short(site.get("epsilon_budget")),
            "fraction": fraction,
            "bar_width": f"{100 * min(fraction, 1.0):.1f}" if fraction is not None else "0",
            "fraction_text": f"{spent_percent(fraction)} of budget" if fraction is not None else
                             ("no DP" if not site.get("dp", True) else "not reported"),
            "over_budget": fraction is not None and fraction > 1.0 + 1e-9,
            "delta": short(site.get("delta")),
            "sigma": num(site.get("noise_multiplier"), 3),
            "noise_per_clip": noise_number(site.get("noise_per_clip")),  # σ/(q·N): what the site's ε buys
            "clip": short(site.get("max_grad_norm")),
            "skipped_files": site.get("skipped_files", 0),
            "traffic": f"{bytes_text(traffic.get('bytes_down'))} / {bytes_text(traffic.get('bytes_up'))}",
            "statement": site.get("privacy_statement", ""),
        })
    return rows


def per_class_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    final = report.get("final")
    if not final or not final.get("per_class"):
        return []
    table = final["per_class"]
    classes = table.get("classes") or report["run"].get("classes", [])
    trained = [0] * len(classes)
    for site in report.get("sites", []):
        for i, count in enumerate(site.get("class_counts") or []):
            if i < len(trained):
                trained[i] += int(count)
    rows = []
    for i, name in enumerate(classes):
        recall = table["recall"][i]
        rows.append({
            "name": name, "support": table["support"][i], "precision": pct(table["precision"][i]),
            "recall": pct(recall), "f1": pct(table["f1"][i]), "train": trained[i] if any(trained) else "n/a",
            "weak": is_number(recall) and recall < 0.5,
        })
    return rows


def patient_view(report: dict[str, Any]) -> dict[str, Any] | None:
    """The patient-level results beside the patch-level ones; None where the test set names no patients.

    Patients whose prediction is wrong come first in the table: they are what a pathologist checks.
    """
    level = (report.get("final") or {}).get("patient_level")
    if not level:
        return None
    ci = level.get("ci95") or {}
    rows = sorted(level.get("per_patient") or [], key=lambda p: (p["label"] is None or p["predicted"] == p["label"],
                                                                  p["patient"]))
    return {
        "items": [{"label": label, "value": pct(level.get(key)), "ci": ci_text(ci.get(key))} for key, label in METRICS],
        "patients": level.get("patients"), "patches": level.get("patches"), "mixed": level.get("mixed_label_patients"),
        "aggregation": level.get("aggregation", ""), "ci_method": level.get("ci95_method") or "",
        "majority_vote": pct(level.get("majority_vote_accuracy")),
        "rows": [{
            "patient": p["patient"], "label": p["label"] or "mixed labels", "predicted": p["predicted"],
            "wrong": p["label"] is not None and p["predicted"] != p["label"], "patches": p["patches"],
            "mean": " / ".join(pct(v, 0) for v in p["mean_probability"]),
            "share": " / ".join(pct(v, 0) for v in p["share_of_patches"]),
        } for p in rows],
    }


def round_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for line in report.get("rounds", []):
        replies = line.get("sites", [])
        statuses = [r.get("status") for r in replies]
        largest = largest_site_epsilon(r.get("metrics") or {} for r in replies)
        decision = line.get("acceptance") or {}
        rows.append({
            "round": "0 (initial)" if line["round"] == 0 else str(line["round"]),
            **{key: pct(line.get(key)) for key, _ in METRICS},
            "loss": num(line.get("loss")),
            "updates": f"{statuses.count('trained')} of {len(replies)}" if replies else "-",
            "max_epsilon": eps(largest) if largest is not None else "-",
            # round acceptance: the aggregated model's validation accuracy, kept or not, and why
            "validation": pct(decision.get("validation_accuracy")) if decision else "-",
            "kept": ("kept" if decision.get("kept") else "not kept") if decision else "-",
            "not_kept": bool(decision) and not decision.get("kept"),
            "why": decision.get("reason", "") if decision else "",
        })
    return rows


def acceptance_text(report: dict[str, Any]) -> str:
    """One paragraph: the rule, the data it judged on, the rounds kept and the end model's round."""
    info = report.get("round_acceptance") or {}
    if not info.get("recorded"):
        return "This run recorded no round acceptance (it predates it): every round's model was kept."
    data = info.get("validation")
    on = f"{data} ({info.get('validation_examples')} images, never the central test set)" if data else \
        "no validation data (none is needed: every round is kept)"
    dropped = "; ".join(f"round {d['round']}: {d['reason']}" for d in info.get("not_kept", [])) or "none"
    return (f"Round acceptance = {info.get('setting')}, judged on {on}. Rule: {info.get('rule')}. "
            f"Kept rounds: {round_list(info.get('kept_rounds') or []) or 'none'}. Not kept: {dropped}. "
            f"The end model is the one kept in round {info.get('end_model_round')}; the accuracy per round below is "
            f"that of the model the job held after the round. No privacy cost: {info.get('privacy')}.")


def missing_rounds(report: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for site in report.get("sites", []):
        for entry in site.get("reasons", []):
            out.append({"site_id": site["site_id"], "round": entry["round"], "status": entry["status"],
                        "reason": entry.get("reason") or "(no reason given)"})
    return sorted(out, key=lambda e: (e["round"], e["site_id"]))


def baseline_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The federated result first, then every baseline, with its difference in points."""
    baselines = report.get("baselines") or []
    if not baselines:
        return []
    final = report.get("final") or {}
    dp = bool(report["run"].get("config", {}).get("dp", True))
    fed = {
        "name": "this run (federated" + (", DP)" if dp else ", non-private)"), "kind": "federated",
        "accuracy": final.get("accuracy"), "accuracy_ci95": (final.get("ci95") or {}).get("accuracy"),
        **{k: final.get(k) for k in ("balanced_accuracy", "macro_f1", "macro_auc", "ece")},
        "epsilon": largest_site_epsilon(report.get("sites", [])) if dp else None,
        "test_examples": final.get("num_examples"),
        "source": "this report", "notes": "", "highlight": True,
    }
    rows = []
    for row in [fed, *baselines]:
        delta = None
        if is_number(row.get("accuracy")) and is_number(fed["accuracy"]) and not row.get("highlight"):
            delta = 100 * (row["accuracy"] - fed["accuracy"])
        rows.append({
            **row,
            "highlight": bool(row.get("highlight")),
            "accuracy_text": pct(row.get("accuracy")),
            "ci_text": ci_text(row.get("accuracy_ci95")).removeprefix("95% CI ") or "-",
            "delta_text": "-" if delta is None else f"{delta:+.1f}",
            "balanced_text": pct(row.get("balanced_accuracy")), "f1_text": pct(row.get("macro_f1")),
            "auc_text": pct(row.get("macro_auc")), "ece_text": pct(row.get("ece")),
            "epsilon_text": eps(row["epsilon"]) if is_number(row.get("epsilon")) else
                            ("∞ (non-private)" if row.get("kind") == "federated" and not dp and row.get("highlight")
                             else "-"),
            "test_text": str(row["test_examples"]) if row.get("test_examples") else "n/a",
        })
    return rows


def communication_rows(report: dict[str, Any]) -> dict[str, Any]:
    comm = report.get("communication") or {}
    per_site_round = comm.get("per_site_round", [])
    rounds = sorted({e["round"] for e in per_site_round})
    sites = [s["site_id"] for s in comm.get("per_site", [])]
    cell = {(e["site_id"], e["round"]): e for e in per_site_round}
    return {
        "rounds": rounds,
        "rows": [{"site_id": site, "cells": [
            (f"{bytes_text(cell[(site, r)]['bytes_down'])} / {bytes_text(cell[(site, r)]['bytes_up'])}"
             if (site, r) in cell else "-") for r in rounds],
            "total": next((f"{bytes_text(s['bytes_down'])} / {bytes_text(s['bytes_up'])}"
                           for s in comm.get("per_site", []) if s["site_id"] == site), "-")} for site in sites],
        "total_down": bytes_text(comm.get("total_bytes_down", 0)),
        "total_up": bytes_text(comm.get("total_bytes_up", 0)),
    }
