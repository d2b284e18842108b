"""Fusion strategies: the file format, sampling, applying, and Eq. 7 marginals.

A strategy names one fusion unit per layer -- ``S``, ``ST``, ``S+ST`` or ``none``
(the layer is skipped) -- the paper's triplets {(l, v, u)} with v = all earlier
layers. In the template a unit is a setting of the layer's three gates
(S path D2, ST path D3, output D1)::

    S    -> S=1 ST=0 D1=1        ST   -> S=0 ST=1 D1=1
    S+ST -> S=1 ST=1 D1=1        none -> S=0 ST=0 D1=0

File (JSON)::

    {"format": "stfusion-strategy/1", "backbone": "densenet121", "num_layers": 58,
     "layers": [{"name": "block1/layer1", "unit": "S+ST"}, ...],
     "metrics": {...}, "provenance": {...}}
"""

import dataclasses
import json
import math
from typing import Any, Dict, List, Tuple

import numpy as np

from tf_stfusion import gating
from tf_stfusion.fileio import atomic_write_text
from tf_stfusion.models import UNITS, layer_names, spec_of
from tf_stfusion.units import FIXED_STRATEGIES

FORMAT = "stfusion-strategy/1"
UNIT_MASKS = {
    "S": {"S": 1.0, "ST": 0.0, "D1": 1.0},
    "ST": {"S": 0.0, "ST": 1.0, "D1": 1.0},
    "S+ST": {"S": 1.0, "ST": 1.0, "D1": 1.0},
    "none": {"S": 0.0, "ST": 0.0, "D1": 0.0},
}


class StrategyError(ValueError):
    """A strategy that cannot be used, with where and what was expected."""


def unit_from_keeps(keep_s, keep_st, keep_d1):
    """The unit a layer ends up with, given which of its gates keep their path.

    A layer whose D1 is dropped, or whose S and ST paths are both dropped, is
    skipped (``none``).
    """
    if not keep_d1 or not (keep_s or keep_st):
        return "none"
    if keep_s and keep_st:
        return "S+ST"
    return "S" if keep_s else "ST"


