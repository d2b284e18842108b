"""The Eq. 5 length-scale prior in numbers, and the search's pre-flight (pure
Python; no TensorFlow, so the CLI can check a setting before TensorFlow starts).

The weight term of Eq. 5 is ``c * (1 - p) * sum(w^2)`` per gate, with the
coefficient ``c`` in one of two forms (``PRIOR_FORMS``):

* ``"paper"``: ``c = k^2 / (2N)``, Eq. 5 of "Spatiotemporal Fusion in 3D CNNs:
  A Probabilistic View" (CVPR 2020) as printed.
* ``"authors_code"``: ``c = k / N``, the authors' released PyTorch code
  (github.com/scenarios/Probabilistic3DCNN, ``NAS_utils/ops.py``, class
  ``Conv3d_with_CD``: ``self._weight_reg = weight_reg / training_size`` and
  ``KLreg = _weight_reg * sum(weight**2) * (1 - p) + drop_reg / training_size *
  (p log p + (1 - p) log(1 - p))`` with ``drop_reg = 1``; ``args.py`` defaults
  ``--weight_reg`` to 10.0 and ``main.py`` names runs ``ls{weight_reg}``).

The paper's k (250 Sth-V1, 10 Kinetics-400, 50 Sth-V2 / UCF101, "determined by
grid search") are the code's ``weight_reg``; for the same k the paper's form
is ``k / 2`` times stronger (125x for k = 250).

The pre-flight (``preflight``) compares, at the warm-up weights and before the
search's first step, the data loss with the Eq. 5 term; ``holdout_check`` says
how wide a top-1 interval the selection split can give.
"""

import math

from tf_stfusion import selection

PRIOR_FORMS = ("paper", "authors_code")
PRIOR_FORMULAS = {"paper": "k^2/(2N)", "authors_code": "k/N"}

# Calibrated on the synthetic k sweep (README, "Choosing k"; Eq. 5 term / data loss at
# the warm-up weights, at the sweep's mean data loss): up to ~20 no gate ended above
# p = 0.9 and Opt kept its hold-out top-1; at ~160 the first gates went (8%), Opt
# unchanged; at ~400 Opt lost 14 points on the hold-out; at ~650 ST and S+ST fell to
# chance; at ~1,300 96% of the gates were dropped. So: warn above 100, stop above 400.
PREFLIGHT_WARN_RATIO = 100.0
PREFLIGHT_STOP_RATIO = 400.0
# A top-1 on the selection split known to +-10 points (95% Wilson, at 50%) tells
# strategies apart that differ by a few points only with paired tests; wider is unusable.
HOLDOUT_HALF_WIDTH = 0.10


def check_form(prior_form):
    if prior_form not in PRIOR_FORMS:
        raise ValueError(f"prior_form must be one of {PRIOR_FORMS}, got {prior_form!r}")


def weight_coefficient(length_scale, num_train, prior_form):
    """The weight-term coefficient ``c``: ``k^2 / (2N)`` (``"paper"``) or ``k / N``
    (``"authors_code"``). Raises ValueError for an unknown form or ``N <= 0``."""
    check_form(prior_form)
    if num_train <= 0:
        raise ValueError(f"num_train must be > 0, got {num_train!r}")
    if prior_form == "paper":
        return length_scale**2 / (2.0 * num_train)
    return length_scale / float(num_train)


def length_scale_for(coefficient, num_train, prior_form):
    """The inverse of ``weight_coefficient``: the ``k`` whose coefficient is ``coefficient``."""
    check_form(prior_form)
    if prior_form == "paper":
        return math.sqrt(2.0 * num_train * max(coefficient, 0.0))
    return max(coefficient, 0.0) * num_train


def describe_coefficient(length_scale, num_train, prior_form):
    """``"k/N = 0.00435"``: the form's formula and its value, for messages."""
    return f"{PRIOR_FORMULAS[prior_form]} = {weight_coefficient(length_scale, num_train, prior_form):.3g}"


def verdict_of(ratio, warn_ratio=PREFLIGHT_WARN_RATIO, stop_ratio=PREFLIGHT_STOP_RATIO):
    """``"stop"`` above ``stop_ratio``, ``"warn"`` above ``warn_ratio``, else ``"ok"``."""
    return "stop" if ratio > stop_ratio else "warn" if ratio > warn_ratio else "ok"


