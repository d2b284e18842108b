"""The exported model's serving functions: the run's own evaluation path in the graph.

Every signature ends in ``evaluation.video_scores`` (softmax per view, averaged
over the video's views) and starts from what a client can send:

* ``serving_default`` -- ``video``: uint8 clips ``[batch, T, S, S, 3]`` already
  sampled, resized and cropped by the input contract;
* ``serving_video`` -- ``frames``: one video's encoded frames (JPEG or PNG
  strings, as the shards store them in ``image/encoded``), in order, any count
  >= 1 and any (common) size. The run's clip sampler picks the frames in the
  graph (``pipeline.eval_video_clips``: dense or uniform, ``eval_clips`` views spread
  as in evaluation, a short video looped), then the evaluation resize, crop and
  normalisation;
* ``serving_clips`` -- ``frames``: the ``eval_clips x num_frames`` encoded frames
  that the contract selects (``InputContract.frame_indices``), in view order,
  chosen by the client; decoded and cropped by ``pipeline.views_to_clips``;
* ``input_contract`` -- no input; ``contract``: the JSON of the
  ``InputContract``, so that a client needs no hand-passed sizes.

An ensemble export (``stfusion-export --ensemble=M``; ``Ensemble``: the ``M``
pruned networks on one input, returning ``[batch, M, C]`` logits) has the same
signatures with an ``EnsembleHead``: the scores are the mean softmax over views
and members, temperature-scaled (``softmax(log p / T)``, as
``calibration.apply_temperature``); ``entropy`` is their predictive entropy
(nats) and ``abstain`` is true where their maximum is below the threshold chosen
by the search for its target accuracy; ``logits`` are the members'
``[batch, M, C]``; ``input_contract`` also returns ``ensemble`` (JSON: members,
temperature, threshold, where they were fitted).

Bad ``frames`` stop with an ``InvalidArgument`` error that names the problem:
empty, not a JPEG/PNG string, frames of different sizes (each naming the first 8
offending indices, then ``...``), or the wrong count for ``serving_clips``. Sizes are read from the frames' headers
(JPEG SOF, PNG IHDR), so the check decodes nothing.
"""

import dataclasses
import json

import keras
import tensorflow as tf

from tf_stfusion.data import pipeline
from tf_stfusion.deploy import clip_function, clip_logits, clip_probabilities, clip_shape  # noqa: F401 (re-exported)
from tf_stfusion.evaluation import video_scores

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG"


def frames_spec():
    return tf.TensorSpec([None], tf.string, name="frames")


def _png_size(encoded):
    """Height and width from a PNG's IHDR chunk (big-endian width, height at byte 16)."""
    raw = tf.cast(tf.io.decode_raw(tf.strings.substr(encoded, 16, 8), tf.uint8), tf.int32)
    width = raw[0] * 16777216 + raw[1] * 65536 + raw[2] * 256 + raw[3]
    height = raw[4] * 16777216 + raw[5] * 65536 + raw[6] * 256 + raw[7]
    return tf.stack([height, width])


def check_frames(frames, expected_count=None):
    """Assertions on a ``frames`` string tensor (see the module docstring)."""
    count = tf.size(frames)
    checks = [tf.debugging.assert_greater(count, 0, message="frames is empty: send at least one encoded frame "
                                                            "(JPEG or PNG) of the video")]
    if expected_count is not None:
        checks.append(tf.debugging.assert_equal(
            count, expected_count,
            message=f"serving_clips takes exactly {expected_count} frames (eval_clips x num_frames of the input "
                    "contract, in view order); use serving_video to send a whole video"))
    with tf.control_dependencies(checks):
        jpeg = tf.equal(tf.strings.substr(frames, 0, 3), JPEG_MAGIC)
        png = tf.equal(tf.strings.substr(frames, 0, 4), PNG_MAGIC)
        bad = tf.cast(tf.where(~(jpeg | png))[:, 0], tf.int32)
    checks.append(tf.debugging.Assert(tf.size(bad) == 0, ["frames[i] is not a JPEG or PNG image, i =", bad],
                                      summarize=8))
    with tf.control_dependencies(checks):
        # Only header bytes are read; frames that passed the format check only.
        sizes = tf.map_fn(
            lambda b: tf.cond(tf.equal(tf.strings.substr(b, 0, 3), JPEG_MAGIC),
                              lambda: tf.io.extract_jpeg_shape(b)[:2], lambda: _png_size(b)),
            frames, fn_output_signature=tf.TensorSpec([2], tf.int32))
        differ = tf.cast(tf.where(tf.reduce_any(sizes != sizes[:1], axis=1))[:, 0], tf.int32)
    checks.append(tf.debugging.Assert(
        tf.size(differ) == 0,
        ["frames of different sizes: every frame of a video must have the same height and width; frame 0 is",
         sizes[0], "(height, width), these differ:", differ], summarize=8))
    return checks


