"""``python -m tf_stfusion.train --flagfile=k400.flags``: the main job (the
packaged flag files, ``tf_stfusion/configs/``, are found by name from any directory).

Flags are turned into a ``TrainConfig`` here and nowhere else; everything
below (``tf_stfusion.trainer``) takes plain arguments. A run is

* ``--phase=warmup,search`` (default): the template with gates off, then the
  v-DropPath phase from the warm-up weights; writes ``probabilities.json``;
* ``--phase=warmup`` / ``--phase=search`` alone (the latter continues a
  finished warm-up in the same ``--model_dir``, or starts from ``--init_from``);
* ``--strategy=FILE`` (or ``S``, ``ST``, ``S+ST``): the pruned network of that
  fixed strategy trained from scratch (``--phase=fixed``, implied).

Every run ends with a multi-clip evaluation written to ``metrics.json``. The
same command, started again after an interruption, resumes from the newest
checkpoint; finished phases are skipped.
"""

import dataclasses
import os
import sys

from absl import flags

from tf_stfusion import cluster as cluster_lib
from tf_stfusion.run.config import BACKBONE_NAMES, DataConfig, TrainConfig
from tf_stfusion.data import synthetic
from tf_stfusion.data.sources import SOURCE_KINDS
from tf_stfusion.prior import PRIOR_FORMS

FLAGS = flags.FLAGS
# One source of defaults: the flags take the dataclasses' (the paper's recipe).
T = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
D = {f.name: f.default for f in dataclasses.fields(DataConfig)}


def define_flags():
    """The flags of ``train``; their defaults are the dataclasses' (``T``, ``D``). Defined when run
    as a program, so that importing this module claims no flag names."""
    _define_data_flags()
    _define_model_flags()
    _define_optimisation_flags()
    _define_run_flags()


def _define_data_flags():
    """Where the clips come from and how they are sampled, cropped and held out."""
    flags.DEFINE_enum("dataset", D["dataset"], list(SOURCE_KINDS),
                      "'tfrecord': shards written by tf_stfusion.data.prepare in --data_dir; 'synthetic': the "
                      "built-in set, generated once into --data_dir (default: a cache folder).")
    flags.DEFINE_string("data_dir", None, "Folder of <split>-*.tfrecord shards and <split>-manifest.json.")
    flags.DEFINE_string("train_split", D["train_split"], "Split trained on.")
    flags.DEFINE_string("val_split", D["val_split"], "Split evaluated on.")
    synthetic.define_flags(flags)
    flags.DEFINE_integer("num_frames", D["num_frames"], "Frames per clip.")
    flags.DEFINE_integer("frame_stride", D["frame_stride"], "Dense sampling: take every n-th frame.")
    flags.DEFINE_enum("sampler", D["sampler"], ["dense", "uniform"], "Clip sampler (dense: consecutive frames with "
                      "--frame_stride; uniform: one frame per segment, TSN style).")
    flags.DEFINE_integer("input_size", D["input_size"], "Training crop (height = width).")
    flags.DEFINE_integer("eval_size", 0, "Evaluation: short side and centre crop (0: --input_size).")
    flags.DEFINE_integer("eval_clips", D["eval_clips"], "Evaluation: clips per video, spread uniformly; scores averaged.")
    flags.DEFINE_enum("flip", "auto", ["auto", "on", "off"],
                      "Random horizontal flip in training (auto: unless the dataset forbids it).")
    flags.DEFINE_list("scale_range", [str(v) for v in D["scale_range"]], "Training: the short side is resized to input_size "
                      "times a factor drawn from this range, then cropped.")
    flags.DEFINE_integer("shuffle_buffer", D["shuffle_buffer"], "Examples in the shuffle buffer.")
    flags.DEFINE_enum("select_split", D["select_split"], ["holdout", "val"],
                      "Where the strategy search selects: holdout (a class-stratified part of the training videos, "
                      "chosen by a hash of the video id, that the template does not train on; the report split is "
                      "--val_split) or val (the paper's protocol: selected and reported on the same split, optimistic).")
    flags.DEFINE_float("holdout_fraction", D["holdout_fraction"], "With --select_split=holdout: the fraction of each class's training "
                       "videos held out.")
    flags.DEFINE_string("holdout_group", D["holdout_group"], "Hold out whole groups of clips cut from one source video: "
                        "auto (UCF101's v_<Class>_g<NN>_c<MM>, Kinetics' YouTube id; other datasets video by video), none "
                        "(video by video) or a regular expression over the video id (its first group, or the whole "
                        "match, names the group), e.g. '^(.+)_clip\\d+$'.")


