"""Membership-inference metrics: ROC AUC, TPR at low FPR, and (group) bootstrap intervals.

Scores are "higher = more likely a member". NumPy only; the AUC is `common.evaluation.metrics`'s
Mann-Whitney AUC, and the bootstrap uses its weighted AUC, so both agree with the central
evaluation's definitions (ties count one half).

TPR at a false-positive rate t is the largest fraction of members flagged by any threshold
that flags at most a fraction t of non-members (ties flagged together). With fewer than 1/t
non-members this is the TPR at *zero* false positives; `tpr_at_fpr` reports how many
non-members the rate rests on so that a reader can tell.

Where records come in groups (patients, LC25000's near-duplicate families), resampling
single records understates the uncertainty; pass the groups and whole groups are resampled
(members' and non-members' groups separately).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from common.evaluation.metrics import _weighted_auc, binary_auc

DEFAULT_FPRS = (0.01, 0.001)


def _labelled(members: np.ndarray, nonmembers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    members = np.asarray(members, dtype=np.float64).ravel()
    nonmembers = np.asarray(nonmembers, dtype=np.float64).ravel()
    if not len(members) or not len(nonmembers):
        raise ValueError("need at least one member and one non-member score")
    if not (np.all(np.isfinite(members)) and np.all(np.isfinite(nonmembers))):
        raise ValueError("membership scores must be finite")
    scores = np.concatenate([members, nonmembers])
    is_member = np.concatenate([np.ones(len(members), bool), np.zeros(len(nonmembers), bool)])
    return scores, is_member


def auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
    scores, is_member = _labelled(members, nonmembers)
    return binary_auc(is_member, scores)


def _weighted_tpr_at_fpr(weights: np.ndarray, is_member: np.ndarray, scores: np.ndarray, fpr: float) -> np.ndarray:
    """TPR at FPR <= `fpr` for each row of example weights (thresholds between distinct scores)."""
    order = np.argsort(-scores, kind="mergesort")
    ordered = scores[order]
    starts = np.concatenate([[0], np.flatnonzero(np.diff(ordered)) + 1])  # blocks of tied scores
    w = weights[:, order]
    pos = np.cumsum(np.add.reduceat(w * is_member[order], starts, axis=1), axis=1)
    neg = np.cumsum(np.add.reduceat(w * ~is_member[order], starts, axis=1), axis=1)
    total_pos, total_neg = pos[:, -1:], neg[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = pos / total_pos
        allowed = neg <= fpr * total_neg + 1e-12
    best = np.where(allowed, tpr, 0.0).max(axis=1)  # flagging nothing: TPR 0 at FPR 0
    return np.where((total_pos[:, 0] > 0) & (total_neg[:, 0] > 0), best, np.nan)


def tpr_at_fpr(members: np.ndarray, nonmembers: np.ndarray, fpr: float) -> float:
    scores, is_member = _labelled(members, nonmembers)
    return float(_weighted_tpr_at_fpr(np.ones((1, len(scores))), is_member, scores, fpr)[0])


def _bootstrap_weights(groups: np.ndarray, samples: int, rng: np.random.Generator) -> np.ndarray:
    """(samples, n) counts: how often each record is drawn when its groups are resampled."""
    _, inverse = np.unique(groups, return_inverse=True)
    n_groups = int(inverse.max()) + 1
    draws = rng.integers(0, n_groups, (samples, n_groups))
    counts = np.zeros((samples, n_groups))
    np.add.at(counts, (np.repeat(np.arange(samples), n_groups), draws.ravel()), 1.0)
    return counts[:, inverse]


def mia_metrics(members: np.ndarray, nonmembers: np.ndarray, member_groups: Sequence[Any] | None = None,
                nonmember_groups: Sequence[Any] | None = None, fprs: Sequence[float] = DEFAULT_FPRS,
                samples: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """AUC and TPR at each FPR, each with a percentile-bootstrap interval.

    Without groups every record is its own group (the ordinary bootstrap). Members and
    non-members are resampled separately, so every resample keeps both classes.
    """
    scores, is_member = _labelled(members, nonmembers)
    n_mem, n_non = int(is_member.sum()), int((~is_member).sum())
    g_mem = np.arange(n_mem) if member_groups is None else np.asarray(member_groups)
    g_non = np.arange(n_non) if nonmember_groups is None else np.asarray(nonmember_groups)
    if len(g_mem) != n_mem or len(g_non) != n_non:
        raise ValueError("one group per score is needed")
    rng = np.random.default_rng(seed)
    weights = np.concatenate([_bootstrap_weights(g_mem, samples, rng), _bootstrap_weights(g_non, samples, rng)], axis=1)
    tail = (1.0 - level) / 2.0

    def interval(values: np.ndarray) -> list[float]:
        values = values[~np.isnan(values)]
        return [float(np.quantile(values, tail)), float(np.quantile(values, 1 - tail))] if len(values) else [
            float("nan"), float("nan")]

    out: dict[str, Any] = {
        "auc": binary_auc(is_member, scores),
        "auc_ci95": interval(_weighted_auc(weights, is_member, scores)),
        "members": n_mem, "nonmembers": n_non,
        "member_groups": int(len(np.unique(g_mem))), "nonmember_groups": int(len(np.unique(g_non))),
        "bootstrap": "groups" if member_groups is not None or nonmember_groups is not None else "records",
        "bootstrap_samples": samples,
        "tpr_at_fpr": {},
    }
    for fpr in fprs:
        point = float(_weighted_tpr_at_fpr(np.ones((1, len(scores))), is_member, scores, fpr)[0])
        out["tpr_at_fpr"][f"{fpr:g}"] = {
            "tpr": point, "ci95": interval(_weighted_tpr_at_fpr(weights, is_member, scores, fpr)),
            "false_positives_allowed": int(np.floor(fpr * n_non + 1e-12)),
        }
    return out
