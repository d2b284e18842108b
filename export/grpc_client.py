"""Classify a video with a model served by TF Serving's gRPC API.

    pip install grpcio
    python export/grpc_client.py --server=localhost:8500 --video=clip.mp4

Like ``rest_client.py``: the input contract is read from the model (its
``input_contract`` signature), the frames evaluation reads are picked with the
package's own sampler and sent as a ``DT_STRING`` tensor of JPEGs to
``serving_clips`` (``--whole_video``: every frame to ``serving_video``). JPEG
frames keep the request small (a 16-frame, 2-view 256x256 request is about
1 MB, under gRPC's 4 MB default); the channel still raises the message limits
for long videos sent whole.
"""

import sys

from absl import flags

MAX_MESSAGE = 256 * 1024 * 1024  # bytes


def classify(predict, model_name, video, whole_video=False):
    """``(top classes, request bytes)``; ``predict(request) -> PredictResponse`` is the transport."""
    import tensorflow as tf

    from tf_stfusion.export import client

    response = predict(client.grpc_request(None, model_name, client.CONTRACT_SIGNATURE))
    contract = client.contract_from_json(tf.make_ndarray(response.outputs["contract"]).item(), model_name)
    frames, _ = client.request_frames(video, contract, whole_video)
    signature = client.VIDEO_SIGNATURE if whole_video else client.CLIPS_SIGNATURE
    request = client.grpc_request(frames, model_name, signature)
    response = predict(request)
    probabilities = tf.make_ndarray(response.outputs["probabilities"])[0]
    return client.top_classes(probabilities, contract.class_names), request.ByteSize()


def define_flags():
    flags.DEFINE_string("server", "localhost:8500", "TF Serving's gRPC address, HOST:PORT.")
    flags.DEFINE_string("model_name", "stfusion", "The served model's name.")
    flags.DEFINE_string("video", None, "The video to classify.", required=True)
    flags.DEFINE_bool("whole_video", False, "Send every frame to serving_video.")


def main(argv):
    del argv  # run_app refuses positional arguments
    values = flags.FLAGS
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    from tf_stfusion.data.video import VideoError

    channel = grpc.insecure_channel(values.server, options=[
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.max_receive_message_length", MAX_MESSAGE),
    ])
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    try:
        top, size = classify(lambda request: stub.Predict(request, timeout=60.0), values.model_name, values.video,
                             values.whole_video)
    except (VideoError, ValueError) as e:
        print(f"error: {values.video}: {e}", file=sys.stderr)
        return 2
    except grpc.RpcError as e:
        print(f"error: {values.server}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 2
    print(f"request: {size:,} bytes")
    for probability, label in top:
        print(f"{probability:.4f}  {label}")
    return 0


if __name__ == "__main__":
    from tf_stfusion.configs import run_app

    run_app(main, define_flags)
