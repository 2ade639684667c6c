"""Render report.html from the report.json dict: one self-contained page.

`build_view` turns report data into exactly what the page prints (formatted strings, figures
as data URIs, warnings); `render_html` fills the Jinja2 template with it. Keeping the
decisions here and the markup in server/report/template.py means the template has no logic
worth testing, and this module can be tested without parsing HTML.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import markupsafe

from common.reply import PROTECTIONS, wire_table
from common.stain_settings import describe_stain
from common.strategies import describe_strategy
from server import privacy_audit
from server.report import plots as report_plots
from server.report.format import (
    privacy_header,
    unit_text,
    budget_fraction,
    bytes_text,
    config_value,
    duration,
    eps,
    is_number,
    num,
    pct,
    round_list,
    short,
    spent_percent,
    timestamp,
)
from server.report.template import CSS, TEMPLATE

METRICS = (("accuracy", "Accuracy"), ("balanced_accuracy", "Balanced accuracy"), ("macro_f1", "Macro-F1"),
           ("macro_auc", "Macro AUC"))
SECTIONS = (
    ("summary", "Summary"), ("learning-curves", "Learning curves"), ("confusion-matrix", "Confusion matrix"),
    ("per-class", "Per class"), ("reliability", "Calibration"), ("sites", "Sites and privacy"),
    ("rounds-without-update", "Rounds without update"), ("baselines", "Baselines"),
    ("communication", "Communication"), ("configuration", "Configuration"), ("what-sites-sent", "What sites sent"),
    ("how-to-read", "How to read this"),
)


def _dataset_text(config: dict[str, Any]) -> str:
    dataset = str(config.get("dataset", "?"))
    if dataset == "synthetic":
        return f"synthetic H&E-like patches (built-in generator, {config.get('synthetic-images', '?')} images)"
    if dataset == "pathmnist":
        return "PathMNIST (colorectal cancer histology, MedMNIST)"
    return Path(dataset).name or dataset


def _majority_share(counts: Any) -> float | None:
    if not isinstance(counts, list) or not counts or sum(counts) <= 0:
        return None
    return max(counts) / sum(counts)


def _weights_view(run: dict[str, Any]) -> dict[str, Any]:
    source = run.get("weights_source")
    pretrained = source not in (None, "none")
    return {
        "source": source or "unknown",
        "pretrained": pretrained,
        "description": run.get("weights_description") or "",
        "sha256": run.get("weights_sha256") or "",
        "path": run.get("weights_path") or "",
        "headline": (f"pretrained ({source})" if pretrained else "NOT pretrained: trained from scratch"),
    }


def _headline(report: dict[str, Any]) -> dict[str, Any]:
    """The numbers the summary leads with: the final evaluation, or the last recorded round if none."""
    final, rounds = report.get("final"), report.get("rounds") or []
    untrained = "UNTRAINED starting model (no site trained), " if report["run"].get("no_site_trained") else ""
    if final is not None:
        ci = final.get("ci95") or {}
        return {"from": f"{untrained}final model (round {final.get('round', '?')}), "
                        f"{final.get('num_examples', '?')} test images",
                "items": [{"label": label, "value": pct(final.get(key)), "ci": _ci_text(ci.get(key))}
                          for key, label in METRICS]}
    if rounds:
        last = rounds[-1]
        return {"from": f"last recorded round ({last['round']}); no final evaluation, so no confidence interval",
                "items": [{"label": label, "value": pct(last.get(key)), "ci": ""} for key, label in METRICS]}
    return {"from": "nothing was evaluated", "items": [{"label": label, "value": "n/a", "ci": ""}
                                                        for _, label in METRICS]}


def _ci_text(ci: Any) -> str:
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(is_number(c) for c in ci):
        return f"95% CI {100 * ci[0]:.1f}-{100 * ci[1]:.1f}%"
    return ""


def _site_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
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
            "budget": short(site.get("epsilon_budget")),
            "fraction": fraction,
            "bar_width": f"{100 * min(fraction, 1.0):.1f}" if fraction is not None else "0",
            "fraction_text": f"{spent_percent(fraction)} of budget" if fraction is not None else
                             ("no DP" if not site.get("dp", True) else "not reported"),
            "over_budget": fraction is not None and fraction > 1.0 + 1e-9,
            "delta": short(site.get("delta")),
            "sigma": num(site.get("noise_multiplier"), 3),
            "clip": short(site.get("max_grad_norm")),
            "skipped_files": site.get("skipped_files", 0),
            "traffic": f"{bytes_text(traffic.get('bytes_down'))} / {bytes_text(traffic.get('bytes_up'))}",
            "statement": site.get("privacy_statement", ""),
        })
    return rows


def _per_class_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
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


def _round_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for line in report.get("rounds", []):
        replies = line.get("sites", [])
        statuses = [r.get("status") for r in replies]
        spent = [r["metrics"]["epsilon"] for r in replies
                 if (r.get("metrics") or {}).get("dp") and is_number((r.get("metrics") or {}).get("epsilon"))]
        rows.append({
            "round": "0 (initial)" if line["round"] == 0 else str(line["round"]),
            **{key: pct(line.get(key)) for key, _ in METRICS},
            "loss": num(line.get("loss")),
            "updates": f"{statuses.count('trained')} of {len(replies)}" if replies else "-",
            "max_epsilon": eps(max(spent)) if spent else "-",
        })
    return rows


def _missing_rounds(report: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for site in report.get("sites", []):
        for entry in site.get("reasons", []):
            out.append({"site_id": site["site_id"], "round": entry["round"], "status": entry["status"],
                        "reason": entry.get("reason") or "(no reason given)"})
    return sorted(out, key=lambda e: (e["round"], e["site_id"]))


def _baseline_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The federated result first, then every baseline, with its difference in points."""
    baselines = report.get("baselines") or []
    if not baselines:
        return []
    final = report.get("final") or {}
    sites = [s["epsilon"] for s in report.get("sites", []) if is_number(s.get("epsilon"))]
    dp = bool(report["run"].get("config", {}).get("dp", True))
    fed = {
        "name": "this run (federated" + (", DP)" if dp else ", non-private)"), "kind": "federated",
        "accuracy": final.get("accuracy"), "accuracy_ci95": (final.get("ci95") or {}).get("accuracy"),
        **{k: final.get(k) for k in ("balanced_accuracy", "macro_f1", "macro_auc", "ece")},
        "epsilon": max(sites) if dp and sites else None, "test_examples": final.get("num_examples"),
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
            "ci_text": _ci_text(row.get("accuracy_ci95")).removeprefix("95% CI ") or "-",
            "delta_text": "-" if delta is None else f"{delta:+.1f}",
            "balanced_text": pct(row.get("balanced_accuracy")), "f1_text": pct(row.get("macro_f1")),
            "auc_text": pct(row.get("macro_auc")), "ece_text": pct(row.get("ece")),
            "epsilon_text": eps(row["epsilon"]) if is_number(row.get("epsilon")) else
                            ("∞ (non-private)" if row.get("kind") == "federated" and not dp and row.get("highlight")
                             else "-"),
            "test_text": str(row["test_examples"]) if row.get("test_examples") else "n/a",
        })
    return rows


