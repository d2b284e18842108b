"""What every backbone builder shares: the fusion unit's gates, BatchNorms and
convolutions, the padded stem, the checked start of a build, counting without
building, and copying 2D ImageNet weights (inflation).

Builders take explicit arguments and never read flags; a template's gates are
configured by one small object, ``GateConfig``.
"""

import dataclasses
from typing import Optional

import keras
import numpy as np

from tf_stfusion.layers.drop_path import VariationalDropPath
from tf_stfusion.units import UNITS  # noqa: F401  (re-exported: models.UNITS)
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9


@dataclasses.dataclass(frozen=True)
class GateConfig:
    """The v-DropPath gates of a template: initial drop probability ``p`` (paper 0.1),
    relaxation temperature ``tau`` (0.2) and the seed of their noise streams."""

    init_drop_prob: float = 0.1
    temperature: float = 0.2
    seed: Optional[int] = None


def bn(name, synchronized):
    return keras.layers.BatchNormalization(
        epsilon=BN_EPSILON, momentum=BN_MOMENTUM, synchronized=synchronized, name=name
    )


def conv(filters, kernel, name, strides=(1, 1, 1)):
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


def bn_relu(x, name, synchronized):
    x = bn(f"{name}_bn", synchronized)(x)
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
    x = bn_relu(x, "stem", synchronized)
    x = keras.layers.ZeroPadding3D(((0, 0), (1, 1), (1, 1)), name="stem_pool_pad")(x)  # after ReLU: >= 0
    return keras.layers.MaxPooling3D((1, 3, 3), strides=(1, 2, 2), name="stem_pool")(x)


def template_inputs(layer_names, units, num_frames, input_size, gates: GateConfig):
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
    make_gate = GateFactory(gates) if units is None else None
    return units, make_gate, keras.Input((num_frames, *input_size, 3), name="clip")


def post_norm_paths(x, name, fusion_layer, width, unit, make_gate, synchronized):
    """S path Conv 1x1x1 -> BN -> [gate S] and ST path Conv 3x1x1 -> BN -> [gate ST],
    summed: the fusion unit of the post-activation blocks (ResNet, MobileNetV2).
    The gates follow the BatchNorms, so a dropped path adds exact zeros."""
    paths = []
    for path, tag, kernel in (("S", "s", (1, 1, 1)), ("ST", "st", (3, 1, 1))):
        if unit is not None and path not in unit.split("+"):
            continue
        h = conv(width, kernel, f"{name}_{tag}_conv")(x)
        h = bn(f"{name}_{tag}_bn", synchronized)(h)
        if make_gate is not None:
            h = make_gate(f"{name}_{tag}_gate", fusion_layer, path, f"{name}_{tag}_conv")(h)
        paths.append(h)
    return keras.layers.Add(name=f"{name}_sum")(paths) if len(paths) > 1 else paths[0]


class Backbone:
    """The hooks every backbone config provides (``models/__init__.py``, ``prune.py``,
    ``inflate.py``, ``accounting.py`` call them; nothing outside ``models/`` branches
    on a config's type):

    * ``build(**kwargs)`` -> the template or a pruned Keras model;
    * ``count(units, num_classes, input_shape)`` -> a ``Tally`` (params, FLOPs) without building;
    * ``copy_pruned(template, pruned, strategy)`` -> names of the layers it filled itself,
      for what copying layers by name cannot do (default: nothing; a skipped block that
      leaves no channels behind needs no more than the copy);
    * ``inflate(copy, stem_frames)`` -> Keras' 2D ImageNet weights into the template
      (only backbones listed in ``inflate.INFLATABLE`` have it).
    """

    def copy_pruned(self, template, pruned, strategy):
        return set()


class GateFactory:
    """Makes the gates of one template with distinct, reproducible seeds."""

    def __init__(self, gates: GateConfig):
        self.gates = gates
        self.count = 0

    def __call__(self, name, fusion_layer, path, feeds):
        self.count += 1
        seed = None if self.gates.seed is None else self.gates.seed * 1000 + self.count
        return VariationalDropPath(
            init_drop_prob=self.gates.init_drop_prob,
            temperature=self.gates.temperature,
            fusion_layer=fusion_layer,
            branch=path,
            feeds=feeds,
            seed=seed,
            name=name,
        )


