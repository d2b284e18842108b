"""The pre-flight of every packaged recipe on the densenet121 template at its initial weights.

    python benchmarks/prior_preflight.py [--clips=2 --size=64]

For each paper recipe (``tf_stfusion/configs/*.flags``: its k and form, its
dataset's classes and N), builds the densenet121 template at its initial
weights, measures the data loss on ``--clips`` random clips (16 frames at
``--size``, BatchNorm on batch statistics; the gated kernels, and so the Eq. 5 term, do not depend on the
input size) and calls ``prior.preflight`` directly -- no dataset needed. Prints
a markdown table: the ratio Eq. 5 term / data loss under the recipe's form and
under the other form, the verdict, and the k that would make the ratio 1.

N is the clips the search trains on: the training split less the default 10%
hold-out (``--holdout_fraction``).
"""

import math
import time

from machine import machine_line  # benchmarks/machine.py

import tf_stfusion  # noqa: F401  (first: TensorFlow's environment defaults, see tf_stfusion/__init__.py)

from absl import app, flags

flags.DEFINE_integer("clips", 2, "Random clips the data loss is measured on.")
flags.DEFINE_integer("size", 64, "Height and width of the random clips.")
FLAGS = flags.FLAGS

# recipe -> (classes, training-split clips): SthV1 86,017, UCF101 split 1 9,537, SthV2 168,913, K400 240,436.
DATASETS = {"sthv1": (174, 86017), "ucf101": (101, 9537), "sthv2": (174, 168913), "k400": (400, 240436)}
HOLDOUT_FRACTION = 0.1


def measure(num_classes, clips, size):
    """``(data loss, weights, entropy term / N * N)`` of a fresh densenet121 template."""
    import numpy as np
    import tensorflow as tf

    from tf_stfusion import gating
    from tf_stfusion.models import build_template

    model = build_template("densenet121", num_classes=num_classes, num_frames=16, input_size=None, seed=0)
    gating.set_gate_mode(model, "search")
    x = np.random.default_rng(0).normal(size=(clips, 16, size, size, 3)).astype("float32")
    labels = np.arange(clips) % num_classes
    # BatchNorm on the batch's statistics, as the first training step sees it: at initial weights
    # the moving statistics (mean 0, variance 1) let the activations grow through 121 layers and the
    # loss would read ~19 instead of ~ln(classes).
    logits = tf.cast(model(x, training=True), tf.float32)
    loss = float(tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)))
    weights, entropy_term_per_n = gating.regularizer_parts(model, 1)
    return loss, weights, entropy_term_per_n


def main(argv):
    from tf_stfusion import configs, prior

    print(machine_line(TensorFlow=__import__("tensorflow").__version__))
    measured = {}
    print("| recipe | k | N | form | Eq. 5 term / data loss | verdict | k for ratio 1 | the same under the "
          "other form | data loss (ln classes) |")
    print("|---|---|---|---|---|---|---|---|---|")
    t0 = time.time()
    for name, (classes, split) in DATASETS.items():
        settings = configs.settings(name)
        k, form = float(settings["length_scale"]), settings["prior_form"]
        n = split - round(HOLDOUT_FRACTION * split)
        if classes not in measured:
            measured[classes] = measure(classes, FLAGS.clips, FLAGS.size)
        loss, weights, entropy_sum = measured[classes]
        mine = prior.preflight(loss, weights, entropy_sum / n, k, n, form, weights_at="initial weights")
        other = [f for f in prior.PRIOR_FORMS if f != form][0]
        theirs = mine["forms"][other]
        print(f"| {name}.flags | {k:g} | {n:,} | {form} ({mine['forms'][form]['formula']}) | {mine['ratio']:.3g} | "
              f"{mine['verdict']} | {mine['suggested_length_scale']:.3g} | {theirs['ratio']:.3g} ({other}, "
              f"{theirs['formula']}: {prior.verdict_of(theirs['ratio'])}) | {loss:.2f} ({math.log(classes):.2f}) |")
    print(f"\n(sum over gates of (1 - p) sum(w^2) at initial weights: "
          + ", ".join(f"{c} classes {v[1]:.4g}" for c, v in measured.items()) + f"; {time.time() - t0:.0f} s)")


if __name__ == "__main__":
    app.run(main)
