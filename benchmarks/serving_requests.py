"""Serving requests: their size, and whether a served video gets evaluation's answer.

    python benchmarks/serving_requests.py                                # request sizes only
    python benchmarks/serving_requests.py --export_dir=/tmp/models --model_dir=runs/demo

1. Request bytes (REST JSON and gRPC) for one video under two input contracts:
   the demo's (8 frames, stride 2, 2 views, 48 px, from the synthetic set) and
   the K400 recipe's (16 frames, stride 2, 2 views, 256 px, frames stored with
   short side 256) for a 10-second 320x240 25-fps video: raw uint8 clips as JSON
   numbers (what the old client sent), the sampled-clips request
   (``serving_clips``: the contract's frames as base64 JPEG) and the whole-video
   request (``serving_video``: every frame).
2. With ``--export_dir`` (a ``stfusion-export --check_serving`` of ``--model_dir``):
   every validation video of the run written as an H.264 mp4, classified by the
   REST client (``export/rest_client.py``, no size flags) against the exported
   SavedModel (TF Serving's REST decoding, in process: no TF Serving binary
   here), compared with the run's evaluation sampling of the same strategy on
   the stored frames; plus the export report's served top-1 vs evaluation top-1.
"""

import json
import os
import sys
import tempfile

from machine import machine_line  # benchmarks/machine.py

import tf_stfusion  # noqa: F401  (first: TensorFlow's environment defaults, see tf_stfusion/__init__.py)

from absl import app, flags, logging

flags.DEFINE_string("export_dir", None, "An export made with --check_serving (optional).")
flags.DEFINE_string("model_dir", "runs/demo", "The run that export came from.")
FLAGS = flags.FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def k400_like_video(path, seconds=10, fps=25, width=320, height=240):
    """A textured, moving 320x240 video (the synthetic renderer, cropped)."""
    from tf_stfusion.data import synthetic
    from tf_stfusion.data.video import write_video

    config = synthetic.SyntheticConfig(num_frames=seconds * fps, size=width)
    _, frames, _ = synthetic.render_clip(config, "val", 0)
    top = (width - height) // 2
    write_video(path, frames[:, top:top + height], fps=fps)
    return path


def request_sizes(video, contract):
    """Bytes of the three REST requests and the two gRPC ones for ``video``."""
    import numpy as np

    from tf_stfusion.export import client

    clips = client.contract_clips(video, contract)  # the uint8 views serving_default takes
    raw_json = len(json.dumps({"signature_name": "serving_default", "inputs": {"video": clips.tolist()}}).encode())
    sampled, _ = client.request_frames(video, contract)
    whole, _ = client.request_frames(video, contract, whole_video=True)
    return {
        "frames in video": len(whole),
        "raw uint8 JSON (serving_default)": raw_json,
        "sampled clips, REST (serving_clips)": len(client.rest_body(sampled, client.CLIPS_SIGNATURE)),
        "whole video, REST (serving_video)": len(client.rest_body(whole, client.VIDEO_SIGNATURE)),
        "sampled clips, gRPC": client.grpc_request(sampled, "m", client.CLIPS_SIGNATURE).ByteSize(),
        "raw uint8, gRPC": int(np.asarray(clips).nbytes),
    }


def print_sizes(name, sizes):
    print(f"\n{name}: {sizes['frames in video']} frames in the video")
    raw = sizes["raw uint8 JSON (serving_default)"]
    for key, value in sizes.items():
        if key != "frames in video":
            print(f"  {key:<38} {value / 1e6:9.3f} MB  ({raw / value:6.1f}x smaller than raw JSON)")


