"""Readers, prepare and the clip pipeline on fake copies of the real layouts."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

import data_fixtures as fx
from tf_stfusion.data import pipeline, prepare, readers

NUM_FRAMES, SIZE = 4, 32


def _read_back(out_dir, split, num_classes, training=False, **kwargs):
    """All clips of a prepared split: labels from the TFRecords and from pixels."""
    files = pipeline.list_shards(str(out_dir), split)
    ds = pipeline.make_dataset(files, pipeline.ClipSpec(num_frames=NUM_FRAMES, input_size=SIZE), training=training,
                               batch_size=2, repeat=False, seed=0, deterministic=True, **kwargs)
    labels, pixel_labels, shapes = [], [], set()
    colours = np.stack([fx.class_colour(c) for c in range(num_classes)]).astype(np.float32)
    for clips, y in ds:
        shapes.add(tuple(clips.shape[1:]))
        rgb = (clips.numpy() * pipeline.IMAGENET_STD + pipeline.IMAGENET_MEAN) * 255
        centre = rgb[:, :, SIZE // 2, SIZE // 2, :].mean(axis=1)  # [B, 3]
        pixel_labels += np.argmin(((centre[:, None] - colours[None]) ** 2).sum(-1), axis=1).tolist()
        labels += y.numpy().tolist()
    return labels, pixel_labels, shapes


def _prepare(dataset, data_dir, out_dir, split, **kwargs):
    index = prepare.build_index(dataset, str(data_dir), split, **kwargs.pop("index_kwargs", {}))
    return prepare.prepare(index, str(out_dir), **{"examples_per_shard": 2, "num_workers": 1, "short_side": SIZE,
                                                   "progress": False, **kwargs})


@pytest.mark.parametrize("dataset,writer,split", [
    ("ucf101", fx.write_ucf101, "train"),
    ("ucf101", fx.write_ucf101, "val"),
    ("sthv1", fx.write_sthv1, "train"),
    ("sthv2", fx.write_sthv2, "val"),
])
def test_layouts_prepare_and_read_back_with_right_labels(tmp_path, dataset, writer, split):
    classes = writer(str(tmp_path / "raw"))
    manifest = _prepare(dataset, tmp_path / "raw", tmp_path / "out", split)
    assert manifest["num_examples"] == 2 and manifest["num_skipped"] == 0
    assert manifest["class_names"] == classes
    assert manifest["flip_ok"] == (not dataset.startswith("sth"))
    assert manifest["frame_stats"]["min"] == 10
    labels, pixel_labels, shapes = _read_back(tmp_path / "out", split, len(classes))
    assert sorted(labels) == [0, 1] and labels == pixel_labels
    assert shapes == {(NUM_FRAMES, SIZE, SIZE, 3)}


def test_kinetics_problems_are_reported_and_skipped(tmp_path):
    classes = fx.write_kinetics(str(tmp_path / "raw"))
    manifest = _prepare("kinetics400", tmp_path / "raw", tmp_path / "out", "train", min_frames=NUM_FRAMES)
    assert manifest["num_examples"] == 4
    assert manifest["counts_per_class"] == {c: 2 for c in classes}
    reasons = dict(manifest["skipped"])
    assert set(reasons) == {"corrupt00000_000000_000010", "empty000000_000000_000010",
                            "short000000_000000_000010", "missing0000_000000_000010"}
    assert reasons["missing0000_000000_000010"].startswith("missing:")
    assert reasons["empty000000_000000_000010"].startswith("empty file")
    assert reasons["corrupt00000_000000_000010"].startswith("cannot decode")
    assert reasons["short000000_000000_000010"].startswith("too short: 3 frames")
    labels, pixel_labels, _ = _read_back(tmp_path / "out", "train", 2)
    assert sorted(labels) == [0, 0, 1, 1] and labels == pixel_labels


def test_folder_layout_from_synthetic_videos(tmp_path):
    from tf_stfusion.data import synthetic

    config = synthetic.SyntheticConfig(videos_per_class=1, val_videos_per_class=1, num_frames=6, size=32)
    assert synthetic.write_folder(config, str(tmp_path / "videos")) == 16
    index = readers.read_index("folder", str(tmp_path / "videos"), "val")
    assert index.class_names == sorted(synthetic.MOTION_CLASSES) and len(index.entries) == 8
    manifest = prepare.prepare(index, str(tmp_path / "out"), examples_per_shard=3, num_workers=2,
                               short_side=0, progress=False)
    assert manifest["num_examples"] == 8 and manifest["frame_stats"]["max"] == 6


@pytest.mark.parametrize("writer,path,content,message", [
    (fx.write_ucf101, "ucfTrainTestlist/classInd.txt", "1 A\n3 B\n", r"classInd.txt:2: expected '<index> <ClassName>' with index 2"),
    (fx.write_ucf101, "ucfTrainTestlist/trainlist01.txt", "Nope/v_x.avi 1\n", r"trainlist01.txt:1: expected '<Class>/<video>.avi <label>'"),
    (fx.write_kinetics, "train.csv", "label,id\nx,y\n", r"train.csv:1: expected header label,youtube_id"),
    (fx.write_sthv1, "something-something-v1-train.csv", "12;Pushing something from left to right\nabc\n", r"v1-train.csv:2: expected '<numeric id>;<label"),
    (fx.write_sthv2, "something-something-v2-train.json", "[{\"id\": \"1\", \"template\": \"Dancing\"}]", r"v2-train.json: item 0: expected"),
])
def test_bad_annotation_files_fail_at_once_with_file_and_line(tmp_path, writer, path, content, message):
    writer(str(tmp_path))
    (tmp_path / path).write_text(content)
    dataset = {fx.write_ucf101: "ucf101", fx.write_kinetics: "kinetics400",
               fx.write_sthv1: "sthv1", fx.write_sthv2: "sthv2"}[writer]
    with pytest.raises(readers.AnnotationError, match=message):
        readers.read_index(dataset, str(tmp_path), "train")


def test_an_option_the_dataset_does_not_take_is_one_line_not_a_type_error(tmp_path):
    fx.write_ucf101(str(tmp_path))
    with pytest.raises(ValueError, match="--dataset=ucf101 takes no --annotation_file; its options are --fold, --video_dir"):
        readers.read_index("ucf101", str(tmp_path), "train", annotation_file="x.csv")
    result = subprocess.run([sys.executable, "-m", "tf_stfusion.data.prepare", "--dataset=ucf101",
                             f"--data_dir={tmp_path}", f"--output_dir={tmp_path / 'out'}", "--annotation_file=x.csv"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: --dataset=ucf101 takes no --annotation_file" in result.stderr


def _synthetic_cmd(out_dir):
    return [sys.executable, "-m", "tf_stfusion.data.prepare", "--dataset=synthetic",
            f"--output_dir={out_dir}", "--synthetic_videos_per_class=6", "--synthetic_size=160",
            "--synthetic_frames=16", "--examples_per_shard=4", "--num_workers=1"]


def test_killed_prepare_resumes_without_duplicates(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(_synthetic_cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("*.done.json"))) < 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(out.glob("*.done.json")))
    assert 2 <= done_before < 12, "the kill must land midway"
    finished = subprocess.run(_synthetic_cmd(out), capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "resumed" in finished.stderr
    ids = []
    for f in pipeline.list_shards(str(out), "train"):
        for record in tf.data.TFRecordDataset(f):
            ids.append(pipeline.parse_example(record)[2].numpy().decode())
    assert sorted(ids) == [f"train_{i:06d}" for i in range(48)]
    assert not [p for p in os.listdir(out) if ".tmp-" in p]
    manifest = json.loads((out / "train-manifest.json").read_text())
    assert manifest["num_examples"] == 48


def test_samplers_loop_short_videos_and_spread_views():
    dense = pipeline.DenseClipSampler(num_frames=8, frame_stride=2)
    idx = dense.indices(tf.constant(5), 1, True, tf.constant([1, 2])).numpy()
    np.testing.assert_array_equal(idx[0], [0, 2, 4, 1, 3, 0, 2, 4])  # span 15 > 5: loops
    views = dense.indices(tf.constant(100), 3, False, tf.constant([1, 2])).numpy()
    np.testing.assert_array_equal(views[:, 0], [14, 42, 70])  # room 85, at (v+0.5)/3
    uniform = pipeline.UniformClipSampler(num_frames=4)
    np.testing.assert_array_equal(uniform.indices(tf.constant(40), 2, False, None).numpy(),
                                  [[2, 12, 22, 32], [7, 17, 27, 37]])
    train = uniform.indices(tf.constant(40), 1, True, tf.constant([3, 4])).numpy()[0]
    assert all(10 * i <= t < 10 * (i + 1) for i, t in enumerate(train))


@pytest.fixture(scope="module")
def synthetic_shards(tmp_path_factory):
    from tf_stfusion.data import synthetic

    out = tmp_path_factory.mktemp("syn")
    config = synthetic.SyntheticConfig(videos_per_class=2, val_videos_per_class=1, num_frames=12, size=40)
    for split in ("train", "val"):
        index = prepare.build_index("synthetic", None, split, synthetic_config=config)
        prepare.prepare(index, str(out), examples_per_shard=4, num_workers=1, short_side=0,
                        synthetic_config=config, progress=False)
    return out


def test_pipeline_is_deterministic_and_eval_views_fold_into_batch(synthetic_shards):
    files = pipeline.list_shards(str(synthetic_shards), "train")
    kw = dict(training=True, batch_size=4, seed=5, deterministic=True)
    spec = pipeline.ClipSpec(num_frames=8, input_size=32)
    a = [x.numpy() for x, _ in pipeline.make_dataset(files, spec, **kw).take(3)]
    b = [x.numpy() for x, _ in pipeline.make_dataset(files, spec, **kw).take(3)]
    c = [x.numpy() for x, _ in pipeline.make_dataset(files, spec, **{**kw, "seed": 6}).take(3)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    assert a[0].shape == (4, 8, 32, 32, 3) and a[0].dtype == np.float32
    val = pipeline.list_shards(str(synthetic_shards), "val")
    ds = pipeline.make_dataset(val, pipeline.ClipSpec(num_frames=8, eval_size=32, eval_clips=2), training=False,
                               batch_size=3, deterministic=True)
    x, y = next(iter(ds))
    assert x.shape == (6, 8, 32, 32, 3) and y.shape == (3,)
    # The two views of a video are different clips of it.
    assert not np.array_equal(x[0].numpy(), x[1].numpy())
    scores = tf.reshape(tf.range(12, dtype=tf.float32), [6, 2])
    np.testing.assert_array_equal(pipeline.average_clip_scores(scores, 2), [[1, 2], [5, 6], [9, 10]])


def test_file_level_sharding_for_multiple_workers(synthetic_shards):
    files = pipeline.list_shards(str(synthetic_shards), "train")  # 4 shards of 4
    seen = []
    for worker in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=worker,
                                         num_replicas_in_sync=2)
        ds = pipeline.make_dataset(files, pipeline.ClipSpec(num_frames=4, eval_size=32), training=False,
                                   batch_size=16, input_context=ctx, deterministic=True)
        seen.append(sum(int(y.shape[0]) for _, y in ds))
    assert seen == [8, 8]
    ctx = tf.distribute.InputContext(num_input_pipelines=8, input_pipeline_id=0, num_replicas_in_sync=8)
    with pytest.raises(ValueError, match="4 shard files cannot be split over 8"):
        pipeline.make_dataset(files, pipeline.ClipSpec(), training=True, input_context=ctx)


def test_prepare_draws_keras_progress_bar_over_this_runs_shards(tmp_path, capsys):
    # The one progress bar (keras.utils.Progbar) counts the shards this run writes; a
    # resumed run names the ones it finds written and counts only the rest.
    fx.write_kinetics(str(tmp_path / "raw"))  # 8 listed videos (4 unusable): 4 shards of 2
    _prepare("kinetics400", tmp_path / "raw", tmp_path / "out", "train", min_frames=NUM_FRAMES, progress=True)
    out, err = capsys.readouterr()
    assert "prepare kinetics400/train: 4 shard(s) to write\n" in err
    assert "4/4" in out and "shard" in out
    first = sorted((tmp_path / "out").glob("train-*.done.json"))[0]
    first.unlink()  # as if killed before that shard's record was written
    _prepare("kinetics400", tmp_path / "raw", tmp_path / "out", "train", min_frames=NUM_FRAMES, progress=True)
    out, err = capsys.readouterr()
    assert "1 shard(s) to write, 3 already written (resumed)" in err
    assert "1/1" in out and "4/4" not in out


def test_pipeline_batches_are_the_exact_steps_rounded_to_the_replicas_only():
    """5 wanted videos in two files, batch 2: ceil(5 / 2) = 3 batches on one replica,
    not rounded further; on two replicas of one pipeline (1 video per replica batch)
    5 batches, rounded up to a multiple of the 2 replicas: 6 (worked out by hand)."""
    shard_videos = {"a": ["v1", "v2", "v3"], "b": ["v4", "v5", "v6"]}
    wanted = ["v1", "v2", "v3", "v4", "v5"]
    one = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=1)
    assert pipeline.pipeline_batches(["a", "b"], shard_videos, wanted, 2, one) == (3, 3)
    two = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=2)
    assert pipeline.pipeline_batches(["a", "b"], shard_videos, wanted, 2, two) == (5, 6)
    # Two pipelines (workers), one replica each: 3 and 2 wanted videos -> 2 and 1 batches, both take 2.
    first = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=0, num_replicas_in_sync=2)
    second = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1, num_replicas_in_sync=2)
    assert pipeline.pipeline_batches(["a", "b"], shard_videos, wanted, 4, first) == (2, 2)
    assert pipeline.pipeline_batches(["a", "b"], shard_videos, wanted, 4, second) == (1, 2)
