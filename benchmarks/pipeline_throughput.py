"""Clip pipeline throughput (train views) on the synthetic set, next to the
training step rate of the tiny template at the same clip size.

    python benchmarks/pipeline_throughput.py [--num_frames=16 --input_size=112]

Prepares the synthetic motion set (32 frames, short side 128) into a temporary
folder, then measures clips/s of ``make_dataset(training=True)`` and of
warm-up training steps of ``tiny`` on random clips. Prints the machine.
"""

import tempfile
import time

from machine import machine_line  # benchmarks/machine.py

import tf_stfusion  # noqa: F401  (first: TensorFlow's environment defaults, see tf_stfusion/__init__.py)

from absl import app, flags

flags.DEFINE_integer("num_frames", 16, "Frames per clip.")
flags.DEFINE_integer("input_size", 112, "Crop size.")
flags.DEFINE_integer("batch_size", 8, "Batch size.")
flags.DEFINE_integer("batches", 40, "Batches measured (after 5 warm-up batches).")
FLAGS = flags.FLAGS


def _rate(iterator, batches, batch_size, warmup=5):
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def main(argv):
    del argv
    import keras
    import tensorflow as tf

    import tf_stfusion as stf
    from tf_stfusion.data import pipeline, prepare, synthetic

    out = tempfile.mkdtemp(prefix="stf_bench_")
    config = synthetic.SyntheticConfig(videos_per_class=16, num_frames=32, size=128)
    index = prepare.build_index("synthetic", None, "train", synthetic_config=config)
    prepare.prepare(index, out, examples_per_shard=16, short_side=0, synthetic_config=config, progress=False)
    files = pipeline.list_shards(out, "train")
    spec = pipeline.ClipSpec(num_frames=FLAGS.num_frames, input_size=FLAGS.input_size)
    ds = pipeline.make_dataset(files, spec, training=True, batch_size=FLAGS.batch_size)
    pipe = _rate(iter(ds), FLAGS.batches, FLAGS.batch_size)

    model = stf.build_template("tiny", num_classes=8, num_frames=FLAGS.num_frames, input_size=FLAGS.input_size)
    opt = keras.optimizers.SGD(0.01, momentum=0.9)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    x = tf.random.normal([FLAGS.batch_size, FLAGS.num_frames, FLAGS.input_size, FLAGS.input_size, 3])
    y = tf.zeros([FLAGS.batch_size], tf.int32)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        opt.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss

    steps = iter(lambda: step(), None)
    train = _rate(steps, max(FLAGS.batches // 4, 5), FLAGS.batch_size, warmup=2)
    shape = f"{FLAGS.num_frames}x{FLAGS.input_size}x{FLAGS.input_size}"
    print(f"pipeline (train views {shape}, batch {FLAGS.batch_size}): {pipe:.1f} clips/s")
    print(f"tiny template training (warm-up, {shape}, batch {FLAGS.batch_size}): {train:.1f} clips/s")
    print(machine_line(TensorFlow=tf.__version__))


if __name__ == "__main__":
    app.run(main)
