"""A latency table's predictions against the measured latency of the real exported file.

    python benchmarks/latency_table.py [--backbones=tiny,densenet121] [--runtime=tensorflow]
        [--strategies=20] [--num_frames=16 --size=112] [--repeats=10] [--runs=10] [--seed=0]
    python benchmarks/latency_table.py --table=RUN/latency_onnxruntime.json [--strategies=20] [--record_error]
        [--retest] [--save_measurements=FILE]
    python benchmarks/latency_table.py --measurements=docs/latency-validation/densenet121_tensorflow.json

Per backbone: the table is built in ``--runtime`` (``tf_stfusion.latency.build_table``
with ``export.part_runtimes.runtime``: ``tensorflow``, ``onnxruntime`` or ``litert``)
-- or, with ``--table``, an existing table is read (its backbone, classes, clip and
runtime) -- then ``--strategies`` random strategies (every layer's unit drawn
uniformly from S, ST, S+ST, none) are pruned, written as the exporter writes the
runtime's file (``writers.WRITERS``: the SavedModel, the ONNX file or the float32
LiteRT file; uint8 input, normalisation inside) and timed end to end as the
export's latency check times it (batch 1, median of ``--runs`` calls after 2
warm-up calls). Random weights (latency does not depend on them). Prints every
strategy's predictions and measured ms, then per model the median absolute error
(ms and % of measured), its 90th percentile and Spearman's rank correlation:

* the plain sum of parts (``latency.predict(..., widths=False)``);
* the width-scaled sum (``predict``'s default: each part's work times its FLOPs in
  the strategy over its FLOPs where it was timed);
* the width-scaled sum times a scale fitted on measured strategies (``measured =
  b x sum``, least squares through the origin), each strategy predicted by the
  scale fitted on the others (leave-one-out): the error on strategies the scale
  never saw. The issue's aim: median error <= 10%, rank correlation >= 0.9.

``--retest`` times every file a second time after all the first measurements and
prints how well the measurement ranks the strategies against itself (a ceiling
for any prediction). ``--save_measurements`` writes the table and every
strategy's units and measured ms to a JSON file (``{backbone}`` in the path: one
per backbone); ``--measurements`` reads such a file and scores the models on it
without timing anything (``docs/latency-validation/`` holds the README's).

``--record_error`` (with ``--table``) writes into the table the ``calibration``
(the scale fitted on all the strategies, which ``tf_stfusion.latency.predict``
then applies) and ``validated_error``: ``relative`` = the 90th percentile of the
calibrated prediction's leave-one-out |predicted - measured| / measured (the
width-scaled sum's errors under ``uncalibrated``, the plain sum's under
``plain_sum``), with how and where it was measured (the machine line, the load
average). The export then allows the shipped file that much over the search's
budget (``export.checks.budget_error``). Run it on a quiet machine, where the
table was built: the table and the measurements are both wall-clock times.
"""

import datetime
import functools
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
flags.DEFINE_bool("retest", False, "Measure every strategy's file a second time, after all the first "
                  "measurements: how well the measurement ranks the strategies against itself bounds what any "
                  "prediction can reach.")
flags.DEFINE_string("save_measurements", None, "Also write every strategy's units and measured ms to this JSON "
                    "file.")
flags.DEFINE_string("measurements", None, "Read the table and its strategies' measured ms from this file "
                    "(--save_measurements) instead of timing anything again.")
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


def measure(table, rng):
    """``[{"units", "measured_ms"}]`` of ``FLAGS.strategies`` random strategies'
    exported files, printed as they come."""
    import numpy as np

    import tf_stfusion as stf
    from tf_stfusion.data.pipeline import InputContract

    frames, size = table["clip"][:2]
    contract = InputContract(num_frames=frames, frame_stride=1, sampler="dense", eval_clips=1, eval_size=size,
                             class_names=tuple(str(i) for i in range(table["num_classes"])))
    video = np.random.default_rng(0).integers(0, 256, (1, *table["clip"]), dtype=np.uint8)
    n = len(table["layers"])
    measured = []
    for i in range(FLAGS.strategies):
        units = [str(u) for u in rng.choice(stf.UNITS, n)]
        measured.append({"units": units, "measured_ms": measured_ms(units, table, contract, video)})
        kept = {u: units.count(u) for u in stf.UNITS}
        print(f"{table['backbone']:<12} strategy {i:>2} {kept}: measured {measured[-1]['measured_ms']:8.2f} ms")
    for i, row in enumerate(measured if FLAGS.retest else []):  # a second pass, after all the first ones
        row["retest_ms"] = measured_ms(row["units"], table, contract, video)
        print(f"{table['backbone']:<12} strategy {i:>2} measured again: {row['retest_ms']:8.2f} ms")
    return measured


