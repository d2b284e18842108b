"""A stand-in for TF Serving: answers REST bodies and gRPC ``PredictRequest``s
with a loaded SavedModel, decoding them the way TF Serving's documentation
defines, so that the clients and the served-accuracy check run here, where no
TF Serving binary can be installed.

* REST (``/v1/models/<name>:predict``, columnar ``"inputs"``): a JSON object
  ``{"b64": "..."}`` is a binary string, anything else a (nested) list of
  numbers; the response is ``{"outputs": {name: value}}``, or
  ``{"outputs": value}`` when the signature has a single output. String outputs
  come back as text. (TF Serving REST API, "Request format", "Encoding binary
  values".)
* gRPC (``PredictionService.Predict``): every input through
  ``tf.make_ndarray``; outputs as ``tf.make_tensor_proto``.
"""

import json

import numpy as np
import tensorflow as tf


def _rest_value(value):
    if isinstance(value, dict):
        if set(value) != {"b64"}:
            raise ValueError(f"a JSON object in a REST tensor must be {{\"b64\": ...}}, got keys {sorted(value)}")
        import base64

        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return [_rest_value(v) for v in value]
    return value


def _json_output(array):
    array = np.asarray(array)
    if array.dtype.kind in "SO":
        return np.vectorize(lambda b: b.decode() if isinstance(b, bytes) else b, otypes=[object])(array).tolist()
    return array.tolist()


class LocalServing:
    """One SavedModel version folder, served in-process."""

    def __init__(self, path):
        self.path = path
        self.model = tf.saved_model.load(path)

    def _call(self, signature, inputs):
        if signature not in self.model.signatures:
            raise ValueError(f"signature {signature!r} not found; the model has {sorted(self.model.signatures)}")
        fn = self.model.signatures[signature]
        specs = fn.structured_input_signature[1]
        missing = set(specs) - set(inputs)
        if missing or set(inputs) - set(specs):
            raise ValueError(f"signature {signature!r} takes inputs {sorted(specs)}, got {sorted(inputs)}")
        feeds = {name: tf.constant(np.asarray(value, dtype=object if specs[name].dtype == tf.string else None),
                                   dtype=specs[name].dtype) for name, value in inputs.items()}
        return {name: value.numpy() for name, value in fn(**feeds).items()}

    def rest(self, body):
        """A REST ``:predict`` request body (bytes or str) -> the response dict."""
        request = json.loads(body)
        if "inputs" not in request:
            raise ValueError("this stand-in takes the columnar format: a JSON object with 'inputs'")
        inputs = request["inputs"]
        if not isinstance(inputs, dict):
            raise ValueError("'inputs' must be an object of named tensors")
        outputs = self._call(request.get("signature_name", "serving_default"),
                             {name: _rest_value(value) for name, value in inputs.items()})
        if len(outputs) == 1:
            return {"outputs": _json_output(next(iter(outputs.values())))}
        return {"outputs": {name: _json_output(value) for name, value in outputs.items()}}

    def rest_transport(self, url, body):
        """``send(url, body)`` for ``export/rest_client.py``."""
        return self.rest(body)

    def grpc(self, request):
        """A ``PredictRequest`` -> a ``PredictResponse``."""
        from tensorflow_serving.apis import predict_pb2

        inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
        outputs = self._call(request.model_spec.signature_name or "serving_default", inputs)
        response = predict_pb2.PredictResponse()
        response.model_spec.CopyFrom(request.model_spec)
        for name, value in outputs.items():
            response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
        return response