def _define_model_flags():
    """The template, its starting weights and its gates."""
    flags.DEFINE_enum("backbone", T["backbone"], list(BACKBONE_NAMES), "Template backbone.")
    flags.DEFINE_string("strategy", None, "Train this fixed strategy network from scratch: a strategy file, "
                        "or S, ST, S+ST for the uniform baselines. Implies --phase=fixed.")
    flags.DEFINE_enum("init", T["init"], ["none", "imagenet"], "Starting weights of a run from scratch: imagenet "
                      "inflates Keras' 2D ImageNet DenseNet-121 / ResNet-50 (downloaded by Keras at run time).")
    flags.DEFINE_string("init_from", None, "Start from the weights of another run (folder) or checkpoint.")
    flags.DEFINE_float("init_drop_prob", T["init_drop_prob"], "Initial drop probability p of every gate.")
    flags.DEFINE_float("temperature", T["temperature"], "Relaxed Bernoulli temperature tau.")


def _define_optimisation_flags():
    """Phases, schedule, Eq. 5 prior, precision."""
    flags.DEFINE_list("phase", list(T["phases"]), "Phases to run, in order: warmup, search (or fixed).")
    flags.DEFINE_integer("batch_size", T["batch_size"], "Global batch size (split over replicas).")
    flags.DEFINE_integer("eval_batch_size", T["eval_batch_size"], "Videos per evaluation batch (0: --batch_size).")
    flags.DEFINE_integer("warmup_epochs", T["warmup_epochs"], "Epochs of the warm-up phase.")
    flags.DEFINE_integer("epochs", T["epochs"], "Epochs of the search phase (or of a fixed-strategy run).")
    flags.DEFINE_integer("steps_per_epoch", T["steps_per_epoch"], "Steps per epoch (0: training clips // batch size).")
    flags.DEFINE_float("learning_rate", T["learning_rate"], "SGD learning rate of the search / fixed phase.")
    flags.DEFINE_float("warmup_learning_rate", T["warmup_learning_rate"], "Learning rate of the warm-up (default: --learning_rate).")
    flags.DEFINE_list("lr_steps", [], "Epochs of the search / fixed phase after which lr *= --lr_decay.")
    flags.DEFINE_list("warmup_lr_steps", [], "The same for the warm-up phase.")
    flags.DEFINE_float("lr_decay", T["lr_decay"], "Factor of each learning-rate step.")
    flags.DEFINE_float("momentum", T["momentum"], "SGD momentum.")
    flags.DEFINE_float("weight_decay", T["weight_decay"], "L2 weight decay of conv/dense kernels (search phase: not on the "
                       "gated convolutions, whose prior is the Eq. 5 term).")
    flags.DEFINE_float("length_scale", T["length_scale"], "Length-scale prior k of Eq. 5 (paper: 250 Sth-V1, 10 K400, "
                       "50 Sth-V2 / UCF101).")
    flags.DEFINE_enum("prior_form", T["prior_form"], list(PRIOR_FORMS), "Weight-term coefficient of Eq. 5: "
                      "authors_code k/N (the authors' NAS_utils/ops.py, the form the paper's k were tuned under) or "
                      "paper k^2/(2N) (Eq. 5 as printed; k/2 times stronger for the same k).")
    flags.DEFINE_enum("entropy", T["entropy"], ["binary", "paper"], "Entropy term of Eq. 5.")
    flags.DEFINE_bool("override_preflight", T["override_preflight"], "Start the search phase even when the pre-flight "
                      "finds the Eq. 5 term above the stopping ratio of the data loss.")
    flags.DEFINE_integer("preflight_batches", T["preflight_batches"], "Training batches the pre-flight measures the data "
                         "loss on (at the warm-up weights, before the search phase's first step).")
    flags.DEFINE_enum("mixed_precision", T["mixed_precision"], ["auto", "off", "float16", "bfloat16"],
                      "Mixed precision (auto: float16 on a GPU, off on a CPU).")


