"""Clip geometry by construction: which region, which orientation and which frames reach
the network, through the real pipeline, the serving signatures and the clients.

Every frame's pixels say where and when they are: in ``position_frames`` red is
``8 * column``, green ``8 * row`` and blue ``10 * frame index`` (PNG: lossless); the
clients' JPEG frames carry one grey level (``10 * frame index``, or ``8 * column``),
which JPEG keeps within a few levels. Expected values are worked out by hand from the
contract (SPEC §5, ``pipeline``'s docstrings), never by calling the code under test:

* dense sampler, ``T`` frames every ``s``: span ``(T - 1) s + 1``, room
  ``max(L - span, 0)``; eval view ``v`` of ``V`` starts at ``floor(room (v + 0.5) / V)``,
  train starts uniformly in ``[0, room]``; indices wrap modulo ``L`` (a short video loops);
* uniform sampler: segment ``L / T``; eval view ``v`` takes ``floor((k + (v + 0.5) / V) L / T)``
  of segment ``k``, train one frame anywhere in each segment;
* eval crop: short side to ``S`` (bilinear, half-pixel centres: halving averages pixels
  ``2j`` and ``2j + 1``, so ``8 * column`` becomes ``16 j + 4``), then the centre
  ``S x S`` (offset ``(long - S) // 2``); train: short side to ``S`` at scale 1, one
  random ``S x S`` window for the whole clip, mirrored only when flips are on.
"""

import base64
import dataclasses
import io
import json
import os
import sys
import types

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tf_stfusion.data import pipeline
from tf_stfusion.data.pipeline import InputContract
from tf_stfusion.data.prepare import make_sequence_example
from tf_stfusion.export import client, serving

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "export"))

import grpc_client  # noqa: E402
import rest_client  # noqa: E402

S = 8  # eval / train crop
LANDSCAPE, PORTRAIT = (16, 28), (28, 16)  # (height, width): the short side halves to S
# the network's columns x = 0..7 (rows y) of a halved 16 x 28 frame: resized column j = x + 3
# (centre offset (14 - 8) // 2) holds 8 * (2j + 0.5) = 16 x + 52; rows: 16 y + 4 (no offset)
CENTRE_LONG = 16 * np.arange(S) + 52
CENTRE_SHORT = 16 * np.arange(S) + 4
# eval indices for T = 4, V = 2: dense stride 2 (span 7) and uniform, worked out in the docstring
DENSE_EVAL = {20: [[3, 5, 7, 9], [9, 11, 13, 15]],  # room 13: starts floor(3.25), floor(9.75)
              5: [[0, 2, 4, 1], [0, 2, 4, 1]]}  # room 0: 6 wraps to 1
UNIFORM_EVAL = {20: [[1, 6, 11, 16], [3, 8, 13, 18]],  # segment 5: 1.25 and 3.75 into each
                6: [[0, 1, 3, 4], [1, 2, 4, 5]],  # segment 1.5: 0.375 and 1.125 into each
                3: [[0, 0, 1, 2], [0, 1, 2, 2]]}  # segment 0.75: 0.1875 and 0.5625 into each


def position_frames(length, size=LANDSCAPE):
    """uint8 ``[L, H, W, 3]``: red 8 * column, green 8 * row, blue 10 * frame index."""
    h, w = size
    frames = np.zeros((length, h, w, 3), np.uint8)
    frames[..., 0] = 8 * np.arange(w)[None, None, :]
    frames[..., 1] = 8 * np.arange(h)[None, :, None]
    frames[..., 2] = 10 * np.arange(length)[:, None, None]
    return frames


def png(frame):
    return tf.io.encode_png(frame).numpy()


def write_shard(path, frames, video_id="v"):
    """One video in a shard, its frames stored as PNG (lossless) in ``image/encoded``."""
    return write_videos(path, {video_id: frames})


def write_videos(path, videos):
    """A shard of ``{video id: frames}``, frames stored as PNG (lossless)."""
    with tf.io.TFRecordWriter(str(path)) as writer:
        for video_id, frames in videos.items():
            example = make_sequence_example(video_id, 0, frames, 95)
            encoded = example.feature_lists.feature_list["image/encoded"].feature
            for feature, frame in zip(encoded, frames):
                feature.bytes_list.value[0] = png(frame)
            writer.write(example.SerializeToString())
    return str(path)


