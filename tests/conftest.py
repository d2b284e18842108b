"""Shared fixtures. TF is configured here, before any test touches it."""

import math

import keras
import numpy as np
import pytest

import tf_stfusion as stf  # first: it sets TensorFlow's environment defaults (oneDNN, log level)
import tensorflow as tf  # noqa: E402

# Two logical CPU devices, so that MirroredStrategy can be tested on one CPU.
# This must run before TF initialises its devices.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

TINY_SHAPE = (8, 32, 32, 3)  # frames, height, width, channels


def make_tiny(num_classes=5, seed=0, **kwargs):
    """A tiny template at 8x32x32 with reproducible gate noise."""
    return stf.build_template(
        "tiny", num_classes=num_classes, num_frames=TINY_SHAPE[0], input_size=TINY_SHAPE[1],
        seed=seed, **kwargs,
    )


def random_clips(batch, seed=0, shape=TINY_SHAPE):
    return np.random.default_rng(seed).normal(size=(batch, *shape)).astype("float32")


@pytest.fixture(scope="session")
def mirrored_two_cpus():
    """One MirroredStrategy over the two logical CPUs for the whole session: two
    strategy objects in one process hand out colliding collective instance keys
    (TF then fails with "Shape mismatch in the collective instance")."""
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


@pytest.fixture
def tiny():
    return make_tiny()


@pytest.fixture
def clips():
    return random_clips(4)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A tiny template run after a short warm-up and search phase (small synthetic set)."""
    from tf_stfusion.data import sources, synthetic
    from tf_stfusion.run.config import DataConfig, TrainConfig
    from tf_stfusion.trainer import Trainer

    small = synthetic.SyntheticConfig(videos_per_class=4, val_videos_per_class=2, num_frames=8, size=32)
    data_dir = str(tmp_path_factory.mktemp("synthetic"))
    sources.ensure_synthetic(small, data_dir, progress=False)
    model_dir = str(tmp_path_factory.mktemp("run"))
    data = DataConfig(data_dir=data_dir, num_frames=8, input_size=32, eval_clips=2, synthetic_config=small)
    config = TrainConfig(model_dir=model_dir, data=data, backbone="tiny", batch_size=8, warmup_epochs=1,
                         epochs=1, steps_per_epoch=3, learning_rate=0.05, length_scale=2.0, progress=False,
                         override_preflight=True)  # N = 24: the pre-flight would stop any useful k
    Trainer(config).run()
    return model_dir


# -- the network's graph, read independently of the gates' own bookkeeping ---------------
def _inputs_of(model):
    """Layer name -> the names of the layers feeding it (from the functional graph)."""
    graph = {}
    for layer in model.get_config()["layers"]:
        names = []

        def collect(item):
            if isinstance(item, dict) and "config" in item and "keras_history" in item.get("config", {}):
                names.append(item["config"]["keras_history"][0])
            elif isinstance(item, (list, tuple)):
                for x in item:
                    collect(x)
            elif isinstance(item, dict):
                for x in item.values():
                    collect(x)
        collect(layer.get("inbound_nodes", []))
        graph[layer["name"]] = names
    return graph


def gate_kernel(model, gate):
    """The kernel of the conv a gate drops, found from the graph: the convolution the
    gate's output feeds (pre-activation units), else the one producing its input through
    the BatchNorm (post-norm units); for D1 the unit's spatial 1x3x3 conv."""
    graph = _inputs_of(model)
    consumers = [name for name, inputs in graph.items() if gate.name in inputs]
    layer = lambda n: model.get_layer(n)  # noqa: E731
    is_conv = lambda n: isinstance(layer(n), keras.layers.Conv3D)  # noqa: E731
    if gate.branch != "D1":
        convs = [n for n in consumers if is_conv(n)]
        if convs:
            return layer(convs[0]).kernel
        name = graph[gate.name][0]
        while not is_conv(name):
            name = graph[name][0]
        return layer(name).kernel
    frontier = [gate.name]
    seen = set()
    while frontier:  # breadth-first, both directions, to the nearest 1x3x3 conv
        name = frontier.pop(0)
        if name in seen:
            continue
        seen.add(name)
        if name != gate.name and is_conv(name) and layer(name).kernel_size == (1, 3, 3):
            return layer(name).kernel
        frontier += graph.get(name, []) + [n for n, inputs in graph.items() if name in inputs]
    raise AssertionError(f"no 1x3x3 conv near {gate.name}")


def hand_regularizer(model, k, n, entropy="binary", form="paper"):
    """Eq. 5 summed over the gates, by hand: ``c (1-p) ||W||^2 + H(p)/N`` with
    ``c = k^2/(2N)`` (paper) or ``k/N`` (authors' code), ``p = sigmoid(theta)`` and
    ``W`` the kernel the gate drops, found from the graph."""
    total = 0.0
    from tf_stfusion.gating import gate_layers

    for gate in gate_layers(model):
        theta = float(gate.drop_logit.numpy())
        p = 1.0 / (1.0 + math.exp(-theta))
        # The kernel the gate drops, found from the graph (not from the gate's own ``feeds``).
        w2 = float(np.sum(np.square(np.asarray(gate_kernel(model, gate)), dtype=np.float64)))
        ent = p * math.log(p) + ((1 - p) * math.log(1 - p) if entropy == "binary" else 0.0)
        total += (k * k / (2 * n) if form == "paper" else k / n) * (1 - p) * w2 + ent / n
    return total
