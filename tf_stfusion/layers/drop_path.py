"""Variational DropPath (v-DropPath): the learnable gate in front of a path.

A gate holds one trainable logit ``theta``; its drop probability is
``p = sigmoid(theta)`` (initialised at 0.1). The gate multiplies its input by a
*keep* factor that depends on the gate's mode:

* ``off`` (warm-up): identity, ``theta`` is not trained.
* ``search`` (v-DropPath phase), training: per sample a relaxed Bernoulli
  *drop* variable (Maddison et al. / Jang et al., Gumbel-Softmax)

      z = sigmoid((log p - log(1 - p) + log u - log(1 - u)) / tau),  u ~ U(0, 1)

  is drawn with ``tfp.distributions.RelaxedBernoulli(tau, logits=theta)`` from a
  stateless seed, and the input is multiplied by ``1 - z`` broadcast over
  ``[T, H, W, C]`` (mask shape ``[batch, 1, 1, 1, 1]``). There is no ``1/(1-p)``
  rescaling: the authors' code does not rescale and the regulariser (Eq. 5) is
  written for that. Gradients reach ``theta`` through the relaxation.
  ``search`` at inference (``training=False``) multiplies by the expected keep
  factor ``1 - p`` -- the usual weight-scaling approximation of dropout; the
  paper's evaluation samples hard strategies instead (``fixed`` mode).
* ``fixed``: hard 0/1 masks read from non-trainable variables, so that
  applying another strategy is a variable assignment and never a retrace.
  The gate holds up to ``max_tiles`` masks and a tile count ``K``: the batch
  is read as ``K`` equal, consecutive tiles and tile ``k`` gets mask ``k``.
  ``K = 1`` (``apply_strategy``) is one strategy for the whole batch; the
  search evaluates ``K`` strategies on one batch tiled ``K`` times
  (``apply_strategies``; BatchNorm in inference keeps samples independent).

The Eq. 5 regulariser of one gate, for the convolution of weights ``w`` that the
gate feeds, a length-scale prior ``k`` and ``N`` training clips, is

    KL = c(k, N) * (1 - p) * sum(w^2) + H(p) / N,
    H(p) = p log p + (1 - p) log(1 - p)   ("binary", the authors' code, default)
    H(p) = p log p                          ("paper", Eq. 5 as printed)

with the weight-term coefficient ``c`` in one of two forms (``PRIOR_FORMS``):

    "paper":        c = k^2 / (2N)   (the paper's Eq. 5)
    "authors_code": c = k / N        (the authors' PyTorch code,
                    github.com/scenarios/Probabilistic3DCNN, NAS_utils/ops.py,
                    Conv3d_with_CD: ``self._weight_reg = weight_reg / training_size``,
                    ``KLreg = _weight_reg * sum(weight**2) * (1 - p) + drop_reg /
                    training_size * [p log p + (1-p) log(1-p)]`` with drop_reg = 1;
                    args.py defaults --weight_reg to 10.0, main.py names runs
                    ``ls{weight_reg}``)

The paper's k (250 Sth-V1, 10 Kinetics-400, 50 the others) came out of a grid
search over the code's ``weight_reg``, so the recipes use ``authors_code``; for
the same k, ``paper`` is ``k / 2`` times stronger.
"""

import math

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tf_stfusion.prior import weight_coefficient

GATE_MODES = ("off", "search", "fixed")
ENTROPY_FORMS = ("binary", "paper")
MAX_TILES = 32  # strategies one batch can carry in fixed mode

# |theta| <= 10 keeps p in [4.5e-5, 0.99995]: strictly inside (0, 1) in float32
# (sigmoid saturates to exactly 1.0 near theta = 17), so log p stays finite.
MAX_ABS_DROP_LOGIT = 10.0


@keras.saving.register_keras_serializable(package="tf_stfusion")
class ClipDropLogit(keras.constraints.Constraint):
    """Keeps a drop logit in ``[-limit, limit]`` after every optimizer step."""

    def __init__(self, limit=MAX_ABS_DROP_LOGIT):
        self.limit = float(limit)

    def __call__(self, w):
        return keras.ops.clip(w, -self.limit, self.limit)

    def get_config(self):
        return {"limit": self.limit}


