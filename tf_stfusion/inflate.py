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

import numpy as np

from tf_stfusion.models import backbone_config, spec_of

INFLATABLE = {"densenet121": "DenseNet121", "resnet50": "ResNet50"}


def imagenet_2d(backbone, weights="imagenet"):
    """Keras' 2D ImageNet model for ``backbone`` (``weights=None``: random, for tests)."""
    import keras

    if backbone not in INFLATABLE:
        raise ValueError(f"--init=imagenet is available for {sorted(INFLATABLE)}, not {backbone!r}")
    return getattr(keras.applications, INFLATABLE[backbone])(include_top=False, weights=weights)


def temporal(kernel_2d, frames):
    """``[kH, kW, Cin, Cout]`` -> ``[frames, kH, kW, Cin, Cout]``, repeated and divided by ``frames``."""
    return np.repeat(np.asarray(kernel_2d)[None], frames, axis=0) / frames


def _bn_weights(bn2d, bias=None):
    gamma, beta, mean, var = (np.asarray(w) for w in bn2d.get_weights())
    if bias is not None:
        mean = mean - bias  # BN(conv + b) with mean m equals BN(conv) with mean m - b
    return [gamma, beta, mean, var]


class _Copier:
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


def _inflate_densenet(copy, config, stem_frames):
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


def _inflate_resnet(copy, config, stem_frames):
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


def inflate(model, model2d):
    """Copies ``model2d``'s weights into ``model`` (a template, or a pruned network
    without skipped DenseNet layers); returns the names of the layers set."""
    from tf_stfusion.models.densenet3d import DenseNet3DConfig

    backbone = spec_of(model).backbone
    config = backbone_config(backbone)
    if backbone not in INFLATABLE:
        raise ValueError(f"no ImageNet inflation for {backbone!r}; available: {sorted(INFLATABLE)}")
    copy = _Copier(model, model2d)
    stem_frames = model.get_layer("stem_conv").kernel.shape[0]
    if isinstance(config, DenseNet3DConfig):
        _inflate_densenet(copy, config, stem_frames)
    else:
        _inflate_resnet(copy, config, stem_frames)
    return copy.done
