"""Serving that answers like evaluation: the input contract in the SavedModel,
encoded-frame signatures running the pipeline's own evaluation path, clients that
follow the contract (checked against TF Serving's documented request decoding,
since no TF Serving binary can be installed here), warm-up records, and the
served-accuracy check of the export."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import tf_stfusion as stf
from tf_stfusion.data import pipeline, synthetic
from tf_stfusion.data.pipeline import InputContract
from tf_stfusion.data.prepare import encode_jpeg, make_sequence_example
from tf_stfusion.export import client
from tf_stfusion.export.local_server import LocalServing
from tf_stfusion.export.main import ExportConfig, export

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "export"))

import grpc_client  # noqa: E402
import rest_client  # noqa: E402

MIXED = ["S", "none", "ST", "S+ST", "none", "S+ST", "ST", "S"]


def _marked_frames(length, size=(36, 44)):
    """Frames whose pixels say their index: frame i has the value 5 * i everywhere."""
    return np.stack([np.full((*size, 3), 5 * i, np.uint8) for i in range(length)])


@pytest.fixture(scope="module")
def stride2_export(trained_run, tmp_path_factory):
    """The trained run, re-recorded as a stride-2, 2-view run (the weights do not care),
    exported with the served-accuracy check."""
    root = tmp_path_factory.mktemp("stride2")
    model_dir = root / "run"
    shutil.copytree(trained_run, model_dir)
    record = json.loads((model_dir / "run.json").read_text())
    record["config"]["data"].pop("frame_stride")
    record["config"]["data"]["stride"] = 2  # the key as runs recorded it before the rename: still read
    record["contract"]["frame_stride"] = 2
    (model_dir / "run.json").write_text(json.dumps(record))
    strategy = root / "mixed.json"
    stf.Strategy.from_units("tiny", MIXED).save(str(strategy))
    out = root / "out"
    report = export(ExportConfig(strategy_file=str(strategy), model_dir=str(model_dir), export_dir=str(out),
                                 check_serving=True), log=lambda *a: None)
    return out, report


def test_contract_is_recorded_by_the_run_and_carried_by_the_export(stride2_export):
    out, report = stride2_export
    contract = InputContract.from_dict(report["input_contract"])
    assert (contract.num_frames, contract.frame_stride, contract.eval_clips, contract.eval_size) == (8, 2, 2, 32)
    assert contract.sampler == "dense" and contract.class_names[0] == "move_right"
    assert InputContract.from_dict(contract.to_dict()) == contract  # round trip
    loaded = tf.saved_model.load(str(out / "stfusion" / "1"))
    from_model = client.contract_from_json(loaded.signatures["input_contract"]()["contract"].numpy())
    assert from_model == contract
    assert json.loads((out / "stfusion" / "1" / "assets.extra" / "input_contract.json").read_text()) == \
        contract.to_dict()
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(out / "stfusion.onnx")).metadata_props}
    assert client.contract_from_json(meta["input_contract"]) == contract
    with pytest.raises(ValueError, match="not a stfusion-contract/1 record"):
        InputContract.from_dict({"num_frames": 8})


def test_served_accuracy_check_equals_evaluation(stride2_export):
    _, report = stride2_export
    served = report["serving_check"]
    assert served["num_videos"] == 16 and served["signature"] == "serving_video"
    assert served["served_top1"] == served["evaluation_top1"] and served["same_answer"] == 1.0
    assert served["max_abs_diff_probabilities"] <= 1e-4
    assert report["parity"]["served_vs_evaluation"]["passed"]


def test_whole_video_signature_runs_the_evaluation_pipeline(stride2_export, tmp_path):
    """Encoded frames of videos of several lengths: the whole-video signature's scores
    equal the run's evaluation of the strategy (the evaluation pipeline on the same
    frames in a shard, the template in fixed mode)."""
    from tf_stfusion.evaluation import Evaluator

    out, report = stride2_export
    template = stf.build_template("tiny", num_classes=8, num_frames=8, input_size=32)
    tf.train.Checkpoint(model=template).restore(report["checkpoint"]).expect_partial()
    stf.apply_strategy(template, stf.Strategy.from_dict(report["strategy"]))
    model = LocalServing(str(out / "stfusion" / "1")).model
    rng = np.random.default_rng(0)
    path = str(tmp_path / "v.tfrecord")
    videos = {}
    with tf.io.TFRecordWriter(path) as writer:
        for length in (3, 8, 15, 16, 41):  # shorter than a clip, one clip, one strided clip, long
            frames = rng.integers(0, 256, (length, 36, 44, 3), dtype=np.uint8)
            example = make_sequence_example(f"len{length:03d}", 0, frames, 90)
            writer.write(example.SerializeToString())
            videos[f"len{length:03d}"] = [f.bytes_list.value[0] for f in
                                          example.feature_lists.feature_list["image/encoded"].feature]
    ids = sorted(videos)
    ds = pipeline.make_dataset([path], pipeline.ClipSpec(num_frames=8, frame_stride=2, eval_size=32, eval_clips=2),
                               training=False, batch_size=2, deterministic=True, video_index=ids)
    evaluated = Evaluator(template, 2).evaluate(lambda _: ds, len(ids)).probabilities[0]
    for i, video_id in enumerate(ids):
        served = model.signatures["serving_video"](frames=tf.constant(videos[video_id]))["probabilities"].numpy()
        np.testing.assert_allclose(served[0], evaluated[i], atol=1e-5)


@pytest.mark.parametrize("length", [3, 8, 15, 16, 41])
def test_client_indices_are_the_pipelines_frames(length, tmp_path):
    """The client's chosen frames (a JPEG frame folder read back) are the frames the
    evaluation pipeline reads from the same video in a shard (markers in the pixels)."""
    contract = InputContract(num_frames=8, frame_stride=2, sampler="dense", eval_clips=2, eval_size=32,
                             class_names=("a", "b"))
    frames = _marked_frames(length)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames):
        (folder / f"{i + 1:05d}.jpg").write_bytes(encode_jpeg(frame, 95))
    sent, indices = client.request_frames(str(folder), contract)
    assert len(sent) == 16 and indices.shape == (16,)
    path = str(tmp_path / "v.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(make_sequence_example("v", 0, frames, 95).SerializeToString())
    clips, _ = next(iter(pipeline.make_dataset([path], contract.clip_spec(), training=False, batch_size=1,
                                               deterministic=True)))
    pixels = (clips.numpy() * np.array(pipeline.IMAGENET_STD) + np.array(pipeline.IMAGENET_MEAN)) * 255.0
    read = np.round(pixels.reshape(16, -1).mean(axis=1) / 5).astype(int)
    np.testing.assert_array_equal(read, indices)
    if length < 15:
        assert len(set(indices.tolist())) < 16  # a short video loops


def test_sampled_clips_give_the_whole_video_answer_and_a_short_video_loops(stride2_export, tmp_path):
    out, report = stride2_export
    contract = InputContract.from_dict(report["input_contract"])
    model = LocalServing(str(out / "stfusion" / "1")).model
    rng = np.random.default_rng(3)
    for length in (3, 16, 41):
        frames = [encode_jpeg(f, 90) for f in rng.integers(0, 256, (length, 36, 44, 3), dtype=np.uint8)]
        whole = model.signatures["serving_video"](frames=tf.constant(frames))["probabilities"].numpy()
        chosen = [frames[i] for i in contract.frame_indices(length).ravel()]
        clips = model.signatures["serving_clips"](frames=tf.constant(chosen))["probabilities"].numpy()
        assert whole.shape == (1, 8)
        np.testing.assert_allclose(clips, whole, atol=1e-6)


@pytest.mark.parametrize("frames,message", [
    ([], "frames is empty"),
    (["jpeg", b"not an image", "jpeg"], r"frames\[i\] is not a JPEG or PNG image, i =\] \[1\]"),
    (["jpeg", "big", "jpeg"], "frames of different sizes"),
])
def test_bad_frames_give_a_clear_invalid_argument(stride2_export, frames, message):
    out, _ = stride2_export
    model = LocalServing(str(out / "stfusion" / "1")).model
    small, big = (encode_jpeg(np.zeros((h, 32, 3), np.uint8), 90) for h in (32, 40))
    frames = [{"jpeg": small, "big": big}.get(f, f) for f in frames]
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        model.signatures["serving_video"](frames=tf.constant(frames, tf.string))
    with pytest.raises(tf.errors.InvalidArgumentError, match="serving_clips takes exactly 16 frames"):
        model.signatures["serving_clips"](frames=tf.constant([small] * 3))
    # PNG frames are accepted too.
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(buf, format="PNG")
    assert model.signatures["serving_video"](frames=tf.constant([buf.getvalue()] * 2))["probabilities"].shape == (1, 8)


def test_warmup_records_parse_and_replay(stride2_export):
    from tensorflow_serving.apis import prediction_log_pb2

    out, _ = stride2_export
    version = out / "stfusion" / "1"
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in
            tf.data.TFRecordDataset(str(version / "assets.extra" / "tf_serving_warmup_requests"))]
    names = [log.predict_log.request.model_spec.signature_name for log in logs]
    assert sorted(names) == ["input_contract", "serving_clips", "serving_default", "serving_video"]
    server = LocalServing(str(version))
    for log in logs:
        response = server.grpc(log.predict_log.request)
        expected = {"input_contract": {"contract"}, "serving_default": {"probabilities", "top_k", "labels", "logits"}}
        assert set(response.outputs) == expected.get(log.predict_log.request.model_spec.signature_name,
                                                     {"probabilities", "top_k", "labels"})


def test_rest_and_grpc_clients_follow_the_contract(stride2_export, tmp_path):
    """The clients read the contract from the model, send only the sampled JPEG
    frames, and get the whole-video signature's answer; the REST request, decoded as
    TF Serving decodes b64 strings, holds exactly the contract's frames."""
    from tf_stfusion.data.video import write_video

    out, report = stride2_export
    contract = InputContract.from_dict(report["input_contract"])
    server = LocalServing(str(out / "stfusion" / "1"))
    _, frames, _ = synthetic.render_clip(synthetic.SyntheticConfig(num_frames=20, size=48), "val", 2)
    video = str(tmp_path / "clip.mp4")
    write_video(video, frames)
    bodies = []

    def recording(url, body):
        bodies.append(json.loads(body))
        return server.rest(body)

    top, size = rest_client.classify("http://localhost:8501/v1/models/stfusion", video, send=recording)
    assert bodies[0] == {"signature_name": "input_contract", "inputs": {}}
    assert bodies[1]["signature_name"] == "serving_clips" and len(bodies[1]["inputs"]["frames"]) == 16
    assert size == len(json.dumps(bodies[1]).encode())
    sent, _ = client.request_frames(video, contract)
    import base64

    assert [base64.b64decode(f["b64"]) for f in bodies[1]["inputs"]["frames"]] == sent
    whole, _ = rest_client.classify("http://x", video, whole_video=True, send=server.rest_transport)
    assert [label for _, label in top] == [label for _, label in whole]
    np.testing.assert_allclose([p for p, _ in top], [p for p, _ in whole], atol=1e-5)
    top_grpc, grpc_size = grpc_client.classify(server.grpc, "stfusion", video)
    assert [label for _, label in top_grpc] == [label for _, label in top]
    np.testing.assert_allclose([p for p, _ in top_grpc], [p for p, _ in top], atol=1e-6)
    assert 0 < grpc_size < size  # raw bytes in a proto, base64 in JSON


