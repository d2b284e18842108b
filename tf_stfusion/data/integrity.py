"""Shard integrity: the size and CRC32C that ``prepare`` records for every shard,
checked before a run reads it, and named when a record fails mid-run.

* ``shard_record(path)``: ``{"bytes", "crc32c"}`` of a written shard (its
  ``.done.json`` and the manifest's ``shard_info`` keep it);
* ``check_shards(files, info, verify)``: every shard's size (cheap: one ``stat``
  per file) and, with ``verify``, its checksum (reads every byte) against the
  record; returns the problems found;
* ``DataError``: a one-line, actionable message -- the shard, expected vs found,
  and the command that rewrites it (rerunning ``prepare`` rewrites only damaged
  or missing shards);
* ``readable_ids(path)``: the video ids that can still be read from a damaged
  shard (records after a truncation or a bad checksum are skipped), so that
  ``--skip_corrupt_records`` can count and name what was lost.
"""

import dataclasses
import os

CHUNK = 8 * 1024 * 1024


class DataError(ValueError):
    """Data that cannot be used as it is; the message says which file and what to do."""


def file_crc32c(path):
    """CRC32C (Castagnoli) of a file's bytes, as 8 hex digits."""
    import google_crc32c

    checksum = google_crc32c.Checksum()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            checksum.update(chunk)
    return checksum.hexdigest().decode()


def shard_record(path):
    return {"bytes": os.path.getsize(path), "crc32c": file_crc32c(path)}


@dataclasses.dataclass(frozen=True)
class Problem:
    """A shard that does not match its record."""

    path: str
    what: str  # "missing", "size" or "checksum"
    expected: object = None
    found: object = None

    def describe(self):
        name = os.path.basename(self.path)
        if self.what == "missing":
            return f"shard {self.path} is missing"
        unit = " bytes" if self.what == "size" else ""
        return f"shard {self.path} is damaged ({self.what}: expected {self.expected}{unit}, found {self.found}{unit}" \
               f"{'; ' + name + ' was cut short' if self.what == 'size' and self.found < self.expected else ''})"


def check_shards(files, info, verify=False):
    """Problems of ``files`` against ``info`` (shard file name -> its record).
    Shards without a record (written before records had sizes) are not checked."""
    problems = []
    for path in files:
        record = info.get(os.path.basename(path))
        if not os.path.isfile(path):
            problems.append(Problem(path, "missing"))
            continue
        if not record:
            continue
        size = os.path.getsize(path)
        if size != record["bytes"]:
            problems.append(Problem(path, "size", record["bytes"], size))
        elif verify and file_crc32c(path) != record["crc32c"]:
            problems.append(Problem(path, "checksum", record["crc32c"], file_crc32c(path)))
    return problems


def rewrite_advice(command):
    """The sentence telling how to rewrite damaged shards."""
    if command:
        return f"rewrite it by running prepare again (it rewrites only damaged or missing shards): {command}"
    return "rewrite it by running prepare again with the arguments that wrote it (only damaged or missing shards " \
           "are rewritten)"


def damage_error(problems, command, skip_hint=True):
    """A ``DataError`` naming the first problem (and how many more) and the fix."""
    more = f" (and {len(problems) - 1} more shard(s))" if len(problems) > 1 else ""
    hint = "; or pass --skip_corrupt_records to train on what is readable" if skip_hint else ""
    return DataError(f"{problems[0].describe()}{more}; {rewrite_advice(command)}{hint}")


def readable_ids(path):
    """Video ids of the records of ``path`` that can be read (reading stops at a
    truncation; a record with a bad checksum is skipped)."""
    import tensorflow as tf

    from tf_stfusion.data.pipeline import parse_media_id

    ds = tf.data.TFRecordDataset(path).ignore_errors().map(parse_media_id)
    return [v.decode() for v in ds.as_numpy_iterator()]