@dataclasses.dataclass
class Strategy:
    backbone: str
    layers: List[Tuple[str, str]]  # (layer name, unit)
    metrics: Dict[str, Any] = dataclasses.field(default_factory=dict)
    provenance: Dict[str, Any] = dataclasses.field(default_factory=dict)

    # -- construction -------------------------------------------------------
    @classmethod
    def uniform(cls, unit, model_or_backbone):
        """Every layer the same unit: the fixed strategies S, ST, S+ST."""
        if unit not in UNITS:
            raise StrategyError(f"unknown unit {unit!r}; expected one of {UNITS}")
        backbone = _backbone_name(model_or_backbone)
        names = layer_names(backbone)
        return cls(backbone, [(n, unit) for n in names], provenance={"kind": "fixed", "unit": unit})

    @classmethod
    def from_units(cls, backbone, units, **extra):
        names = layer_names(backbone)
        strategy = cls(backbone, list(zip(names, units)), **extra)
        if len(units) != len(names):
            raise StrategyError(
                f"backbone {backbone!r} has {len(names)} layers, got {len(units)} units"
            )
        strategy.validate()
        return strategy

    @property
    def units(self):
        return [u for _, u in self.layers]

    @property
    def names(self):
        return [n for n, _ in self.layers]

    def counts(self):
        return {u: self.units.count(u) for u in UNITS}

    # -- validation ---------------------------------------------------------
    def validate(self, where="strategy"):
        """Checks units and layer names against the backbone; raises StrategyError."""
        try:
            expected = layer_names(self.backbone)
        except ValueError as e:
            raise StrategyError(f"{where}: field 'backbone': {e}") from None
        for i, (name, unit) in enumerate(self.layers):
            if unit not in UNITS:
                raise StrategyError(
                    f"{where}: layers[{i}] ({name!r}): unknown unit {unit!r}; "
                    f"expected one of {', '.join(UNITS)}"
                )
        if len(self.layers) != len(expected):
            raise StrategyError(
                f"{where}: backbone {self.backbone!r} has {len(expected)} fusion layers, "
                f"the strategy lists {len(self.layers)}"
            )
        for i, (name, want) in enumerate(zip(self.names, expected)):
            if name != want:
                raise StrategyError(
                    f"{where}: layers[{i}]: name {name!r} does not match the backbone's "
                    f"layer {want!r} (layers must be listed in network order)"
                )
        return self

    # -- file format --------------------------------------------------------
    def to_dict(self):
        out = {
            "format": FORMAT,
            "backbone": self.backbone,
            "num_layers": len(self.layers),
            "layers": [{"name": n, "unit": u} for n, u in self.layers],
        }
        if self.metrics:
            out["metrics"] = self.metrics
        if self.provenance:
            out["provenance"] = self.provenance
        return out

    @classmethod
    def from_dict(cls, data, where="strategy"):
        if not isinstance(data, dict):
            raise StrategyError(f"{where}: expected a JSON object, got {type(data).__name__}")
        fmt = data.get("format")
        if fmt is None:
            raise StrategyError(f"{where}: missing field 'format' (expected {FORMAT!r})")
        if fmt != FORMAT:
            raise StrategyError(
                f"{where}: field 'format' is {fmt!r}; this version reads {FORMAT!r}"
            )
        backbone = data.get("backbone")
        if not isinstance(backbone, str):
            raise StrategyError(f"{where}: field 'backbone' must be a string, got {backbone!r}")
        raw_layers = data.get("layers")
        if not isinstance(raw_layers, list):
            raise StrategyError(f"{where}: field 'layers' must be a list of {{name, unit}} objects")
        layers = []
        for i, entry in enumerate(raw_layers):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or "unit" not in entry:
                raise StrategyError(
                    f"{where}: layers[{i}] must be an object with string 'name' and 'unit', got {entry!r}"
                )
            layers.append((entry["name"], entry["unit"]))
        num_layers = data.get("num_layers", len(layers))
        if num_layers != len(layers):
            raise StrategyError(
                f"{where}: field 'num_layers' is {num_layers!r} but 'layers' has {len(layers)} entries"
            )
        for key in ("metrics", "provenance"):
            if not isinstance(data.get(key, {}), dict):
                raise StrategyError(f"{where}: field {key!r} must be an object")
        strategy = cls(backbone, layers, dict(data.get("metrics", {})), dict(data.get("provenance", {})))
        return strategy.validate(where)

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def save(self, path):
        """Writes the file atomically (a temporary name, then a rename)."""
        self.validate()
        atomic_write_text(path, self.to_json())
        return path

    @classmethod
    def load(cls, path):
        """Reads and validates a strategy file; raises StrategyError naming the file."""
        try:
            with open(path) as f:
                text = f.read()
        except OSError as e:
            raise StrategyError(f"{path}: cannot read strategy file: {e.strerror}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise StrategyError(
                f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
            ) from None
        return cls.from_dict(data, where=str(path))

    def check_model(self, model):
        """Refuses a strategy written for another backbone than ``model``'s."""
        backbone = spec_of(model).backbone
        if backbone != self.backbone:
            raise StrategyError(
                f"strategy is for backbone {self.backbone!r}, the model is {backbone!r}"
            )
        return self


def _backbone_name(model_or_backbone):
    if isinstance(model_or_backbone, str):
        layer_names(model_or_backbone)  # validates
        return model_or_backbone
    return spec_of(model_or_backbone).backbone


def fixed_strategies(model_or_backbone):
    """The paper's baselines: every layer S, every layer ST, every layer S+ST."""
    return {u: Strategy.uniform(u, model_or_backbone) for u in FIXED_STRATEGIES}


def strategy_masks(strategy, model):
    """Per-gate 0/1 masks of ``strategy`` in ``gates(model)`` order (float32)."""
    strategy.check_model(model)
    units = dict(strategy.layers)
    return np.array(
        [UNIT_MASKS[units[info.layer]][info.path] for info in gating.gates(model)],
        dtype=np.float32,
    )


