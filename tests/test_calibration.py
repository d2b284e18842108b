"""Calibration, temperature scaling and selective prediction (pure numpy): every
expected value below is worked out by hand from the made-up scores."""

import math

import numpy as np
import pytest

from tf_stfusion import calibration

# Four videos, two classes. Confidences 0.9, 0.9, 0.7, 0.7; right, wrong, right, right.
PROBS = np.array([[0.9, 0.1], [0.9, 0.1], [0.7, 0.3], [0.3, 0.7]])
LABELS = np.array([0, 1, 0, 1])


def test_ece_and_reliability_by_hand():
    # 0.9 -> bin (13/15, 14/15] = index 13: accuracy 1/2, confidence 0.9, gap 0.4, weight 2/4 -> 0.20
    # 0.7 -> bin (10/15, 11/15] = index 10: accuracy 1, confidence 0.7, gap 0.3, weight 2/4 -> 0.15
    assert calibration.expected_calibration_error(PROBS, LABELS) == pytest.approx(0.35)
    diagram = calibration.reliability(PROBS, LABELS)
    assert [i for i, c in enumerate(diagram["count"]) if c] == [10, 13]
    assert diagram["count"][10] == diagram["count"][13] == 2
    assert diagram["accuracy"][10] == pytest.approx(1.0) and diagram["accuracy"][13] == pytest.approx(0.5)
    assert diagram["confidence"][10] == pytest.approx(0.7) and diagram["confidence"][13] == pytest.approx(0.9)
    assert diagram["accuracy"][0] is None and len(diagram["edges"]) == 16
    # A bin whose accuracy equals its confidence adds nothing: two videos at 0.5, one right.
    assert calibration.expected_calibration_error([[0.5, 0.5], [0.5, 0.5]], [0, 1]) == pytest.approx(0.0)
    assert calibration.bin_index([0.0, 0.5, 1.0]).tolist() == [0, 7, 14]


def test_nll_and_metrics_with_intervals():
    expected = -(math.log(0.9) + math.log(0.1) + 2 * math.log(0.7)) / 4
    assert calibration.nll(PROBS, LABELS) == pytest.approx(expected)
    metrics = calibration.calibration_metrics(PROBS, LABELS, resamples=200)
    assert metrics["top1"] == pytest.approx(0.75) and metrics["nll"] == pytest.approx(expected)
    assert metrics["ece_ci"][0] <= metrics["ece"] <= metrics["ece_ci"][1]
    assert metrics["nll_ci"][0] <= expected <= metrics["nll_ci"][1] and metrics["nll_ci"][0] < metrics["nll_ci"][1]
    assert calibration.bootstrap_interval(lambda i: 3.0, 10, resamples=50) == (3.0, 3.0)
    with pytest.raises(ValueError, match="labels must lie"):
        calibration.nll(PROBS, [0, 1, 2, 0])


def test_temperature_scaling_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 3.0, (4000, 5))
    true_t = 2.0
    scaled = np.exp(logits / true_t)
    scaled /= scaled.sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(5, p=p) for p in scaled])  # the labels follow softmax(z / 2)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)  # an over-confident model: softmax(z)
    np.testing.assert_allclose(calibration.apply_temperature(probs, true_t), scaled, atol=1e-12)
    fitted = calibration.fit_temperature(probs, labels)
    assert fitted == pytest.approx(true_t, rel=0.08)
    before = calibration.expected_calibration_error(probs, labels)
    after = calibration.expected_calibration_error(calibration.apply_temperature(probs, fitted), labels)
    assert after < before / 2


def test_risk_coverage_by_hand():
    score = np.array([0.9, 0.8, 0.8, 0.6, 0.5])
    correct = np.array([1, 0, 1, 0, 1], bool)
    curve = calibration.risk_coverage(score, correct)
    assert curve["threshold"] == [0.9, 0.8, 0.6, 0.5]
    np.testing.assert_allclose(curve["coverage"], [0.2, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(curve["risk"], [0.0, 1 / 3, 0.5, 0.4])
    # k = 1..5: 0; the tie at 0.8 (one right, one wrong) counts 1/2 error at k = 2 -> 1/4; 1/3; 2/4; 2/5.
    assert calibration.risk_coverage_area(score, correct) == pytest.approx((0 + 0.25 + 1 / 3 + 0.5 + 0.4) / 5)
    # The lowest threshold whose kept videos reach the target (accuracies 1, 2/3, 1/2, 3/5).
    assert calibration.choose_threshold(score, correct, 0.6) == (0.5, True)
    assert calibration.choose_threshold(score, correct, 0.7) == (0.9, True)
    threshold, reachable = calibration.choose_threshold(score, np.zeros(5, bool), 0.5)
    assert not reachable and threshold > 0.9
    result = calibration.selective_result([0.95, 0.85, 0.4], [True, False, True], 0.8)
    assert (result["kept"], result["coverage"], result["accuracy"]) == (2, pytest.approx(2 / 3), 0.5)
    assert result["coverage_ci"][0] < 2 / 3 < result["coverage_ci"][1]
    assert calibration.selective_result([0.1], [True], 0.5)["accuracy"] is None


def test_entropy_and_disagreement():
    assert calibration.entropy([[0.5, 0.5], [1.0, 0.0]]).tolist() == pytest.approx([math.log(2), 0.0])
    agree = np.array([[[0.8, 0.2]], [[0.8, 0.2]]])
    disagree = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])
    assert calibration.mutual_information(agree) == pytest.approx([0.0], abs=1e-12)
    assert calibration.mutual_information(disagree) == pytest.approx([math.log(2)])
