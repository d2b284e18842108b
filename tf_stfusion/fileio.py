"""File helpers. Atomic writes: a temporary name in the same folder, then a
rename -- a reader (or a resumed run) never sees a half-written file under its
final name; journals read back to their last complete line; and the size of an
export on disk.
"""

import json
import os


def atomic_write_text(path, text):
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def atomic_write_json(path, data, indent=2):
    return atomic_write_text(path, json.dumps(data, indent=indent) + "\n")


def read_jsonl(path):
    """Complete lines of a JSON-lines file (a torn last line, being written when the
    process was killed, is dropped); ``[]`` when there is no file."""
    rows = []
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    return rows


def append_jsonl(path, row):
    """Appends ``row`` as one line of the JSON-lines file ``path``."""
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def claim_settings(path, settings, refusal, renamed=None):
    """Writes ``settings`` (a JSON dict) to ``path``, or checks that the ones
    already there are equal; else raises ``ValueError(refusal.format(keys=...))``
    naming the keys that differ. Keeps a folder from mixing two configurations
    (a cache, a search, a run). ``renamed``: ``{old key: key}`` of settings files
    written by earlier versions, compared under today's names."""
    if os.path.isfile(path):
        with open(path) as f:
            found = {(renamed or {}).get(k, k): v for k, v in json.load(f).items()}
        if found != settings:
            keys = sorted(k for k in set(settings) | set(found) if found.get(k) != settings.get(k))
            raise ValueError(refusal.format(keys=", ".join(keys)))
    else:
        atomic_write_json(path, settings)


def size_on_disk(path):
    """Bytes of a file, or of every file under a folder (a SavedModel)."""
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
    return os.path.getsize(path)
