"""Peak resident memory of ``prepare --num_workers=1`` on a short and a long video.

    python benchmarks/prepare_memory.py [--frames=300,3000] [--size=320x240]

Each video (H.264, ``--size`` width x height, 30 fps, a textured scene moving a
pixel per frame, so its JPEGs are as large as a real video's) is prepared alone
in a ``folder`` dataset by a child process; its peak RSS is read from
``wait4``'s resource usage (``ru_maxrss``). ``prepare`` streams decode -> resize
-> JPEG -> record, so the difference is the long video's JPEG bytes, not its
pixels. Prints the machine.
"""

import os
import subprocess
import sys
import tempfile
import time

from machine import machine_line  # benchmarks/machine.py
from videos import write_moving_video  # benchmarks/videos.py

from absl import app, flags

flags.DEFINE_list("frames", ["300", "3000"], "Frames of the short and the long video.")
flags.DEFINE_string("size", "320x240", "Video width x height.")
flags.DEFINE_integer("short_side", 256, "prepare --short_side.")
FLAGS = flags.FLAGS


def peak_rss_of_prepare(root, out):
    """(peak RSS in MiB, seconds, stored bytes) of one prepare run over ``root``."""
    command = [sys.executable, "-m", "tf_stfusion.data.prepare", "--dataset=folder", f"--data_dir={root}",
               "--split=train", f"--output_dir={out}", "--num_workers=1", f"--short_side={FLAGS.short_side}"]
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(command)} exited with {proc.returncode}")
    stored = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out) if f.endswith(".tfrecord"))
    return usage.ru_maxrss / 1024, seconds, stored  # ru_maxrss: KiB on Linux


def main(argv):
    del argv
    import av

    print(machine_line(PyAV=av.__version__, FFmpeg=".".join(map(str, av.library_versions["libavcodec"]))))
    from tf_stfusion.data.video import resized_shape

    short, long = map(int, FLAGS.frames)
    width, height = map(int, FLAGS.size.split("x"))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for frames in (short, long):
            root = os.path.join(tmp, f"v{frames}")
            os.makedirs(os.path.join(root, "train", "a"))
            write_moving_video(os.path.join(root, "train", "a", "clip.mp4"), frames, width, height)
            results[frames] = peak_rss_of_prepare(root, os.path.join(tmp, f"out{frames}"))
            peak, seconds, stored = results[frames]
            print(f"{frames} frames ({width}x{height}, --short_side={FLAGS.short_side}): peak RSS "
                  f"{peak:.1f} MiB, {seconds:.1f} s, {stored / 2 ** 20:.1f} MiB of JPEG records")
    difference = results[long][0] - results[short][0]
    h, w = resized_shape(height, width, FLAGS.short_side)
    pixels = (long - short) * h * w * 3 / 2 ** 20
    print(f"peak RSS difference, {long} - {short} frames: {difference:.1f} MiB "
          f"(their {h}x{w} pixels alone: {pixels:.0f} MiB)")


if __name__ == "__main__":
    app.run(main)
