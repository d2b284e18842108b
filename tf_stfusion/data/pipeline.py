"""The clip pipeline (tf.data): shards -> decode -> sample -> augment -> batches.

* read: TFRecord shards of ``tf.train.SequenceExample`` (see ``prepare``),
  sharded by *file* across input pipelines for multi-worker training;
* sample: a clip sampler picks frame indices (a video shorter than the clip
  loops); only the chosen JPEG frames are decoded;
* augment (train): random short-side scale, one random crop for the whole
  clip, horizontal flip (off for Something-Something, where left/right is part
  of the label); eval: short side to ``eval_size``, centre crop, ``eval_clips``
  clips spread uniformly over the video, stacked as ``[eval_clips, T, H, W, 3]``;
* normalise with ImageNet mean/std.

A ``ClipSpec`` holds that geometry once; ``make_dataset`` takes one, and an
export's ``InputContract`` hands out its own (``contract.clip_spec()``).

Every random choice is a stateless op seeded from ``seed``, so with a seed and
``deterministic=True`` the pipeline yields the same batches every time.
"""

import dataclasses
import glob
import math
import os
from typing import Optional, Tuple

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
    """``num_frames`` consecutive frames taken every ``frame_stride`` frames.

    Train: a random start. Eval: ``eval_clips`` starts spread uniformly.
    """

    num_frames: int
    frame_stride: int = 1

    def indices(self, length, eval_clips, training, seed):
        span = (self.num_frames - 1) * self.frame_stride + 1
        room = tf.maximum(length - span, 0)
        if training:
            starts = tf.random.stateless_uniform([1], seed, 0, room + 1, tf.int32)
        else:
            views = tf.range(eval_clips, dtype=tf.float32)
            starts = tf.cast(tf.cast(room, tf.float32) * (views + 0.5) / eval_clips, tf.int32)
        offsets = tf.range(self.num_frames, dtype=tf.int32) * self.frame_stride
        return (starts[:, None] + offsets[None, :]) % length  # loops a short video


@dataclasses.dataclass(frozen=True)
class UniformClipSampler:
    """TSN-style: the video cut into ``num_frames`` equal segments, one frame each.

    Train: a random frame per segment, ``floor((k + u) L / T)`` for segment ``k``
    and ``u`` uniform in [0, 1). Eval: view ``v`` takes the point
    ``(v + 0.5) / eval_clips`` of every segment, ``floor((k + (v + 0.5) / V) L / T)``.

    Computed exactly (integers in eval; float64 of a 24-bit ``u`` in training, exact
    below 2**20 frames): float32 put a point that lands on a frame one frame early
    (``L = 26``, ``T = 7``: segment 3's middle is frame 13; float32 gave 12).
    """

    num_frames: int

    def indices(self, length, eval_clips, training, seed):
        k = tf.range(self.num_frames, dtype=tf.int64)
        length = tf.cast(length, tf.int64)
        if training:
            u = tf.random.stateless_uniform([1, self.num_frames], seed, 0.0, 1.0)
            point = (tf.cast(k, tf.float64) + tf.cast(u, tf.float64)) * tf.cast(length, tf.float64)
            idx = tf.floor(point / self.num_frames)
        else:  # (k + (2v + 1) / 2V) L / T with one integer division
            v = tf.range(eval_clips, dtype=tf.int64)[:, None]
            idx = (2 * eval_clips * k + 2 * v + 1) * length // (2 * eval_clips * self.num_frames)
        return tf.cast(idx, tf.int32)


SAMPLERS = {"dense": DenseClipSampler, "uniform": UniformClipSampler}


