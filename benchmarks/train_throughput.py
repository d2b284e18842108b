"""Training throughput: clips/s of the warm-up and the search phase.

    python benchmarks/train_throughput.py [--backbones=tiny,densenet121] [--num_frames=8 --input_size=112]

For each backbone, builds the template, and times the real train step of
``tf_stfusion.trainer`` (SGD, weight decay; the search step adds the relaxed
Bernoulli gates and the Eq. 5 regulariser) on random clips already in memory,
so that the number is the model's, not the input pipeline's. Prints clips/s
per phase, the search/warm-up time ratio, and the machine.
"""

import time

from machine import machine_line  # benchmarks/machine.py

import tf_stfusion  # noqa: F401  (first: TensorFlow's environment defaults, see tf_stfusion/__init__.py)

from absl import app, flags, logging

flags.DEFINE_list("backbones", ["tiny", "densenet121"], "Templates to measure.")
flags.DEFINE_integer("num_frames", 8, "Frames per clip.")
flags.DEFINE_integer("input_size", 112, "Height and width.")
flags.DEFINE_integer("batch_size", 0, "Batch (0: 16 for tiny, 2 for densenet121 on CPU, 16 on GPU).")
flags.DEFINE_integer("steps", 20, "Timed steps per phase (after 3 untimed ones).")
flags.DEFINE_integer("num_classes", 400, "Classifier width.")
FLAGS = flags.FLAGS


def measure(backbone, phase, batch, tf, keras):
    import tf_stfusion as stf
    from tf_stfusion.trainer import make_train_step

    model = stf.build_template(backbone, num_classes=FLAGS.num_classes, num_frames=FLAGS.num_frames,
                               input_size=FLAGS.input_size, seed=0)
    stf.set_gate_mode(model, "off" if phase == "warmup" else "search")
    strategy = tf.distribute.get_strategy()
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    variables = model.trainable_variables
    step_var = tf.Variable(0, dtype=tf.int64)
    step = make_train_step(model, strategy, optimizer, variables, step_var, global_batch=batch,
                           weight_decay=1e-4, regularizer=(50.0, 10000, "binary") if phase == "search" else None)
    shape = (batch, FLAGS.num_frames, FLAGS.input_size, FLAGS.input_size, 3)
    x = tf.random.normal(shape)
    y = tf.random.uniform([batch], 0, FLAGS.num_classes, tf.int32)
    for _ in range(3):
        step(x, y).numpy()
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
        out = step(x, y)
    out.numpy()  # waits for the last step
    seconds = (time.perf_counter() - start) / FLAGS.steps
    return seconds, batch / seconds


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    import keras
    import tensorflow as tf

    gpu = bool(tf.config.list_physical_devices("GPU"))
    print(machine_line(TensorFlow=tf.__version__, Keras=keras.__version__))
    print(f"clips {FLAGS.num_frames}x{FLAGS.input_size}x{FLAGS.input_size}, {FLAGS.steps} timed steps per phase")
    print(f"{'backbone':<12} {'batch':>5} {'warm-up clips/s':>16} {'search clips/s':>15} {'search/warm-up step time':>25}")
    for backbone in FLAGS.backbones:
        batch = FLAGS.batch_size or (16 if gpu or backbone == "tiny" else 2)
        warm_s, warm_rate = measure(backbone, "warmup", batch, tf, keras)
        search_s, search_rate = measure(backbone, "search", batch, tf, keras)
        print(f"{backbone:<12} {batch:>5} {warm_rate:>16.1f} {search_rate:>15.1f} {search_s / warm_s:>24.3f}x")


if __name__ == "__main__":
    app.run(main)
