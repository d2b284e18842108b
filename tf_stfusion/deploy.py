"""The deploy graph: the pruned network with its 3D ops written as 2D ones.

Mobile runtimes (LiteRT's builtin ops, XNNPACK, int8 kernels) know 2D
convolutions and pools; ``MaxPool3D`` / ``AvgPool3D`` are not builtin ops at
all and ``CONV_3D`` has no int8 kernel. No layer of our backbones pools or
strides over time, so every 3D op is a 2D op over a reshaped tensor:

* a ``1 x k x k`` pool ``[B, T, H, W, C]`` is the 2D pool of every frame
  ``[B*T, H, W, C]``;
* a ``K x 1 x 1`` convolution (stride 1) is a ``K x 1`` 2D convolution of
  ``[B, T, H*W, C]`` -- its "same" padding over ``T`` is the 3D one;
* any other ``K x k x k`` convolution with temporal stride 1 (``K = 1``: the
  spatial convs; ``K > 1``: the stems) stacks the ``K`` frames each output
  frame reads along channels and convolves every frame in 2D:

      y[t] = sum_i conv2d(x[t + i - p], W[i]) = conv2d(concat_i x[t + i - p], W')

  with ``W'[kh, kw, i*C + c, o] = W[i, kh, kw, c, o]`` and ``p`` the 3D "same"
  (``(K - 1) // 2`` frames before) or "valid" (0) padding;
* a depthwise ``1 x k x k`` conv is a 2D depthwise conv of every frame, a
  grouped one a 2D conv per group.

``deploy_model(pruned)`` clones the pruned Keras network with these layers
(same names, same weights); it computes the same function, which the exporter
checks numerically before writing anything.
"""

import keras
import tensorflow as tf
from keras import ops

from tf_stfusion.data import pipeline


class DeployError(ValueError):
    pass


def _frames(x):
    """``[B, T, H, W, C]`` -> ``[B*T, H, W, C]`` (static sizes where known)."""
    return ops.reshape(x, (-1, *x.shape[2:4], x.shape[-1]))


def _unframes(y, like):
    """``[B*T, H', W', C']`` -> ``[B, T, H', W', C']`` with ``B, T`` of ``like``."""
    return ops.reshape(y, (-1, like.shape[1] or ops.shape(like)[1], *y.shape[1:]))


@keras.saving.register_keras_serializable(package="tf_stfusion")
class FrameConv3D(keras.layers.Conv3D):
    """A ``Conv3D`` (temporal stride 1) computed with 2D convolutions (module docstring)."""

    def build(self, input_shape):
        if self.strides[0] != 1 or self.dilation_rate != (1, 1, 1):
            raise DeployError(f"{self.name}: a temporal stride or dilation has no 2D form")
        super().build(input_shape)

    def convolution_op(self, inputs, kernel):
        kt, kh, kw = self.kernel_size
        cin, cout = inputs.shape[-1], kernel.shape[-1]
        if kh == kw == 1 and self.strides == (1, 1, 1) and self.groups == 1:
            # K x 1 x 1 over time: a K x 1 2D conv of [B, T, H*W, C].
            t, h, w = inputs.shape[1:4]  # static: the exported clip size
            flat = ops.reshape(inputs, (-1, t, h * w, cin))
            out = ops.conv(flat, kernel[:, 0], strides=1, padding=self.padding)
            return ops.reshape(out, (-1, t, h, w, cout))
        if kt > 1:
            before = (kt - 1) // 2 if self.padding == "same" else 0
            after = kt - 1 - before if self.padding == "same" else 0
            padded = ops.pad(inputs, ((0, 0), (before, after), (0, 0), (0, 0), (0, 0)))
            t = inputs.shape[1] - (0 if self.padding == "same" else kt - 1)
            stacked = ops.concatenate([padded[:, i:i + t] for i in range(kt)], axis=-1)
            if self.groups != 1:
                raise DeployError(f"{self.name}: a grouped {kt}x{kh}x{kw} conv has no 2D form here")
            k2d = ops.reshape(ops.transpose(kernel, (1, 2, 0, 3, 4)), (kh, kw, kt * cin, cout))
            frames = _frames(stacked)
            return _unframes(ops.conv(frames, k2d, strides=self.strides[1:], padding=self.padding), stacked)
        frames = _frames(inputs)
        strides = self.strides[1:]
        if self.groups == 1:
            out = ops.conv(frames, kernel[0], strides=strides, padding=self.padding)
        elif self.groups == cin == cout:
            out = ops.depthwise_conv(frames, ops.transpose(kernel[0], (0, 1, 3, 2)), strides=strides,
                                     padding=self.padding)
        else:
            gin, gout = cin // self.groups, cout // self.groups
            out = ops.concatenate([
                ops.conv(frames[..., g * gin:(g + 1) * gin], kernel[0][..., g * gout:(g + 1) * gout],
                         strides=strides, padding=self.padding)
                for g in range(self.groups)], axis=-1)
        return _unframes(out, inputs)


