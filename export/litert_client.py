"""Classify a video with the exported LiteRT model (``.tflite``) and the LiteRT interpreter.

    python export/litert_client.py --model=/models/stfusion_int8.tflite --video=clip.mp4

The file carries its input contract in its metadata (``input_contract``): the
client picks the frames evaluation reads with the package's own sampler,
resizes and crops them with the pipeline's evaluation functions, runs every
view (uint8 ``[1, T, S, S, 3]`` each: the file takes batch 1) and averages
their scores, as evaluation does.
"""


def classify(model_path, video, num_threads=None):
    """Top classes of ``video`` under the LiteRT model at ``model_path``."""
    from tf_stfusion.export import client, litert

    text = litert.read_metadata(model_path)
    if text is None:
        raise ValueError(f"{model_path} carries no input_contract metadata; export it again")
    contract = client.contract_from_json(text, model_path)
    probabilities = litert.Runner(model_path, num_threads)(client.contract_clips(video, contract))["probabilities"]
    return client.top_classes(probabilities.mean(axis=0), contract.class_names)


if __name__ == "__main__":
    from tf_stfusion.export.client import run_clip_client

    run_clip_client(classify, threads=True)