def make_sampler(kind, num_frames, frame_stride=1):
    if kind == "dense":
        return DenseClipSampler(num_frames, frame_stride)
    if kind == "uniform":
        return UniformClipSampler(num_frames)
    raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, got {kind!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClipSpec:
    """The geometry of a clip (SPEC §5), one value for training and evaluation:
    ``make_dataset`` takes it, ``InputContract.clip_spec()`` and the run's
    ``RunInputs.clip_spec()`` hand it out, so no caller re-types it.

    ``num_frames`` per clip, picked by the ``sampler`` (``dense``: consecutive
    frames every ``frame_stride`` frames; ``uniform``: one frame per TSN segment,
    no stride). Training: short side to ``input_size`` x a factor drawn from
    ``scale_range``, one random ``input_size`` x ``input_size`` crop for the whole
    clip, mirrored with probability 0.5 if ``flip``. Evaluation: ``eval_clips``
    views spread uniformly over the video, short side to ``eval_size`` (``None``:
    ``input_size``) and a centre crop of that size. Sizes in pixels.
    Raises ``ValueError`` (one line) for an unknown sampler or a count below 1.
    """

    num_frames: int = 16
    frame_stride: int = 1
    sampler: str = "dense"
    input_size: int = 224
    scale_range: Tuple[float, float] = (1.0, 1.25)
    flip: bool = True
    eval_size: Optional[int] = None
    eval_clips: int = 1

    def __post_init__(self):
        if self.eval_size is None:
            object.__setattr__(self, "eval_size", self.input_size)
        small = [name for name in ("num_frames", "frame_stride", "input_size", "eval_size", "eval_clips")
                 if getattr(self, name) < 1]
        if small:
            raise ValueError(f"clip spec: {', '.join(small)} must be >= 1")
        self.clip_sampler()  # validates the sampler's name

    def clip_sampler(self):
        return make_sampler(self.sampler, self.num_frames, self.frame_stride)


# -- stages ---------------------------------------------------------------------
def parse_example(serialized):
    context, sequence = tf.io.parse_single_sequence_example(
        serialized, CONTEXT_FEATURES, SEQUENCE_FEATURES
    )
    return sequence["image/encoded"], tf.cast(context["clip/label/index"], tf.int32), context["clip/media_id"]


def parse_media_id(serialized):
    """The video id of a serialized example (its context only)."""
    context, _ = tf.io.parse_single_sequence_example(
        serialized, {"clip/media_id": CONTEXT_FEATURES["clip/media_id"]}
    )
    return context["clip/media_id"]


def _id_table(ids, positions):
    """A lookup of video ids: their position in ``ids`` (``positions``) or 0; -1 if absent."""
    keys = tf.constant([str(i) for i in ids], tf.string)
    values = tf.range(tf.size(keys, out_type=tf.int64)) if positions else tf.zeros(tf.shape(keys), tf.int64)
    return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, values), default_value=-1)


def decode_frame(encoded):
    """One encoded frame (JPEG, as the shards store them, or PNG) -> uint8 ``[H, W, 3]``.
    (For JPEG this is bit-identical to ``tf.io.decode_jpeg``.)"""
    frame = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    frame.set_shape([None, None, 3])
    return frame


def decode_frames(encoded, indices):
    """Decodes only the frames at ``indices`` ([V, T]) -> uint8 [V*T, H, W, 3]."""
    chosen = tf.gather(encoded, tf.reshape(indices, [-1]))
    return tf.map_fn(decode_frame, chosen, fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))


def resize_short_side(frames, short_side):
    shape = tf.shape(frames)
    h, w = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    scale = tf.cast(short_side, tf.float32) / tf.minimum(h, w)
    size = tf.cast(tf.round(tf.stack([h * scale, w * scale])), tf.int32)
    return tf.image.resize(frames, tf.maximum(size, short_side), method="bilinear")


