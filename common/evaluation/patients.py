"""Patient-level results of the central evaluation: what a pathologist reads after the patch-level ones.

A diagnosis is made per patient (or slide), not per patch. Where the central test set names the
patient of each patch (`ImageSet.patient_groups`: a groups.csv, the synthetic generator's
slides), each patient's patch probabilities are aggregated two ways:

* the **mean** of its patches' class probabilities: the patient's score per class, from which the
  patient-level accuracy, balanced accuracy, macro-F1 and macro one-vs-rest AUC are computed by the
  same functions as the patch level (`common.evaluation.metrics.headline_metrics`), with percentile bootstrap
  CIs that resample **patients** (`common.evaluation.metrics.bootstrap_headline_cis` applied to one row per
  patient), so patches of one patient never count as independent evidence;
* the **share** of its patches predicted as each class (argmax), the "how many patches are
  positive" a pathologist reads off a slide; `majority_vote_accuracy` scores its argmax.

A patient's label is the label its patches carry. A patient whose patches carry more than one
label has no single label: it is counted (`mixed_label_patients`) and left out of the metrics,
rather than given a label by a rule the data does not state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from common.evaluation.metrics import accuracy, bootstrap_headline_cis, confusion_matrix, headline_metrics

AGGREGATION = "mean of the patient's patch probabilities"


@dataclass(frozen=True)
class PatientTable:
    """One row per patient, in the order of `patients` (sorted ids)."""

    patients: np.ndarray  # ids, as in the test set's groups
    labels: np.ndarray  # the patient's label, -1 where its patches carry more than one
    patches: np.ndarray  # patches per patient
    mean_probs: np.ndarray  # (patients, classes)
    shares: np.ndarray  # (patients, classes): share of its patches whose argmax is each class


def aggregate_patients(labels: np.ndarray, probs: np.ndarray, groups: np.ndarray) -> PatientTable:
    """Each patient's mean probabilities and per-class share of predicted patches."""
    labels, probs = np.asarray(labels, dtype=np.int64), np.asarray(probs, dtype=np.float64)
    patients, which = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    count, classes = len(patients), probs.shape[1]
    patches = np.bincount(which, minlength=count)
    sums = np.zeros((count, classes))
    np.add.at(sums, which, probs)
    votes = np.zeros((count, classes))
    np.add.at(votes, (which, probs.argmax(axis=1)), 1.0)
    low = np.full(count, np.iinfo(np.int64).max)
    high = np.full(count, -1)
    np.minimum.at(low, which, labels)
    np.maximum.at(high, which, labels)
    return PatientTable(patients, np.where(low == high, high, -1), patches, sums / patches[:, None],
                        votes / patches[:, None])


def patient_evaluation(labels: np.ndarray, probs: np.ndarray, groups: np.ndarray, classes: list[str],
                       bootstrap_samples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """report.json's `final.patient_level`: metrics over patients, their CIs, and one row per patient."""
    table = aggregate_patients(labels, probs, groups)
    keep = table.labels >= 0
    y, scores = table.labels[keep], table.mean_probs[keep]
    out: dict[str, Any] = {
        "patients": int(keep.sum()), "patches": int(table.patches[keep].sum()),
        "mixed_label_patients": int((~keep).sum()), "aggregation": AGGREGATION,
    }
    if not keep.any():
        return {**out, **{k: None for k in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc",
                                            "majority_vote_accuracy", "ci95", "confusion_matrix")},
                "ci95_method": None, "per_patient": _rows(table, classes)}
    out.update(headline_metrics(y, scores))
    out["majority_vote_accuracy"] = accuracy(y, table.shares[keep].argmax(axis=1))
    cis = bootstrap_headline_cis(y, scores, bootstrap_samples, seed)
    out["ci95"] = {name: list(ci) for name, ci in cis.items()}
    out["ci95_method"] = f"percentile bootstrap over patients, {bootstrap_samples} resamples"
    out["confusion_matrix"] = confusion_matrix(y, scores.argmax(axis=1), len(classes)).astype(int).tolist()
    out["per_patient"] = _rows(table, classes)
    return out


def _rows(table: PatientTable, classes: list[str]) -> list[dict[str, Any]]:
    return [{
        "patient": str(pid), "label": classes[label] if label >= 0 else None, "patches": int(k),
        "predicted": classes[int(np.argmax(mean))], "mean_probability": [float(v) for v in mean],
        "share_of_patches": [float(v) for v in share],
    } for pid, label, k, mean, share in zip(table.patients, table.labels, table.patches, table.mean_probs,
                                            table.shares)]
