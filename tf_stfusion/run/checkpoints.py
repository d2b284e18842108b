"""Checkpoint lookup and writing: the newest *readable* checkpoint of a folder
(an unreadable newer one is named and skipped, never deleted), a checkpoint from
a prefix / phase folder / run folder, and the per-phase ``Saver`` (non-chief
workers write their share into a throwaway folder, TF's documented pattern)."""

import glob
import os
import re
import shutil
import tempfile

import tensorflow as tf

from tf_stfusion.run.config import TrainError


def checkpoint_chain(directory):
    """Checkpoint prefixes in ``directory``, newest first: those the folder's
    ``checkpoint`` state lists, then any other complete ``ckpt-N`` (index file present)."""
    state = tf.train.get_checkpoint_state(directory) if tf.io.gfile.isdir(directory) else None
    listed = [_located(p, directory) for p in (state.all_model_checkpoint_paths if state else [])]
    found = [f[:-len(".index")] for f in glob.glob(os.path.join(directory, "ckpt-*.index"))]
    number = lambda p: int(re.search(r"-(\d+)$", p).group(1)) if re.search(r"-(\d+)$", p) else -1  # noqa: E731
    return sorted(set(listed) | set(found), key=number, reverse=True)


def _located(path, directory):
    """A path from a ``checkpoint`` state file, found again: TF records it as the
    manager was given it (relative to the working directory when ``model_dir`` was
    relative), so it may be relative to the process that wrote it, not to ``directory``."""
    for candidate in (path, os.path.join(directory, path), os.path.join(directory, os.path.basename(path))):
        if tf.io.gfile.exists(f"{candidate}.index"):
            return candidate
    return os.path.join(directory, os.path.basename(path))


def unreadable(prefix):
    """Why the checkpoint at ``prefix`` cannot be read (None when every tensor reads)."""
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except (tf.errors.OpError, ValueError, IndexError, RuntimeError, OSError) as e:
        return str(e).strip().splitlines()[0][:200] or type(e).__name__
    return None


def newest_readable(directory, warn=print):
    """The newest readable checkpoint of ``directory`` (None if it has none at all);
    an unreadable newer one is named in a warning and skipped, never deleted."""
    chain = checkpoint_chain(directory)
    bad = []
    for prefix in chain:
        reason = unreadable(prefix)
        if reason is None:
            for skipped, why in bad:
                warn(f"warning: checkpoint {skipped} is unreadable ({why}); using the previous one, {prefix}")
            return prefix
        bad.append((prefix, reason))
    if bad:
        raise TrainError(f"no readable checkpoint in {directory}: " + "; ".join(f"{p} ({why})" for p, why in bad)
                         + "; move the folder away to start this phase again, or resume from another run with "
                         "--init_from")
    return None


def find_checkpoint(path, what="--init_from"):
    """A readable checkpoint prefix from a prefix, a phase folder, or a run folder
    (its newest of search/, warmup/, fixed/). An unreadable one is refused in one
    line naming the readable alternatives of its folder."""
    if tf.io.gfile.exists(f"{path}.index"):
        prefix = path
    elif not tf.io.gfile.isdir(path):
        raise TrainError(f"{what}={path}: no such checkpoint or folder")
    else:
        folders = [path] + [os.path.join(path, phase) for phase in ("search", "warmup", "fixed")]
        chains = [checkpoint_chain(folder) for folder in folders]
        prefix = next((chain[0] for chain in chains if chain), None)
        if prefix is None:
            raise TrainError(f"{what}={path}: no checkpoint in it or in its search/, warmup/, fixed/ folders")
    return require_readable(prefix, what)


def require_readable(prefix, what="checkpoint"):
    reason = unreadable(prefix)
    if reason is None:
        return prefix
    others = [p for p in checkpoint_chain(os.path.dirname(prefix)) if p != prefix and unreadable(p) is None]
    raise TrainError(f"{what}: checkpoint {prefix} is unreadable ({reason}); "
                     + (f"readable ones in that folder: {', '.join(others)} (pass one with --checkpoint)"
                        if others else "no other readable checkpoint is in that folder"))


class Saver:
    """Checkpoints of one phase; non-chief workers write to a throwaway folder."""

    def __init__(self, checkpoint, directory, chief, keep):
        self.checkpoint = checkpoint
        self.chief = chief
        self.directory = directory
        self.manager = tf.train.CheckpointManager(checkpoint, directory, keep) if chief else None

    @property
    def latest(self):
        return tf.train.latest_checkpoint(self.directory)

    def newest_readable(self, warn=print):
        return newest_readable(self.directory, warn)

    def save(self, step):
        if self.chief:
            return self.manager.save(checkpoint_number=step)
        tmp = tempfile.mkdtemp(prefix="stfusion-worker-ckpt-")
        try:
            self.checkpoint.write(os.path.join(tmp, "ckpt"))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return None


def restore_weights(model, checkpoint):
    """Loads ``model``'s weights from the checkpoint prefix ``checkpoint`` (one
    written by training: what else it holds, the optimizer and the step, is left
    unread). Every weight of ``model`` must be found there with its shape; if not,
    a one-line ``TrainError`` naming the checkpoint and the model (the one
    translation of TF's ``AssertionError`` / ``ValueError`` for training, the search
    and the export)."""
    try:
        tf.train.Checkpoint(model=model).restore(checkpoint).expect_partial().assert_existing_objects_matched()
    except (AssertionError, ValueError) as e:  # missing objects / a variable of another shape
        spec = getattr(model, "stf_spec", None)
        what = f"{spec.backbone}, {spec.num_classes} classes" if spec is not None else model.name
        raise TrainError(f"checkpoint {checkpoint} does not match this model ({what}): {str(e)[:300]}") from None
