"""What a serving client sends: the run's input contract, followed with the
package's own functions (no re-written sampling, resizing or encoding).

The clients in the repository's ``export/`` folder (REST, gRPC, ONNX Runtime,
LiteRT) are thin command lines over these:

* ``contract_from_json``: the ``InputContract`` a model carries (the
  ``input_contract`` signature, the ONNX metadata, the export report);
* ``request_frames``: a video file decoded as ``prepare`` decodes it (as a
  player shows it, resampled to the contract's ``fps``, short side to its
  ``frame_short_side``), the frames evaluation would read
  (``InputContract.frame_indices``, i.e. the pipeline's clip sampler), JPEG-encoded
  as ``prepare`` stores them -- or every frame with ``whole_video``;
* ``rest_body`` / ``grpc_request``: TF Serving's REST JSON (``{"b64": ...}``
  strings) and gRPC ``PredictRequest`` (a ``DT_STRING`` tensor) for a signature;
* ``contract_clips``: uint8 clips ``[eval_clips, T, S, S, 3]`` resized and
  cropped by the pipeline's evaluation functions, for runtimes without JPEG
  decoding (ONNX Runtime, LiteRT); their scores are averaged over the views.
"""

import base64
import json
import sys

import numpy as np
from absl import flags

# TensorFlow (data.pipeline, serving protos) is imported where used: the command
# lines over this module check their flags before it starts (configs.run_app).

CONTRACT_SIGNATURE = "input_contract"
CLIPS_SIGNATURE = "serving_clips"
VIDEO_SIGNATURE = "serving_video"


def contract_from_json(text, where="input contract"):
    """An ``InputContract`` from its JSON text (str or bytes)."""
    from tf_stfusion.data.pipeline import InputContract

    if isinstance(text, bytes):
        text = text.decode()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not JSON ({e.msg})") from None
    return InputContract.from_dict(data, where)


def decode_video(path, contract):
    """All frames ``[N, H, W, 3]`` of a video file as ``prepare`` stored them: the
    package's one decoder (``data.video.iter_frames``: display matrix, frame-size
    changes, damaged packets), resampled to the contract's ``fps`` and resized to
    its ``frame_short_side``."""
    from tf_stfusion.data.video import decode

    return decode(path, short_side=contract.frame_short_side or None, fps=contract.fps or None)


def request_frames(path, contract, whole_video=False):
    """``(JPEG bytes per frame, frame indices)`` to send for the video at ``path``:
    the contract's frames in view order, or every frame (``whole_video``)."""
    from tf_stfusion.data.video import encode_jpeg

    frames = decode_video(path, contract)
    indices = np.arange(len(frames)) if whole_video else contract.frame_indices(len(frames)).ravel()
    return [encode_jpeg(frames[i], contract.jpeg_quality) for i in indices], indices


def rest_body(frames, signature):
    """TF Serving REST ``:predict`` body (columnar ``inputs``; binary as ``{"b64": ...}``)."""
    encoded = [{"b64": base64.b64encode(f).decode("ascii")} for f in frames]
    return json.dumps({"signature_name": signature, "inputs": {"frames": encoded}}).encode()


def rest_contract_body():
    return json.dumps({"signature_name": CONTRACT_SIGNATURE, "inputs": {}}).encode()


def grpc_request(frames, model_name, signature):
    """A ``PredictRequest`` with ``frames`` as a ``DT_STRING`` tensor (or none, for the contract)."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    if frames is not None:
        request.inputs["frames"].CopyFrom(tf.make_tensor_proto(list(frames), dtype=tf.string))
    return request


def contract_clips(path, contract):
    """uint8 clips ``[eval_clips, T, S, S, 3]`` of a video: the contract's frames,
    resized and centre-cropped by the pipeline's evaluation functions (rounded)."""
    import tensorflow as tf

    from tf_stfusion.data.pipeline import uint8_clips

    frames = decode_video(path, contract)
    chosen = frames[contract.frame_indices(len(frames)).ravel()]
    return uint8_clips(tf.constant(chosen), contract.clip_spec()).numpy()


def top_classes(probabilities, class_names, k=5):
    """``[(probability, class name)]``, best first."""
    probabilities = np.asarray(probabilities).ravel()
    order = np.argsort(-probabilities)[:k]
    return [(float(probabilities[i]), class_names[i]) for i in order]


def define_clip_flags(threads=False, flag_values=flags.FLAGS):
    """``--model``, ``--video`` (and ``--num_threads``): the flags of the clip-runtime clients."""
    flags.DEFINE_string("model", None, "The exported model file.", required=True, flag_values=flag_values)
    flags.DEFINE_string("video", None, "The video to classify.", required=True, flag_values=flag_values)
    if threads:
        flags.DEFINE_integer("num_threads", None, "CPU threads (default: all).", flag_values=flag_values)


def classify_main(classify, values=flags.FLAGS, threads=False):
    """The clip-runtime clients' main (``export/onnx_client.py``, ``export/litert_client.py``):
    ``classify(values.model, values.video[, num_threads=...])`` -> top classes, printed one per
    line; returns the exit code (a bad file: one ``error:`` line and 2)."""
    from tf_stfusion.data.video import VideoError

    options = {"num_threads": values.num_threads} if threads else {}
    try:
        top = classify(values.model, values.video, **options)
    except (VideoError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for probability, label in top:
        print(f"{probability:.4f}  {label}")
    return 0


def run_clip_client(classify, threads=False):
    """A clip-runtime client's command line (``configs.run_app``: a bad flag is one line, exit 2)."""
    from tf_stfusion.configs import run_app

    run_app(lambda argv: classify_main(classify, threads=threads), lambda: define_clip_flags(threads))
