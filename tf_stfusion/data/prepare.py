"""``python -m tf_stfusion.data.prepare``: videos -> sharded TFRecords + manifest.

Each video is decoded as a player shows it (``data.video.iter_frames``: PyAV
and an FFmpeg filter graph; or an image-frame folder in the order of the numbers
in its names), optionally resampled to a constant ``--fps``, its short side
resized (``--short_side``, default 256) and written, one frame at a time
(``data.records``), as a ``tf.train.SequenceExample`` (the TF Model Garden video
layout)::

    context:       clip/media_id (bytes), clip/label/index (int64),
                   clip/num_frames, image/height, image/width (int64)
    feature_lists: image/encoded -- one JPEG per frame

into ``<output_dir>/<split>-<i:05d>-of-<n:05d>.tfrecord``, next to a
``<split>-manifest.json`` (class names, counts per class, skipped items with
reasons, frame-count statistics, ``fps``, and per video its ``DecodeStats``:
frames decoded and announced, packets dropped, average fps, duration, variable
frame rate).

Robust by construction: work is split into shards and spread over processes;
a shard is written under a temporary name and renamed when complete, then its
``.done.json`` record is written, so no half-written shard ever sits under its
final name, and a rerun of the same command skips finished shards and
completes the rest. A video that cannot be used, for whatever reason, is
skipped and reported; a split that writes no video is an error.

Over several machines: ``--num_tasks=M --task_index=i`` (or a Slurm job array's /
an Indexed Job's index, ``cluster.task_share``) writes shards ``i, i+M, ...`` of
the index frozen in ``<split>-index.json``; ``--merge`` then checks every shard
(size and CRC32C) and writes the manifest, equal to one machine's.
"""

import dataclasses
import json
import multiprocessing
import os
import shlex
import statistics
import sys

from absl import flags

from tf_stfusion.data import readers, synthetic
from tf_stfusion.data.integrity import check_shards, shard_record
from tf_stfusion.data.records import FrameSpool, RecordWriteError, ShardWriter, context_features
from tf_stfusion.data.video import DecodeStats, VideoError, encode_jpeg, iter_frames, resize_image
from tf_stfusion.fileio import atomic_write_json

LAYOUTS = sorted(readers.READERS) + ["synthetic"]  # what prepare reads: a dataset's folder layout

FLAGS = flags.FLAGS

SYNTHETIC_PREFIX = "synthetic:"
# Up to a tenth of a video's packets may fail to decode or decode concealed: FFmpeg conceals a lost packet
# from its reference frames, so a video missing a few still shows every scene (one
# damaged packet header: 1 of 60 dropped in tests/test_video.py; the issue reports 3 of
# 60 frames lost to 64 damaged bytes). Beyond one packet in ten, a recipe's 32-frame
# span (16 frames at stride 2) holds three or more concealed frames on average, and the
# clips would train on concealment artefacts.
MAX_DROPPED_FRACTION = 0.1


