"""Scores you can threshold: calibration, temperature scaling and selective
prediction of per-video class probabilities (pure numpy; no TensorFlow).

Inputs are ``probs [n, C]`` (each row a video's scores, summing to 1) and
``labels [n]`` (int class ids). The definitions are the field's standard ones:

* ``expected_calibration_error`` (ECE; Guo et al., "On Calibration of Modern
  Neural Networks", ICML 2017, Eq. 3): the confidence of a video is its largest
  probability; videos fall into ``M = 15`` equal-width bins
  ``B_m = ((m-1)/M, m/M]`` by confidence, and
  ``ECE = sum_m |B_m| / n * |acc(B_m) - conf(B_m)|``. Its 95% interval is the
  percentile bootstrap over videos (``bootstrap_interval``).
* ``reliability``: the per-bin accuracy, mean confidence and count behind the
  ECE (the reliability diagram).
* ``nll``: mean ``-log p(label)`` over videos (natural log).
* ``apply_temperature`` / ``fit_temperature``: temperature scaling (Guo et al.
  2017, section 4.2): ``softmax(log p / T)``; for one view's softmax ``p`` this
  is ``softmax(z / T)`` of its logits ``z`` (softmax is shift-invariant), and
  for view- or ensemble-averaged scores it scales their log-probabilities. One
  scalar ``T`` is fitted by minimising the NLL (golden-section search over
  ``log T``: the NLL is convex in ``1/T``, hence unimodal in ``log T``).
* ``risk_coverage`` / ``risk_coverage_area``: selective prediction (Geifman &
  El-Yaniv, "Selective Classification for Deep Neural Networks", NeurIPS 2017).
  Videos are ranked by a confidence score (the largest probability, or minus
  the predictive ``entropy``); keeping the ``k`` most confident gives coverage
  ``k / n`` and selective risk = the error rate of those kept. Videos with tied
  scores cannot be separated by a threshold: inside a tie the errors are counted
  pro rata (the expectation over the tie's orders). The area (AURC) is the mean
  selective risk over ``k = 1..n`` (lower is better).
* ``choose_threshold``: the abstention threshold on a hold-out split: the
  lowest confidence threshold ``t`` (the largest coverage) at which the videos
  with ``score >= t`` reach ``target`` accuracy; ``selective_result`` reports a
  threshold on another split (coverage and accuracy with Wilson intervals).
"""

import math

import numpy as np

from tf_stfusion.selection import CONFIDENCE, proportion

NUM_BINS = 15
RESAMPLES = 2_000
ECE_METHOD = f"{NUM_BINS} equal-width confidence bins (Guo et al. 2017)"
BOOTSTRAP_METHOD = f"bootstrap over videos (percentile, {RESAMPLES:,} resamples), 95%"
EPS = 1e-12  # probabilities are clipped here before a log


def _check(probs, labels):
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels, np.int64)
    if probs.ndim != 2 or labels.shape != probs.shape[:1] or probs.shape[0] == 0:
        raise ValueError(f"need probabilities [n, C] and labels [n] with n >= 1, got {probs.shape} and {labels.shape}")
    if labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise ValueError(f"labels must lie in [0, {probs.shape[1]}), got {labels.min()}..{labels.max()}")
    return probs, labels


def confidence_and_correct(probs, labels):
    """Per video the largest probability ``[n]`` and whether its class is the label ``[n]`` bool."""
    probs, labels = _check(probs, labels)
    return probs.max(axis=1), probs.argmax(axis=1) == labels


def bin_index(confidence, num_bins=NUM_BINS):
    """The bin ``0..num_bins-1`` of each confidence: bin ``m`` holds ``(m/M, (m+1)/M]``
    (a confidence of exactly 0 joins bin 0)."""
    return np.clip(np.ceil(np.asarray(confidence, np.float64) * num_bins).astype(np.int64) - 1, 0, num_bins - 1)


