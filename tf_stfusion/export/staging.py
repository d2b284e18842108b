"""An export is written into a work folder next to the export folder and moved
into place only when every check passed: a failed or killed export leaves no
partial model where TF Serving (which watches version folders) could load it.
"""

import contextlib
import os
import re
import shutil
import tempfile

from tf_stfusion.fileio import atomic_write_json

WORK_PREFIX = ".stfusion-export-"  # + pid: the temporary folder an export writes into
REPORT_FILE = "export_report.json"


def remove_interrupted_exports(parent):
    """Work folders of exports whose process is gone (killed before it could clean up):
    never a version folder (those are moved into place complete), removed here."""
    removed = []
    for name in os.listdir(parent):
        found = re.match(rf"{re.escape(WORK_PREFIX)}(\d+)-", name)
        if not found:
            continue
        try:
            os.kill(int(found.group(1)), 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # another user's live process
        shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
        removed.append(os.path.join(parent, name))
    return removed


@contextlib.contextmanager
def work_folder(export_dir, log=print):
    """``(parent, work)``: the export folder (made, its killed exports' work folders
    removed) and a fresh work folder in it, removed on exit whatever happened."""
    parent = os.path.abspath(export_dir)
    os.makedirs(parent, exist_ok=True)
    for leftover in remove_interrupted_exports(parent):
        log(f"export: removed {leftover}, left by an export that was killed")
    work = tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{os.getpid()}-", dir=parent)
    try:
        yield parent, work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def move_into_place(work, parent, files, report):
    """Moves ``files`` (name -> path relative to both folders) from ``work`` into
    ``parent``, then writes ``report`` as ``export_report.json``. Plain files first,
    folders (the SavedModel's version folder) last, so TF Serving never sees a
    partial export; an existing folder is replaced (``--overwrite`` was given)."""
    for name in sorted(files, key=lambda n: os.path.isdir(os.path.join(work, files[n]))):
        final = os.path.join(parent, files[name])
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        os.replace(os.path.join(work, files[name]), final)
    atomic_write_json(os.path.join(parent, REPORT_FILE), report)
