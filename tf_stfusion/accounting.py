"""Cost accounting: parameters and FLOPs of a template under a strategy.

The cost of a strategy is the cost of its *pruned* network (the network that
``build_template(..., units=...)`` builds and the exporter ships): dropped
paths, their BatchNorms and a skipped layer's channels in every later layer
cost nothing.

Counting rules:
* ``params``: trainable weights (kernels, BN scale/offset, classifier) -- what
  the paper's tables count; ``params_with_bn_stats`` adds BN moving statistics.
* ``flops``: convolutions and the classifier only, one multiply-add = 2 FLOPs;
  ``macs`` = flops / 2. BatchNorm, ReLU, pooling and additions are not counted
  (well under 1% here). Papers that say "FLOPs" often mean MACs.
"""

import dataclasses
import math

import keras

from tf_stfusion.models import backbone_config, layer_names, spec_of


@dataclasses.dataclass(frozen=True)
class Cost:
    params: int
    params_with_bn_stats: int
    flops: int
    input_shape: tuple

    @property
    def macs(self):
        return self.flops // 2

    @property
    def gflops(self):
        return self.flops / 1e9

    @property
    def gmacs(self):
        return self.macs / 1e9

    def to_dict(self):
        return {
            "params": self.params,
            "params_with_bn_stats": self.params_with_bn_stats,
            "flops": self.flops,
            "gflops": self.gflops,
            "gmacs": self.gmacs,
            "input_shape": list(self.input_shape),
        }


def layer_flops(layer):
    """FLOPs (2 per multiply-add) of one Conv3D or Dense layer, else 0."""
    if isinstance(layer, keras.layers.Conv3D):
        out = layer.output.shape  # [batch, T, H, W, C_out]
        c_in = layer.input.shape[-1]
        macs = math.prod(out[1:4]) * out[-1] * math.prod(layer.kernel_size) * c_in // layer.groups
        return 2 * macs
    if isinstance(layer, keras.layers.Dense):
        return 2 * layer.input.shape[-1] * layer.units
    return 0


def count_model(model):
    """(trainable params, all params, FLOPs) of a built functional model."""
    trainable = sum(math.prod(v.shape) for v in model.trainable_weights)
    total = sum(math.prod(v.shape) for v in model.weights)
    return trainable, total, sum(layer_flops(l) for l in model.layers)


def cost(model_or_backbone, strategy=None, input_shape=(16, 224, 224, 3), num_classes=None):
    """Cost of ``strategy`` (None: the full template, every path) at ``input_shape``.

    ``model_or_backbone`` is a template from ``build_template`` (its backbone and
    class count are used) or a backbone name (then give ``num_classes``). Counted
    by the backbone's own formula (``config.count``: the pruned network's layers
    worked out from the architecture, without building it -- a search costs
    a hundred strategies); ``count_model(build_template(..., units=...))``
    counts the same from a built network.
    """
    if isinstance(model_or_backbone, str):
        backbone = model_or_backbone
        if num_classes is None:
            raise ValueError("cost(backbone_name, ...) needs num_classes")
    else:
        spec = spec_of(model_or_backbone)
        backbone = spec.backbone
        num_classes = num_classes or spec.num_classes
    if strategy is not None and strategy.backbone != backbone:
        raise ValueError(f"strategy is for backbone {strategy.backbone!r}, not {backbone!r}")
    units = strategy.units if strategy is not None else ["S+ST"] * len(layer_names(backbone))
    if len(input_shape) != 4 or input_shape[3] != 3:
        raise ValueError(f"input_shape must be (frames, height, width, 3), got {input_shape}")
    tally = backbone_config(backbone).count(units, num_classes, tuple(input_shape))
    return Cost(tally.params, tally.params_with_bn_stats, tally.flops, tuple(input_shape))
