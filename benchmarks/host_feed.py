"""Can one host feed its GPUs? The training input pipeline at the recipe's input, in
clips per second per CPU core, against what a GPU consumes.

    python benchmarks/host_feed.py [--videos=8 --frames=250 --clips=160 --threads=1,2]

Writes ``--videos`` shards-worth of videos (``--frames`` JPEG frames of
``--width`` x 256, quality 90, as ``prepare --short_side=256`` stores a 4:3
Kinetics video) into a temporary folder, then times ``pipeline.make_dataset``
(training: read, parse, JPEG-decode the 16 sampled frames at stride 2, resize,
224^2 random crop, flip, normalise) with its work confined to ``t`` threads
(``tf.data`` private thread pool of ``t``, one thread per op, TensorFlow's
inter/intra-op pools of ``t``); the per-core figure is clips per CPU-second of
the process (what the cores it got did, whatever else ran). Frames are the
synthetic set's moving shapes plus Gaussian noise (``--noise``) so that their
JPEGs are about a natural frame's size; the mean JPEG size is printed, as is
the load average (``os.getloadavg``) before and after: on a shared machine the
wall-clock rate is lower than the CPU-second one.

The GPU side is not measured here (this needs no GPU): a GPU at an effective
(sustained, not peak) ``--gpu_tflops`` trains ``tflops / (3 x 247.1 GFLOPs)``
clips/s of the densenet121 S+ST template at 16x224^2 (README, cost table;
backward ~= 2 x forward), so it needs that divided by the per-core rate cores.
"""

import os
import tempfile
import time

from machine import machine_line  # benchmarks/machine.py

import tf_stfusion  # noqa: F401  (first: TensorFlow's environment defaults, see tf_stfusion/__init__.py)

from absl import app, flags

flags.DEFINE_integer("videos", 8, "Videos written (one shard each).")
flags.DEFINE_integer("frames", 250, "Frames per video (Kinetics: 10 s at 25 fps).")
flags.DEFINE_integer("width", 341, "Frame width at short side 256 (341: 4:3, 455: 16:9).")
flags.DEFINE_float("noise", 12.0, "Std of the Gaussian noise added to the frames (uint8 levels).")
flags.DEFINE_integer("clips", 160, "Clips timed per setting (after 16 untimed).")
flags.DEFINE_list("threads", ["1", "2"], "Thread counts to time (1: per core).")
flags.DEFINE_list("gpu_tflops", ["50", "100", "200", "400"], "Effective GPU training throughputs (TFLOP/s).")
FLAGS = flags.FLAGS
TRAIN_GFLOPS_PER_CLIP = 3 * 247.1  # densenet121 S+ST, 16x224^2 (README cost table): forward + backward


def write_videos(folder):
    """``--videos`` shards of one video each; returns (files, mean JPEG bytes)."""
    import numpy as np

    from tf_stfusion.data import prepare, synthetic

    config = synthetic.SyntheticConfig(videos_per_class=2, num_frames=FLAGS.frames, size=256)
    rng = np.random.default_rng(0)
    files, sizes = [], []
    for i in range(FLAGS.videos):
        frames = synthetic.render_clip(config, "train", i)[1].astype(np.float32)
        frames = np.concatenate([frames, frames[:, :, :FLAGS.width - 256]], axis=2)  # 256 -> width
        frames = np.clip(frames + rng.normal(0, FLAGS.noise, frames.shape), 0, 255).astype(np.uint8)
        jpegs = [prepare.encode_jpeg(f, 90) for f in frames]
        sizes += [len(j) for j in jpegs]
        path = os.path.join(folder, prepare.shard_name("train", i, FLAGS.videos))
        import tensorflow as tf

        with tf.io.TFRecordWriter(path) as writer:
            writer.write(prepare.sequence_example(f"v{i}", i % 8, jpegs, 256, FLAGS.width).SerializeToString())
        files.append(path)
    return files, sum(sizes) / len(sizes)


def clips_per_second(files, threads):
    """``(clips per wall second, clips per CPU second)`` of ``threads`` threads; the
    CPU time (this process's, every thread) does not count the time other
    programs hold the cores, so it is the per-core figure on a loaded machine."""
    import tensorflow as tf

    from tf_stfusion.data import pipeline

    spec = pipeline.ClipSpec(num_frames=16, frame_stride=2, input_size=224, scale_range=(1.143, 1.143), flip=True)
    ds = pipeline.make_dataset(files, spec, training=True, batch_size=1, seed=0)
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    it = iter(ds.with_options(options))
    for _ in range(16):
        next(it)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(FLAGS.clips):
        next(it)
    return FLAGS.clips / (time.perf_counter() - start), FLAGS.clips / (time.process_time() - cpu)


def main(argv):
    del argv
    import tensorflow as tf

    threads = [int(t) for t in FLAGS.threads]
    tf.config.threading.set_inter_op_parallelism_threads(max(threads))
    tf.config.threading.set_intra_op_parallelism_threads(max(threads))
    folder = tempfile.mkdtemp(prefix="stf_feed_")
    files, jpeg_bytes = write_videos(folder)
    print(f"input: 16 frames at stride 2 of {FLAGS.width}x256 JPEG frames (mean {jpeg_bytes / 1e3:.1f} kB), "
          "224^2 random crop, flip; batch 1")
    per_core = 0.0
    for t in threads:
        load = os.getloadavg()[0]
        wall, per_cpu_second = clips_per_second(files, t)
        per_core = max(per_core, per_cpu_second)
        print(f"{t} thread(s): {wall:.1f} clips/s, {per_cpu_second:.1f} clips per CPU-second "
              f"(load average {load:.2f} before, {os.getloadavg()[0]:.2f} after, {os.cpu_count()} cores)")
    for tflops in (float(x) for x in FLAGS.gpu_tflops):
        gpu = tflops * 1e3 / TRAIN_GFLOPS_PER_CLIP
        print(f"a GPU at {tflops:g} effective TFLOP/s trains {gpu:.0f} clips/s: {gpu / per_core:.1f} cores per GPU, "
              f"{8 * gpu / per_core:.0f} for 8 GPUs")
    print(machine_line(TensorFlow=tf.__version__))


if __name__ == "__main__":
    app.run(main)
