"""Turn an experiment's result dict into results.json, a markdown table and a PNG plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from server.run_store import jsonable  # noqa: E402


def _pct(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def _acc(row: dict[str, Any]) -> str:
    ci = row.get("accuracy_ci95")
    text = _pct(row.get("accuracy"))
    return f"{text} ({_pct(ci[0])}-{_pct(ci[1])})" if ci and ci[0] is not None else text


def _eps(row: dict[str, Any]) -> str:
    eps = row.get("max_site_epsilon")
    if row.get("kind") != "federated":
        return "-"
    return "∞ (non-private)" if eps is None else f"{eps:.2f}"


def _row_cells(row: dict[str, Any]) -> list[str]:
    rounds = row.get("rounds") or []
    start = _pct(rounds[0]["accuracy"]) if rounds else "-"
    problems = [f"{row[k]} {what}" for k, what in (("rejected_updates", "rejected"), ("failed_replies", "failed"),
                                                   ("refused_rounds", "refused")) if row.get(k)]
    return [row["label"], _acc(row), _pct(row.get("balanced_accuracy")), _pct(row.get("macro_f1")),
            _pct(row.get("macro_auc")), _eps(row), start, ", ".join(problems) or "-",
            f"{row.get('seconds', 0):.0f}" if row.get("seconds") else "-"]


HEADER = ["setting", "accuracy % (95% CI)", "balanced acc. %", "macro-F1 %", "macro AUC %", "max site ε",
          "round-0 acc. %", "site updates not used", "seconds"]


def markdown_table(result: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in result["rows"]:
        lines.append("| " + " | ".join(_row_cells(row)) + " |")
    text = "\n".join(lines) + "\n"
    if "targets" in result:
        t = result["targets"]
        text += (
            f"\nTargets: federated DP (ε=8) minus pooled non-private = **{t['dp_minus_pooled_points']:+.2f} points** "
            f"(target ≥ -2: {'met' if t['within_2_points_of_pooled'] else 'NOT met'}); minus mean local-only site = "
            f"**{t['dp_minus_mean_local_points']:+.2f} points** "
            f"({'above' if t['above_mean_local_only'] else 'NOT above'} the mean local-only site).\n"
        )
    return text


def plot(result: dict[str, Any], path: Path) -> None:
    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=110)
    if result["experiment"] == "privacy-utility":
        finite = [r for r in rows if r.get("epsilon")]
        xs = [r["epsilon"] for r in finite]
        ax.errorbar(xs, [100 * r["accuracy"] for r in finite],
                    yerr=[[100 * (r["accuracy"] - r["accuracy_ci95"][0]) for r in finite],
                          [100 * (r["accuracy_ci95"][1] - r["accuracy"]) for r in finite]],
                    marker="o", capsize=4, color="#7b2d8b", label="FedAvg DP (per-site ε)")
        for r in rows:
            if not r.get("epsilon"):
                ax.axhline(100 * r["accuracy"], color="#2a7", linestyle="--", label="FedAvg non-private (ε=∞)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.set_xlabel("per-site privacy budget ε (cumulative over all rounds)")
    else:
        labels = [r["label"] for r in rows]
        values = [100 * (r["accuracy"] or 0) for r in rows]
        colours = ["#7b2d8b" if r.get("dp") or "DP" in r["label"] else "#2a7" for r in rows]
        ax.barh(range(len(rows)), values, color=colours)
        ax.set_yticks(range(len(rows)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("central test accuracy (%)")
        ax.set_xlim(max(0, min(values) - 10), 100)
    ax.set_ylabel("central test accuracy (%)" if result["experiment"] == "privacy-utility" else "")
    ax.set_title(f"{result['experiment']}{' (quick)' if result['quick'] else ''}: LC25000 lung, group-aware split")
    ax.grid(alpha=0.3)
    if result["experiment"] == "privacy-utility":
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_outputs(result: dict[str, Any], target: Path) -> list[Path]:
    target.mkdir(parents=True, exist_ok=True)
    paths = [target / "results.json", target / "table.md", target / "plot.png"]
    paths[0].write_text(json.dumps(jsonable(result), indent=1))
    paths[1].write_text(markdown_table(result))
    plot(result, paths[2])
    return paths
