"""The deploy graph: the pruned network with its 3D ops written as 2D ones, in
the frame layout.

Mobile runtimes (LiteRT's builtin ops, XNNPACK, int8 kernels) know 2D
convolutions and pools; ``MaxPool3D`` / ``AvgPool3D`` are not builtin ops at
all and ``CONV_3D`` has no int8 kernel. No layer of our backbones pools or
strides over time, so the deploy graph keeps its tensors as a batch of frames
and mixes time only where a layer does. A tensor of the pruned network,
``[B, T, H, W, C]``, lives in one of three layouts:

* ``frames`` ``[B*T, H, W, C]``: every spatial conv (``1 x k x k``, depthwise
  or grouped), pool, BatchNorm, activation, sum and concatenation works on it
  per frame, as a 2D op;
* ``time`` ``[B, T, H*W, C]``: a ``K x 1 x 1`` convolution (stride 1) is a
  ``K x 1`` 2D convolution of it -- its "same" padding over ``T`` is the 3D
  one; a ``TemporalBias`` of ``K`` taps and the head's global average pool (a
  MEAN over axes 1 and 2) work on it too;
* ``clip`` ``[B, T, H, W, C]`` (the input): the stems' ``K x k x k``
  convolutions stack the ``K`` frames each output frame reads along channels
  and convolve every frame in 2D::

      y[t] = sum_i conv2d(x[t + i - p], W[i]) = conv2d(concat_i x[t + i - p], W')

  with ``W'[kh, kw, i*C + c, o] = W[i, kh, kw, c, o]`` and ``p`` the 3D "same"
  (``(K - 1) // 2`` frames before) or "valid" (0) padding; a zero padding
  over time works on it. Any layer without a 2D form here also runs on it
  (as the pruned network's own layer).

A BatchNorm that follows a conv stays one (LiteRT's converter folds it into the
conv once no reshape stands between them); any other -- DenseNet's pre-activation
BatchNorms, reading a concatenation that later layers read too -- is a ``1 x 1``
depthwise conv with bias: one op instead of a MUL and an ADD.

A tensor is moved to another layout (one ``Relayout``: a RESHAPE) only when
a layer needs it there, once per tensor and layout; an element-wise layer
stays in the layout its inputs share. So the network is in frames from the
stem to the head, leaving them only around its temporal convolutions (two
RESHAPEs each) and for the head's pool (one). The per-layer reshapes of an
earlier deploy graph (245 RESHAPEs in DenseNet-121 S) kept LiteRT's converter
from folding a conv's BatchNorm into it; its int8 AVERAGE_POOL_2Ds (none in
XNNPACK) cut XNNPACK's graph into 5 partitions (``docs/measurements.md``).

``deploy_model(pruned)`` builds this graph from the pruned Keras network (its
layers' names, copied weights); it computes the same function, which the
exporter checks numerically before writing anything.
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tf_stfusion.data import pipeline
from tf_stfusion.layers.temporal_bias import TemporalBias

FRAMES, TIME, CLIP = "frames", "time", "clip"


class DeployError(ValueError):
    pass


def layout_shape(layout, shape):
    """The shape (batch -1) of a ``[B, T, H, W, C]`` tensor of static ``shape`` in ``layout``."""
    _, t, h, w, c = shape
    if None in (t, h, w, c):
        raise DeployError(f"the deploy graph needs a static clip size, got {tuple(shape)}; "
                          "build the network with num_frames and input_size")
    return {FRAMES: (-1, h, w, c), TIME: (-1, t, h * w, c), CLIP: (-1, t, h, w, c)}[layout]


@keras.saving.register_keras_serializable(package="tf_stfusion")
class Relayout(keras.layers.Layer):
    """One reshape between the layouts (module docstring): ``[B?, ...] -> [-1, *target]``."""

    def __init__(self, target, **kwargs):
        super().__init__(**kwargs)
        self.target = tuple(int(n) for n in target)

    def call(self, inputs):
        return ops.reshape(inputs, (-1, *self.target))

    def compute_output_shape(self, input_shape):
        return (None, *self.target)

    def get_config(self):
        return {**super().get_config(), "target": self.target}


@keras.saving.register_keras_serializable(package="tf_stfusion")
class FrameConv2D(keras.layers.Conv2D):
    """A ``1 x k x k`` conv of every frame; a depthwise one as one depthwise op, a
    grouped one as one conv per group (LiteRT has no grouped CONV_2D in XNNPACK)."""

    def convolution_op(self, inputs, kernel):
        cin, cout = inputs.shape[-1], kernel.shape[-1]
        args = dict(strides=self.strides, padding=self.padding, dilation_rate=self.dilation_rate)
        if self.groups == 1:
            return ops.conv(inputs, kernel, **args)
        if self.groups == cin == cout:
            return ops.depthwise_conv(inputs, ops.transpose(kernel, (0, 1, 3, 2)), **args)
        gin, gout = cin // self.groups, cout // self.groups
        return ops.concatenate([ops.conv(inputs[..., g * gin:(g + 1) * gin], kernel[..., g * gout:(g + 1) * gout],
                                         **args) for g in range(self.groups)], axis=-1)


@keras.saving.register_keras_serializable(package="tf_stfusion")
class StackedFrameConv(keras.layers.Conv2D):
    """A ``K x k x k`` conv (temporal stride 1) of a clip ``[B, T, H, W, C]``: the
    ``K`` frames each output frame reads stacked along channels, then one 2D conv
    of every frame; returns frames ``[B*T', H', W', C']`` (module docstring)."""

    def __init__(self, frames, time_padding, **kwargs):
        super().__init__(**kwargs)
        self.frames, self.time_padding = int(frames), time_padding
        self.input_spec = None  # a 5-D clip in, a 4-D batch of frames out

    def _stack(self, clip):
        k = self.frames
        before = (k - 1) // 2 if self.time_padding == "same" else 0
        after = k - 1 - before if self.time_padding == "same" else 0
        padded = ops.pad(clip, ((0, 0), (before, after), (0, 0), (0, 0), (0, 0)))
        t = padded.shape[1] - k + 1
        stacked = ops.concatenate([padded[:, i:i + t] for i in range(k)], axis=-1)
        return ops.reshape(stacked, (-1, *stacked.shape[2:]))

    def build(self, input_shape):
        super().build((None, *input_shape[2:4], self.frames * input_shape[-1]))
        self.input_spec = None

    def call(self, inputs):
        return super().call(self._stack(inputs))

    def compute_output_shape(self, input_shape):
        return super().compute_output_shape((None, *input_shape[2:4], self.frames * input_shape[-1]))

    def get_config(self):
        return {**super().get_config(), "frames": self.frames, "time_padding": self.time_padding}


@keras.saving.register_keras_serializable(package="tf_stfusion")
class TimeBias(TemporalBias):
    """``TemporalBias`` on the time layout ``[B, T, H*W, C]`` (one tap: any layout)."""

    def call(self, inputs):
        if self.num_taps == 1:  # every frame gets its one tap
            return inputs + ops.cast(self.taps[0], inputs.dtype)
        return inputs + self.bias(inputs.shape[1], inputs.dtype)[None, :, None, :]


@keras.saving.register_keras_serializable(package="tf_stfusion")
class TimeAveragePool(keras.layers.Layer):
    """``GlobalAveragePooling3D`` of the time layout: the MEAN over axes 1, 2 of
    ``[B, T, H*W, C]`` -> ``[B, C]`` (XNNPACK's and int8's global average pool)."""

    def call(self, inputs):
        return ops.mean(inputs, axis=(1, 2))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])


# -- one layer of the pruned network -> (deploy layer, input layout, output layout, weights) --
SAME = "same"  # an element-wise layer: the layout its inputs share, frames if none
ELEMENTWISE = (keras.layers.BatchNormalization, keras.layers.ReLU, keras.layers.Activation, keras.layers.Dropout,
               keras.layers.Add, keras.layers.Multiply, keras.layers.Subtract, keras.layers.Maximum,
               keras.layers.Minimum, keras.layers.Average)


def _conv_step(layer):
    if layer.strides[0] != 1 or tuple(layer.dilation_rate) != (1, 1, 1):
        raise DeployError(f"{layer.name}: a temporal stride or dilation has no 2D form")
    kt, kh, kw = layer.kernel_size
    kernel, *bias = layer.get_weights()
    args = dict(filters=layer.filters, use_bias=layer.use_bias, activation=layer.activation, name=layer.name)
    if kt == 1:
        return (FrameConv2D(kernel_size=(kh, kw), strides=layer.strides[1:], padding=layer.padding,
                            groups=layer.groups, **args), FRAMES, FRAMES, [kernel[0], *bias])
    if layer.groups != 1:
        raise DeployError(f"{layer.name}: a grouped {kt}x{kh}x{kw} conv has no 2D form here")
    if (kh, kw) == (1, 1) and tuple(layer.strides) == (1, 1, 1):
        temporal = keras.layers.Conv2D(kernel_size=(kt, 1), padding=layer.padding, **args)
        return temporal, TIME, TIME, [kernel[:, 0], *bias]
    stacked = kernel.transpose(1, 2, 0, 3, 4).reshape(kh, kw, -1, kernel.shape[-1])
    return (StackedFrameConv(kt, layer.padding, kernel_size=(kh, kw), strides=layer.strides[1:], padding=layer.padding,
                             **args), CLIP, FRAMES, [stacked, *bias])


def _pool_step(layer, pool2d):
    if layer.pool_size[0] != 1 or layer.strides[0] != 1:
        raise DeployError(f"{layer.name}: a pool over time has no 2D form")
    size, strides = layer.pool_size[1:], layer.strides[1:]
    if pool2d is keras.layers.AveragePooling2D and layer.padding == "valid":
        # The same average as a depthwise conv of constant weights: XNNPACK has no int8
        # AVERAGE_POOL_2D, and each one would cut the int8 graph into another partition.
        kernel = np.full((*size, layer.input.shape[-1], 1), 1.0 / (size[0] * size[1]), np.float32)
        pool = keras.layers.DepthwiseConv2D(size, strides=strides, padding="valid", use_bias=False, name=layer.name)
        return pool, FRAMES, FRAMES, [kernel]
    return pool2d(size, strides=strides, padding=layer.padding, name=layer.name), FRAMES, FRAMES, []


def _batchnorm_step(layer):
    """A BatchNorm that LiteRT's converter cannot fold into a conv before it (DenseNet's
    pre-activation ones read a concatenation) as a ``1 x 1`` depthwise conv with bias:
    ``x * gamma / sqrt(var + eps) + beta - mean * gamma / sqrt(var + eps)`` in one op
    (int8: per-channel scales) instead of a MUL and an ADD. None for the others."""
    producer = layer.input._keras_history.operation
    if isinstance(producer, (keras.layers.Conv3D, TemporalBias)) or layer.axis not in (-1, 4, [-1], [4]):
        return None  # folded into the conv by the converter
    gamma, beta, mean, var = (w.astype(np.float64) for w in layer.get_weights())
    scale = gamma / np.sqrt(var + layer.epsilon)
    conv = keras.layers.DepthwiseConv2D(1, use_bias=True, name=layer.name)
    weights = [scale[None, None, :, None], beta - mean * scale]
    return conv, FRAMES, FRAMES, [w.astype(np.float32) for w in weights]


def _step(layer):
    """How ``layer`` (reading a ``[B, T, H, W, C]`` tensor) runs in the deploy graph."""
    if isinstance(layer, keras.layers.BatchNormalization) and layer.center and layer.scale:
        return _batchnorm_step(layer) or (_copy(layer), SAME, SAME, layer.get_weights())
    if isinstance(layer, keras.layers.Conv3D):
        return _conv_step(layer)
    if isinstance(layer, keras.layers.MaxPooling3D):
        return _pool_step(layer, keras.layers.MaxPooling2D)
    if isinstance(layer, keras.layers.AveragePooling3D):
        return _pool_step(layer, keras.layers.AveragePooling2D)
    if isinstance(layer, keras.layers.ZeroPadding3D) and tuple(layer.padding[0]) == (0, 0):
        return keras.layers.ZeroPadding2D(layer.padding[1:], name=layer.name), FRAMES, FRAMES, []
    if isinstance(layer, TemporalBias):
        layout = SAME if layer.num_taps == 1 else TIME
        return TimeBias.from_config(layer.get_config()), layout, layout, layer.get_weights()
    if isinstance(layer, keras.layers.GlobalAveragePooling3D) and not layer.keepdims:
        return TimeAveragePool(name=layer.name), TIME, None, []
    if isinstance(layer, keras.layers.Concatenate) and layer.axis in (-1, 4):
        return keras.layers.Concatenate(axis=-1, name=layer.name), SAME, SAME, []
    if isinstance(layer, ELEMENTWISE) and getattr(layer, "axis", -1) in (-1, 4, [-1], [4]):
        return _copy(layer), SAME, SAME, layer.get_weights()
    return _copy(layer), CLIP, CLIP, layer.get_weights()  # no 2D form known: the pruned network's layer, on the clip


def _copy(layer):
    return layer.__class__.from_config(layer.get_config())


class _Tensors:
    """The deploy graph's tensors: for each tensor of the pruned network, the
    layouts it is held in (``None``: a tensor that is not ``[B, T, H, W, C]``)."""

    def __init__(self):
        self.held = {}

    def put(self, source, layout, tensor):
        self.held.setdefault(id(source), {})[layout] = tensor

    def layout_for(self, sources):
        """An element-wise layer's layout: one its inputs are all in, frames first."""
        if any(len(s.shape) != 5 for s in sources):
            return None
        return next((layout for layout in (FRAMES, TIME, CLIP)
                     if all(layout in self.held[id(s)] for s in sources)), FRAMES)

    def get(self, source, layout):
        have = self.held[id(source)]
        if layout not in have:  # one RESHAPE, made once
            name = f"{source._keras_history.operation.name}_to_{layout}"
            have[layout] = Relayout(layout_shape(layout, source.shape)[1:], name=name)(next(iter(have.values())))
        return have[layout]


