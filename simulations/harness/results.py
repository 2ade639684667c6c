"""Turn an experiment's result dict into results.json, a markdown table and a PNG plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common.audit.bound import INCONSISTENT, ceiling, verdict  # noqa: E402
from server.report.format import pct  # noqa: E402
from server.run_store import jsonable  # noqa: E402


def _pct(value: float | None) -> str:
    """A share as a table cell: the report's percentage without its sign (the header says %)."""
    return pct(value).removesuffix("%")


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


AUDIT_HEADER = ["setting", "seed", "claimed ε (site spent)", "canary ε lower bound (v/r correct)",
                "ceiling (all right)", "verdict", "canary AUC",
                "MIA AUC, update (95% CI)", "TPR @1% FPR", "TPR @0.1% FPR", "MIA AUC, gradient", "MIA AUC, final global",
                "MIA AUC, last update", "test acc. %", "audit cost / run"]


def _tpr(mia: dict[str, Any], fpr: str) -> str:
    point = mia["tpr_at_fpr"][fpr]
    return f"{_pct(point['tpr'])}% ({_pct(point['ci95'][0])}-{_pct(point['ci95'][1])})"


def _audit_cells(row: dict[str, Any]) -> list[str]:
    mia, canary = row["mia"], row["canary"]
    claimed = "∞ (non-private)" if row["claimed_epsilon"] is None else (
        f"{row['claimed_epsilon']:g} ({row['site_epsilon_spent']:.2f})")
    update = mia["update"]
    return [
        row["label"], str(row["seed"]), claimed,
        f"**{canary['epsilon_lower_bound']:.2f}** ({canary['correct']}/{canary['guesses']})",
        f"{row_ceiling(row):.2f}", _verdict(row),
        f"{row['canary_auc']:.3f}",
        f"{update['auc']:.3f} ({update['auc_ci95'][0]:.3f}-{update['auc_ci95'][1]:.3f})",
        _tpr(update, "0.01"), _tpr(update, "0.001"),
        f"{mia['gradient']['auc']:.3f}" if "gradient" in mia else "-",
        f"{mia['final-global']['auc']:.3f}", f"{mia['last-update']['auc']:.3f}",
        _pct(row["test_accuracy"]), f"{row['audit_cost_ratio']:.2f}x",
    ]


def row_ceiling(row: dict[str, Any]) -> float:
    """An audit row's ceiling: recorded, or (rows from before it was) from m, the included count and δ."""
    canary = row["canary"]
    if "ceiling" in canary:
        return float(canary["ceiling"])
    return ceiling(np.arange(canary["canaries"]) < canary["included"], row["delta"])


def _verdict(row: dict[str, Any]) -> str:
    """The audit's verdict on a DP row's claim (`common.audit.bound.verdict`); '-' without DP."""
    if not row["dp"]:
        return "-"
    text = verdict(row["canary"]["epsilon_lower_bound"], row_ceiling(row), row["claimed_epsilon"])
    return f"**{text}**" if text == INCONSISTENT else text


def _met(flag: bool | None) -> str:
    return "n/a" if flag is None else ("met" if flag else "**NOT met**")


def audit_targets_text(t: dict[str, Any]) -> str:
    def num(v: float | None, fmt: str = ".3f") -> str:
        return "n/a" if v is None else format(v, fmt)

    return (
        f"\nTargets: canary lower bound ≤ claimed ε in every DP row as implemented: "
        f"{_met(t['bound_below_claimed_epsilon'])} (largest bound / claimed ε: {num(t['max_bound_over_claimed'], '.2f')}; "
        f"claims the audit could contradict: {_claims(t.get('conclusive_claims'))}, could not: "
        f"{_claims(t.get('inconclusive_claims'))}); DP rows broken on purpose found inconsistent (bound > claimed ε): "
        f"{_met(t.get('broken_runs_caught'))} (lowest bound {num(t.get('broken_min_bound'), '.2f')}); "
        f"non-private audit has power (update MIA AUC ≥ 0.6 or canary bound ≥ 1, every seed): "
        f"{_met(t['nonprivate_has_power'])} (lowest AUC {num(t['nonprivate_min_update_auc'])}, lowest bound "
        f"{num(t['nonprivate_min_bound'], '.2f')}); DP ε ≤ 8, largest MIA AUC over all scores ≤ 0.55: "
        f"{_met(t['dp_auc_at_most_0_55'])} (largest {num(t['dp_max_auc'])}); audit cost ≤ 2x the DP run: "
        f"{_met(t['audit_cost_at_most_2x'])} (largest {num(t['max_audit_cost_ratio'], '.2f')}x).\n"
    )


