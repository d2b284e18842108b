"""tf_stfusion: spatiotemporal fusion in 3D CNNs, the probabilistic view (CVPR 2020).

Public API::

    import tf_stfusion as stf
    model = stf.build_template("densenet121", num_classes=174, num_frames=16, input_size=224)
    stf.gates(model)                       # ordered gates with layer names and p
    s = stf.Strategy.uniform("ST", model)  # or Strategy.load(path), sample_strategy(model, seed)
    stf.apply_strategy(model, s)           # fixed mode; no retrace
    stf.cost(model, s, input_shape=(16, 224, 224, 3))   # .params, .gflops
    stf.marginals(model)                   # Eq. 7 per gate and per-layer unit probabilities

Names are resolved lazily, so ``import tf_stfusion`` does not import TensorFlow.
It does set two of TensorFlow's environment defaults (a value you set wins),
which take effect when TensorFlow is imported afterwards:

* ``TF_ENABLE_ONEDNN_OPTS=1``: TensorFlow turns its oneDNN CPU kernels on by
  default only on some CPUs; on an AVX2 CPU without AVX-512 they made the tiny
  template's training step 3.3x faster (27 -> 90 clips/s, 8x48x48), at the
  price of float round-off in a different order;
* ``TF_CPP_MIN_LOG_LEVEL=2``: no INFO/WARNING lines from TensorFlow's C++ core
  (the command lines go further: ``tf_stfusion.configs.quiet_tensorflow``).
"""

import importlib
import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
# The user's own TensorFlow C++ log level, if any: it wins over every default here and in the CLIs
# (configs.quiet_tensorflow). A level this package set, in this process or a parent, is marked so.
DEFAULT_TF_LOG_LEVEL = "STFUSION_DEFAULT_TF_LOG_LEVEL"
USER_TF_LOG_LEVEL = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
if USER_TF_LOG_LEVEL == os.environ.get(DEFAULT_TF_LOG_LEVEL):
    USER_TF_LOG_LEVEL = None
if USER_TF_LOG_LEVEL is None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ[DEFAULT_TF_LOG_LEVEL] = os.environ["TF_CPP_MIN_LOG_LEVEL"]

__version__ = "0.1.0"

_EXPORTS = {
    "build_template": "tf_stfusion.models",
    "layer_names": "tf_stfusion.models",
    "BACKBONES": "tf_stfusion.models",
    "UNITS": "tf_stfusion.models",
    "VariationalDropPath": "tf_stfusion.layers",
    "gates": "tf_stfusion.gating",
    "set_gate_mode": "tf_stfusion.gating",
    "fusion_regularizer": "tf_stfusion.gating",
    "Strategy": "tf_stfusion.strategy",
    "StrategyError": "tf_stfusion.strategy",
    "fixed_strategies": "tf_stfusion.strategy",
    "sample_strategy": "tf_stfusion.strategy",
    "sample_strategies": "tf_stfusion.strategy",
    "apply_strategy": "tf_stfusion.strategy",
    "apply_strategies": "tf_stfusion.strategy",
    "marginals": "tf_stfusion.strategy",
    "cost": "tf_stfusion.accounting",
    "Cost": "tf_stfusion.accounting",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tf_stfusion' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
