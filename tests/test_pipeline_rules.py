"""data/pipeline's boundaries, defaults and refusals, each against a value worked out by
hand from the documented rule (issue 29: the survivors of deliberate one-line bugs sit
at boundaries, at defaults and at flags no other test pins).

Fast: no model; tiny PNG frames (lossless, so pixels and labels read back exactly) or
no decoding at all. ``tests/test_geometry.py`` holds the pipeline's geometry by
construction; this file pins what it leaves open: exact sampler points, the order
evaluation reads shards in, a training epoch's file order, the default batch and
error handling, the uint8 views of the export checks and the contract's refusals.
"""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tf_stfusion.data import pipeline
from tf_stfusion.data.prepare import sequence_example
from test_geometry import S, frame_index, pixels, png, position_frames


def _write_grey_videos(path, videos, size=(S, S)):
    """A shard of ``{video id: (label, [grey level per frame])}``, PNG frames."""
    with tf.io.TFRecordWriter(str(path)) as writer:
        for video_id, (label, greys) in videos.items():
            frames = [png(np.full((*size, 3), g, np.uint8)) for g in greys]
            writer.write(sequence_example(video_id, label, frames, *size).SerializeToString())
    return str(path)


# -- samplers: the exact point of a segment, the default stride, a training start -----------
def test_uniform_sampler_takes_the_exact_point_of_each_segment():
    """floor((k + (v + 0.5) / V) L / T), worked out in fractions: L = 26, T = 7, V = 1:
    (k + 0.5) 26 / 7 = 1.86, 5.57, 9.29, 13 (exactly), 16.71, 20.43, 24.14; L = 10, T = 3,
    V = 5: points 0.1, 0.3, 0.5, 0.7, 0.9 of segments of 10 / 3 frames (view 4, segment 0:
    0.9 * 10 / 3 = 3 exactly). float32 read frames 12 and 2 there."""
    uniform = pipeline.make_sampler("uniform", 7)
    np.testing.assert_array_equal(uniform.indices(tf.constant(26), 1, False, None), [[1, 5, 9, 13, 16, 20, 24]])
    np.testing.assert_array_equal(pipeline.make_sampler("uniform", 3).indices(tf.constant(10), 5, False, None),
                                  [[0, 3, 7], [1, 4, 7], [1, 5, 8], [2, 5, 9], [3, 6, 9]])
    # Training: one row of T frames; a one-frame video gives frame 0 from every segment
    # ((k + u) / T < 1 for every k < T and u < 1).
    for seed in range(50):
        got = uniform.indices(tf.constant(1), 1, True, tf.constant([seed, 1])).numpy()
        assert got.shape == (1, 7) and not got.any(), seed


def test_dense_sampler_steps_one_frame_unless_told():
    # make_sampler's default stride is 1: 4 consecutive frames; L = 10: room 6, eval start floor(3.0)
    dense = pipeline.make_sampler("dense", 4)
    np.testing.assert_array_equal(dense.indices(tf.constant(10), 1, False, None), [[3, 4, 5, 6]])


def test_train_clip_draws_its_start_and_keeps_a_double_scale_window_unresized(tmp_path):
    """train_clip on a 20-frame 16 x 28 video, T = 4 every 2 frames, S = 8, scale exactly 2:
    the short side is drawn as 16, the frame's own size, so the 8 x 8 window is cut from
    unresized pixels: red 8 (left + x), green 8 (top + y), top in 0..8, left in 0..20; the
    start is uniform in 0..13 (room 20 - 7), so 20 seeds give several starts."""
    encoded = tf.constant([png(f) for f in position_frames(20)])
    spec = pipeline.ClipSpec(num_frames=4, frame_stride=2, input_size=S, scale_range=(2.0, 2.0), flip=False)
    starts = set()
    for seed in range(20):
        p = pixels(pipeline.train_clip(encoded, spec, tf.constant([seed, 5])))
        t = frame_index(p)
        np.testing.assert_array_equal(t - t[0], [0, 2, 4, 6])
        top, left = int(round(p[0, 0, 0, 1] / 8)), int(round(p[0, 0, 0, 0] / 8))
        assert 0 <= top <= 8 and 0 <= left <= 20 and 0 <= t[0] <= 13
        np.testing.assert_allclose(p[..., 0], np.broadcast_to(8 * (left + np.arange(S)), p.shape[:-1]), atol=0.05)
        np.testing.assert_allclose(p[..., 1], np.broadcast_to(8 * (top + np.arange(S))[:, None], p.shape[:-1]),
                                   atol=0.05)
        starts.add(int(t[0]))
    assert len(starts) >= 3, starts