def define_flags():
    """The CLI's flags; defined only when run as a program, so that importing
    this module (e.g. from ``train``) does not claim flag names like --dataset."""
    flags.DEFINE_enum("dataset", None, LAYOUTS, "Dataset layout to read.")
    flags.DEFINE_string("data_dir", None, "Dataset root (annotations); not needed for synthetic.")
    flags.DEFINE_string("video_dir", None, "Where the videos/frames are, if not the layout's default.")
    flags.DEFINE_string("annotation_file", None, "Kinetics-400: the split's CSV, if not <data_dir>/<split>.csv.")
    flags.DEFINE_integer("fold", 1, "UCF101 split (1, 2 or 3).")
    flags.DEFINE_enum("split", "train", list(readers.SPLITS), "Split to prepare.")
    flags.DEFINE_string("output_dir", None, "Where shards and the manifest are written.")
    flags.DEFINE_integer("short_side", 256, "Resize the short side to this (0: keep). Synthetic clips keep "
                         "their size unless this flag is given.")
    flags.DEFINE_integer("examples_per_shard", 32, "Videos per TFRecord shard.")
    flags.DEFINE_integer("num_workers", None, "Worker processes (default: all cores).")
    flags.DEFINE_integer("min_frames", 1, "Skip (and report) videos with fewer frames.")
    flags.DEFINE_integer("max_frames", 0, "Keep the first this many frames of each video, counted after --fps "
                         "resampling; decoding stops there (0: all).")
    flags.DEFINE_float("fps", 0.0, "Resample every video to this constant frame rate by presentation timestamps "
                       "(FFmpeg's fps filter), so --frame_stride is the same time step in every video; 0: keep "
                       "every decoded frame. Recorded in the manifest and the input contract.")
    flags.DEFINE_float("max_dropped_fraction", MAX_DROPPED_FRACTION, "Skip (and report) a video when more than "
                       "this fraction of its packets does not decode or decodes concealed (a frame folder: of its "
                       "images cannot be read).")
    flags.DEFINE_integer("jpeg_quality", 90, "JPEG quality of the stored frames.")
    flags.DEFINE_integer("num_tasks", None, "Split the work over this many machines (default: a Slurm job array's "
                         "SLURM_ARRAY_TASK_COUNT, STFUSION_NUM_WORKERS in an Indexed Job, else 1); then --merge.")
    flags.DEFINE_integer("task_index", None, "This machine's share, in [0, num_tasks) (default: SLURM_ARRAY_TASK_ID "
                         "- SLURM_ARRAY_TASK_MIN, or JOB_COMPLETION_INDEX).")
    flags.DEFINE_bool("merge", False, "After every task is done: check all shards (size, CRC32C) and write the "
                      "split's manifest.")
    synthetic.define_flags(flags)
    flags.DEFINE_integer("seed", 0, "Synthetic: generator seed.")
    flags.DEFINE_bool("progress", True, "Progress bar (Keras').")


class PrepareError(ValueError):
    """A split-wide failure; the message names the file and what to do."""


# -- one example --------------------------------------------------------------
def iter_source_frames(source, opts, stats):
    """Frames of an index entry, one at a time: a video, a frame folder or a
    synthetic clip (``opts``: short_side, max_frames, fps, synthetic)."""
    short_side, max_frames = opts["short_side"], opts["max_frames"]
    if not source.startswith(SYNTHETIC_PREFIX):
        yield from iter_frames(source, short_side or None, max_frames or None, opts.get("fps") or None, stats)
        return
    split, index = source[len(SYNTHETIC_PREFIX):].split(":")
    frames = synthetic.render_clip(opts["synthetic"], split, int(index))[1]
    frames = frames[:max_frames] if max_frames else frames
    stats.frames_announced = stats.frames_decoded = stats.frames = len(frames)
    for frame in frames:
        yield resize_image(frame, short_side) if short_side else frame


def sequence_example(video_id, label, encoded, height, width):
    """A ``tf.train.SequenceExample`` of JPEG-encoded frames (module docstring);
    ``record_video`` writes the same bytes without holding them."""
    import tensorflow as tf

    context = tf.train.Features.FromString(context_features(video_id, label, len(encoded), height, width))
    features = [tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg])) for jpeg in encoded]
    lists = tf.train.FeatureLists(feature_list={"image/encoded": tf.train.FeatureList(feature=features)})
    return tf.train.SequenceExample(context=context, feature_lists=lists)


def make_sequence_example(video_id, label, frames, quality):
    """``sequence_example`` of uint8 frames ``[N, H, W, 3]``, JPEG-encoded at ``quality``."""
    return sequence_example(video_id, label, [encode_jpeg(f, quality) for f in frames], *frames.shape[1:3])


