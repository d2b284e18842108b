"""The ``machine:`` line every benchmark prints (``tf_stfusion.machine``, which the latency
tables carry too), so that its numbers say where they were measured.

    from machine import machine_line          # benchmarks/ is the script's own folder
    print(machine_line(TensorFlow=tf.__version__))
"""

from tf_stfusion.machine import cpu_model, machine_line  # noqa: F401  (re-exported for the benchmarks)
