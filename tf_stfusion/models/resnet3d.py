"""3D ResNet / ResNeXt templates with fusion units in every bottleneck (SPEC §7).

A bottleneck block (post-activation, as ResNet-50 v1), input ``x``::

    S  path:  Conv 1x1x1 (width) -> BN -> [gate S]
    ST path:  Conv 3x1x1 (width) -> BN -> [gate ST]
    (S + ST) -> ReLU -> Conv 1x3x3 (width, groups, spatial stride) -> BN -> ReLU
             -> Conv 1x1x1 (4 x filters) -> BN -> [gate D1] -> + shortcut(x) -> ReLU

so the unit around the block's 3x3 is S = 1x1x1 then 1x3x3 (the 2D block),
ST = 3x1x1 then 1x3x3 ((2+1)D) and S+ST = both summed -- the same three paths
and gates as a DenseNet layer. The gates sit *after* their path's BatchNorm,
so a dropped path contributes exact zeros; dropping D1 removes the residual
branch (the block becomes its shortcut: the identity, or the projection of
the first block of a stage). The Eq. 5 term of a gate uses the convolution of
its path (D1: the 1x3x3). No temporal striding anywhere; channels last.

ResNeXt: ``groups`` = cardinality, width per group ``width_per_group``
(32x4d: 32 groups of 4 channels at the first stage, doubling per stage).
"""

import dataclasses
from typing import Optional, Sequence, Tuple

import keras

from tf_stfusion.layers.group_conv import GroupConv3D
from tf_stfusion.models.common import (Backbone, GateConfig, Tally, bn, conv, post_norm_paths, stem, stem_count,
                                       template_inputs)


@dataclasses.dataclass(frozen=True)
class ResNet3DConfig(Backbone):
    """Explicit architecture of a 3D ResNet / ResNeXt template."""

    block_sizes: Tuple[int, ...] = (3, 4, 6, 3)
    groups: int = 1
    width_per_group: int = 64
    stem_filters: int = 64
    stem_kernel: Tuple[int, int, int] = (5, 7, 7)
    expansion: int = 4
    dropout_rate: float = 0.5

    def layer_names(self):
        return [f"conv{s}/block{b}" for s, n in enumerate(self.block_sizes, start=2) for b in range(1, n + 1)]

    # -- the backbone's hooks (models/__init__.py, prune.py, inflate.py call these) --------
    def build(self, **kwargs):
        return build_resnet3d(self, **kwargs)

    def count(self, units, num_classes, input_shape):
        return count_resnet3d(self, units, num_classes, input_shape)

    def inflate(self, copy, stem_frames):
        inflate_resnet(self, copy, stem_frames)

    def stage_widths(self, stage):
        """(bottleneck width, output channels) of stage 0, 1, 2, 3."""
        width = self.groups * self.width_per_group * 2**stage
        return width, 64 * 2**stage * self.expansion


def bottleneck(x, name, fusion_layer, width, out_channels, stride, groups, unit, make_gate, synchronized):
    """One bottleneck block with its fusion unit; ``unit`` None for the template."""
    shortcut = x
    if stride != 1 or x.shape[-1] != out_channels:
        shortcut = conv(out_channels, (1, 1, 1), f"{name}_shortcut_conv", strides=(1, stride, stride))(x)
        shortcut = bn(f"{name}_shortcut_bn", synchronized)(shortcut)
    if unit == "none":
        return keras.layers.ReLU(name=f"{name}_out")(shortcut)
    h = post_norm_paths(x, name, fusion_layer, width, unit, make_gate, synchronized)
    h = keras.layers.ReLU(name=f"{name}_sum_relu")(h)
    h = GroupConv3D(width, (1, 3, 3), strides=(1, stride, stride), padding="same", groups=groups,
                    use_bias=False, kernel_initializer="he_normal", name=f"{name}_conv")(h)
    h = bn(f"{name}_bn", synchronized)(h)
    h = keras.layers.ReLU(name=f"{name}_relu")(h)
    h = conv(out_channels, (1, 1, 1), f"{name}_expand_conv")(h)
    h = bn(f"{name}_expand_bn", synchronized)(h)
    if make_gate is not None:
        h = make_gate(f"{name}_d1_gate", fusion_layer, "D1", f"{name}_conv")(h)
    h = keras.layers.Add(name=f"{name}_add")([shortcut, h])
    return keras.layers.ReLU(name=f"{name}_out")(h)


