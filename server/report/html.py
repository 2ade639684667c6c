"""Render report.html from the report.json dict: one self-contained page.

`build_view` turns report data into exactly what the page prints (formatted strings, figures
as data URIs, warnings; the tables come from server/report/tables.py); `render_html` fills
the Jinja2 template with it. Keeping the decisions here and the markup in
server/report/template.py means the template has no logic worth testing, and this module can
be tested without parsing HTML.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import markupsafe

from common.config.stain_settings import describe_stain
from common.config.strategies import describe_strategy
from common.config.toml_values import toml_value
from common.wire.reply import PROTECTIONS, wire_table
from server import privacy_audit
from server.report import plots as report_plots
from server.report.applied import VERDICT_TEXT
from server.report.format import duration, pct, timestamp
from server.report.officer import officer_text
from server.report.privacy_text import NOISE_PER_CLIP, explainer, privacy_header, private_sites, unit_text
from server.report.tables import (
    METRICS,
    acceptance_text,
    baseline_rows,
    ci_text,
    communication_rows,
    missing_rounds,
    patient_view,
    per_class_rows,
    round_rows,
    site_rows,
)
from server.report.template import CSS, TEMPLATE

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
        kept = final.get("kept_round")
        model = (f"end model = the model kept in round {kept} (rounds run: {final.get('round', '?')})"
                 if kept is not None and kept != final.get("round") else f"final model (round {final.get('round', '?')})")
        return {"from": f"{untrained}{model}, {final.get('num_examples', '?')} test images",
                "items": [{"label": label, "value": pct(final.get(key)), "ci": ci_text(ci.get(key))}
                          for key, label in METRICS]}
    if rounds:
        last = rounds[-1]
        return {"from": f"last recorded round ({last['round']}); no final evaluation, so no confidence interval",
                "items": [{"label": label, "value": pct(last.get(key)), "ci": ""} for key, label in METRICS]}
    return {"from": "nothing was evaluated", "items": [{"label": label, "value": "n/a", "ci": ""}
                                                        for _, label in METRICS]}


def _sections(report: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """The table of contents; "Per patient" follows "Per class" where the test set names patients, and
    "Privacy audit" follows "Sites and privacy" in runs with canaries."""
    sections = SECTIONS
    if (report.get("final") or {}).get("patient_level"):
        at = [k for k, _ in sections].index("per-class") + 1
        sections = (*sections[:at], ("patients", "Per patient"), *sections[at:])
    if report.get("privacy_audit"):
        at = [k for k, _ in sections].index("sites") + 1
        sections = (*sections[:at], ("privacy-audit", "Privacy audit"), *sections[at:])
    return sections


def build_view(report: dict[str, Any]) -> dict[str, Any]:
    """Everything the template prints, decided and formatted here."""
    run = report["run"]
    config = run.get("config", {})
    final = report.get("final")
    sites = report.get("sites", [])
    rows = site_rows(report)
    chance = _majority_share(run.get("test_class_counts"))
    dp = bool(config.get("dp", True))
    baselines = baseline_rows(report)
    return {
        **_run_view(run, config, sites),
        "dp": dp,
        "over_budget": [s["site_id"] for s in rows if s["over_budget"]],
        "headline": _headline(report),
        "chance": pct(chance, 0) if chance is not None else "n/a",
        "statements": [s["statement"] for s in rows],
        "site_rows": rows,
        "round_rows": round_rows(report),
        "acceptance": acceptance_text(report),
        "noise_per_clip": NOISE_PER_CLIP,
        "missing_rounds": missing_rounds(report),
        "per_class_rows": per_class_rows(report),
        "patients": patient_view(report),
        "final": final,
        "ece": pct(final.get("ece")) if final else "n/a",
        "ci_method": final.get("ci95_method", "") if final else "",
        "baseline_rows": baselines,
        "communication": communication_rows(report),
        **_provenance_view(run, config, report.get("privacy_settings") or []),
        "generated": timestamp(report.get("generated")),
        "sections": _sections(report),
        "audit": privacy_audit.view(report.get("privacy_audit")),
        "plots": _plots(report, chance, dp, baselines),
    }


def _run_view(run: dict[str, Any], config: dict[str, Any], sites: list[dict[str, Any]]) -> dict[str, Any]:
    """The page's header: what was trained, on what, by whom, under which privacy."""
    classes = run.get("classes", [])
    dp = bool(config.get("dp", True))
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
        "next_step": run.get("next_step") or "",
        "unit_line": unit_text(private_sites(sites) or sites),
        "explainer": explainer(sites),
        "officer_text": officer_text(sites),
        "wire_rows": [{**row, "protection": PROTECTIONS[row["protection"]]} for row in wire_table()],
        "diagnostics_sites": ", ".join(s["site_id"] for s in sites if s.get("shares_diagnostics")) or "no site",
    }


def _provenance_view(run: dict[str, Any], config: dict[str, Any],
                     settings: list[dict[str, Any]]) -> dict[str, Any]:
    """Configuration, versions and times: what it takes to say exactly which run this was; each privacy
    key marked with what the sites reported they applied (report.json's `privacy_settings`)."""
    verdicts = {row["key"]: row["verdict"] for row in settings}
    return {
        "config_items": [(k, toml_value(v), verdicts.get(k, ""), VERDICT_TEXT.get(verdicts.get(k, ""), ""))
                         for k, v in sorted(config.items())],
        "privacy_settings": settings,
        "versions": sorted((run.get("versions") or {}).items()),
        "start": timestamp(run.get("start")),
        "end": timestamp(run.get("end")) if run.get("end") is not None else "not recorded",
        "duration": duration(run.get("duration_s")),
        "resumed": [{"after_round": r.get("after_round"), "time": timestamp(r.get("time")), "run_id": r.get("run_id")}
                    for r in run.get("resumed") or []],
    }


def _plots(report: dict[str, Any], chance: float | None, dp: bool,
           baselines: list[dict[str, Any]]) -> dict[str, str | None]:
    """The page's figures as data URIs (None where there is nothing to draw)."""
    final = report.get("final")
    classes = report["run"].get("classes", [])
    return {
        "learning_curves": report_plots.learning_curves(report.get("rounds", []), chance),
        "confusion_matrix": report_plots.confusion_matrix(final["confusion_matrix"], classes)
        if final and final.get("confusion_matrix") else None,
        "reliability": report_plots.reliability(final.get("reliability")) if final else None,
        "privacy": report_plots.privacy_spend(report.get("rounds", []), report.get("sites", [])) if dp else None,
        "baselines": report_plots.baselines(baselines) if baselines else None,
    }


def render_html(report: dict[str, Any]) -> str:
    """report.html's text. Autoescaping is on: site names, reasons and paths are data, not markup."""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.from_string(TEMPLATE).render(css=markupsafe.Markup(CSS), **build_view(report))
