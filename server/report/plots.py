"""The report's figures, drawn with matplotlib (Agg) and embedded as base64 PNG data URIs.

PNG rather than SVG: a data URI keeps report.html one self-contained file with no namespace
or DTD URLs in it, and renders identically in every browser and in print. Each function
takes plain report.json data and returns a data URI, or None when there is nothing to draw
(e.g. an incomplete run has no confusion matrix), so the page can say so instead.
"""

from __future__ import annotations

import base64
import functools
import io
from collections.abc import Callable
from typing import Any, ParamSpec

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from server.report.format import pct  # noqa: E402

P = ParamSpec("P")

# H&E-inspired palette: haematoxylin purple, eosin pink, and two calm contrasts.
PURPLE, PINK, TEAL, AMBER, GREY, INK = "#5b2a86", "#c2407a", "#2a8c82", "#d08c1f", "#8a8f98", "#1f2430"
SERIES = {"accuracy": PURPLE, "balanced_accuracy": PINK, "macro_f1": TEAL, "macro_auc": AMBER}
LABELS = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "macro_f1": "macro-F1",
          "macro_auc": "macro AUC (one-vs-rest)"}
SITE_COLOURS = ["#5b2a86", "#c2407a", "#2a8c82", "#d08c1f", "#3b6fb6", "#7a9a2e", "#a0522d", "#6d6875", "#e76f51",
                "#264653"]
DPI = 144

# Applied per figure (rc_context), never globally: other code in the same process plots too.
STYLE = {
    "font.size": 9.5, "axes.titlesize": 10.5, "axes.titleweight": "bold", "axes.labelcolor": INK,
    "axes.edgecolor": "#c9ccd3", "axes.spines.top": False, "axes.spines.right": False, "xtick.color": "#4a4f5c",
    "ytick.color": "#4a4f5c", "axes.grid": True, "grid.color": "#e6e8ec", "grid.linewidth": 0.8,
    "legend.frameon": False, "figure.facecolor": "white", "axes.facecolor": "white",
}


def _styled(draw: Callable[P, str | None]) -> Callable[P, str | None]:
    """Draw (and save) a figure under the report's style only."""

    @functools.wraps(draw)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> str | None:
        with plt.rc_context(STYLE):
            return draw(*args, **kwargs)

    return wrapper