def pixels(clips):
    """Normalised clips -> grey levels 0..255 (ImageNet mean/std undone)."""
    return (np.asarray(clips) * np.array(pipeline.IMAGENET_STD) + np.array(pipeline.IMAGENET_MEAN)) * 255.0


def frame_index(clip_pixels):
    """``[..., H, W, 3]`` pixels of position frames -> the frame index each frame shows."""
    return np.round(clip_pixels[..., 2].mean(axis=(-1, -2)) / 10).astype(int)


# -- evaluation: crop and frames ---------------------------------------------------
@pytest.mark.parametrize("kind,length", [("dense", 20), ("dense", 5), ("uniform", 20), ("uniform", 6),
                                         ("uniform", 3)])
def test_eval_reads_the_contract_frames_and_the_centre(kind, length, tmp_path):
    path = write_shard(tmp_path / "v.tfrecord", position_frames(length))
    ds = pipeline.make_dataset([path], _contract(kind).clip_spec(), training=False, batch_size=1, deterministic=True)
    clips, _ = next(iter(ds))
    p = pixels(clips).reshape(2, 4, S, S, 3)
    expected = (DENSE_EVAL if kind == "dense" else UNIFORM_EVAL)[length]
    np.testing.assert_array_equal(frame_index(p), expected)
    np.testing.assert_allclose(p[..., 0], np.broadcast_to(CENTRE_LONG[None, :], p.shape[:-1]), atol=0.05)
    np.testing.assert_allclose(p[..., 1], np.broadcast_to(CENTRE_SHORT[:, None], p.shape[:-1]), atol=0.05)


def test_eval_crop_of_a_portrait_frame_is_centred_vertically(tmp_path):
    path = write_shard(tmp_path / "v.tfrecord", position_frames(8, PORTRAIT))
    ds = pipeline.make_dataset([path], pipeline.ClipSpec(num_frames=4, eval_size=S, eval_clips=1), training=False,
                               batch_size=1, deterministic=True)
    p = pixels(next(iter(ds))[0])[0]
    np.testing.assert_allclose(p[..., 0], np.broadcast_to(CENTRE_SHORT[None, :], p.shape[:-1]), atol=0.05)
    np.testing.assert_allclose(p[..., 1], np.broadcast_to(CENTRE_LONG[:, None], p.shape[:-1]), atol=0.05)
    np.testing.assert_array_equal(frame_index(p), [2, 3, 4, 5])  # dense stride 1: room 4, start floor(2.0)


def test_eval_clip_of_a_frame_already_at_size_is_its_centre_unresized(tmp_path):
    # 8 x 14: no resize, centre offset (14 - 8) // 2 = 3, so red is 8 * (x + 3) exactly
    path = write_shard(tmp_path / "v.tfrecord", position_frames(4, (S, 14)))
    ds = pipeline.make_dataset([path], pipeline.ClipSpec(num_frames=4, eval_size=S, eval_clips=1), training=False,
                               batch_size=1, deterministic=True)
    p = pixels(next(iter(ds))[0])[0]
    np.testing.assert_allclose(p[0, ..., 0], np.broadcast_to(8 * (np.arange(S) + 3), (S, S)), atol=0.05)
    np.testing.assert_allclose(p[0, ..., 1], np.broadcast_to(8 * np.arange(S)[:, None], (S, S)), atol=0.05)


def test_clip_spec_crops_each_mode_at_its_own_size_and_refuses_bad_geometry(tmp_path):
    """One spec, two crops: training at ``input_size`` (12), evaluation at ``eval_size``
    (S = 8; ``None`` means ``input_size``), with ``eval_clips`` views per video."""
    assert pipeline.ClipSpec(input_size=12).eval_size == 12
    spec = pipeline.ClipSpec(num_frames=4, input_size=12, eval_size=S, eval_clips=3)
    path = write_shard(tmp_path / "v.tfrecord", position_frames(8))
    train, _ = next(iter(pipeline.make_dataset([path], spec, training=True, batch_size=1, seed=0)))
    evaluation, labels = next(iter(pipeline.make_dataset([path], spec, training=False, batch_size=1)))
    assert train.shape == (1, 4, 12, 12, 3) and evaluation.shape == (3, 4, S, S, 3) and labels.shape == (1,)
    with pytest.raises(ValueError, match="sampler must be one of"):
        pipeline.ClipSpec(sampler="random")
    with pytest.raises(ValueError, match="eval_clips must be >= 1"):
        pipeline.ClipSpec(eval_clips=0)


