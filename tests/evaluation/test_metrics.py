"""Metric code against small cases computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from common.evaluation.metrics import (
    accuracy,
    balanced_accuracy,
    binary_auc,
    bootstrap_ci,
    confusion_matrix,
    expected_calibration_error,
    full_evaluation,
    macro_auc,
    macro_f1,
    per_class,
)

Y = np.array([0, 0, 0, 1, 1, 2])
PRED = np.array([0, 0, 1, 1, 2, 2])


def test_confusion_matrix_counts_true_rows_predicted_columns() -> None:
    assert confusion_matrix(Y, PRED, 3).tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_accuracy_balanced_accuracy_and_macro_f1_by_hand() -> None:
    cm = confusion_matrix(Y, PRED, 3)
    assert accuracy(Y, PRED) == pytest.approx(4 / 6)
    # recalls 2/3, 1/2, 1/1
    assert balanced_accuracy(cm) == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # precisions 2/2, 1/2, 1/2 -> F1 = 0.8, 0.5, 2/3
    assert per_class(cm)["precision"] == pytest.approx([1.0, 0.5, 0.5])
    assert macro_f1(cm) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


def test_balanced_accuracy_ignores_classes_absent_from_the_test_set() -> None:
    cm = confusion_matrix(np.array([0, 0, 1]), np.array([0, 1, 1]), 3)
    assert balanced_accuracy(cm) == pytest.approx((0.5 + 1.0) / 2)


def test_binary_auc_by_hand_with_ties() -> None:
    # positives score 0.9, 0.4; negatives 0.4, 0.1 -> pairs: (0.9>0.4)=1, (0.9>0.1)=1, (0.4=0.4)=0.5, (0.4>0.1)=1
    assert binary_auc(np.array([1, 1, 0, 0]), np.array([0.9, 0.4, 0.4, 0.1])) == pytest.approx(3.5 / 4)
    assert binary_auc(np.array([1, 1]), np.array([0.2, 0.3])) != binary_auc(np.array([1, 1]), np.array([0.2, 0.3]))


def test_macro_auc_is_mean_of_one_vs_rest() -> None:
    y = np.array([0, 1, 2, 0])
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4], [0.1, 0.6, 0.3]])
    expected = np.mean([binary_auc(y == c, probs[:, c]) for c in range(3)])
    assert macro_auc(y, probs) == pytest.approx(expected)
    assert macro_auc(y, np.eye(3)[y]) == pytest.approx(1.0)


def test_ece_by_hand() -> None:
    # Two examples at confidence 0.9 (one right, one wrong) and one at 0.6 (right):
    # bin(0.9): |0.5 - 0.9| * 2/3; bin(0.6): |1 - 0.6| * 1/3.
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6]])
    y = np.array([0, 1, 1])
    assert expected_calibration_error(y, probs) == pytest.approx(0.4 * 2 / 3 + 0.4 / 3)
    assert expected_calibration_error(np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]])) == pytest.approx(0.0)


def test_bootstrap_interval_contains_the_estimate_and_shrinks_with_more_samples() -> None:
    rng = np.random.default_rng(0)

    def interval(n: int) -> tuple[float, float, float]:
        y = rng.integers(0, 2, n)
        correct = rng.random(n) < 0.8
        pred = np.where(correct, y, 1 - y)
        probs = np.eye(2)[pred]
        low, high = bootstrap_ci(y, probs, lambda a, p: accuracy(a, p.argmax(1)), samples=400, seed=1)
        return low, accuracy(y, pred), high

    small, large = interval(100), interval(2500)
    assert small[0] < small[1] < small[2] and large[0] < large[1] < large[2]
    assert (large[2] - large[0]) < 0.4 * (small[2] - small[0])  # width ~ 1/sqrt(n): ideally 0.2x


def test_full_evaluation_has_every_section() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    out = full_evaluation(np.array([0, 1, 2, 1]), probs, ["a", "b", "c"], bootstrap_samples=50)
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "ci95", "per_class",
                "confusion_matrix", "ece", "reliability"):
        assert key in out
    assert out["accuracy"] == pytest.approx(0.75)
    assert set(out["ci95"]) == {"accuracy", "balanced_accuracy", "macro_f1", "macro_auc"}
    assert out["per_class"]["classes"] == ["a", "b", "c"]


def test_vectorised_bootstrap_equals_the_per_resample_definition() -> None:
    from common.evaluation.metrics import HEADLINE, bootstrap_headline_cis

    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 120)
    probs = rng.dirichlet([1, 1, 1], 120)
    probs[:10] = probs[10:20]  # ties in scores
    y[:5] = 2
    fast = bootstrap_headline_cis(y, probs, samples=200, seed=9)
    for name, fn in HEADLINE.items():
        assert fast[name] == pytest.approx(bootstrap_ci(y, probs, fn, samples=200, seed=9), abs=1e-12), name


def test_vectorised_bootstrap_handles_a_class_missing_from_some_resamples() -> None:
    from common.evaluation.metrics import bootstrap_headline_cis

    y = np.array([0] * 40 + [1] * 40 + [2])  # class 2 is absent from many resamples
    probs = np.tile([0.6, 0.3, 0.1], (81, 1))
    probs[40:, :] = [0.2, 0.7, 0.1]
    cis = bootstrap_headline_cis(y, probs, samples=300, seed=1)
    assert all(np.isfinite(v).all() for v in cis.values())
    low, high = cis["balanced_accuracy"]
    assert 0 < low <= high <= 1
