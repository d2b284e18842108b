"""ImageNet inflation: exact on static clips away from the temporal borders,
and wired into training (--init=imagenet). 2D models are randomly initialised
here (no download); their BatchNorm statistics and biases are randomised so
that a missed or misplaced weight shows."""

import keras
import numpy as np
import pytest

import tf_stfusion as stf
from tf_stfusion.models import inflate

# (backbone, our layer, Keras' 2D layer, frames, interior frames where the two must agree)
CASES = [("densenet121", "block1_layer6_concat", "conv2_block6_concat", 8, range(2, 6)),
         ("resnet50", "conv2_block3_out", "conv2_block3_out", 8, range(2, 6)),
         # DenseNet-121 through the whole network up to the head (head BN + ReLU included; the 2D
         # model has no classifier): the stem's 5 taps and the three 3x1x1 transitions widen the border.
         # (ResNet-50 stops matching at conv3: Keras strides a stage's first 1x1, we the 1x3x3 --
         # inflate.py's docstring.)
         ("densenet121", "head_relu", "relu", 16, range(5, 11))]


def random_2d(backbone, seed=0):
    rng = np.random.default_rng(seed)
    model = inflate.imagenet_2d(backbone, weights=None)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            g, b, m, v = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, g.shape), rng.normal(0, 0.3, b.shape),
                               rng.normal(0, 0.3, m.shape), rng.uniform(0.5, 2.0, v.shape)])
        elif isinstance(layer, keras.layers.Conv2D) and layer.use_bias:
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0, 0.3, bias.shape)])
    return model


@pytest.mark.parametrize("backbone, ours, theirs, frames, interior", CASES)
def test_s_only_inflated_model_reproduces_the_2d_model_on_static_clips(backbone, ours, theirs, frames, interior):
    model2d = random_2d(backbone)
    n = len(stf.layer_names(backbone))
    model3d = stf.build_template(backbone, num_classes=5, num_frames=frames, input_size=64, units=["S"] * n)
    inflate.inflate(model3d, model2d)
    frame = np.random.default_rng(1).normal(size=(1, 64, 64, 3)).astype("float32")
    clip = np.repeat(frame[:, None], frames, axis=1)
    want = keras.Model(model2d.inputs, model2d.get_layer(theirs).output)(frame, training=False).numpy()
    got = keras.Model(model3d.inputs, model3d.get_layer(ours).output)(clip, training=False).numpy()
    # The 5x7x7 stem hides taps in the 2 border frames on each side; in between: the 2D features.
    for t in interior:
        np.testing.assert_allclose(got[0, t], want[0], atol=1e-4 * np.abs(want).max())
    assert np.abs(got[0, 0] - want[0]).max() > 1e-2  # the border really differs: the check can fail


def test_inflation_rule_stem_temporal_and_transition():
    model2d = random_2d("densenet121")
    template = stf.build_template("densenet121", num_classes=5, num_frames=8, input_size=64)
    inflate.inflate(template, model2d)
    stem2d = model2d.get_layer("conv1_conv").get_weights()[0]
    np.testing.assert_allclose(template.get_layer("stem_conv").kernel.numpy(), np.stack([stem2d / 5] * 5), rtol=1e-6)
    w = model2d.get_layer("conv2_block1_1_conv").get_weights()[0]
    np.testing.assert_allclose(template.get_layer("block1_layer1_st_conv").kernel.numpy(), np.stack([w / 3] * 3),
                               rtol=1e-6)
    np.testing.assert_allclose(template.get_layer("block1_layer1_s_conv").kernel.numpy()[0], w, rtol=1e-6)
    t = model2d.get_layer("pool2_conv").get_weights()[0]
    s_half = template.get_layer("transition1_s_conv").kernel.numpy()[0]
    st_sum = template.get_layer("transition1_st_conv").kernel.numpy().sum(axis=0)
    np.testing.assert_allclose(s_half + st_sum, t, rtol=1e-5, atol=1e-7)


def test_training_starts_from_inflated_weights(tmp_path, monkeypatch, trained_run):
    from tf_stfusion.run.config import TrainConfig, TrainError
    from tf_stfusion.run.folder import RunFolder
    from tf_stfusion.trainer import Trainer

    model2d = random_2d("resnet50", seed=3)
    monkeypatch.setattr(inflate, "imagenet_2d", lambda backbone, weights="imagenet": model2d)
    data = RunFolder(trained_run).config().data
    for strategy in (None, stf.Strategy.from_units("resnet50", ["S", "none", "ST", "S+ST"] * 4)):
        config = TrainConfig(model_dir=str(tmp_path / str(strategy is None)), data=data, backbone="resnet50",
                             phases=("warmup",) if strategy is None else ("fixed",), strategy=strategy,
                             init="imagenet", batch_size=2, steps_per_epoch=1, progress=False)
        trainer = Trainer(config)
        state = trainer.setup_phase(config.phases[0])
        assert state.how == "from ImageNet weights (inflated)"
        kernel = trainer.model.get_layer("conv2_block1_expand_conv").kernel.numpy()[0]
        np.testing.assert_allclose(kernel, model2d.get_layer("conv2_block1_3_conv").get_weights()[0], rtol=1e-6)
    with pytest.raises(TrainError, match="available for"):
        TrainConfig(model_dir=str(tmp_path), backbone="resnext50_32x4d", init="imagenet").validate()
