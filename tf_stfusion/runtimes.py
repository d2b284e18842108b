"""Converted files in their runtimes, without TensorFlow: ONNX Runtime sessions and
LiteRT interpreters, as the export's checks, the latency tables and a device's
timing of exported parts (``latency_device``) load them.

Imports only numpy and the runtime's own package (``onnxruntime``,
``ai_edge_litert``), each when first needed, so that a device with nothing but
its runtime can time a network's parts.
"""

import os


def onnx_session(path_or_bytes):
    """An ONNX Runtime CPU session of a file (path or serialized bytes), default
    session options: the export's latency check and the latency table's timing."""
    import onnxruntime as ort

    return ort.InferenceSession(path_or_bytes, providers=["CPUExecutionProvider"])


def litert_interpreter(path_or_bytes, num_threads=None, delegates=True):
    """A LiteRT interpreter (``ai_edge_litert``, XNNPACK on CPU) of a ``.tflite``
    file (path or bytes) with ``num_threads`` (default: every CPU) and tensors
    allocated; ``delegates=False``: builtin kernels only (the file as written)."""
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


PACKAGES = {"onnxruntime": "onnxruntime", "litert": "ai-edge-litert"}  # each runtime's pip package


def version(runtime):
    """The installed version of ``runtime`` (``onnxruntime`` or ``litert``)."""
    if runtime == "onnxruntime":
        import onnxruntime

        return onnxruntime.__version__
    from importlib.metadata import version as installed

    return installed(PACKAGES["litert"])


def load_part(runtime, path_or_bytes, input_names):
    """A callable running a converted part (``onnxruntime``: an ``.onnx`` file;
    ``litert``: a ``.tflite`` file with a ``serving_default`` signature) on a list
    of numpy inputs in the order of ``input_names``: what a latency table times."""
    if runtime == "onnxruntime":
        session = onnx_session(path_or_bytes)
        names = [i.name for i in session.get_inputs()]
        return lambda feeds: session.run(None, dict(zip(names, feeds)))
    signature = litert_interpreter(path_or_bytes).get_signature_runner("serving_default")
    return lambda feeds: signature(**dict(zip(input_names, feeds)))
