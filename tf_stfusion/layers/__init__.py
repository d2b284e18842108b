"""Keras 3 layers of tf_stfusion."""

from tf_stfusion.layers.drop_path import (
    ENTROPY_FORMS,
    GATE_MODES,
    ClipDropLogit,
    VariationalDropPath,
)

__all__ = ["ENTROPY_FORMS", "GATE_MODES", "ClipDropLogit", "VariationalDropPath"]
