"""Keras 3 layers of tf_stfusion."""

from tf_stfusion.layers.drop_path import (
    ENTROPY_FORMS,
    GATE_MODES,
    ClipDropLogit,
    VariationalDropPath,
)
from tf_stfusion.layers.group_conv import GroupConv3D
from tf_stfusion.layers.temporal_bias import TemporalBias

__all__ = ["ENTROPY_FORMS", "GATE_MODES", "ClipDropLogit", "GroupConv3D", "TemporalBias", "VariationalDropPath"]
