"""The ``tf.distribute`` strategy of a run: one device, all local GPUs, or many
machines (the cluster from ``TF_CONFIG``, a Slurm step or a Kubernetes Indexed
Job: ``tf_stfusion.cluster``), and which process is the chief.

``auto`` picks ``multi_worker`` when the cluster has more than one worker,
``mirrored`` when the machine has more than one GPU (or several devices are
named), else ``one_device`` (the GPU, or the CPU on a CPU-only machine).
"""

import sys

import tensorflow as tf

from tf_stfusion import cluster as cluster_lib
from tf_stfusion.cluster import DISTRIBUTIONS


def resolve_kind(kind, devices=None, workers=0):
    """The concrete kind for ``auto``; refuses contradictions with the cluster
    (``workers``: its size, ``Cluster.num_workers``)."""
    if kind not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {kind!r}")
    if kind == "auto":
        if workers > 1:
            return "multi_worker"
        if (devices and len(devices) > 1) or len(tf.config.list_physical_devices("GPU")) > 1:
            return "mirrored"
        return "one_device"
    if kind == "multi_worker" and workers < 1:
        raise ValueError("--distribution=multi_worker needs a cluster: TF_CONFIG, a Slurm step or a Kubernetes "
                         "Indexed Job (--cluster)")
    if kind != "multi_worker" and workers > 1:
        raise ValueError(f"the cluster lists {workers} workers but --distribution={kind}; "
                         "use --distribution=multi_worker (or auto), or --cluster=none")
    if kind == "one_device" and devices and len(devices) > 1:
        raise ValueError(f"--distribution=one_device takes one device, got {devices}")
    return kind


def make_distribution(kind="auto", devices=None, cluster="auto", port=cluster_lib.DEFAULT_PORT):
    """A ``tf.distribute.Strategy``. ``devices`` (e.g. ``["/gpu:0", "/gpu:1"]``)
    restricts ``mirrored``/``one_device``; by default they use every GPU.
    ``cluster``: one of ``cluster.CLUSTERS`` (``--cluster``; its line goes to
    stderr) or a resolved ``cluster.Cluster``. Raises ValueError (ClusterError)
    on a contradiction."""
    if isinstance(cluster, str):
        cluster = cluster_lib.resolve(cluster, port)
        if cluster.source != "none":
            print(cluster.describe(), file=sys.stderr)
    kind = resolve_kind(kind, devices, cluster.num_workers)
    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=cluster.resolver)
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy(devices or None)
    if devices:
        device = devices[0]
    else:
        device = "/gpu:0" if tf.config.list_physical_devices("GPU") else "/cpu:0"
    return tf.distribute.OneDeviceStrategy(device)


def default_distribution():
    """The one-device ``tf.distribute`` default of every tool (the GPU, or the CPU)."""
    return make_distribution("one_device")


def is_chief(distribution):
    """Whether this process writes summaries, checkpoints and reports."""
    if not isinstance(distribution, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    resolver = distribution.cluster_resolver
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type is None or task_type == "chief":
        return True
    # Without a 'chief' entry, worker 0 is the chief (TF's convention).
    return task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()


def describe(distribution):
    """One line for the log: kind, replicas, devices."""
    extended = distribution.extended
    devices = getattr(extended, "worker_devices", None) or ()
    # MultiWorkerMirroredStrategy's class is CollectiveAllReduceStrategy.
    kind = ("MultiWorkerMirroredStrategy" if isinstance(distribution, tf.distribute.MultiWorkerMirroredStrategy)
            else type(distribution).__name__)
    return (f"{kind} with {distribution.num_replicas_in_sync} replica(s)"
            + (f" on {', '.join(devices)}" if devices else ""))
