"""The constant a pruned network owes to channels its template had.

In the template, a skipped layer (unit ``none``) writes exact zeros into the
dense block's concatenation. A later consumer (BN -> ReLU -> conv) turns them
into a constant ``c = relu(beta - gamma * mean / sqrt(var + eps))`` per
channel, which its convolution maps to a constant added to every output. The
pruned network has no such channels, so it adds that constant here. For a
``K x 1 x 1`` convolution with "same" zero padding, frame ``t`` sees tap ``k``
only when its source frame ``t + k - (K - 1) / 2`` exists, so the bias is

    y[:, t] = x[:, t] + sum_k valid(t, k) * taps[k],     taps[k] = sum_j c_j W[k, j, :]

(border frames get fewer taps). The layer holds ``taps`` ``[K, C]``; it works
for any clip length.
"""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="tf_stfusion")
class TemporalBias(keras.layers.Layer):
    """``y[:, t] = x[:, t] + sum of the taps whose source frame exists``."""

    def __init__(self, num_taps=1, **kwargs):
        super().__init__(**kwargs)
        if num_taps < 1 or num_taps % 2 == 0:
            raise ValueError(f"num_taps must be odd and >= 1, got {num_taps}")
        self.num_taps = int(num_taps)

    def build(self, input_shape):
        self.taps = self.add_weight(name="taps", shape=(self.num_taps, input_shape[-1]), initializer="zeros")

    def bias(self, frames, dtype):
        """``[T, C]``: what frame ``t`` of a clip of ``frames`` gets added."""
        t = tf.range(frames)[:, None]
        source = t + tf.range(self.num_taps)[None, :] - (self.num_taps - 1) // 2
        valid = tf.cast((source >= 0) & (source < frames), dtype)  # [T, K]
        return tf.matmul(valid, tf.cast(self.taps, dtype))

    def call(self, inputs):
        return inputs + self.bias(tf.shape(inputs)[1], inputs.dtype)[None, :, None, None, :]

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "num_taps": self.num_taps}
