"""Size and single-clip latency of the exported pruned network in every format:
SavedModel, ONNX Runtime and LiteRT float32 / float16 / int8.

    python benchmarks/litert_latency.py [--backbones=tiny,mobilenet_v2,densenet121] [--strategies=S]
        [--num_frames=16 --size=112] [--runs=10] [--calibration_clips=16]

Random weights with random BatchNorm statistics (latency does not depend on the
values; int8 is calibrated on ``--calibration_clips`` random clips, so its
*accuracy* means nothing here -- the export report measures that on a run's
validation split). Batch 1, uint8 input, normalisation inside; every file is
written by the exporter's own writers. LiteRT runs with ``ai_edge_litert``'s
interpreter (XNNPACK) on all CPU threads, ONNX Runtime and TensorFlow with their
defaults. Prints the median of ``--runs`` timed calls after 2 untimed ones, the
float LiteRT file's max abs difference to the Keras network, and the machine;
then the structure of the float and int8 LiteRT files: ops computing in int8,
the partitions XNNPACK takes each in (1: the whole graph), and the ops per kind.
(Time per op kind is not printed: ``ai_edge_litert`` 2.3's Python interpreter
has no op profiler -- the C++ ``benchmark_model --enable_op_profiling`` has.)
"""

import os
import tempfile

from machine import machine_line  # benchmarks/machine.py

import tf_stfusion  # noqa: F401  (first: TensorFlow's environment defaults, see tf_stfusion/__init__.py)

from absl import app, flags, logging

flags.DEFINE_list("backbones", ["tiny", "mobilenet_v2", "densenet121"], "Templates.")
flags.DEFINE_list("strategies", ["S"], "Uniform strategies to export.")
flags.DEFINE_integer("num_frames", 16, "Frames per clip.")
flags.DEFINE_integer("size", 112, "Height and width.")
flags.DEFINE_integer("runs", 10, "Timed calls per file.")
flags.DEFINE_integer("calibration_clips", 16, "Random clips calibrating int8.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)
    import ai_edge_litert
    import numpy as np
    import onnxruntime
    import tensorflow as tf

    import tf_stfusion as stf
    from tf_stfusion.data.pipeline import InputContract
    from tf_stfusion.export import litert, writers
    from tf_stfusion.export.serving import clip_probabilities
    from tf_stfusion.fileio import size_on_disk
    from tf_stfusion.models.prune import prune

    print(machine_line(TensorFlow=tf.__version__, **{"ONNX Runtime": onnxruntime.__version__},
                       LiteRT=getattr(ai_edge_litert, "__version__", "ai-edge-litert")))
    print(f"batch 1, clip {FLAGS.num_frames}x{FLAGS.size}x{FLAGS.size}, median of {FLAGS.runs} runs; "
          "size in MB, latency in ms")
    header = ["SavedModel", "ONNX RT", "LiteRT f32", "LiteRT f16", "LiteRT int8"]
    print(f"{'backbone':<13} {'strategy':<8} {'':<8} " + " ".join(f"{h:>11}" for h in header)
          + f" {'int8/SavedModel':>15} {'f32 max diff':>12}")
    shape = (FLAGS.num_frames, FLAGS.size, FLAGS.size, 3)
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (1, *shape), dtype=np.uint8)
    calibration = list(rng.integers(0, 256, (FLAGS.calibration_clips, *shape), dtype=np.uint8))
    for backbone in FLAGS.backbones:
        template = stf.build_template(backbone, num_classes=400, num_frames=FLAGS.num_frames, input_size=FLAGS.size)
        for w in template.weights:  # BatchNorm statistics of a trained network's magnitude
            if "moving_variance" in w.path:
                w.assign(rng.uniform(0.5, 2.0, w.shape))
            elif "moving_mean" in w.path or "beta" in w.path:
                w.assign(rng.normal(0.0, 0.3, w.shape))
        contract = InputContract(num_frames=FLAGS.num_frames, frame_stride=1, sampler="dense", eval_clips=1,
                                 eval_size=FLAGS.size, class_names=tuple(str(i) for i in range(400)))
        for unit in FLAGS.strategies:
            strategy = stf.Strategy.uniform(unit, backbone)
            stf.apply_strategy(template, strategy)
            pruned = prune(template, strategy)
            reference = clip_probabilities(pruned, tf.constant(video)).numpy()
            with tempfile.TemporaryDirectory() as tmp:
                paths = {"SavedModel": os.path.join(tmp, "m", "1"), "ONNX RT": os.path.join(tmp, "m.onnx")}
                os.makedirs(os.path.dirname(paths["SavedModel"]))
                writers.write_saved_model(pruned, contract, paths["SavedModel"])
                writers.write_onnx(pruned, contract, paths["ONNX RT"])
                for precision, name in zip(litert.PRECISIONS, header[2:]):
                    paths[name] = os.path.join(tmp, litert.file_name("m", precision))
                    writers.write_tflite(pruned, contract, paths[name], precision,
                                         calibration if precision == "int8" else None)
                serve = tf.saved_model.load(paths["SavedModel"]).signatures["serving_default"]
                session = onnxruntime.InferenceSession(paths["ONNX RT"], providers=["CPUExecutionProvider"])
                calls = {"SavedModel": lambda: serve(video=tf.constant(video))["probabilities"].numpy(),
                         "ONNX RT": lambda: session.run(None, {"video": video})}
                runners = {name: litert.Runner(paths[name]) for name in header[2:]}
                for name, runner in runners.items():
                    calls[name] = (lambda r: lambda: r(video))(runner)
                ms = {name: 1000 * litert.median_latency(call, FLAGS.runs) for name, call in calls.items()}
                mb = {name: size_on_disk(paths[name]) / 1e6 for name in header}
                diff = float(np.abs(runners["LiteRT f32"](video)["probabilities"] - reference).max())
                quantized, total = litert.int8_ops(paths["LiteRT int8"])
                counts = {name: litert.op_counts(paths[name]) for name in ("LiteRT f32", "LiteRT int8")}
                partitions = {name: litert.delegate_partitions(paths[name]) for name in counts}
            print(f"{backbone:<13} {unit:<8} {'MB':<8} " + " ".join(f"{mb[h]:>11.2f}" for h in header))
            print(f"{'':<13} {'':<8} {'ms':<8} " + " ".join(f"{ms[h]:>11.1f}" for h in header)
                  + f" {ms['LiteRT int8'] / ms['SavedModel']:>14.2f}x {diff:>12.2e}")
            print(f"{'':<13} {'':<8} int8 file: {quantized} of {total} ops in int8; XNNPACK partitions: "
                  f"f32 {partitions['LiteRT f32']}, int8 {partitions['LiteRT int8']}")
            print_op_counts(counts)


def print_op_counts(counts):
    """Ops per kind of each file ``{file: Counter}``, most frequent first."""
    kinds = sorted(set().union(*counts.values()), key=lambda k: (-max(c[k] for c in counts.values()), k))
    print(f"{'':<22} {'ops':<20} " + " ".join(f"{name:>11}" for name in counts))
    for kind in kinds:
        print(f"{'':<22} {kind:<20} " + " ".join(f"{c[kind]:>11}" for c in counts.values()))

if __name__ == "__main__":
    app.run(main)
