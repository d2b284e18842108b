"""ImageNet initialisation: inflate Keras' 2D DenseNet-121 / ResNet-50 into a
template (``--init=imagenet``), with the authors' rule:

* the stem kernel ``7x7`` is repeated over its ``kT`` frames and divided by ``kT``;
* each ``3x1x1`` temporal conv takes the matching ``1x1`` weights repeated 3
  times and divided by 3; each ``1x1x1`` / ``1x3x3`` conv takes the 2D ``1x1`` /
  ``3x3`` weights as they are; BatchNorms are copied.

On a clip of identical frames every inflated conv then computes the 2D conv
of each frame (away from the temporal borders, where "same" zero padding
hides taps), so an S-only network reproduces the 2D network. Two choices of
ours where the 3D network sums two branches that the 2D one has once: a
DenseNet transition's ``1x1x1`` and ``3x1x1`` convs each get *half* the 2D
weights (the sum equals the 2D conv on static clips); a unit's S and ST paths
each get the full 2D weights, so an S+ST unit starts at twice the 2D response
and the warm-up's BatchNorm statistics absorb it. Keras' ResNet-50 convs have
biases and ours do not (a BatchNorm follows): a bias is folded into the BN's
moving mean. ResNet: Keras strides its 1x1 conv at a stage's first block, we
stride the 1x3x3 (as torchvision), so outputs match exactly through ``conv2``.
Biases of the 2D BNs use epsilon 1.001e-5 against our 1e-5 (differences ~1e-6).
"""

from tf_stfusion.models import backbone_config, spec_of
from tf_stfusion.models.common import Copier, temporal  # noqa: F401  (temporal: the rule, for readers)

# Backbones with a Keras 2D ImageNet counterpart (their configs have an ``inflate`` hook).
INFLATABLE = {"densenet121": "DenseNet121", "resnet50": "ResNet50"}


def imagenet_2d(backbone, weights="imagenet"):
    """Keras' 2D ImageNet model for ``backbone`` (``weights=None``: random, for tests)."""
    import keras

    if backbone not in INFLATABLE:
        raise ValueError(f"--init=imagenet is available for {sorted(INFLATABLE)}, not {backbone!r}")
    return getattr(keras.applications, INFLATABLE[backbone])(include_top=False, weights=weights)


def inflate(model, model2d):
    """Copies ``model2d``'s weights into ``model`` (a template, or a pruned network
    without skipped DenseNet layers); returns the names of the layers set."""
    backbone = spec_of(model).backbone
    if backbone not in INFLATABLE:
        raise ValueError(f"no ImageNet inflation for {backbone!r}; available: {sorted(INFLATABLE)}")
    copy = Copier(model, model2d)
    backbone_config(backbone).inflate(copy, model.get_layer("stem_conv").kernel.shape[0])
    return copy.done