def drop_logit(p):
    """The logit ``log(p / (1 - p))`` of a drop probability in (0, 1)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"a drop probability must lie in (0, 1), got {p!r}")
    return math.log(p / (1.0 - p))


def binary_entropy_term(theta, entropy="binary"):
    """``p log p + (1-p) log(1-p)`` (or ``p log p``) with ``p = sigmoid(theta)``.

    Computed from log-sigmoids so that it stays finite for any logit.
    """
    if entropy not in ENTROPY_FORMS:
        raise ValueError(f"entropy must be one of {ENTROPY_FORMS}, got {entropy!r}")
    p = tf.sigmoid(theta)
    term = p * tf.math.log_sigmoid(theta)
    if entropy == "binary":
        term += (1.0 - p) * tf.math.log_sigmoid(-theta)
    return term


@keras.saving.register_keras_serializable(package="tf_stfusion")
class VariationalDropPath(keras.layers.Layer):
    """The v-DropPath gate: ``y = x * keep``, ``keep`` as in the module docstring.

    Args:
      init_drop_prob: initial drop probability ``p`` (paper: 0.1).
      temperature: relaxation temperature ``tau`` of the search mode (0.2).
      mode: ``"off"``, ``"search"`` or ``"fixed"``.
      fusion_layer: the name of the fusion layer the gate belongs to, as written
        in strategy files (e.g. ``"block1/layer1"``).
      branch: which path of that layer it gates: ``"S"``, ``"ST"`` or ``"D1"``.
      feeds: the Keras name of the convolution the gate feeds (its weights enter
        the Eq. 5 regulariser).
      seed: seed of the gate's stateless noise stream.
    """

    def __init__(
        self,
        init_drop_prob=0.1,
        temperature=0.2,
        mode="off",
        fusion_layer=None,
        branch=None,
        feeds=None,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        drop_logit(init_drop_prob)  # validates the range
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.init_drop_prob = float(init_drop_prob)
        self.temperature = float(temperature)
        self.fusion_layer = fusion_layer
        self.branch = branch
        self.feeds = feeds
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.mode = mode

    @property
    def mode(self):
        return self._mode

    @mode.setter
    def mode(self, mode):
        if mode not in GATE_MODES:
            raise ValueError(f"gate mode must be one of {GATE_MODES}, got {mode!r}")
        self._mode = mode
        # The logit learns only in the search phase (warm-up: "theta not trained").
        self.trainable = mode == "search"

    def build(self, input_shape):
        self.drop_logit = self.add_weight(
            name="drop_logit",
            shape=(),
            initializer=keras.initializers.Constant(drop_logit(self.init_drop_prob)),
            constraint=ClipDropLogit(),
            trainable=True,
            # Under mixed precision p, the noise and the KL stay float32; only
            # the final keep factor is cast to the activations' dtype.
            autocast=False,
        )
        self.fixed_mask = self.add_weight(
            name="fixed_mask", shape=(MAX_TILES,), initializer="ones", trainable=False, autocast=False
        )
        self.num_tiles = self.add_weight(
            name="num_tiles", shape=(), initializer="ones", dtype="int32", trainable=False, autocast=False
        )

    @property
    def drop_prob(self):
        """``p = sigmoid(theta)`` as a float32 tensor."""
        return tf.sigmoid(tf.convert_to_tensor(self.drop_logit))

    def _noise_seed(self):
        # Replicas of a distribution strategy share the generator's state, so they all
        # get this seed (``relaxed_logit`` gives each replica its own rows of the draw).
        seed = self.seed_generator.next()
        return tf.cast(tf.math.floormod(seed, tf.int32.max - 1), tf.int32)

    def sample_drop(self, batch_size):
        """Relaxed Bernoulli drop variables ``z`` of shape ``[batch_size]``.

        ``RelaxedBernoulli(tau, logits=theta)`` is by definition
        ``Sigmoid(Logistic(theta / tau, 1 / tau))`` -- TFP builds it that way.
        We draw the Logistic from TFP and apply ``tf.sigmoid`` ourselves: TFP's
        own sigmoid bijector is ``tf.where(x < -9, exp(x), sigmoid(x))``, whose
        unused ``exp`` branch overflows for large ``x`` and turns the gradient
        into NaN (0 * inf) -- which happened in training once ``p`` neared 1.
        """
        return tf.sigmoid(self.relaxed_logit(batch_size))

    def relaxed_logit(self, batch_size):
        """``(theta + log u - log(1 - u)) / tau``: the relaxed drop before the sigmoid.

        The noise is drawn for the *global* batch (``batch_size`` per replica times
        the replicas) from the step's seed, and replica ``r`` takes rows
        ``r*batch_size:(r+1)*batch_size`` -- the rows its samples have in the global
        batch -- so every sample gets the same noise however the batch is split
        over replicas (one device and two replicas take the same step).
        """
        theta = tf.convert_to_tensor(self.drop_logit)
        logistic = tfp.distributions.Logistic(theta / self.temperature, 1.0 / self.temperature)
        ctx = tf.distribute.get_replica_context()
        replicas = ctx.num_replicas_in_sync if ctx is not None else 1
        draws = logistic.sample(batch_size * replicas, seed=self._noise_seed())
        if replicas == 1:
            return draws
        return tf.slice(draws, [ctx.replica_id_in_sync_group * batch_size], [batch_size])

    def call(self, inputs, training=None):
        if self._mode == "off":
            return inputs
        if self._mode == "fixed":
            return inputs * tf.cast(self.tile_masks(tf.shape(inputs)[0], len(inputs.shape)), inputs.dtype)
        if training:
            z = self.sample_drop(tf.shape(inputs)[0])
            keep = tf.reshape(1.0 - z, [-1] + [1] * (len(inputs.shape) - 1))
        else:
            keep = 1.0 - self.drop_prob
        return inputs * tf.cast(keep, inputs.dtype)

    def tile_masks(self, batch_size, rank=5):
        """The fixed-mode keep factor per sample, ``[batch, 1, ..., 1]``:
        mask ``k`` for the ``k``-th of ``num_tiles`` consecutive tiles."""
        tiles = tf.convert_to_tensor(self.num_tiles)
        tf.debugging.assert_equal(
            batch_size % tiles, 0, message="fixed mode: the batch is not a whole number of strategy tiles"
        )
        masks = tf.convert_to_tensor(self.fixed_mask)[:tiles]
        return tf.reshape(tf.repeat(masks, batch_size // tiles), [-1] + [1] * (rank - 1))

    def set_fixed_masks(self, masks):
        """Fixed-mode masks: one per tile (a sequence of 0/1), or a scalar for the batch."""
        masks = np.atleast_1d(np.asarray(masks, np.float32))
        if not 1 <= len(masks) <= MAX_TILES:
            raise ValueError(f"a gate holds 1 to {MAX_TILES} tile masks, got {len(masks)}")
        padded = np.ones(MAX_TILES, np.float32)
        padded[: len(masks)] = masks
        self.fixed_mask.assign(padded)
        self.num_tiles.assign(len(masks))

    def kl_divergence(self, weight_sq_sum, length_scale, num_train, entropy="binary", prior_form="paper"):
        """Eq. 5 for this gate, given ``sum(w^2)`` of the convolution it feeds
        (coefficient ``weight_coefficient(length_scale, num_train, prior_form)``)."""
        theta = tf.convert_to_tensor(self.drop_logit)
        p = tf.sigmoid(theta)
        weight_term = weight_coefficient(length_scale, num_train, prior_form) * (1.0 - p) * weight_sq_sum
        return weight_term + binary_entropy_term(theta, entropy) / num_train

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            init_drop_prob=self.init_drop_prob,
            temperature=self.temperature,
            mode=self._mode,
            fusion_layer=self.fusion_layer,
            branch=self.branch,
            feeds=self.feeds,
            seed=self.seed,
        )
        return config
