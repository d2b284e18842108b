"""The run room: a training run's folder and what every tool needs of it.

A run lives in one ``model_dir``::

    run.json        the config it was started with, its identity (backbone, classes,
                    sizes, strategy), data, selection hold-out and input contract
    holdout.json    the training videos held out for the strategy selection
    <phase>/        checkpoints of warmup / search / fixed, ``done.json`` when finished
    strategies/     the strategy search's results (``search.py``)
    logs/           TensorBoard scalars

``RunFolder`` reads those files (no TensorFlow); ``Run`` brings a config to
life: the data source, the hold-out, the model under a ``tf.distribute``
strategy, the evaluation data of a split and its evaluation. Training
(``trainer.Trainer``), the strategy search and the export all stand on it; none
of them reaches into another's folder.
"""

import contextlib
import dataclasses
import json
import os
from typing import Optional

import keras
import tensorflow as tf

from tf_stfusion import distribute as dist_lib
from tf_stfusion import gating, selection
from tf_stfusion.checkpoints import find_checkpoint
from tf_stfusion.config import DataConfig, TrainConfig, TrainError
from tf_stfusion.data import integrity, pipeline, synthetic
from tf_stfusion.data.sources import DataSource, resolve_source
from tf_stfusion.evaluation import Evaluator
from tf_stfusion.fileio import atomic_write_json
from tf_stfusion.gating import drop_probabilities
from tf_stfusion.models import build_template
from tf_stfusion.prior import PRIOR_FORMULAS, weight_coefficient
from tf_stfusion.strategy import Strategy

RUN_RECORD = "run.json"
# run.json keys written by earlier versions, and what they are called now.
RENAMED_DATA_KEYS = {"eval_views": "eval_clips", "stride": "frame_stride"}
HOLDOUT_RECORD = "holdout.json"
DONE_RECORD = "done.json"
PREFLIGHT_RECORD = "preflight.json"  # in the search phase's folder (trainer.Trainer.preflight)


class RunFolder:
    """The files of a run folder (see the module docstring)."""

    def __init__(self, model_dir):
        self.model_dir = model_dir

    def path(self, *parts):
        return os.path.join(self.model_dir, *parts)

    def record(self):
        """run.json as a dict."""
        path = self.path(RUN_RECORD)
        if not os.path.isfile(path):
            raise TrainError(f"{path} not found: {self.model_dir} is not a training run folder")
        with open(path) as f:
            return json.load(f)

    def phase_dir(self, phase):
        return self.path(phase)

    def phase_done(self, phase):
        """The ``done.json`` record of a finished phase (None while unfinished)."""
        path = os.path.join(self.phase_dir(phase), DONE_RECORD)
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            return json.load(f)

    def finished_checkpoint(self, phase):
        """The checkpoint a finished phase ended with."""
        done = self.phase_done(phase)
        if not done:
            raise TrainError(f"{self.model_dir} has no finished {phase} phase "
                             f"({os.path.join(self.phase_dir(phase), DONE_RECORD)} missing); finish training "
                             "first or give --checkpoint")
        return os.path.join(self.phase_dir(phase), done["checkpoint"])

    def has_checkpoints(self, phase):
        return tf.train.latest_checkpoint(self.phase_dir(phase)) is not None


def load_run_config(model_dir):
    """The ``TrainConfig`` a run in ``model_dir`` was started with (from run.json)."""
    path = os.path.join(model_dir, RUN_RECORD)
    record = RunFolder(model_dir).record()
    try:
        settings = dict(record["config"])
        data = {RENAMED_DATA_KEYS.get(k, k): v for k, v in settings.pop("data").items()}
        data.setdefault("select_split", "val")  # recorded before hold-outs existed: trained on every video
        data["synthetic_config"] = synthetic.SyntheticConfig(**data["synthetic_config"])
        data["scale_range"] = tuple(data["scale_range"])
        settings.setdefault("prior_form", "paper")  # recorded before the form was a setting: k^2/(2N)
        data.setdefault("holdout_group", "none")  # recorded before grouped hold-outs: video by video
        strategy = settings.pop("strategy")
        for key in ("phases", "lr_steps", "warmup_lr_steps"):
            settings[key] = tuple(settings[key])
        return TrainConfig(data=DataConfig(**data), strategy=Strategy.from_dict(strategy, path) if strategy else None,
                           **settings)
    except (KeyError, TypeError) as e:
        raise TrainError(f"{path}: unreadable run record ({e}); was it written by another version?") from None


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


