"""A grouped Conv3D that can also run as one convolution per group.

Keras' TensorFlow backend computes a grouped convolution inside a nested
XLA-compiled function, which tf2onnx cannot convert. ``GroupConv3D`` is a
``keras.layers.Conv3D`` (same weights, same checkpoints, same cost counting)
whose ``split_groups`` switch computes

    y[..., g*Co:(g+1)*Co] = conv(x[..., g*Ci:(g+1)*Ci], kernel[..., g*Co:(g+1)*Co])

for each group ``g`` and concatenates -- plain ops that every exporter
understands. Training uses the native grouped path; the exporter flips the
switch on the pruned network before tracing its serving function. A depthwise
``1 x k x k`` conv (MobileNetV2) always runs as a 2D depthwise conv of every
frame: one op, fast everywhere and exportable.
"""

import contextlib

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tf_stfusion")
class GroupConv3D(keras.layers.Conv3D):
    split_groups = False

    def convolution_op(self, inputs, kernel):
        if self.kernel_size[0] == 1 and self.groups == inputs.shape[-1] == kernel.shape[-1] > 1:
            # Depthwise 1xkxk: a 2D depthwise conv of every frame (one op, not one per channel).
            shape = ops.shape(inputs)
            frames = ops.reshape(inputs, (-1, shape[2], shape[3], inputs.shape[-1]))
            out = ops.depthwise_conv(frames, ops.transpose(kernel[0], (0, 1, 3, 2)), strides=tuple(self.strides[1:]),
                                     padding=self.padding, dilation_rate=tuple(self.dilation_rate[1:]))
            return ops.reshape(out, (shape[0], shape[1], ops.shape(out)[1], ops.shape(out)[2], out.shape[-1]))
        if self.groups == 1 or not self.split_groups:
            return super().convolution_op(inputs, kernel)
        cin = inputs.shape[-1] // self.groups
        cout = kernel.shape[-1] // self.groups
        outputs = [
            ops.conv(inputs[..., g * cin:(g + 1) * cin], kernel[..., g * cout:(g + 1) * cout],
                     strides=list(self.strides), padding=self.padding, dilation_rate=self.dilation_rate,
                     data_format=self.data_format)
            for g in range(self.groups)
        ]
        return ops.concatenate(outputs, axis=-1)


@contextlib.contextmanager
def grouped_convs_split(model):
    """Inside: every GroupConv3D of ``model`` runs one convolution per group (the
    same function); the caller's setting is restored on the way out."""
    convs = [layer for layer in model.layers if isinstance(layer, GroupConv3D)]
    before = [layer.split_groups for layer in convs]
    for layer in convs:
        layer.split_groups = True
    try:
        yield model
    finally:
        for layer, value in zip(convs, before):
            layer.split_groups = value
