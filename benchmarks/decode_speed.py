"""Decode speed of ``data.video.iter_frames`` by FFmpeg thread type, on one clip.

    python benchmarks/decode_speed.py [--frames=300] [--size=320x240] [--repeats=3]

The clip is ``prepare_memory``'s moving H.264 scene (30 fps, x264's defaults: one
slice per frame). Each thread type (``video.THREAD_TYPE``: SLICE is what the package
uses, since frame threads hide a damaged packet's error and lose the frames in
flight at a truncation; AUTO is what it used before) decodes the whole clip through
the display graph with prepare's default ``--short_side=256``; the best of
``--repeats`` wall-clock runs is printed as frames per second. Prints the machine.
"""

import os
import tempfile
import time

from machine import machine_line  # benchmarks/machine.py
from videos import write_moving_video  # benchmarks/videos.py

from absl import app, flags

flags.DEFINE_integer("frames", 300, "Frames of the clip.")
flags.DEFINE_string("size", "320x240", "Video width x height.")
flags.DEFINE_integer("short_side", 256, "Short side the frames are resized to, as prepare's default.")
flags.DEFINE_integer("repeats", 3, "Timed decodes per thread type (the best is printed).")
flags.DEFINE_list("thread_types", ["SLICE", "AUTO", "NONE"], "FFmpeg thread types to time.")
FLAGS = flags.FLAGS


def best_seconds(path):
    """The fastest of ``--repeats`` full decodes of ``path`` with ``video.THREAD_TYPE``."""
    from tf_stfusion.data.video import iter_frames

    times = []
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        count = sum(1 for _ in iter_frames(path, short_side=FLAGS.short_side))
        times.append(time.perf_counter() - start)
    assert count == FLAGS.frames, f"decoded {count} of {FLAGS.frames} frames"
    return min(times)


def main(argv):
    del argv
    import av

    from tf_stfusion.data import video

    print(machine_line(PyAV=av.__version__, FFmpeg=".".join(map(str, av.library_versions["libavcodec"]))))
    width, height = map(int, FLAGS.size.split("x"))
    default = video.THREAD_TYPE
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "clip.mp4")
        write_moving_video(path, FLAGS.frames, width, height)
        for thread_type in FLAGS.thread_types:
            video.THREAD_TYPE = thread_type
            seconds = best_seconds(path)
            print(f"thread_type={thread_type}{' (used)' if thread_type == default else ''}: {FLAGS.frames} "
                  f"frames {width}x{height} -> short side {FLAGS.short_side} in {seconds:.2f} s, "
                  f"{FLAGS.frames / seconds:.0f} frames/s")
    video.THREAD_TYPE = default


if __name__ == "__main__":
    app.run(main)
