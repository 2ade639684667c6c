"""Classification metrics for the central evaluation, in plain NumPy.

Kept free of scikit-learn (not in the design card's package list); each function is
small enough to check against hand-computed cases in tests/test_metrics.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[i, j] = number of examples of true class i predicted as j."""
    idx = np.asarray(y_true, dtype=np.int64) * num_classes + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def per_class(cm: np.ndarray) -> dict[str, list[float]]:
    tp = np.diag(cm).astype(np.float64)
    precision = _safe_div(tp, cm.sum(axis=0).astype(np.float64))
    recall = _safe_div(tp, cm.sum(axis=1).astype(np.float64))
    f1 = _safe_div(2 * precision * recall, precision + recall)
    return {
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": cm.sum(axis=1).astype(int).tolist(),
    }


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred))) if len(y_true) else float("nan")


def balanced_accuracy(cm: np.ndarray) -> float:
    """Mean recall over the classes present in the test set."""
    support = cm.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(cm)[present] / support[present])) if present.any() else float("nan")


def macro_f1(cm: np.ndarray) -> float:
    """Mean F1 over the classes present in the test set."""
    present = cm.sum(axis=1) > 0
    return float(np.mean(np.asarray(per_class(cm)["f1"])[present])) if present.any() else float("nan")


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    boundaries = np.flatnonzero(np.diff(sorted_values)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(values)]])
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0  # average 1-based rank of the tie block
    return ranks


def binary_auc(is_positive: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC via the Mann-Whitney U statistic (ties count one half)."""
    is_positive = np.asarray(is_positive, dtype=bool)
    n_pos, n_neg = int(is_positive.sum()), int((~is_positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(np.asarray(scores, dtype=np.float64))
    return float((ranks[is_positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def macro_auc(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Unweighted mean of one-vs-rest AUCs over classes with positives and negatives."""
    aucs = [binary_auc(np.asarray(y_true) == c, probs[:, c]) for c in range(probs.shape[1])]
    aucs = [a for a in aucs if not np.isnan(a)]
    return float(np.mean(aucs)) if aucs else float("nan")


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """ECE of the top-class confidence over equal-width bins (Guo et al. 2017)."""
    return float(reliability_bins(y_true, probs, bins)["ece"])


def reliability_bins(y_true: np.ndarray, probs: np.ndarray, bins: int = 15) -> dict[str, Any]:
    """Per-bin confidence, accuracy and count: the data of a reliability diagram."""
    confidence = probs.max(axis=1) if len(probs) else np.zeros(0)
    correct = (probs.argmax(axis=1) == np.asarray(y_true)) if len(probs) else np.zeros(0, bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    conf_sum = np.bincount(which, weights=confidence, minlength=bins)
    acc_sum = np.bincount(which, weights=correct.astype(np.float64), minlength=bins)
    mean_conf = _safe_div(conf_sum, count.astype(np.float64))
    mean_acc = _safe_div(acc_sum, count.astype(np.float64))
    n = max(len(confidence), 1)
    ece = float(np.sum(count / n * np.abs(mean_acc - mean_conf)))
    return {
        "edges": edges.tolist(),
        "confidence": mean_conf.tolist(),
        "accuracy": mean_acc.tolist(),
        "count": count.astype(int).tolist(),
        "ece": ece,
    }


HEADLINE: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": lambda y, p: accuracy(y, p.argmax(axis=1)),
    "balanced_accuracy": lambda y, p: balanced_accuracy(confusion_matrix(y, p.argmax(axis=1), p.shape[1])),
    "macro_f1": lambda y, p: macro_f1(confusion_matrix(y, p.argmax(axis=1), p.shape[1])),
    "macro_auc": macro_auc,
}


def headline_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    return {name: fn(np.asarray(y_true), probs) for name, fn in HEADLINE.items()}


def bootstrap_ci(
    y_true: np.ndarray,
    probs: np.ndarray,
    metric: Callable[[np.ndarray, np.ndarray], float],
    samples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `metric`, resampling test examples with replacement.

    Examples are resampled individually: where test images cluster by patient, a
    group-level bootstrap would be wider; the report says which was used.
    """
    n = len(y_true)
    if n == 0 or samples <= 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(samples):
        idx = rng.integers(0, n, n)
        value = metric(np.asarray(y_true)[idx], probs[idx])
        if not np.isnan(value):
            values.append(value)
    if not values:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0
    return float(np.quantile(values, tail)), float(np.quantile(values, 1.0 - tail))


def full_evaluation(
    y_true: np.ndarray, probs: np.ndarray, classes: list[str], bootstrap_samples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Everything the report's `final` section holds."""
    y_true = np.asarray(y_true)
    cm = confusion_matrix(y_true, probs.argmax(axis=1), len(classes))
    out: dict[str, Any] = headline_metrics(y_true, probs)
    out["ci95"] = {
        name: list(bootstrap_ci(y_true, probs, fn, bootstrap_samples, seed)) for name, fn in HEADLINE.items()
    }
    out["per_class"] = {"classes": list(classes), **per_class(cm)}
    out["confusion_matrix"] = cm.astype(int).tolist()
    reliability = reliability_bins(y_true, probs)
    out["ece"] = reliability["ece"]
    out["reliability"] = reliability
    out["num_examples"] = int(len(y_true))
    return out
