"""3D MobileNetV2 template with a fusion unit in every inverted-residual block.

One block, input ``x`` with ``c`` channels, expansion ``t``::

    S  path:  Conv 1x1x1 (t*c) -> BN -> [gate S]
    ST path:  Conv 3x1x1 (t*c) -> BN -> [gate ST]
    (S + ST) -> ReLU6 -> depthwise 1x3x3 (spatial stride) -> BN -> ReLU6
             -> Conv 1x1x1 (out) -> BN -> [gate D1] -> (+ x when the shapes allow)

so the block's depthwise 3x3 is preceded by a 2D (S) or (2+1)D (ST) expansion,
as the DenseNet and ResNet units. The first block (t = 1, no expansion in the
2D network) gets a ``1x1x1`` expansion of width ``c`` here so that it has a
unit like every other block. Dropping D1 skips a block: a residual block becomes
the identity; a block that changes the shape then outputs zeros (``ZeroBlock``),
which is what the template computes -- such strategies exist but are useless.
Stages for strategy files (by resolution): stage1 = 16/24 channels,
stage2 = 32, stage3 = 64/96, stage4 = 160/320.
"""

import dataclasses
from typing import Optional, Sequence, Tuple

import keras
import tensorflow as tf

from tf_stfusion.layers.group_conv import GroupConv3D
from tf_stfusion.models.common import Backbone, GateConfig, Tally, bn, conv, post_norm_paths, template_inputs

# (expansion t, channels, blocks, first stride, stage) -- the 2D MobileNetV2 table plus our stages.
INVERTED_RESIDUALS = ((1, 16, 1, 1, 1), (6, 24, 2, 2, 1), (6, 32, 3, 2, 2), (6, 64, 4, 2, 3),
                      (6, 96, 3, 1, 3), (6, 160, 3, 2, 4), (6, 320, 1, 1, 4))


@dataclasses.dataclass(frozen=True)
class MobileNetV23DConfig(Backbone):
    blocks: Tuple[Tuple[int, int, int, int, int], ...] = INVERTED_RESIDUALS
    stem_filters: int = 32
    stem_kernel: Tuple[int, int, int] = (3, 3, 3)
    last_filters: int = 1280
    dropout_rate: float = 0.2

    def block_specs(self):
        """``(name, expansion, channels, stride)`` per block, in order."""
        specs, count = [], {}
        for t, c, n, s, stage in self.blocks:
            for i in range(n):
                count[stage] = count.get(stage, 0) + 1
                specs.append((f"stage{stage}/block{count[stage]}", t, c, s if i == 0 else 1))
        return specs

    def layer_names(self):
        return [name for name, *_ in self.block_specs()]

    # -- the backbone's hooks (models/__init__.py, prune.py call these; no ImageNet inflation) --
    def build(self, **kwargs):
        return build_mobilenet3d(self, **kwargs)

    def count(self, units, num_classes, input_shape):
        return count_mobilenet3d(self, units, num_classes, input_shape)


