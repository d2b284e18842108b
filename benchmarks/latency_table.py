"""A latency table's predictions against the measured latency of the real exported file.

    python benchmarks/latency_table.py [--backbones=tiny,densenet121] [--strategies=20]
        [--num_frames=16 --size=112] [--repeats=10] [--runs=10] [--seed=0]

Per backbone: the table is built (``tf_stfusion.latency.build_table``, the
``tensorflow`` runtime), then ``--strategies`` random strategies (every layer's
unit drawn uniformly from S, ST, S+ST, none) are pruned, written as the
exporter's SavedModel (``writers.write_saved_model``: uint8 input,
normalisation inside) and timed end to end as a client calls it (batch 1,
median of ``--runs`` calls after 2 warm-up calls). Prints every strategy's
predicted and measured ms, the median absolute error (ms and % of measured) and
Spearman's rank correlation. Random weights (latency does not depend on them).
The issue's aim: median error <= 10%, rank correlation >= 0.9. Run it on a quiet
machine: the table and the measurements are both wall-clock times.
"""

import os
import tempfile

from machine import machine_line  # benchmarks/machine.py

import tf_stfusion  # noqa: F401  (first: TensorFlow's environment defaults, see tf_stfusion/__init__.py)

from absl import app, flags, logging

flags.DEFINE_list("backbones", ["tiny", "densenet121"], "Backbones.")
flags.DEFINE_integer("strategies", 20, "Random strategies per backbone.")
flags.DEFINE_integer("num_frames", 16, "Frames per clip.")
flags.DEFINE_integer("size", 112, "Height and width.")
flags.DEFINE_integer("num_classes", 400, "Classes of the head.")
flags.DEFINE_integer("repeats", 10, "Timed calls per part of the table.")
flags.DEFINE_integer("runs", 10, "Timed calls per exported strategy.")
flags.DEFINE_integer("seed", 0, "Seed of the random strategies.")
FLAGS = flags.FLAGS


def spearman(a, b):
    """Spearman's rank correlation of two 1-D sequences (no ties expected: times in float)."""
    import numpy as np

    ra, rb = (np.argsort(np.argsort(x)).astype(float) for x in (a, b))
    return float(np.corrcoef(ra, rb)[0, 1])


def measured_ms(units, backbone, contract, video):
    """Batch-1 ms of the exported SavedModel of the pruned network of ``units``."""
    import tensorflow as tf

    import tf_stfusion as stf
    from tf_stfusion.export import writers
    from tf_stfusion.latency import median_latency

    pruned = stf.build_template(backbone, num_classes=FLAGS.num_classes, num_frames=FLAGS.num_frames,
                                input_size=FLAGS.size, units=units)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m", "1")
        os.makedirs(os.path.dirname(path))
        writers.write_saved_model(pruned, contract, path)
        serve = tf.saved_model.load(path).signatures["serving_default"]
        clip = tf.constant(video)
        return 1000 * median_latency(lambda: serve(video=clip)["probabilities"].numpy(), FLAGS.runs)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    import numpy as np
    import tensorflow as tf

    import tf_stfusion as stf
    from tf_stfusion.data.pipeline import InputContract
    from tf_stfusion.latency import build_table, predict

    print(machine_line(TensorFlow=tf.__version__))
    clip = (FLAGS.num_frames, FLAGS.size, FLAGS.size, 3)
    print(f"batch 1, clip {'x'.join(map(str, clip[:3]))}; table: median of {FLAGS.repeats} calls per part; "
          f"measured: the exported SavedModel, median of {FLAGS.runs} calls")
    contract = InputContract(num_frames=FLAGS.num_frames, frame_stride=1, sampler="dense", eval_clips=1,
                             eval_size=FLAGS.size, class_names=tuple(str(i) for i in range(FLAGS.num_classes)))
    video = np.random.default_rng(0).integers(0, 256, (1, *clip), dtype=np.uint8)
    rng = np.random.default_rng(FLAGS.seed)
    for backbone in FLAGS.backbones:
        table = build_table(backbone, FLAGS.num_classes, clip, repeats=FLAGS.repeats, log=lambda *a: None)
        n = len(stf.layer_names(backbone))
        predicted, measured = [], []
        for i in range(FLAGS.strategies):
            units = list(rng.choice(stf.UNITS, n))
            predicted.append(predict(table, units))
            measured.append(measured_ms(units, backbone, contract, video))
            kept = {u: units.count(u) for u in stf.UNITS}
            print(f"{backbone:<12} strategy {i:>2} {kept}: predicted {predicted[-1]:8.2f} ms, measured "
                  f"{measured[-1]:8.2f} ms")
        p, m = np.array(predicted), np.array(measured)
        print(f"{backbone}: {FLAGS.strategies} strategies: median abs error {np.median(np.abs(p - m)):.2f} ms "
              f"({100 * np.median(np.abs(p - m) / m):.1f}% of measured), Spearman rank correlation "
              f"{spearman(p, m):.3f}; measured {m.min():.2f}-{m.max():.2f} ms")


if __name__ == "__main__":
    app.run(main)