def measurements(table, rng):
    """The strategies measured now (``measure``), saved with the table to
    ``--save_measurements`` (``{backbone}`` in the path: one file per backbone), or
    the ones ``--measurements`` holds (then nothing is timed again: a model of
    the table is refitted on the same measured files)."""
    if FLAGS.measurements:
        return read_measurements()[1]
    measured = measure(table, rng)
    if FLAGS.save_measurements:
        from tf_stfusion.fileio import atomic_write_json

        atomic_write_json(FLAGS.save_measurements.format(backbone=table["backbone"]), {
            "table": table, "runs": FLAGS.runs, "seed": FLAGS.seed, "strategies": measured, **here_and_now(table)})
    return measured


@functools.cache  # the table, the strategies and where they were measured: one read of the file
def read_measurements():
    """``(table, strategies, everything)`` of the ``--measurements`` file; exits with one line if it cannot be read."""
    import json

    from tf_stfusion.latency import check_table

    try:
        with open(FLAGS.measurements) as f:
            saved = json.load(f)
        missing = [k for k in ("table", "strategies") if k not in saved]
        if missing:
            raise ValueError(f"field(s) {missing} missing")
        table = check_table(saved["table"], f"{FLAGS.measurements}: field 'table'")
        return table, _checked_strategies(saved["strategies"], table), saved
    except (OSError, ValueError, TypeError) as e:
        sys.exit(f"error: {FLAGS.measurements}: not a file --save_measurements wrote ({e})")


def _checked_strategies(rows, table):
    """The saved ``strategies``, each ``{"units": one unit per layer of table, "measured_ms": > 0}``;
    a ``ValueError`` naming the first bad row."""
    from tf_stfusion.latency import predict

    if not isinstance(rows, list) or not rows:
        raise ValueError("field 'strategies' must be a non-empty list")
    for i, row in enumerate(rows):
        ms = row.get("measured_ms") if isinstance(row, dict) else None
        if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not ms > 0:
            raise ValueError(f"field 'strategies[{i}].measured_ms' must be milliseconds > 0, got {ms!r}")
        try:
            predict(table, row.get("units") or [])
        except (ValueError, TypeError) as e:
            raise ValueError(f"field 'strategies[{i}].units': {e}") from None
    return rows


def retest(rows):
    """Prints the measurement against itself when the strategies were measured twice
    (``--retest``): the median relative difference of the two passes and their
    Spearman rank correlation, the ceiling of any prediction's."""
    import numpy as np

    if not rows or any("retest_ms" not in r for r in rows):
        return
    a, b = (np.array([r[k] for r in rows]) for k in ("measured_ms", "retest_ms"))
    print(f"the measurement against itself ({len(rows)} strategies, two passes): median |first - second| / first "
          f"{100 * np.median(np.abs(a - b) / a):.1f}%, Spearman {spearman(a, b):.3f}")


def validate(table, rng):
    """``(plain sum, width-scaled sum, measured)`` ms of the measured strategies
    (``measurements``): the sum of parts without and with each part's work
    scaled by its FLOPs in the strategy (``latency.predict(widths=...)``)."""
    import numpy as np

    from tf_stfusion.latency import predict

    rows = measurements(table, rng)
    retest(rows)
    plain = np.array([predict(table, r["units"], calibrated=False, widths=False) for r in rows])
    scaled = np.array([predict(table, r["units"], calibrated=False) for r in rows])
    measured = np.array([r["measured_ms"] for r in rows])
    for i, (a, b, m) in enumerate(zip(plain, scaled, measured)):
        print(f"{table['backbone']:<12} strategy {i:>2}: sum of parts {a:8.2f} ms, width-scaled {b:8.2f} ms, "
              f"measured {m:8.2f} ms")
    return plain, scaled, measured


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
            "model": "measured = scale x the width-scaled sum of parts (latency.predict), least squares through the "
                     "origin, on random strategies' "
                     f"exported {table['runtime']} files (benchmarks/latency_table.py --seed={FLAGS.seed})"}


