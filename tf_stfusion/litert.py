"""LiteRT (TFLite) conversion of a pruned network, and a runner of the file.

The export writes these files (``export.litert``, ``export.writers``) and the
search scores its finalists in the shipping precision with them
(``stfusion-search --score_precision=int8``), so both use this one converter
path. ``convert`` writes the deploy graph (``deploy.deploy_model``: every 3D
conv and pool as 2D ops) with the same function as the SavedModel's
``serving_default`` (``deploy.clip_function``: ``video`` uint8 ``[1, T, S, S, 3]``,
normalisation inside, outputs ``probabilities``, ``top_k`` and ``logits``) in
one of three precisions:

* ``float32``: the reference, held to the exporter's parity tolerance;
* ``float16``: weights stored as float16 (half the file), computed in float32;
* ``int8``: post-training quantization of weights and activations, the ranges
  calibrated on uint8 clips of the run's own videos, the uint8 input and float
  outputs kept so that the file is a drop-in replacement (TF's post-training
  integer quantization: https://ai.google.dev/edge/litert/models/post_training_integer_quant).

Every file carries its input contract as the flatbuffer metadata entry
``input_contract``. Only LiteRT builtin ops are allowed: ``convert`` refuses
anything else (``builtin_ops`` lists a file's ops).
"""

import collections
import json
import os
import shutil
import tempfile
import threading
import warnings

import keras
import numpy as np
import tensorflow as tf

from tf_stfusion.data import pipeline
from tf_stfusion.deploy import clip_function, deploy_model
from tf_stfusion.runtimes import litert_interpreter

PRECISIONS = ("float32", "float16", "int8")
METADATA_KEY = "input_contract"


class LiteRTError(ValueError):
    pass


def convert(model, contract, precision="float32", calibration=None, top_k=5):
    """The ``.tflite`` bytes of ``model`` (a pruned Keras network) at ``precision``.
    ``calibration``: an iterable of uint8 clips ``[T, S, S, 3]`` (int8 only)."""
    if precision not in PRECISIONS:
        raise LiteRTError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    if precision == "int8" and calibration is None:
        raise LiteRTError("int8 quantization needs calibration clips")
    deployed = deploy_model(model)
    serve, signature = clip_function(deployed, contract, top_k, batch=1)
    representative = None
    if precision == "int8":
        clips = [np.asarray(c, np.uint8) for c in calibration]
        if not clips:
            raise LiteRTError("int8 quantization needs at least one calibration clip")
        representative = lambda: ({"video": clip[None]} for clip in clips)
    flat = convert_function(serve, [signature], deployed, precision, representative)
    return with_metadata(flat, {METADATA_KEY: json.dumps(contract.to_dict())})


