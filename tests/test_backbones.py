"""Residual backbones: fusion units and gates in every bottleneck, training in
search mode, pruned export parity, S really 2D, Opt rule and strategy mapping."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_stfusion as stf
from tf_stfusion.data.pipeline import InputContract
from tf_stfusion.models.prune import prune
from tf_stfusion.transfer import map_strategy, paper_opt_strategy

RESIDUAL = ["resnet50", "resnext50_32x4d", "resnext101_32x4d", "mobilenet_v2"]
SHAPE = (4, 32, 32, 3)


def _template(backbone):
    return stf.build_template(backbone, num_classes=6, num_frames=SHAPE[0], input_size=SHAPE[1], seed=1)


@pytest.mark.parametrize("backbone", RESIDUAL)
def test_search_mode_gradients_reach_every_gate_and_pruned_export_matches(backbone):
    model = _template(backbone)
    assert len(stf.gates(model)) == 3 * len(stf.layer_names(backbone))
    stf.set_gate_mode(model, "search")
    x = tf.constant(np.random.default_rng(0).normal(size=(2, *SHAPE)).astype("float32"))
    y = tf.constant([1, 4])
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    logits_vars = [g.gate.drop_logit for g in stf.gates(model)]
    for _ in range(2):  # two SGD steps
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True)) + stf.fusion_regularizer(model, 10.0, 1000)
        grads = tape.gradient(loss, model.trainable_variables)
        for v, g in zip(model.trainable_variables, grads):
            v.assign_sub(0.01 * g)
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True)) + stf.fusion_regularizer(model, 10.0, 1000)
    grads = tape.gradient(loss, logits_vars)
    assert all(g is not None and np.isfinite(g.numpy()) and g.numpy() != 0 for g in grads)
    # A mixed strategy with skipped blocks: the pruned network computes what the template computes.
    n = len(stf.layer_names(backbone))
    strategy = stf.Strategy.from_units(backbone, (["S", "ST", "none", "S+ST"] * n)[:n])
    stf.apply_strategy(model, strategy)
    ref = model(x, training=False).numpy()
    pruned = prune(model, strategy)
    np.testing.assert_allclose(pruned(x, training=False).numpy(), ref, atol=1e-4 * max(1.0, np.abs(ref).max()))
    assert pruned.count_params() == stf.cost(model, strategy, input_shape=SHAPE).params_with_bn_stats


@pytest.mark.parametrize("backbone", RESIDUAL + ["tiny"])
def test_s_only_units_are_really_2d(backbone):
    n = len(stf.layer_names(backbone))
    pruned = stf.build_template(backbone, num_classes=6, num_frames=SHAPE[0], input_size=SHAPE[1], units=["S"] * n)
    # The units: every conv of a fusion layer (blocks/stages), not the stem, shortcuts or transitions.
    unit_convs = [l for l in pruned.layers if isinstance(l, keras.layers.Conv3D) and l.name.startswith(("conv", "block", "stage"))
                  and "shortcut" not in l.name]
    assert unit_convs
    assert all(l.kernel_size[0] == 1 for l in unit_convs), [l.name for l in unit_convs if l.kernel_size[0] != 1]


def test_paper_opt_rule_and_mapping():
    opt = paper_opt_strategy("resnet50")  # 16 blocks: S+ST in 0-7 and 13-15, ST in 8-12
    assert opt.units == ["S+ST"] * 8 + ["ST"] * 5 + ["S+ST"] * 3
    dense = stf.Strategy.from_units("densenet121", ["S"] * 6 + ["ST"] * 12 + ["S+ST"] * 24 + ["none"] * 16)
    mapped = map_strategy(dense, "resnet50")  # stages of 3, 4, 6, 3 blocks
    assert mapped.units == ["S"] * 3 + ["ST"] * 4 + ["S+ST"] * 6 + ["none"] * 3
    assert mapped.provenance["from_backbone"] == "densenet121"
    mixed = stf.Strategy.from_units("tiny", ["S", "ST"] * 4)  # per stage: first S, second ST
    assert map_strategy(mixed, "resnet50").units[:3] == ["S", "S", "ST"]


def test_resnext_exports_to_saved_model_and_onnx(tmp_path):
    # Keras computes grouped convs in a nested XLA function tf2onnx cannot read; the
    # exporter switches GroupConv3D to one conv per group.
    from tf_stfusion.data.pipeline import normalize
    from tf_stfusion.export import writers

    backbone = "resnext50_32x4d"
    model = _template(backbone)
    n = len(stf.layer_names(backbone))
    strategy = stf.Strategy.from_units(backbone, (["S+ST", "none", "ST", "S"] * n)[:n])
    stf.apply_strategy(model, strategy)
    pruned = prune(model, strategy)
    video = np.random.default_rng(2).integers(0, 256, (2, *SHAPE), dtype=np.uint8)
    want = tf.nn.softmax(pruned(normalize(tf.constant(video)), training=False)).numpy()
    (tmp_path / "m").mkdir()
    contract = InputContract(num_frames=SHAPE[0], frame_stride=1, sampler="dense", eval_clips=1, eval_size=SHAPE[1],
                             class_names=tuple("abcdef"))
    writers.write_saved_model(pruned, contract, str(tmp_path / "m" / "1"))
    writers.write_onnx(pruned, contract, str(tmp_path / "m.onnx"))
    grouped = [layer for layer in pruned.layers if type(layer).__name__ == "GroupConv3D"]
    assert grouped and not any(layer.split_groups for layer in grouped)  # the caller's model is left as it was
    for got in (writers.load_saved_model(str(tmp_path / "m" / "1"))(video), writers.load_onnx(str(tmp_path / "m.onnx"))(video)):
        np.testing.assert_allclose(got["probabilities"], want, atol=1e-4)