# -- which records, in which order -----------------------------------------------------------
def test_evaluation_reads_four_shards_at_a_time_in_order_in_batches_of_eight(tmp_path):
    """Five shards of two videos, labelled 10 * shard + record. Evaluation does not shuffle
    and reads up to 4 files at once, one record from each in turn (tf.data's interleave:
    a finished file's slot goes to the next file): 0 10 20 30 1 11 21 31, then shard 4's
    40 41; the default batch holds 8 videos."""
    files = [_write_grey_videos(tmp_path / f"val-{f:05d}-of-00005.tfrecord",
                                {f"v{f}{r}": (10 * f + r, [40]) for r in range(2)}) for f in range(5)]
    ds = pipeline.make_dataset(files, pipeline.ClipSpec(num_frames=1, eval_size=S), training=False,
                               deterministic=True)
    assert [labels.numpy().tolist() for _, labels in ds] == [[0, 10, 20, 30, 1, 11, 21, 31], [40, 41]]


def test_training_reshuffles_the_files_every_epoch_and_shards_them_by_pipeline():
    files = [f"f{i}" for i in range(6)]
    epochs = np.array([f.decode() for f in pipeline.shard_files(files, True, 1, None).repeat(4).as_numpy_iterator()])
    epochs = epochs.reshape(4, 6)
    assert all(sorted(e) == files for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1  # one fixed order for every epoch: P = 1 / 720^3
    assert [f.decode() for f in pipeline.shard_files(files, False, 1, None).as_numpy_iterator()] == files

    def mine(files, pipelines, worker):
        ctx = tf.distribute.InputContext(num_input_pipelines=pipelines, input_pipeline_id=worker)
        return [f.decode() for f in pipeline.shard_files(files, False, None, ctx).as_numpy_iterator()]

    # as many files as pipelines is enough: one each; three over two: 0 and 2, then 1
    assert mine(files[:2], 2, 1) == ["f1"] and mine(files[:3], 2, 0) == ["f0", "f2"] and mine(files[:3], 2, 1) == ["f1"]
    with pytest.raises(ValueError, match="2 shard files cannot be split over 3 input pipelines"):
        mine(files[:2], 3, 0)


def test_a_damaged_shard_stops_the_input_unless_told_to_skip(tmp_path):
    # Two videos (labels 3, 4), the second record cut short: by default reading fails
    # (nothing is lost silently); skip_corrupt keeps the first video and drops the rest.
    path = _write_grey_videos(tmp_path / "val-00000-of-00001.tfrecord", {"a": (3, [40]), "b": (4, [80])})
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-20])
    spec = pipeline.ClipSpec(num_frames=1, eval_size=S)
    with pytest.raises(tf.errors.DataLossError):
        list(pipeline.make_dataset([path], spec, training=False))
    kept = pipeline.make_dataset([path], spec, training=False, skip_corrupt=True)
    assert [labels.numpy().tolist() for _, labels in kept] == [[3]]


# -- what the export checks and clip clients read: uint8 views ---------------------------------
def test_uint8_views_read_the_chosen_videos_in_file_order_and_keep_black_and_white(tmp_path):
    """Three videos of one grey each (0, 120, 255; 4 frames of S x S, so no resize): all
    three in file order, or only the chosen ones; uint8 clips [V, T, S, S, 3] that keep 0
    and 255 exactly; ``eval_clips`` overrides the contract's V."""
    path = _write_grey_videos(tmp_path / "v.tfrecord", {"a": (0, [0] * 4), "b": (1, [120] * 4), "c": (2, [255] * 4)})
    contract = pipeline.InputContract(num_frames=2, frame_stride=1, sampler="dense", eval_clips=3, eval_size=S,
                                      class_names=("x", "y", "z"))
    every = [(c.shape, int(c.min()), int(c.max()), int(y), v.decode())
             for c, y, v in pipeline.uint8_views([path], contract).as_numpy_iterator()]
    assert every == [((3, 2, S, S, 3), 0, 0, 0, "a"), ((3, 2, S, S, 3), 120, 120, 1, "b"),
                     ((3, 2, S, S, 3), 255, 255, 2, "c")]
    chosen = [(c.shape, int(y)) for c, y, _ in pipeline.uint8_views([path], contract, {"c", "a"}, 1).as_numpy_iterator()]
    assert chosen == [((1, 2, S, S, 3), 0), ((1, 2, S, S, 3), 2)]


