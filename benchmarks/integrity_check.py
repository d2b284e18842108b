"""What the shard checks cost at the start of a run.

    python benchmarks/integrity_check.py [--shards=1000] [--checksum_mb=512]

1. The size check of ``--shards`` shard files (one ``stat`` each against the
   manifest's record): the time it adds to a run's start, median of 5.
2. The checksum pass (``--verify_data``: CRC32C of every byte): MB/s over
   ``--checksum_mb`` of shard files, read from the page cache and after dropping
   it when the machine allows.
Prints the machine.
"""

import os
import statistics
import tempfile
import time

from machine import machine_line  # benchmarks/machine.py

import tf_stfusion  # noqa: F401  (first: TensorFlow's environment defaults, see tf_stfusion/__init__.py)

from absl import app, flags

flags.DEFINE_integer("shards", 1000, "Shard files for the size check.")
flags.DEFINE_integer("checksum_mb", 512, "Megabytes of shards for the checksum rate.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import google_crc32c

    from tf_stfusion.data.integrity import check_shards, shard_record

    print(machine_line(**{"google-crc32c implementation": google_crc32c.implementation}))
    with tempfile.TemporaryDirectory() as tmp:
        files, info = [], {}
        for i in range(FLAGS.shards):
            path = os.path.join(tmp, f"train-{i:05d}-of-{FLAGS.shards:05d}.tfrecord")
            with open(path, "wb") as f:
                f.write(os.urandom(1024))
            files.append(path)
            info[os.path.basename(path)] = shard_record(path)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            assert check_shards(files, info) == []
            times.append(time.perf_counter() - start)
        print(f"size check of {FLAGS.shards} shards: {1000 * statistics.median(times):.1f} ms (median of 5)")

        big, info = [], {}
        chunk = os.urandom(8 * 1024 * 1024)
        for i in range(FLAGS.checksum_mb // 64):
            path = os.path.join(tmp, f"big-{i:05d}.tfrecord")
            with open(path, "wb") as f:
                for _ in range(8):
                    f.write(chunk)
            big.append(path)
            info[os.path.basename(path)] = shard_record(path)
        start = time.perf_counter()
        assert check_shards(big, info, verify=True) == []
        seconds = time.perf_counter() - start
        print(f"checksum pass over {FLAGS.checksum_mb} MB ({len(big)} shards, from the page cache): "
              f"{FLAGS.checksum_mb / seconds:.0f} MB/s")


if __name__ == "__main__":
    app.run(main)
