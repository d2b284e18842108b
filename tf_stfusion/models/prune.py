"""Template weights -> the pruned network of a strategy (a model transform).

The pruned network (``build_template(..., units=...)``) has only the kept
paths; its layers carry the template's names, so weights are copied by name.
Where a backbone needs more than a copy, its ``copy_pruned`` hook does it
first -- a DenseNet:

* channels: a skipped layer (``none``) adds no channels in the pruned network,
  so every layer that reads a dense block's concatenation (the S/ST BatchNorms
  and convs of later layers, the transition, the head BatchNorm) takes the
  template's weights at the *kept* channel indices only;
* constants: in the template those channels are exact zeros, which the
  consumer's BatchNorm + ReLU turns into ``c = relu(beta - gamma * mean /
  sqrt(var + eps))``; their contribution through the consumer's conv is folded
  into the pruned network's ``TemporalBias`` layers (and the head's into the
  classifier's bias).

The pruned network then computes the same function as the template in fixed
mode with that strategy.
"""

from tf_stfusion.models import backbone_config, build_template, spec_of


def prune(template, strategy):
    """The pruned Keras model of ``strategy`` with the template's weights."""
    strategy.check_model(template)
    spec = spec_of(template)
    pruned = build_template(spec.backbone, num_classes=spec.num_classes, num_frames=spec.num_frames,
                            input_size=spec.input_size, units=strategy.units)
    handled = backbone_config(spec.backbone).copy_pruned(template, pruned, strategy)
    for layer in pruned.layers:
        if layer.name in handled or not layer.weights:
            continue
        layer.set_weights(template.get_layer(layer.name).get_weights())
    return pruned
