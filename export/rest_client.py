"""Classify a video with a model served by TF Serving's REST API.

    python export/rest_client.py --url=http://localhost:8501/v1/models/stfusion --video=clip.mp4
    python export/rest_client.py --url=http://localhost:8501/v1/models/stfusion/versions/1:predict --video=clip.mp4

The client follows the model's input contract, read from the model itself (the
``input_contract`` signature): it decodes the video as ``prepare`` did, picks
the frames the run's evaluation reads with the package's own clip sampler, and
sends only those, JPEG-encoded as ``{"b64": ...}`` strings, to the
``serving_clips`` signature (``--whole_video``: every frame to
``serving_video``, which samples in the graph). No sizes are passed by hand.
It prints the request size and the top classes.
"""

import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

from absl import flags


MODEL_PATH = re.compile(r"/v1/models/[^/:]+(/versions/\d+|/labels/[^/:]+)?$")


def model_url(url):
    """The model URL (``http://HOST:PORT/v1/models/NAME[/versions/N | /labels/L]``)
    from what a user gives: that, or TF Serving's predict URL as its REST API
    documentation writes it (the same with ``:predict``). ValueError names any
    other form."""
    url = url.strip().rstrip("/")
    base, colon, verb = url.rpartition(":")
    if colon and "/" not in verb and not verb.isdigit():  # a ":verb" ending, not a ":port"
        if verb != "predict":
            raise ValueError(f"--url={url}: this client calls :predict, not :{verb}; give the model URL "
                             f"{base} (or {base}:predict)")
        url = base
    if not MODEL_PATH.search(urllib.parse.urlsplit(url).path):
        raise ValueError(f"--url={url}: not a TF Serving model URL; expected "
                         f"http://HOST:8501/v1/models/NAME[/versions/N][:predict]")
    return url


def post(url, body):
    """POSTs a JSON body to ``<url>:predict``; returns the decoded response. ConnectionError
    names the URL and TF Serving's answer (or why it could not be reached)."""
    request = urllib.request.Request(f"{url}:predict", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.load(response)
    except urllib.error.HTTPError as e:
        raise ConnectionError(f"{url}:predict answered {e.code}: {e.read().decode(errors='replace')[:500]}") from None
    except urllib.error.URLError as e:
        raise ConnectionError(f"cannot reach {url}: {e.reason}") from None


def classify(url, video, whole_video=False, send=post):
    """``(top classes, request bytes)`` for one video; ``send(url, body)`` is the transport."""
    from tf_stfusion.export import client

    contract = client.contract_from_json(send(url, client.rest_contract_body())["outputs"], url)
    frames, _ = client.request_frames(video, contract, whole_video)
    signature = client.VIDEO_SIGNATURE if whole_video else client.CLIPS_SIGNATURE
    body = client.rest_body(frames, signature)
    outputs = send(url, body)["outputs"]
    return client.top_classes(outputs["probabilities"][0], contract.class_names), len(body)


def define_flags():
    flags.DEFINE_string("url", "http://localhost:8501/v1/models/stfusion", "The model's REST address: "
                        ".../v1/models/NAME[/versions/N], with or without :predict.")
    flags.DEFINE_string("video", None, "The video to classify.", required=True)
    flags.DEFINE_bool("whole_video", False, "Send every frame to serving_video.")


def main(argv):
    del argv  # run_app refuses positional arguments
    values = flags.FLAGS
    try:
        url = model_url(values.url)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from tf_stfusion.data.video import VideoError

    try:
        top, size = classify(url, values.video, values.whole_video)
    except ConnectionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (VideoError, ValueError) as e:
        print(f"error: {values.video}: {e}", file=sys.stderr)
        return 2
    print(f"request: {size:,} bytes")
    for probability, label in top:
        print(f"{probability:.4f}  {label}")
    return 0


if __name__ == "__main__":
    from tf_stfusion.configs import run_app

    run_app(main, define_flags)