def test_rest_client_command_line_needs_no_sizes(stride2_export, tmp_path):
    """The command line itself, against a REST endpoint on loopback that answers
    through the stand-in (so the request really crosses HTTP)."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    out, _ = stride2_export
    server = LocalServing(str(out / "stfusion" / "1"))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path not in ("/v1/models/stfusion:predict", "/v1/models/stfusion/versions/1:predict"):
                self.send_error(404, f"no such path {self.path}")  # as TF Serving answers a wrong URL
                return
            reply = json.dumps(server.rest(body)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        from tf_stfusion.data.video import write_video

        _, frames, _ = synthetic.render_clip(synthetic.SyntheticConfig(num_frames=12, size=32), "val", 5)
        write_video(str(tmp_path / "clip.mp4"), frames)
        url = f"http://127.0.0.1:{httpd.server_port}/v1/models/stfusion"
        # TF Serving's predict URL as its documentation writes it (the bare model URL below).
        proc = subprocess.run([sys.executable, os.path.join(REPO, "export", "rest_client.py"),
                               f"--url={url}/versions/1:predict", f"--video={tmp_path}/clip.mp4"],
                              capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr[-2000:]
        lines = proc.stdout.strip().splitlines()
        assert lines[0].startswith("request: ") and lines[0].endswith(" bytes")
        assert len(lines) == 6 and all(line.split()[1] in synthetic.MOTION_CLASSES for line in lines[1:])
        proc = subprocess.run([sys.executable, os.path.join(REPO, "export", "rest_client.py"), f"--url={url}",
                               f"--video={tmp_path}/missing.mp4"], capture_output=True, text=True, timeout=180)
        assert proc.returncode == 2 and "missing" in proc.stderr and "Traceback" not in proc.stderr
    finally:
        httpd.shutdown()


def test_rest_client_takes_the_model_url_or_the_predict_url():
    base = "http://h:8501/v1/models/stfusion"
    for given, expected in ((base, base), (base + "/", base), (base + ":predict", base),
                            (base + "/versions/3:predict", base + "/versions/3"),
                            (base + "/labels/stable:predict", base + "/labels/stable")):
        assert rest_client.model_url(given) == expected
    with pytest.raises(ValueError, match="not :classify"):
        rest_client.model_url(base + ":classify")
    for wrong in ("http://h:8501", "http://h:8501/v1/stfusion", base + "/versions/x"):
        with pytest.raises(ValueError, match="not a TF Serving model URL"):
            rest_client.model_url(wrong)
