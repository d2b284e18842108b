"""Which machines take part in a run, and which one this process is: the cluster
of a synchronous multi-worker run (``MultiWorkerMirroredStrategy``), resolved from
the environment the job runs in instead of a hand-written ``TF_CONFIG``.

``--cluster`` (train, search, export's checks):

* ``tf_config``: TensorFlow's ``TFConfigClusterResolver`` (the ``TF_CONFIG``
  variable; Ray Train's ``TensorflowTrainer`` sets it for each worker);
* ``slurm``: TensorFlow's ``SlurmClusterResolver`` (``SLURM_PROCID``,
  ``SLURM_STEP_NUM_TASKS``, ``SLURM_STEP_NODELIST``, ``SLURM_STEP_TASKS_PER_NODE``
  of an ``srun`` step; tasks on one node take ports ``--cluster_port``, +1, ...);
* ``kubernetes``: an Indexed Job or JobSet behind a headless Service: this pod's
  index ``JOB_COMPLETION_INDEX``, its ``HOSTNAME`` (``<name>-<index>``: every
  peer's is the same with its own index), the worker count
  ``STFUSION_NUM_WORKERS`` and the Service name ``STFUSION_SERVICE`` (the pods'
  subdomain), both set in the manifest (``launch/k8s``); TensorFlow has no
  resolver for this (its ``KubernetesClusterResolver`` queries the API server);
* ``none``: this machine alone, whatever the environment says;
* ``auto``: the one of these the environment shows, said in one line.

A contradiction (a Slurm step with a ``TF_CONFIG`` naming hosts outside it, an
index beyond the worker count, two schedulers at once) is a ``ClusterError``
with one line. The chief is the ``chief`` task if ``TF_CONFIG`` names one, else
worker 0 (TensorFlow's convention).
"""

import dataclasses
import json
import os
from typing import Any, Optional, Tuple

CLUSTERS = ("auto", "tf_config", "slurm", "kubernetes", "none")
DEFAULT_PORT = 8888  # SlurmClusterResolver's port_base
K8S_WORKERS, K8S_SERVICE = "STFUSION_NUM_WORKERS", "STFUSION_SERVICE"


class ClusterError(ValueError):
    """The environment does not describe one consistent cluster; the message says
    which variable and what to do."""


@dataclasses.dataclass(frozen=True)
class Cluster:
    """A resolved cluster. ``spec``: task type -> ``("host:port", ...)``;
    ``resolver``: the ``tf.distribute.cluster_resolver`` object for the strategy."""
    source: str
    spec: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()
    task_type: Optional[str] = None
    task_index: int = 0
    resolver: Any = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def num_workers(self):
        return sum(len(hosts) for _, hosts in self.spec)

    @property
    def chief(self):
        """``(task_type, index)`` of the process that writes."""
        types = dict(self.spec)
        return ("chief", 0) if "chief" in types else ("worker", 0)

    @property
    def is_chief(self):
        return self.num_workers <= 1 or (self.task_type, self.task_index) == self.chief

    def describe(self):
        """One line: where the cluster came from, this task and the chief."""
        if self.num_workers <= 1:
            return f"cluster: {self.source}: this machine alone"
        kind, index = self.chief
        hosts = ", ".join(h for _, hs in self.spec for h in hs)
        return (f"cluster: {self.source}: {self.task_type} {self.task_index} of {self.num_workers} workers "
                f"[{hosts}], chief {kind} {index} ({dict(self.spec)[kind][index]})")


def resolve(kind="auto", port=DEFAULT_PORT):
    """The ``Cluster`` of ``kind`` (one of ``CLUSTERS``) from ``os.environ``.
    Raises ClusterError on a missing variable or a contradiction."""
    if kind not in CLUSTERS:
        raise ClusterError(f"--cluster must be one of {', '.join(CLUSTERS)}, got {kind!r}")
    found, asked = detect(), kind
    if kind == "auto":
        if "slurm" in found and "kubernetes" in found:
            raise ClusterError("both a Slurm step (SLURM_PROCID) and a Kubernetes Indexed Job "
                               "(JOB_COMPLETION_INDEX) are in the environment; pick one with --cluster")
        kind = next((k for k in ("tf_config", "slurm", "kubernetes") if k in found), "none")
    elif kind != "none" and kind not in found:
        raise ClusterError(f"--cluster={kind} but {_MARKERS[kind]} is not set: "
                           f"{_HOW[kind]}, or use --cluster=auto")
    if kind == "none":
        return Cluster("none")
    if asked != "tf_config" and "slurm" in found and "tf_config" in found:
        _check_tf_config_inside_slurm()
    return {"tf_config": _from_tf_config, "slurm": _from_slurm, "kubernetes": _from_kubernetes}[kind](port)


