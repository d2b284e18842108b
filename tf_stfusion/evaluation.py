"""Multi-clip evaluation: per-video outcomes, top-1 / top-5 with intervals.

A video is scored by the mean of the softmax scores of its ``num_clips``
clips (SPEC §5: several clips spread uniformly over the video). The eval
pipeline yields clips ``[B * V, T, H, W, 3]`` with the views of a video
consecutive; they are regrouped to ``[B, V, ...]`` *before* the batch is split
over replicas, so that a video's views always stay on one replica.

Every video's outcome (top-1 hit, top-5 hit, ``-log p(label)``) is kept, in
the split's canonical order (``pipeline.make_dataset(video_index=...)`` gives
each video its position), so that two strategies scored on the same split can
be compared video by video (``selection.paired_difference``) without running
the model again.
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from tf_stfusion import selection

OUTCOMES = ("top1", "top5", "nll")


def group_clips(dataset, num_clips):
    """``(clips [B*V, ...], labels [B], ...)`` -> ``(clips [B, V, ...], labels [B], ...)``."""
    def regroup(clips, *rest):
        shape = tf.shape(clips)
        return (tf.reshape(clips, tf.concat([[-1, num_clips], shape[1:]], 0)), *rest)
    return dataset.map(regroup)


def video_scores(model, clips, training=False):
    """Mean softmax over views: ``[B, V, T, H, W, 3]`` -> ``[B, C]`` float32."""
    shape = tf.shape(clips)
    flat = tf.reshape(clips, tf.concat([[-1], shape[2:]], 0))
    probs = tf.nn.softmax(tf.cast(model(flat, training=training), tf.float32))
    # The class count stays static: for a replica's empty share (batch 0) a -1 could not be inferred.
    return tf.reduce_mean(tf.reshape(probs, [shape[0], shape[1], probs.shape[-1] or -1]), axis=1)


def outcomes_or_none(outcomes_fn, clips, shape):
    """``outcomes_fn()`` for a non-empty batch, zeros of ``shape`` (batch 0) for an empty
    one: a replica can get an empty share of the last batch, and oneDNN's Conv3D
    returns its input's shape for a batch of 0 (the next BatchNorm then fails)."""
    return tf.cond(tf.shape(clips)[0] > 0, outcomes_fn, lambda: tf.zeros(shape, tf.float32))


def video_outcomes(probs, labels):
    """Per video ``[top-1 hit, top-5 hit, -log p(label)]``: ``[B, C]`` scores -> ``[B, 3]``.

    A hit means the label is among the ``k`` highest scores (``tf.math.in_top_k``:
    ties at the k-th score count as hits); with fewer than 5 classes top-5 is top-C.
    """
    labels = tf.cast(labels, tf.int32)
    k5 = min(5, probs.shape[-1])
    top1 = tf.cast(tf.math.in_top_k(labels, probs, 1), tf.float32)
    top5 = tf.cast(tf.math.in_top_k(labels, probs, k5), tf.float32)
    nll = -tf.math.log(tf.maximum(tf.gather(probs, labels, batch_dims=1), 1e-12))
    return tf.stack([top1, top5, nll], axis=1)


@dataclasses.dataclass
class VideoResults:
    """Outcomes of every video of a split, in the split's canonical order."""

    top1: np.ndarray  # bool [n]
    top5: np.ndarray  # bool [n]
    nll: np.ndarray  # float [n]

    @classmethod
    def from_outcomes(cls, outcomes, index, num_videos):
        """Scatters per-video ``outcomes [m, 3]`` at positions ``index [m]`` into
        arrays of ``num_videos``; every video must be seen exactly once."""
        outcomes, index = np.asarray(outcomes, np.float64).reshape(-1, 3), np.asarray(index, np.int64).ravel()
        outcomes, index = outcomes[index >= 0], index[index >= 0]  # -1: a filler of a padded batch
        seen = np.bincount(index, minlength=num_videos) if index.size else np.zeros(num_videos, int)
        if index.size and index.max() >= num_videos:
            raise ValueError(f"video positions outside [0, {num_videos})")
        if seen.size != num_videos or np.any(seen != 1):
            missing, twice = int(np.sum(seen == 0)), int(np.sum(seen > 1))
            raise ValueError(f"evaluation saw {index.size} clips' videos for a split of {num_videos}: "
                             f"{missing} never, {twice} more than once")
        table = np.empty((num_videos, 3))
        table[index] = outcomes
        return cls(table[:, 0] > 0.5, table[:, 1] > 0.5, table[:, 2])

    @property
    def num_videos(self):
        return int(self.top1.size)

    def metrics(self, split=None):
        """``top1``/``top5`` (fractions) with 95% Wilson intervals, mean NLL, the split."""
        if self.num_videos == 0:
            raise ValueError("the evaluation data yielded no videos")
        top1, top5 = selection.proportion(self.top1), selection.proportion(self.top5)
        out = {"top1": top1["value"], "top1_ci": top1["ci"], "top5": top5["value"], "top5_ci": top5["ci"],
               "loss": float(np.mean(self.nll)), "num_videos": self.num_videos, "ci_method": selection.CI_METHOD}
        if split is not None:
            out["split"] = split
        return out