def record_video(writer, video_id, source, label, opts):
    """Streams one video into the shard ``writer`` and returns its DecodeStats: each
    frame is decoded, resized and JPEG-encoded, and its JPEG spooled to disk, before
    the next is decoded, so memory does not grow with the video's length. Raises
    VideoError (the video's skip reason) before anything is written."""
    stats = DecodeStats()
    spool = FrameSpool(os.path.dirname(writer.file.name))
    try:
        shape = (0, 0)
        for frame in iter_source_frames(source, opts, stats):
            spool.add(encode_jpeg(frame, opts["jpeg_quality"]))
            shape = frame.shape[:2]
        if stats.dropped_fraction > opts["max_dropped_fraction"]:
            unit = "frame images" if os.path.isdir(source) else "packets"
            raise VideoError(f"damaged: {stats.damage(unit)} (> --max_dropped_fraction="
                             f"{opts['max_dropped_fraction']})")
        if spool.num_frames < opts["min_frames"]:
            raise VideoError(f"too short: {spool.num_frames} frames < --min_frames={opts['min_frames']}")
        writer.example(context_features(video_id, label, spool.num_frames, *shape), spool)
    finally:
        spool.close()
    return stats


# -- one shard ----------------------------------------------------------------
def shard_name(split, i, n):
    return f"{split}-{i:05d}-of-{n:05d}.tfrecord"


def write_shard(task):
    """Writes one shard atomically; returns its record (also saved as .done.json).
    One video's failure, of whatever kind, is that video's skip with its reason."""
    path, entries, opts = task
    record = {"shard": os.path.basename(path), "examples": [], "skipped": [], "frames": [], "videos": {}}
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with ShardWriter(tmp) as writer:
            for video_id, source, label in entries:
                try:
                    stats = record_video(writer, video_id, source, label, opts)
                except VideoError as e:
                    record["skipped"].append([video_id, str(e)])
                    continue
                except RecordWriteError:
                    raise
                except Exception as e:  # noqa: BLE001 -- FFmpeg, PIL and numpy fail in many classes
                    record["skipped"].append([video_id, f"failed: {type(e).__name__}: {e}"])
                    continue
                record["examples"].append([video_id, label])
                record["frames"].append(stats.frames)
                record["videos"][video_id] = stats.to_dict()
        os.replace(tmp, path)
    except (OSError, RecordWriteError) as e:
        where = str(e) if isinstance(e, RecordWriteError) else f"{tmp}: cannot write ({type(e).__name__}: {e})"
        raise PrepareError(f"{where}; check the space and permissions of --output_dir and rerun: finished "
                           "shards are kept") from None
    record.update(shard_record(path))  # size and CRC32C: later runs check the shard against them
    atomic_write_json(f"{path}.done.json", record)
    return record


# -- progress -----------------------------------------------------------------
def progress_bar(total, label, resumed=0):
    """Keras' progress bar (``keras.utils.Progbar``: training's, evaluation's and the
    search's) over the ``total`` shards this run writes, after a line naming the
    split and the shards a resumed run finds written (the rate and ETA count only
    this run's work). Keras is imported here, only when a bar is drawn (3.6 s and
    586 MB in the parent process); with it loaded the worker pool is spawned, not
    forked (``_write_shards``)."""
    import keras

    sys.stderr.write(f"{label}: {total} shard(s) to write" + (f", {resumed} already written (resumed)" if resumed
                                                             else "") + "\n")
    return keras.utils.Progbar(max(total, 1), unit_name="shard")


# -- the whole split ----------------------------------------------------------
def build_index(dataset, data_dir, split, synthetic_config=None, **kwargs):
    if dataset == "synthetic":
        n = synthetic.num_videos(synthetic_config, split)
        entries = [
            readers.VideoEntry(video_id, f"{SYNTHETIC_PREFIX}{split}:{i}", label)
            for i in range(n)
            for video_id, label in [synthetic.clip_entry(synthetic_config, split, i)]
        ]
        return readers.DatasetIndex(
            f"synthetic_{synthetic_config.kind}", split, synthetic_config.class_names, entries,
            # move_left/move_right and the rotations swap under a mirror.
            flip_ok=synthetic_config.kind != "motion",
        )
    if not data_dir:
        raise ValueError(f"--data_dir is required for --dataset={dataset}")
    return readers.read_index(dataset, data_dir, split, **kwargs)


