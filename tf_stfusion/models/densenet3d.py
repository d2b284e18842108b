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

from tf_stfusion.layers.drop_path import VariationalDropPath
from tf_stfusion.layers.temporal_bias import TemporalBias

UNITS = ("S", "ST", "S+ST", "none")
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9


@dataclasses.dataclass(frozen=True)
class DenseNet3DConfig:
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


def _bn(name, synchronized):
    return keras.layers.BatchNormalization(
        epsilon=BN_EPSILON, momentum=BN_MOMENTUM, synchronized=synchronized, name=name
    )


def _conv(filters, kernel, name, strides=(1, 1, 1)):
    # No bias: a BatchNorm follows, and a gated-off path then contributes exactly 0.
    return keras.layers.Conv3D(
        filters,
        kernel,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=name,
    )


def _bn_relu(x, name, synchronized):
    x = _bn(f"{name}_bn", synchronized)(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def stem(inputs, filters, kernel, synchronized):
    """Conv ``kT x 7 x 7`` stride (1, 2, 2) -> BN -> ReLU -> MaxPool 1x3x3 stride (1, 2, 2).

    Padded like Keras' 2D ImageNet models (zero padding of 3 then a "valid"
    conv, padding of 1 then a "valid" pool) so that inflated ImageNet weights
    see the same pixels; over time the conv is "same" (``kT // 2`` frames each side).
    """
    kt, kh, kw = kernel
    x = keras.layers.ZeroPadding3D(((kt // 2, kt // 2), (kh // 2, kh // 2), (kw // 2, kw // 2)),
                                   name="stem_pad")(inputs)
    x = keras.layers.Conv3D(filters, kernel, strides=(1, 2, 2), padding="valid", use_bias=False,
                            kernel_initializer="he_normal", name="stem_conv")(x)
    x = _bn_relu(x, "stem", synchronized)
    x = keras.layers.ZeroPadding3D(((0, 0), (1, 1), (1, 1)), name="stem_pool_pad")(x)  # after ReLU: >= 0
    return keras.layers.MaxPooling3D((1, 3, 3), strides=(1, 2, 2), name="stem_pool")(x)


def template_inputs(layer_names, units, num_frames, input_size, init_drop_prob, temperature, seed):
    """Shared start of every builder: checked ``units`` (None: template), the gate
    factory (None for a pruned network) and the ``clip`` input."""
    if units is not None:
        units = list(units)
        if len(units) != len(layer_names):
            raise ValueError(f"expected {len(layer_names)} units, got {len(units)}")
        bad = [u for u in units if u not in UNITS]
        if bad:
            raise ValueError(f"unknown unit(s) {bad}; expected one of {UNITS}")
    if isinstance(input_size, int) or input_size is None:
        input_size = (input_size, input_size)
    make_gate = _GateFactory(init_drop_prob, temperature, seed) if units is None else None
    return units, make_gate, keras.Input((num_frames, *input_size, 3), name="clip")


def post_norm_paths(x, name, fusion_layer, width, unit, make_gate, synchronized):
    """S path Conv 1x1x1 -> BN -> [gate S] and ST path Conv 3x1x1 -> BN -> [gate ST],
    summed: the fusion unit of the post-activation blocks (ResNet, MobileNetV2).
    The gates follow the BatchNorms, so a dropped path adds exact zeros."""
    paths = []
    for path, tag, kernel in (("S", "s", (1, 1, 1)), ("ST", "st", (3, 1, 1))):
        if unit is not None and path not in unit.split("+"):
            continue
        h = _conv(width, kernel, f"{name}_{tag}_conv")(x)
        h = _bn(f"{name}_{tag}_bn", synchronized)(h)
        if make_gate is not None:
            h = make_gate(f"{name}_{tag}_gate", fusion_layer, path, f"{name}_{tag}_conv")(h)
        paths.append(h)
    return keras.layers.Add(name=f"{name}_sum")(paths) if len(paths) > 1 else paths[0]


class _GateFactory:
    """Makes the gates of one template with distinct, reproducible seeds."""

    def __init__(self, init_drop_prob, temperature, seed):
        self.init_drop_prob = init_drop_prob
        self.temperature = temperature
        self.seed = seed
        self.count = 0

    def __call__(self, name, fusion_layer, path, feeds):
        self.count += 1
        seed = None if self.seed is None else self.seed * 1000 + self.count
        return VariationalDropPath(
            init_drop_prob=self.init_drop_prob,
            temperature=self.temperature,
            fusion_layer=fusion_layer,
            branch=path,
            feeds=feeds,
            seed=seed,
            name=name,
        )


def _folded_conv(h, filters, kernel, name, fold):
    """A conv; in a pruned network after a skipped layer (``fold``), followed by
    the ``TemporalBias`` that stands for the skipped layer's constant channels."""
    h = _conv(filters, kernel, name)(h)
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
        h = _bn_relu(x, f"{name}_{tag}", synchronized)
        conv_name = f"{name}_{tag}_conv"
        if make_gate is not None:
            h = make_gate(f"{name}_{tag}_gate", fusion_layer, path, conv_name)(h)
        paths.append(_folded_conv(h, width, kernel, conv_name, fold))
    h = keras.layers.Add(name=f"{name}_sum")(paths) if len(paths) > 1 else paths[0]
    h = _bn_relu(h, name, synchronized)
    if make_gate is not None:
        h = make_gate(f"{name}_d1_gate", fusion_layer, "D1", f"{name}_conv")(h)
    return _conv(config.growth_rate, (1, 3, 3), f"{name}_conv")(h)


def transition(x, filters, name, synchronized, fold=False):
    """BN -> ReLU -> (1x1x1 + 3x1x1) -> AvgPool 1x2x2; halves the channels."""
    h = _bn_relu(x, name, synchronized)
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
    init_drop_prob: float = 0.1,
    temperature: float = 0.2,
    sync_batchnorm: bool = False,
    seed: Optional[int] = None,
    name: str = "densenet3d",
):
    """Builds the template (``units=None``) or the pruned network of ``units``.

    Input: ``[batch, num_frames, H, W, 3]`` float clips (ImageNet-normalised);
    output: ``num_classes`` logits. ``input_size`` is an int or ``(H, W)``;
    ``num_frames`` or sizes may be None for a shape-polymorphic model.
    """
    layer_names = config.layer_names()
    units, make_gate, inputs = template_inputs(layer_names, units, num_frames, input_size, init_drop_prob,
                                               temperature, seed)
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
    x = _bn_relu(x, "head", sync)
    x = keras.layers.GlobalAveragePooling3D(name="head_pool")(x)
    x = keras.layers.Dropout(config.dropout_rate, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, name="head_logits")(x)
    return keras.Model(inputs, outputs, name=name)
