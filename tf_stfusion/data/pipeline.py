"""The clip pipeline (tf.data): shards -> decode -> sample -> augment -> batches.

* read: TFRecord shards of ``tf.train.SequenceExample`` (see ``prepare``),
  sharded by *file* across input pipelines for multi-worker training;
* sample: a clip sampler picks frame indices (a video shorter than the clip
  loops); only the chosen JPEG frames are decoded;
* augment (train): random short-side scale, one random crop for the whole
  clip, horizontal flip (off for Something-Something, where left/right is part
  of the label); eval: short side to ``input_size``, centre crop, ``num_views``
  clips spread uniformly over the video, stacked as ``[views, T, H, W, 3]``;
* normalise with ImageNet mean/std.

Every random choice is a stateless op seeded from ``seed``, so with a seed and
``deterministic=True`` the pipeline yields the same batches every time.
"""

import dataclasses
import glob
import os

import tensorflow as tf

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CONTEXT_FEATURES = {
    "clip/media_id": tf.io.FixedLenFeature([], tf.string),
    "clip/label/index": tf.io.FixedLenFeature([], tf.int64),
}
SEQUENCE_FEATURES = {"image/encoded": tf.io.FixedLenSequenceFeature([], tf.string)}


# -- clip samplers --------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DenseClipSampler:
    """``num_frames`` consecutive frames taken every ``stride`` frames.

    Train: a random start. Eval: ``num_views`` starts spread uniformly.
    """

    num_frames: int
    stride: int = 1

    def indices(self, length, num_views, training, seed):
        span = (self.num_frames - 1) * self.stride + 1
        room = tf.maximum(length - span, 0)
        if training:
            starts = tf.random.stateless_uniform([1], seed, 0, room + 1, tf.int32)
        else:
            views = tf.range(num_views, dtype=tf.float32)
            starts = tf.cast(tf.cast(room, tf.float32) * (views + 0.5) / num_views, tf.int32)
        offsets = tf.range(self.num_frames, dtype=tf.int32) * self.stride
        return (starts[:, None] + offsets[None, :]) % length  # loops a short video


@dataclasses.dataclass(frozen=True)
class UniformClipSampler:
    """TSN-style: the video cut into ``num_frames`` equal segments, one frame each.

    Train: a random frame per segment. Eval: view ``v`` takes the point
    ``(v + 0.5) / num_views`` of every segment.
    """

    num_frames: int

    def indices(self, length, num_views, training, seed):
        seg = tf.cast(length, tf.float32) / self.num_frames
        base = tf.range(self.num_frames, dtype=tf.float32) * seg
        if training:
            pos = tf.random.stateless_uniform([1, self.num_frames], seed, 0.0, 1.0)
        else:
            pos = ((tf.range(num_views, dtype=tf.float32) + 0.5) / num_views)[:, None]
            pos = tf.broadcast_to(pos, [num_views, self.num_frames])
        idx = tf.cast(tf.floor(base[None, :] + pos * seg), tf.int32)
        return tf.minimum(idx, length - 1)


SAMPLERS = {"dense": DenseClipSampler, "uniform": UniformClipSampler}


def make_sampler(kind, num_frames, stride=1):
    if kind == "dense":
        return DenseClipSampler(num_frames, stride)
    if kind == "uniform":
        return UniformClipSampler(num_frames)
    raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, got {kind!r}")


# -- stages ---------------------------------------------------------------------
def parse_example(serialized):
    context, sequence = tf.io.parse_single_sequence_example(
        serialized, CONTEXT_FEATURES, SEQUENCE_FEATURES
    )
    return sequence["image/encoded"], tf.cast(context["clip/label/index"], tf.int32), context["clip/media_id"]


def decode_frames(encoded, indices):
    """Decodes only the frames at ``indices`` ([V, T]) -> uint8 [V*T, H, W, 3]."""
    chosen = tf.gather(encoded, tf.reshape(indices, [-1]))
    return tf.map_fn(
        lambda b: tf.io.decode_jpeg(b, channels=3), chosen,
        fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8),
    )


def resize_short_side(frames, short_side):
    shape = tf.shape(frames)
    h, w = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    scale = tf.cast(short_side, tf.float32) / tf.minimum(h, w)
    size = tf.cast(tf.round(tf.stack([h * scale, w * scale])), tf.int32)
    return tf.image.resize(frames, tf.maximum(size, short_side), method="bilinear")


