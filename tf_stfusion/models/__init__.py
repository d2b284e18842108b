"""Backbone registry: a name -> an explicit architecture config.

Each config knows its backbone: ``build(...)`` (the template, or with ``units``
the pruned network of a strategy), ``count(...)`` (params and FLOPs of a pruned
network without building it), ``copy_pruned(...)`` (the template's weights into
its pruned network, used by ``models.prune``) and, for those with a Keras 2D
ImageNet counterpart, ``inflate(...)`` (``models.inflate``) -- so nothing outside
``models/`` branches on a backbone's config type. Builders take explicit
arguments and never read flags. ``layer_names`` answers without building
anything, so that a strategy file can be checked first.
"""

import dataclasses
from typing import Optional, Sequence, Tuple

from tf_stfusion.models.common import UNITS, GateConfig
from tf_stfusion.models.densenet3d import DenseNet3DConfig
from tf_stfusion.models.mobilenet3d import MobileNetV23DConfig
from tf_stfusion.models.resnet3d import ResNet3DConfig

BACKBONES = {
    "densenet121": DenseNet3DConfig(),
    # Same topology, CPU-sized: tests and the demo.
    # No dropout: with 32 features before the classifier, dropout 0.5 slowed learning several-fold.
    "tiny": DenseNet3DConfig(block_sizes=(2, 2, 2, 2), growth_rate=8, stem_filters=16, dropout_rate=0.0),
    "resnet50": ResNet3DConfig(block_sizes=(3, 4, 6, 3)),
    "resnext50_32x4d": ResNet3DConfig(block_sizes=(3, 4, 6, 3), groups=32, width_per_group=4),
    "resnext101_32x4d": ResNet3DConfig(block_sizes=(3, 4, 23, 3), groups=32, width_per_group=4),
    "mobilenet_v2": MobileNetV23DConfig(),
}


@dataclasses.dataclass(frozen=True)
class TemplateSpec:
    """What a template was built from; attached to it as ``model.stf_spec``."""

    backbone: str
    num_classes: int
    num_frames: Optional[int]
    input_size: Tuple[Optional[int], Optional[int]]


def backbone_config(backbone):
    try:
        return BACKBONES[backbone]
    except KeyError:
        raise ValueError(
            f"unknown backbone {backbone!r}; expected one of {sorted(BACKBONES)}"
        ) from None


def layer_names(backbone):
    """The fusion layers of a backbone in order, e.g. ``["block1/layer1", ...]``."""
    return backbone_config(backbone).layer_names()


def _input_size(input_size):
    if isinstance(input_size, int) or input_size is None:
        return (input_size, input_size)
    return tuple(input_size)


def build_template(
    backbone="densenet121",
    num_classes=400,
    num_frames=16,
    input_size=224,
    units: Optional[Sequence[str]] = None,
    gates: Optional[GateConfig] = None,
    sync_batchnorm=False,
    **gate_settings,
):
    """Builds a backbone's template (all paths, gated) or, with ``units``, the
    pruned network of that strategy. The gates are set by ``gates`` (a
    ``GateConfig``) or by its fields as keywords (``init_drop_prob``,
    ``temperature``, ``seed``)."""
    config = backbone_config(backbone)
    unknown = set(gate_settings) - {f.name for f in dataclasses.fields(GateConfig)}
    if unknown:
        raise TypeError(f"build_template() got unexpected keyword argument(s) {sorted(unknown)}")
    if gates is not None and gate_settings:
        raise TypeError("give the gates' settings as gates=GateConfig(...) or as keywords, not both")
    kind = "template" if units is None else "pruned"
    model = config.build(
        num_classes=num_classes,
        num_frames=num_frames,
        input_size=input_size,
        units=units,
        gates=gates or GateConfig(**gate_settings),
        sync_batchnorm=sync_batchnorm,
        name=f"{backbone}_{kind}",
    )
    model.stf_spec = TemplateSpec(backbone, num_classes, num_frames, _input_size(input_size))
    return model


def spec_of(model):
    """The TemplateSpec of a model made by ``build_template``."""
    spec = getattr(model, "stf_spec", None)
    if spec is None:
        raise ValueError(
            f"model {model.name!r} was not built by tf_stfusion.build_template"
        )
    return spec


__all__ = [
    "BACKBONES",
    "UNITS",
    "DenseNet3DConfig",
    "GateConfig",
    "ResNet3DConfig",
    "TemplateSpec",
    "backbone_config",
    "build_template",
    "layer_names",
    "spec_of",
]
