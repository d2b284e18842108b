"""3D DenseNet template with spatiotemporal fusion units (SPEC §2, "v1d3").

One dense layer, input ``x`` = the concatenation of all earlier feature maps of
its block::

    S  path:  BN -> ReLU -> [gate D2] -> Conv 1x1x1 (4k)
    ST path:  BN -> ReLU -> [gate D3] -> Conv 3x1x1 (4k, temporal)
    (S + ST) -> BN -> ReLU -> [gate D1] -> Conv 1x3x3 (k, spatial) -> concat to x

so the fusion unit is S = 1x1x1 then 1x3x3 (a 2D layer), ST = 3x1x1 then 1x3x3
(a "(2+1)D" layer) and S+ST = both summed. A transition after blocks 1-3 is
BN -> ReLU -> (Conv 1x1x1 + Conv 3x1x1) -> AvgPool 1x2x2 and carries no gates.
No layer strides or pools over time.

``build_densenet3d(config, ..., units=None)`` builds the *template* (every path,
with gates); given ``units`` (one of S/ST/S+ST/none per layer) it builds the
*pruned* network of that strategy: dropped paths, their BatchNorms and gates
are absent and a layer with unit ``none`` adds no channels at all. (Convs that
read a block with a skipped layer get a ``TemporalBias``: the template's zero
channels become constants after the next BatchNorm, which the pruned network
must add back to compute the same function.)

Keras layer names are ``block{b}_layer{l}_{part}``; the fusion layer's name in
strategy files is ``block{b}/layer{l}``.
"""

import dataclasses
from typing import Optional, Sequence, Tuple

import keras
import numpy as np

from tf_stfusion.layers.temporal_bias import TemporalBias
from tf_stfusion.models.common import (BN_EPSILON, Backbone, GateConfig, Tally, bn_relu, conv, stem, stem_count,
                                       template_inputs)


@dataclasses.dataclass(frozen=True)
class DenseNet3DConfig(Backbone):
    """Explicit architecture of a 3D DenseNet template."""

    block_sizes: Tuple[int, ...] = (6, 12, 24, 16)
    growth_rate: int = 32
    bottleneck_factor: int = 4
    stem_filters: int = 64
    stem_kernel: Tuple[int, int, int] = (5, 7, 7)
    compression: float = 0.5
    dropout_rate: float = 0.5

    @property
    def bottleneck_width(self):
        return self.bottleneck_factor * self.growth_rate

    def layer_names(self):
        return [
            f"block{b}/layer{l}"
            for b, n in enumerate(self.block_sizes, start=1)
            for l in range(1, n + 1)
        ]

    # -- the backbone's hooks (models/__init__.py, prune.py, inflate.py call these) --------
    def build(self, **kwargs):
        return build_densenet3d(self, **kwargs)

    def count(self, units, num_classes, input_shape):
        return count_densenet3d(self, units, num_classes, input_shape)

    def copy_pruned(self, template, pruned, strategy):
        return copy_dense_blocks(self, template, pruned, strategy)

    def inflate(self, copy, stem_frames):
        inflate_densenet(self, copy, stem_frames)


def _folded_conv(h, filters, kernel, name, fold):
    """A conv; in a pruned network after a skipped layer (``fold``), followed by
    the ``TemporalBias`` that stands for the skipped layer's constant channels."""
    h = conv(filters, kernel, name)(h)
    return TemporalBias(kernel[0], name=f"{name}_fold")(h) if fold else h


def dense_layer(x, name, fusion_layer, config, unit, make_gate, synchronized, fold=False):
    """One dense layer (fusion unit + 1x3x3 conv); returns the new k channels.

    ``unit`` is None for the template (both paths, gated) or the strategy's unit
    for a pruned network (no gates). Returns None for unit ``none``. ``fold``:
    an earlier layer of the block was skipped (see ``TemporalBias``).
    """
    if unit == "none":
        return None
    width = config.bottleneck_width
    paths = []
    for path, tag, kernel in (("S", "s", (1, 1, 1)), ("ST", "st", (3, 1, 1))):
        if unit is not None and path not in unit.split("+"):
            continue
        h = bn_relu(x, f"{name}_{tag}", synchronized)
        conv_name = f"{name}_{tag}_conv"
        if make_gate is not None:
            h = make_gate(f"{name}_{tag}_gate", fusion_layer, path, conv_name)(h)
        paths.append(_folded_conv(h, width, kernel, conv_name, fold))
    h = keras.layers.Add(name=f"{name}_sum")(paths) if len(paths) > 1 else paths[0]
    h = bn_relu(h, name, synchronized)
    if make_gate is not None:
        h = make_gate(f"{name}_d1_gate", fusion_layer, "D1", f"{name}_conv")(h)
    return conv(config.growth_rate, (1, 3, 3), f"{name}_conv")(h)