@dataclasses.dataclass
class Tally:
    """Parameters (trainable, all) and FLOPs (2 per multiply-add) being added up;
    ``flops_by_part`` splits the FLOPs by the ``part`` being counted (a count
    function names them: fusion layers by their names, ``stem``, ``transition1``,
    ``head``, as ``latency.fixed_parts`` names a network's pieces)."""

    params: int = 0
    params_with_bn_stats: int = 0
    flops: int = 0
    part: str = "other"
    flops_by_part: dict = dataclasses.field(default_factory=dict)

    def _add_flops(self, flops):
        self.flops += flops
        self.flops_by_part[self.part] = self.flops_by_part.get(self.part, 0) + flops

    def conv(self, kernel, c_in, c_out, positions, groups=1):
        """A bias-free conv of kernel volume ``kernel`` with ``positions`` outputs per channel."""
        weights = kernel * (c_in // groups) * c_out
        self.params += weights
        self.params_with_bn_stats += weights
        self._add_flops(2 * positions * c_out * kernel * (c_in // groups))

    def bn(self, channels):
        """BatchNorm: gamma, beta trainable; moving mean and variance not."""
        self.params += 2 * channels
        self.params_with_bn_stats += 4 * channels

    def weights(self, count):
        """Other trainable weights (a TemporalBias' taps)."""
        self.params += count
        self.params_with_bn_stats += count

    def dense(self, c_in, c_out):
        self.weights(c_in * c_out + c_out)
        self._add_flops(2 * c_in * c_out)


def stem_count(tally, input_shape, filters, kernel):
    """The stem of ``stem()``: padded 7x7 stride-2 conv + BN, padded 3x3 stride-2 max-pool.
    Returns the (frames, height, width) after it."""
    t, h, w = input_shape[:3]
    kt, kh, kw = kernel
    h, w = (h + 2 * (kh // 2) - kh) // 2 + 1, (w + 2 * (kw // 2) - kw) // 2 + 1  # "valid" after the padding
    tally.conv(kt * kh * kw, input_shape[3], filters, t * h * w)
    tally.bn(filters)
    return t, (h + 2 - 3) // 2 + 1, (w + 2 - 3) // 2 + 1


# -- ImageNet inflation ------------------------------------------------------------------
def temporal(kernel_2d, frames):
    """``[kH, kW, Cin, Cout]`` -> ``[frames, kH, kW, Cin, Cout]``, repeated and divided by ``frames``."""
    return np.repeat(np.asarray(kernel_2d)[None], frames, axis=0) / frames


def _bn_weights(bn2d, bias=None):
    gamma, beta, mean, var = (np.asarray(w) for w in bn2d.get_weights())
    if bias is not None:
        mean = mean - bias  # BN(conv + b) with mean m equals BN(conv) with mean m - b
    return [gamma, beta, mean, var]


class Copier:
    """Copies a Keras 2D model's weights into a 3D model layer by layer (the
    backbones' ``inflate`` hooks say which to which)."""

    def __init__(self, model, model2d):
        self.model, self.model2d, self.done = model, model2d, []
        self.names = {layer.name for layer in model.layers}

    def has(self, name):
        return name in self.names

    def conv(self, name, name2d, frames=1, scale=1.0):
        """Conv weights; returns the 2D bias (or None) for the following BN."""
        weights = self.model2d.get_layer(name2d).get_weights()
        if self.has(name):
            self.model.get_layer(name).set_weights([temporal(weights[0], frames) * scale])
            self.done.append(name)
        return np.asarray(weights[1]) * scale if len(weights) > 1 else None

    def bn(self, name, name2d, bias=None):
        if self.has(name):
            self.model.get_layer(name).set_weights(_bn_weights(self.model2d.get_layer(name2d), bias))
            self.done.append(name)
