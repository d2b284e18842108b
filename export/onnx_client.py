"""Run the exported ONNX model with ONNX Runtime on one clip.

    python export/onnx_client.py --model=/models/stfusion.onnx --video=clip.mp4
"""

import argparse
import json


def main():
    import onnxruntime as ort

    from rest_client import load_clip

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--video", required=True)
    args = parser.parse_args()
    session = ort.InferenceSession(args.model, providers=ort.get_available_providers())
    _, frames, size, _, _ = session.get_inputs()[0].shape
    class_names = json.loads(session.get_modelmeta().custom_metadata_map["class_names"])
    probs, top_k = session.run(["probabilities", "top_k"], {"video": load_clip(args.video, frames, size)})
    for idx in top_k[0]:
        print(f"{probs[0][idx]:.4f}  {class_names[idx]}")


if __name__ == "__main__":
    main()