def _claims(claims: list[float] | None) -> str:
    return ", ".join(f"ε = {c:g}" for c in claims) if claims else "none"


UNITS_HEADER = ["setting", "accuracy % (95% CI)", "balanced acc. %", "macro AUC %", "ε per patient (max site)",
                "ε per patch (max site)", "server validation % start → end (kept rounds)", "site updates not used",
                "seconds"]


def _unit_eps(row: dict[str, Any], key: str, exact_for: str) -> str:
    """ε in one unit; '(bound)' where it is converted from the other unit, not the accountant's own."""
    if row.get("kind") != "federated":
        return "-"
    if "epsilon_per_patch" not in row:
        return "∞ (non-private)"
    value = row[key]
    text = f"{value:.3g}" if value < 1e4 else f"{value:.1e}"
    return text if row.get("privacy_unit_asked") == exact_for else f"≤ {text} (bound)"


def _unit_cells(row: dict[str, Any]) -> list[str]:
    cells = _row_cells(row)
    return [cells[0], cells[1], cells[2], cells[4], _unit_eps(row, "epsilon_per_patient", "patient"),
            _unit_eps(row, "epsilon_per_patch", "patch"), _validation_cell(row), cells[7], cells[8]]


def _validation_cell(row: dict[str, Any]) -> str:
    """The server's validation accuracy (never the test set) of the start and the end model, and the rounds kept."""
    v = row.get("validation") or {}
    if not v:
        return "-"
    kept = ", ".join(str(r) for r in v.get("kept_rounds", []) if r) or "none"
    return f"{_pct(v['start'])} → {_pct(v['end'])} ({kept})"


def markdown_table(result: dict[str, Any]) -> str:
    if result.get("experiment") == "patient-privacy":
        lines = ["| " + " | ".join(UNITS_HEADER) + " |", "|" + "---|" * len(UNITS_HEADER)]
        return "\n".join(lines + ["| " + " | ".join(_unit_cells(row)) + " |" for row in result["rows"]]) + "\n"
    if result.get("experiment") == "audit":
        lines = ["| " + " | ".join(AUDIT_HEADER) + " |", "|" + "---|" * len(AUDIT_HEADER)]
        lines += ["| " + " | ".join(_audit_cells(row)) + " |" for row in result["rows"]]
        return "\n".join(lines) + "\n" + audit_targets_text(result["targets"])
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in result["rows"]:
        lines.append("| " + " | ".join(_row_cells(row)) + " |")
    text = "\n".join(lines) + "\n"
    if "dp_minus_pooled_points" in result.get("targets", {}):
        t = result["targets"]
        text += (
            f"\nTargets: federated DP (ε=8) minus pooled non-private = **{t['dp_minus_pooled_points']:+.2f} points** "
            f"(target ≥ -2: {'met' if t['within_2_points_of_pooled'] else 'NOT met'}); minus mean local-only site = "
            f"**{t['dp_minus_mean_local_points']:+.2f} points** "
            f"({'above' if t['above_mean_local_only'] else 'NOT above'} the mean local-only site).\n"
        )
    return text


