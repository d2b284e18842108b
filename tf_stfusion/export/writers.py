"""Writers of the pruned network: a TF Serving SavedModel and ONNX.

The SavedModel holds the serving functions of ``serving.make_signatures`` --
``serving_default`` (uint8 clips), ``serving_video`` (one video's encoded
frames, sampled in the graph as the run's evaluation samples), ``serving_clips``
(the encoded frames the contract selects) and ``input_contract`` -- with the
class names in a ``labels.txt`` asset (a lookup table turns top-k ids into
names), the contract also as ``assets.extra/input_contract.json``, and TF
Serving warm-up requests (``assets.extra/tf_serving_warmup_requests``: one
``PredictionLog`` per signature) so that the first real request does not pay
for graph warm-up. An ensemble (``serving.Ensemble`` with an ``EnsembleHead``)
also gets ``assets.extra/ensemble.json``: its members, temperature and threshold.

ONNX has no portable JPEG decoding: its file keeps the uint8 clip input of
``serving_default`` (``video`` -> ``probabilities``, ``top_k``) and carries the
class names (``class_names``) and the contract (``input_contract``) in its
metadata.
"""

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from tf_stfusion.data.video import encode_jpeg
from tf_stfusion.layers.group_conv import grouped_convs_split
from tf_stfusion.export import litert
from tf_stfusion.export.serving import clip_function, clip_shape, make_signatures
from tf_stfusion.runtimes import onnx_session

ONNX_OPSET = 17
WARMUP_FILE = "tf_serving_warmup_requests"
CONTRACT_FILE = "input_contract.json"
ENSEMBLE_FILE = "ensemble.json"  # an ensemble's members, temperature and threshold