# -- training: samplers, crop window, mirror ---------------------------------------------
def _train_indices(sampler, length, draws=300):
    return np.stack([sampler.indices(tf.constant(length), 1, True, tf.constant([seed, 7]))[0].numpy()
                     for seed in range(draws)])


def test_dense_train_sampler_starts_anywhere_in_the_room_and_steps_by_the_stride():
    sampler = pipeline.make_sampler("dense", 4, 2)
    got = _train_indices(sampler, 20)
    assert set(got[:, 0].tolist()) == set(range(14))  # room 20 - 7 = 13: starts 0..13, each seen
    np.testing.assert_array_equal(got - got[:, :1], np.broadcast_to([0, 2, 4, 6], got.shape))
    short = _train_indices(sampler, 5, draws=20)  # room 0: always from 0, looping
    np.testing.assert_array_equal(short, np.broadcast_to([0, 2, 4, 1], short.shape))


def test_uniform_train_sampler_takes_one_frame_anywhere_in_each_segment():
    got = _train_indices(pipeline.make_sampler("uniform", 4), 20)
    offsets = got - 5 * np.arange(4)  # segments of 5 frames
    for k in range(4):
        assert set(offsets[:, k].tolist()) == set(range(5)), k


@pytest.mark.parametrize("flip", [False, True])
def test_train_crop_is_one_window_per_clip_mirrored_only_with_flip(flip, tmp_path):
    """40 training clips of a 16 x 28 video at scale 1: short side halved to 8 x 14, one
    8 x 8 window (left offset 0..6) for every frame of a clip, frames in sampler order."""
    path = write_shard(tmp_path / "v.tfrecord", position_frames(20))
    spec = pipeline.ClipSpec(num_frames=4, frame_stride=2, input_size=S, scale_range=(1.0, 1.0), flip=flip)
    ds = pipeline.make_dataset([path], spec, training=True, batch_size=1, seed=3, deterministic=True)
    lefts, mirrored = set(), 0
    for clips, _ in ds.take(40):
        p = pixels(clips)[0]
        t = frame_index(p)
        np.testing.assert_array_equal(t - t[0], [0, 2, 4, 6])
        assert 0 <= t[0] <= 13
        np.testing.assert_allclose(p[..., 1], np.broadcast_to(CENTRE_SHORT[:, None], p.shape[:-1]), atol=0.05)
        red = p[0, 0, :, 0]
        is_mirrored = red[0] > red[-1]
        left = int(round((red.min() - 4) / 16))
        columns = left + (np.arange(S)[::-1] if is_mirrored else np.arange(S))
        np.testing.assert_allclose(p[..., 0], np.broadcast_to(16 * columns + 4, p.shape[:-1]), atol=0.05)
        assert 0 <= left <= 6
        lefts.add(left)
        mirrored += int(is_mirrored)
    assert len(lefts) >= 3  # the window moves
    if flip:
        assert 10 <= mirrored <= 30  # a fair coin over 40 clips (outside: p = 0.002)
    else:
        assert mirrored == 0


# -- which videos reach the network --------------------------------------------------------
def test_training_never_reads_an_excluded_video_and_evaluation_only_the_listed(tmp_path):
    """Three videos whose frames are one grey each (a 40, b 120, c 200). Training (the run
    passes only ``exclude_ids``, the hold-out) reads a and c once each; evaluation (only
    ``video_index``) reads c and a at positions 0 and 1, never b."""
    grey = {"a": 40, "b": 120, "c": 200}
    path = write_videos(tmp_path / "v.tfrecord", {v: np.full((4, S, S, 3), g, np.uint8) for v, g in grey.items()})
    train = pipeline.make_dataset([path], pipeline.ClipSpec(num_frames=4, input_size=S, scale_range=(1.0, 1.0)),
                                  training=True, batch_size=1, repeat=False, exclude_ids={"b"}, seed=0)
    assert sorted(int(round(pixels(clips).mean())) for clips, _ in train) == [40, 200]
    evaluation = pipeline.make_dataset([path], pipeline.ClipSpec(num_frames=4, eval_size=S), training=False,
                                       batch_size=3, video_index=["c", "a"], deterministic=True)
    (clips, _, position), = list(evaluation)
    read = dict(zip(position.numpy().tolist(), np.round(pixels(clips).reshape(2, -1).mean(axis=1)).tolist()))
    assert read == {0: 200, 1: 40}


