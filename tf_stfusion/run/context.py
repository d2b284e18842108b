"""A run brought to life: ``RunContext`` (the model side, holding the data side
``inputs.RunInputs`` as ``context.inputs``) and ``open_run``, how the search,
``compare`` and ``sweep`` open a finished run (the export reads only its data
side, ``inputs.open_inputs``). Training (``trainer.Trainer``) holds one."""

import contextlib
import dataclasses
from typing import Optional

import keras
import tensorflow as tf

from tf_stfusion import distribute as dist_lib
from tf_stfusion import gating
from tf_stfusion.data import pipeline
from tf_stfusion.data.sources import DataSource
from tf_stfusion.evaluation import Evaluator
from tf_stfusion.fileio import atomic_write_json
from tf_stfusion.models import build_template
from tf_stfusion.prior import PRIOR_FORMULAS, weight_coefficient
from tf_stfusion.run.checkpoints import find_checkpoint, restore_weights
from tf_stfusion.run.config import TrainConfig, TrainError
from tf_stfusion.run.folder import HOLDOUT_RECORD, RunFolder
from tf_stfusion.run.inputs import RunInputs, holdout_method
from tf_stfusion.run.record import RunRecord


@contextlib.contextmanager
def dtype_policy(name):
    """Layers built inside use the policy ``name`` (e.g. ``mixed_float16``)."""
    old = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(old)


def resolve_mixed_precision(choice):
    """``auto`` -> float16 on a GPU, off on CPU. Returns a Keras policy name."""
    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    if choice == "auto":
        choice = "float16" if has_gpu else "off"
    if choice == "float16" and not has_gpu:
        raise TrainError("--mixed_precision=float16 needs a GPU; use bfloat16 or off on a CPU")
    return "float32" if choice == "off" else f"mixed_{choice}"