def train_augment(frames, spec, seed):
    """Decoded frames ``[T, H, W, 3]`` -> ``[T, S, S, 3]`` (``S = spec.input_size``):
    a random short-side scale, one random crop for all frames, a flip if ``spec.flip``."""
    seeds = tf.random.experimental.stateless_split(seed, 3)
    lo, hi = spec.scale_range
    short = tf.random.stateless_uniform([], seeds[0], spec.input_size * lo, spec.input_size * hi + 1e-3)
    frames = resize_short_side(frames, tf.cast(short, tf.int32))
    n = tf.shape(frames)[0]
    frames = tf.image.stateless_random_crop(frames, tf.stack([n, spec.input_size, spec.input_size, 3]), seeds[1])
    if spec.flip:
        do_flip = tf.random.stateless_uniform([], seeds[2]) < 0.5
        frames = tf.cond(do_flip, lambda: tf.reverse(frames, axis=[2]), lambda: frames)
    return frames


def eval_crop(frames, eval_size):
    """Short side to ``eval_size``, centre crop ``eval_size`` x ``eval_size``."""
    frames = resize_short_side(frames, eval_size)
    shape = tf.shape(frames)
    top = (shape[1] - eval_size) // 2
    left = (shape[2] - eval_size) // 2
    return frames[:, top:top + eval_size, left:left + eval_size, :]


def normalize(frames):
    x = tf.cast(frames, tf.float32) / 255.0
    return (x - tf.constant(IMAGENET_MEAN)) / tf.constant(IMAGENET_STD)


def train_clip(encoded, spec, seed):
    """One video's encoded frames ``[L]`` -> a normalised training clip ``[T, S, S, 3]``
    (``S = spec.input_size``): sample, decode, augment, normalise, from one seed pair."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    indices = spec.clip_sampler().indices(tf.shape(encoded)[0], 1, True, seeds[0])
    frames = train_augment(decode_frames(encoded, indices), spec, seeds[1])
    return normalize(tf.reshape(frames, [spec.num_frames, spec.input_size, spec.input_size, 3]))


# -- the evaluation path of one video: evaluation and serving both call these -------
EVAL_SEED = (0, 0)  # evaluation sampling is deterministic; the samplers take a seed all the same


def views_to_clips(frames, spec):
    """Decoded frames ``[V*T, H, W, 3]`` of ``V = spec.eval_clips`` views, in view order
    -> normalised clips ``[V, T, S, S, 3]`` (``S = spec.eval_size``): short side to
    ``S``, centre crop, ImageNet normalisation."""
    frames = eval_crop(frames, spec.eval_size)
    return normalize(tf.reshape(frames, [spec.eval_clips, spec.num_frames, spec.eval_size, spec.eval_size, 3]))


def eval_indices(length, spec):
    """The frame indices ``[V, T]`` (``V = spec.eval_clips``) evaluation reads from a
    video of ``length`` frames (a scalar int32 tensor): the sampler's views."""
    return spec.clip_sampler().indices(length, spec.eval_clips, False, tf.constant(EVAL_SEED, tf.int32))


def eval_frames(encoded, spec):
    """The decoded frames ``[V*T, H, W, 3]`` evaluation reads from one video's
    encoded frames ``[L]``: the sampler's ``V = spec.eval_clips`` views, in view
    order (a short video loops)."""
    return decode_frames(encoded, eval_indices(tf.shape(encoded)[0], spec))


def eval_video_clips(encoded, spec):
    """One video's encoded frames ``[L]`` -> its evaluation clips ``[V, T, S, S, 3]``:
    the sampler's ``V = spec.eval_clips`` views, decoded, cropped, normalised."""
    return views_to_clips(eval_frames(encoded, spec), spec)


def uint8_clips(frames, spec):
    """What a client of a runtime without JPEG decoding sends (ONNX, LiteRT): decoded
    frames ``[V*T, H, W, 3]`` resized and centre-cropped as evaluation does, rounded
    to uint8 ``[V, T, S, S, 3]`` (evaluation normalises the unrounded values: the
    two differ by at most half a grey level before normalisation)."""
    views = tf.clip_by_value(tf.round(eval_crop(frames, spec.eval_size)), 0, 255)
    return tf.reshape(tf.cast(views, tf.uint8), [spec.eval_clips, spec.num_frames, spec.eval_size, spec.eval_size, 3])