def transition(x, filters, name, synchronized, fold=False):
    """BN -> ReLU -> (1x1x1 + 3x1x1) -> AvgPool 1x2x2; halves the channels."""
    h = bn_relu(x, name, synchronized)
    s = _folded_conv(h, filters, (1, 1, 1), f"{name}_s_conv", fold)
    st = _folded_conv(h, filters, (3, 1, 1), f"{name}_st_conv", fold)
    h = keras.layers.Add(name=f"{name}_sum")([s, st])
    return keras.layers.AveragePooling3D((1, 2, 2), strides=(1, 2, 2), name=f"{name}_pool")(h)


def build_densenet3d(
    config: DenseNet3DConfig,
    num_classes: int,
    num_frames: Optional[int] = 16,
    input_size=224,
    units: Optional[Sequence[str]] = None,
    gates: GateConfig = GateConfig(),
    sync_batchnorm: bool = False,
    name: str = "densenet3d",
):
    """Builds the template (``units=None``) or the pruned network of ``units``.

    Input: ``[batch, num_frames, H, W, 3]`` float clips (ImageNet-normalised);
    output: ``num_classes`` logits. ``input_size`` is an int or ``(H, W)``;
    ``num_frames`` or sizes may be None for a shape-polymorphic model.
    """
    layer_names = config.layer_names()
    units, make_gate, inputs = template_inputs(layer_names, units, num_frames, input_size, gates)
    sync = sync_batchnorm
    x = stem(inputs, config.stem_filters, config.stem_kernel, sync)
    channels = config.stem_filters
    index = 0
    for b, num_layers in enumerate(config.block_sizes, start=1):
        skipped = False  # a layer of this block was skipped: later consumers fold its constants
        for l in range(1, num_layers + 1):
            unit = None if units is None else units[index]
            new = dense_layer(
                x, f"block{b}_layer{l}", layer_names[index], config, unit, make_gate, sync, skipped
            )
            skipped = skipped or unit == "none"
            index += 1
            if new is not None:
                x = keras.layers.Concatenate(name=f"block{b}_layer{l}_concat")([x, new])
            channels += config.growth_rate
        if b < len(config.block_sizes):
            # The template's channel count sets the transition width, so a pruned
            # network keeps the template's transitions (and their weights).
            channels = int(channels * config.compression)
            x = transition(x, channels, f"transition{b}", sync, skipped)
    x = bn_relu(x, "head", sync)
    x = keras.layers.GlobalAveragePooling3D(name="head_pool")(x)
    x = keras.layers.Dropout(config.dropout_rate, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, name="head_logits")(x)
    return keras.Model(inputs, outputs, name=name)


def count_densenet3d(config, units, num_classes, input_shape):
    """``Tally`` of the pruned network of ``units`` (what ``build_densenet3d`` builds),
    without building it. Per dense layer with ``c`` input channels: each kept path
    is BN(c) + a ``k_t x 1 x 1`` conv ``c -> 4k`` (+ a ``TemporalBias`` of ``k_t x 4k``
    taps once an earlier layer of the block was skipped), then BN(4k) and the
    ``1x3x3`` conv ``4k -> k``. Transitions keep the template's width; the head
    BN and classifier read the kept channels."""
    tally = Tally(part="stem")
    t, h, w = stem_count(tally, input_shape, config.stem_filters, config.stem_kernel)
    names = config.layer_names()
    width, growth = config.bottleneck_width, config.growth_rate
    kept = template = config.stem_filters
    index = 0
    for b, num_layers in enumerate(config.block_sizes, start=1):
        positions = t * h * w
        skipped = False
        for _ in range(num_layers):
            unit, tally.part = units[index], names[index]
            index += 1
            template += growth
            if unit == "none":
                skipped = True
                continue
            for path, taps in (("S", 1), ("ST", 3)):
                if path in unit.split("+"):
                    tally.bn(kept)
                    tally.conv(taps, kept, width, positions)
                    if skipped:
                        tally.weights(taps * width)
            tally.bn(width)
            tally.conv(9, width, growth, positions)
            kept += growth
        if b < len(config.block_sizes):
            template = int(template * config.compression)
            tally.part = f"transition{b}"
            tally.bn(kept)
            for taps in (1, 3):
                tally.conv(taps, kept, template, positions)
                if skipped:
                    tally.weights(taps * template)
            kept = template
            h, w = h // 2, w // 2
    tally.part = "head"
    tally.bn(kept)
    tally.dense(kept, num_classes)
    return tally


# -- pruning: the template's weights into the pruned network ------------------------------
def block_layout(config, template):
    """Per dense block: ``(base channels, growth, layer names)`` of the concatenation."""
    names = config.layer_names()
    layout, index = [], 0
    for b, n in enumerate(config.block_sizes, start=1):
        base = template.get_layer(f"block{b}_layer1_s_bn").gamma.shape[0]
        layout.append((base, config.growth_rate, names[index:index + n]))
        index += n
    return layout


