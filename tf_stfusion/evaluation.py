"""Multi-clip evaluation: top-1 / top-5 of video-level scores.

A video is scored by the mean of the softmax scores of its ``num_views``
clips (SPEC §5: several clips spread uniformly over the video). The eval
pipeline yields clips ``[B * V, T, H, W, 3]`` with the views of a video
consecutive; they are regrouped to ``[B, V, ...]`` *before* the batch is split
over replicas, so that a video's views always stay on one replica.
"""

import keras
import tensorflow as tf


def group_views(dataset, num_views):
    """``(clips [B*V, ...], labels [B])`` -> ``(clips [B, V, ...], labels [B])``."""
    def regroup(clips, labels):
        shape = tf.shape(clips)
        return tf.reshape(clips, tf.concat([[-1, num_views], shape[1:]], 0)), labels
    return dataset.map(regroup)


def video_scores(model, clips, training=False):
    """Mean softmax over views: ``[B, V, T, H, W, 3]`` -> ``[B, C]`` float32."""
    shape = tf.shape(clips)
    flat = tf.reshape(clips, tf.concat([[-1], shape[2:]], 0))
    probs = tf.nn.softmax(tf.cast(model(flat, training=training), tf.float32))
    return tf.reduce_mean(tf.reshape(probs, [shape[0], shape[1], -1]), axis=1)


def score_sums(probs, labels):
    """``[top-1 hits, top-5 hits, sum of -log p(label), videos]`` of one batch."""
    labels = tf.cast(labels, tf.int32)
    k5 = min(5, probs.shape[-1])
    top1 = tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, probs, 1), tf.float32))
    top5 = tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, probs, k5), tf.float32))
    picked = tf.gather(probs, labels, batch_dims=1)
    nll = -tf.reduce_sum(tf.math.log(tf.maximum(picked, 1e-12)))
    return tf.stack([top1, top5, nll, tf.cast(tf.shape(labels)[0], tf.float32)])


def summarize(sums):
    top1, top5, nll, count = (float(v) for v in sums)
    if count == 0:
        raise ValueError("the validation data yielded no videos")
    return {"top1": top1 / count, "top5": top5 / count, "loss": nll / count, "num_videos": int(count)}


class MultiClipEvaluator:
    """Evaluates a model on distributed multi-view batches; one compiled step.

    ``dataset_fn(input_context)`` returns the eval ``tf.data.Dataset`` of one
    input pipeline (``pipeline.make_dataset(training=False, ...)``).
    """

    def __init__(self, model, num_views, strategy=None):
        self.model = model
        self.num_views = num_views
        self.strategy = strategy or tf.distribute.get_strategy()
        self.traces = 0

        @tf.function
        def step(clips, labels):
            self.traces += 1  # Python side effect: counts traces, not calls.

            def replica(clips, labels):
                return score_sums(video_scores(self.model, clips), labels)

            per_replica = self.strategy.run(replica, (clips, labels))
            return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        self._step = step

    def __call__(self, dataset_fn, num_videos=None, progress=True, label="eval"):
        dist = self.strategy.distribute_datasets_from_function(
            lambda ctx: group_views(dataset_fn(ctx), self.num_views)
        )
        bar = keras.utils.Progbar(num_videos, unit_name="video") if progress else None
        if bar:
            print(label)
        sums = tf.zeros([4])
        for clips, labels in dist:
            sums += self._step(clips, labels)
            if bar:
                bar.update(int(sums[3]))
        return summarize(sums.numpy())