def test_filler_batches_and_padding_hold_no_video():
    """Batches of 2 videos (1 view): fillers and padding are zero clips at position -1."""
    clips = tf.ones([2, 4, S, S, 3])
    ds = tf.data.Dataset.from_tensors((clips, tf.constant([3, 4]), tf.constant([0, 1], tf.int64)))
    assert pipeline.filler_batches(ds, 0, 2, 1) is ds
    batches = list(pipeline.filler_batches(ds, 2, 2, 1))
    assert len(batches) == 3 and batches[0][2].numpy().tolist() == [0, 1]
    for filler_clips, labels, position in batches[1:]:
        assert filler_clips.shape == (2, 4, S, S, 3) and not np.any(filler_clips.numpy())
        assert labels.numpy().tolist() == [0, 0] and position.numpy().tolist() == [-1, -1]
    padded, labels, position = pipeline.fill_batch(clips[:1], tf.constant([3]), tf.constant([5], tf.int64), 2)
    assert padded.shape == (2, 4, S, S, 3) and not np.any(padded.numpy()[1]) and np.all(padded.numpy()[0] == 1)
    assert labels.numpy().tolist() == [3, 0] and position.numpy().tolist() == [5, -1]


# -- serving: what each signature hands the network --------------------------------------
class Recorder:
    """A stand-in network: keeps the clips it is given, answers uniform scores."""

    def __init__(self, num_classes=2):
        self.num_classes, self.seen = num_classes, []

    def __call__(self, clips, training=False):
        self.seen.append(clips.numpy())
        return tf.zeros([tf.shape(clips)[0], self.num_classes])


def _contract(kind="dense"):
    return InputContract(num_frames=4, frame_stride=2, sampler=kind, eval_clips=2, eval_size=S,
                         class_names=("a", "b"), jpeg_quality=95)


def _signatures(contract):
    model = Recorder()
    names = tf.constant(list(contract.class_names))
    return serving.make_signatures(model, contract, lambda ids: tf.gather(names, ids)), model


@pytest.mark.parametrize("kind,length", [("dense", 20), ("dense", 5), ("uniform", 6)])
def test_serving_signatures_hand_the_network_the_contract_frames_and_centre(kind, length):
    contract = _contract(kind)
    signatures, model = _signatures(contract)
    frames = position_frames(length)
    encoded = [png(f) for f in frames]
    expected = np.array((DENSE_EVAL if kind == "dense" else UNIFORM_EVAL)[length])
    signatures["serving_video"][0](tf.constant(encoded))
    signatures["serving_clips"][0](tf.constant([encoded[i] for i in expected.ravel()]))
    for seen in model.seen:
        p = pixels(seen).reshape(2, 4, S, S, 3)
        np.testing.assert_array_equal(frame_index(p), expected)
        np.testing.assert_allclose(p[..., 0], np.broadcast_to(CENTRE_LONG[None, :], p.shape[:-1]), atol=0.05)
        np.testing.assert_allclose(p[..., 1], np.broadcast_to(CENTRE_SHORT[:, None], p.shape[:-1]), atol=0.05)
    video = position_frames(4, (S, S))[None]  # serving_default: clips already cut; only normalised
    signatures["serving_default"][0](tf.constant(video))
    np.testing.assert_allclose(pixels(model.seen[-1]), video, atol=0.05)


@pytest.mark.parametrize("height,width", [(300, 260), (260, 300), (17, 1000)])
def test_serving_reads_png_and_jpeg_sizes_alike(height, width):
    """The size check reads PNG sizes from the IHDR bytes and JPEG sizes from the SOF: a
    PNG and a JPEG of one size (sides of 256 or more, so every byte of a PNG side counts)
    pass together, and a refused video names frame 0's true size."""
    signatures, model = _signatures(_contract())
    frame = np.zeros((height, width, 3), np.uint8)
    jpeg = tf.io.encode_jpeg(frame).numpy()
    signatures["serving_video"][0](tf.constant([png(frame), jpeg, png(frame)]))
    assert model.seen[-1].shape == (2, 4, S, S, 3)
    other = png(np.zeros((height + 1, width, 3), np.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"frame 0 is\W+{height},? {width}\b"):
        signatures["serving_video"][0](tf.constant([png(frame), jpeg, other]))


def test_serving_reads_every_byte_of_a_png_header_size():
    """A PNG whose IHDR says width 0x05060708 and height 0x01020304 (big-endian, bytes 16..23;
    the size check decodes nothing, so the header need not be a real image's) beside a real
    1 x 1 frame: refused, naming frame 0's size 16909060 x 84281096."""
    signatures, _ = _signatures(_contract())
    header = bytearray(png(np.zeros((1, 1, 3), np.uint8)))
    header[16:24] = bytes([5, 6, 7, 8, 1, 2, 3, 4])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"frame 0 is\W+16909060,? 84281096\b"):
        signatures["serving_video"][0](tf.constant([bytes(header), png(np.zeros((1, 1, 3), np.uint8))]))


