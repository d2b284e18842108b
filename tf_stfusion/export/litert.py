"""LiteRT (TFLite): the pruned network for phones and edge boxes, builtin ops only.

The converter and the runner live a floor down (``tf_stfusion.litert``), shared
with the search's int8 finalists; this module adds the export's file names and
metadata reader. ``convert`` writes the deploy graph (``deploy.deploy_model``: every
3D conv and pool as 2D ops, tensors kept as a batch of frames between temporal
convs) with the same function as the SavedModel's ``serving_default`` -- ``video``
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

import numpy as np

from tf_stfusion.latency import median_latency  # noqa: F401  (litert.median_latency: the export's timer)
from tf_stfusion.litert import (  # noqa: F401  (litert.convert, .Runner, ...: the export's names for them)
    METADATA_KEY,
    PRECISIONS,
    LiteRTError,
    Runner,
    builtin_ops,
    convert,
    convert_function,
    delegate_partitions,
    interpreter,
    op_counts,
    with_metadata,
)

QUANTIZATIONS = PRECISIONS[1:]  # --quantize
SUFFIX = {"float32": "", "float16": "_fp16", "int8": "_int8"}


def file_name(model_name, precision="float32"):
    return f"{model_name}{SUFFIX[precision]}.tflite"


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


def int8_ops(path_or_bytes):
    """``(ops computing in int8, all ops)`` counts of a file (ops with an int8 input)."""
    runner = interpreter(path_or_bytes, 1, delegates=False)
    kinds = {t["index"]: t["dtype"] for t in runner.get_tensor_details()}
    ops = runner._get_ops_details()
    quantized = sum(any(kinds.get(i) == np.int8 for i in op["inputs"] if i >= 0) for op in ops)
    return quantized, len(ops)


