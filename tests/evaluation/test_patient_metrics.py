"""Patient-level results of the central evaluation, against a hand computation.

Three patients with one label each and one whose patches carry two labels:

    patient  label  P(class 1) of its patches   mean   predicted  share of patches predicted 1
    A        1      0.9, 0.6, 0.3               0.60   1 (right)  2/3
    B        0      0.2, 0.7                    0.45   0 (right)  1/2 (a tie: the vote takes class 0)
    C        1      0.4                         0.40   0 (wrong)  0
    D        0, 1   0.5, 0.5                    -      left out (no single label)

Accuracy 2/3; balanced accuracy (1/2 + 1/1) / 2 = 3/4; AUC of class 1 by the mean: positives A (0.60)
and C (0.40) against B (0.45): one of two pairs ordered, 1/2 (class 0 is its mirror image, 1/2), so
macro AUC 1/2; majority-vote accuracy 2/3 (A and B right).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from common.data.imageset import ImageSet
from common.evaluation.metrics import bootstrap_indices
from common.evaluation.patients import aggregate_patients, patient_evaluation
from server.evaluation import CentralEvaluator

CLASSES = ["benign", "tumour"]
P1 = np.array([0.9, 0.6, 0.3, 0.2, 0.7, 0.4, 0.5, 0.5])
PROBS = np.stack([1 - P1, P1], axis=1)
LABELS = np.array([1, 1, 1, 0, 0, 1, 0, 1])
GROUPS = np.array(["A", "A", "A", "B", "B", "C", "D", "D"])


def test_each_patients_mean_and_share_of_patches() -> None:
    table = aggregate_patients(LABELS, PROBS, GROUPS)
    assert table.patients.tolist() == ["A", "B", "C", "D"]
    assert table.labels.tolist() == [1, 0, 1, -1] and table.patches.tolist() == [3, 2, 1, 2]
    assert table.mean_probs[:, 1] == pytest.approx([0.6, 0.45, 0.4, 0.5])
    assert table.shares[:, 1] == pytest.approx([2 / 3, 1 / 2, 0.0, 0.0])  # 0.5 vs 0.5: argmax takes class 0
    assert table.shares.sum(axis=1) == pytest.approx(1.0)


def test_patient_level_metrics_by_hand() -> None:
    out = patient_evaluation(LABELS, PROBS, GROUPS, CLASSES, bootstrap_samples=200, seed=4)
    assert (out["patients"], out["patches"], out["mixed_label_patients"]) == (3, 6, 1)
    assert out["accuracy"] == pytest.approx(2 / 3) and out["balanced_accuracy"] == pytest.approx(3 / 4)
    assert out["macro_auc"] == pytest.approx(1 / 2) and out["majority_vote_accuracy"] == pytest.approx(2 / 3)
    assert out["confusion_matrix"] == [[1, 0], [1, 1]]
    rows = {row["patient"]: row for row in out["per_patient"]}
    assert rows["C"] == {"patient": "C", "label": "tumour", "patches": 1, "predicted": "benign",
                         "mean_probability": pytest.approx([0.6, 0.4]), "share_of_patches": [1.0, 0.0]}
    assert rows["D"]["label"] is None
    assert out["ci95_method"] == "percentile bootstrap over patients, 200 resamples"


def test_the_confidence_interval_resamples_patients() -> None:
    """Recomputed here by resampling the three patients (not the patches) with the same indices."""
    out = patient_evaluation(LABELS, PROBS, GROUPS, CLASSES, bootstrap_samples=300, seed=9)
    right = np.array([1.0, 1.0, 0.0])  # A, B, C: whether each patient is classified right
    values = [right[idx].mean() for idx in bootstrap_indices(3, 300, 9)]
    assert out["ci95"]["accuracy"] == pytest.approx([np.quantile(values, 0.025), np.quantile(values, 0.975)])


def test_no_patient_with_a_single_label_gives_no_numbers() -> None:
    out = patient_evaluation(np.array([0, 1]), PROBS[:2], np.array(["D", "D"]), CLASSES, 50, 0)
    assert out["patients"] == 0 and out["mixed_label_patients"] == 1
    assert out["accuracy"] is None and out["ci95"] is None


def _evaluator(patient_groups: bool) -> CentralEvaluator:
    torch.manual_seed(0)  # the weights only need to differ between patches; any draw does
    model = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 3, 2))
    images = np.random.default_rng(0).integers(0, 256, (8, 4, 4, 3), dtype=np.uint8)
    test = ImageSet(images, LABELS, GROUPS, CLASSES, patient_groups=patient_groups)
    return CentralEvaluator(model, test, batch_size=4)


def test_the_central_evaluation_adds_patients_only_where_the_test_set_names_them() -> None:
    evaluator = _evaluator(patient_groups=True)
    state = {name: p.detach().numpy().copy() for name, p in evaluator.model.named_parameters()}
    final = evaluator.final_metrics(state, bootstrap_samples=20, seed=0)
    probs, _ = evaluator._probs(state)
    rows = {row["patient"]: row for row in final["patient_level"]["per_patient"]}
    assert rows["A"]["mean_probability"] == pytest.approx(probs[:3].mean(axis=0).tolist())
    assert final["num_examples"] == 8 and final["patient_level"]["patches"] == 6  # patch level untouched
    assert _evaluator(patient_groups=False).final_metrics(state, 20, 0)["patient_level"] is None