def _bn_constants(bn, channels):
    gamma, beta, mean, var = (np.asarray(w) for w in bn.get_weights())
    return np.maximum(beta[channels] - gamma[channels] * mean[channels] / np.sqrt(var[channels] + BN_EPSILON), 0.0)


def _copy_bn(src, dst, keep):
    dst.set_weights([np.asarray(w)[keep] for w in src.get_weights()])


def _copy_conv(template, pruned, name, keep, dropped, consumer_bn):
    """Kernel at the kept input channels; the dropped channels' constants to the fold layer."""
    kernel = np.asarray(template.get_layer(name).kernel)
    pruned.get_layer(name).set_weights([kernel[:, :, :, keep, :]])
    if dropped.size:
        c = _bn_constants(template.get_layer(consumer_bn), dropped)  # [dropped]
        taps = np.einsum("j,kjo->ko", c, kernel[:, 0, 0, dropped, :])
        pruned.get_layer(f"{name}_fold").set_weights([taps.astype(np.float32)])


def copy_dense_blocks(config, template, pruned, strategy):
    """Dense blocks, transitions and head: kept channels, folded constants (see
    ``models/prune.py``). Returns the names of the layers done; the rest has the
    template's shapes and is copied by name."""
    units = dict(strategy.layers)
    handled = set()
    layout = block_layout(config, template)
    for b, (base, growth, names) in enumerate(layout, start=1):
        keep = list(range(base))
        dropped = []
        for name in names:
            prefix = name.replace("/", "_")  # block1/layer2 -> Keras names block1_layer2_*
            unit = units[name]
            if unit != "none":
                for path, tag in (("S", "s"), ("ST", "st")):
                    if path in unit.split("+"):
                        _copy_bn(template.get_layer(f"{prefix}_{tag}_bn"), pruned.get_layer(f"{prefix}_{tag}_bn"), keep)
                        _copy_conv(template, pruned, f"{prefix}_{tag}_conv", np.array(keep), np.array(dropped, int),
                                   f"{prefix}_{tag}_bn")
                        handled.update({f"{prefix}_{tag}_bn", f"{prefix}_{tag}_conv", f"{prefix}_{tag}_conv_fold"})
            start = len(keep) + len(dropped)  # this layer's channels in the template's concatenation
            (dropped if unit == "none" else keep).extend(range(start, start + growth))
        keep, dropped = np.array(keep), np.array(dropped, int)
        if b < len(layout):
            prefix = f"transition{b}"
            _copy_bn(template.get_layer(f"{prefix}_bn"), pruned.get_layer(f"{prefix}_bn"), keep)
            for tag in ("s", "st"):
                _copy_conv(template, pruned, f"{prefix}_{tag}_conv", keep, dropped, f"{prefix}_bn")
                handled.update({f"{prefix}_{tag}_conv", f"{prefix}_{tag}_conv_fold"})
            handled.add(f"{prefix}_bn")
        else:
            _copy_bn(template.get_layer("head_bn"), pruned.get_layer("head_bn"), keep)
            kernel, bias = (np.asarray(w) for w in template.get_layer("head_logits").get_weights())
            if dropped.size:
                # Global average pooling of a constant channel is that constant.
                bias = bias + _bn_constants(template.get_layer("head_bn"), dropped) @ kernel[dropped]
            pruned.get_layer("head_logits").set_weights([kernel[keep], bias.astype(np.float32)])
            handled.update({"head_bn", "head_logits"})
    return handled


# -- ImageNet inflation: Keras' 2D DenseNet-121 -------------------------------------------
def inflate_densenet(config, copy, stem_frames):
    """Keras ``DenseNet121`` layer names -> ours (see ``models/inflate.py`` for the rule)."""
    copy.conv("stem_conv", "conv1_conv", stem_frames)
    copy.bn("stem_bn", "conv1_bn")
    for b, n in enumerate(config.block_sizes, start=1):
        for l in range(1, n + 1):
            ours, theirs = f"block{b}_layer{l}", f"conv{b + 1}_block{l}"
            for tag, frames in (("s", 1), ("st", 3)):
                copy.bn(f"{ours}_{tag}_bn", f"{theirs}_0_bn")
                copy.conv(f"{ours}_{tag}_conv", f"{theirs}_1_conv", frames)
            copy.bn(f"{ours}_bn", f"{theirs}_1_bn")
            copy.conv(f"{ours}_conv", f"{theirs}_2_conv")
        if b < len(config.block_sizes):
            copy.bn(f"transition{b}_bn", f"pool{b + 1}_bn")
            copy.conv(f"transition{b}_s_conv", f"pool{b + 1}_conv", 1, scale=0.5)
            copy.conv(f"transition{b}_st_conv", f"pool{b + 1}_conv", 3, scale=0.5)
    copy.bn("head_bn", "bn")
