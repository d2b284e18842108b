"""The latency table's runtimes besides TensorFlow: a part converted as the file is.

``tf_stfusion.latency`` times a network's parts (sub-networks, the input step,
an empty call) through a runtime's ``compile(fn, input_signature, model)``
(``latency.TensorFlowRuntime`` says what a runtime has). Here:

* ``ONNXRuntime``: the part through ``writers.onnx_proto`` (tf2onnx, opset
  ``writers.ONNX_OPSET``, grouped convolutions split, as ``write_onnx``), run in
  an ``onnxruntime`` CPU session with default options (``runtimes.onnx_session``,
  as the export's latency check loads the ONNX file);
* ``LiteRTRuntime``: the part's deploy graph (``deploy.deploy_model``: 3D ops as
  2D ones, as ``litert.convert``) through ``litert.convert_function`` (builtin
  ops only), run by the ``serving_default`` signature of an ``ai_edge_litert``
  interpreter with ``os.cpu_count()`` threads and XNNPACK (``runtimes.litert_interpreter``,
  as ``litert.Runner``). float32 only.

Converting needs TensorFlow (and tf2onnx); the timed calls are the runtime's alone
(``runtimes``), so the converted parts can be written here and timed on a device
that has only the runtime (``latency.export_parts``, ``latency_device``).
"""

from tf_stfusion import runtimes
from tf_stfusion.deploy import deploy_model
from tf_stfusion.export import litert, writers
from tf_stfusion.latency import RUNTIMES, TensorFlowRuntime


class _Converted:
    """A runtime whose parts are converted to a file (``convert``: bytes, needs
    TensorFlow) and loaded by the runtime alone (``runtimes.load_part``): the
    table is timed here, or the files are written for a device
    (``latency.export_parts``) and timed there (``latency_device``). Its calls
    take the numpy inputs themselves (the session or signature runner copies
    them in): nothing to prepare before timing."""

    extension = ""

    def prepare(self, feeds):
        return feeds

    @property
    def version(self):
        return runtimes.version(self.name)

    def compile(self, fn, input_signature, model=None):
        names = [spec.name for spec in input_signature]
        return runtimes.load_part(self.name, self.convert(fn, input_signature, model), names)


class ONNXRuntime(_Converted):
    """ONNX Runtime (CPU): parts converted by tf2onnx as ``writers.write_onnx`` converts."""

    name, precision, extension = "onnxruntime", "float32", ".onnx"
    method = (f"each part converted by tf2onnx (opset {writers.ONNX_OPSET}) as the ONNX file is, run in an "
              "onnxruntime CPU session with default options (the export's)")

    def convert(self, fn, input_signature, model=None):
        return writers.onnx_proto(lambda *xs: fn(model, *xs), input_signature, model).SerializeToString()


class LiteRTRuntime(_Converted):
    """LiteRT (XNNPACK on CPU): parts' deploy graphs converted as ``litert.convert`` converts."""

    name, precision, extension = "litert", "float32", ".tflite"
    method = ("each part's deploy graph (3D ops as 2D) converted by the LiteRT converter, builtin ops only, as "
              "the .tflite file is, run by its serving_default signature (ai_edge_litert, XNNPACK, all CPU threads)")

    def convert(self, fn, input_signature, model=None):
        deployed = deploy_model(model) if model is not None else None
        return litert.convert_function(lambda *xs: fn(deployed, *xs), input_signature, deployed)


def runtime(name):
    """The runtime object of ``name`` (one of ``latency.RUNTIMES``); one-line ``ValueError`` else."""
    known = {"tensorflow": TensorFlowRuntime, "onnxruntime": ONNXRuntime, "litert": LiteRTRuntime}
    if name not in RUNTIMES:
        raise ValueError(f"runtime {name!r} has no latency tables; expected one of {RUNTIMES}")
    return known[name]()