# -- clients: what they send ---------------------------------------------------------------
def _jpeg_folder(folder, frames):
    """A frame folder as ``prepare`` reads one (``00001.jpg`` ...), near-lossless JPEG."""
    folder.mkdir()
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{i + 1:05d}.jpg", quality=100, subsampling=0)
    return str(folder)


def _grey(values, size=LANDSCAPE):
    """Grey frames, one level per frame (``values`` ``[L]``)."""
    values = np.asarray(values, np.uint8)
    return np.broadcast_to(values[:, None, None, None], (len(values), *size, 3)).copy()


def _decoded_greys(jpegs):
    return np.array([np.asarray(Image.open(io.BytesIO(j)).convert("L"), float).mean() for j in jpegs])


def _fake_rest(signatures, contract):
    """TF Serving's REST ``:predict`` answered by the signature functions themselves."""
    def send(url, body):
        request = json.loads(body)
        if request["signature_name"] == client.CONTRACT_SIGNATURE:
            return {"outputs": json.dumps(contract.to_dict())}
        frames = [base64.b64decode(f["b64"]) for f in request["inputs"]["frames"]]
        out = signatures[request["signature_name"]][0](tf.constant(frames))
        return {"outputs": {"probabilities": out["probabilities"].numpy().tolist()}}
    return send


def _fake_grpc(signatures, contract):
    def predict(request):
        outputs = {}
        if request.model_spec.signature_name == client.CONTRACT_SIGNATURE:
            outputs["contract"] = tf.make_tensor_proto(json.dumps(contract.to_dict()))
        else:
            frames = list(tf.make_ndarray(request.inputs["frames"]).ravel())
            out = signatures[request.model_spec.signature_name][0](tf.constant(frames))
            outputs["probabilities"] = tf.make_tensor_proto(out["probabilities"].numpy())
        return types.SimpleNamespace(outputs=outputs)
    return predict


@pytest.mark.parametrize("whole_video", [False, True])
def test_rest_and_grpc_clients_get_the_contract_frames_to_the_network(whole_video, tmp_path):
    contract = _contract("dense")
    video = _jpeg_folder(tmp_path / "frames", _grey(10 * np.arange(20)))
    signatures, model = _signatures(contract)
    rest_client.classify("http://model", video, whole_video, send=_fake_rest(signatures, contract))
    grpc_client.classify(_fake_grpc(signatures, contract), "stfusion", video, whole_video)
    assert len(model.seen) == 2
    for seen in model.seen:
        greys = pixels(seen).reshape(2, 4, -1).mean(axis=-1)
        np.testing.assert_array_equal(np.round(greys / 10).astype(int), DENSE_EVAL[20])


def test_request_frames_and_contract_clips_are_the_contract_frames_and_centre(tmp_path):
    contract = _contract("uniform")
    timed = _jpeg_folder(tmp_path / "timed", _grey(10 * np.arange(20)))
    sent, indices = client.request_frames(timed, contract)
    np.testing.assert_array_equal(indices, np.ravel(UNIFORM_EVAL[20]))
    np.testing.assert_array_equal(np.round(_decoded_greys(sent) / 10).astype(int), np.ravel(UNIFORM_EVAL[20]))
    clips = client.contract_clips(timed, contract)  # ONNX Runtime and LiteRT clients send these
    assert clips.shape == (2, 4, S, S, 3) and clips.dtype == np.uint8
    np.testing.assert_array_equal(np.round(clips.reshape(2, 4, -1).mean(axis=-1) / 10), UNIFORM_EVAL[20])
    columns = np.broadcast_to((8 * np.arange(28, dtype=np.uint8))[None, :, None], (*LANDSCAPE, 3))
    spatial = _jpeg_folder(tmp_path / "spatial", np.stack([columns] * 6))
    clips = client.contract_clips(spatial, contract).astype(float)
    np.testing.assert_allclose(clips, np.broadcast_to(CENTRE_LONG[None, :, None], clips.shape), atol=3)
    # frames stored at short side 8 by prepare: the client sends them at that size too
    halved = dataclasses.replace(contract, frame_short_side=S)
    sent, _ = client.request_frames(timed, halved)
    assert {Image.open(io.BytesIO(j)).size for j in sent} == {(14, S)}  # PIL: (width, height)


