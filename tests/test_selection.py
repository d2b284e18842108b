"""Selection you can trust: the hold-out, intervals, paired comparisons, honest
statements and the prior warning. The statistics are pure numpy and tested by
simulation; the hold-out is followed through the pipeline and the trainer."""

import dataclasses
import json
import math
import re
import shutil

import numpy as np
import pytest

import tf_stfusion as stf
from tf_stfusion import selection
from tf_stfusion.data import pipeline
from tf_stfusion.report import MARGINAL_THRESHOLD, observations


# -- the hold-out -------------------------------------------------------------------
def _examples(per_class=(30, 12, 7, 1)):
    return [(f"vid_{c}_{i:03d}", c) for c, n in enumerate(per_class) for i in range(n)]


def test_holdout_is_deterministic_stratified_and_order_free():
    examples = _examples()
    held = selection.holdout_ids(examples, 0.1)
    assert held == selection.holdout_ids(list(reversed(examples)), 0.1)  # input order does not matter
    per_class = {c: sum(v in held for v, label in examples if label == c) for c in range(4)}
    # round(0.1 * n) per class, at least one, never the last video of a class; a single video stays in training.
    assert per_class == {0: 3, 1: 1, 2: 1, 3: 0}
    # The choice is a hash of the id, not the position: renaming one video moves only that one.
    renamed = [("other_name" if v == sorted(held)[0] else v, c) for v, c in examples]
    assert len(held - selection.holdout_ids(renamed, 0.1)) <= 2
    # A larger fraction holds out a superset (same order per class).
    assert held <= selection.holdout_ids(examples, 0.3)
    with pytest.raises(ValueError, match="fraction"):
        selection.holdout_ids(examples, 1.0)


def test_holdout_is_never_read_by_the_training_pipeline(tmp_path):
    from tf_stfusion.data import prepare, sources, synthetic

    config = synthetic.SyntheticConfig(videos_per_class=5, val_videos_per_class=1, num_frames=4, size=16)
    index = prepare.build_index("synthetic", None, "train", synthetic_config=config)
    manifest = prepare.prepare(index, str(tmp_path), examples_per_shard=8, num_workers=1, short_side=0,
                               synthetic_config=config, progress=False)
    examples = sources.read_examples(str(tmp_path), manifest, "train")
    held = selection.holdout_ids(examples, 0.2)
    assert len(held) == 8  # one of five per class
    ids = sorted(v for v, _ in examples)
    files = pipeline.list_shards(str(tmp_path), "train")
    seen = []
    for training in (True, False):
        ds = pipeline.make_dataset(files, pipeline.ClipSpec(num_frames=4, input_size=16), training=training,
                                   batch_size=4, repeat=False, exclude_ids=held, video_index=ids,
                                   drop_remainder=False)
        seen.append(sorted(ids[int(p)] for _, _, pos in ds for p in pos.numpy()))
    assert seen[0] == seen[1] == sorted(set(ids) - held)


# -- intervals -------------------------------------------------------------------------
@pytest.mark.parametrize("p,n", [(0.5, 24), (0.9, 90), (0.97, 128), (0.3, 1000)])
def test_wilson_interval_covers_the_true_proportion(p, n):
    rng = np.random.default_rng(int(1000 * p) + n)
    draws = rng.binomial(n, p, size=1000)
    covered = sum(lo <= p <= hi for lo, hi in (selection.wilson_interval(k, n) for k in draws))
    assert covered >= 930  # nominal 95%


def test_wilson_interval_by_hand():
    # k = 8 of n = 10, z = 1.959964: centre (0.8 + z^2/20) / (1 + z^2/10), half-width z/(1 + z^2/10) *
    # sqrt(0.016 + z^2/400), worked out: [0.4902, 0.9433].
    lo, hi = selection.wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert selection.wilson_interval(0, 20)[0] == 0.0 and selection.wilson_interval(20, 20)[1] == 1.0


def test_paired_difference_of_identical_strategies_contains_zero():
    a = np.random.default_rng(0).random(200) < 0.7
    d = selection.paired_difference(a, a.copy())
    assert d.diff == 0 and d.low <= 0 <= d.high and d.verdict == selection.INDISTINGUISHABLE


