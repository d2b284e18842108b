"""Template weights -> the pruned network of a strategy.

The pruned network (``build_template(..., units=...)``) has only the kept
paths; its layers carry the template's names, so weights are copied by name.
Two things need more than a copy:

* channels: a skipped layer (``none``) adds no channels in the pruned network,
  so every layer that reads a dense block's concatenation (the S/ST BatchNorms
  and convs of later layers, the transition, the head BatchNorm) takes the
  template's weights at the *kept* channel indices only;
* constants: in the template those channels are exact zeros, which the
  consumer's BatchNorm + ReLU turns into ``c = relu(beta - gamma * mean /
  sqrt(var + eps))``; their contribution through the consumer's conv is folded
  into the pruned network's ``TemporalBias`` layers (and the head's into the
  classifier's bias). The pruned network then computes the same function as
  the template in fixed mode with that strategy.
"""

import numpy as np

from tf_stfusion.models import backbone_config, build_template, spec_of
from tf_stfusion.models.densenet3d import BN_EPSILON, DenseNet3DConfig


def block_layout(template):
    """Per dense block: ``(base channels, growth, layer names)`` of the concatenation."""
    config = backbone_config(spec_of(template).backbone)
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


def prune(template, strategy):
    """The pruned Keras model of ``strategy`` with the template's weights."""
    strategy.check_model(template)
    spec = spec_of(template)
    pruned = build_template(spec.backbone, num_classes=spec.num_classes, num_frames=spec.num_frames,
                            input_size=spec.input_size, units=strategy.units)
    handled = set()
    if isinstance(backbone_config(spec.backbone), DenseNet3DConfig):
        handled = _copy_dense_blocks(template, pruned, strategy)
    # Everything else (and every layer of residual backbones, whose skipped blocks
    # leave no channels behind) has the template's shapes: copy by name.
    for layer in pruned.layers:
        if layer.name in handled or not layer.weights:
            continue
        layer.set_weights(template.get_layer(layer.name).get_weights())
    return pruned


def _copy_dense_blocks(template, pruned, strategy):
    """Dense blocks, transitions and head: kept channels, folded constants. Returns the layers done."""
    units = dict(strategy.layers)
    handled = set()
    layout = block_layout(template)
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