class MultiClipEvaluator:
    """Evaluates a model on distributed multi-view batches; one compiled step.

    ``dataset_fn(input_context)`` returns the eval ``tf.data.Dataset`` of one
    input pipeline (``pipeline.make_dataset(training=False, video_index=...)``,
    which yields ``(clips, labels, position)``). Per-video outcomes of every
    replica and worker are gathered, so every process gets the whole split.
    """

    def __init__(self, model, num_clips, distribution=None):
        self.model = model
        self.num_clips = num_clips
        self.distribution = distribution or tf.distribute.get_strategy()
        self.traces = 0

        @tf.function
        def step(clips, labels, position):
            self.traces += 1  # Python side effect: counts traces, not calls.

            def replica(clips, labels, position):
                outcomes = outcomes_or_none(lambda: video_outcomes(video_scores(self.model, clips), labels),
                                            clips, [0, 3])
                return outcomes, tf.cast(position, tf.int64)

            outcomes, position = self.distribution.run(replica, (clips, labels, position))
            return self.distribution.gather(outcomes, axis=0), self.distribution.gather(position, axis=0)

        self._step = step

    def videos(self, dataset_fn, num_videos, progress=True, label="eval"):
        """``VideoResults`` of the ``num_videos`` videos that ``dataset_fn`` yields."""
        dist = self.distribution.distribute_datasets_from_function(
            lambda ctx: group_clips(dataset_fn(ctx), self.num_clips)
        )
        bar = keras.utils.Progbar(num_videos, unit_name="video") if progress else None
        if bar:
            print(label)
        outcomes, positions = [], []
        for clips, labels, position in dist:
            out, pos = self._step(clips, labels, position)
            outcomes.append(out.numpy())
            positions.append(pos.numpy())
            if bar:
                bar.update(sum(len(p) for p in positions))
        if not positions:
            raise ValueError("the evaluation data yielded no videos")
        return VideoResults.from_outcomes(np.concatenate(outcomes), np.concatenate(positions), num_videos)

    def __call__(self, dataset_fn, num_videos, progress=True, label="eval", split=None):
        """The metrics dict (``VideoResults.metrics``) of one pass."""
        return self.videos(dataset_fn, num_videos, progress, label).metrics(split)


def video_probabilities(model, dataset, num_clips, num_videos):
    """Mean-over-views scores ``[num_videos, C]`` in the split's canonical order,
    on one device (``dataset``: ``make_dataset(training=False, video_index=...)``)."""
    @tf.function
    def step(clips, position):
        shape = tf.shape(clips)
        return video_scores(model, tf.reshape(clips, tf.concat([[-1, num_clips], shape[1:]], 0))), position

    out = None
    seen = np.zeros(num_videos, int)
    for clips, _, position in dataset:
        probs, position = (t.numpy() for t in step(clips, position))
        probs, position = probs[position >= 0], position[position >= 0]  # -1: fillers
        if out is None:
            out = np.zeros((num_videos, probs.shape[-1]))
        out[position] = probs
        seen[position] += 1
    if out is None or np.any(seen != 1):
        raise ValueError(f"evaluation did not see each of the {num_videos} videos exactly once")
    return out
