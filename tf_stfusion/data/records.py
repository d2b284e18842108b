"""TFRecord shards of ``tf.train.SequenceExample`` videos, written in bounded memory.

A video's record is one protobuf message holding every frame's JPEG, so
``tf.io.TFRecordWriter`` needs the whole serialized message in memory (and
``tf.train`` objects copy it twice more on the way): for a 10-minute video,
hundreds of MiB. ``ShardWriter.example`` instead spools each frame's JPEG to a
temporary file as it is encoded and writes the record from there, so a process
holds one frame at a time whatever the video's length.

The bytes written are the ones TensorFlow writes (tested against
``tf.io.TFRecordWriter`` and ``SerializeToString``):

* TFRecord framing (tensorflow/core/lib/io/record_writer.cc): ``uint64`` length,
  masked CRC32C of the length, data, masked CRC32C of the data, little-endian;
* protobuf wire format (protobuf.dev/programming-guides/encoding) of
  ``SequenceExample{context = 1, feature_lists = 2}``, ``FeatureLists{map
  feature_list = 1}``, ``FeatureList{repeated Feature feature = 1}``,
  ``Feature{BytesList bytes_list = 1}``, ``BytesList{repeated bytes value = 1}``
  (tensorflow/core/example/{example,feature}.proto).
"""

import os
import struct
import tempfile

_COPY_CHUNK = 4 * 1024 * 1024


class RecordWriteError(Exception):
    """Writing a shard or its spool failed (an ``OSError``: space, permissions); the
    message names the file."""


def _writing(method):
    """Turns a method's ``OSError`` into a ``RecordWriteError`` naming the file, so
    that a disk fault is never taken for one video's fault."""
    import functools

    @functools.wraps(method)
    def wrapped(self, *args):
        try:
            return method(self, *args)
        except OSError as e:
            raise RecordWriteError(f"{self.where}: cannot write ({type(e).__name__}: {e})") from None
    return wrapped


def _varint(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number, length):
    """The header of a length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(length)


def _masked_crc(data_or_checksum):
    import google_crc32c

    crc = data_or_checksum if isinstance(data_or_checksum, int) else google_crc32c.value(data_or_checksum)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def context_features(video_id, label, num_frames, height, width):
    """The serialized ``tf.train.Features`` of a video's context (prepare's layout),
    its map entries in key order, so that the same video gives the same bytes in
    every process (a split prepared on several machines equals one machine's)."""
    import tensorflow as tf

    def int64(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))

    return tf.train.Features(feature={
        "clip/media_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[video_id.encode()])),
        "clip/label/index": int64(label),
        "clip/num_frames": int64(num_frames),
        "image/height": int64(height),
        "image/width": int64(width),
    }).SerializeToString(deterministic=True)


class FrameSpool:
    """The ``image/encoded`` FeatureList of one video, one JPEG at a time, in a
    temporary file beside the shard (deleted when closed)."""

    KEY = b"image/encoded"

    @_writing
    def __init__(self, folder):
        self.where = f"the frame spool in {folder}"
        self.file = tempfile.TemporaryFile(dir=folder, prefix=".frames-")
        self.num_frames = self.length = 0

    @_writing
    def add(self, jpeg):
        bytes_list = _field(1, len(jpeg)) + jpeg
        feature = _field(1, len(bytes_list)) + bytes_list
        item = _field(1, len(feature)) + feature  # FeatureList.feature[i]
        self.file.write(item)
        self.num_frames += 1
        self.length += len(item)

    def prefix(self, context):
        """The serialized SequenceExample up to the first frame (the spool follows)."""
        entry_head = _field(1, len(self.KEY)) + self.KEY + _field(2, self.length)
        lists_body = len(entry_head) + self.length
        lists = _field(1, lists_body)
        return _field(1, len(context)) + context + _field(2, len(lists) + lists_body) + lists + entry_head

    def close(self):
        self.file.close()


class ShardWriter:
    """A TFRecord file, written record by record (``write``: bytes; ``example``:
    a spooled video)."""

    @_writing
    def __init__(self, path):
        self.where = path
        self.file = open(path, "wb")

    @_writing
    def write(self, record):
        self.file.write(struct.pack("<Q", len(record)))
        self.file.write(_masked_crc(struct.pack("<Q", len(record))))
        self.file.write(record)
        self.file.write(_masked_crc(record))

    @_writing
    def example(self, context, spool):
        import google_crc32c

        head = spool.prefix(context)
        length = struct.pack("<Q", len(head) + spool.length)
        checksum = google_crc32c.Checksum(head)
        self.file.write(length + _masked_crc(length) + head)
        spool.file.seek(0)
        for chunk in iter(lambda: spool.file.read(_COPY_CHUNK), b""):
            checksum.update(chunk)
            self.file.write(chunk)
        self.file.write(_masked_crc(int.from_bytes(checksum.digest(), "big")))

    @_writing
    def close(self):
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
