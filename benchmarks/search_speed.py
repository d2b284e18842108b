"""What the strategy search costs: racing vs scoring everything, and replicas.

    python benchmarks/search_speed.py --model_dir=runs/demo [--num_samples=100]

On a finished run (the demo's), three searches of the same ``--num_samples``
sampled strategies (+ S, ST, S+ST) into temporary folders:

1. exhaustive (``--racing=off``): every strategy on every selection video;
2. racing (``--racing=on``, eta 3): successive halving with paired elimination;
3. racing under ``MirroredStrategy`` over 2 logical CPU devices.

Prints strategy-video (and clip) evaluations and wall time of each, whether
racing picks the exhaustive pick or one statistically indistinguishable from it
(paired 95% interval of the two on the whole selection split containing 0), and
whether the 2-replica search gives the one-device results; and the machine.
"""

import os
import tempfile
import time

from machine import machine_line  # benchmarks/machine.py

import tf_stfusion  # noqa: F401  (first: TensorFlow's environment defaults, see tf_stfusion/__init__.py)

from absl import app, flags, logging

flags.DEFINE_string("model_dir", "runs/demo", "A training run with a finished search phase.")
flags.DEFINE_integer("num_samples", 100, "Sampled strategies.")
flags.DEFINE_integer("tiles", 8, "Strategies per tiled batch.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    from tf_stfusion.search import SearchConfig, row_correct, run_search
    from tf_stfusion.selection import paired_difference

    print(machine_line(TensorFlow=tf.__version__))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, racing, distribution in (
                ("exhaustive", "off", None),
                ("racing", "on", None),
                ("racing, 2 replicas", "on", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))):
            config = SearchConfig(model_dir=FLAGS.model_dir, num_samples=FLAGS.num_samples, tiles=FLAGS.tiles,
                                  racing=racing, output_dir=os.path.join(tmp, name.replace(" ", "_").replace(",", "")),
                                  progress=False)
            start = time.perf_counter()
            try:
                results[name] = run_search(config, log=lambda *a: None, distribution=distribution)
            except (ValueError, FileNotFoundError) as e:  # what stfusion-search reports in one line, too
                raise SystemExit(f"error: {e} (this benchmark needs a run with a finished search phase: "
                                 "the README's first command makes runs/demo)")
            results[name].wall = time.perf_counter() - start

    full = results["exhaustive"]
    views = full.comparison["search"]["clip_evaluations"] // max(full.strategy_videos, 1)
    print(f"{FLAGS.model_dir}: {FLAGS.num_samples} sampled strategies + 3 fixed, "
          f"{full.rows[0]['num_videos']} selection videos x {views} clip(s)")
    print(f"{'search':<22} {'strategy-videos':>16} {'clip evals':>11} {'vs exhaustive':>14} {'wall s':>8} "
          f"{'pick':>12}")
    for name, r in results.items():
        print(f"{name:<22} {r.strategy_videos:>16,} {r.strategy_videos * views:>11,} "
              f"{100 * r.strategy_videos / full.strategy_videos:>13.0f}% {r.wall:>8.1f} {r.best['id']:>12}")
    by_id = {row["id"]: row for row in full.rows}
    for name in ("racing", "racing, 2 replicas"):
        pick = results[name].best["id"]
        if pick == full.best["id"]:
            print(f"{name}: picks the exhaustive pick ({pick})")
        else:
            d = paired_difference(row_correct(by_id[pick]), row_correct(by_id[full.best["id"]]))
            print(f"{name}: picks {pick}, exhaustive {full.best['id']}: top-1 difference {100 * d.diff:+.2f} points, "
                  f"paired 95% interval [{100 * d.low:+.1f}, {100 * d.high:+.1f}] -> "
                  f"{'indistinguishable' if d.low <= 0 <= d.high else 'DIFFERENT'}")
    one, two = results["racing"], results["racing, 2 replicas"]
    same = all(a["correct"] == b["correct"] and abs(a["top1"] - b["top1"]) < 1e-9 for a, b in zip(one.rows, two.rows))
    print(f"2 replicas vs one device: {'identical' if same else 'DIFFERENT'} per-video results; "
          f"wall {two.wall / one.wall:.2f}x of one device (2 logical devices share {os.cpu_count()} cores)")
    np.testing.assert_equal(same, True)


if __name__ == "__main__":
    app.run(main)
