"""The data side of a run: its source, the selection hold-out, and the datasets
built from the run's clip spec (training batches, evaluation batches of a split),
with damaged records turned into one-line errors. ``context.RunContext`` holds one
(``context.inputs``) beside the model side; ``open_inputs`` opens a finished run's
data without a model (the export's checks)."""

import contextlib
import dataclasses
import os

import tensorflow as tf

from tf_stfusion import selection
from tf_stfusion.data import integrity, pipeline
from tf_stfusion.data.sources import resolve_source
from tf_stfusion.run.config import TrainConfig, TrainError


def holdout_method(grouping):
    """How the hold-out was drawn, in words (run.json ``selection.method``)."""
    if grouping in (None, selection.NO_GROUPS):
        return f"class-stratified, the first round(fraction * n) of each class by sha256({selection.SALT!r} + video id)"
    return (f"class-stratified, whole groups of each class in the order of sha256({selection.SALT!r} + group), "
            "as many as come closest to round(fraction * n)")


class RunInputs:
    """A run's data: ``source`` (a ``DataSource``), ``holdout`` (video ids held out
    for the selection), ``lost`` (unreadable videos, ``--skip_corrupt_records``),
    ``num_train`` (N of Eq. 5: the training videos trained on) and the datasets."""

    def __init__(self, config: TrainConfig, chief=True, source=None, log=print):
        self.config = config
        data = config.data
        self.source = source or resolve_source(
            data.dataset, data.data_dir, data.train_split, data.val_split,
            synthetic_config=data.synthetic_config, progress=config.progress and chief,
            verify=config.verify_data, skip_corrupt=config.skip_corrupt_records,
        )
        self.lost = self.source.lost_videos
        if self.lost:
            log(f"data: skipping {len(self.lost)} unreadable video(s) of {len(self.source.lost)} damaged shard(s): "
                + ", ".join(f"{os.path.basename(p)} ({len(v)})" for p, v in self.source.lost.items()))
        self.num_classes = len(self.source.class_names)
        self.flip = self.source.flip_ok if data.flip is None else data.flip
        if data.flip and not self.source.flip_ok:
            raise TrainError(f"--flip: {self.source.name} forbids horizontal flips (left/right is part of "
                             "the label)")
        self.holdout = self._holdout()
        lost_train = {v for v, _ in self.source.train_examples if v in self.lost and v not in self.holdout}
        self.num_train = self.source.num_train - len(self.holdout) - len(lost_train)

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

    def clip_spec(self):
        """The run's clip geometry (a ``pipeline.ClipSpec``), which both datasets share:
        sampling, the training crop and its augmentation, the evaluation views and crop."""
        data = self.config.data
        return pipeline.ClipSpec(num_frames=data.num_frames, frame_stride=data.frame_stride, sampler=data.sampler,
                                 input_size=data.input_size, scale_range=tuple(data.scale_range), flip=self.flip,
                                 eval_size=data.eval_size, eval_clips=data.eval_clips)

    def train_dataset_fn(self, seed):
        spec, cfg = self.clip_spec(), self.config

        def dataset_fn(ctx):
            return pipeline.make_dataset(
                self.source.train_files, spec, training=True, batch_size=cfg.batch_size,
                shuffle_buffer=cfg.data.shuffle_buffer, seed=seed, input_context=ctx, exclude_ids=self.holdout,
                skip_corrupt=cfg.skip_corrupt_records,
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

    def calibration_clips(self, contract, count, trained_on=False):
        """``count`` uint8 clips ``[T, S, S, 3]`` (one per video, the evaluation view,
        as a LiteRT client sends it: ``pipeline.uint8_views``) calibrating int8
        quantization, and where they come from. The videos are of the training split:
        the hold-out -- trained on by no phase, not the report split -- or, with
        ``trained_on`` (the search, which selects on the hold-out) or for a run that
        selected on val, the training videos the template trained on; the first
        ``count`` in racing's pseudo-random order, so only they are read."""
        data = self.config.data
        if self.holdout and not trained_on:
            candidates = sorted(self.holdout - self.lost)
            where = f"hold-out of {data.train_split} ({len(candidates)} videos)"
        else:
            candidates = [v for v, _ in self.source.train_examples if v not in self.holdout and v not in self.lost]
            why = "the hold-out left out" if self.holdout else f"the run selected on {data.val_split}"
            where = f"{data.train_split} ({len(candidates)} videos; {why})"
        chosen = selection.selection_order(candidates)[:count]
        views = pipeline.uint8_views(self.source.train_files, contract, chosen, eval_clips=1)
        return [clips.numpy()[0] for clips, _, _ in views], where

    def split_name(self, split):
        """How outputs name a split: the val split's own name, or ``holdout``."""
        return "holdout" if split == "holdout" else self.config.data.val_split

    def eval_dataset_fn(self, split="val", videos=None):
        """Eval batches ``(clips, labels, position in videos)`` of ``videos`` (default:
        ``split_videos(split)``, all of the split). With several input pipelines
        (workers) each reads its own file shards; every batch has the full size
        (fillers at position -1) and every replica gets the same number of
        batches, so that all take the same steps."""
        spec = self.clip_spec()
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
                files, spec, training=False, batch_size=batch, input_context=ctx, deterministic=True,
                video_index=videos, pad_batches=True, skip_corrupt=self.config.skip_corrupt_records,
            )
            if ctx is None:
                return ds
            mine, target = pipeline.pipeline_batches(files, self.source.shard_videos, videos, batch, ctx)
            per_replica = ctx.get_per_replica_batch_size(batch)
            return pipeline.filler_batches(ds, target - mine, per_replica, spec.eval_clips)
        return dataset_fn

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

    def next_batch(self, stream, split):
        """``next(stream)`` with ``reading``'s error translation."""
        with self.reading(split):
            return next(stream)

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


def open_inputs(config: TrainConfig, verify=False):
    """The data side of the run ``config`` describes (``RunFolder.config()``), read
    quietly and without a model: no progress bar, no skipped records (a damaged
    shard is an error), shards checked against their CRC32C with ``verify``. The
    same ``RunInputs`` training used, so the hold-out is the one it held out."""
    config = dataclasses.replace(config, progress=False, verify_data=verify, skip_corrupt_records=False)
    return RunInputs(config, log=lambda *args, **kwargs: None)