def to_data_uri(fig: Figure) -> str:
    """The figure as an inline PNG; the figure is closed (Agg figures otherwise accumulate)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _series(rounds: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([np.nan if r.get(key) is None else float(r[key]) for r in rounds], dtype=float)


def _round_ticks(ax: Any, xs: list[int]) -> None:
    step = max(1, int(np.ceil(len(xs) / 12)))
    ticks = xs[::step]
    ax.set_xticks(ticks, [f"{x}\n(initial)" if x == 0 else str(x) for x in ticks])


@_styled
def learning_curves(rounds: list[dict[str, Any]], chance: float | None) -> str | None:
    """Central test metrics and loss per round; round 0 is the model before any federated training."""
    if not rounds:
        return None
    xs = [int(r["round"]) for r in rounds]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 4.0), gridspec_kw={"width_ratios": [1.7, 1]})
    for key, colour in SERIES.items():
        ys = _series(rounds, key)
        if np.isfinite(ys).any():
            left.plot(xs, 100 * ys, marker="o", markersize=4, linewidth=2 if key == "accuracy" else 1.4,
                      color=colour, label=LABELS[key])
    if chance is not None:
        left.axhline(100 * chance, color=GREY, linestyle="--", linewidth=1, label=f"majority class ({pct(chance, 0)})")
    left.set_ylim(0, 101)
    left.set_ylabel("central test set, %")
    left.set_xlabel("round")
    left.set_title("What the global model gets right")
    left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.24), fontsize=8.5, ncol=3)
    _round_ticks(left, xs)
    loss = _series(rounds, "loss")
    right.plot(xs, loss, marker="o", markersize=4, color=INK, linewidth=1.6)
    right.set_title("Test loss (cross-entropy, lower is better)")
    right.set_xlabel("round")
    _round_ticks(right, xs)
    fig.tight_layout()
    return to_data_uri(fig)


@_styled
def confusion_matrix(matrix: list[list[int]], classes: list[str]) -> str | None:
    """Counts, coloured by the share of each true class (row) they represent."""
    cm = np.asarray(matrix, dtype=float)
    if cm.size == 0:
        return None
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = len(classes)
    size = 1.0 + 0.95 * n
    fig, ax = plt.subplots(figsize=(size + 1.6, size))
    image = ax.imshow(share, cmap="Purples", vmin=0, vmax=1)
    ax.grid(False)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{int(cm[i, j])}\n{pct(share[i, j], 0)}", ha="center", va="center", fontsize=9,
                    color="white" if share[i, j] > 0.55 else INK, fontweight="bold" if i == j else "normal")
    ax.set_xticks(range(n), classes, rotation=30 if n > 3 else 0, ha="right" if n > 3 else "center")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (pathologist's label)")
    ax.set_title("Confusion matrix (final model, test set)")
    for spine in ax.spines.values():
        spine.set_visible(False)
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, format=lambda v, _: pct(v, 0))
    bar.set_label("share of the true class", fontsize=8.5)
    fig.tight_layout()
    return to_data_uri(fig)


@_styled
def reliability(bins: dict[str, Any] | None) -> str | None:
    """Accuracy against confidence per bin (bars), the diagonal of perfect calibration, and bin sizes."""
    if not bins or not bins.get("edges"):
        return None
    edges = np.asarray(bins["edges"], dtype=float)
    count = np.asarray(bins["count"], dtype=float)
    accuracy = np.asarray(bins["accuracy"], dtype=float)
    confidence = np.asarray(bins["confidence"], dtype=float)
    width = np.diff(edges)
    used = count > 0
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.6, 5.0), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(edges[:-1][used], accuracy[used], width=width[used], align="edge", color=PURPLE, alpha=0.85,
            edgecolor="white", label="observed accuracy")
    top.bar(edges[:-1][used], confidence[used] - accuracy[used], bottom=accuracy[used], width=width[used],
            align="edge", color=PINK, alpha=0.28, edgecolor=PINK, linewidth=0.6, label="gap to confidence")
    top.plot([0, 1], [0, 1], color=GREY, linestyle="--", linewidth=1.2, label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy in bin")
    top.set_title(f"Reliability diagram (ECE = {pct(float(bins.get('ece', 0.0)))})")
    top.legend(loc="upper left", fontsize=8.5)
    bottom.bar(edges[:-1], count, width=width, align="edge", color=GREY, edgecolor="white")
    bottom.set_ylabel("images")
    bottom.set_xlabel("model confidence (top-class probability)")
    fig.tight_layout()
    return to_data_uri(fig)


@_styled
def privacy_spend(rounds: list[dict[str, Any]], sites: list[dict[str, Any]]) -> str | None:
    """Each site's cumulative epsilon after every round it answered, against its budget."""
    dp_sites = [s for s in sites if s.get("dp") and s.get("epsilon") is not None]
    if not dp_sites or not rounds:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    budgets = set()
    for i, site in enumerate(dp_sites):
        xs, ys = [], []
        for line in rounds:
            for reply in line.get("sites", []):
                metrics = reply.get("metrics") or {}
                if reply.get("site_id") == site["site_id"] and metrics.get("dp") and metrics.get("epsilon") is not None:
                    xs.append(int(line["round"]))
                    ys.append(float(metrics["epsilon"]))
        if xs:
            ax.plot(xs, ys, marker="o", markersize=4, linewidth=1.6, color=SITE_COLOURS[i % len(SITE_COLOURS)],
                    label=site["site_id"] if len(dp_sites) <= 10 else None)
        if site.get("epsilon_budget") is not None:
            budgets.add(float(site["epsilon_budget"]))
    for budget in sorted(budgets):
        ax.axhline(budget, color="#b3261e", linestyle="--", linewidth=1.1)
        ax.annotate(f"budget ε = {budget:g}", (0.01, budget), xycoords=("axes fraction", "data"),
                    textcoords="offset points", xytext=(0, 3), color="#b3261e", fontsize=8.5)
    ax.set_ylim(0, max([*budgets, *(s["epsilon"] for s in dp_sites)]) * 1.15)
    ax.set_xlabel("round")
    ax.set_ylabel("cumulative ε spent")
    ax.set_title("Privacy spent per site")
    _round_ticks(ax, [int(r["round"]) for r in rounds])
    if len(dp_sites) <= 10:
        ax.legend(loc="lower right", fontsize=8.5, ncol=2)
    fig.tight_layout()
    return to_data_uri(fig)


@_styled
def baselines(rows: list[dict[str, Any]]) -> str | None:
    """Accuracy (with 95% CI where known) of the federated model and each baseline, side by side.

    `rows`: [{"name", "accuracy", "accuracy_ci95", "highlight"}]; the federated result is highlighted.
    """
    rows = [r for r in rows if r.get("accuracy") is not None]
    if len(rows) < 2:
        return None
    fig, ax = plt.subplots(figsize=(7.6, 0.55 * len(rows) + 1.0))
    ys = np.arange(len(rows))[::-1]
    for y, row in zip(ys, rows):
        value = 100 * row["accuracy"]
        colour = PURPLE if row.get("highlight") else "#b9a6cf"
        ax.barh(y, value, color=colour, height=0.62)
        ci = row.get("accuracy_ci95")
        if ci:
            ax.errorbar(value, y, xerr=[[value - 100 * ci[0]], [100 * ci[1] - value]], color=INK, capsize=3,
                        linewidth=1.1)
        ax.text(min(value, 100) + 1.0 if not ci else 100 * ci[1] + 1.0, y, pct(row["accuracy"]), va="center", fontsize=9)
    ax.set_yticks(ys, [r["name"] for r in rows])
    ax.set_xlim(0, 108)
    ax.set_xlabel("test accuracy, % (bars: 95% CI where known)")
    ax.set_title("Federated result beside the baselines")
    ax.grid(axis="y", visible=False)
    ax.set_axisbelow(True)
    fig.tight_layout()
    return to_data_uri(fig)