@pytest.mark.parametrize("a,b", [
    ([True, False, True], [True, False]),  # different videos: not a pair
    ([[True, False]], [[True, False]]),  # 2-D: videos x something else
    ([], []),  # nothing to compare
])
def test_paired_difference_refuses_what_is_not_one_pair_of_videos(a, b):
    with pytest.raises(ValueError, match="equal, non-empty 1-D"):
        selection.paired_difference(a, b)


def test_strictly_more_correct_is_called_better_once_the_sample_is_large_enough():
    rng = np.random.default_rng(1)

    def pair(n):
        b = rng.random(n) < 0.6
        a = b.copy()
        a[np.flatnonzero(~b)[: max(1, n // 20)]] = True  # right on a superset: 5% more videos
        return a, b

    small = selection.paired_difference(*pair(20))   # 1 video more of 20
    large = selection.paired_difference(*pair(400))  # 20 videos more of 400
    assert small.verdict == selection.INDISTINGUISHABLE and small.low <= 0
    assert large.verdict == "better" and large.low > 0 and large.diff == pytest.approx(0.05)
    assert selection.paired_difference(*pair(400)[::-1]).verdict == "worse"


def test_paired_interval_covers_the_true_difference():
    # Two strategies with a true top-1 difference of 5 points on correlated videos.
    rng = np.random.default_rng(2)
    covered = 0
    for _ in range(300):
        u = rng.random(300)
        a, b = u < 0.75, u < 0.70
        flip = rng.random(300) < 0.1  # some discordance in both directions
        b = np.where(flip, ~b, b)
        true = 0.75 - (0.70 * 0.9 + 0.30 * 0.1)
        d = selection.paired_difference(a, b, resamples=2000)
        covered += d.low <= true <= d.high
    assert covered >= 0.92 * 300


def test_correctness_bits_round_trip():
    for n in (1, 7, 8, 9, 1000):
        bits = np.random.default_rng(n).random(n) < 0.5
        assert np.array_equal(selection.unpack_bits(selection.pack_bits(bits), n), bits)
    with pytest.raises(ValueError, match="expected 20 videos"):
        selection.unpack_bits(selection.pack_bits(np.ones(8, bool)), 20)


# -- honest statements ------------------------------------------------------------------
def _probs(m_s, m_st):
    gates, layers = [], []
    for i, (s, st) in enumerate(zip(m_s, m_st)):
        name = f"block1/layer{i + 1}"
        for path, m in (("S", s), ("ST", st), ("D1", 0.9)):
            gates.append({"layer": name, "path": path, "p": (1 - m) ** 2, "marginal": m})
        layers.append({"layer": name, "S": s * (1 - st), "ST": (1 - s) * st, "S+ST": s * st,
                       "none": (1 - s) * (1 - st)})
    return {"gates": gates, "layers": layers}


def test_a_split_fingerprint_is_the_first_16_hex_digits_of_sha256_of_its_ids():
    # Written into metrics.json and compared across runs and versions: its length is part of it.
    import hashlib

    assert selection.fingerprint(["v1", "v2"]) == hashlib.sha256(b"v1\nv2").hexdigest()[:16]


def test_a_tiny_marginal_difference_is_not_called_a_preference():
    # The case: mean marginals 0.298 vs 0.295.
    text = observations(_probs([0.300, 0.296], [0.296, 0.294]), [])[0]
    assert "no overall preference" in text and "prefers" not in text and f"{MARGINAL_THRESHOLD}" in text
    text = observations(_probs([0.2, 0.25], [0.6, 0.5]), [])[0]
    assert "prefers ST paths overall" in text and "2 of 2 layers favour ST" in text and "0.325 higher" in text


def test_a_close_block_gets_no_most_likely_unit():
    lines = observations(_probs([0.5, 0.5], [0.52, 0.52]), [])
    assert "no clear unit" in lines[1] and "most likely" not in lines[1]
    lines = observations(_probs([0.1, 0.1], [0.9, 0.9]), [])
    assert "most likely unit ST" in lines[1]


# -- the prior warning ---------------------------------------------------------------------
def test_prior_diagnostics_numbers_and_warning_threshold():
    from tf_stfusion.gating import prior_diagnostics

    quiet = prior_diagnostics([0.2, 0.5, 0.95, 0.3, 0.1], length_scale=4, num_train=920, loss=0.5, regularizer=0.05)
    assert quiet["fraction_gates_above_0.9"] == pytest.approx(0.2) and quiet["warning"] is None
    assert quiet["weight_coefficient"] == pytest.approx(16 / 1840) and quiet["prior_form"] == "paper"
    assert "k^2/(2N) = 0.0087" in quiet["summary"]
    code = prior_diagnostics([0.2], length_scale=4, num_train=920, prior_form="authors_code")
    assert code["weight_coefficient"] == pytest.approx(4 / 920) and "k/N = 0.00435" in code["summary"]
    assert quiet["regularizer_to_loss"] == pytest.approx(0.1)
    loud = prior_diagnostics([0.99] * 9 + [0.5], length_scale=1000, num_train=24, loss=1.0, regularizer=30.0)
    assert loud["fraction_gates_above_0.9"] == pytest.approx(0.9)
    assert "--length_scale=1000" in loud["warning"] and "k^2/(2N) = 2.08e+04" in loud["warning"]
    # The percentages a user reads, in the summary line and in the warning: 9 of 10 gates.
    assert loud["summary"].startswith("90% of 10 gates have p > 0.9")
    assert "90% of the gates have p > 0.9" in loud["warning"]
    # The thresholds are strict: p = 0.9 exactly is not "above 0.9", and exactly 80% of the gates
    # above it does not yet warn ("more than 80%").
    edge = prior_diagnostics([0.9, 0.95, 0.5, 0.5], length_scale=4, num_train=920)
    assert edge["fraction_gates_above_0.9"] == pytest.approx(0.25)
    at_80 = prior_diagnostics([0.95] * 8 + [0.5] * 2, length_scale=4, num_train=920)
    assert at_80["fraction_gates_above_0.9"] == pytest.approx(0.8) and at_80["warning"] is None


def test_prior_warning_fires_with_a_huge_k_and_stays_quiet_otherwise(trained_run, tmp_path, capsys):
    from tf_stfusion.run.folder import RunFolder
    from tf_stfusion.trainer import Trainer

    quiet = json.loads(open(f"{trained_run}/probabilities.json").read())["diagnostics"]
    assert quiet["warning"] is None and quiet["regularizer_to_loss"] is not None
    run = RunFolder(trained_run).config()
    model_dir = tmp_path / "huge-k"
    shutil.copytree(f"{trained_run}/warmup", model_dir / "warmup")  # the same warm-up, another k
    config = dataclasses.replace(run, model_dir=str(model_dir), phases=("search",), length_scale=1000.0,
                                 init_from=str(model_dir / "warmup"))
    Trainer(config).run()
    loud = json.loads((model_dir / "probabilities.json").read_text())["diagnostics"]
    assert loud["fraction_gates_above_0.9"] > 0.8
    assert "--length_scale=1000" in loud["warning"]
    assert "warning: the length-scale prior dominates" in capsys.readouterr().out


# -- racing ---------------------------------------------------------------------------------
def test_racing_slices_grow_by_eta_and_end_at_the_whole_split():
    assert selection.racing_slices(104, 100, eta=3, tiles=8, min_videos=10) == [(0, 12), (12, 35), (35, 104)]
    slices = selection.racing_slices(24000, 100)
    ends = [end for _, end in slices]
    assert ends[-1] == 24000 and all(b == pytest.approx(3 * a, abs=3) for a, b in zip(ends, ends[1:]))
    assert selection.racing_slices(20, 100) == [(0, 20)]  # too few videos for a first slice of 10
    assert selection.racing_slices(104, 5) == [(0, 104)]  # the candidates fit one tile


def _score(top1, nll=0.0, gflops=1.0):
    return selection.Score(np.asarray(top1, bool), np.asarray(top1, bool), nll, gflops)


def test_elimination_drops_the_clearly_worse_then_keeps_the_best_third():
    rng = np.random.default_rng(4)
    n = 60
    scores = {f"c{i}": _score(rng.random(n) < 0.85 - 0.01 * i, nll=float(i)) for i in range(9)}
    scores["bad"] = _score(rng.random(n) < 0.3)
    kept, dropped = selection.eliminate(scores, eta=3)
    assert "below the leader" in dropped["bad"]
    leader = max(scores, key=lambda c: scores[c].key())
    assert leader in kept
    rest = [c for c in scores if not dropped.get(c, "").startswith("below")]
    assert len(kept) == -(-len(rest) // 3)
    assert all(scores[k].key() >= scores[d].key() for k in kept for d in dropped)


def test_a_dropped_candidate_is_told_its_upper_bound_in_points():
    # The leader is right on all 100 videos, "bad" on the first 40 only: the 60 discordant
    # videos all favour the leader, so bad - leader = -c/100 with c ~ Binomial(100, 0.6)
    # under the paired bootstrap; its 97.5th percentile is -(2.5th percentile of c)/100.
    n, p = 100, 0.6
    cdf, q = 0.0, 0
    while cdf + math.comb(n, q) * p ** q * (1 - p) ** (n - q) < 0.025:
        cdf += math.comb(n, q) * p ** q * (1 - p) ** (n - q)
        q += 1
    scores = {"leader": _score([True] * n), "bad": _score([True] * 40 + [False] * 60)}
    _, dropped = selection.eliminate(scores, eta=3)
    points = float(re.search(r"upper bound ([-+][0-9.]+) points", dropped["bad"]).group(1))
    assert points == pytest.approx(-q, abs=1.5)  # in points (percent), not a fraction


def test_a_strict_superset_of_the_leader_is_never_dropped():
    """Random races: a candidate right on the leader's videos and more survives every
    decision (it becomes the leader); the leader itself always survives."""
    rng = np.random.default_rng(5)
    for trial in range(200):
        n = int(rng.integers(6, 80))
        scores = {f"c{i}": _score(rng.random(n) < rng.uniform(0.3, 0.95), nll=float(rng.random()))
                  for i in range(int(rng.integers(3, 30)))}
        leader = max(scores, key=lambda c: scores[c].key())
        top1 = scores[leader].top1.copy()
        if top1.all():
            continue
        top1[rng.choice(np.flatnonzero(~top1))] = True
        scores["superset"] = _score(top1, nll=99.0, gflops=99.0)  # worse on every tie-breaker
        kept, dropped = selection.eliminate(scores, eta=int(rng.integers(2, 5)))
        assert "superset" in kept and "superset" not in dropped


def test_a_race_is_won_by_the_strategy_right_on_every_video_the_others_get():
    from tf_stfusion.search import Journal, race, unit_key

    rng = np.random.default_rng(6)
    names = stf.layer_names("tiny")
    planned, truth = [], {}
    for i in range(40):
        units = list(rng.choice(["S", "ST", "S+ST", "none"], len(names)))
        strategy = stf.Strategy.from_units("tiny", units)
        if unit_key(strategy) in truth:
            continue
        planned.append((f"sample-{i:04d}", "sampled", strategy))
        truth[unit_key(strategy)] = rng.random(90) < rng.uniform(0.4, 0.9)
    best_key = unit_key(planned[7][2])
    truth[best_key] = np.logical_or.reduce(list(truth.values()))  # right wherever anyone is
    journal = Journal("/nonexistent/rounds.jsonl", chief=False)

    def evaluate(items, round_):
        from tf_stfusion.evaluation import VideoResults

        start, end = slices[round_]
        for key, _ in items:
            hits = truth[key][start:end]
            journal.add(key, round_, start, end, VideoResults(hits, hits, np.zeros(hits.size)))

    slices = selection.racing_slices(90, len(planned), eta=3, tiles=4, min_videos=5)
    seen, dropped = race(planned, slices, journal, evaluate, lambda s: 1.0, eta=3, max_gflops=0)
    assert len(slices) >= 3 and seen[best_key] == len(slices) and best_key not in dropped
    survivors = [k for k in seen if seen[k] == len(slices)]
    assert len(survivors) < len(planned) / 3
    assert sum(slices[seen[k] - 1][1] for k in seen) <= 0.5 * len(seen) * 90
