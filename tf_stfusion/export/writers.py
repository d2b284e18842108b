"""Writers of the pruned network: a TF Serving SavedModel and ONNX.

Both wrap the same serving function: ``video`` (uint8 ``[batch, T, H, W, 3]``)
-> ImageNet normalisation (the training pipeline's own ``normalize``) -> the
pruned network -> ``probabilities`` (softmax) and ``top_k`` (class ids, best
first). The SavedModel also returns ``labels`` (the top-k class names) from a
lookup table initialised from its ``labels.txt`` asset; ONNX carries the class
names in its metadata (``class_names``) instead of a string output.
"""

import json
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from tf_stfusion.data.pipeline import normalize

ONNX_OPSET = 17


def video_signature(num_frames, size):
    return tf.TensorSpec([None, num_frames, size, size, 3], tf.uint8, name="video")


def scores(model, video, top_k):
    """``(probabilities, top_k ids)`` of uint8 clips."""
    probs = tf.nn.softmax(tf.cast(model(normalize(video), training=False), tf.float32))
    return probs, tf.math.top_k(probs, top_k).indices


def write_saved_model(model, class_names, path, num_frames, size, top_k=5):
    """A SavedModel with the ``serving_default`` signature, laid out for TF Serving."""
    top_k = min(top_k, len(class_names))
    tmp = tempfile.mkdtemp(prefix="stfusion-labels-")
    labels_file = os.path.join(tmp, "labels.txt")  # the asset keeps this name
    with open(labels_file, "w") as f:
        f.write("\n".join(class_names) + "\n")
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
        archive._tf_trackable.labels_asset = asset  # noqa: SLF001 (the archive keeps what it saves here)

        def serve(video):
            probs, ids = scores(model, video, top_k)
            return {"probabilities": probs, "top_k": ids, "labels": table.lookup(tf.cast(ids, tf.int64))}

        archive.add_endpoint("serving_default", serve, input_signature=[video_signature(num_frames, size)])
        archive.write_out(path, verbose=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def write_onnx(model, class_names, path, num_frames, size, top_k=5):
    """ONNX (opset 17) of the same serving function, via tf2onnx."""
    import onnx
    import tf2onnx

    from tf_stfusion.layers.group_conv import split_grouped_convs

    split_grouped_convs(model)  # tf2onnx cannot convert Keras' XLA grouped convolution
    top_k = min(top_k, len(class_names))

    @tf.function(input_signature=[video_signature(num_frames, size)])
    def serve(video):
        probs, ids = scores(model, video, top_k)
        return {"probabilities": tf.identity(probs, name="probabilities"), "top_k": tf.identity(ids, name="top_k")}

    model_proto, _ = tf2onnx.convert.from_function(serve, input_signature=serve.input_signature,
                                                   opset=ONNX_OPSET)
    meta = model_proto.metadata_props.add()
    meta.key, meta.value = "class_names", json.dumps(list(class_names))
    onnx.save(model_proto, path)
    return path


def run_saved_model(path, video):
    loaded = tf.saved_model.load(path)
    out = loaded.signatures["serving_default"](video=tf.constant(video))
    return {k: v.numpy() for k, v in out.items()}


def run_onnx(path, video):
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {session.get_inputs()[0].name: np.asarray(video, np.uint8)})))
