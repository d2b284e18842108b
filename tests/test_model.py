"""Template builders, pruned networks, cost accounting, distribution."""

import math

import keras
import numpy as np
import pytest

import tf_stfusion as stf
from tf_stfusion import gating
from tf_stfusion.accounting import count_model, layer_flops

from conftest import make_tiny, random_clips


@pytest.mark.parametrize("classes,frames,size", [(5, 8, 32), (174, 4, (48, 64)), (2, None, None)])
def test_tiny_builds_for_any_classes_frames_and_size(classes, frames, size):
    model = stf.build_template("tiny", num_classes=classes, num_frames=frames, input_size=size)
    t = frames or 6
    h, w = (size, size) if isinstance(size, int) else (size or (40, 40))
    out = model(np.zeros((2, t, h, w, 3), "float32"), training=False)
    assert out.shape == (2, classes)


def test_gates_are_listed_in_order_with_names(tiny):
    infos = stf.gates(tiny)
    assert [(i.layer, i.path) for i in infos[:4]] == [
        ("block1/layer1", "S"), ("block1/layer1", "ST"), ("block1/layer1", "D1"), ("block1/layer2", "S"),
    ]
    assert all(i.p == pytest.approx(0.1, rel=1e-5) for i in infos)
    assert infos[1].gate.feeds == "block1_layer1_st_conv"
    assert tiny.get_layer("block1_layer1_st_conv").kernel_size == (3, 1, 1)


@pytest.mark.slow
def test_densenet121_has_the_papers_parameter_count():
    model = stf.build_template("densenet121", num_classes=174, num_frames=16, input_size=224)
    trainable, _, flops = count_model(model)
    # The paper's 21.4M, counted by Keras from the built network; the cost formula gives the same.
    assert trainable == 21_400_942
    assert len(stf.gates(model)) == 3 * 58
    c = stf.cost(model, None, input_shape=(16, 224, 224, 3))
    assert (c.params, c.flops) == (trainable, flops)


def test_pruned_network_keeps_only_the_strategys_paths():
    units = ["S", "ST", "S+ST", "none", "S", "none", "ST", "S"]
    pruned = stf.build_template("tiny", num_classes=5, num_frames=8, input_size=32, units=units)
    names = {l.name for l in pruned.layers}
    assert not gating.gate_layers(pruned)
    assert "block1_layer1_s_conv" in names and "block1_layer1_st_conv" not in names
    assert "block1_layer2_st_conv" in names and "block1_layer2_s_conv" not in names
    assert not any(n.startswith("block2_layer2") for n in names)
    # A skipped layer's channels are absent from later layers' inputs.
    # Block 2 starts from 16 channels (template: 32 halved); only layer 1 adds 8.
    assert pruned.get_layer("transition2_bn").input.shape[-1] == 16 + 8
    # The transition keeps the template width (32 halved = 16), so its weights fit.
    assert pruned.get_layer("transition2_s_conv").filters == 16
    assert pruned(random_clips(2), training=False).shape == (2, 5)


def test_s_only_pruned_network_is_really_2d():
    pruned = stf.build_template("tiny", num_classes=5, num_frames=8, input_size=32, units=["S"] * 8)
    for layer in pruned.layers:
        if isinstance(layer, keras.layers.Conv3D) and layer.name.startswith("block"):
            assert layer.kernel_size[0] == 1, layer.name


def test_layer_flops_by_hand():
    x = keras.Input((4, 10, 10, 6))
    y = keras.layers.Conv3D(8, (3, 1, 1), padding="same", use_bias=False)(x)
    y = keras.layers.Conv3D(2, (1, 3, 3), strides=(1, 2, 2), padding="same", use_bias=False)(y)
    z = keras.layers.Dense(7)(keras.layers.GlobalAveragePooling3D()(y))
    m = keras.Model(x, z)
    flops = [layer_flops(l) for l in m.layers]
    assert flops[1] == 2 * (4 * 10 * 10) * 8 * 3 * 6
    assert flops[2] == 2 * (4 * 5 * 5) * 2 * 9 * 8
    assert flops[4] == 2 * 2 * 7


def test_cost_of_a_strategy_equals_its_pruned_network(tiny):
    units = ["S", "ST", "S+ST", "none", "S", "none", "ST", "S"]
    s = stf.Strategy.from_units("tiny", units)
    c = stf.cost(tiny, s, input_shape=(8, 32, 32, 3))
    pruned = stf.build_template("tiny", num_classes=5, num_frames=8, input_size=32, units=units)
    assert (c.params, c.flops) == count_model(pruned)[0::2]
    assert c.macs * 2 == c.flops and c.gflops == c.flops / 1e9
    assert type(c.macs) is int  # a count: written as an integer in reports (e.g. 123, not 123.0)
    assert c.gmacs == c.macs / 1e9 and c.to_dict()["gmacs"] == c.gmacs


def test_cost_defaults_to_the_papers_clip():
    # 16 frames of 224 x 224 (SPEC, the paper's tables) unless the caller says otherwise.
    c = stf.cost("tiny", None, num_classes=5)
    assert c.input_shape == (16, 224, 224, 3)
    assert c.flops == stf.cost("tiny", None, input_shape=(16, 224, 224, 3), num_classes=5).flops


def test_cost_orders_units_and_scales_with_input(tiny):
    costs = {u: stf.cost(tiny, s, (8, 32, 32, 3)) for u, s in stf.fixed_strategies(tiny).items()}
    assert costs["S"].params < costs["ST"].params < costs["S+ST"].params
    assert costs["S"].flops < costs["ST"].flops < costs["S+ST"].flops
    full = stf.cost(tiny, None, (8, 32, 32, 3))
    assert full.params == costs["S+ST"].params
    # Parameters do not depend on the clip size; convolution FLOPs grow with T.
    double_t = stf.cost(tiny, stf.Strategy.uniform("ST", tiny), (16, 32, 32, 3))
    assert double_t.params == costs["ST"].params
    head = 2 * tiny.get_layer("head_logits").kernel.shape[0] * 5
    assert double_t.flops - head == 2 * (costs["ST"].flops - head)
    with pytest.raises(ValueError, match="backbone"):
        stf.cost(tiny, stf.Strategy.uniform("S", "densenet121"))


def test_search_mode_trains_under_mirrored_strategy(mirrored_two_cpus):
    strategy = mirrored_two_cpus
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        model = make_tiny(sync_batchnorm=True)
        stf.set_gate_mode(model, "search")
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    before = [float(g.drop_logit.numpy()) for g in gating.gate_layers(model)]
    x, y = random_clips(8), np.arange(8) % 5
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    after = [float(g.drop_logit.numpy()) for g in gating.gate_layers(model)]
    assert all(math.isfinite(l) for l in history.history["loss"])
    assert before != after  # the gate logits were trained through the replicas