def test_clip_runtime_command_line_prints_the_top_classes_or_one_error_line(capsys):
    """``classify_main`` as the ONNX client calls it (no ``--num_threads``) and as the LiteRT
    client does (``threads=True``); a bad video is one ``error:`` line and exit code 2."""
    from absl import flags

    from tf_stfusion.data.video import VideoError

    def parsed(argv, threads=False):
        values = flags.FlagValues()
        client.define_clip_flags(threads, values)
        values(["client", *argv])
        return values

    plain = flags.FlagValues()
    client.define_clip_flags(flag_values=plain)  # the ONNX client's flags: no --num_threads by default
    assert "num_threads" not in plain and "model" in plain

    def onnx_like(model, video):
        if video == "bad.mp4":
            raise VideoError("bad.mp4: no frames")
        return client.top_classes([0.1, 0.7, 0.2], ["a", "b", "c"], k=2)

    assert client.classify_main(onnx_like, parsed(["--model=m", "--video=v.mp4"])) == 0
    assert capsys.readouterr().out.splitlines() == ["0.7000  b", "0.2000  c"]
    assert client.classify_main(onnx_like, parsed(["--model=m", "--video=bad.mp4"])) == 2
    assert capsys.readouterr().err.strip() == "error: bad.mp4: no frames"
    # Unknown and missing flags stop the parse (run_app turns that into one line and exit 2: test_configs).
    for wrong in (["--model=m", "--video=v.mp4", "--num_threads=2"], ["--video=v.mp4"], ["--model=m"]):
        with pytest.raises(flags.Error):
            parsed(wrong)
    threads = []
    client.classify_main(lambda m, v, num_threads: threads.append(num_threads) or [],
                         parsed(["--model=m", "--video=v.mp4", "--num_threads=3"], threads=True), threads=True)
    assert threads == [3]


def test_a_one_frame_video_is_read_as_that_frame_and_an_empty_one_refused():
    # The sampler loops a short video: one frame gives every view that frame (index 0),
    # worked out from the rule, not the sampler; no frame at all is a one-line error.
    for kind in ("dense", "uniform"):
        np.testing.assert_array_equal(_contract(kind).frame_indices(1), np.zeros((2, 4), int))
        with pytest.raises(ValueError, match="at least one frame"):
            _contract(kind).frame_indices(0)


def test_clip_runtimes_return_the_five_best_classes_of_a_larger_set():
    # ONNX / LiteRT files (clip_function) answer with the top 5 class ids, best first, as
    # serving_default does; fewer classes than 5 give all of them.
    contract = InputContract(num_frames=2, frame_stride=1, sampler="dense", eval_clips=1, eval_size=S,
                             class_names=tuple("abcdefgh"))
    logits = tf.constant([[0.0, 7.0, 1.0, 6.0, 2.0, 5.0, 3.0, 4.0]])

    def model(clips, training=False):
        return tf.tile(logits, [tf.shape(clips)[0], 1])

    fn, spec = serving.clip_function(model, contract)
    out = fn(tf.zeros([1, *spec.shape[1:]], tf.uint8))
    assert out["top_k"].numpy().tolist() == [[1, 3, 5, 7, 6]]


# -- export/serving (issue 29, module export/serving): top 5, one frame, the ensemble head -----
def _index_member(scale, modes):
    """A stand-in member: logits ``[scale * t, 0]``, ``t`` the mean frame index its clip shows
    (the blue channel, 10 * index, read back through the ImageNet normalisation); appends
    the ``training`` flag it is called with to ``modes``."""
    def member(clips, training=False):
        modes.append(training)
        index = (clips[..., 2] * pipeline.IMAGENET_STD[2] + pipeline.IMAGENET_MEAN[2]) * 25.5
        t = tf.reduce_mean(index, axis=[1, 2, 3])
        return tf.stack([scale * t, tf.zeros_like(t)], axis=1)
    return member