def _define_run_flags():
    """The run folder, checkpoints, devices, and what happens after training."""
    flags.DEFINE_string("model_dir", None, "Run folder: checkpoints, logs, probabilities.json, metrics.json.")
    flags.DEFINE_integer("checkpoint_every", T["checkpoint_every"], "Checkpoint every n steps (and at each epoch end).")
    flags.DEFINE_integer("keep_checkpoints", T["keep_checkpoints"], "Checkpoints kept per phase.")
    flags.DEFINE_integer("log_every", T["log_every"], "TensorBoard scalars every n steps.")
    flags.DEFINE_integer("eval_every", T["eval_every"], "Validate every n epochs during training (0: only at the end).")
    cluster_lib.define_distribution_flags(flags)
    flags.DEFINE_integer("seed", T["seed"], "Random seed (weights, gate noise, data order).")
    flags.DEFINE_bool("progress", T["progress"], "Progress bars on the terminal.")
    flags.DEFINE_bool("verify_data", T["verify_data"], "Check every shard's CRC32C against its record before the first step "
                      "(reads all the data once); its size is always checked.")
    flags.DEFINE_bool("skip_corrupt_records", T["skip_corrupt_records"], "Go on without records that cannot be read (a damaged shard), "
                      "counting the videos lost (log and metrics.json), instead of stopping.")
    flags.DEFINE_integer("num_strategy_samples", 0, "After the search phase, sample and evaluate this many "
                         "strategies (python -m tf_stfusion.search; 0: skip).")


def _ints(name):
    try:
        return tuple(int(v) for v in FLAGS[name].value)
    except ValueError:
        raise ValueError(f"--{name} takes comma-separated integers, got {','.join(FLAGS[name].value)}") from None


def load_strategy(value, backbone):
    """``S``/``ST``/``S+ST`` or a strategy file, checked before anything is built."""
    from tf_stfusion.strategy import Strategy

    if value in ("S", "ST", "S+ST"):
        return Strategy.uniform(value, backbone)
    if not os.path.isfile(value):
        raise ValueError(f"--strategy={value}: no such file (or give S, ST, S+ST)")
    return Strategy.load(value)


