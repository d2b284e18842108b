"""Choosing a fusion strategy you can trust: a held-out selection split,
intervals, and paired comparisons (pure numpy; no TensorFlow).

The search scores many strategies with the same template weights and keeps the
best. The maximum of many noisy estimates is biased upwards, so the strategy is
*selected* on one split and its accuracy *reported* on another:

* ``holdout_ids``: the default selection split, a deterministic,
  class-stratified hold-out of the training videos. Per class the videos are
  ordered by ``sha256(SALT + video_id)`` and the first
  ``round(fraction * n_class)`` are held out, so every machine and every rerun
  holds out the same videos, and the training phases never see them.
  With a grouping (``group_function``: UCF101's ``v_<Class>_g<NN>_c<MM>``
  clips cut from one source video, Kinetics' YouTube id, or a regular
  expression over the video id) whole groups are held out: per class the
  groups are ordered by ``sha256(SALT + group)`` and taken while that brings
  the count closer to the class's ``round(fraction * n)`` (at least one group,
  never the last), so no held-out clip has a sibling in training.
* ``wilson_interval``: the 95% Wilson score interval of a proportion (top-1 of
  ``n`` videos). With ``z`` the normal quantile and ``p = k / n``::

      centre = (p + z^2 / 2n) / (1 + z^2 / n)
      half   = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2)

* ``paired_difference``: two strategies scored on the *same* videos, compared
  video by video. The difference of top-1 is ``(n+ - n-) / n`` with ``n+`` the
  videos only ``a`` gets right and ``n-`` those only ``b`` gets right. Its
  interval is the paired bootstrap over videos (percentile method): resampling
  ``n`` videos with replacement only changes how many of each kind (+1, -1, 0)
  are drawn, so a resample is one multinomial draw of the three counts, which
  makes it exact and cheap. ``a`` is called better (worse) only when the whole
  interval lies above (below) 0.

Per-video correctness travels compactly as base64 of packed bits
(``pack_bits`` / ``unpack_bits``) in a canonical video order.
"""

import base64
import dataclasses
import hashlib
import math
import re
from statistics import NormalDist

import numpy as np

SALT = "stfusion-holdout/1:"
CONFIDENCE = 0.95
RESAMPLES = 10_000
CI_METHOD = "Wilson score interval over videos, 95%"
PAIRED_METHOD = f"paired bootstrap over videos (percentile, {RESAMPLES:,} resamples), 95%"
SAME_SPLIT_NOTE = "selected and reported on the same split (optimistic)"
INDISTINGUISHABLE = "indistinguishable at this sample size"


# -- the selection split ------------------------------------------------------------
def _order_key(video_id):
    return hashlib.sha256((SALT + str(video_id)).encode()).hexdigest()


# Groups of clips cut from one source video, by dataset (the manifest's name): UCF101's
# v_<Class>_g<NN>_c<MM> (its official splits keep a group on one side), Kinetics' clip id
# <youtube id>_<start:06d>_<end:06d> (readers.read_kinetics400).
GROUP_PATTERNS = {"ucf101": r"^v_(.+_g\d+)_c\d+$", "kinetics400": r"^(.{11})_\d{6}_\d{6}$"}


NO_GROUPS = "none (video by video)"


def group_function(spec, dataset):
    """``(group_of, description)`` of a ``--holdout_group`` setting.

    ``spec``: ``"auto"`` (``GROUP_PATTERNS[dataset]``, else none), ``"none"``
    (every video its own group) or a regular expression searched in the video
    id; the group is its first capturing group, or the whole match. A video the
    pattern does not match is its own group. ``group_of`` is None for no
    grouping. Raises ValueError for a pattern that does not compile.
    """
    if spec == "none" or (spec == "auto" and dataset not in GROUP_PATTERNS):
        return None, NO_GROUPS
    pattern = GROUP_PATTERNS[dataset] if spec == "auto" else spec
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{pattern!r} is not a regular expression ({e})") from None

    def group_of(video_id):
        found = regex.search(str(video_id))
        if not found:
            return str(video_id)
        return found.group(1) if regex.groups else found.group(0)

    source = f"{dataset}'s clip groups" if spec == "auto" else "--holdout_group"
    return group_of, f"{pattern} over the video id ({source})"


