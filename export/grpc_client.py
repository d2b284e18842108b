"""Query a TF Serving gRPC endpoint with one clip.

    pip install tensorflow-serving-api grpcio
    python export/grpc_client.py --server=localhost:8500 --video=clip.mp4

A 16 x 256 x 256 x 3 uint8 clip is 3.1 MB, a batch of a few clips exceeds gRPC's
4 MB default message limit: the channel below raises the limit on both sides
of the client (the server's own limit is set by TF Serving's
``--grpc_max_receive_message_length`` / default unlimited in recent versions).
"""

import argparse

MAX_MESSAGE = 256 * 1024 * 1024  # bytes


def main():
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from rest_client import load_clip

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="localhost:8500")
    parser.add_argument("--model_name", default="stfusion")
    parser.add_argument("--video", required=True)
    parser.add_argument("--num_frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    channel = grpc.insecure_channel(args.server, options=[
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.max_receive_message_length", MAX_MESSAGE),
    ])
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = args.model_name
    request.model_spec.signature_name = "serving_default"
    request.inputs["video"].CopyFrom(tf.make_tensor_proto(load_clip(args.video, args.num_frames, args.size)))
    response = stub.Predict(request, timeout=60.0)
    probs = tf.make_ndarray(response.outputs["probabilities"])[0]
    labels = tf.make_ndarray(response.outputs["labels"])[0]
    ids = tf.make_ndarray(response.outputs["top_k"])[0]
    for label, idx in zip(labels, ids):
        print(f"{probs[idx]:.4f}  {label.decode()}")


if __name__ == "__main__":
    main()