def deploy_model(model):
    """``model`` (a functional pruned network, clips ``[B, T, H, W, 3]`` -> logits)
    as the deploy graph (module docstring): the same function, its layers' names,
    copied weights, sharing nothing with it. Raises ``DeployError`` for a layer
    with no 2D form (a pool or stride over time)."""
    tensors = _Tensors()
    inputs = [keras.Input(t.shape[1:], name=t.name) for t in model.inputs]
    for source, new in zip(model.inputs, inputs):
        tensors.put(source, CLIP, new)
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.is_input:
                continue
            sources = node.input_tensors
            if len(node.output_tensors) != 1:
                raise DeployError(f"{node.operation.name}: a layer with several outputs has no deploy form")
            if any(len(s.shape) != 5 for s in sources):  # after the pool: as it is
                layer, needs, gives, weights = _copy(node.operation), None, None, node.operation.get_weights()
            else:
                layer, needs, gives, weights = _step(node.operation)
            needs = tensors.layout_for(sources) if needs == SAME else needs
            args = [tensors.get(s, needs) for s in sources]
            out = layer(args if isinstance(node.arguments.args[0], (list, tuple)) else args[0])
            if weights:
                layer.set_weights(weights)
            tensors.put(node.output_tensors[0], needs if gives == SAME else gives, out)
    outputs = [tensors.get(t, CLIP if len(t.shape) == 5 else None) for t in model.outputs]
    return keras.Model(inputs, outputs if len(outputs) > 1 else outputs[0], name=model.name)


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
