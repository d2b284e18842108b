"""Decoding: a video file (PyAV / FFmpeg) or a folder of JPEG frames -> RGB frames."""

import os

import numpy as np

JPEG_EXTENSIONS = (".jpg", ".jpeg")


class VideoError(Exception):
    """A video that cannot be used; the message says why (for the manifest)."""


def resized_shape(height, width, short_side):
    """(h, w) with the short side scaled to ``short_side`` (None: unchanged)."""
    if not short_side:
        return height, width
    scale = short_side / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_image(image, short_side):
    """A uint8 ``[H, W, 3]`` array or PIL image, short side resized (PIL, bilinear)."""
    from PIL import Image

    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    h, w = resized_shape(img.height, img.width, short_side)
    if (h, w) != (img.height, img.width):
        img = img.resize((w, h), Image.BILINEAR)
    return np.asarray(img)


def _decode_file(path, short_side, max_frames):
    import av  # PyAV: FFmpeg bindings

    if os.path.getsize(path) == 0:
        raise VideoError("empty file (0 bytes)")
    frames = []
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoError("no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                h, w = resized_shape(frame.height, frame.width, short_side)
                frames.append(frame.to_ndarray(format="rgb24", width=w, height=h))
                if max_frames and len(frames) >= max_frames:
                    break
    except VideoError:
        raise
    except Exception as e:  # FFmpeg errors come in many classes
        if not frames:
            raise VideoError(f"cannot decode: {type(e).__name__}: {e}") from None
        # A damaged tail: keep the frames decoded before it.
    return frames


def _decode_frames_dir(path, short_side, max_frames):
    from PIL import Image

    names = sorted(n for n in os.listdir(path) if n.lower().endswith(JPEG_EXTENSIONS))
    if max_frames:
        names = names[:max_frames]
    frames = []
    for name in names:
        try:
            with Image.open(os.path.join(path, name)) as img:
                frames.append(resize_image(img.convert("RGB"), short_side))
        except OSError as e:
            raise VideoError(f"cannot read frame {name}: {e}") from None
    return frames


def decode(source, short_side=None, max_frames=None):
    """All frames of ``source`` as a uint8 array ``[N, H, W, 3]``; raises VideoError."""
    if os.path.isdir(source):
        frames = _decode_frames_dir(source, short_side, max_frames)
    elif os.path.isfile(source):
        frames = _decode_file(source, short_side, max_frames)
    else:
        raise VideoError(f"missing: {source}")
    if not frames:
        raise VideoError("no frames")
    return np.stack(frames)


def write_video(path, frames, fps=25, codec="libx264", pix_fmt="yuv420p"):
    """Encodes uint8 frames ``[N, H, W, 3]`` (H, W even) into a video file with PyAV."""
    import av

    frames = np.asarray(frames, dtype=np.uint8)
    with av.open(path, mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
