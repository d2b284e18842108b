"""``python -m tf_stfusion.train``: warm-up, then the v-DropPath search phase.

This first version trains on random clips (``--dataset=random``): it exercises
the whole two-phase recipe (SPEC §3) -- gates off for warm-up, then relaxed
Bernoulli gates with the Eq. 5 regulariser added to the loss and no weight
decay -- and writes ``probabilities.json`` (per gate ``p`` and Eq. 7 marginal,
per layer unit probabilities) to ``--model_dir``.
"""

import os
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", "random", ["random"], "Training data. 'random': Gaussian clips, random labels.")
flags.DEFINE_string("backbone", "tiny", "Template backbone (tiny, densenet121).")
flags.DEFINE_integer("num_classes", 5, "Number of classes.")
flags.DEFINE_integer("num_frames", 8, "Frames per clip.")
flags.DEFINE_integer("input_size", 32, "Height and width of a clip.")
flags.DEFINE_integer("batch_size", 8, "Batch size.")
flags.DEFINE_integer("warmup_steps", 10, "Steps of the warm-up phase (gates off).")
flags.DEFINE_integer("search_steps", 10, "Steps of the v-DropPath search phase.")
flags.DEFINE_float("learning_rate", 0.01, "SGD learning rate.")
flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
flags.DEFINE_float("length_scale", 50.0, "Length-scale prior k of Eq. 5.")
flags.DEFINE_integer("num_train", 10000, "N of Eq. 5: the number of training clips the data stands for.")
flags.DEFINE_float("temperature", 0.2, "Relaxed Bernoulli temperature.")
flags.DEFINE_float("init_drop_prob", 0.1, "Initial drop probability p of every gate.")
flags.DEFINE_enum("entropy", "binary", ["binary", "paper"], "Entropy term of Eq. 5.")
flags.DEFINE_string("model_dir", "runs/demo", "Where probabilities.json is written.")
flags.DEFINE_integer("seed", 0, "Random seed.")


def train_phase(model, dataset, steps, phase, optimizer, regularizer=None, label=""):
    """Runs ``steps`` SGD steps of one phase; returns the last loss."""
    import keras
    import tensorflow as tf

    from tf_stfusion.gating import set_gate_mode

    set_gate_mode(model, "off" if phase == "warmup" else "search")
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
            reg = regularizer() if regularizer is not None else tf.constant(0.0)
            total = loss + reg
        variables = model.trainable_variables
        optimizer.apply(tape.gradient(total, variables), variables)
        return loss, reg

    bar = keras.utils.Progbar(steps, stateful_metrics=["loss", "kl"], unit_name="step")
    print(label)
    loss = reg = None
    for i, (x, y) in enumerate(dataset.take(steps)):
        loss, reg = step(x, y)
        bar.update(i + 1, [("loss", float(loss)), ("kl", float(reg))])
    return float(loss)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import keras
    import tensorflow as tf

    import tf_stfusion as stf
    from tf_stfusion.fileio import atomic_write_json

    keras.utils.set_random_seed(FLAGS.seed)
    model = stf.build_template(
        FLAGS.backbone, num_classes=FLAGS.num_classes, num_frames=FLAGS.num_frames,
        input_size=FLAGS.input_size, init_drop_prob=FLAGS.init_drop_prob,
        temperature=FLAGS.temperature, seed=FLAGS.seed,
    )
    shape = (FLAGS.num_frames, FLAGS.input_size, FLAGS.input_size, 3)
    data = tf.data.Dataset.from_tensors(0).repeat().map(
        lambda _: (tf.random.normal(shape), tf.random.uniform([], 0, FLAGS.num_classes, tf.int32))
    ).batch(FLAGS.batch_size)
    num_train = FLAGS.num_train

    start = time.time()
    if FLAGS.warmup_steps:
        opt = keras.optimizers.SGD(FLAGS.learning_rate, momentum=FLAGS.momentum)
        train_phase(model, data, FLAGS.warmup_steps, "warmup", opt, label="Phase 1/2: warm-up (gates off)")
    if FLAGS.search_steps:
        opt = keras.optimizers.SGD(FLAGS.learning_rate, momentum=FLAGS.momentum)
        reg = lambda: stf.fusion_regularizer(model, FLAGS.length_scale, num_train, FLAGS.entropy)  # noqa: E731
        train_phase(model, data, FLAGS.search_steps, "search", opt, reg,
                    label="Phase 2/2: v-DropPath search")
        os.makedirs(FLAGS.model_dir, exist_ok=True)
        path = os.path.join(FLAGS.model_dir, "probabilities.json")
        atomic_write_json(path, stf.marginals(model))
        print(f"wrote {path}")
    print(f"done in {time.time() - start:.1f}s")


def run():
    """Console-script entry point."""
    app.run(main)


if __name__ == "__main__":
    sys.exit(run())
