"""Query a TF Serving REST endpoint with one clip.

    python export/rest_client.py --url=http://localhost:8501/v1/models/stfusion:predict --video=clip.mp4

The clip is decoded with PyAV, its short side resized and centre-cropped to the
exported size, and ``--num_frames`` consecutive frames are sent as uint8
``[1, T, H, W, 3]`` under the input name ``video``. (The REST API carries JSON
numbers: about 4 bytes per pixel; use gRPC for large clips.)
"""

import argparse
import json
import urllib.request

import numpy as np


def load_clip(path, num_frames, size):
    from tf_stfusion.data.video import decode, resize_image

    frames = decode(path, max_frames=num_frames)
    if len(frames) < num_frames:  # loop a short video, as the training pipeline does
        frames = np.concatenate([frames] * (num_frames // len(frames) + 1))[:num_frames]
    out = []
    for frame in frames[:num_frames]:
        frame = resize_image(frame, size)
        top, left = (frame.shape[0] - size) // 2, (frame.shape[1] - size) // 2
        out.append(frame[top:top + size, left:left + size])
    return np.stack(out)[None].astype(np.uint8)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://localhost:8501/v1/models/stfusion:predict")
    parser.add_argument("--video", required=True)
    parser.add_argument("--num_frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    clip = load_clip(args.video, args.num_frames, args.size)
    body = json.dumps({"signature_name": "serving_default", "inputs": {"video": clip.tolist()}}).encode()
    request = urllib.request.Request(args.url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        outputs = json.load(response)["outputs"]
    for label, idx in zip(outputs["labels"][0], outputs["top_k"][0]):
        print(f"{outputs['probabilities'][0][idx]:.4f}  {label}")


if __name__ == "__main__":
    main()