def holdout_ids(examples, fraction, group_of=None):
    """The held-out video ids of ``examples`` (``(video_id, label)`` pairs).

    Class-stratified and deterministic (see the module docstring). A class with
    at least two videos (two groups, with ``group_of``) keeps at least one for
    training and, when ``fraction`` is > 0, gives at least one to the hold-out.
    With ``group_of`` (video id -> group id) whole groups are held out: per class
    the groups in hash order while that brings the count closer to
    ``round(fraction * n_class)`` (at least one group).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"the hold-out fraction must lie in [0, 1), got {fraction!r}")
    by_class = {}
    for video_id, label in examples:
        by_class.setdefault(int(label), []).append(str(video_id))
    held = set()
    for ids in by_class.values():
        if fraction == 0.0:
            continue
        if group_of is not None:
            held.update(_held_groups(ids, fraction, group_of))
        elif len(ids) >= 2:
            count = min(max(1, round(fraction * len(ids))), len(ids) - 1)
            held.update(sorted(ids, key=_order_key)[:count])
    if group_of is not None:  # a group that spans classes goes to one side only
        groups = {group_of(v) for v in held}
        held = {str(v) for v, _ in examples if group_of(str(v)) in groups}
    return held


def _held_groups(ids, fraction, group_of):
    """One class's held-out videos: whole groups in hash order, leaving one group."""
    members = {}
    for video_id in ids:
        members.setdefault(group_of(video_id), []).append(video_id)
    if len(members) < 2:
        return []
    target, held = max(1, round(fraction * len(ids))), []
    for group in sorted(members, key=_order_key)[:len(members) - 1]:
        # Take the next group while that brings the count closer to the target (always one).
        if held and abs(len(held) + len(members[group]) - target) >= abs(len(held) - target):
            break
        held += members[group]
    return held


# -- one proportion -------------------------------------------------------------------
def _z(confidence):
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(successes, n, confidence=CONFIDENCE):
    """``(low, high)`` of the Wilson score interval of ``successes / n``."""
    if n <= 0:
        raise ValueError("an interval needs at least one video")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, {n}], got {successes}")
    z = _z(confidence)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion(correct, confidence=CONFIDENCE):
    """``{"value", "ci", "n"}`` of a 0/1 array (one entry per video)."""
    correct = np.asarray(correct, bool)
    k, n = int(correct.sum()), int(correct.size)
    return {"value": k / n, "ci": list(wilson_interval(k, n, confidence)), "n": n}


# -- two strategies on the same videos -----------------------------------------------
@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """``a - b`` in top-1 on the same videos, with its paired 95% interval."""

    diff: float
    low: float
    high: float
    n: int
    only_a: int  # videos only ``a`` gets right
    only_b: int  # videos only ``b`` gets right

    @property
    def verdict(self):
        """``better`` / ``worse`` when the interval excludes 0, else indistinguishable."""
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return INDISTINGUISHABLE

    def to_dict(self):
        return {"diff": self.diff, "ci": [self.low, self.high], "n": self.n, "only_a": self.only_a,
                "only_b": self.only_b, "verdict": self.verdict, "method": PAIRED_METHOD}


def _check_pair(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired correctness needs two equal, non-empty 1-D arrays, got {a.shape} and {b.shape}")
    return a, b


def bootstrap_differences(only_a, only_b, n, resamples=RESAMPLES, seed=0):
    """Paired-bootstrap draws of the top-1 difference, from the discordant counts."""
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, [only_a / n, only_b / n, (n - only_a - only_b) / n], size=resamples)
    return (counts[:, 0] - counts[:, 1]) / n


def paired_difference(a, b, confidence=CONFIDENCE, resamples=RESAMPLES, seed=0):
    """``a - b`` (per-video top-1 correctness of two strategies) with its interval."""
    a, b = _check_pair(a, b)
    n = int(a.size)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    draws = bootstrap_differences(only_a, only_b, n, resamples, seed)
    alpha = 1.0 - confidence
    low, high = np.quantile(draws, [alpha / 2.0, 1.0 - alpha / 2.0])
    return PairedDifference((only_a - only_b) / n, float(low), float(high), n, only_a, only_b)


# -- compact per-video correctness -------------------------------------------------------
def pack_bits(correct):
    """A 0/1 array as base64 of its packed bits (8 videos a byte)."""
    return base64.b64encode(np.packbits(np.asarray(correct, bool)).tobytes()).decode("ascii")


def unpack_bits(text, n):
    """The inverse of ``pack_bits`` for ``n`` videos."""
    raw = np.frombuffer(base64.b64decode(text), np.uint8)
    if raw.size != (n + 7) // 8:
        raise ValueError(f"packed correctness holds {raw.size * 8} bits, expected {n} videos")
    return np.unpackbits(raw)[:n].astype(bool)


def fingerprint(video_ids):
    """A short digest of a split's canonical video order (to check that two
    results being paired were measured on the same videos)."""
    return hashlib.sha256("\n".join(video_ids).encode()).hexdigest()[:16]


