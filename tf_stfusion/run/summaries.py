"""TensorBoard scalars of a run (``RUN/logs/<phase>/``), written by the chief only.
Written with ``tf.summary.write`` and the scalar plugin's metadata by hand, since
TF 2.21 no longer installs the tensorboard package (the logs still open in it)."""

import os

import tensorflow as tf


def _scalar_metadata():
    from tensorflow.core.framework import summary_pb2

    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
    ).SerializeToString()


def write_scalar(tag, value, step=None):
    """A TensorBoard scalar without the tensorboard package."""
    tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=_scalar_metadata())


class Summaries:
    """One event file per phase; a no-op on non-chief workers."""

    def __init__(self, logs_dir, chief):
        self.logs_dir = logs_dir  # RunFolder.logs_dir
        self.chief = chief
        self._writers = {}

    def writer(self, phase):
        if not self.chief:
            return None
        if phase not in self._writers:
            self._writers[phase] = tf.summary.create_file_writer(os.path.join(self.logs_dir, phase))
        return self._writers[phase]

    def train(self, phase, step, loss, reg, acc, lr, gates=None):
        """Loss, accuracy and learning rate of a step; with ``gates`` (``{name: p}``,
        the search phase) the regulariser and every gate's drop probability."""
        writer = self.writer(phase)
        if writer is None:
            return
        with writer.as_default(step=step):
            write_scalar("train/loss", loss)
            write_scalar("train/accuracy", acc)
            write_scalar("train/learning_rate", lr)
            if gates:
                write_scalar("train/regularizer", reg)
                for name, p in gates.items():
                    write_scalar(f"drop_prob/{name}", p)

    def evaluation(self, phase, step, metrics):
        writer = self.writer(phase)
        if writer is None:
            return
        with writer.as_default(step=step):
            for key in ("top1", "top5", "loss"):
                write_scalar(f"val/{key}", metrics[key])

    def flush(self):
        for writer in self._writers.values():
            writer.flush()
