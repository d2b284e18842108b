"""LiteRT (TFLite): the pruned network for phones and edge boxes, builtin ops only.

``convert`` writes the deploy graph (``deploy.deploy_model``: every 3D conv and
pool as 2D ops, tensors kept as a batch of frames between temporal convs)
with the same function as the SavedModel's ``serving_default`` -- ``video``
uint8 ``[1, T, S, S, 3]``, normalisation inside, outputs ``probabilities`` and
``top_k`` -- in one of three precisions:

* ``float32``: the reference, held to the exporter's parity tolerance;
* ``float16``: weights stored as float16 (half the file), computed in float32;
* ``int8``: post-training quantization of weights and activations, the ranges
  calibrated on clips of the run's own videos (``calibration_clips``), the uint8
  input and float outputs kept so that the file is a drop-in replacement.

Every file carries its input contract (class names included) as the flatbuffer
metadata entry ``input_contract``, like the ONNX file. Only LiteRT builtin ops
are allowed (no Select TF ops, no custom ops): ``builtin_ops`` lists a file's
ops and ``convert`` refuses anything else.
"""

import collections
import json
import os
import shutil
import tempfile
import warnings

import keras
import numpy as np
import tensorflow as tf

from tf_stfusion.export.deploy import deploy_model
from tf_stfusion.export.serving import clip_function
from tf_stfusion.latency import median_latency  # noqa: F401  (litert.median_latency: the export's timer)

PRECISIONS = ("float32", "float16", "int8")
QUANTIZATIONS = PRECISIONS[1:]  # --quantize
METADATA_KEY = "input_contract"
SUFFIX = {"float32": "", "float16": "_fp16", "int8": "_int8"}


class LiteRTError(ValueError):
    pass


def file_name(model_name, precision="float32"):
    return f"{model_name}{SUFFIX[precision]}.tflite"


def convert(model, contract, precision="float32", calibration=None, top_k=5):
    """The ``.tflite`` bytes of ``model`` (a pruned Keras network) at ``precision``.
    ``calibration``: an iterable of uint8 clips ``[T, S, S, 3]`` (int8 only)."""
    if precision not in PRECISIONS:
        raise LiteRTError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    if precision == "int8" and calibration is None:
        raise LiteRTError("int8 quantization needs calibration clips")
    deployed = deploy_model(model)
    serve, signature = clip_function(deployed, contract, top_k, batch=1)
    work = tempfile.mkdtemp(prefix="stfusion-litert-")
    try:
        # Through a SavedModel written by Keras' ExportArchive: the converter then
        # freezes every variable (a bare concrete function keeps them as resources).
        archive = keras.export.ExportArchive()
        archive.track(deployed)
        archive.add_endpoint("serving_default", serve, input_signature=[signature])
        archive.write_out(work, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(work)
        converter.target_spec.supported_ops = {tf.lite.OpsSet.TFLITE_BUILTINS}
        if precision == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif precision == "int8":
            clips = [np.asarray(c, np.uint8) for c in calibration]
            if not clips:
                raise LiteRTError("int8 quantization needs at least one calibration clip")
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            # Builtin int8 kernels where they exist; an op without one (e.g. MEAN over
            # 4 axes) stays float -- still a builtin op.
            converter.target_spec.supported_ops = {tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                                   tf.lite.OpsSet.TFLITE_BUILTINS}
            converter.representative_dataset = lambda: ({"video": clip[None]} for clip in clips)
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
    flat = with_metadata(flat, {METADATA_KEY: json.dumps(contract.to_dict())})
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


def read_metadata(path_or_bytes, name=METADATA_KEY):
    """The text of the metadata entry ``name`` of a ``.tflite`` file (None if absent)."""
    from tensorflow.lite.tools import flatbuffer_utils

    try:
        if isinstance(path_or_bytes, (bytes, bytearray)):
            model = flatbuffer_utils.read_model_from_bytearray(bytearray(path_or_bytes))
        else:
            with open(path_or_bytes, "rb") as f:
                model = flatbuffer_utils.read_model_from_bytearray(bytearray(f.read()))
    except OSError as e:
        raise LiteRTError(f"{path_or_bytes}: cannot read ({e.strerror})") from None
    except Exception:  # the flatbuffer parser's errors are of many kinds
        raise LiteRTError(f"{'the model' if isinstance(path_or_bytes, (bytes, bytearray)) else path_or_bytes}: "
                          "not a LiteRT (.tflite) file") from None
    for meta in model.metadata or []:
        if meta.name.decode() == name:
            return bytes(model.buffers[meta.buffer].data).decode()
    return None


def interpreter(path_or_bytes, num_threads=None, delegates=True):
    """A LiteRT interpreter (``ai_edge_litert``, XNNPACK on CPU) with tensors allocated."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kwargs = {"num_threads": num_threads or os.cpu_count()}
    if not delegates:
        kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    if isinstance(path_or_bytes, (bytes, bytearray)):
        kwargs["model_content"] = bytes(path_or_bytes)
    else:
        kwargs["model_path"] = path_or_bytes
    runner = Interpreter(**kwargs)
    runner.allocate_tensors()
    return runner


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


def int8_ops(path_or_bytes):
    """``(ops computing in int8, all ops)`` counts of a file (ops with an int8 input)."""
    runner = interpreter(path_or_bytes, 1, delegates=False)
    kinds = {t["index"]: t["dtype"] for t in runner.get_tensor_details()}
    ops = runner._get_ops_details()
    quantized = sum(any(kinds.get(i) == np.int8 for i in op["inputs"] if i >= 0) for op in ops)
    return quantized, len(ops)


class Runner:
    """Batch-1 LiteRT signature runner: ``runner(clips)`` -> outputs of every clip."""

    def __init__(self, path_or_bytes, num_threads=None):
        self.interpreter = interpreter(path_or_bytes, num_threads)
        self.signature = self.interpreter.get_signature_runner("serving_default")

    def __call__(self, clips):
        outs = [self.signature(video=np.asarray(clip, np.uint8)[None]) for clip in clips]
        return {name: np.concatenate([o[name] for o in outs]) for name in outs[0]}
