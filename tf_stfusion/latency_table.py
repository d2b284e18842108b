"""``python -m tf_stfusion.latency_table``: build a latency table where the model will run.

    python -m tf_stfusion.latency_table --model_dir=RUN --output=RUN/latency_tensorflow.json
    python -m tf_stfusion.latency_table --backbone=tiny --num_classes=8 --num_frames=8 --size=48 \\
        --output=tiny.json

Times every fusion layer's units (S, ST, S+ST) in their place in the network and
the fixed parts (stem, transitions, head), batch 1, on ``--runtime`` (how:
``tf_stfusion.latency``; ``onnxruntime`` and ``litert``: each part converted as
the export converts that file, ``export.part_runtimes``), and writes the table as JSON with the machine line,
the runtime's version and each timed part's FLOPs (``predict`` scales a part by its FLOPs in a strategy).
For a device without TensorFlow, ``--parts_dir=DIR`` converts the parts here instead and
``python -m tf_stfusion.latency_device --parts=DIR --output=T`` times them there with the
runtime alone. Then validate it where it was built: ``python benchmarks/latency_table.py --table=T --record_error``
fits the calibration scale and records the validated error that the export allows. With ``--model_dir`` the backbone, class count and clip
size are the run's (its input contract: frames and evaluation crop), so the
table fits the search's ``--latency_table``. Run it on the machine the model
will be served on, with nothing else running.
"""

import os
import sys

from absl import flags

from tf_stfusion.latency import RUNTIMES

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("model_dir", None, "A training run: its backbone, classes and contract clip size.")
    flags.DEFINE_string("backbone", None, "Without --model_dir: the backbone (e.g. tiny, densenet121).")
    flags.DEFINE_integer("num_classes", 0, "Without --model_dir: classes of the head.")
    flags.DEFINE_integer("num_frames", 0, "Frames per clip (default: the run's).")
    flags.DEFINE_integer("size", 0, "Height and width of a clip (default: the run's evaluation crop).")
    flags.DEFINE_enum("runtime", "tensorflow", list(RUNTIMES), "The runtime the table is for: tensorflow (the "
                      "SavedModel), onnxruntime (the .onnx file) or litert (the float32 .tflite file). Each part is "
                      "converted as the export converts that file (needs TensorFlow) and timed in the runtime.")
    flags.DEFINE_integer("repeats", 10, "Timed calls per part (the median is kept), after 2 warm-up calls.")
    flags.DEFINE_string("output", None, "Where the JSON table goes.")
    flags.DEFINE_string("parts_dir", None, "Instead of timing here: convert every part for --runtime "
                        "(onnxruntime or litert) into this folder, to be timed on the device that has only the "
                        "runtime: python -m tf_stfusion.latency_device --parts=DIR --output=T.")


def table_settings():
    """``(backbone, num_classes, clip)`` of the command line; raises ``ValueError``
    naming the flag."""
    if FLAGS.parts_dir:
        if FLAGS.runtime == "tensorflow":
            raise ValueError("--parts_dir converts parts for onnxruntime or litert; a tensorflow table is built "
                             "where TensorFlow is: without --parts_dir")
        ignored = [f"--{name}" for name in ("output", "repeats") if FLAGS[name].present]
        if ignored:  # nothing is timed here: the device's latency_device takes them
            raise ValueError(f"--parts_dir converts, it times nothing: give {' and '.join(ignored)} to python -m "
                             "tf_stfusion.latency_device on the device instead")
    elif not FLAGS.output:
        raise ValueError("--output is required (where the JSON table goes)")
    else:
        if os.path.isdir(FLAGS.output):  # else the table is timed, then cannot be written
            raise ValueError(f"--output={FLAGS.output}: a folder; give the JSON file's path (e.g. "
                             f"{os.path.join(FLAGS.output, 'latency_' + FLAGS.runtime + '.json')})")
        folder = os.path.dirname(os.path.abspath(FLAGS.output))
        if not os.path.isdir(folder):  # before minutes of timing, not after
            raise ValueError(f"--output={FLAGS.output}: no folder {folder}; create it first")
    if FLAGS.repeats < 1 or FLAGS.num_frames < 0 or FLAGS.size < 0:
        raise ValueError("need --repeats >= 1, --num_frames >= 0, --size >= 0")
    if FLAGS.model_dir:
        from tf_stfusion.run.folder import RunFolder

        record = RunFolder(FLAGS.model_dir).record()
        contract = record.contract
        backbone, num_classes = record.config.backbone, len(contract.class_names)
        frames, size = FLAGS.num_frames or contract.num_frames, FLAGS.size or contract.eval_size
    else:
        if not FLAGS.backbone or FLAGS.num_classes < 1 or not FLAGS.num_frames or not FLAGS.size:
            raise ValueError("give --model_dir, or --backbone, --num_classes, --num_frames and --size")
        backbone, num_classes, frames, size = FLAGS.backbone, FLAGS.num_classes, FLAGS.num_frames, FLAGS.size
    from tf_stfusion.models import layer_names

    layer_names(backbone)  # an unknown backbone: one line, before anything is timed
    return backbone, num_classes, (frames, size, size, 3)


def main(argv):
    del argv  # run_app refuses positional arguments
    try:
        backbone, num_classes, clip = table_settings()
        from tf_stfusion.export.part_runtimes import runtime
        from tf_stfusion.fileio import atomic_write_json
        from tf_stfusion.latency import build_table, predict, table_line
        from tf_stfusion.machine import machine_line

        target = runtime(FLAGS.runtime)
        if FLAGS.parts_dir:
            from tf_stfusion.latency import export_parts

            export_parts(backbone, num_classes, clip, target, FLAGS.parts_dir)
            print(f"now, on the device: python -m tf_stfusion.latency_device --parts={FLAGS.parts_dir} "
                  f"--output=latency_{FLAGS.runtime}.json")
            return 0
        print(machine_line(**{target.name: target.version}))
        table = build_table(backbone, num_classes, clip, target, FLAGS.repeats)
        atomic_write_json(FLAGS.output, table)
    except ImportError as e:  # the runtime's package
        print(f"error: --runtime={FLAGS.runtime} needs its package ({e}); pip install it", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = len(table["layers"])
    print(f"{table_line(table)}; predicted S {predict(table, ['S'] * n):.2f} ms, ST "
          f"{predict(table, ['ST'] * n):.2f} ms -> {FLAGS.output}")
    return 0


def run():
    """Console-script entry point (``stfusion-latency``)."""
    from tf_stfusion.configs import run_app

    run_app(main, define_flags)


if __name__ == "__main__":
    run()