def build_resnet3d(
    config: ResNet3DConfig,
    num_classes: int,
    num_frames: Optional[int] = 16,
    input_size=224,
    units: Optional[Sequence[str]] = None,
    gates: GateConfig = GateConfig(),
    sync_batchnorm: bool = False,
    name: str = "resnet3d",
):
    """The template (``units=None``) or the pruned network of ``units``."""
    names = config.layer_names()
    units, make_gate, inputs = template_inputs(names, units, num_frames, input_size, gates)
    sync = sync_batchnorm
    x = stem(inputs, config.stem_filters, config.stem_kernel, sync)
    index = 0
    for stage, num_blocks in enumerate(config.block_sizes):
        width, out_channels = config.stage_widths(stage)
        for b in range(1, num_blocks + 1):
            stride = 2 if (b == 1 and stage > 0) else 1
            unit = None if units is None else units[index]
            x = bottleneck(x, names[index].replace("/", "_"), names[index], width, out_channels, stride,
                           config.groups, unit, make_gate, sync)
            index += 1
    x = keras.layers.GlobalAveragePooling3D(name="head_pool")(x)
    x = keras.layers.Dropout(config.dropout_rate, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, name="head_logits")(x)
    return keras.Model(inputs, outputs, name=name)


def count_resnet3d(config, units, num_classes, input_shape):
    """``Tally`` of the pruned network of ``units`` (what ``build_resnet3d`` builds),
    without building it. A block keeps its projection shortcut (conv + BN) whatever
    its unit; a kept unit adds its paths (``k_t x 1 x 1`` conv + BN at the input
    resolution), the grouped ``1x3x3`` conv + BN (output resolution) and the
    ``1x1x1`` expansion + BN. ``"same"`` padding: a stride ``s`` gives ``ceil(n / s)``."""
    tally = Tally()
    t, h, w = stem_count(tally, input_shape, config.stem_filters, config.stem_kernel)
    channels, index = config.stem_filters, 0
    for stage, num_blocks in enumerate(config.block_sizes):
        width, out = config.stage_widths(stage)
        for b in range(1, num_blocks + 1):
            stride = 2 if (b == 1 and stage > 0) else 1
            ho, wo = -(-h // stride), -(-w // stride)
            if stride != 1 or channels != out:
                tally.conv(1, channels, out, t * ho * wo)
                tally.bn(out)
            unit = units[index]
            index += 1
            if unit != "none":
                for path, taps in (("S", 1), ("ST", 3)):
                    if path in unit.split("+"):
                        tally.conv(taps, channels, width, t * h * w)
                        tally.bn(width)
                tally.conv(9, width, width, t * ho * wo, groups=config.groups)
                tally.bn(width)
                tally.conv(1, width, out, t * ho * wo)
                tally.bn(out)
            channels, h, w = out, ho, wo
    tally.dense(channels, num_classes)
    return tally


def inflate_resnet(config, copy, stem_frames):
    """Keras ``ResNet50`` layer names -> ours; its conv biases fold into the BNs."""
    copy.bn("stem_bn", "conv1_bn", copy.conv("stem_conv", "conv1_conv", stem_frames))
    for stage, n in enumerate(config.block_sizes, start=2):
        for b in range(1, n + 1):
            ours, theirs = f"conv{stage}_block{b}", f"conv{stage}_block{b}"
            for tag, frames in (("s", 1), ("st", 3)):
                copy.bn(f"{ours}_{tag}_bn", f"{theirs}_1_bn", copy.conv(f"{ours}_{tag}_conv", f"{theirs}_1_conv", frames))
            copy.bn(f"{ours}_bn", f"{theirs}_2_bn", copy.conv(f"{ours}_conv", f"{theirs}_2_conv"))
            copy.bn(f"{ours}_expand_bn", f"{theirs}_3_bn", copy.conv(f"{ours}_expand_conv", f"{theirs}_3_conv"))
            if copy.has(f"{ours}_shortcut_conv"):
                copy.bn(f"{ours}_shortcut_bn", f"{theirs}_0_bn",
                        copy.conv(f"{ours}_shortcut_conv", f"{theirs}_0_conv"))