def prepare(index, output_dir, examples_per_shard=32, num_workers=None, short_side=256,
            min_frames=1, max_frames=0, jpeg_quality=90, synthetic_config=None, progress=True, command=None,
            fps=0.0, max_dropped_fraction=MAX_DROPPED_FRACTION, num_tasks=1, task_index=0):
    """Writes the shards and manifest of one split; returns the manifest dict.

    ``fps``: resample every video to this constant rate (frames/s; 0: keep every
    decoded frame). ``max_dropped_fraction``: skip a video when more of its packets
    fail to decode. Raises PrepareError when no video of the split is written (the
    manifest, with every reason, is written first).

    A shard already finished (its ``.done.json`` exists) is kept only if its size
    and CRC32C still match that record; a damaged or missing one is written again.
    ``command``: how to rerun this (kept in the manifest for error messages).

    ``num_tasks`` > 1 splits the work over machines: this task writes shards
    ``task_index``, ``task_index + num_tasks``, ... of the index frozen in
    ``<split>-index.json`` (written by the first task, read by the others) and
    returns the summary of its shares without writing the manifest; ``merge``
    writes it once every task is done.
    """
    _check_options(examples_per_shard, fps, max_dropped_fraction, synthetic_config)
    _make_output_dir(output_dir)
    opts = {"short_side": short_side, "min_frames": min_frames, "max_frames": max_frames,
            "jpeg_quality": jpeg_quality, "synthetic": synthetic_config, "fps": float(fps or 0),
            "max_dropped_fraction": max_dropped_fraction, "examples_per_shard": examples_per_shard}
    if num_tasks > 1:
        index = freeze_index(index, output_dir, opts)
    entries = sorted(index.entries, key=lambda e: e.video_id)
    n = max(1, -(-len(entries) // examples_per_shard))
    mine = [i for i in range(n) if i % num_tasks == task_index]
    _clear_leftovers(output_dir, index.split, n, {shard_name(index.split, i, n) for i in range(n)
                                                  if i % num_tasks != task_index})
    tasks, records = [], {}
    for i in mine:
        path = os.path.join(output_dir, shard_name(index.split, i, n))
        record = _finished_record(path, f"{path}.done.json")
        if record is not None:
            records[i] = record
        else:
            chunk = entries[i * examples_per_shard:(i + 1) * examples_per_shard]
            tasks.append((path, [(e.video_id, e.source, e.label) for e in chunk], opts))
    label = f"prepare {index.name}/{index.split}" + (f" task {task_index}/{num_tasks}" if num_tasks > 1 else "")
    bar = progress_bar(len(tasks), label, len(records)) if progress else None
    _write_shards(tasks, records, num_workers, bar)
    if num_tasks > 1:
        return dict(summarize(index, [records[i] for i in mine], opts), task_index=task_index, num_tasks=num_tasks)
    return _write_manifest(index, [records[i] for i in range(n)], opts, output_dir, command)


def _write_shards(tasks, records, num_workers, bar):
    """Runs ``write_shard`` on each task, in a process pool when it pays; each
    record goes into ``records`` under its shard's number."""
    workers = min(num_workers or os.cpu_count() or 1, max(len(tasks), 1))
    if workers > 1:
        # fork is fast, but unsafe once the parent has started TensorFlow's threads
        # (``train`` generating the synthetic set, Keras' progress bar): spawn then.
        method = "spawn" if "tensorflow" in sys.modules else "fork"
        with multiprocessing.get_context(method).Pool(workers) as pool:
            for done, record in enumerate(pool.imap_unordered(write_shard, tasks), 1):
                records[_shard_index(record["shard"])] = record
                if bar:
                    bar.update(done)
    else:
        for done, task in enumerate(tasks, 1):
            record = write_shard(task)
            records[_shard_index(record["shard"])] = record
            if bar:
                bar.update(done)


def _write_manifest(index, records, opts, output_dir, command):
    manifest = summarize(index, records, opts)
    manifest["command"] = command
    path = os.path.join(output_dir, f"{index.split}-manifest.json")
    atomic_write_json(path, manifest)
    if not manifest["num_examples"]:
        raise PrepareError(f"no video of the {index.split} split was written "
                           f"({skip_summary(manifest['skipped'])}); every reason is in {path}. "
                           "Check --data_dir/--video_dir and the layout (README, Data)")
    return manifest


# -- a split prepared by several machines --------------------------------------
def index_path(output_dir, split):
    return os.path.join(output_dir, f"{split}-index.json")


def _options_json(opts):
    """The options as JSON reads them back (tuples become lists)."""
    synth = opts["synthetic"]
    return json.loads(json.dumps(dict(opts, synthetic=dataclasses.asdict(synth) if synth is not None else None)))


def freeze_index(index, output_dir, opts):
    """The index every task of a split works from: ``<split>-index.json``, written
    by the first task to get here (atomically) and read by the others, so that a
    video added or removed while the tasks run cannot shift a shard's contents.
    Raises PrepareError when this task's options differ from the frozen ones."""
    path = index_path(output_dir, index.split)
    if not os.path.isfile(path):
        atomic_write_json(path, {
            "dataset": index.name, "split": index.split, "class_names": index.class_names,
            "flip_ok": index.flip_ok, "problems": [list(p) for p in index.problems],
            "entries": [[e.video_id, e.source, e.label] for e in index.entries], "options": _options_json(opts)})
    frozen, frozen_opts = read_frozen_index(path)
    if frozen_opts != _options_json(opts):
        diff = sorted(k for k in frozen_opts if frozen_opts[k] != _options_json(opts).get(k))
        raise PrepareError(f"{path}: this task's options differ from those the split was started with "
                           f"({', '.join(diff)}); run every task with the same command")
    return frozen


def read_frozen_index(path):
    """``(DatasetIndex, options)`` of a ``<split>-index.json``."""
    try:
        with open(path) as f:
            data = json.load(f)
        entries = [readers.VideoEntry(*e) for e in data["entries"]]
        index = readers.DatasetIndex(data["dataset"], data["split"], data["class_names"], entries,
                                     [tuple(p) for p in data["problems"]], data["flip_ok"])
        return index, data["options"]
    except FileNotFoundError:
        raise PrepareError(f"{path} is missing: run the tasks (prepare --num_tasks=M --task_index=i) "
                           "before --merge") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PrepareError(f"{path}: unreadable ({type(e).__name__}: {e}); delete it and rerun every task") \
            from None


def merge(output_dir, split):
    """Checks every shard of a split written by several tasks (its ``.done.json``,
    size and CRC32C, as ``data.integrity``) and writes the split's manifest: the
    same as one machine's run, but for its ``command`` (None: no one command
    rewrites a shard; its task does). Raises PrepareError naming the shards to
    rewrite."""
    index, options = read_frozen_index(index_path(output_dir, split))
    opts = dict(options, synthetic=None)
    n = max(1, -(-len(index.entries) // options["examples_per_shard"]))
    records, problems = [], []
    for i in range(n):
        path = os.path.join(output_dir, shard_name(split, i, n))
        try:
            with open(f"{path}.done.json") as f:
                record = json.load(f)
        except (OSError, ValueError):
            problems.append(f"{os.path.basename(path)}: not finished")
            continue
        problems += [p.describe() for p in check_shards([path], {os.path.basename(path): record}, verify=True)]
        records.append(record)
    if problems:
        raise PrepareError(f"{len(problems)} of {n} shards are not ready ({'; '.join(problems[:3])}): rerun the "
                           "task of each (shard k is task k mod --num_tasks), then --merge again")
    return _write_manifest(index, records, opts, output_dir, None)


def skip_summary(skipped, examples=1):
    """``"6 missing (e.g. a: missing: /x/a.mp4), ..."``: skip reasons counted by kind."""
    kinds = {}
    for video_id, reason in skipped:
        kinds.setdefault(reason.split(":")[0], []).append(f"{video_id}: {reason}")
    if not kinds:
        return "the index lists no video"
    return ", ".join(f"{len(items)} {kind} (e.g. {'; '.join(items[:examples])})"
                     for kind, items in sorted(kinds.items(), key=lambda kv: -len(kv[1])))


def _clear_leftovers(output_dir, split, n, others=()):
    """Refuses shards of another shard count; removes a killed or failed run's
    temporary shards (never under a final name), but for those of the shards
    ``others``: other tasks' shares, which they may be writing now."""
    stale = [f for f in os.listdir(output_dir)
             if f.startswith(f"{split}-") and f.endswith(".tfrecord") and not f.endswith(f"-of-{n:05d}.tfrecord")]
    if stale:
        raise ValueError(
            f"{output_dir} already holds {split} shards with a different shard count "
            f"(e.g. {stale[0]}); use a new --output_dir or the same --examples_per_shard"
        )
    for name in os.listdir(output_dir):
        if name.startswith(f"{split}-") and ".tmp-" in name and name.split(".tmp-")[0] not in others:
            os.remove(os.path.join(output_dir, name))


def _make_output_dir(output_dir):
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as e:
        what = "is a file, not a folder" if os.path.isfile(output_dir) else f"cannot be created ({e.strerror or e})"
        raise PrepareError(f"--output_dir {output_dir} {what}; give a folder you can write to") from None


def _check_options(examples_per_shard, fps, max_dropped_fraction, synthetic_config):
    if examples_per_shard < 1:
        raise ValueError("examples_per_shard must be >= 1")
    if fps < 0:
        raise ValueError(f"--fps must be >= 0 (0: keep every decoded frame), got {fps}")
    if not 0 <= max_dropped_fraction <= 1:
        raise ValueError(f"--max_dropped_fraction must lie in [0, 1], got {max_dropped_fraction}")
    if fps and synthetic_config is not None:
        raise ValueError("--fps resamples decoded videos by their timestamps; synthetic clips have none")


def _finished_record(path, done):
    """The record of a finished, intact shard; None when it must be (re)written. A
    record from before shards had checksums gets them (the shard is trusted)."""
    if not (os.path.isfile(done) and os.path.isfile(path)):
        return None
    try:
        with open(done) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    if "crc32c" not in record:
        record.update(shard_record(path))
        atomic_write_json(done, record)
        return record
    problems = check_shards([path], {os.path.basename(path): record}, verify=True)
    if problems:
        print(f"prepare: {problems[0].describe()}; writing it again", file=sys.stderr)
        os.remove(done)
        return None
    return record


def _shard_index(name):
    return int(name.split("-")[1])


def summarize(index, records, opts):
    examples = [e for r in records for e in r["examples"]]
    frames = [f for r in records for f in r["frames"]]
    per_class = [0] * len(index.class_names)
    for _, label in examples:
        per_class[label] += 1
    skipped = [list(p) for p in index.problems] + [s for r in records for s in r["skipped"]]
    return {
        "dataset": index.name,
        "split": index.split,
        "num_examples": len(examples),
        "num_skipped": len(skipped),
        "class_names": index.class_names,
        "counts_per_class": dict(zip(index.class_names, per_class)),
        "skipped": skipped,
        "frame_stats": {
            "min": min(frames, default=0), "max": max(frames, default=0),
            "mean": statistics.fmean(frames) if frames else 0.0,
            "median": statistics.median(frames) if frames else 0,
        },
        "videos": {v: stats for r in records for v, stats in r.get("videos", {}).items()},
        "fps": opts["fps"],
        "max_dropped_fraction": opts["max_dropped_fraction"],
        "flip_ok": index.flip_ok,
        "short_side": opts["short_side"],
        "jpeg_quality": opts["jpeg_quality"],
        "shards": [r["shard"] for r in records],
        "shard_info": {r["shard"]: {"bytes": r["bytes"], "crc32c": r["crc32c"]} for r in records},
    }


def main(argv):
    del argv  # run_app refuses positional arguments
    if not FLAGS.output_dir or not (FLAGS.dataset or FLAGS.merge):
        print("error: --dataset and --output_dir are required (--merge: only --output_dir and --split)",
              file=sys.stderr)
        return 2
    command = " ".join(shlex.quote(a) for a in ["python", "-m", "tf_stfusion.data.prepare", *sys.argv[1:]])
    try:
        if FLAGS.merge:
            manifest = merge(FLAGS.output_dir, FLAGS.split)
        else:
            manifest = _prepare_from_flags(command)
    except (readers.AnnotationError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    share = f"task {manifest['task_index']} of {manifest['num_tasks']}: " if "num_tasks" in manifest else ""
    print(f"{share}{manifest['num_examples']} videos written to {FLAGS.output_dir} "
          f"({len(manifest['shards'])} shards), {manifest['num_skipped']} skipped")
    for video_id, reason in manifest["skipped"][:20]:
        print(f"  skipped {video_id}: {reason}")
    if manifest["num_skipped"] > 20:
        print(f"  ... {manifest['num_skipped'] - 20} more in {FLAGS.split}-manifest.json")
    for line in _warnings(manifest):
        print(f"warning: {line}", file=sys.stderr)
    if share:
        print(f"when every task is done: python -m tf_stfusion.data.prepare --merge --output_dir={FLAGS.output_dir} "
              f"--split={FLAGS.split}")
    return 0


def _warnings(manifest):
    """What a written split holds that a user should know: classes without a video
    (their label can never be learnt or scored), frame folders that ``--fps`` could
    not resample (no timestamps)."""
    if "num_tasks" in manifest:
        return []  # a task's share: --merge sees the split
    empty = [name for name, count in manifest["counts_per_class"].items() if not count]
    unresampled = [v for v, stats in manifest.get("videos", {}).items() if manifest.get("fps") and not stats.get("fps")]
    lines = []
    if empty:
        lines.append(f"{len(empty)} class(es) with no {manifest['split']} video: {', '.join(empty[:10])}; "
                     f"remove the folder(s) or add videos")
    if unresampled:
        lines.append(f"--fps={manifest['fps']:g} does not resample frame folders (no timestamps): "
                     f"{len(unresampled)} video(s) kept every frame, e.g. {unresampled[0]}")
    return lines


def _prepare_from_flags(command):
    """``prepare`` (or this task's share of it) as the flags say."""
    from tf_stfusion.cluster import task_share

    num_tasks, task_index = task_share(FLAGS.num_tasks, FLAGS.task_index)
    config = None
    short_side = FLAGS.short_side
    if FLAGS.dataset == "synthetic":
        config = synthetic.config_from_flags(FLAGS, seed=FLAGS.seed)
        if not FLAGS["short_side"].present:
            short_side = 0
    index = build_index(
        FLAGS.dataset, FLAGS.data_dir, FLAGS.split, synthetic_config=config,
        video_dir=FLAGS.video_dir, annotation_file=FLAGS.annotation_file,
        fold=FLAGS.fold if FLAGS.dataset == "ucf101" else None,
    )
    return prepare(
        index, FLAGS.output_dir, FLAGS.examples_per_shard, FLAGS.num_workers, short_side,
        FLAGS.min_frames, FLAGS.max_frames, FLAGS.jpeg_quality, config, progress=FLAGS.progress, command=command,
        fps=FLAGS.fps, max_dropped_fraction=FLAGS.max_dropped_fraction, num_tasks=num_tasks, task_index=task_index,
    )


def run():
    """``python -m tf_stfusion.data.prepare``: the flags above, then ``main``."""
    from tf_stfusion.configs import run_app

    run_app(main, define_flags)


if __name__ == "__main__":
    run()