@dataclasses.dataclass(frozen=True)
class InputContract:
    """What a model scored by a run's evaluation expects (SPEC §8), recorded by the
    run and carried by every export, so that no client re-types sizes:

    ``num_frames`` per clip, taken by the ``sampler`` (``dense`` with
    ``frame_stride``, or ``uniform``), ``eval_clips`` views spread over the video
    and their scores averaged, frames resized (short side) and centre-cropped to
    ``eval_size``, ImageNet ``mean``/``std``. ``frame_short_side`` and
    ``jpeg_quality`` say how ``prepare`` stored the frames the run was evaluated on
    (0: as decoded), so a client can send frames encoded the same way. ``fps``:
    the constant rate ``prepare --fps`` resampled every video to (frames/s), so
    that ``frame_stride`` is a time step; a client resamples the same way before
    picking frames. 0 (and a contract recorded before it existed): no resampling.
    """

    num_frames: int
    frame_stride: int
    sampler: str
    eval_clips: int
    eval_size: int
    class_names: Tuple[str, ...]
    frame_short_side: int = 0
    jpeg_quality: int = 90
    fps: float = 0.0
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD

    FORMAT = "stfusion-contract/1"

    def clip_spec(self):
        """The evaluation geometry as a ``ClipSpec`` (for ``make_dataset``, the serving
        signatures and the clients); its training crop is ``eval_size`` too."""
        return ClipSpec(num_frames=self.num_frames, frame_stride=self.frame_stride, sampler=self.sampler,
                        input_size=self.eval_size, eval_size=self.eval_size, eval_clips=self.eval_clips)

    def frame_indices(self, length):
        """The frame indices ``[eval_clips, num_frames]`` evaluation reads from a
        video of ``length`` frames (the pipeline's own sampler)."""
        if length < 1:
            raise ValueError("a video needs at least one frame")
        return eval_indices(tf.constant(length, tf.int32), self.clip_spec()).numpy()

    def to_dict(self):
        out = {"format": self.FORMAT, **dataclasses.asdict(self)}
        out.update(class_names=list(self.class_names), mean=list(self.mean), std=list(self.std))
        return out

    @classmethod
    def from_dict(cls, data, where="input contract"):
        if not isinstance(data, dict) or data.get("format") != cls.FORMAT:
            raise ValueError(f"{where}: not a {cls.FORMAT} record")
        fields = {f.name for f in dataclasses.fields(cls)}
        try:
            values = {k: v for k, v in data.items() if k in fields}
            values.update(class_names=tuple(values["class_names"]), mean=tuple(values.get("mean", IMAGENET_MEAN)),
                          std=tuple(values.get("std", IMAGENET_STD)))
            contract = cls(**values)
        except (KeyError, TypeError) as e:
            raise ValueError(f"{where}: unreadable ({e})") from None
        make_sampler(contract.sampler, contract.num_frames, contract.frame_stride)  # validates
        return contract


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