def config_from_flags():
    """The ``TrainConfig`` of the command line (validated)."""
    if not FLAGS.model_dir:
        raise ValueError("--model_dir is required")
    phases = tuple(FLAGS.phase)
    if FLAGS.strategy and not FLAGS["phase"].present:
        phases = ("fixed",)
    try:
        scale = tuple(float(v) for v in FLAGS.scale_range)
    except ValueError:
        raise ValueError(f"--scale_range takes two numbers, got {','.join(FLAGS.scale_range)}") from None
    if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
        raise ValueError(f"--scale_range takes two numbers 0 < lo <= hi, got {','.join(FLAGS.scale_range)}")
    data = DataConfig(
        dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, train_split=FLAGS.train_split,
        val_split=FLAGS.val_split, num_frames=FLAGS.num_frames, frame_stride=FLAGS.frame_stride,
        sampler=FLAGS.sampler, input_size=FLAGS.input_size, eval_size=FLAGS.eval_size or None,
        eval_clips=FLAGS.eval_clips, flip={"auto": None, "on": True, "off": False}[FLAGS.flip],
        scale_range=scale, shuffle_buffer=FLAGS.shuffle_buffer, select_split=FLAGS.select_split,
        holdout_fraction=FLAGS.holdout_fraction, holdout_group=FLAGS.holdout_group,
        synthetic_config=synthetic.config_from_flags(FLAGS, seed=FLAGS.seed),
    )
    if FLAGS.num_strategy_samples and "search" not in phases:
        raise ValueError("--num_strategy_samples samples from a search phase; this run has none "
                         f"(--phase={','.join(phases)})")
    if FLAGS.dataset != "synthetic":
        given = [n for n in FLAGS if n.startswith("synthetic_") and FLAGS[n].present]
        if given:
            raise ValueError(f"--{given[0]} applies to --dataset=synthetic only")
    return TrainConfig(
        model_dir=FLAGS.model_dir, data=data, backbone=FLAGS.backbone, phases=phases,
        strategy=load_strategy(FLAGS.strategy, FLAGS.backbone) if FLAGS.strategy else None,
        init_from=FLAGS.init_from, init=FLAGS.init, batch_size=FLAGS.batch_size, warmup_epochs=FLAGS.warmup_epochs,
        epochs=FLAGS.epochs, steps_per_epoch=FLAGS.steps_per_epoch, learning_rate=FLAGS.learning_rate,
        warmup_learning_rate=FLAGS.warmup_learning_rate, lr_steps=_ints("lr_steps"),
        warmup_lr_steps=_ints("warmup_lr_steps"), lr_decay=FLAGS.lr_decay, momentum=FLAGS.momentum,
        weight_decay=FLAGS.weight_decay, length_scale=FLAGS.length_scale, prior_form=FLAGS.prior_form,
        override_preflight=FLAGS.override_preflight, preflight_batches=FLAGS.preflight_batches,
        temperature=FLAGS.temperature,
        init_drop_prob=FLAGS.init_drop_prob, entropy=FLAGS.entropy, checkpoint_every=FLAGS.checkpoint_every,
        keep_checkpoints=FLAGS.keep_checkpoints, log_every=FLAGS.log_every, eval_every=FLAGS.eval_every,
        eval_batch_size=FLAGS.eval_batch_size, mixed_precision=FLAGS.mixed_precision, seed=FLAGS.seed,
        progress=FLAGS.progress, verify_data=FLAGS.verify_data, skip_corrupt_records=FLAGS.skip_corrupt_records,
    ).validate()


# Config fields whose flag has another name.
FLAG_OF_FIELD = {"phases": "phase"}


def message(error):
    """An error as the command line says it: settings named by their flags."""
    from tf_stfusion.run.config import TrainError

    if isinstance(error, TrainError):
        return error.render(lambda field: f"--{FLAG_OF_FIELD.get(field, field)}")
    return str(error)


def main(argv):
    del argv  # run_app refuses positional arguments
    try:
        config = config_from_flags()  # flag and strategy-file errors: before TensorFlow starts
        import keras

        from tf_stfusion import distribute
        from tf_stfusion.trainer import Trainer

        keras.utils.set_random_seed(FLAGS.seed)
        distribution = distribute.make_distribution(FLAGS.distribution, FLAGS.devices or None, FLAGS.cluster,
                                                FLAGS.cluster_port)
        trainer = Trainer(config, distribution)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {message(e)}", file=sys.stderr)
        return 2
    from tf_stfusion.data.integrity import DataError
    from tf_stfusion.run.config import TrainError

    try:
        trainer.run()
        if FLAGS.num_strategy_samples > 0:  # every worker takes part; the chief writes
            from tf_stfusion.search import SearchConfig, run_search

            run_search(SearchConfig(model_dir=config.model_dir, num_samples=FLAGS.num_strategy_samples,
                                    seed=FLAGS.seed, progress=FLAGS.progress, verify_data=FLAGS.verify_data,
                                    skip_corrupt_records=FLAGS.skip_corrupt_records), distribution=trainer.context.distribution)
    except (DataError, TrainError) as e:  # damaged data or checkpoints: one line, what to do
        print(f"error: {message(e)}", file=sys.stderr)
        return 2
    return 0


def run():
    """Console-script entry point (``stfusion-train``). absl at WARNING: TF's checkpoint INFO lines
    would break the progress bars."""
    from tf_stfusion.configs import run_app

    run_app(main, define_flags)


if __name__ == "__main__":
    run()