class RunContext:
    """A run's config brought to life under a ``tf.distribute`` object
    (``distribution``, default one device): the data side (``inputs``, a
    ``RunInputs``: source, hold-out, datasets, split videos, reading, damage
    report) and the model side: the model, its checkpoint restore, the record,
    the input contract and the evaluation."""

    def __init__(self, config: TrainConfig, distribution=None, source: Optional[DataSource] = None):
        config = config.validate()
        self.folder = RunFolder(config.model_dir)
        self.distribution = distribution or dist_lib.default_distribution()
        self.chief = dist_lib.is_chief(self.distribution)
        self.replicas = self.distribution.num_replicas_in_sync
        if config.batch_size % self.replicas:
            raise TrainError(f"--batch_size={config.batch_size} (global) is not divisible by the "
                             f"{self.replicas} replicas")
        self.policy = resolve_mixed_precision(config.mixed_precision)
        self.log = print if self.chief else (lambda *a, **k: None)
        self.config = config
        self.inputs = RunInputs(config, self.chief, source, self.log)
        self.steps_per_epoch = config.steps_per_epoch or self.inputs.num_train // config.batch_size
        if self.steps_per_epoch < 1:
            raise TrainError(f"{self.inputs.num_train} training clips make no full batch of "
                             f"{config.batch_size}; lower --batch_size or set --steps_per_epoch")
        self._check_start()
        self.model = self._build_model()

    def _check_start(self):
        """Same run as the one in model_dir (if any); a search phase has weights to start from."""
        cfg = self.config
        if self.folder.has_record():
            theirs = self.folder.record().identity()
            for key, value in self.record().identity().items():
                if key == "selection" and key not in theirs:
                    continue  # a run recorded before hold-outs existed
                if theirs.get(key) != value:
                    raise TrainError(f"{cfg.model_dir} holds another run ({key} differs: {theirs.get(key)!r} "
                                     f"there, {value!r} now); use a new --model_dir")
        if cfg.phases[0] == "search" and not cfg.init_from and not self.folder.has_checkpoints("search"):
            if not self.folder.phase_done("warmup"):
                raise TrainError("the search phase starts from warm-up weights: run --phase=warmup,search, "
                                 f"or finish the warm-up in {cfg.model_dir} first, or give --init_from=RUN")
        if cfg.init_from:
            find_checkpoint(cfg.init_from)

    def _build_model(self):
        cfg, data = self.config, self.config.data
        size = data.input_size if data.eval_size == data.input_size else None
        with dtype_policy(self.policy), self.distribution.scope():
            return build_template(
                cfg.backbone, num_classes=self.inputs.num_classes, num_frames=data.num_frames, input_size=size,
                units=None if cfg.strategy is None else cfg.strategy.units,
                init_drop_prob=cfg.init_drop_prob, temperature=cfg.temperature,
                sync_batchnorm=self.replicas > 1, seed=cfg.seed,
            )

    def restore(self, checkpoint, what="--checkpoint"):
        """The model's weights from ``checkpoint`` (a prefix, a phase folder or a run
        folder, ``find_checkpoint``); one-line ``TrainError`` naming ``what`` if it
        is missing, unreadable or of another model. Returns the prefix read."""
        prefix = find_checkpoint(checkpoint, what)
        restore_weights(self.model, prefix)
        return prefix

    # -- the record ------------------------------------------------------------------------
    def contract(self):
        """The run's ``InputContract``: how its evaluation samples, resizes and
        normalises a video (recorded in run.json, carried by every export)."""
        data, source = self.config.data, self.inputs.source
        return pipeline.InputContract(
            num_frames=data.num_frames, frame_stride=data.frame_stride, sampler=data.sampler, eval_clips=data.eval_clips,
            eval_size=data.eval_size, class_names=tuple(source.class_names),
            frame_short_side=source.frame_short_side, jpeg_quality=source.jpeg_quality, fps=source.fps,
        )

    def record(self):
        """The run's ``RunRecord`` (what run.json holds)."""
        cfg, inputs, source = self.config, self.inputs, self.inputs.source
        summary = {"name": source.name, "dir": source.data_dir, "num_train": inputs.num_train,
                   "num_train_split": source.num_train, "num_val": source.num_val, "flip": inputs.flip}
        selection = {"split": cfg.data.select_split if cfg.strategy is None else None,
                     "holdout_fraction": cfg.data.holdout_fraction if inputs.holdout else 0.0,
                     "num_holdout": len(inputs.holdout), "holdout_file": HOLDOUT_RECORD if inputs.holdout else None,
                     "grouping": inputs.holdout_grouping, "method": holdout_method(inputs.holdout_grouping)}
        return RunRecord(cfg, self.contract(), summary, selection, self.prior_record(),
                         dist_lib.describe(self.distribution))

    def write_record(self):
        """run.json, and holdout.json when videos are held out (chief only)."""
        if not self.chief:
            return
        atomic_write_json(self.folder.record_path, self.record().to_dict())
        inputs = self.inputs
        if inputs.holdout:
            cfg, labels = self.config, dict(inputs.source.train_examples)
            atomic_write_json(self.folder.holdout_path, {
                "split": cfg.data.train_split, "fraction": cfg.data.holdout_fraction,
                "grouping": inputs.holdout_grouping,
                "videos": [[v, labels[v]] for v in sorted(inputs.holdout)],
            })

    def prior_record(self):
        """The Eq. 5 prior as this run applies it (run.json ``prior``)."""
        cfg, num_train = self.config, self.inputs.num_train
        return {"length_scale": cfg.length_scale, "num_train": num_train, "form": cfg.prior_form,
                "formula": PRIOR_FORMULAS[cfg.prior_form],
                "weight_coefficient": weight_coefficient(cfg.length_scale, num_train, cfg.prior_form),
                "entropy": cfg.entropy}

    # -- evaluation ------------------------------------------------------------------------
    def evaluate_videos(self, split="val", label="validation"):
        """Per-video outcomes (``VideoResults``) of the model on ``split``."""
        evaluator = Evaluator(self.model, self.config.data.eval_clips, distribution=self.distribution)
        show = self.config.progress and self.chief
        videos = self.inputs.split_videos(split)
        with self.inputs.reading(split):
            return evaluator.videos(self.inputs.eval_dataset_fn(split), len(videos), show, label)

    def evaluate(self, split="val", label="validation"):
        """Metrics of the model on ``split`` (top-1/top-5 with 95% intervals)."""
        return self.evaluate_videos(split, label).metrics(self.inputs.split_name(split))

    def prior_diagnostics(self):
        """How strongly the Eq. 5 prior pulled the gates (after the search phase)."""
        last = (self.folder.phase_done("search") or {}).get("last_epoch", {})
        return gating.prior_diagnostics(
            gating.drop_probabilities(self.model).numpy(), self.config.length_scale, self.inputs.num_train,
            loss=last.get("loss"), regularizer=last.get("regularizer"), prior_form=self.config.prior_form,
        )

    def preflight_record(self):
        """The search phase's pre-flight (``search/preflight.json``), or None."""
        return self.folder.preflight()


def open_run(model_dir, distribution=None, **overrides):
    """The finished run in ``model_dir`` as a ``RunContext`` (its recorded config,
    with ``overrides``: ``TrainConfig`` fields, ``data`` a dict of ``DataConfig``
    fields), under ``distribution`` (default one device). One-line ``TrainError``
    when ``model_dir`` holds no readable run."""
    config = RunFolder(model_dir).config()
    data = overrides.pop("data", {})
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, **data), **overrides)
    return RunContext(config, distribution)