def _ece(confidence, correct, num_bins):
    bins = bin_index(confidence, num_bins)
    gap = np.bincount(bins, weights=correct.astype(np.float64) - confidence, minlength=num_bins)
    return float(np.sum(np.abs(gap)) / confidence.size)  # |B_m|/n * |acc - conf| = |sum(correct - conf)| / n


def expected_calibration_error(probs, labels, num_bins=NUM_BINS):
    """ECE of ``probs [n, C]`` against ``labels [n]``, a fraction in [0, 1]."""
    confidence, correct = confidence_and_correct(probs, labels)
    return _ece(confidence, correct, num_bins)


def reliability(probs, labels, num_bins=NUM_BINS):
    """The reliability diagram's data: per bin its edges, video count, accuracy and
    mean confidence (``None`` for an empty bin), and the ECE."""
    confidence, correct = confidence_and_correct(probs, labels)
    bins = bin_index(confidence, num_bins)
    count = np.bincount(bins, minlength=num_bins)
    hits = np.bincount(bins, weights=correct.astype(np.float64), minlength=num_bins)
    conf = np.bincount(bins, weights=confidence, minlength=num_bins)
    return {"edges": [m / num_bins for m in range(num_bins + 1)], "count": count.tolist(),
            "accuracy": [float(h / c) if c else None for h, c in zip(hits, count)],
            "confidence": [float(s / c) if c else None for s, c in zip(conf, count)],
            "ece": _ece(confidence, correct, num_bins)}