def test_decode_frame_reads_a_gif_as_its_first_frame():
    # decode_image's expand_animations=False: an animated GIF is its first frame, [H, W, 3]
    buffer = io.BytesIO()
    first, second = Image.new("RGB", (6, 4), (0, 0, 0)), Image.new("RGB", (6, 4), (255, 255, 255))
    first.save(buffer, format="GIF", save_all=True, append_images=[second])
    frame = pipeline.decode_frame(tf.constant(buffer.getvalue())).numpy()
    assert frame.shape == (4, 6, 3) and frame.max() == 0


# -- the contract, fillers and step counts -------------------------------------------------------
def test_input_contract_refuses_what_is_not_its_record():
    good = pipeline.InputContract(num_frames=4, frame_stride=2, sampler="dense", eval_clips=1, eval_size=S,
                                  class_names=("a",)).to_dict()
    assert pipeline.InputContract.from_dict(good).frame_stride == 2
    for bad in ({**good, "format": "stfusion-contract/0"}, [good], {k: v for k, v in good.items() if k != "format"}):
        with pytest.raises(ValueError, match=r"^c.json: not a stfusion-contract/1 record$"):
            pipeline.InputContract.from_dict(bad, "c.json")
    with pytest.raises(ValueError, match="c.json: unreadable"):
        pipeline.InputContract.from_dict({k: v for k, v in good.items() if k != "class_names"}, "c.json")


def test_one_filler_batch_of_two_views_per_video():
    # batch 2 videos of 2 views: clips [4, T, S, S, 3]; one filler batch of that shape after it
    ds = tf.data.Dataset.from_tensors((tf.ones([4, 1, S, S, 3]), tf.constant([3, 4]), tf.constant([0, 1], tf.int64)))
    batches = list(pipeline.filler_batches(ds, 1, 2, 2))
    assert len(batches) == 2 and batches[1][0].shape == (4, 1, S, S, 3) and not np.any(batches[1][0])
    assert batches[1][2].numpy().tolist() == [-1, -1]


def test_pipeline_batches_rounds_to_whole_steps_of_the_replicas_a_pipeline_feeds():
    """Two pipelines, four replicas (two each), batch 2 per replica (global 8): files a, b
    hold 3 and 2 wanted videos -> pipeline 0 ceil(3 / 2) = 2 batches, pipeline 1 one; every
    pipeline takes a multiple of its 2 replicas: ceil(2 / 2) * 2 = 2 (integers, as they
    count batches)."""
    shard_videos = {"a": ["v1", "v2", "v3"], "b": ["v4", "v5", "v6"]}
    for worker, expected in ((0, (2, 2)), (1, (1, 2))):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=worker, num_replicas_in_sync=4)
        got = pipeline.pipeline_batches(["a", "b"], shard_videos, ["v1", "v2", "v3", "v4", "v5"], 8, ctx)
        assert got == expected and all(type(n) is int for n in got)


def test_the_library_shuffles_as_the_command_line_does_by_default():
    """``make_dataset``'s default shuffle buffer is the run config's (``DataConfig``, the
    ``--shuffle_buffer`` default, 256): a script calling the library shuffles its training
    records as ``stfusion-train`` does (seed-37 survivor, data/pipeline l.338)."""
    import inspect

    from tf_stfusion.run.config import DataConfig

    default = inspect.signature(pipeline.make_dataset).parameters["shuffle_buffer"].default
    assert default == DataConfig().shuffle_buffer == 256