def make_dataset(files, spec, *, training, batch_size=8, shuffle_buffer=256, repeat=None, seed=None,
                 deterministic=False, input_context=None, drop_remainder=None, video_index=None, exclude_ids=None,
                 pad_batches=False, skip_corrupt=False):
    """Batches of ``(clips, labels)`` of the TFRecord shards ``files``, clips shaped
    by ``spec`` (a ``ClipSpec``), in Model Garden's order of steps: files ->
    records -> (selected videos) -> decode + sample -> augment / crop -> batch.

    Train: clips ``[B, T, S, S, 3]`` (``S = spec.input_size``). Eval:
    ``[B * V, T, S, S, 3]`` (``V = spec.eval_clips``, ``S = spec.eval_size``) --
    the views of a video are consecutive in the batch (average their scores with
    ``average_clip_scores``) -- and labels ``[B]``. Float32, ImageNet-normalised.
    ``input_context`` (a ``tf.distribute.InputContext``) shards the files.
    Records are read 4 files at a time, one from each in turn; training shuffles the
    files every epoch and the records in a buffer of ``shuffle_buffer``; evaluation
    keeps that reading order (no shuffle).

    ``video_index`` (a sequence of video ids): only these videos are read, and
    each batch carries a third element, every video's position in that
    sequence (``[B]`` int64), so per-video results can be put in a fixed order
    whatever the reading order. ``exclude_ids``: videos never read (the
    hold-out of the training split). ``pad_batches`` (eval with ``video_index``):
    the last batch is filled up to ``batch_size`` videos with zero clips at
    position -1, so that every batch has one shape (a new shape costs oneDNN a
    new set of kernels, seconds on a CPU); readers skip position -1.
    ``skip_corrupt``: a shard's records after one that fails to read (a truncation,
    a bad record checksum) are skipped instead of stopping the input.
    Raises ``ValueError`` if ``input_context`` has more pipelines than ``files``.
    """
    files = list(files)
    repeat = training if repeat is None else repeat
    drop_remainder = training if drop_remainder is None else drop_remainder
    position_of = _id_table(video_index, positions=True) if video_index is not None else None
    ds = read_records(shard_files(files, training, seed, input_context), len(files), deterministic, skip_corrupt)
    ds = select_videos(ds, position_of, exclude_ids)
    if training and shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed)
    if repeat:
        ds = ds.repeat()
    # One stateless seed pair per example, from a seeded stream.
    ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=seed).batch(2)))
    ds = ds.map(clip_loader(spec, training, position_of), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=deterministic)
    batch = batch_size if input_context is None else input_context.get_per_replica_batch_size(batch_size)
    ds = batch_clips(ds, spec, training, batch, drop_remainder, pad=pad_batches and position_of is not None)
    options = tf.data.Options()
    options.deterministic = deterministic
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def shard_files(files, training, seed, input_context):
    """The file names one input pipeline reads: its share of ``files`` under
    ``input_context`` (whole files, so workers never read the same video),
    reshuffled every epoch in training."""
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
    return file_ds


def read_records(file_ds, num_files, deterministic, skip_corrupt):
    """Serialized examples of up to 4 files read at once (``skip_corrupt``: the rest
    of a file is dropped after a record that fails to read)."""
    read = (lambda f: tf.data.TFRecordDataset(f).ignore_errors()) if skip_corrupt else tf.data.TFRecordDataset
    return file_ds.interleave(read, cycle_length=min(4, num_files), num_parallel_calls=tf.data.AUTOTUNE,
                              deterministic=deterministic)


def select_videos(ds, position_of, exclude_ids):
    """Only the examples whose video id ``position_of`` lists (if given) and
    ``exclude_ids`` does not (if any); read from the context alone, before decoding."""
    excluded = _id_table(exclude_ids, positions=False) if exclude_ids else None
    if position_of is None and excluded is None:
        return ds

    def listed(serialized):
        media_id = parse_media_id(serialized)
        keep = tf.constant(True)
        if position_of is not None:
            keep = keep & (position_of.lookup(media_id) >= 0)
        if excluded is not None:
            keep = keep & (excluded.lookup(media_id) < 0)
        return keep

    return ds.filter(listed)


def clip_loader(spec, training, position_of):
    """The map function ``(serialized, seed pair) -> (clips, label[, position])``:
    a training clip ``[T, S, S, 3]`` or a video's evaluation clips ``[V, T, S, S, 3]``."""
    def load(serialized, example_seed):
        encoded, label, media_id = parse_example(serialized)
        clips = train_clip(encoded, spec, example_seed) if training else eval_video_clips(encoded, spec)
        if position_of is not None:
            return clips, label, position_of.lookup(media_id)
        return clips, label
    return load