def test_serving_answers_the_five_best_of_eight_classes_and_takes_a_one_frame_video():
    contract = dataclasses.replace(_contract(), class_names=tuple("abcdefgh"))
    logits = tf.constant([[0.0, 7.0, 1.0, 6.0, 2.0, 5.0, 3.0, 4.0]])
    names = tf.constant(list(contract.class_names))
    signatures = serving.make_signatures(lambda clips, training=False: tf.tile(logits, [tf.shape(clips)[0], 1]),
                                         contract, lambda ids: tf.gather(names, ids))
    out = signatures["serving_default"][0](tf.zeros([1, 4, S, S, 3], tf.uint8))
    assert out["top_k"].numpy().tolist() == [[1, 3, 5, 7, 6]] and out["labels"].numpy().tolist() == [
        [b"b", b"d", b"f", b"h", b"g"]]
    # one frame is a whole video: every view of the dense sampler is that frame (index 0)
    recorded, model = _signatures(_contract())
    recorded["serving_video"][0](tf.constant([png(position_frames(1)[0])]))
    np.testing.assert_array_equal(frame_index(pixels(model.seen[-1])).reshape(2, 4), np.zeros((2, 4), int))


def test_ensemble_signatures_average_views_and_members_then_scale_by_hand():
    """Members of scale 0.1, -0.05 and 0 (three members, two classes: no axis can stand in
    for another) on a 20-frame video, dense views [3, 5, 7, 9] and [9, 11, 13, 15] (mean
    index 6 and 12): class 0 scores the mean of sigmoid(0.6), sigmoid(1.2), sigmoid(-0.3),
    sigmoid(-0.6) and twice sigmoid(0) = p; T = 2 scales [p, 1 - p] to
    sqrt(p) / (sqrt(p) + sqrt(1 - p)); abstain below 0.6."""
    sigmoid = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    p = np.mean(sigmoid(np.array([0.6, 1.2, -0.3, -0.6, 0.0, 0.0])))
    q = np.sqrt(p) / (np.sqrt(p) + np.sqrt(1 - p))
    entropy = -(q * np.log(q) + (1 - q) * np.log(1 - q))
    contract = _contract("dense")
    names = tf.constant(list(contract.class_names))
    head = serving.EnsembleHead(temperature=2.0, threshold=0.6, info={"members": 3})
    modes = []
    ensemble = serving.Ensemble([_index_member(s, modes) for s in (0.1, -0.05, 0.0)])
    signatures = serving.make_signatures(ensemble, contract, lambda ids: tf.gather(names, ids), head=head)
    out = signatures["serving_video"][0](tf.constant([png(f) for f in position_frames(20)]))
    np.testing.assert_allclose(out["probabilities"].numpy(), [[q, 1 - q]], atol=1e-4)
    np.testing.assert_allclose(out["entropy"].numpy(), [entropy], atol=1e-4)
    assert out["abstain"].numpy().tolist() == [q < 0.6] == [True]
    # serving_default: one clip of frames 0..3 (mean index 1.5), the members' softmax averaged
    clip = position_frames(4, (S, S))[None]
    p = np.mean(sigmoid(np.array([0.15, -0.075, 0.0])))
    q = np.sqrt(p) / (np.sqrt(p) + np.sqrt(1 - p))
    out = signatures["serving_default"][0](tf.constant(clip))
    np.testing.assert_allclose(out["probabilities"].numpy(), [[q, 1 - q]], atol=1e-4)
    np.testing.assert_allclose(out["logits"].numpy(), [[[0.15, 0.0], [-0.075, 0.0], [0.0, 0.0]]], atol=1e-4)
    assert json.loads(signatures["input_contract"][0]()["ensemble"].numpy()) == {"members": 3}
    assert modes and not any(modes)  # every member in inference mode (traced: Python bools)
    plain = serving.make_signatures(_index_member(0.1, modes), contract, lambda ids: tf.gather(names, ids))
    plain["serving_default"][0](tf.constant(clip))
    assert modes and not any(modes)


def test_an_ensemble_called_plainly_runs_its_members_in_inference_mode():
    """A member with a BatchNormalization of moving mean 1 and variance 1 (eps 1e-3): in
    inference x = 3 gives 2 / sqrt(1.001); the batch's own statistics would give +-1."""
    import keras

    norm = keras.layers.BatchNormalization(epsilon=1e-3)
    member = keras.Sequential([keras.Input((1,)), norm])
    norm.moving_mean.assign([1.0])
    got = serving.Ensemble([member])(tf.constant([[3.0], [1.0]])).numpy()
    np.testing.assert_allclose(got, np.array([2.0, 0.0]).reshape(2, 1, 1) / np.sqrt(1.001), atol=1e-5)


