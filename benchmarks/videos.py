"""Test videos the benchmarks decode, written with PyAV."""


def write_moving_video(path, frames, width, height):
    """A textured scene panning a pixel per frame, encoded one frame at a time."""
    import av
    import numpy as np

    rng = np.random.default_rng(0)
    scene = rng.integers(0, 256, (height, width + frames, 3), dtype=np.uint8)
    scene = ((scene.astype(np.uint16) + np.roll(scene, 1, axis=1)) // 2).astype(np.uint8)  # some texture, not noise
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            image = np.ascontiguousarray(scene[:, i:i + width])
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