def apply_strategy(model, strategy):
    """Puts the template in ``fixed`` mode with the strategy's masks.

    Only variables are assigned, so applying another strategy never retraces.
    """
    return apply_strategies(model, [strategy])


def apply_strategies(model, strategies):
    """Fixed mode with ``K = len(strategies)`` strategies at once: a batch is
    read as ``K`` consecutive equal tiles, tile ``k`` runs ``strategies[k]``.

    Build such a batch with ``tf.tile(clips, [K, 1, 1, 1, 1])``; output rows
    ``k*B:(k+1)*B`` then belong to ``strategies[k]``. Variables only: no retrace.
    """
    if not strategies:
        raise ValueError("apply_strategies needs at least one strategy")
    masks = np.stack([strategy_masks(s, model) for s in strategies], axis=1)  # [gates, K]
    gating.set_gate_mode(model, "fixed")
    for info, gate_masks in zip(gating.gates(model), masks):
        info.gate.set_fixed_masks(gate_masks)
    return model


def sample_strategies(model, num_samples, seed=None):
    """Draws ``num_samples`` strategies from the learned drop probabilities.

    Per gate ``drop ~ Bernoulli(p)``; a layer's unit follows ``unit_from_keeps``.
    Reproducible for a given ``seed``.
    """
    by_layer = gating.gates_by_layer(model)
    p = _drop_probs(by_layer)  # [layers, 3]: S, ST, D1
    rng = np.random.default_rng(seed)
    keeps = rng.random((num_samples,) + p.shape) >= p
    backbone = spec_of(model).backbone
    return [
        Strategy.from_units(
            backbone,
            [unit_from_keeps(*k) for k in sample_keeps],
            provenance={"kind": "sampled", "seed": seed, "index": i},
        )
        for i, sample_keeps in enumerate(keeps)
    ]


def sample_strategy(model, seed=None):
    """Draws one strategy from the learned drop probabilities (see above)."""
    strategy = sample_strategies(model, 1, seed)[0]
    strategy.provenance.pop("index")
    return strategy


def _drop_probs(by_layer):
    gates_in_order = [paths[b] for paths in by_layer.values() for b in gating.GATE_PATHS]
    logits = np.array([float(g.drop_logit.numpy()) for g in gates_in_order], dtype=np.float64)
    return (1.0 / (1.0 + np.exp(-logits))).reshape(len(by_layer), len(gating.GATE_PATHS))


def marginal(p):
    """Eq. 7: the probability that a gate's path is used, ``1 - sqrt(p)``.

    The drop is a product of two Bernoulli variables with equal rates trained
    as one (supplementary material), so each has rate ``sqrt(p)``.
    """
    return 1.0 - math.sqrt(p)


def unit_probabilities(m_s, m_st):
    """Per-layer unit probabilities from the S and ST path marginals (SPEC §4)."""
    return {
        "S": m_s * (1.0 - m_st),
        "ST": (1.0 - m_s) * m_st,
        "S+ST": m_s * m_st,
        "none": (1.0 - m_s) * (1.0 - m_st),
    }


def marginals(model):
    """Eq. 7 per gate and the per-layer unit probabilities.

    Returns the ``probabilities.json`` structure: ``{"gates": [{"layer", "path",
    "p", "marginal"}], "layers": [{"layer", "S", "ST", "S+ST", "none"}]}``.
    """
    out = {"gates": [], "layers": []}
    by_layer = gating.gates_by_layer(model)
    for layer, p_row in zip(by_layer, _drop_probs(by_layer)):
        m = {}
        for path, p in zip(gating.GATE_PATHS, p_row):
            m[path] = marginal(p)
            out["gates"].append({"layer": layer, "path": path, "p": float(p), "marginal": m[path]})
        out["layers"].append({"layer": layer, **unit_probabilities(m["S"], m["ST"])})
    return out