def write_saved_model(model, contract, path, top_k=5, model_name="stfusion", head=None):
    """A SavedModel with every serving signature, laid out for TF Serving; with
    ``head`` (``serving.EnsembleHead``), of the ``serving.Ensemble`` ``model``."""
    tmp = tempfile.mkdtemp(prefix="stfusion-labels-")
    labels_file = os.path.join(tmp, "labels.txt")  # the asset keeps this name
    with open(labels_file, "w") as f:
        f.write("\n".join(contract.class_names) + "\n")
    try:
        # An Asset: the file is copied into <version>/assets/ and the table reads it from there.
        asset = tf.saved_model.Asset(labels_file)
        table = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(asset, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
                                          tf.string, tf.lookup.TextFileIndex.WHOLE_LINE),
            default_value="",
        )
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.track(table)
        archive.track(asset)  # saved with the archive: copied into <version>/assets/
        signatures = make_signatures(model, contract, lambda ids: table.lookup(tf.cast(ids, tf.int64)), top_k, head)
        for name, (fn, input_signature) in signatures.items():
            archive.add_endpoint(name, fn, input_signature=input_signature)
        archive.write_out(path, verbose=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    extra = os.path.join(path, "assets.extra")
    os.makedirs(extra, exist_ok=True)
    with open(os.path.join(extra, CONTRACT_FILE), "w") as f:
        json.dump(contract.to_dict(), f, indent=2)
    if head is not None:
        with open(os.path.join(extra, ENSEMBLE_FILE), "w") as f:
            json.dump(head.info, f, indent=2)
    write_warmup_requests(os.path.join(extra, WARMUP_FILE), contract, model_name)
    return path


def blank_jpeg(size):
    """A black ``size`` x ``size`` JPEG frame (warm-up requests)."""
    return encode_jpeg(np.zeros((size, size, 3), np.uint8))


def warmup_requests(contract, model_name):
    """One ``PredictRequest`` per signature, with inputs of the contract's shapes."""
    from tensorflow_serving.apis import predict_pb2

    frame = blank_jpeg(contract.eval_size)
    count = contract.eval_clips * contract.num_frames
    clip = np.zeros((1, *clip_shape(contract)), np.uint8)
    inputs = {"serving_default": {"video": tf.make_tensor_proto(clip)},
              "serving_video": {"frames": tf.make_tensor_proto([frame] * count, dtype=tf.string)},
              "serving_clips": {"frames": tf.make_tensor_proto([frame] * count, dtype=tf.string)},
              "input_contract": {}}
    requests = []
    for signature, tensors in inputs.items():
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = signature
        for name, proto in tensors.items():
            request.inputs[name].CopyFrom(proto)
        requests.append(request)
    return requests


def write_warmup_requests(path, contract, model_name):
    """``assets.extra/tf_serving_warmup_requests``: TFRecord of ``PredictionLog``s."""
    from tensorflow_serving.apis import prediction_log_pb2

    with tf.io.TFRecordWriter(path) as writer:
        for request in warmup_requests(contract, model_name):
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def write_onnx(model, contract, path, top_k=5):
    """ONNX (opset 17) of ``serving_default``, via tf2onnx; contract in the metadata."""
    import onnx

    fn, signature = clip_function(model, contract, top_k)
    model_proto = onnx_proto(fn, [signature], model)
    for key, value in (("class_names", json.dumps(list(contract.class_names))),
                       ("input_contract", json.dumps(contract.to_dict()))):
        meta = model_proto.metadata_props.add()
        meta.key, meta.value = key, value
    onnx.save(model_proto, path)
    return path


def onnx_proto(fn, input_signature, model):
    """The ONNX ``ModelProto`` (opset ``ONNX_OPSET``) of ``fn`` (a Python function of
    ``model`` over tensors of ``input_signature``, a list of ``tf.TensorSpec``), via
    tf2onnx -- the ONNX file's converter path, also the latency table's for its parts."""
    import tf2onnx

    serve = tf.function(fn, input_signature=input_signature)
    # tf2onnx cannot convert Keras' XLA grouped convolution (no model: a graph without layers).
    with grouped_convs_split(model) if model is not None else contextlib.nullcontext():
        proto, _ = tf2onnx.convert.from_function(serve, input_signature=serve.input_signature, opset=ONNX_OPSET)
    return proto


def load_saved_model(path):
    """``serving_default`` of the SavedModel at ``path``: uint8 clips -> numpy outputs."""
    signature = tf.saved_model.load(path).signatures["serving_default"]
    return lambda video: {k: v.numpy() for k, v in signature(video=tf.constant(video)).items()}


def load_onnx(path):
    """An ONNX Runtime session (CPU) of the file at ``path``: uint8 clips -> outputs."""
    session = onnx_session(path)
    names = [o.name for o in session.get_outputs()]
    video_input = session.get_inputs()[0].name
    return lambda video: dict(zip(names, session.run(None, {video_input: np.asarray(video, np.uint8)})))


@dataclasses.dataclass(frozen=True)
class Writer:
    """One export format: where it goes (relative to the export folder), how it is
    written and how it is loaded to run (parity check, latency, accuracy)."""

    relative_path: Callable  # (model_name, version) -> str
    write: Callable  # (model, contract, path, model_name) -> None
    load: Callable  # path -> (video uint8 -> {"probabilities", "top_k", "logits"}), for parity and latency
    parity: str  # the export report's name for its parity check


WRITERS = {
    "saved_model": Writer(
        relative_path=lambda name, version: os.path.join(name, str(version)),
        write=lambda model, contract, path, name: write_saved_model(model, contract, path, model_name=name),
        load=load_saved_model, parity="saved_model_vs_keras_pruned"),
    "onnx": Writer(
        relative_path=lambda name, version: f"{name}.onnx",
        write=lambda model, contract, path, name: write_onnx(model, contract, path),
        load=load_onnx, parity="onnx_runtime_vs_keras_pruned"),
    "tflite": Writer(
        relative_path=lambda name, version: litert.file_name(name),
        write=lambda model, contract, path, name: write_tflite(model, contract, path),
        load=litert.Runner, parity="litert_float32_vs_keras_pruned"),
}


def write_tflite(model, contract, path, precision="float32", calibration=None):
    """A LiteRT file of the deploy graph (``litert.convert``), builtin ops only."""
    with open(path, "wb") as f:
        f.write(litert.convert(model, contract, precision, calibration))
    return path