def _communication_rows(report: dict[str, Any]) -> dict[str, Any]:
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


def _sections(report: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """The table of contents; "Privacy audit" follows "Sites and privacy" in runs with canaries."""
    if not report.get("privacy_audit"):
        return SECTIONS
    at = [k for k, _ in SECTIONS].index("sites") + 1
    return (*SECTIONS[:at], ("privacy-audit", "Privacy audit"), *SECTIONS[at:])


def build_view(report: dict[str, Any]) -> dict[str, Any]:
    """Everything the template prints, decided and formatted here."""
    run = report["run"]
    config = run.get("config", {})
    final = report.get("final")
    classes = run.get("classes", [])
    sites = report.get("sites", [])
    site_rows = _site_rows(report)
    chance = _majority_share(run.get("test_class_counts"))
    dp = bool(config.get("dp", True))
    baseline_rows = _baseline_rows(report)
    over = [s["site_id"] for s in site_rows if s["over_budget"]]
    return {
        "title": f"fedpath report: run {run.get('run_id')}",
        "run": run,
        "complete": bool(run.get("complete")),
        "incomplete_reason": run.get("incomplete_reason") or "",
        "weights": _weights_view(run),
        "task": f"Classify tissue patches into {len(classes)} classes",
        "classes": classes,
        "dataset": _dataset_text(config),
        "sites_count": len(sites),
        "site_names": ", ".join(s["site_id"] for s in sites) or "none replied",
        "rounds_text": f"{run.get('rounds_completed') if run.get('rounds_completed') is not None else 0} of "
                       f"{run.get('rounds_planned', '?')} planned",
        "model_text": f"{config.get('arch', '?')}, policy '{config.get('policy', '?')}' "
                      f"({run.get('trainable_parameters', '?')} trainable values travel each round)",
        "strategy_text": describe_strategy(config),
        "stain_text": describe_stain(config, run.get("test_stain_fallbacks")),
        "privacy_text": privacy_header(sites, config) if dp else
                        "none: this run trained WITHOUT differential privacy (dp = false)",
        "no_site_trained": bool(run.get("no_site_trained")),
        "unit_line": unit_text([s for s in sites if s.get("dp")] or sites),
        "wire_rows": [{**row, "protection": PROTECTIONS[row["protection"]]} for row in wire_table()],
        "diagnostics_sites": ", ".join(s["site_id"] for s in sites if s.get("shares_diagnostics")) or "no site",
        "dp": dp,
        "over_budget": over,
        "headline": _headline(report),
        "chance": pct(chance, 0) if chance is not None else "n/a",
        "statements": [s["statement"] for s in site_rows],
        "site_rows": site_rows,
        "round_rows": _round_rows(report),
        "missing_rounds": _missing_rounds(report),
        "per_class_rows": _per_class_rows(report),
        "final": final,
        "ece": pct(final.get("ece")) if final else "n/a",
        "ci_method": final.get("ci95_method", "") if final else "",
        "baseline_rows": baseline_rows,
        "communication": _communication_rows(report),
        "config_items": [(k, config_value(v)) for k, v in sorted(config.items())],
        "versions": sorted((run.get("versions") or {}).items()),
        "start": timestamp(run.get("start")),
        "end": timestamp(run.get("end")) if run.get("end") is not None else "not recorded",
        "duration": duration(run.get("duration_s")),
        "resumed": [{"after_round": r.get("after_round"), "time": timestamp(r.get("time")), "run_id": r.get("run_id")}
                    for r in run.get("resumed") or []],
        "generated": timestamp(report.get("generated")),
        "sections": _sections(report),
        "audit": privacy_audit.view(report.get("privacy_audit")),
        "plots": {
            "learning_curves": report_plots.learning_curves(report.get("rounds", []), chance),
            "confusion_matrix": report_plots.confusion_matrix(final["confusion_matrix"], classes)
            if final and final.get("confusion_matrix") else None,
            "reliability": report_plots.reliability(final.get("reliability")) if final else None,
            "privacy": report_plots.privacy_spend(report.get("rounds", []), sites) if dp else None,
            "baselines": report_plots.baselines(baseline_rows) if baseline_rows else None,
        },
    }


def render_html(report: dict[str, Any]) -> str:
    """report.html's text. Autoescaping is on: site names, reasons and paths are data, not markup."""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.from_string(TEMPLATE).render(css=markupsafe.Markup(CSS), **build_view(report))
