"""The v-DropPath gate: modes, masks, gradients, probabilities, regulariser."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_stfusion as stf
from tf_stfusion import gating
from tf_stfusion.layers.drop_path import VariationalDropPath, binary_entropy_term

from conftest import hand_regularizer



def _gate(mode, **kwargs):
    gate = VariationalDropPath(mode=mode, **kwargs)
    gate.build((None, 2, 3, 3, 4))
    return gate


def test_off_mode_is_identity():
    x = tf.random.normal((3, 2, 3, 3, 4))
    gate = _gate("off")
    np.testing.assert_array_equal(gate(x, training=True), x)
    assert gate.trainable_weights == []


def test_search_mask_is_per_sample_and_relaxed_bernoulli():
    gate = _gate("search", init_drop_prob=0.3, seed=7)
    x = tf.ones((2000, 2, 3, 3, 4))
    y = gate(x, training=True).numpy()
    keep = y[:, 0, 0, 0, 0]
    # One factor per sample, broadcast over T, H, W, C.
    np.testing.assert_array_equal(y, np.broadcast_to(keep[:, None, None, None, None], y.shape))
    assert len(np.unique(keep)) > 1000
    assert np.all((keep >= 0) & (keep <= 1))
    # For a relaxed Bernoulli, P(z > 1/2) equals p exactly.
    frac_dropped = np.mean(keep < 0.5)
    assert abs(frac_dropped - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 2000)
    # The whole law: P(z <= c) = sigmoid(tau * logit(c) - theta), z = 1 - keep.
    theta, tau = math.log(0.3 / 0.7), 0.2
    for c in (0.01, 0.05, 0.2, 0.5, 0.8, 0.95, 0.99):
        want = 1 / (1 + math.exp(-(tau * math.log(c / (1 - c)) - theta)))
        got = np.mean(1 - keep <= c)
        assert abs(got - want) < 4 * math.sqrt(want * (1 - want) / 2000) + 1e-3, c


def test_sample_is_tfps_relaxed_bernoulli_with_a_stable_sigmoid():
    import tensorflow_probability as tfp

    gate = _gate("search", init_drop_prob=0.3, seed=11)
    seed = tf.constant([5, 9], tf.int32)
    gate._noise_seed = lambda: seed
    ours = gate.sample_drop(500).numpy()
    theirs = tfp.distributions.RelaxedBernoulli(0.2, logits=gate.drop_logit.numpy()).sample(500, seed=seed)
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-5, atol=1e-6)


def test_gradient_stays_finite_when_p_is_near_one():
    # TFP's sigmoid bijector gave NaN gradients here (tf.where over an overflowing exp).
    gate = _gate("search", init_drop_prob=0.999, seed=2)
    gate.drop_logit.assign(10.0)
    x = tf.ones((4096, 1, 1, 1, 1))
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(gate(x, training=True))
    grad = tape.gradient(y, gate.drop_logit.value)
    assert np.isfinite(grad.numpy())


def test_search_noise_is_reproducible_from_seed():
    x = tf.ones((16, 1, 1, 1, 1))
    a = _gate("search", seed=3)(x, training=True)
    b = _gate("search", seed=3)(x, training=True)
    c = _gate("search", seed=4)(x, training=True)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_search_inference_uses_expected_keep():
    gate = _gate("search", init_drop_prob=0.25)
    x = tf.ones((2, 1, 1, 1, 1))
    np.testing.assert_allclose(gate(x, training=False), 0.75 * np.ones((2, 1, 1, 1, 1)), rtol=1e-6)


def test_fixed_mode_uses_the_mask_variable():
    gate = _gate("fixed")
    x = tf.random.normal((2, 2, 3, 3, 4))
    np.testing.assert_array_equal(gate(x), x)
    gate.set_fixed_masks(0.0)
    assert np.all(gate(x).numpy() == 0)


def test_fixed_mode_gives_each_tile_of_the_batch_its_own_mask():
    gate = _gate("fixed")
    x = tf.random.normal((6, 2, 3, 3, 4))
    gate.set_fixed_masks([1.0, 0.0, 1.0])  # 3 tiles of 2 samples
    y = gate(x).numpy()
    np.testing.assert_array_equal(y[:2], x[:2])
    assert np.all(y[2:4] == 0)
    np.testing.assert_array_equal(y[4:], x[4:])
    with pytest.raises(tf.errors.InvalidArgumentError, match="whole number of strategy tiles"):
        gate(tf.random.normal((4, 2, 3, 3, 4)))
    with pytest.raises(ValueError, match="1 to 32"):
        gate.set_fixed_masks(np.ones(33))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="gate mode"):
        VariationalDropPath(mode="warmup")
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        VariationalDropPath(init_drop_prob=1.0)
    with pytest.raises(ValueError, match="temperature"):
        VariationalDropPath(temperature=0)


def test_get_config_round_trip():
    gate = VariationalDropPath(
        init_drop_prob=0.2, temperature=0.5, mode="search", fusion_layer="block1/layer2",
        branch="ST", feeds="block1_layer2_st_conv", seed=11, name="g",
    )
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(gate))
    assert isinstance(clone, VariationalDropPath)
    for key in ("init_drop_prob", "temperature", "mode", "fusion_layer", "branch", "feeds", "seed"):
        assert getattr(clone, key) == getattr(gate, key)


def test_gradients_reach_every_gate_logit_in_search_mode(tiny, clips):
    stf.set_gate_mode(tiny, "search")
    labels = tf.constant([0, 1, 2, 3])
    with tf.GradientTape() as tape:
        logits = tiny(clips, training=True)
        loss = tf.reduce_mean(
            keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        )
    gate_vars = [g.drop_logit for g in gating.gate_layers(tiny)]
    grads = tape.gradient(loss, gate_vars)
    assert len(gate_vars) == 3 * 8
    for var, grad in zip(gate_vars, grads):
        assert grad is not None, var.path
        assert np.isfinite(grad.numpy()) and grad.numpy() != 0, var.path
    assert all(v.trainable for v in gate_vars)
    assert {id(v) for v in gate_vars} <= {id(v) for v in tiny.trainable_weights}


def test_gate_logits_are_not_trained_outside_search(tiny):
    trainable = {id(v) for v in tiny.trainable_weights}
    for gate in gating.gate_layers(tiny):
        assert id(gate.drop_logit) not in trainable


def test_p_stays_strictly_inside_0_1():
    gate = _gate("search")
    opt = keras.optimizers.SGD(learning_rate=1e4)
    for sign in (-1.0, 1.0):
        for _ in range(3):
            opt.apply([tf.constant(sign)], [gate.drop_logit])
        p = float(gate.drop_prob.numpy())
        assert 0.0 < p < 1.0
        term = float(binary_entropy_term(tf.convert_to_tensor(gate.drop_logit)).numpy())
        assert math.isfinite(term)


@pytest.mark.parametrize("entropy", ["binary", "paper"])
def test_regularizer_matches_hand_computation(tiny, entropy):
    rng = np.random.default_rng(1)
    for gate in gating.gate_layers(tiny):
        gate.drop_logit.assign(rng.uniform(-4, 4))
    got = float(stf.fusion_regularizer(tiny, length_scale=50.0, num_train=1000, entropy=entropy))
    want = hand_regularizer(tiny, 50.0, 1000, entropy)
    assert got == pytest.approx(want, rel=1e-5)
    # One training clip is a valid N (the smallest): the same formula, no refusal.
    got_one = float(stf.fusion_regularizer(tiny, length_scale=50.0, num_train=1, entropy=entropy))
    assert got_one == pytest.approx(hand_regularizer(tiny, 50.0, 1, entropy), rel=1e-5)


def test_regularizer_gradient_reaches_logits_and_weights(tiny):
    stf.set_gate_mode(tiny, "search")
    variables = [g.drop_logit for g in gating.gate_layers(tiny)] + [
        tiny.get_layer(g.feeds).kernel for g in gating.gate_layers(tiny)
    ]
    with tf.GradientTape() as tape:
        reg = stf.fusion_regularizer(tiny, 10.0, 100)
    for var, grad in zip(variables, tape.gradient(reg, variables)):
        assert grad is not None and np.any(grad.numpy() != 0), var.path
    # Higher p -> less weight penalty: d/dtheta of the weight term is negative.
    gate = gating.gate_layers(tiny)[0]
    with tf.GradientTape() as tape:
        term = gate.kl_divergence(tf.constant(1e3), 10.0, 100, "binary")
    assert float(tape.gradient(term, gate.drop_logit)) < 0


def test_regularizer_refuses_bad_arguments(tiny):
    with pytest.raises(ValueError, match="num_train"):
        stf.fusion_regularizer(tiny, 10.0, 0)
    with pytest.raises(ValueError, match="entropy"):
        stf.fusion_regularizer(tiny, 10.0, 10, entropy="full")


def test_fixed_all_ones_equals_off(tiny, clips):
    stf.set_gate_mode(tiny, "off")
    off = tiny(clips, training=False).numpy()
    stf.apply_strategy(tiny, stf.Strategy.uniform("S+ST", tiny))
    fixed = tiny(clips, training=False).numpy()
    np.testing.assert_array_equal(fixed, off)


def test_dropped_path_contributes_exactly_zero(tiny, clips):
    stf.apply_strategy(tiny, stf.Strategy.uniform("S", tiny))
    probe = keras.Model(tiny.input, tiny.get_layer("block2_layer1_st_conv").output)
    assert np.all(probe(clips, training=False).numpy() == 0)
    before = tiny(clips, training=False).numpy()
    # Whatever the dropped paths' weights are, the output does not change.
    for layer in tiny.layers:
        if layer.name.endswith("_st_conv") and layer.name.startswith("block"):
            layer.kernel.assign(100 * tf.random.normal(layer.kernel.shape))
    np.testing.assert_array_equal(tiny(clips, training=False).numpy(), before)


def test_changing_fixed_strategy_20_times_does_not_retrace(tiny, clips):
    traces = []

    @tf.function
    def forward(x):
        traces.append(1)
        return tiny(x, training=False)

    rng = np.random.default_rng(0)
    outputs = []
    for i in range(20):
        units = rng.choice(["S", "ST", "S+ST", "none"], size=8).tolist()
        stf.apply_strategy(tiny, stf.Strategy.from_units("tiny", units))
        outputs.append(forward(clips).numpy())
    assert len(traces) == 1
    # The masks really changed the computation.
    assert len({o.tobytes() for o in outputs}) > 15
    # Keras' own predict function is kept too.
    tiny.predict(clips, verbose=0)
    fn = tiny.predict_function
    stf.apply_strategy(tiny, stf.Strategy.uniform("ST", tiny))
    tiny.predict(clips, verbose=0)
    assert tiny.predict_function is fn


def test_a_mode_change_drops_keras_compiled_functions(tiny, clips):
    # The mode decides the graph: Keras' cached predict function must be rebuilt after a change.
    stf.set_gate_mode(tiny, "off")
    tiny.compile()
    off = tiny.predict(clips, verbose=0)
    stf.apply_strategy(tiny, stf.Strategy.uniform("S", "tiny"))  # fixed mode, ST paths dropped
    assert tiny.predict_function is None
    fixed = tiny.predict(clips, verbose=0)
    assert np.abs(fixed - off).max() > 1e-3
    assert stf.set_gate_mode(tiny, "fixed") is False and tiny.predict_function is not None  # no-op: kept