class Run:
    """A run's config brought to life under a ``tf.distribute`` strategy
    (``distribution``): data source, selection hold-out, model, evaluation data."""

    def __init__(self, config: TrainConfig, distribution=None, source: Optional[DataSource] = None):
        self.config = config.validate()
        self.folder = RunFolder(config.model_dir)
        self.distribution = distribution or dist_lib.make_distribution("one_device")
        self.chief = dist_lib.is_chief(self.distribution)
        self.replicas = self.distribution.num_replicas_in_sync
        if config.batch_size % self.replicas:
            raise TrainError(f"--batch_size={config.batch_size} (global) is not divisible by the "
                             f"{self.replicas} replicas")
        self.policy = resolve_mixed_precision(config.mixed_precision)
        data = config.data
        self.log = print if self.chief else (lambda *a, **k: None)
        self.source = source or resolve_source(
            data.dataset, data.data_dir, data.train_split, data.val_split,
            synthetic_config=data.synthetic_config, progress=config.progress and self.chief,
            verify=config.verify_data, skip_corrupt=config.skip_corrupt_records,
        )
        self.lost = self.source.lost_videos  # unreadable videos (--skip_corrupt_records)
        if self.lost:
            self.log(f"data: skipping {len(self.lost)} unreadable video(s) of {len(self.source.lost)} damaged "
                     "shard(s): " + ", ".join(f"{os.path.basename(p)} ({len(v)})" for p, v in self.source.lost.items()))
        self.num_classes = len(self.source.class_names)
        self.flip = self.source.flip_ok if data.flip is None else data.flip
        if data.flip and not self.source.flip_ok:
            raise TrainError(f"--flip: {self.source.name} forbids horizontal flips (left/right is part of "
                             "the label)")
        self.holdout = self._holdout()
        lost_train = {v for v, _ in self.source.train_examples if v in self.lost and v not in self.holdout}
        self.num_train = self.source.num_train - len(self.holdout) - len(lost_train)  # N of Eq. 5
        self.steps_per_epoch = config.steps_per_epoch or self.num_train // config.batch_size
        if self.steps_per_epoch < 1:
            raise TrainError(f"{self.num_train} training clips make no full batch of "
                             f"{config.batch_size}; lower --batch_size or set --steps_per_epoch")
        self._check_start()
        self.model = self._build_model()

    def _holdout(self):
        """Video ids of the selection hold-out: none for a fixed-strategy run (it
        selects nothing) or with ``select_split=val``."""
        data = self.config.data
        self.holdout_grouping = None
        if self.config.strategy is not None or data.select_split != "holdout":
            return frozenset()
        group_of, self.holdout_grouping = selection.group_function(data.holdout_group, self.source.name)
        held = selection.holdout_ids(self.source.train_examples, data.holdout_fraction, group_of)
        if not held:
            raise TrainError(f"--holdout_fraction={data.holdout_fraction} holds out no training video (every "
                             f"class has fewer than 2 {'videos' if group_of is None else 'groups'}); use "
                             "--select_split=val" + ("" if group_of is None else " or another $holdout_group"))
        return frozenset(held)

    def _identity(self):
        cfg = self.config
        identity = {
            "backbone": cfg.backbone,
            "units": None if cfg.strategy is None else cfg.strategy.units,
            "class_names": self.source.class_names,
            "num_frames": cfg.data.num_frames,
            "input_size": cfg.data.input_size,
        }
        if cfg.strategy is None:  # the videos the template trains on
            identity["selection"] = {"split": cfg.data.select_split, "holdout_videos": len(self.holdout)}
        return identity

    def _check_start(self):
        """Same run as the one in model_dir (if any); a search phase has weights to start from."""
        cfg = self.config
        record_path = os.path.join(cfg.model_dir, RUN_RECORD)
        if os.path.isfile(record_path):
            with open(record_path) as f:
                record = json.load(f)
            theirs = record.get("identity", {})
            for key, value in self._identity().items():
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
        size = data.input_size if data.eval_input_size == data.input_size else None
        with dtype_policy(self.policy), self.distribution.scope():
            return build_template(
                cfg.backbone, num_classes=self.num_classes, num_frames=data.num_frames, input_size=size,
                units=None if cfg.strategy is None else cfg.strategy.units,
                init_drop_prob=cfg.init_drop_prob, temperature=cfg.temperature,
                sync_batchnorm=self.replicas > 1, seed=cfg.seed,
            )




    def _holdout_method(self):
        if self.holdout_grouping in (None, selection.NO_GROUPS):
            return (f"class-stratified, the first round(fraction * n) of each class by sha256({selection.SALT!r} + "
                    "video id)")
        return (f"class-stratified, whole groups of each class in the order of sha256({selection.SALT!r} + group), "
                "as many as come closest to round(fraction * n)")

    def write_record(self):
        if not self.chief:
            return
        cfg = self.config
        settings = dataclasses.asdict(cfg)
        settings["strategy"] = None if cfg.strategy is None else cfg.strategy.to_dict()
        atomic_write_json(os.path.join(cfg.model_dir, RUN_RECORD), {
            "identity": self._identity(),
            "config": settings,
            "data": {"name": self.source.name, "dir": self.source.data_dir,
                     "num_train": self.num_train, "num_train_split": self.source.num_train,
                     "num_val": self.source.num_val, "flip": self.flip},
            "selection": {"split": cfg.data.select_split if cfg.strategy is None else None,
                          "holdout_fraction": cfg.data.holdout_fraction if self.holdout else 0.0,
                          "num_holdout": len(self.holdout),
                          "holdout_file": HOLDOUT_RECORD if self.holdout else None,
                          "grouping": self.holdout_grouping,
                          "method": self._holdout_method()},
            "prior": self.prior_record(),
            "distribution": dist_lib.describe(self.distribution),
            "contract": self.contract().to_dict(),
        })
        if self.holdout:
            labels = dict(self.source.train_examples)
            atomic_write_json(os.path.join(cfg.model_dir, HOLDOUT_RECORD), {
                "split": cfg.data.train_split, "fraction": cfg.data.holdout_fraction, "grouping": self.holdout_grouping,
                "videos": [[v, labels[v]] for v in sorted(self.holdout)],
            })

    def train_dataset_fn(self, seed):
        data = self.config.data

        def dataset_fn(ctx):
            return pipeline.make_dataset(
                self.source.train_files, training=True, num_frames=data.num_frames,
                input_size=data.input_size, batch_size=self.config.batch_size, sampler=data.sampler,
                frame_stride=data.frame_stride, flip=self.flip, scale_range=data.scale_range,
                shuffle_buffer=data.shuffle_buffer, seed=seed, input_context=ctx, exclude_ids=self.holdout,
                skip_corrupt=self.config.skip_corrupt_records,
            )
        return dataset_fn

    def split_videos(self, split="val"):
        """The canonical order (sorted ids) of an evaluation split: ``val`` or ``holdout``."""
        if split == "holdout":
            if not self.holdout:
                raise TrainError(f"{self.config.model_dir} holds out no training videos (--select_split=val)")
            return sorted(self.holdout - self.lost)
        if split != "val":
            raise ValueError(f"evaluation split must be 'val' or 'holdout', got {split!r}")
        ids = sorted(v for v, _ in self.source.val_examples if v not in self.lost)
        twice = [a for a, b in zip(ids, ids[1:]) if a == b]
        if twice:
            raise TrainError(f"{self.source.data_dir}: video id {twice[0]!r} appears twice in the "
                             f"{self.config.data.val_split} split; ids must be unique")
        return ids

    def eval_dataset_fn(self, split="val", videos=None):
        """Eval batches ``(clips, labels, position in videos)`` of ``videos`` (default:
        ``split_videos(split)``, all of the split). With several input pipelines
        (workers) each reads its own file shards; every batch has the full size
        (fillers at position -1) and every replica gets the same number of
        batches, so that all take the same steps."""
        data = self.config.data
        batch = self.config.eval_batch_size or self.config.batch_size
        videos = list(videos) if videos is not None else self.split_videos(split)
        every = self.source.train_files if split == "holdout" else self.source.val_files
        # Only the shards holding a wanted video are read (a racing slice of the hold-out
        # lives in a few of the training split's shards).
        wanted = set(videos)
        holding = [f for f in every if wanted.intersection(self.source.shard_videos[f])]

        def dataset_fn(ctx):
            pipelines = 1 if ctx is None else ctx.num_input_pipelines
            files = holding if len(holding) >= pipelines else every
            ds = pipeline.make_dataset(
                files, training=False, num_frames=data.num_frames,
                input_size=data.eval_input_size, batch_size=batch, sampler=data.sampler,
                frame_stride=data.frame_stride, num_clips=data.eval_clips, input_context=ctx, deterministic=True,
                video_index=videos, pad_batches=True, skip_corrupt=self.config.skip_corrupt_records,
            )
            if ctx is None:
                return ds
            mine, target = pipeline.pipeline_batches(files, self.source.shard_videos, videos, batch, ctx)
            per_replica = ctx.get_per_replica_batch_size(batch)
            return pipeline.filler_batches(ds, target - mine, per_replica, data.eval_clips)
        return dataset_fn

    def contract(self):
        """The run's ``InputContract``: how its evaluation samples, resizes and
        normalises a video (recorded in run.json, carried by every export)."""
        data = self.config.data
        return pipeline.InputContract(
            num_frames=data.num_frames, frame_stride=data.frame_stride, sampler=data.sampler, eval_clips=data.eval_clips,
            eval_size=data.eval_input_size, class_names=tuple(self.source.class_names),
            frame_short_side=self.source.frame_short_side, jpeg_quality=self.source.jpeg_quality,
            fps=self.source.fps,
        )

    def split_name(self, split):
        """How outputs name a split: the val split's own name, or ``holdout``."""
        return "holdout" if split == "holdout" else self.config.data.val_split

    def evaluate_videos(self, split="val", label="validation"):
        """Per-video outcomes (``VideoResults``) of the model on ``split``."""
        evaluator = Evaluator(self.model, self.config.data.eval_clips, distribution=self.distribution)
        show = self.config.progress and self.chief
        videos = self.split_videos(split)
        with self.reading(split):
            return evaluator.videos(self.eval_dataset_fn(split), len(videos), show, label)

    def _next(self, stream, split):
        with self.reading(split):
            return next(stream)

    @contextlib.contextmanager
    def reading(self, split):
        """Turns a record that fails to read into a one-line ``DataError`` naming the
        damaged shard (checked against its size and CRC32C) and how to rewrite it."""
        try:
            yield
        except tf.errors.DataLossError as e:
            files = self.source.val_files if split == "val" else self.source.train_files
            problems = integrity.check_shards(files, self.source.shard_info, verify=True)
            if problems:
                raise integrity.damage_error(problems, self.source.command_for(problems[0].path)) from None
            data = self.config.data
            command = self.source.commands.get(data.val_split if split == "val" else data.train_split)
            first = str(e).strip().splitlines()[0][:200]
            raise integrity.DataError(f"a record of the {split} split could not be read ({first}) although every "
                                      f"shard matches its size and checksum; {integrity.rewrite_advice(command)}"
                                      ) from None

    def damage_report(self):
        """Videos lost to damaged shards, for metrics.json (``--skip_corrupt_records``):
        those found at the start, and shards damaged since (their size changed, or with
        ``--verify_data`` their checksum)."""
        files = self.source.train_files + self.source.val_files
        lost = dict(self.source.lost)
        for problem in integrity.check_shards(files, self.source.shard_info, self.config.verify_data):
            if problem.path not in lost:
                readable = set(integrity.readable_ids(problem.path)) if problem.what != "missing" else set()
                lost[problem.path] = [v for v in self.source.shard_videos[problem.path] if v not in readable]
        return {"videos": sum(len(v) for v in lost.values()),
                "shards": {os.path.basename(p): len(v) for p, v in lost.items()}}

    def evaluate(self, split="val", label="validation"):
        """Metrics of the model on ``split`` (top-1/top-5 with 95% intervals)."""
        return self.evaluate_videos(split, label).metrics(self.split_name(split))

    def prior_diagnostics(self):
        """How strongly the Eq. 5 prior pulled the gates (after the search phase)."""
        done = self.folder.phase_done("search") or {}
        last = done.get("last_epoch", {})
        return gating.prior_diagnostics(
            drop_probabilities(self.model).numpy(), self.config.length_scale, self.num_train,
            loss=last.get("loss"), regularizer=last.get("regularizer"), prior_form=self.config.prior_form,
        )

    def preflight_record(self):
        """The search phase's pre-flight (``search/preflight.json``), or None (a run
        whose search started before pre-flights existed)."""
        path = os.path.join(self.folder.phase_dir("search"), PREFLIGHT_RECORD)
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            return json.load(f)

    def prior_record(self):
        """The Eq. 5 prior as this run applies it (run.json ``prior``)."""
        cfg = self.config
        return {"length_scale": cfg.length_scale, "num_train": self.num_train, "form": cfg.prior_form,
                "formula": PRIOR_FORMULAS[cfg.prior_form],
                "weight_coefficient": weight_coefficient(cfg.length_scale, self.num_train, cfg.prior_form),
                "entropy": cfg.entropy}
