"""Classify a video with the exported ONNX model and ONNX Runtime.

    python export/onnx_client.py --model=/models/stfusion.onnx --video=clip.mp4

The model carries its input contract in its metadata (``input_contract``): the
client picks the frames evaluation reads with the package's own sampler,
resizes and crops them with the pipeline's evaluation functions, runs every
view (uint8 ``[eval_clips, T, S, S, 3]``) and averages their scores, as
evaluation does.
"""


def classify(model_path, video):
    """Top classes of ``video`` under the ONNX model at ``model_path``."""
    import onnxruntime as ort

    from tf_stfusion.export import client

    session = ort.InferenceSession(model_path, providers=ort.get_available_providers())
    meta = session.get_modelmeta().custom_metadata_map
    if "input_contract" not in meta:
        raise ValueError(f"{model_path} carries no input_contract metadata; export it again")
    contract = client.contract_from_json(meta["input_contract"], model_path)
    probabilities, _ = session.run(["probabilities", "top_k"], {"video": client.contract_clips(video, contract)})
    return client.top_classes(probabilities.mean(axis=0), contract.class_names)


if __name__ == "__main__":
    from tf_stfusion.export.client import run_clip_client

    run_clip_client(classify)
