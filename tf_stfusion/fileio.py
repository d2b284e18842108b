"""Atomic file writes: a temporary name in the same folder, then a rename.

A reader (or a resumed run) never sees a half-written file under its final name.
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
