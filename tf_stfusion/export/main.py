"""``stfusion-export --strategy best.json --model_dir=RUN --export_dir=OUT``.

Builds the *pruned* network of a strategy from the template checkpoint of a
training run and writes, under ``OUT``:

    <model_name>/<version>/      SavedModel, TF Serving layout, signature serving_default
    <model_name>.onnx            the same function as ONNX (opset 17)
    <model_name>.tflite          with ``--formats=...,tflite``: LiteRT, builtin ops only (the
                                 deploy graph: 3D convs and pools as 2D ops); ``--quantize=
                                 float16,int8`` adds ``<model_name>_fp16.tflite`` and
                                 ``<model_name>_int8.tflite`` (int8 calibrated on
                                 ``--calibration_clips`` clips of the run's hold-out videos;
                                 of the finalists' training videos for a strategy the
                                 search picked by its int8 score)
    export_report.json           params / GFLOPs of template and pruned network, and the
                                 measured parity: (a) pruned Keras vs template in fixed mode,
                                 (b) SavedModel vs pruned Keras, (c) ONNX Runtime vs pruned Keras,
                                 (d) LiteRT float32 vs pruned Keras; with tflite, ``litert``:
                                 file sizes, batch-1 latency (median of 10) of every file, and
                                 with ``--quantize`` every precision's top-1 on the validation
                                 split next to the float SavedModel's (same clips, paired)

Everything is written into a temporary folder next to ``OUT`` and moved into
place only when every parity check passed (max abs difference of the logits
<= 1e-4 times their scale, the largest |logit| of the reference but at least 1;
the served-vs-evaluation check compares view-averaged probabilities); otherwise nothing is left behind and the exit code is 1.
A strategy chosen under a latency budget (``--max_latency_ms`` of the search) has
the file of its table's runtime (SavedModel, ONNX or float LiteRT) timed here;
the export fails the same way when it misses the budget by more than the table's
validated error (``--allow_over_budget``: written anyway, the miss in the report).
``--ensemble=M`` writes instead one SavedModel of the search's ``ensemble-M`` (its
members, temperature and threshold from ``calibration.json`` beside ``--strategy``):
the M pruned networks on one input, returning temperature-scaled averaged
probabilities, their predictive ``entropy`` and an ``abstain`` flag, checked
against the template in fixed mode member by member (``export_ensemble``), with
its batch-1 latency against Opt's network in ``export_report.json``.

A bad strategy file, a strategy for another backbone, a checkpoint that does
not match, or an existing version folder (without ``--overwrite``) stop the
export before anything is built.
"""

import dataclasses
import sys

from absl import flags

from tf_stfusion import cluster as cluster_lib
from tf_stfusion.export.config import DEFAULT_FORMATS, ExportConfig, ExportError

FLAGS = flags.FLAGS


def export(config: ExportConfig, log=print):
    """Runs the export (``exporter.export``); returns the report dict. Raises
    ExportError on failure. Imported when called, so that the flags are checked
    before TensorFlow is imported."""
    from tf_stfusion.export import exporter

    return exporter.export(config, log)


def define_flags():
    flags.DEFINE_string("strategy", None, "Strategy file (e.g. RUN/strategies/best.json).")
    flags.DEFINE_string("model_dir", None, "The training run whose template weights are used.")
    flags.DEFINE_string("checkpoint", None, "Checkpoint (default: the run's newest, search before warm-up).")
    flags.DEFINE_string("export_dir", None, "Output folder.")
    flags.DEFINE_list("formats", list(DEFAULT_FORMATS), "Some of saved_model, onnx, tflite (LiteRT, builtin ops "
                      "only).")
    flags.DEFINE_list("quantize", [], "With tflite: also float16 (weights) and/or int8 (post-training, calibrated) "
                      "LiteRT files, with their top-1 on the validation split next to the float model's.")
    flags.DEFINE_integer("calibration_clips", 0, "int8: clips (one per video) of the run's hold-out videos "
                         "(training videos if it had none, or if the search picked the strategy in int8: its "
                         "finalists' videos) that calibrate the activation ranges (0: as many as the search "
                         "calibrated the finalists on, else 100).")
    flags.DEFINE_string("model_name", "stfusion", "Model name (TF Serving's model folder).")
    flags.DEFINE_integer("version", 1, "Model version folder.")
    flags.DEFINE_integer("num_frames", 0, "Frames per input clip (0: the run's).")
    flags.DEFINE_integer("eval_size", 0, "Input height and width: the evaluation crop (0: the run's --eval_size).")
    flags.DEFINE_bool("overwrite", False, "Replace an existing version folder.")
    flags.DEFINE_bool("verify_data", False, "With --check_serving: check the shards' CRC32C before reading them.")
    flags.DEFINE_integer("ensemble", 0, "Export the posterior-averaged ensemble of the search's first M sampled "
                         "strategies (RUN/strategies/calibration.json, beside --strategy) as one SavedModel: "
                         "averaged, temperature-scaled probabilities, predictive entropy and an abstain flag.")
    flags.DEFINE_bool("allow_over_budget", False, "Write the files even when the file of the search's latency "
                      "budget (--max_latency_ms; its table's runtime) measures over the budget by more than the "
                      "table's validated error (without: the export fails, nothing written).")
    flags.DEFINE_bool("check_serving", False, "Feed every validation video (its stored JPEG frames) through the "
                      "SavedModel's serving_video signature as a REST request would arrive, and compare with the "
                      "run's evaluation of the strategy; a difference beyond 1e-4 fails the export.")
    cluster_lib.define_flags(flags)


def main(argv):
    del argv  # run_app refuses positional arguments
    missing = [n for n in ("strategy", "model_dir", "export_dir") if not FLAGS[n].value]
    if missing:
        print(f"error: --{', --'.join(missing)} required", file=sys.stderr)
        return 2
    try:  # in a multi-machine job, one export: the chief's
        job = cluster_lib.resolve(FLAGS.cluster, FLAGS.cluster_port)
    except cluster_lib.ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not job.is_chief:
        print(f"{job.describe()}; the export and its checks run on the chief only")
        return 0
    config = ExportConfig(
        strategy_file=FLAGS.strategy, model_dir=FLAGS.model_dir, export_dir=FLAGS.export_dir,
        checkpoint=FLAGS.checkpoint or "", formats=tuple(FLAGS.formats), model_name=FLAGS.model_name,
        version=FLAGS.version, num_frames=FLAGS.num_frames, size=FLAGS.eval_size, overwrite=FLAGS.overwrite,
        check_serving=FLAGS.check_serving, verify_data=FLAGS.verify_data, quantize=tuple(FLAGS.quantize),
        calibration_clips=FLAGS.calibration_clips, ensemble=FLAGS.ensemble,
        allow_over_budget=FLAGS.allow_over_budget,
    )
    if FLAGS.ensemble and not FLAGS["formats"].present:
        config = dataclasses.replace(config, formats=("saved_model",))
    if FLAGS.ensemble < 0:
        print("error: --ensemble takes a member count M >= 1 (0: one network)", file=sys.stderr)
        return 2
    from tf_stfusion.data.integrity import DataError

    try:
        export(config)
    except (ExportError, DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def run():
    """Console-script entry point (``stfusion-export``); absl at ERROR: the converters' INFO and
    WARNING lines are not the user's business."""
    from tf_stfusion.configs import run_app

    run_app(main, define_flags, verbosity="error")


if __name__ == "__main__":
    run()
