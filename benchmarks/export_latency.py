"""Single-clip latency of a strategy: template in fixed mode vs the exported
pruned network (SavedModel, ONNX Runtime), next to the GFLOPs ratio.

    python benchmarks/export_latency.py [--backbones=tiny,densenet121] [--strategies=S,ST]
        [--num_frames=16 --size=112] [--runs=10]

Random weights (latency does not depend on them); batch 1. Template: the
gated template with the strategy applied as masks (what the search evaluates),
called through one tf.function. SavedModel / ONNX: written by the exporter's
writers into a temporary folder, uint8 input, normalisation inside. Prints the
median of ``--runs`` timed calls after 3 untimed ones, and the machine.
"""

import os
import tempfile

from machine import machine_line  # benchmarks/machine.py

import tf_stfusion  # noqa: F401  (first: TensorFlow's environment defaults, see tf_stfusion/__init__.py)

from absl import app, flags, logging

flags.DEFINE_list("backbones", ["tiny", "densenet121"], "Templates.")
flags.DEFINE_list("strategies", ["S", "ST"], "Uniform strategies to export.")
flags.DEFINE_integer("num_frames", 16, "Frames per clip.")
flags.DEFINE_integer("size", 112, "Height and width.")
flags.DEFINE_integer("runs", 10, "Timed calls per variant.")
FLAGS = flags.FLAGS


def _median_ms(fn):
    from tf_stfusion.export.litert import median_latency

    return 1000 * median_latency(fn, FLAGS.runs, warmup=3)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    import numpy as np
    import onnxruntime
    import tensorflow as tf

    import tf_stfusion as stf
    from tf_stfusion.data.pipeline import InputContract, normalize
    from tf_stfusion.export import writers
    from tf_stfusion.models.prune import prune

    print(machine_line(TensorFlow=tf.__version__, **{"ONNX Runtime": onnxruntime.__version__}))
    print(f"batch 1, clip {FLAGS.num_frames}x{FLAGS.size}x{FLAGS.size}, median of {FLAGS.runs} runs (ms)")
    print(f"{'backbone':<12} {'strategy':<8} {'template+masks':>14} {'SavedModel':>11} {'ONNX RT':>8} "
          f"{'speed-up (SavedModel)':>22} {'GFLOPs ratio':>13}")
    shape = (FLAGS.num_frames, FLAGS.size, FLAGS.size, 3)
    video = np.random.default_rng(0).integers(0, 256, (1, *shape), dtype=np.uint8)
    for backbone in FLAGS.backbones:
        template = stf.build_template(backbone, num_classes=400, num_frames=FLAGS.num_frames, input_size=FLAGS.size)
        full = stf.cost(template, None, input_shape=shape)
        x = normalize(tf.constant(video))
        call_template = tf.function(lambda clips: template(clips, training=False))
        contract = InputContract(num_frames=FLAGS.num_frames, frame_stride=1, sampler="dense", eval_clips=1,
                                 eval_size=FLAGS.size, class_names=tuple(str(i) for i in range(400)))
        for unit in FLAGS.strategies:
            strategy = stf.Strategy.uniform(unit, backbone)
            stf.apply_strategy(template, strategy)
            pruned = prune(template, strategy)
            with tempfile.TemporaryDirectory() as tmp:
                sm_path = os.path.join(tmp, "m", "1")
                os.makedirs(os.path.dirname(sm_path))
                writers.write_saved_model(pruned, contract, sm_path)
                onnx_path = os.path.join(tmp, "m.onnx")
                writers.write_onnx(pruned, contract, onnx_path)
                serve = tf.saved_model.load(sm_path).signatures["serving_default"]
                session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
                t_template = _median_ms(lambda: call_template(x).numpy())
                t_saved = _median_ms(lambda: serve(video=tf.constant(video))["probabilities"].numpy())
                t_onnx = _median_ms(lambda: session.run(None, {"video": video}))
            ratio = stf.cost(template, strategy, input_shape=shape).gflops / full.gflops
            print(f"{backbone:<12} {unit:<8} {t_template:>14.1f} {t_saved:>11.1f} {t_onnx:>8.1f} "
                  f"{t_template / t_saved:>21.2f}x {ratio:>13.3f}")


if __name__ == "__main__":
    app.run(main)
