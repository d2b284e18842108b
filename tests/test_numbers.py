"""Numbers a user reads, checked against values worked out independently of the
code under test: multi-clip top-1 / top-5 / NLL from hand-made probabilities,
parameters and FLOPs of whole networks and of single units by formula, and the
Eq. 5 regulariser with each gate's kernel found from the network's graph."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_stfusion as stf
from tf_stfusion import gating
from tf_stfusion.evaluation import Evaluator

from conftest import gate_kernel


# -- multi-clip evaluation -----------------------------------------------------------------
# Three videos of 6 classes, two views each; the fake model's logits are log p, so its
# softmax returns exactly these probabilities. Views disagree, top-1 != top-5.
VIEWS = {
    # label, view 1, view 2
    "A": (0, [.50, .10, .10, .10, .10, .10], [.10, .60, .10, .10, .05, .05]),  # mean: class 1 first, 0 second
    "B": (5, [.30, .25, .20, .12, .08, .05], [.30, .25, .20, .12, .08, .05]),  # label ranked 6th
    "C": (3, [.05, .05, .10, .60, .10, .10], [.20, .10, .10, .40, .10, .10]),  # label first
}


def test_multi_clip_top1_top5_and_nll_by_hand():
    # By hand: mean probabilities A = [.30, .35, .10, .10, .075, .075] -> top-1 miss (class 1), top-5 hit;
    # B: label 5 has the smallest mean (.05) -> both miss; C = [.125, .075, .10, .50, .10, .10] -> both hit.
    expected_top1, expected_top5 = 1 / 3, 2 / 3
    expected_nll = (-math.log(.30) - math.log(.05) - math.log(.50)) / 3
    order = ["C", "A", "B"]  # read in another order than the split's: results come back in split order
    clips = np.log(np.array([VIEWS[v][k] for v in order for k in (1, 2)], np.float32)).reshape(6, 1, 1, 2, 3)
    labels = np.array([VIEWS[v][0] for v in order], np.int32)
    positions = np.array([sorted(VIEWS).index(v) for v in order], np.int64)
    model = keras.Sequential([keras.Input((1, 1, 2, 3)), keras.layers.Reshape((6,))])
    evaluator = Evaluator(model, eval_clips=2)
    results = evaluator.videos(lambda ctx: tf.data.Dataset.from_tensors((clips, labels, positions)), 3,
                               progress=False)
    assert results.top1.tolist() == [False, False, True] and results.top5.tolist() == [True, False, True]
    metrics = results.metrics("val")
    assert metrics["top1"] == pytest.approx(expected_top1) and metrics["top5"] == pytest.approx(expected_top5)
    assert metrics["loss"] == pytest.approx(expected_nll, rel=1e-5)
    assert metrics["top1_ci"][0] < expected_top1 < metrics["top1_ci"][1] and metrics["num_videos"] == 3


def test_multi_clip_evaluation_on_two_replicas_where_one_gets_nothing(mirrored_two_cpus):
    # Three one-video batches over two replicas: the second step has a video for one replica and
    # an empty share for the other, which must add no outcome (and no error); same numbers by hand.
    order = ["C", "A", "B"]
    clips = np.log(np.array([VIEWS[v][k] for v in order for k in (1, 2)], np.float32)).reshape(3, 2, 1, 1, 2, 3)
    labels = np.array([VIEWS[v][0] for v in order], np.int32)
    positions = np.array([sorted(VIEWS).index(v) for v in order], np.int64)
    with mirrored_two_cpus.scope():
        model = keras.Sequential([keras.Input((1, 1, 2, 3)), keras.layers.Reshape((6,))])
    evaluator = Evaluator(model, eval_clips=2, distribution=mirrored_two_cpus)
    results = evaluator.videos(lambda ctx: tf.data.Dataset.from_tensor_slices((clips, labels, positions)).batch(1).map(
        lambda c, y, p: (tf.reshape(c, [-1, 1, 1, 2, 3]), y, p)), 3, progress=False)
    assert results.top1.tolist() == [False, False, True] and results.top5.tolist() == [True, False, True]
    np.testing.assert_allclose(results.nll, [-math.log(.30), -math.log(.05), -math.log(.50)], rtol=1e-5)


def test_video_probabilities_average_the_views_by_hand():
    # The one-device path the export's serving check compares against: mean over each video's views.
    order = ["C", "A", "B"]
    clips = np.log(np.array([VIEWS[v][k] for v in order for k in (1, 2)], np.float32)).reshape(6, 1, 1, 2, 3)
    positions = np.array([sorted(VIEWS).index(v) for v in order], np.int64)
    labels = np.zeros(3, np.int32)
    model = keras.Sequential([keras.Input((1, 1, 2, 3)), keras.layers.Reshape((6,))])
    dataset = tf.data.Dataset.from_tensors((clips, labels, positions))
    got = Evaluator(model, eval_clips=2).evaluate(lambda ctx: dataset, 3).probabilities[0]
    want = [np.mean([VIEWS[v][1], VIEWS[v][2]], axis=0) for v in sorted(VIEWS)]  # A, B, C
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_video_scores_with_a_class_count_known_only_at_run_time():
    # A model whose class dimension is not static (traced with an open shape): the views of a
    # video are still averaged per class, the count read from the tensor at run time.
    from tf_stfusion.evaluation import video_scores

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, None, None, None], tf.float32)])
    def scores(clips):
        def model(flat, training=False):  # classes = 1 * 1 * 2 * 3 here, known when it runs
            return tf.reshape(flat, [tf.shape(flat)[0], -1])

        out = video_scores(model, clips)
        assert out.shape[-1] is None  # the case under test: no static class count
        return out

    logits = np.log(np.array([VIEWS[v][k] for v in sorted(VIEWS) for k in (1, 2)], np.float32))
    got = scores(logits.reshape(3, 2, 1, 1, 2, 3)).numpy()
    want = [np.mean([VIEWS[v][1], VIEWS[v][2]], axis=0) for v in sorted(VIEWS)]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_every_group_of_strategies_is_scored_on_every_batch():
    # Three strategies, one per tile, over three batches: each must be scored with its own
    # masks on every batch -- the same as applying it by hand and evaluating the model alone.
    model = stf.build_template("tiny", num_classes=4, num_frames=4, input_size=32, seed=0)
    strategies = [stf.Strategy.uniform(u, "tiny") for u in ("S", "ST", "S+ST")]
    rng = np.random.default_rng(0)
    clips = rng.normal(size=(6, 4, 32, 32, 3)).astype(np.float32)  # 6 videos x 1 view
    data = tf.data.Dataset.from_tensor_slices((clips, np.arange(6) % 4, np.arange(6))).batch(2)
    want = []
    for strategy in strategies:
        stf.apply_strategy(model, strategy)
        want.append(Evaluator(model, eval_clips=1).evaluate(lambda ctx: data, 6).probabilities[0])
    assert not np.allclose(want[0], want[1], rtol=1e-3)  # the strategies score differently
    got = Evaluator(model, eval_clips=1, tiles=1).evaluate(lambda ctx: data, 6, strategies=strategies).probabilities
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # Two groups (the first batch is not the only one that applies masks), and a last group of
    # one strategy padded to the tile count (3 + 1 strategies, 3 per tile).
    pair = Evaluator(model, eval_clips=1, tiles=1).evaluate(lambda ctx: data, 6, strategies=strategies[:2])
    np.testing.assert_allclose(pair.probabilities, want[:2], rtol=1e-4, atol=1e-6)
    four = Evaluator(model, eval_clips=1, tiles=3).evaluate(lambda ctx: data, 6, strategies=strategies + strategies[:1])
    np.testing.assert_allclose(four.probabilities, want + want[:1], rtol=1e-4, atol=1e-6)
    assert Evaluator(model, eval_clips=1).tiles == 1  # the plain model: one tile, no extra copies scored


# -- parameters and FLOPs ---------------------------------------------------------------------
SHAPE = (16, 224, 224, 3)


def test_densenet121_exact_counts():
    """The paper's 21.4M, exactly as Keras counted the built template (21,400,942
    trainable weights), and its FLOPs at 16 x 224 x 224 (2 per multiply-add)."""
    c = stf.cost("densenet121", None, SHAPE, num_classes=174)
    assert c.params == 21_400_942
    assert c.flops == 247_113_543_680


def _delta(backbone, layer, unit, base="S+ST", classes=10):
    names = stf.layer_names(backbone)
    units = [unit if n == layer else base for n in names]
    full = stf.cost(backbone, stf.Strategy.uniform(base, backbone), SHAPE, num_classes=classes)
    one = stf.cost(backbone, stf.Strategy.from_units(backbone, units), SHAPE, num_classes=classes)
    return full.params - one.params, full.flops - one.flops


def test_one_densenet_fusion_unit_by_hand():
    # densenet121 block1/layer1 reads the 64 stem channels at 16 x 56 x 56 (224 -> conv stride 2 -> 112 ->
    # pool stride 2 -> 56). Its ST path is BN(64) + a 3x1x1 conv 64 -> 128: dropping it (S+ST -> S) saves
    # 2*64 + 3*64*128 weights and 2 * (16*56*56) * 128 * (3*64) FLOPs.
    params, flops = _delta("densenet121", "block1/layer1", "S")
    assert params == 2 * 64 + 3 * 64 * 128
    assert flops == 2 * (16 * 56 * 56) * 128 * (3 * 64)


def test_one_grouped_resnext_block_by_hand():
    # resnext50_32x4d conv2/block1: input 64 channels at 16 x 56 x 56, width 32 groups x 4 = 128, output 256
    # (its projection shortcut stays when the block is skipped). Unit S costs: conv 1x1x1 64 -> 128 + BN(128),
    # the grouped 1x3x3 conv (each of 128 outputs sees 128/32 = 4 inputs) + BN(128), conv 1x1x1 128 -> 256
    # + BN(256).
    params, flops = _delta("resnext50_32x4d", "conv2/block1", "none", base="S")
    grouped = 9 * (128 // 32) * 128
    assert params == 64 * 128 + 2 * 128 + grouped + 2 * 128 + 128 * 256 + 2 * 256
    positions = 16 * 56 * 56
    assert flops == 2 * positions * (128 * 64 + 128 * 9 * (128 // 32) + 256 * 128)


def test_one_depthwise_mobilenet_block_by_hand():
    # mobilenet_v2 stage1/block2: 16 channels in at 16 x 112 x 112 (stem stride 2), expansion 6 -> width 96,
    # depthwise 1x3x3 stride 2 (one 3x3 filter per channel) -> 16 x 56 x 56, projection 96 -> 24.
    params, flops = _delta("mobilenet_v2", "stage1/block2", "none", base="S")
    assert params == 16 * 96 + 2 * 96 + 9 * 96 + 2 * 96 + 96 * 24 + 2 * 24
    assert flops == 2 * (16 * 112 * 112) * 96 * 16 + 2 * (16 * 56 * 56) * 96 * 9 + 2 * (16 * 56 * 56) * 24 * 96


def test_skipped_dense_layer_shrinks_every_later_consumer():
    # tiny (growth 8, bottleneck 32): skipping block4/layer1 (the last block) removes its 8 channels from
    # block4/layer2's S and ST inputs (BN 2 weights and 1 + 3 taps per channel per output) and from the head
    # BN (2 each) and classifier (10 classes), and adds the TemporalBias taps of the folded layers
    # (1 x 32 and 3 x 32 for layer 2's S and ST convs).
    names = stf.layer_names("tiny")
    shape = (8, 32, 32, 3)
    full = stf.cost("tiny", stf.Strategy.uniform("S+ST", "tiny"), shape, num_classes=10)
    units = ["none" if n == "block4/layer1" else "S+ST" for n in names]
    skip = stf.cost("tiny", stf.Strategy.from_units("tiny", units), shape, num_classes=10)
    layer1 = 2 * 2 * 16 + (1 + 3) * 16 * 32 + 2 * 32 + 9 * 32 * 8  # its own S, ST (on 16 channels) and 1x3x3
    consumers = 2 * 2 * 8 + (1 + 3) * 8 * 32 + 2 * 8 + 8 * 10  # layer 2's BN+convs, head BN, classifier
    folds = 1 * 32 + 3 * 32
    assert full.params - skip.params == layer1 + consumers - folds


# -- the Eq. 5 regulariser -------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ["tiny", "resnet50", "mobilenet_v2"])
def test_each_gates_eq5_term_penalises_the_kernel_it_drops(backbone):
    model = stf.build_template(backbone, num_classes=4, num_frames=4, input_size=32, seed=0)
    rng = np.random.default_rng(1)
    for g in gating.gate_layers(model):
        g.drop_logit.assign(float(rng.uniform(-3, 3)))
    k, n = 7.0, 50
    expected = 0.0
    for g in gating.gate_layers(model):
        p = 1.0 / (1.0 + math.exp(-float(g.drop_logit.numpy())))
        w2 = float(np.sum(np.square(np.asarray(gate_kernel(model, g)), dtype=np.float64)))
        expected += k * k / (2 * n) * (1 - p) * w2 + (p * math.log(p) + (1 - p) * math.log(1 - p)) / n
    assert float(gating.fusion_regularizer(model, k, n)) == pytest.approx(expected, rel=1e-5)


def test_cost_refuses_an_input_shape_that_is_not_frames_height_width_rgb():
    for shape in ((16, 224, 224), (16, 224, 224, 4), (1, 16, 224, 224, 3)):
        with pytest.raises(ValueError, match=r"input_shape must be \(frames, height, width, 3\)"):
            stf.cost("tiny", None, input_shape=shape, num_classes=10)


@pytest.mark.parametrize("backbone", ["tiny", "densenet121", "resnet50", "resnext50_32x4d", "mobilenet_v2"])
def test_analytic_cost_equals_counting_the_built_pruned_network(backbone):
    # cost() works the pruned network out from the architecture without building it; here it meets
    # Keras' own count of the built network, for random strategies (skipped layers, projection
    # shortcuts, odd sizes that round up under stride 2 included).
    from tf_stfusion.accounting import count_model

    names = stf.layer_names(backbone)
    rng = np.random.default_rng(len(backbone))
    for _ in range(2):
        units = list(rng.choice(["S", "ST", "S+ST", "none"], size=len(names)))
        strategy = stf.Strategy.from_units(backbone, units)
        pruned = stf.build_template(backbone, num_classes=7, num_frames=4, input_size=72, units=units)
        c = stf.cost(backbone, strategy, input_shape=(4, 72, 72, 3), num_classes=7)
        trainable, _, flops = count_model(pruned)
        assert (c.params, c.flops) == (trainable, flops), units