def convert_function(fn, input_signature, tracked=None, precision="float32", representative=None):
    """The ``.tflite`` bytes of ``fn`` over tensors of ``input_signature`` (a list of
    named ``tf.TensorSpec``; they name the ``serving_default`` signature's inputs),
    builtin ops only -- the LiteRT file's converter path, also the latency table's
    for its parts. ``tracked``: the Keras network whose weights ``fn`` reads (frozen
    into the file); ``representative``: int8 only, a function returning an iterable
    of ``{input name: array}``. Raises ``LiteRTError`` naming the ops it cannot convert."""
    if precision not in PRECISIONS:
        raise LiteRTError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    work = tempfile.mkdtemp(prefix="stfusion-litert-")
    try:
        # Through a SavedModel written by Keras' ExportArchive: the converter then
        # freezes every variable (a bare concrete function keeps them as resources).
        archive = keras.export.ExportArchive()
        if tracked is not None:
            archive.track(tracked)
        archive.add_endpoint("serving_default", fn, input_signature=input_signature)
        archive.write_out(work, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(work)
        converter.target_spec.supported_ops = {tf.lite.OpsSet.TFLITE_BUILTINS}
        if precision == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif precision == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            # Builtin int8 kernels where they exist; an op without one (e.g. MEAN over
            # 4 axes) stays float -- still a builtin op.
            converter.target_spec.supported_ops = {tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                                   tf.lite.OpsSet.TFLITE_BUILTINS}
            converter.representative_dataset = representative
        try:
            with warnings.catch_warnings():  # TF's own calibrator still uses the deprecated tf.lite.Interpreter
                warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
                flat = converter.convert()
        except Exception as e:  # ConverterError: its last lines name the unsupported ops
            lines = [line.strip() for line in str(e).splitlines() if "op" in line and "error" in line.lower()]
            raise LiteRTError(f"{precision} conversion to LiteRT builtin ops failed: "
                              f"{(lines or [str(e)])[-1][:400]}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    bad = sorted(op for op in builtin_ops(flat) if op.startswith("Flex") or op in ("CUSTOM", "DELEGATE"))
    if bad:
        raise LiteRTError(f"{precision} LiteRT file needs non-builtin ops {bad}")
    return flat


def with_metadata(flat, entries):
    """``flat`` with ``entries`` ({name: str}) added to the flatbuffer's metadata."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flat))
    for name, text in entries.items():
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(text.encode(), np.uint8)
        model.buffers.append(buffer)
        meta = schema.MetadataT()
        meta.name, meta.buffer = name, len(model.buffers) - 1
        model.metadata = (model.metadata or []) + [meta]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def interpreter(path_or_bytes, num_threads=None, delegates=True):
    """A LiteRT interpreter (``ai_edge_litert``, XNNPACK on CPU) with tensors allocated
    (``runtimes.litert_interpreter``)."""
    return litert_interpreter(path_or_bytes, num_threads, delegates)


def builtin_ops(path_or_bytes):
    """The op names of a ``.tflite`` file, as written (no delegate applied)."""
    return set(op_counts(path_or_bytes))


def op_counts(path_or_bytes):
    """``{op name: count}`` of a ``.tflite`` file as written (no delegate applied)."""
    ops = interpreter(path_or_bytes, 1, delegates=False)._get_ops_details()
    return collections.Counter(op["op_name"] for op in ops)


def delegate_partitions(path_or_bytes, num_threads=None):
    """How many partitions XNNPACK (the default CPU delegate) takes a file in: its
    DELEGATE ops once applied (1: the whole graph in one)."""
    return sum(op["op_name"] == "DELEGATE" for op in interpreter(path_or_bytes, num_threads)._get_ops_details())


class Runner:
    """Batch-1 LiteRT signature runner: ``runner(clips)`` -> outputs of every clip."""

    def __init__(self, path_or_bytes, num_threads=None):
        self.interpreter = interpreter(path_or_bytes, num_threads)
        self.signature = self.interpreter.get_signature_runner("serving_default")
        self.num_classes = int(self.signature.get_output_details()["logits"]["shape"][-1])

    def __call__(self, clips):
        outs = [self.signature(video=np.asarray(clip, np.uint8)[None]) for clip in clips]
        return {name: np.concatenate([o[name] for o in outs]) for name in outs[0]}


class ClipModel:
    """A LiteRT file as a model of *normalised* clips, for ``evaluation.Evaluator``
    (``num_classes`` given): ``[N, T, S, S, 3]`` float32 -> logits ``[N, C]``.

    The evaluation pipeline normalises the unrounded cropped frames
    (``pipeline.views_to_clips``); undoing the normalisation and rounding gives
    back the uint8 clips a LiteRT client sends (``pipeline.uint8_clips``), so the
    file sees what it sees in service, and the Evaluator averages views and scores
    videos as it does for the float network."""

    def __init__(self, path_or_bytes, num_threads=None):
        self.runner = Runner(path_or_bytes, num_threads)
        # One interpreter, and LiteRT's interpreter is not thread-safe: TensorFlow may run two
        # numpy_function calls of a graph at once, so each call holds the interpreter alone.
        self._lock = threading.Lock()

    def _logits(self, clips):
        pixels = (clips * np.float32(pipeline.IMAGENET_STD) + np.float32(pipeline.IMAGENET_MEAN)) * 255.0
        video = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
        if not len(video):
            return np.zeros((0, self.runner.num_classes), np.float32)
        with self._lock:
            return self.runner(video)["logits"].astype(np.float32)

    def __call__(self, clips, training=False):
        del training  # a converted file has no training mode
        logits = tf.numpy_function(self._logits, [clips], tf.float32, stateful=True)
        return tf.ensure_shape(logits, [None, self.runner.num_classes])
