"""The ``tf.distribute`` strategy of a run: one device, all local GPUs, or many
machines (``TF_CONFIG``), and which process is the chief.

``auto`` picks ``multi_worker`` when ``TF_CONFIG`` lists more than one worker,
``mirrored`` when the machine has more than one GPU (or several devices are
named), else ``one_device`` (the GPU, or the CPU on a CPU-only machine).
"""

import json
import os

import tensorflow as tf

DISTRIBUTIONS = ("auto", "one_device", "mirrored", "multi_worker")


def tf_config():
    """The parsed ``TF_CONFIG`` environment variable (``{}`` if unset)."""
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise ValueError("TF_CONFIG must be a JSON object with 'cluster' and 'task'")
    return config


def cluster_size(config=None):
    """Number of worker processes (chief included) that ``TF_CONFIG`` lists."""
    cluster = (tf_config() if config is None else config).get("cluster", {})
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def resolve_kind(kind, devices=None):
    """The concrete kind for ``auto``; refuses contradictions with ``TF_CONFIG``."""
    if kind not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {kind!r}")
    workers = cluster_size()
    if kind == "auto":
        if workers > 1:
            return "multi_worker"
        if (devices and len(devices) > 1) or len(tf.config.list_physical_devices("GPU")) > 1:
            return "mirrored"
        return "one_device"
    if kind == "multi_worker" and workers < 1:
        raise ValueError("--distribution=multi_worker needs TF_CONFIG with a 'cluster' of workers and this 'task'")
    if kind != "multi_worker" and workers > 1:
        raise ValueError(f"TF_CONFIG lists {workers} workers but --distribution={kind}; "
                         "use --distribution=multi_worker (or auto), or unset TF_CONFIG")
    if kind == "one_device" and devices and len(devices) > 1:
        raise ValueError(f"--distribution=one_device takes one device, got {devices}")
    return kind


def make_distribution(kind="auto", devices=None):
    """A ``tf.distribute.Strategy``. ``devices`` (e.g. ``["/gpu:0", "/gpu:1"]``)
    restricts ``mirrored``/``one_device``; by default they use every GPU."""
    kind = resolve_kind(kind, devices)
    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy(devices or None)
    if devices:
        device = devices[0]
    else:
        device = "/gpu:0" if tf.config.list_physical_devices("GPU") else "/cpu:0"
    return tf.distribute.OneDeviceStrategy(device)


def is_chief(strategy):
    """Whether this process writes summaries, checkpoints and reports."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    resolver = strategy.cluster_resolver
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type is None or task_type == "chief":
        return True
    # Without a 'chief' entry, worker 0 is the chief (TF's convention).
    return task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()


def describe(strategy):
    """One line for the log: kind, replicas, devices."""
    extended = strategy.extended
    devices = getattr(extended, "worker_devices", None) or ()
    # MultiWorkerMirroredStrategy's class is CollectiveAllReduceStrategy.
    kind = ("MultiWorkerMirroredStrategy" if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            else type(strategy).__name__)
    return (f"{kind} with {strategy.num_replicas_in_sync} replica(s)"
            + (f" on {', '.join(devices)}" if devices else ""))
