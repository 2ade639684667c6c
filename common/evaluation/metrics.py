"""Classification metrics for the central evaluation, in plain NumPy.

Kept free of scikit-learn (not in the design card's package list); each function is
small enough to check against hand-computed cases in tests/evaluation/test_metrics.py.
"""

from __future__ import annotations

import warnings
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
    values = []
    for idx in bootstrap_indices(n, samples, seed):
        value = metric(np.asarray(y_true)[idx], probs[idx])
        if not np.isnan(value):
            values.append(value)
    return _percentiles(np.asarray(values), level)


def bootstrap_indices(n: int, samples: int, seed: int) -> np.ndarray:
    """(samples, n) resampling indices; shared by the generic and the vectorised bootstrap."""
    return np.random.default_rng(seed).integers(0, n, (samples, n))


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0
    return float(np.quantile(values, tail)), float(np.quantile(values, 1.0 - tail))


def bootstrap_headline_cis(
    y_true: np.ndarray, probs: np.ndarray, samples: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, tuple[float, float]]:
    """Bootstrap intervals of every headline metric at once, vectorised over resamples.

    A resample is a vector of counts (how often each example was drawn), so each metric
    becomes a weighted metric: confusion matrices are one matrix product, and AUCs come
    from per-score-block weight sums. Same indices and same values as `bootstrap_ci` with
    the per-metric functions (tests/evaluation/test_metrics.py checks), ~100x faster.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    n, classes = probs.shape
    if n == 0 or samples <= 0:
        return {name: (float("nan"), float("nan")) for name in HEADLINE}
    idx = bootstrap_indices(n, samples, seed)
    weights = np.zeros((samples, n))
    np.add.at(weights, (np.repeat(np.arange(samples), n), idx.ravel()), 1.0)
    pred = probs.argmax(axis=1)
    cells = np.zeros((n, classes * classes))
    cells[np.arange(n), y_true * classes + pred] = 1.0
    cm = (weights @ cells).reshape(samples, classes, classes)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    support, predicted = cm.sum(axis=2), cm.sum(axis=1)
    present = support > 0
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows (a resample lacking classes) stay NaN
        recall = np.where(present, tp / np.where(present, support, 1), np.nan)
        precision = np.where(predicted > 0, tp / np.where(predicted > 0, predicted, 1), 0.0)
        f1 = np.where(precision + np.nan_to_num(recall) > 0,
                      2 * precision * np.nan_to_num(recall) / (precision + np.nan_to_num(recall) + 1e-300), 0.0)
        values = {
            "accuracy": tp.sum(axis=1) / n,
            "balanced_accuracy": np.nanmean(recall, axis=1),
            "macro_f1": np.nanmean(np.where(present, f1, np.nan), axis=1),
            "macro_auc": np.nanmean(np.stack([_weighted_auc(weights, y_true == c, probs[:, c])
                                              for c in range(classes)], axis=1), axis=1),
        }
    return {name: _percentiles(v, level) for name, v in values.items()}


def _weighted_auc(weights: np.ndarray, is_positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUC for each row of example weights (ties count one half); NaN without both classes."""
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    starts = np.concatenate([[0], np.flatnonzero(np.diff(sorted_scores)) + 1])
    w = weights[:, order]
    pos = np.add.reduceat(w * is_positive[order], starts, axis=1)
    neg = np.add.reduceat(w * ~is_positive[order], starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negatives with strictly lower scores
    total_pos, total_neg = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((total_pos > 0) & (total_neg > 0),
                        (pos * (below + 0.5 * neg)).sum(axis=1) / (total_pos * total_neg), np.nan)


def full_evaluation(
    y_true: np.ndarray, probs: np.ndarray, classes: list[str], bootstrap_samples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Everything the report's `final` section holds."""
    y_true = np.asarray(y_true)
    cm = confusion_matrix(y_true, probs.argmax(axis=1), len(classes))
    out: dict[str, Any] = headline_metrics(y_true, probs)
    out["ci95"] = {name: list(ci) for name, ci in bootstrap_headline_cis(y_true, probs, bootstrap_samples, seed).items()}
    out["per_class"] = {"classes": list(classes), **per_class(cm)}
    out["confusion_matrix"] = cm.astype(int).tolist()
    reliability = reliability_bins(y_true, probs)
    out["ece"] = reliability["ece"]
    out["reliability"] = reliability
    out["num_examples"] = int(len(y_true))
    return out