def _frame_pool(layer, inputs, pool):
    return _unframes(pool(_frames(inputs), layer.pool_size[1:], strides=layer.strides[1:], padding=layer.padding),
                     inputs)


def _check_pool(layer):
    if layer.pool_size[0] != 1 or layer.strides[0] != 1:
        raise DeployError(f"{layer.name}: a pool over time has no 2D form")


@keras.saving.register_keras_serializable(package="tf_stfusion")
class FrameMaxPool3D(keras.layers.MaxPooling3D):
    """A ``1 x k x k`` ``MaxPooling3D`` as the 2D max-pool of every frame."""

    def build(self, input_shape):
        _check_pool(self)
        super().build(input_shape)

    def call(self, inputs):
        return _frame_pool(self, inputs, ops.max_pool)


@keras.saving.register_keras_serializable(package="tf_stfusion")
class FrameAveragePool3D(keras.layers.AveragePooling3D):
    """A ``1 x k x k`` ``AveragePooling3D`` as the 2D average-pool of every frame."""

    def build(self, input_shape):
        _check_pool(self)
        super().build(input_shape)

    def call(self, inputs):
        return _frame_pool(self, inputs, ops.average_pool)


def _deploy_layer(layer):
    for base, deploy in ((keras.layers.Conv3D, FrameConv3D), (keras.layers.MaxPooling3D, FrameMaxPool3D),
                         (keras.layers.AveragePooling3D, FrameAveragePool3D)):
        if isinstance(layer, base):
            return deploy.from_config(layer.get_config())
    return layer.__class__.from_config(layer.get_config())


def deploy_model(model):
    """``model`` (a functional pruned network) with its 3D convs and pools as 2D
    ones, sharing nothing with it: same layer names, copied weights."""
    deployed = keras.models.clone_model(model, clone_function=_deploy_layer)
    for layer in deployed.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return deployed


# -- the function a clip runtime (ONNX, LiteRT) runs ------------------------------------
def clip_logits(model, video):
    """The network's logits ``[batch, C]`` (float32) of uint8 clips ``[batch, T, S, S, 3]``."""
    return tf.cast(model(pipeline.normalize(video), training=False), tf.float32)


def clip_probabilities(model, video):
    """Softmax scores ``[batch, C]`` of uint8 clips ``[batch, T, S, S, 3]``."""
    return tf.nn.softmax(clip_logits(model, video))


def clip_shape(contract):
    """``(T, S, S, 3)``: one uint8 clip as the clip signatures take it (the
    contract's ``num_frames`` and ``eval_size``)."""
    return (contract.num_frames, contract.eval_size, contract.eval_size, 3)


def clip_function(model, contract, top_k=5, batch=None):
    """``(fn, input_signature)``: ``serving_default`` without the labels table --
    uint8 clips ``video`` -> ``probabilities``, ``top_k``, ``logits`` -- for the
    runtimes that take clips (ONNX; LiteRT with ``batch=1``)."""
    top_k = min(top_k, len(contract.class_names))

    def serve(video):
        logits = clip_logits(model, video)
        probs = tf.nn.softmax(logits)
        ids = tf.math.top_k(probs, top_k).indices
        return {"probabilities": tf.identity(probs, name="probabilities"), "top_k": tf.identity(ids, name="top_k"),
                "logits": tf.identity(logits, name="logits")}

    return serve, tf.TensorSpec([batch, *clip_shape(contract)], tf.uint8, name="video")