def test_a_refused_video_names_its_first_eight_bad_frames():
    """Ten frames that are not images, or ten whose size differs from frame 0's: the error
    lists the first 8 indices and an ellipsis (the module docstring's contract)."""
    signatures, _ = _signatures(_contract())
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"i =\W+0, 1, 2, 3, 4, 5, 6, 7, \.\.\."):
        signatures["serving_video"][0](tf.constant([b"junk"] * 10))
    sizes = [png(np.zeros((1 + i, 1, 3), np.uint8)) for i in range(11)]  # frames 1..10 differ from frame 0
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"differ:\W+1, 2, 3, 4, 5, 6, 7, 8, \.\.\."):
        signatures["serving_video"][0](tf.constant(sizes))

def test_the_ensemble_head_floors_probabilities_at_1e_12_as_calibration_does():
    """A class given probability 0 enters the log as 1e-12 (calibration.EPS): at T = 100
    ``[1, 0]`` scales to ``[1, r] / (1 + r)``, ``r = 1e-12 ** (1 / 100) = 10 ** -0.12``; at
    T = 1 the entropy of ``[1, 1e-12]`` is ``1e-12 * ln(1e12) = 2.7631e-11`` nats."""
    r = 10 ** -0.12
    scaled, _, _ = serving.EnsembleHead(100.0, 0.5, {}).apply(tf.constant([[1.0, 0.0]]))
    np.testing.assert_allclose(scaled.numpy(), [[1 / (1 + r), r / (1 + r)]], atol=1e-6)
    _, entropy, _ = serving.EnsembleHead(1.0, 0.5, {}).apply(tf.constant([[1.0, 0.0]]))
    np.testing.assert_allclose(entropy.numpy(), [1e-12 * np.log(1e12)], rtol=1e-3)

# -- export/client (issue 29, module export/client): the contract's rate, the top five ---------
def test_client_resamples_to_the_contract_rate_and_names_the_five_best(tmp_path):
    """A 10 fps video of 20 grey frames (level 10 * i) under a 5 fps contract: FFmpeg's fps
    filter keeps the frame nearest each 0.2 s, i.e. every second one, levels 0, 20, ..., 180
    (H.264 and JPEG keep a flat grey within a few levels); top_classes' default is 5."""
    from tf_stfusion.data.video import write_video

    path = write_video(str(tmp_path / "ten.mp4"), _grey(10 * np.arange(20)), fps=10)
    sent, indices = client.request_frames(path, dataclasses.replace(_contract(), fps=5.0), whole_video=True)
    assert indices.tolist() == list(range(10))
    np.testing.assert_allclose(_decoded_greys(sent), 20 * np.arange(10), atol=3)
    best = client.top_classes([0.0, 0.7, 0.1, 0.6, 0.2, 0.5, 0.3, 0.4], list("abcdefgh"))
    assert [name for _, name in best] == ["b", "d", "f", "h", "g"]


def test_a_clip_client_command_line_runs_its_classify_with_the_flags_it_defined():
    """``run_clip_client`` as ``export/onnx_client.py`` runs it (no ``--num_threads``; the
    classify takes none) and as the LiteRT client does (``threads=True``), in a fresh process:
    absl's flags are global. Expected lines: the fake classify's top classes, best first."""
    import subprocess

    script = ("import sys\nfrom tf_stfusion.export.client import run_clip_client, top_classes\n"
              "if sys.argv[-1] == '--num_threads=3':\n"
              "    run_clip_client(lambda model, video, num_threads: top_classes([0.1, 0.9], [model, str(num_threads)]),"
              " threads=True)\n"
              "run_clip_client(lambda model, video: top_classes([0.2, 0.8], [model, video]))\n")
    env = dict(os.environ, PYTHONPATH=REPO)
    for argv, lines in ((["--model=m", "--video=v.mp4"], ["0.8000  v.mp4", "0.2000  m"]),
                        (["--model=m", "--video=v.mp4", "--num_threads=3"], ["0.9000  3", "0.1000  m"])):
        proc = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, env=env,
                              timeout=60)
        assert (proc.returncode, proc.stdout.splitlines()) == (0, lines), proc.stderr[-500:]