def served_agreement(export_dir, model_dir):
    """REST client on mp4s of the run's validation videos vs evaluation sampling."""
    import numpy as np
    import tensorflow as tf

    sys.path.insert(0, os.path.join(REPO, "export"))
    import rest_client

    import tf_stfusion as stf
    from tf_stfusion.data import pipeline
    from tf_stfusion.data.video import write_video
    from tf_stfusion.evaluation import Evaluator
    from tf_stfusion.export.local_server import LocalServing
    from tf_stfusion.run.folder import RunFolder
    from tf_stfusion.run.inputs import open_inputs

    with open(os.path.join(export_dir, "export_report.json")) as f:
        report = json.load(f)
    contract = pipeline.InputContract.from_dict(report["input_contract"])
    run = RunFolder(model_dir).config()
    source = open_inputs(run).source
    ids = sorted(v for v, _ in source.val_examples)
    template = stf.build_template(run.backbone, num_classes=len(contract.class_names),
                                  num_frames=contract.num_frames, input_size=contract.eval_size)
    tf.train.Checkpoint(model=template).restore(report["checkpoint"]).expect_partial()
    stf.apply_strategy(template, stf.Strategy.from_dict(report["strategy"]))
    dataset = pipeline.make_dataset(source.val_files, contract.clip_spec(), training=False, batch_size=8,
                                    deterministic=True, video_index=ids)
    evaluation = Evaluator(template, contract.eval_clips).evaluate(lambda _: dataset, len(ids))
    evaluated = evaluation.probabilities[0].argmax(axis=1)
    server = LocalServing(os.path.join(export_dir, report["files"]["saved_model"]))
    agree, sizes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for serialized in tf.data.TFRecordDataset(source.val_files):
            encoded, _, media_id = pipeline.parse_example(serialized)
            frames = np.stack([tf.io.decode_jpeg(b).numpy() for b in encoded.numpy()])
            path = os.path.join(tmp, "v.mp4")
            write_video(path, frames[:, : frames.shape[1] // 2 * 2, : frames.shape[2] // 2 * 2])
            top, size = rest_client.classify("http://localhost:8501/v1/models/stfusion", path,
                                             send=server.rest_transport)
            agree.append(top[0][1] == contract.class_names[evaluated[ids.index(media_id.numpy().decode())]])
            sizes.append(size)
    return float(np.mean(agree)), len(agree), float(np.median(sizes)), report.get("serving_check")


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)
    import tensorflow as tf

    from tf_stfusion.data.pipeline import InputContract

    print(machine_line(TensorFlow=tf.__version__))
    demo = InputContract(num_frames=8, frame_stride=2, sampler="dense", eval_clips=2, eval_size=48,
                         class_names=tuple("abcdefgh"))
    k400 = InputContract(num_frames=16, frame_stride=2, sampler="dense", eval_clips=2, eval_size=256,
                         class_names=tuple(str(i) for i in range(400)), frame_short_side=256)
    with tempfile.TemporaryDirectory() as tmp:
        from tf_stfusion.data import synthetic
        from tf_stfusion.data.video import write_video

        demo_video = os.path.join(tmp, "demo.mp4")
        write_video(demo_video, synthetic.render_clip(synthetic.SyntheticConfig(num_frames=16, size=64),
                                                      "val", 0)[1])
        print_sizes("demo contract (8 frames, stride 2, 2 views, 48 px; a 16-frame 64x64 synthetic video)",
                    request_sizes(demo_video, demo))
        print_sizes("K400 contract (16 frames, stride 2, 2 views, 256 px; a 10-s 320x240 25-fps video)",
                    request_sizes(k400_like_video(os.path.join(tmp, "k400.mp4")), k400))
    if FLAGS.export_dir:
        rate, n, median, check = served_agreement(FLAGS.export_dir, FLAGS.model_dir)
        print(f"\nREST client on {n} validation videos as mp4 (median request {median / 1e3:.1f} kB): same top-1 "
              f"class as evaluation sampling for {100 * rate:.1f}% of the videos")
        if check:
            print(f"export --check_serving on {check['split']} ({check['num_videos']} videos, stored JPEG frames "
                  f"through serving_video): served top-1 {100 * check['served_top1']:.2f}%, evaluation top-1 "
                  f"{100 * check['evaluation_top1']:.2f}%, largest per-video probability difference "
                  f"{check['max_abs_diff_probabilities']:.2e}")


if __name__ == "__main__":
    app.run(main)