def train_augment(frames, input_size, scale_range, flip, seed):
    """Random short-side scale, one random crop for all frames, optional flip."""
    seeds = tf.random.experimental.stateless_split(seed, 3)
    lo, hi = scale_range
    short = tf.random.stateless_uniform([], seeds[0], input_size * lo, input_size * hi + 1e-3)
    frames = resize_short_side(frames, tf.cast(short, tf.int32))
    n = tf.shape(frames)[0]
    frames = tf.image.stateless_random_crop(frames, tf.stack([n, input_size, input_size, 3]), seeds[1])
    if flip:
        do_flip = tf.random.stateless_uniform([], seeds[2]) < 0.5
        frames = tf.cond(do_flip, lambda: tf.reverse(frames, axis=[2]), lambda: frames)
    return frames


def eval_views(frames, input_size):
    """Short side to ``input_size``, centre crop ``input_size`` x ``input_size``."""
    frames = resize_short_side(frames, input_size)
    shape = tf.shape(frames)
    top = (shape[1] - input_size) // 2
    left = (shape[2] - input_size) // 2
    return frames[:, top:top + input_size, left:left + input_size, :]


def normalize(frames):
    x = tf.cast(frames, tf.float32) / 255.0
    return (x - tf.constant(IMAGENET_MEAN)) / tf.constant(IMAGENET_STD)


# -- the dataset ------------------------------------------------------------------
def list_shards(path_or_pattern, split=None):
    """Shard files from a directory (``<split>-*.tfrecord``) or a glob pattern."""
    if os.path.isdir(path_or_pattern):
        pattern = os.path.join(path_or_pattern, f"{split or '*'}-*-of-*.tfrecord")
    else:
        pattern = path_or_pattern
    files = sorted(glob.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no TFRecord shards match {pattern}")
    return files


def make_dataset(
    files,
    *,
    training,
    num_frames=16,
    input_size=224,
    batch_size=8,
    sampler="dense",
    stride=1,
    num_views=1,
    flip=True,
    scale_range=(1.0, 1.25),
    shuffle_buffer=256,
    repeat=None,
    seed=None,
    deterministic=False,
    input_context=None,
    drop_remainder=None,
):
    """Batches of ``(clips, labels)``.

    Train: clips ``[B, T, S, S, 3]``. Eval: ``[B * num_views, T, S, S, 3]`` -- the
    views of a video are consecutive in the batch (average their scores with
    ``average_view_scores``) -- and labels ``[B]``. Float32, ImageNet-normalised.
    ``input_context`` (a ``tf.distribute.InputContext``) shards the files.
    """
    files = list(files)
    clip_sampler = make_sampler(sampler, num_frames, stride)
    views = 1 if training else num_views
    repeat = training if repeat is None else repeat
    drop_remainder = training if drop_remainder is None else drop_remainder
    file_ds = tf.data.Dataset.from_tensor_slices(files)
    if input_context is not None and input_context.num_input_pipelines > 1:
        if len(files) < input_context.num_input_pipelines:
            raise ValueError(
                f"{len(files)} shard files cannot be split over "
                f"{input_context.num_input_pipelines} input pipelines; prepare more shards"
            )
        file_ds = file_ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if training:
        file_ds = file_ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = file_ds.interleave(
        tf.data.TFRecordDataset, cycle_length=min(4, len(files)),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic,
    )
    if training and shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed)
    if repeat:
        ds = ds.repeat()
    # One stateless seed pair per example, from a seeded stream.
    seeds = tf.data.Dataset.random(seed=seed).batch(2)
    ds = tf.data.Dataset.zip((ds, seeds))

    def load(serialized, example_seed):
        encoded, label, _ = parse_example(serialized)
        length = tf.shape(encoded)[0]
        split = tf.random.experimental.stateless_split(example_seed, 2)
        indices = clip_sampler.indices(length, views, training, split[0])
        frames = decode_frames(encoded, indices)
        if training:
            frames = train_augment(frames, input_size, scale_range, flip, split[1])
        else:
            frames = eval_views(frames, input_size)
        frames = tf.reshape(frames, [views, num_frames, input_size, input_size, 3])
        clips = normalize(frames)
        return (clips[0] if training else clips), label

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    batch = batch_size if input_context is None else input_context.get_per_replica_batch_size(batch_size)
    ds = ds.batch(batch, drop_remainder=drop_remainder)
    if not training:
        ds = ds.map(lambda x, y: (tf.reshape(x, [-1, num_frames, input_size, input_size, 3]), y))
    options = tf.data.Options()
    options.deterministic = deterministic
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def average_view_scores(scores, num_views):
    """``[B * num_views, C]`` scores -> ``[B, C]``: the mean over each video's views."""
    scores = tf.convert_to_tensor(scores)
    return tf.reduce_mean(tf.reshape(scores, [-1, num_views, tf.shape(scores)[-1]]), axis=1)