def leakage_warning(selected, reported, grouping):
    """A warning (or None) when Opt's top-1 on the selection split lies above its
    top-1 on the report split by more than their 95% intervals allow (the lower
    bound of one above the upper bound of the other): a selection split that
    shares source videos with training rewards memorisation. ``selected`` /
    ``reported``: rows with ``top1``, ``top1_ci``, ``split``; ``grouping``: how
    the hold-out was grouped (``group_function``'s description)."""
    if selected["top1_ci"][0] <= reported["top1_ci"][1]:
        return None
    return (f"Opt's top-1 on {selected['split']} ({100 * selected['top1']:.1f}% [{100 * selected['top1_ci'][0]:.1f}, "
            f"{100 * selected['top1_ci'][1]:.1f}]) is above its top-1 on {reported['split']} "
            f"({100 * reported['top1']:.1f}% [{100 * reported['top1_ci'][0]:.1f}, {100 * reported['top1_ci'][1]:.1f}]) "
            f"by more than their intervals allow: the hold-out probably shares source videos with training "
            f"(grouping: {grouping}); hold out whole groups with --holdout_group=REGEX over the video id")


def describe(metrics):
    """One line for logs: top-1 and top-5 with their intervals, split and size."""
    def pct(key):
        lo, hi = metrics[f"{key}_ci"]
        return f"{100 * metrics[key]:.2f}% [{100 * lo:.1f}, {100 * hi:.1f}]"

    split = metrics.get("split", "?")
    return (f"top-1 {pct('top1')}  top-5 {pct('top5')}  on {split} ({metrics['num_videos']} videos; "
            "95% Wilson intervals)")


# -- racing: successive halving with paired elimination ---------------------------------
RACING_SALT = "stfusion-racing/1:"


def selection_order(video_ids):
    """The order in which racing (and the search) reads the selection split: the
    videos sorted by ``sha256(RACING_SALT + id)``, so that every slice is a
    deterministic pseudo-random sample of the split, whatever the ids encode."""
    return sorted(video_ids, key=lambda v: hashlib.sha256((RACING_SALT + str(v)).encode()).hexdigest())


def racing_slices(num_videos, num_candidates, eta=3, tiles=8, min_videos=10):
    """Slice ends of a race: ``[n / eta^(R-1), ..., n / eta, n]`` (rounded up).

    ``R`` rounds, as many as halving ``num_candidates`` by ``eta`` takes to fit
    one tile (``ceil(log_eta(candidates / tiles)) + 1``), but no first slice
    smaller than ``min_videos``. Returns ``[(start, end)]``: round ``r`` scores
    its survivors on videos ``start:end`` of the selection order.
    """
    if eta < 2:
        raise ValueError(f"racing needs eta >= 2, got {eta}")
    # Counted in integers: math.log(125, 5) is 3.0000000000000004, one round too many.
    rounds = 1
    while tiles * eta ** (rounds - 1) < num_candidates:
        rounds += 1
    while rounds > 1 and math.ceil(num_videos / eta ** (rounds - 1)) < min_videos:
        rounds -= 1
    ends = sorted({math.ceil(num_videos / eta**k) for k in range(rounds)})
    return list(zip([0] + ends[:-1], ends))


@dataclasses.dataclass(frozen=True)
class Score:
    """A candidate's results on the first ``n`` videos of the selection order."""

    top1: np.ndarray  # bool [n]
    top5: np.ndarray  # bool [n]
    nll: float  # summed -log p(label) over the n videos
    gflops: float

    def key(self):
        """Ranking: more top-1 hits, then more top-5 hits, then a lower loss, then
        fewer GFLOPs (near the ceiling many strategies tie on top-1: the loss still
        tells them apart)."""
        return int(self.top1.sum()), int(self.top5.sum()), -self.nll, -self.gflops


def eliminate(scores, eta=3, seed=0):
    """One racing decision over ``scores`` (``{id: Score}``, all on the same videos).

    1. The leader is the best by ``Score.key`` (most top-1 hits first). A
       candidate whose paired 95% upper bound on (its top-1 minus the leader's)
       lies below 0 is dropped.
    2. Of the rest, the best ``ceil(m / eta)`` by ``Score.key`` are kept.

    The leader is never dropped, and neither is a candidate right on a strict
    superset of the leader's videos: it would have more top-1 hits, so it would
    be the leader. (Candidates tied with the leader on top-1 are ranked by top-5,
    then loss, then cost.) Returns ``(kept ids, {dropped id: reason})``.
    """
    ranked = sorted(scores, key=lambda i: scores[i].key(), reverse=True)
    leader = ranked[0]
    dropped = {}
    for cid in ranked[1:]:
        d = paired_difference(scores[cid].top1, scores[leader].top1, seed=seed)
        if d.high < 0:
            dropped[cid] = f"below the leader (paired 95% upper bound {100 * d.high:+.1f} points)"
    rest = [cid for cid in ranked if cid not in dropped]
    kept = rest[:math.ceil(len(rest) / eta)]
    for cid in rest[len(kept):]:
        dropped[cid] = f"not in the best 1/{eta}"
    return kept, dropped