_MARKERS = {"tf_config": "TF_CONFIG", "slurm": "SLURM_PROCID/SLURM_STEP_NUM_TASKS",
            "kubernetes": "JOB_COMPLETION_INDEX"}
_HOW = {"tf_config": "set it on every machine (README, Distribution)",
        "slurm": "start one task per node with srun (launch/slurm/k400.sbatch)",
        "kubernetes": "run as an Indexed Job or JobSet (launch/k8s/k400-train.yaml)"}


def detect():
    """The cluster environments present: a subset of tf_config, slurm, kubernetes."""
    env = os.environ
    found = []
    if env.get("TF_CONFIG", "").strip():
        found.append("tf_config")
    if "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env:
        found.append("slurm")
    if "JOB_COMPLETION_INDEX" in env:
        found.append("kubernetes")
    return found


def _from_tf_config(port):
    import tensorflow as tf

    try:
        config = json.loads(os.environ["TF_CONFIG"])
    except json.JSONDecodeError as e:
        raise ClusterError(f"TF_CONFIG is not valid JSON: {e}") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster", {}), dict):
        raise ClusterError("TF_CONFIG must be a JSON object with 'cluster' (task type -> hosts) and 'task'")
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    spec = resolver.cluster_spec().as_dict()
    task_type, task_id = resolver.task_type, resolver.task_id or 0
    if len(spec.get("worker", ())) + len(spec.get("chief", ())) > 1 and task_type is None:
        raise ClusterError("TF_CONFIG lists several workers but no 'task': add "
                           '"task": {"type": "worker", "index": i} on machine i')
    return _checked("tf_config", spec, task_type, task_id, resolver, "TF_CONFIG's task index")


def _from_slurm(port):
    import tensorflow as tf
    from tensorflow.python.distribute.cluster_resolver.slurm_cluster_resolver import expand_tasks_per_node

    env = os.environ
    ntasks, rank = int(env["SLURM_STEP_NUM_TASKS"]), int(env["SLURM_PROCID"])
    if not 0 <= rank < ntasks:
        raise ClusterError(f"SLURM_PROCID={rank} is beyond the step's SLURM_STEP_NUM_TASKS={ntasks}")
    gpus = _gpus_on_node()
    try:
        per_node = max(expand_tasks_per_node(env.get("SLURM_STEP_TASKS_PER_NODE", "1")))
        # A node's GPUs are split between its tasks (CUDA_VISIBLE_DEVICES) only when it runs several.
        # Without GPUs each task takes a "slot" of its node only to get its own port.
        resolver = tf.distribute.cluster_resolver.SlurmClusterResolver(
            port_base=port, gpus_per_node=gpus or per_node, gpus_per_task=None if gpus else 1,
            auto_set_gpu=bool(gpus) and per_node > 1)
        spec = resolver.cluster_spec().as_dict()
    except (RuntimeError, ValueError, KeyError) as e:
        raise ClusterError(f"the Slurm step does not resolve ({e}); start one task per node with srun "
                           "(launch/slurm/k400.sbatch)") from None
    return _checked("slurm", spec, resolver.task_type, resolver.task_id, resolver, "SLURM_PROCID")


def _gpus_on_node():
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    return int(os.environ.get("SLURM_GPUS_ON_NODE", "0") or 0)


def _from_kubernetes(port):
    import tensorflow as tf

    env = os.environ
    index, hostname = env["JOB_COMPLETION_INDEX"], env.get("HOSTNAME", "")
    if not index.isdigit() or not env.get(K8S_WORKERS, "").isdigit():
        raise ClusterError(f"JOB_COMPLETION_INDEX={index!r} and {K8S_WORKERS}={env.get(K8S_WORKERS)!r} must be "
                           f"integers; set {K8S_WORKERS} to the Job's completions in the manifest")
    index, workers = int(index), int(env[K8S_WORKERS])
    if not hostname.endswith(f"-{index}"):
        raise ClusterError(f"HOSTNAME={hostname!r} does not end in -{index} (JOB_COMPLETION_INDEX): run as an "
                           "Indexed Job or JobSet, whose pods are named <name>-<index>")
    service = env.get(K8S_SERVICE, "")
    stem = hostname[:-len(f"-{index}")]
    hosts = [f"{stem}-{i}{'.' + service if service else ''}:{port}" for i in range(workers)]
    spec = {"worker": hosts}
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(spec), task_type="worker", task_id=index, rpc_layer="grpc")
    return _checked("kubernetes", spec, "worker", index, resolver, "JOB_COMPLETION_INDEX")


