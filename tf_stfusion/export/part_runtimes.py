"""The latency table's runtimes besides TensorFlow: a part converted as the file is.

``tf_stfusion.latency`` times a network's parts (sub-networks, the input step,
an empty call) through a runtime's ``compile(fn, input_signature, model)``
(``latency.TensorFlowRuntime`` says what a runtime has). Here:

* ``ONNXRuntime``: the part through ``writers.onnx_proto`` (tf2onnx, opset
  ``writers.ONNX_OPSET``, grouped convolutions split, as ``write_onnx``), run in
  an ``onnxruntime`` CPU session with default options (``writers.onnx_session``,
  as the export's latency check loads the ONNX file);
* ``LiteRTRuntime``: the part's deploy graph (``deploy.deploy_model``: 3D ops as
  2D ones, as ``litert.convert``) through ``litert.convert_function`` (builtin
  ops only), run by the ``serving_default`` signature of an ``ai_edge_litert``
  interpreter with ``os.cpu_count()`` threads and XNNPACK (``litert.interpreter``,
  as ``litert.Runner``). float32 only.

Converting needs TensorFlow (and tf2onnx); the timed calls are the runtime's alone.
"""

from tf_stfusion.deploy import deploy_model
from tf_stfusion.export import litert, writers
from tf_stfusion.latency import RUNTIMES, TensorFlowRuntime


class _NumpyFed:
    """A runtime whose compiled call takes the numpy inputs themselves (its session or
    signature runner copies them in): nothing to prepare before timing."""

    def prepare(self, feeds):
        return feeds


class ONNXRuntime(_NumpyFed):
    """ONNX Runtime (CPU): parts converted by tf2onnx as ``writers.write_onnx`` converts."""

    name, precision = "onnxruntime", "float32"
    method = (f"each part converted by tf2onnx (opset {writers.ONNX_OPSET}) as the ONNX file is, run in an "
              "onnxruntime CPU session with default options (the export's)")

    @property
    def version(self):
        import onnxruntime

        return onnxruntime.__version__

    def compile(self, fn, input_signature, model=None):
        proto = writers.onnx_proto(lambda *xs: fn(model, *xs), input_signature, model)
        session = writers.onnx_session(proto.SerializeToString())
        names = [i.name for i in session.get_inputs()]
        return lambda feeds: session.run(None, dict(zip(names, feeds)))


class LiteRTRuntime(_NumpyFed):
    """LiteRT (XNNPACK on CPU): parts' deploy graphs converted as ``litert.convert`` converts."""

    name, precision = "litert", "float32"
    method = ("each part's deploy graph (3D ops as 2D) converted by the LiteRT converter, builtin ops only, as "
              "the .tflite file is, run by its serving_default signature (ai_edge_litert, XNNPACK, all CPU threads)")

    @property
    def version(self):
        from importlib.metadata import version

        return version("ai-edge-litert")

    def compile(self, fn, input_signature, model=None):
        deployed = deploy_model(model) if model is not None else None
        flat = litert.convert_function(lambda *xs: fn(deployed, *xs), input_signature, deployed)
        signature = litert.interpreter(flat).get_signature_runner("serving_default")
        names = [spec.name for spec in input_signature]
        return lambda feeds: signature(**dict(zip(names, feeds)))


def runtime(name):
    """The runtime object of ``name`` (one of ``latency.RUNTIMES``); one-line ``ValueError`` else."""
    known = {"tensorflow": TensorFlowRuntime, "onnxruntime": ONNXRuntime, "litert": LiteRTRuntime}
    if name not in RUNTIMES:
        raise ValueError(f"runtime {name!r} has no latency tables; expected one of {RUNTIMES}")
    return known[name]()