def batch_clips(ds, spec, training, batch, drop_remainder, pad):
    """Batches of ``batch`` examples; eval: ``pad`` fills the last batch
    (``fill_batch``), and the views fold into the batch, ``[B * V, T, S, S, 3]``."""
    ds = ds.batch(batch, drop_remainder=drop_remainder)
    if training:
        return ds
    if pad:
        ds = ds.map(lambda clips, labels, position: fill_batch(clips, labels, position, batch))
    shape = [-1, spec.num_frames, spec.eval_size, spec.eval_size, 3]
    return ds.map(lambda x, *rest: (tf.reshape(x, shape), *rest))


def uint8_views(files, contract, video_ids=None, eval_clips=None):
    """``(clips, label, video id)`` of every video in ``files`` (only ``video_ids``,
    if given), in file order: uint8 clips ``[V, T, S, S, 3]`` of the frames
    evaluation reads under ``contract`` (an ``InputContract``), as a client of a
    clip runtime sends them (``uint8_clips``). ``eval_clips``: ``V`` (default: the
    contract's)."""
    spec = contract.clip_spec()
    if eval_clips:
        spec = dataclasses.replace(spec, eval_clips=eval_clips)
    ds = tf.data.TFRecordDataset(list(files))
    if video_ids is not None:
        wanted = _id_table(sorted(video_ids), positions=False)
        ds = ds.filter(lambda serialized: wanted.lookup(parse_media_id(serialized)) >= 0)

    def load(serialized):
        encoded, label, media_id = parse_example(serialized)
        return uint8_clips(eval_frames(encoded, spec), spec), label, media_id

    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)


def fill_batch(clips, labels, position, size):
    """Pads a batch of ``n <= size`` videos to ``size``: zero clips, label 0, position -1."""
    missing = size - tf.shape(labels)[0]
    clips = tf.pad(clips, [[0, missing]] + [[0, 0]] * (len(clips.shape) - 1))
    return clips, tf.pad(labels, [[0, missing]]), tf.pad(position, [[0, missing]], constant_values=-1)


def filler_batches(ds, count, batch, eval_clips):
    """``ds`` (eval batches of ``batch`` videos with positions) followed by ``count``
    batches of that shape holding no video (every position -1)."""
    if count <= 0:
        return ds
    clips, labels, position = ds.element_spec
    filler = tf.data.Dataset.from_tensors((
        tf.zeros([batch * eval_clips, *clips.shape[1:]], clips.dtype), tf.zeros([batch], labels.dtype),
        tf.fill([batch], tf.constant(-1, position.dtype))))
    return ds.concatenate(filler.repeat(count))


def pipeline_batches(files, shard_videos, wanted, batch_size, input_context):
    """How many per-replica batches each input pipeline yields when ``make_dataset``
    shards ``files`` over the pipelines of ``input_context`` and reads only the
    ``wanted`` videos (``shard_videos``: file -> its video ids), and how many every
    pipeline must yield so that all take the same number of steps (a multiple of
    the replicas each pipeline feeds). Returns ``(mine, target)``."""
    pipelines, replicas = input_context.num_input_pipelines, input_context.num_replicas_in_sync
    batch = input_context.get_per_replica_batch_size(batch_size)
    wanted = set(wanted)
    counts = [sum(len(wanted.intersection(shard_videos[f])) for f in list(files)[w::pipelines])
              for w in range(pipelines)]
    batches = [math.ceil(c / batch) for c in counts]
    local = max(replicas // pipelines, 1)
    return batches[input_context.input_pipeline_id], math.ceil(max(batches) / local) * local


def average_clip_scores(scores, eval_clips):
    """``[B * eval_clips, C]`` scores -> ``[B, C]``: the mean over each video's views."""
    scores = tf.convert_to_tensor(scores)
    return tf.reduce_mean(tf.reshape(scores, [-1, eval_clips, tf.shape(scores)[-1]]), axis=1)