@keras.saving.register_keras_serializable(package="tf_stfusion")
class ZeroBlock(keras.layers.Layer):
    """The output of a skipped block that changes the shape: zeros ``[B, T, H/s, W/s, C]``."""

    def __init__(self, channels, stride, **kwargs):
        super().__init__(**kwargs)
        self.channels, self.stride = int(channels), int(stride)

    def call(self, inputs):
        shape = tf.shape(inputs)
        size = lambda n: (n + self.stride - 1) // self.stride  # noqa: E731  ("same" padding)
        return tf.zeros(tf.stack([shape[0], shape[1], size(shape[2]), size(shape[3]), self.channels]), inputs.dtype)

    def compute_output_shape(self, input_shape):
        b, t, h, w, _ = input_shape
        size = (lambda n: None if n is None else -(-n // self.stride))
        return (b, t, size(h), size(w), self.channels)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "stride": self.stride}


def inverted_residual(x, name, fusion_layer, expansion, channels, stride, unit, make_gate, synchronized):
    residual = stride == 1 and x.shape[-1] == channels
    if unit == "none":
        return x if residual else ZeroBlock(channels, stride, name=f"{name}_zero")(x)
    width = x.shape[-1] * expansion
    h = post_norm_paths(x, name, fusion_layer, width, unit, make_gate, synchronized)
    h = keras.layers.ReLU(6.0, name=f"{name}_sum_relu")(h)
    h = GroupConv3D(width, (1, 3, 3), strides=(1, stride, stride), padding="same", groups=width, use_bias=False,
                    kernel_initializer="he_normal", name=f"{name}_conv")(h)
    h = bn(f"{name}_bn", synchronized)(h)
    h = keras.layers.ReLU(6.0, name=f"{name}_relu")(h)
    h = conv(channels, (1, 1, 1), f"{name}_project_conv")(h)
    h = bn(f"{name}_project_bn", synchronized)(h)
    if make_gate is not None:
        h = make_gate(f"{name}_d1_gate", fusion_layer, "D1", f"{name}_conv")(h)
    return keras.layers.Add(name=f"{name}_add")([x, h]) if residual else h


def build_mobilenet3d(
    config: MobileNetV23DConfig,
    num_classes: int,
    num_frames: Optional[int] = 16,
    input_size=224,
    units: Optional[Sequence[str]] = None,
    gates: GateConfig = GateConfig(),
    sync_batchnorm: bool = False,
    name: str = "mobilenet3d",
):
    specs = config.block_specs()
    units, make_gate, inputs = template_inputs(config.layer_names(), units, num_frames, input_size, gates)
    x = conv(config.stem_filters, config.stem_kernel, "stem_conv", strides=(1, 2, 2))(inputs)
    x = bn("stem_bn", sync_batchnorm)(x)
    x = keras.layers.ReLU(6.0, name="stem_relu")(x)
    for i, (layer, t, c, s) in enumerate(specs):
        x = inverted_residual(x, layer.replace("/", "_"), layer, t, c, s, None if units is None else units[i],
                              make_gate, sync_batchnorm)
    x = conv(config.last_filters, (1, 1, 1), "head_conv")(x)
    x = bn("head_bn", sync_batchnorm)(x)
    x = keras.layers.ReLU(6.0, name="head_relu")(x)
    x = keras.layers.GlobalAveragePooling3D(name="head_pool")(x)
    x = keras.layers.Dropout(config.dropout_rate, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, name="head_logits")(x)
    return keras.Model(inputs, outputs, name=name)


def count_mobilenet3d(config, units, num_classes, input_shape):
    """``Tally`` of the pruned network of ``units`` (what ``build_mobilenet3d`` builds),
    without building it. A kept block: paths (``k_t x 1 x 1`` conv ``c -> t*c`` + BN),
    the depthwise ``1x3x3`` (one 3x3 filter per channel) + BN, the ``1x1x1``
    projection + BN; a skipped block costs nothing (identity or zeros)."""
    tally = Tally()
    t, h, w, c_in = input_shape
    kt, kh, kw = config.stem_kernel
    h, w = -(-h // 2), -(-w // 2)
    tally.conv(kt * kh * kw, c_in, config.stem_filters, t * h * w)
    tally.bn(config.stem_filters)
    channels = config.stem_filters
    for (_, expansion, out, stride), unit in zip(config.block_specs(), units):
        ho, wo = -(-h // stride), -(-w // stride)
        if unit != "none":
            width = channels * expansion
            for path, taps in (("S", 1), ("ST", 3)):
                if path in unit.split("+"):
                    tally.conv(taps, channels, width, t * h * w)
                    tally.bn(width)
            tally.conv(9, width, width, t * ho * wo, groups=width)
            tally.bn(width)
            tally.conv(1, width, out, t * ho * wo)
            tally.bn(out)
        channels, h, w = out, ho, wo
    tally.conv(1, channels, config.last_filters, t * h * w)
    tally.bn(config.last_filters)
    tally.dense(config.last_filters, num_classes)
    return tally