class Ensemble(keras.Model):
    """``M`` networks on one input: normalised clips ``[batch, T, S, S, 3]`` ->
    logits ``[batch, M, C]`` (float32)."""

    def __init__(self, members, **kwargs):
        super().__init__(**kwargs)
        self.members = list(members)

    def call(self, clips, training=False):
        return tf.stack([tf.cast(m(clips, training=training), tf.float32) for m in self.members], axis=1)


@dataclasses.dataclass(frozen=True)
class EnsembleHead:
    """What turns an ``Ensemble``'s member scores into served scores."""

    temperature: float  # fitted by NLL on the run's hold-out (search: calibration.json)
    threshold: float  # abstain below this maximum (scaled) probability
    info: dict  # members, target accuracy, where fitted: returned by input_contract as JSON

    def apply(self, probs):
        """Mean member scores ``[batch, C]`` -> ``(scaled scores, entropy, abstain)``."""
        scaled = tf.nn.softmax(tf.math.log(tf.maximum(probs, 1e-12)) / self.temperature)
        entropy = -tf.reduce_sum(scaled * tf.math.log(tf.maximum(scaled, 1e-12)), axis=-1)
        return scaled, entropy, tf.reduce_max(scaled, axis=-1) < self.threshold


def ensemble_video_scores(model, clips):
    """Mean softmax over views and members: ``[B, V, T, H, W, 3]`` -> ``[B, C]``."""
    shape = tf.shape(clips)
    logits = tf.cast(model(tf.reshape(clips, tf.concat([[-1], shape[2:]], 0)), training=False), tf.float32)
    probs = tf.nn.softmax(logits)  # [B*V, M, C]
    return tf.reduce_mean(tf.reshape(probs, [shape[0], -1, probs.shape[-1]]), axis=1)


def make_signatures(model, contract: pipeline.InputContract, lookup, top_k=5, head=None):
    """The serving functions ``{name: (fn, input_signature)}`` of ``model`` (a
    network taking normalised clips) under ``contract``. ``lookup(ids)`` turns
    top-k class ids into names (a table in the SavedModel). With ``head`` (an
    ``EnsembleHead``), ``model`` is an ``Ensemble``."""
    top_k = min(top_k, len(contract.class_names))
    spec = contract.clip_spec()
    scores = video_scores if head is None else ensemble_video_scores

    def outputs(probs):
        extra = {}
        if head is not None:
            probs, entropy, abstain = head.apply(probs)
            extra = {"entropy": entropy, "abstain": abstain}
        ids = tf.math.top_k(probs, top_k).indices
        return {"probabilities": probs, "top_k": ids, "labels": lookup(ids), **extra}

    def serving_default(video):
        # Per clip, so the logits are returned too: the export's parity checks compare
        # them (probabilities of a saturated network are all 0 or 1 and hide errors).
        logits = clip_logits(model, video)
        probs = tf.nn.softmax(logits) if head is None else tf.reduce_mean(tf.nn.softmax(logits), axis=1)
        return {**outputs(probs), "logits": logits}

    def serving_video(frames):
        with tf.control_dependencies(check_frames(frames)):
            clips = pipeline.eval_video_clips(frames, spec)
        return outputs(scores(model, clips[None]))

    def serving_clips(frames):
        with tf.control_dependencies(check_frames(frames, spec.eval_clips * spec.num_frames)):
            decoded = tf.map_fn(pipeline.decode_frame, frames,
                                fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
        clips = pipeline.views_to_clips(decoded, spec)
        return outputs(scores(model, clips[None]))

    contract_json = json.dumps(contract.to_dict())
    ensemble_json = None if head is None else json.dumps(head.info)

    def input_contract():
        out = {"contract": tf.constant(contract_json)}
        if ensemble_json is not None:
            out["ensemble"] = tf.constant(ensemble_json)
        return out

    video = tf.TensorSpec([None, *clip_shape(contract)], tf.uint8, name="video")
    return {
        "serving_default": (serving_default, [video]),
        "serving_video": (serving_video, [frames_spec()]),
        "serving_clips": (serving_clips, [frames_spec()]),
        "input_contract": (input_contract, []),
    }
