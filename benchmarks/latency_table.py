"""A latency table's predictions against the measured latency of the real exported file.

    python benchmarks/latency_table.py [--backbones=tiny,densenet121] [--runtime=tensorflow]
        [--strategies=20] [--num_frames=16 --size=112] [--repeats=10] [--runs=10] [--seed=0]
    python benchmarks/latency_table.py --table=RUN/latency_onnxruntime.json [--strategies=20] [--record_error]

Per backbone: the table is built in ``--runtime`` (``tf_stfusion.latency.build_table``
with ``export.part_runtimes.runtime``: ``tensorflow``, ``onnxruntime`` or ``litert``)
-- or, with ``--table``, an existing table is read (its backbone, classes, clip and
runtime) -- then ``--strategies`` random strategies (every layer's unit drawn
uniformly from S, ST, S+ST, none) are pruned, written as the exporter writes the
runtime's file (``writers.WRITERS``: the SavedModel, the ONNX file or the float32
LiteRT file; uint8 input, normalisation inside) and timed end to end as the
export's latency check times it (batch 1, median of ``--runs`` calls after 2
warm-up calls). Prints every strategy's predicted (the sum of parts) and measured
ms, the median absolute error (ms and % of measured), its 90th percentile and
Spearman's rank correlation; then the same for the sum times a scale fitted on
measured strategies (``measured = b x sum``, least squares through the origin),
each strategy predicted by the scale fitted on the others (leave-one-out), so the
error is that on strategies the scale never saw. Random weights (latency does not
depend on them). The issue's aim: median error <= 10%, rank correlation >= 0.9.

``--record_error`` (with ``--table``) writes into the table the ``calibration``
(the scale fitted on all the strategies, which ``tf_stfusion.latency.predict``
then applies) and ``validated_error``: ``relative`` = the 90th percentile of the
calibrated prediction's leave-one-out |predicted - measured| / measured (the plain
sum's errors under ``uncalibrated``), with how and where it was measured (the
machine line, the load average).
The export then allows the shipped file that much over the search's budget
(``export.checks.budget_error``). Run it on a quiet machine, where the table was
built: the table and the measurements are both wall-clock times.
"""

import datetime
import os
import sys
import tempfile

from machine import machine_line  # benchmarks/machine.py

import tf_stfusion  # noqa: F401  (first: TensorFlow's environment defaults, see tf_stfusion/__init__.py)

from absl import app, flags, logging

flags.DEFINE_list("backbones", ["tiny", "densenet121"], "Backbones (without --table).")
flags.DEFINE_enum("runtime", "tensorflow", ["tensorflow", "onnxruntime", "litert"], "Runtime (without --table).")
flags.DEFINE_string("table", None, "Validate this latency table (its backbone, classes, clip and runtime).")
flags.DEFINE_bool("record_error", False, "With --table: write the fitted calibration and its validated_error "
                  "into it.")
flags.DEFINE_integer("strategies", 20, "Random strategies per backbone.")
flags.DEFINE_integer("num_frames", 16, "Frames per clip (without --table).")
flags.DEFINE_integer("size", 112, "Height and width (without --table).")
flags.DEFINE_integer("num_classes", 400, "Classes of the head (without --table).")
flags.DEFINE_integer("repeats", 10, "Timed calls per part of the table.")
flags.DEFINE_integer("runs", 10, "Timed calls per exported strategy.")
flags.DEFINE_integer("seed", 0, "Seed of the random strategies.")
FLAGS = flags.FLAGS


def spearman(a, b):
    """Spearman's rank correlation of two 1-D sequences (no ties expected: times in float)."""
    import numpy as np

    ra, rb = (np.argsort(np.argsort(x)).astype(float) for x in (a, b))
    return float(np.corrcoef(ra, rb)[0, 1])


def measured_ms(units, table, contract, video):
    """Batch-1 ms of the exported file of ``table``'s runtime of the pruned network of ``units``."""
    import tf_stfusion as stf
    from tf_stfusion.export import checks, writers
    from tf_stfusion.latency import median_latency

    frames, size = table["clip"][:2]
    pruned = stf.build_template(table["backbone"], num_classes=table["num_classes"], num_frames=frames,
                                input_size=size, units=units)
    writer = writers.WRITERS[checks.RUNTIME_FILES[table["runtime"]]]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, writer.relative_path("m", 1))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        writer.write(pruned, contract, path, "m")
        call = writer.load(path)
        return 1000 * median_latency(lambda: call(video)["probabilities"], FLAGS.runs)


def validate(table, rng):
    """``(predicted, measured)`` ms of ``FLAGS.strategies`` random strategies, printed."""
    import numpy as np

    import tf_stfusion as stf
    from tf_stfusion.data.pipeline import InputContract
    from tf_stfusion.latency import predict

    frames, size = table["clip"][:2]
    contract = InputContract(num_frames=frames, frame_stride=1, sampler="dense", eval_clips=1, eval_size=size,
                             class_names=tuple(str(i) for i in range(table["num_classes"])))
    video = np.random.default_rng(0).integers(0, 256, (1, *table["clip"]), dtype=np.uint8)
    n = len(table["layers"])
    predicted, measured = [], []
    for i in range(FLAGS.strategies):
        units = list(rng.choice(stf.UNITS, n))
        predicted.append(predict(table, units, calibrated=False))  # the sum of parts; the scale is fitted below
        measured.append(measured_ms(units, table, contract, video))
        kept = {u: units.count(u) for u in stf.UNITS}
        print(f"{table['backbone']:<12} strategy {i:>2} {kept}: predicted {predicted[-1]:8.2f} ms, measured "
              f"{measured[-1]:8.2f} ms")
    return np.array(predicted), np.array(measured)