def summary(table, plain, p, m):
    """The validation's numbers: ``validated_error`` as the table stores it -- the
    errors of the calibrated prediction (the width-scaled sum ``p`` times a scale,
    each strategy's fitted without it) -- the width-scaled sum's (``uncalibrated``)
    and the plain sum of parts' (``plain_sum``)."""
    return {**errors(held_out_scaled(p, m), m),
            "statistic": "90th percentile of |predicted - measured| / measured, predicted = the width-scaled sum of "
                         "parts times a scale fitted on the other strategies (leave-one-out)",
            "uncalibrated": errors(p, m), "plain_sum": errors(plain, m),
            "strategies": int(len(m)), "measured": f"the exported {table['runtime']} file, batch 1, median of "
            f"{FLAGS.runs} calls (benchmarks/latency_table.py --seed={FLAGS.seed})" if not FLAGS.measurements else
            f"read from {FLAGS.measurements} (benchmarks/latency_table.py --save_measurements)",
            **measured_on(table)}


def measured_on(table):
    """Where and when the strategies were measured: now, or as ``--measurements`` records it."""
    if FLAGS.measurements:
        saved = read_measurements()[2]
        return {key: saved.get(key) for key in ("machine", "load_average", "date")}
    return here_and_now(table)


def here_and_now(table):
    """This machine's line (with the table's runtime), its load average and the time."""
    return {"machine": machine_line(**{table["runtime"]: table["runtime_version"]}),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def report(table, plain, p, m, result):
    """Prints the three models' errors: the plain sum, the width-scaled sum, times a fitted scale."""
    import numpy as np

    name = f"{table['backbone']} ({table['runtime']}): {len(m)} strategies, measured {m.min():.2f}-{m.max():.2f} ms"
    print(f"{name}; load average {result['load_average']}")
    for label, pred, e in (("sum of parts", plain, result["plain_sum"]), ("width-scaled sum", p, result["uncalibrated"])):
        print(f"  {label}: median abs error {np.median(np.abs(pred - m)):.2f} ms ({100 * e['median_relative']:.1f}% "
              f"of measured; 90th percentile {100 * e['relative']:.1f}%), Spearman {e['spearman']:.3f}")
    print(f"  width-scaled sum times a fitted scale ({fit_scale(p, m):.3f} on all; each strategy's fitted without it): "
          f"median error {100 * result['median_relative']:.1f}%, 90th percentile {100 * result['relative']:.1f}%, "
          f"Spearman {result['spearman']:.3f}")


def _timings(table):
    return [table[k] for k in ("backbone", "clip", "runtime", "call_overhead_ms", "fixed", "layers")]


def tables():
    """``(table, path or None)`` to validate: ``--table``, else one built per ``--backbones``."""
    from tf_stfusion.export.part_runtimes import runtime
    from tf_stfusion.latency import build_table, read_table

    if FLAGS.measurements:
        saved = read_measurements()[0]
        try:
            given = read_table(FLAGS.table) if FLAGS.table else saved
        except (OSError, ValueError) as e:  # read_table's one-line errors name the file and the field
            sys.exit(f"error: {e}")
        if _timings(given) != _timings(saved):
            sys.exit(f"error: {FLAGS.measurements} was measured against another table than {FLAGS.table} (their "
                     "timings differ); give that table, or measure this one's strategies")
        yield saved, FLAGS.table
        return
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


TABLE_FLAGS = ("backbones", "runtime", "num_frames", "size", "num_classes", "repeats")  # what builds a table
TIMING_FLAGS = ("strategies", "runs", "seed", "retest", "save_measurements")  # what measures its strategies


def check_unused_flags():
    """Exits with one line for flags given that would do nothing: the table's with
    ``--table`` (it has its backbone, clip, classes and runtime), and every timing
    flag with ``--measurements`` (nothing is timed)."""
    if FLAGS.measurements:
        unused, why = TABLE_FLAGS + TIMING_FLAGS, "--measurements times nothing"
    elif FLAGS.table:
        unused, why = TABLE_FLAGS, "--table has its backbone, clip, classes and runtime"
    else:
        return
    given = [f"--{name}" for name in unused if FLAGS[name].present]
    if given:
        sys.exit(f"error: {', '.join(given)} would do nothing: {why}; drop them")


def check_machine(table, path):
    """A ``--table`` built on another machine or runtime version
    (``export.checks.other_machine``) is measured here against timings made there:
    a warning, and with ``--record_error`` an exit before anything is timed (its
    calibration and validated error would mix the two machines)."""
    from tf_stfusion.export.checks import other_machine
    from tf_stfusion.export.part_runtimes import runtime

    if FLAGS.measurements or path is None:
        return
    elsewhere = other_machine(table["machine"], f"{table['runtime']} {table['runtime_version']}",
                              runtime(table["runtime"]).version)
    if elsewhere and FLAGS.record_error:
        sys.exit(f"error: {path}: {elsewhere}; --record_error would write this machine's measurements into it: "
                 "validate it where it was built, or build a table here")
    if elsewhere:
        print(f"warning: {path}: {elsewhere}: the errors below compare that machine's table with this one's files")


def check_save_path():
    """Exits with one line, before anything is timed, for a ``--save_measurements``
    path that could not be written after it: one file for several backbones, braces
    other than ``{backbone}``, a folder that does not exist."""
    path = FLAGS.save_measurements
    if not path:
        return
    if len(FLAGS.backbones) > 1 and not FLAGS.table and "{backbone}" not in path:
        sys.exit("error: --save_measurements: put {backbone} in the path to save each backbone's measurements")
    try:
        folder = os.path.dirname(os.path.abspath(path.format(backbone="b")))
    except (KeyError, IndexError, ValueError) as e:
        sys.exit(f"error: --save_measurements={path}: {{backbone}} is the only name it may hold in braces ({e!r})")
    if not os.path.isdir(folder):
        sys.exit(f"error: --save_measurements={path}: no folder {folder}; create it first")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    import numpy as np
    import tensorflow as tf

    from tf_stfusion.fileio import atomic_write_json

    check_unused_flags()
    check_save_path()
    if FLAGS.record_error and not FLAGS.table:
        sys.exit("error: --record_error writes into --table; give the table to validate")
    if FLAGS.strategies < 5 and not FLAGS.measurements:
        sys.exit(f"error: --strategies={FLAGS.strategies}: a validation needs at least 5 random strategies (20 for "
                 "the README's figures)")
    print(machine_line(TensorFlow=tf.__version__))
    rng = np.random.default_rng(FLAGS.seed)
    for table, path in tables():
        check_machine(table, path)
        clip = "x".join(map(str, table["clip"][:3]))
        measured = f"read from {FLAGS.measurements}" if FLAGS.measurements else \
            f"the exported file, median of {FLAGS.runs} calls"
        print(f"{table['runtime']} {table['runtime_version']}, batch 1, clip {clip}; table: "
              f"{table.get('method', 'how not recorded')}; measured: {measured}")
        plain, p, m = validate(table, rng)
        result = summary(table, plain, p, m)
        report(table, plain, p, m, result)
        if FLAGS.record_error:
            if table.get("validated_error"):
                old = table["validated_error"]
                print(f"replacing the table's earlier validation ({old.get('strategies')} strategies, "
                      f"{old.get('date')}, error {old.get('relative')})")
            atomic_write_json(path, {**table, "calibration": calibration(table, p, m), "validated_error": result})
            print(f"calibration scale {fit_scale(p, m):.4f} and validated_error {result['relative']} written into {path}")


if __name__ == "__main__":
    app.run(main)