def _checked(source, spec, task_type, task_id, resolver, index_name):
    hosts = spec.get(task_type, ()) if task_type else ()
    if task_type and not 0 <= task_id < len(hosts):
        raise ClusterError(f"{index_name}={task_id} is beyond the {len(hosts)} {task_type} task(s) of the cluster "
                           f"({source}); give each machine an index below that")
    spec = tuple((k, tuple(spec[k])) for k in sorted(spec, key=lambda k: (k != "chief", k)))
    return Cluster(source, spec, task_type, task_id, resolver)


def _check_tf_config_inside_slurm():
    from tensorflow.python.distribute.cluster_resolver.slurm_cluster_resolver import expand_hostlist

    nodes = set(expand_hostlist(os.environ.get("SLURM_STEP_NODELIST", "")))
    try:
        cluster = json.loads(os.environ["TF_CONFIG"]).get("cluster", {})
    except (ValueError, AttributeError):
        return  # the TF_CONFIG resolution names the problem
    others = sorted({h for hosts in cluster.values() for h in hosts if h.rsplit(":", 1)[0] not in nodes})
    if others:
        raise ClusterError(f"a Slurm step on {', '.join(sorted(nodes))} has a TF_CONFIG naming other hosts "
                           f"({', '.join(others)}): unset TF_CONFIG (--cluster=slurm resolves the step), or "
                          "pass --cluster=tf_config if it is right (Ray inside a Slurm allocation)")


# -- one share of a job split over tasks (prepare) --------------------------------
def task_share(num_tasks=None, task_index=None):
    """``(num_tasks, task_index)`` of a job split over machines: the flags, else a
    Slurm job array (``SLURM_ARRAY_TASK_COUNT``, ``SLURM_ARRAY_TASK_ID`` minus
    ``SLURM_ARRAY_TASK_MIN``) or an Indexed Job (``JOB_COMPLETION_INDEX``; its
    count from the flag or ``STFUSION_NUM_WORKERS``), else ``(1, 0)``."""
    env = os.environ
    if "SLURM_ARRAY_TASK_ID" in env:
        source = "SLURM_ARRAY_TASK_ID"
        env_index = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", 0))
        env_count = int(env["SLURM_ARRAY_TASK_COUNT"]) if "SLURM_ARRAY_TASK_COUNT" in env else None
    elif "JOB_COMPLETION_INDEX" in env:
        source = "JOB_COMPLETION_INDEX"
        env_index = int(env["JOB_COMPLETION_INDEX"])
        env_count = int(env[K8S_WORKERS]) if env.get(K8S_WORKERS, "").isdigit() else None
    else:
        source, env_index, env_count = "", None, None
    count = num_tasks if num_tasks is not None else (env_count or 1)
    index = task_index if task_index is not None else (env_index or 0)
    if count < 1 or not 0 <= index < count:
        where = f" ({source})" if source and task_index is None else ""
        raise ClusterError(f"task index {index}{where} is beyond --num_tasks={count}: "
                           "give each task an index in [0, num_tasks)")
    return count, index


# The kinds of tf.distribute object a run can ask for (``distribute.make_distribution``);
# here, without TensorFlow, so that a CLI checks --distribution before TensorFlow starts.
DISTRIBUTIONS = ("auto", "one_device", "mirrored", "multi_worker")


def define_distribution_flags(flags):
    """``--distribution`` and ``--devices`` of the CLIs that train or evaluate (train, search)."""
    flags.DEFINE_enum("distribution", "auto", list(DISTRIBUTIONS),
                      "auto: multi_worker if the cluster (--cluster) has several workers, mirrored on several "
                      "GPUs, else one_device (GPU or CPU).")
    flags.DEFINE_list("devices", [], "Devices for mirrored / one_device (default: all GPUs, or the CPU).")
    define_flags(flags)


def define_flags(flags):
    """``--cluster`` and ``--cluster_port``: one definition for every CLI."""
    flags.DEFINE_enum("cluster", "auto", list(CLUSTERS),
                      "Where the workers of a multi-machine run come from: TF_CONFIG, the Slurm step, a "
                      "Kubernetes Indexed Job / JobSet, none (this machine), or auto (the one found; said "
                      "in one line).")
    flags.DEFINE_integer("cluster_port", DEFAULT_PORT, "Slurm / Kubernetes: the port of each worker's gRPC "
                         "server (a node's k-th task takes port + k).")