def fit_scale(p, m):
    """The least-squares ``b`` of ``m = b p`` (through the origin)."""
    import numpy as np

    return float(np.sum(p * m) / np.sum(p * p))


def held_out_scaled(p, m):
    """Each strategy's sum of parts ``p`` times the scale fitted on the *other*
    strategies (leave-one-out): the calibrated prediction's error on strategies it
    was not fitted on."""
    import numpy as np

    return np.array([p[i] * fit_scale(np.delete(p, i), np.delete(m, i)) for i in range(len(p))])


def errors(p, m):
    """``{"median_relative", "relative" (90th percentile), "spearman"}`` of predictions ``p`` of ``m``."""
    import numpy as np

    relative = np.abs(p - m) / m
    return {"median_relative": round(float(np.median(relative)), 4),
            "relative": round(float(np.percentile(relative, 90)), 4), "spearman": round(spearman(p, m), 4)}


def calibration(table, p, m):
    """The table's ``calibration``: the scale of the sum of parts fitted on all ``m``."""
    return {"scale": round(fit_scale(p, m), 4), "fitted_on": len(m),
            "model": "measured = scale x the sum of parts, least squares through the origin, on random strategies' "
                     f"exported {table['runtime']} files (benchmarks/latency_table.py --seed={FLAGS.seed})"}


def summary(table, p, m):
    """The validation's numbers: ``validated_error`` as the table stores it -- the
    errors of the calibrated prediction, each strategy's scale fitted without it --
    and the plain sum of parts' errors (``uncalibrated``)."""
    return {**errors(held_out_scaled(p, m), m),
            "statistic": "90th percentile of |predicted - measured| / measured, predicted = the sum of parts times "
                         "a scale fitted on the other strategies (leave-one-out)",
            "uncalibrated": errors(p, m),
            "strategies": int(len(m)), "measured": f"the exported {table['runtime']} file, batch 1, median of "
            f"{FLAGS.runs} calls (benchmarks/latency_table.py --seed={FLAGS.seed})",
            "machine": machine_line(**{table["runtime"]: table["runtime_version"]}),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def tables():
    """``(table, path or None)`` to validate: ``--table``, else one built per ``--backbones``."""
    from tf_stfusion.export.part_runtimes import runtime
    from tf_stfusion.latency import build_table, read_table

    if FLAGS.table:
        try:
            yield read_table(FLAGS.table), FLAGS.table
        except (OSError, ValueError) as e:  # read_table's one-line errors name the file and the field
            sys.exit(f"error: {e}")
        return
    clip = (FLAGS.num_frames, FLAGS.size, FLAGS.size, 3)
    for backbone in FLAGS.backbones:
        yield build_table(backbone, FLAGS.num_classes, clip, runtime(FLAGS.runtime), FLAGS.repeats,
                          log=lambda *a: None), None


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    import numpy as np
    import tensorflow as tf

    from tf_stfusion.fileio import atomic_write_json

    if FLAGS.record_error and not FLAGS.table:
        sys.exit("error: --record_error writes into --table; give the table to validate")
    if FLAGS.strategies < 5:
        sys.exit(f"error: --strategies={FLAGS.strategies}: a validation needs at least 5 random strategies (20 for "
                 "the README's figures)")
    print(machine_line(TensorFlow=tf.__version__))
    rng = np.random.default_rng(FLAGS.seed)
    for table, path in tables():
        clip = "x".join(map(str, table["clip"][:3]))
        print(f"{table['runtime']} {table['runtime_version']}, batch 1, clip {clip}; table: {table['method']}; "
              f"measured: the exported file, median of {FLAGS.runs} calls")
        p, m = validate(table, rng)
        result = summary(table, p, m)
        raw, scale = result["uncalibrated"], fit_scale(p, m)
        print(f"{table['backbone']} ({table['runtime']}): {len(m)} strategies: sum of parts: median abs error "
              f"{np.median(np.abs(p - m)):.2f} ms ({100 * raw['median_relative']:.1f}% of measured; 90th percentile "
              f"{100 * raw['relative']:.1f}%), Spearman rank correlation {raw['spearman']:.3f}; measured "
              f"{m.min():.2f}-{m.max():.2f} ms; load average {result['load_average']}")
        print(f"{table['backbone']} ({table['runtime']}): times a fitted scale ({scale:.3f} on all; each strategy's "
              f"fitted without it): median error {100 * result['median_relative']:.1f}%, 90th percentile "
              f"{100 * result['relative']:.1f}%, Spearman {result['spearman']:.3f}")
        if FLAGS.record_error:
            if table.get("validated_error"):
                old = table["validated_error"]
                print(f"replacing the table's earlier validation ({old.get('strategies')} strategies, "
                      f"{old.get('date')}, error {old.get('relative')})")
            atomic_write_json(path, {**table, "calibration": calibration(table, p, m), "validated_error": result})
            print(f"calibration scale {scale:.4f} and validated_error {result['relative']} written into {path}")


if __name__ == "__main__":
    app.run(main)
