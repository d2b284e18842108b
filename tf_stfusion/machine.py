"""The ``machine:`` line every benchmark prints and every latency table carries, so that
its numbers say where they were measured.

    from tf_stfusion.machine import machine_line   # benchmarks: ``from machine import machine_line``
    print(machine_line(TensorFlow=tf.__version__))

No TensorFlow here (``import tf_stfusion`` does not import it either).
"""

import os
import platform
import sys


def cpu_model():
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(**versions):
    """``machine: <cores> CPU cores (<model>, <arch>), GPUs: <n> (<names>); Python x, <name> <version>...``.

    GPUs are counted by TensorFlow when the benchmark has imported it (importing it
    here only to count would load TF into benchmarks that do not use it)."""
    line = f"machine: {os.cpu_count()} CPU cores ({cpu_model()}, {platform.machine()})"
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        gpus = tf.config.list_physical_devices("GPU")
        names = [tf.config.experimental.get_device_details(g).get("device_name", "GPU") for g in gpus]
        line += f", GPUs: {len(gpus)}" + (f" ({', '.join(names)})" if names else "")
    packages = {"Python": platform.python_version(), **versions}
    return line + "; " + ", ".join(f"{name} {version}" for name, version in packages.items())