def preflight(data_loss, weights, entropy_term, length_scale, num_train, prior_form,
              warn_ratio=PREFLIGHT_WARN_RATIO, stop_ratio=PREFLIGHT_STOP_RATIO, weights_at="the warm-up weights"):
    """The prior's pre-flight from measured parts (``gating.regularizer_parts``).

    Args:
      data_loss: mean cross-entropy (nats) on a few training batches at the
        warm-up weights.
      weights: ``sum over gates of (1 - p) * sum(w^2)`` of the gated kernels.
      entropy_term: ``sum over gates of H(p) / N`` (<= 0).
      length_scale, num_train, prior_form: ``k``, ``N`` and the form in use.
      warn_ratio, stop_ratio: the thresholds (``PREFLIGHT_*_RATIO``).
      weights_at: which weights were measured, for the message.
    Returns a dict: per form the Eq. 5 term and its ratio to the data loss; the
    ratio of the form in use; ``suggested_length_scale``, the k (in that form)
    whose term equals the data loss; ``verdict`` ("ok", "warn" or "stop") and a
    one-line ``message``.
    """
    check_form(prior_form)
    if not data_loss > 0:
        raise ValueError(f"the pre-flight needs a positive data loss, got {data_loss!r}")
    forms = {}
    for form in PRIOR_FORMS:
        term = weight_coefficient(length_scale, num_train, form) * weights + entropy_term
        forms[form] = {"formula": PRIOR_FORMULAS[form], "eq5_term": term, "ratio": term / data_loss,
                       "coefficient": weight_coefficient(length_scale, num_train, form)}
    ratio = forms[prior_form]["ratio"]
    # c * weights + entropy_term = data_loss  ->  c, then k of the form in use.
    suggested = length_scale_for((data_loss - entropy_term) / weights, num_train, prior_form) if weights > 0 else None
    verdict = verdict_of(ratio, warn_ratio, stop_ratio)
    said = (f"Eq. 5 term / data loss = {ratio:.3g} at {weights_at} (k = {length_scale:g}, N = {num_train}, "
            f"form {prior_form}: {describe_coefficient(length_scale, num_train, prior_form)}; data loss "
            f"{data_loss:.3g}, Eq. 5 term {forms[prior_form]['eq5_term']:.4g})")
    advice = "" if suggested is None else f"k = {suggested:.3g} would make it 1"
    message = {"ok": f"pre-flight: {said}; {advice}",
               "warn": f"pre-flight: warning: the prior outweighs the data: {said}; {advice} (above {warn_ratio:g} "
                       "gates started to be dropped in the README's k sweep)",
               "stop": f"pre-flight: {said} is above {stop_ratio:g}, where the README's k sweep dropped nearly "
                       f"every gate; lower --length_scale ({advice}), or start anyway with --override_preflight",
               }[verdict]
    return {"data_loss": data_loss, "weights": weights, "entropy_term": entropy_term, "length_scale": length_scale,
            "num_train": num_train, "prior_form": prior_form, "forms": forms, "ratio": ratio,
            "suggested_length_scale": suggested, "warn_ratio": warn_ratio, "stop_ratio": stop_ratio,
            "verdict": verdict, "message": message}


def interval_at_half(num_videos):
    """The 95% Wilson interval of a top-1 of 50% on ``num_videos`` videos (the widest)."""
    return selection.wilson_interval(num_videos / 2.0, num_videos)


def videos_for_half_width(half_width=HOLDOUT_HALF_WIDTH):
    """The fewest videos whose 95% Wilson interval at 50% top-1 is at most ``+-half_width``."""
    if not 0 < half_width < 0.5:
        raise ValueError(f"half_width must lie in (0, 0.5), got {half_width!r}")
    n = 1
    while (interval_at_half(n)[1] - interval_at_half(n)[0]) / 2.0 > half_width:
        n += 1
    return n


def holdout_check(num_holdout, num_train_split, half_width=HOLDOUT_HALF_WIDTH):
    """How wide a top-1 interval a selection split of ``num_holdout`` videos gives
    (95% Wilson at 50%, the widest), and the size (videos, and fraction of the
    ``num_train_split`` training videos) that would give ``+-half_width``.
    Returns a dict with ``warning`` (None when the split is wide enough)."""
    if num_holdout < 1:
        raise ValueError("the selection split holds no video")
    low, high = interval_at_half(num_holdout)
    needed = videos_for_half_width(half_width)
    fraction = needed / num_train_split if num_train_split else None
    summary = (f"the selection split has {num_holdout} videos: a top-1 near 50% there is known to "
               f"[{100 * low:.1f}, {100 * high:.1f}]% (95% Wilson); +-{100 * half_width:.0f} points needs >= {needed} "
               "videos" + (f" (--holdout_fraction={fraction:.2g} of {num_train_split})" if fraction and fraction < 1
                          else f" (more than the {num_train_split} training videos)"))
    usable = (high - low) / 2.0 <= half_width
    return {"num_videos": num_holdout, "top1_ci_at_50": [low, high], "half_width_target": half_width,
            "videos_needed": needed, "fraction_needed": fraction, "usable": usable, "summary": summary,
            "warning": None if usable else f"pre-flight: warning: {summary}; it cannot tell strategies apart that "
                                           "differ by less than the interval"}
