"""Multi-clip evaluation: per-video outcomes, top-1 / top-5 with intervals.

A video is scored by the mean of the softmax scores of its ``eval_clips``
views (SPEC §5: several clips spread uniformly over the video). The eval
pipeline yields clips ``[b * V, T, H, W, 3]`` with the views of a video
consecutive, each replica its own batches (``distribute_datasets_from_function``),
so a video's views always stay on one replica; ``Evaluator`` scores ``K``
strategies at once on a batch tiled ``K`` times (``K = 1``: the plain model).

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
from tf_stfusion import strategy as strategy_lib

OUTCOMES = ("top1", "top5", "nll")


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


@dataclasses.dataclass
class Evaluation:
    """One pass of an ``Evaluator`` over a split, in the split's canonical order.

    ``results``: a ``VideoResults`` per scored strategy (one for the plain model);
    ``probabilities``: the video scores (mean softmax over views) ``[S, n, C]``,
    what ensembles average; ``labels``: ``[n]`` int64.
    """

    results: list
    probabilities: np.ndarray
    labels: np.ndarray


class Evaluator:
    """Per-video outcomes and scores of a model on multi-view batches: the one
    evaluation loop of the package (training's final evaluation, the strategy
    search, the export's checks, ``compare``).

    ``dataset_fn(input_context)`` returns the eval ``tf.data.Dataset`` of one input
    pipeline (``pipeline.make_dataset(training=False, video_index=...)``: clips
    ``[b * V, T, H, W, 3]`` with a video's ``V = eval_clips`` views consecutive,
    labels ``[b]``, positions ``[b]``, -1 for a padded batch's fillers). The data
    is read once per call; each batch is scored by every group of ``tiles``
    strategies in turn (``strategy.apply_strategies`` assigns the group's masks to
    the gates' variables; without strategies the model runs as it is, ``K = 1``).
    A replica's step tiles its clips ``K`` times, scores all tiles in one model call
    and returns ``[K, b, 3 + C]``: ``video_outcomes`` then the video scores;
    outcomes, labels and positions of every replica and worker are gathered, so
    every process gets the whole split. Traced once per input signature: the
    strategies live in variables and the batch dimension is open.

    ``distribution``: the ``tf.distribute.Strategy`` object to run under (default:
    the one in scope, ``tf.distribute.get_strategy()``);
    ``num_classes``: ``C`` when ``model`` is not a Keras model with ``outputs``.
    """

    def __init__(self, model, eval_clips, *, tiles=1, distribution=None, num_classes=None):
        self.model, self.eval_clips, self.tiles = model, eval_clips, tiles
        self.distribution = distribution or tf.distribute.get_strategy()
        # Static: a replica's empty share (batch 0) must have the other replicas' trailing shape.
        outputs = getattr(model, "outputs", None)
        if not (num_classes or outputs):
            raise ValueError("Evaluator: give num_classes for a model without Keras outputs")
        self.num_classes = num_classes or outputs[0].shape[-1]
        self.traces = 0
        self._step, self._spec = None, None

    def _replica(self, clips, labels, position):
        tiles, classes = self.tiles, self.num_classes

        def scored():
            tiled = clips if tiles == 1 else tf.tile(clips, tf.concat([[tiles], tf.ones([tf.rank(clips) - 1],
                                                                                          tf.int32)], 0))
            # [K*b, V, ...]: the views of a video stay together (the pipeline puts them next to each other).
            videos = tf.reshape(tiled, tf.concat([[-1, self.eval_clips], tf.shape(clips)[1:]], 0))
            probs = tf.reshape(video_scores(self.model, videos), [tiles, -1, classes])
            return tf.concat([tf.stack([video_outcomes(probs[k], labels) for k in range(tiles)]), probs], -1)

        return (outcomes_or_none(scored, clips, [tiles, 0, 3 + classes]), tf.cast(labels, tf.int64),
                tf.cast(position, tf.int64))

    def _make_step(self, element_spec):
        @tf.function(input_signature=[element_spec])
        def step(batch):
            self.traces += 1  # Python side effect: counts traces, not calls.
            outcomes, labels, position = self.distribution.run(self._replica, batch)
            return (self.distribution.gather(outcomes, axis=1), self.distribution.gather(labels, axis=0),
                    self.distribution.gather(position, axis=0))
        return step

    def _groups(self, strategies):
        """``strategies`` in groups of ``tiles``, the last padded with its last strategy:
        the tile count, hence the graph, never changes. ``[None]``: the plain model."""
        if strategies is None:
            return [None]
        if not strategies:
            raise ValueError("no strategy to evaluate (strategies=None: the model as it is)")
        groups = [list(strategies[i:i + self.tiles]) for i in range(0, len(strategies), self.tiles)]
        groups[-1] += [groups[-1][-1]] * (self.tiles - len(groups[-1]))
        return groups

    def _pass(self, groups, dataset_fn, num_videos, bar):
        """Outcomes and scores ``[len(groups) * K, m, 3 + C]``, labels ``[m]`` and
        positions ``[m]`` (-1: fillers) of one pass over the data."""
        dist = self.distribution.distribute_datasets_from_function(dataset_fn)
        if self._step is None or dist.element_spec != self._spec:
            self._step, self._spec = self._make_step(dist.element_spec), dist.element_spec
        scored, labels, positions = [[] for _ in groups], [], []
        for batch in dist:
            for g, group in enumerate(groups):
                if group is not None and (len(groups) > 1 or not positions):  # one group: its masks stay in place
                    strategy_lib.apply_strategies(self.model, group)
                out, label, position = self._step(batch)
                scored[g].append(out.numpy())
            labels.append(label.numpy())
            positions.append(position.numpy())
            if bar:
                bar.update(min(int(sum(np.sum(p >= 0) for p in positions)), num_videos))
        if not positions:
            raise ValueError("the evaluation data yielded no videos")
        return (np.concatenate([np.concatenate(s, axis=1) for s in scored], axis=0), np.concatenate(labels),
                np.concatenate(positions))

    def evaluate(self, dataset_fn, num_videos, strategies=None, bar=None):
        """An ``Evaluation`` of every strategy of ``strategies`` (``Strategy`` objects;
        ``None``: the model as it is) on the ``num_videos`` videos ``dataset_fn``
        yields; ``bar``: a ``keras.utils.Progbar`` advanced by videos. Raises
        ``ValueError`` unless every video is seen exactly once."""
        count = 1 if strategies is None else len(strategies)
        scored, labels, positions = self._pass(self._groups(strategies), dataset_fn, num_videos, bar)
        scored = scored[:count]
        results = [VideoResults.from_outcomes(s[:, :3], positions, num_videos) for s in scored]
        keep = positions >= 0
        probabilities = np.zeros((count, num_videos, scored.shape[-1] - 3))
        probabilities[:, positions[keep]] = scored[:, keep, 3:]
        ordered = np.zeros(num_videos, np.int64)
        ordered[positions[keep]] = labels[keep]
        return Evaluation(results, probabilities, ordered)

    def videos(self, dataset_fn, num_videos, progress=True, label="eval"):
        """``VideoResults`` of the model as it is; ``progress``: a bar headed ``label``."""
        return self.evaluate(dataset_fn, num_videos, bar=progress_bar(num_videos, label) if progress else None
                             ).results[0]


def progress_bar(num_videos, label):
    """A ``keras.utils.Progbar`` counting videos, after a line naming the pass."""
    print(label)
    return keras.utils.Progbar(num_videos, unit_name="video")