def bootstrap_interval(statistic, n, resamples=RESAMPLES, confidence=CONFIDENCE, seed=0):
    """Percentile bootstrap interval ``(low, high)`` of ``statistic(index)`` over
    ``n`` videos (``index``: a resample of ``0..n-1`` with replacement)."""
    rng = np.random.default_rng(seed)
    draws = [statistic(rng.integers(0, n, n)) for _ in range(resamples)]
    alpha = 1.0 - confidence
    low, high = np.quantile(draws, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def nll(probs, labels):
    """Mean negative log-likelihood ``-log p(label)`` (nats per video)."""
    probs, labels = _check(probs, labels)
    return float(np.mean(-np.log(np.maximum(probs[np.arange(labels.size), labels], EPS))))


def calibration_metrics(probs, labels, resamples=RESAMPLES, seed=0):
    """Top-1 (Wilson interval), NLL and ECE (bootstrap intervals) of one set of scores."""
    probs, labels = _check(probs, labels)
    confidence, correct = confidence_and_correct(probs, labels)
    video_nll = -np.log(np.maximum(probs[np.arange(labels.size), labels], EPS))
    top1 = proportion(correct)
    n = labels.size
    return {"top1": top1["value"], "top1_ci": top1["ci"], "nll": float(video_nll.mean()),
            "nll_ci": list(bootstrap_interval(lambda i: video_nll[i].mean(), n, resamples, seed=seed)),
            "ece": _ece(confidence, correct, NUM_BINS),
            "ece_ci": list(bootstrap_interval(lambda i: _ece(confidence[i], correct[i], NUM_BINS), n, resamples,
                                              seed=seed)),
            "num_videos": int(n)}


# -- temperature scaling ---------------------------------------------------------------
def apply_temperature(probs, temperature):
    """``softmax(log probs / T)``: ``[n, C]`` -> ``[n, C]``."""
    if not temperature > 0:
        raise ValueError(f"the temperature must be > 0, got {temperature}")
    z = np.log(np.maximum(np.asarray(probs, np.float64), EPS)) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(probs, labels, low=0.05, high=20.0, tol=1e-6):
    """The temperature in ``[low, high]`` that minimises the NLL of
    ``apply_temperature(probs, T)`` on ``labels`` (golden-section search in ``log T``)."""
    probs, labels = _check(probs, labels)
    cost = lambda log_t: nll(apply_temperature(probs, math.exp(log_t)), labels)  # noqa: E731
    a, b = math.log(low), math.log(high)
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = cost(c), cost(d)
    while b - a > tol:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = cost(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = cost(d)
    return math.exp((a + b) / 2.0)


# -- selective prediction ----------------------------------------------------------------
def entropy(probs):
    """Predictive entropy ``-sum p log p`` per row (nats): ``[n, C]`` -> ``[n]``."""
    p = np.asarray(probs, np.float64)
    return -np.sum(p * np.log(np.maximum(p, EPS)), axis=1)


def mutual_information(member_probs):
    """The members' disagreement: entropy of the mean minus the mean entropy
    (BALD; ``[M, n, C]`` -> ``[n]``, nats)."""
    member_probs = np.asarray(member_probs, np.float64)
    return entropy(member_probs.mean(axis=0)) - np.mean([entropy(p) for p in member_probs], axis=0)


def _ranked_errors(score, correct):
    """Expected errors among the ``k`` highest scores, ``k = 0..n`` (ties pro rata)."""
    score, wrong = np.asarray(score, np.float64), ~np.asarray(correct, bool)
    order = np.argsort(-score, kind="stable")
    score, wrong = score[order], wrong[order].astype(np.float64)
    values, start, count = np.unique(-score, return_index=True, return_counts=True)
    rate = np.add.reduceat(wrong, start) / count  # error rate of each tie group, by descending score
    return np.concatenate([[0.0], np.cumsum(np.repeat(rate, count))])


def risk_coverage(score, correct):
    """The risk-coverage curve at every threshold a score allows: ``{"coverage",
    "risk", "threshold"}`` lists, coverage increasing (a point per distinct
    score; ``score``: higher = more confident)."""
    score, correct = np.asarray(score, np.float64), np.asarray(correct, bool)
    if score.shape != correct.shape or score.ndim != 1 or score.size == 0:
        raise ValueError(f"need equal, non-empty 1-D scores and correctness, got {score.shape} and {correct.shape}")
    errors = _ranked_errors(score, correct)
    thresholds = np.unique(score)[::-1]
    kept = np.array([np.sum(score >= t) for t in thresholds])
    return {"coverage": (kept / score.size).tolist(), "risk": (errors[kept] / kept).tolist(),
            "threshold": thresholds.tolist()}


def risk_coverage_area(score, correct):
    """AURC: mean selective risk over ``k = 1..n`` kept videos (ties pro rata)."""
    score, correct = np.asarray(score, np.float64), np.asarray(correct, bool)
    errors = _ranked_errors(score, correct)
    k = np.arange(1, score.size + 1)
    return float(np.mean(errors[1:] / k))


def choose_threshold(score, correct, target):
    """The lowest threshold ``t`` at which the videos with ``score >= t`` are right
    at least a ``target`` share of the time. Returns ``(t, reachable)``; when no
    threshold reaches the target, ``t`` lies above every score (abstain on all)."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"the target accuracy must lie in (0, 1], got {target}")
    curve = risk_coverage(score, correct)
    ok = [t for t, risk in zip(curve["threshold"], curve["risk"]) if 1.0 - risk >= target - 1e-12]
    if not ok:
        return float(np.nextafter(max(curve["threshold"]), np.inf)), False
    return float(min(ok)), True


def selective_result(score, correct, threshold):
    """Coverage (share of videos with ``score >= threshold``) and the accuracy of
    those kept, each with its 95% Wilson interval (accuracy ``None`` if none kept)."""
    score, correct = np.asarray(score, np.float64), np.asarray(correct, bool)
    kept = score >= threshold
    coverage = proportion(kept)
    out = {"threshold": float(threshold), "coverage": coverage["value"], "coverage_ci": coverage["ci"],
           "kept": int(kept.sum()), "num_videos": int(score.size), "accuracy": None, "accuracy_ci": None}
    if kept.any():
        accuracy = proportion(correct[kept])
        out["accuracy"], out["accuracy_ci"] = accuracy["value"], accuracy["ci"]
    return out