def plot_audit(result: dict[str, Any], path: Path) -> None:
    """Left: canary ε lower bound against the claimed ε and the ceiling. Right: MIA AUC (update score) with its CI."""
    rows = result["rows"]
    labels = list(dict.fromkeys(r["label"] for r in rows))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=110)
    for i, label in enumerate(labels):
        mine = [r for r in rows if r["label"] == label]
        claimed = mine[0]["claimed_epsilon"]
        colour = "#2a7" if claimed is None else ("#c0392b" if mine[0].get("fault") else "#7b2d8b")
        xs = [i + 0.08 * (j - (len(mine) - 1) / 2) for j in range(len(mine))]
        left.scatter(xs, [r["canary"]["epsilon_lower_bound"] for r in mine], color=colour, zorder=3,
                     label="lower bound (one per seed)" if i == 0 else None)
        left.hlines(max(row_ceiling(r) for r in mine), i - 0.3, i + 0.3, color="grey", linestyle=":",
                    label="ceiling (every guess right)" if i == 0 else None)
        if claimed is not None:
            left.hlines(claimed, i - 0.3, i + 0.3, color="black", linestyle="--",
                        label="claimed ε" if claimed == max(r["claimed_epsilon"] or 0 for r in rows) else None)
        for x, r in zip(xs, mine):
            mia = r["mia"]["update"]
            right.errorbar([x], [mia["auc"]], yerr=[[mia["auc"] - mia["auc_ci95"][0]], [mia["auc_ci95"][1] - mia["auc"]]],
                           marker="o", color=colour, capsize=3)
    ticks = [label.replace("DP epsilon=", "DP ε=").replace(", ", "\n").replace(" (", "\n(") for label in labels]
    for ax in (left, right):
        ax.set_xticks(range(len(labels)), ticks, fontsize=7)
        ax.grid(alpha=0.3)
    left.set_ylabel("ε (one-run canary audit, 95%)")
    left.set_title("canary lower bound vs claimed ε (red: broken on purpose)", fontsize=9)
    left.legend(fontsize=7, loc="upper right")
    right.axhline(0.5, color="grey", linestyle=":")
    right.set_ylabel("membership-inference ROC AUC")
    right.set_title("MIA on real records (coordinator's update score)", fontsize=9)
    fig.suptitle(f"audit{' (quick)' if result['quick'] else ''}: LC25000 lung, one audited site", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot(result: dict[str, Any], path: Path) -> None:
    if result["experiment"] == "audit":
        plot_audit(result, path)
        return
    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=110)
    curves = result["experiment"] in ("privacy-utility", "patient-privacy")
    if curves:
        series = {unit: [r for r in rows if r.get("epsilon") and r.get("privacy_unit_asked") == unit
                         and not r.get("lever")]  # lever rows are in the table
                  for unit in {r.get("privacy_unit_asked") for r in rows if r.get("epsilon")}}
        for (unit, finite), colour in zip(sorted(series.items(), key=lambda kv: str(kv[0])), ("#7b2d8b", "#d95f02")):
            xs = [r["epsilon"] for r in finite]
            ax.errorbar(xs, [100 * r["accuracy"] for r in finite],
                        yerr=[[100 * (r["accuracy"] - r["accuracy_ci95"][0]) for r in finite],
                              [100 * (r["accuracy_ci95"][1] - r["accuracy"]) for r in finite]],
                        marker="o", capsize=4, color=colour,
                        label=f"FedAvg DP, {unit}-level (per-site ε)" if unit else "FedAvg DP (per-site ε)")
        for r in rows:
            if r.get("kind") == "federated" and not r.get("epsilon"):
                ax.axhline(100 * r["accuracy"], color="#2a7", linestyle="--", label="FedAvg non-private (ε=∞)")
            elif r.get("kind") == "centralised":
                ax.axhline(100 * r["accuracy"], color="#888", linestyle=":", label=r["label"])
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
    ax.set_ylabel("central test accuracy (%)" if curves else "")
    ax.set_title(f"{result['experiment']}{' (quick)' if result['quick'] else ''}: LC25000 lung, group-aware split")
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(loc="lower right", fontsize=7)
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
