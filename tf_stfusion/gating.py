"""Finding, switching and regularising the v-DropPath gates of a template."""

import dataclasses

import tensorflow as tf

from tf_stfusion.layers.drop_path import GATE_MODES, VariationalDropPath, binary_entropy_term
from tf_stfusion.prior import PRIOR_FORMULAS, describe_coefficient, weight_coefficient

GATE_PATHS = ("S", "ST", "D1")


@dataclasses.dataclass(frozen=True)
class GateInfo:
    """One gate: the fusion layer it sits in, its path, the Keras layer, ``p``."""

    layer: str
    path: str
    gate: VariationalDropPath

    @property
    def p(self):
        return float(self.gate.drop_prob.numpy())


def gate_layers(model):
    """The model's v-DropPath layers in build order."""
    return [l for l in model.layers if isinstance(l, VariationalDropPath)]


def gates(model):
    """Ordered gates, as ``GateInfo(layer, path, gate)`` with ``.p``.

    Order: by fusion layer, and inside a layer S, ST, D1.
    """
    found = [GateInfo(g.fusion_layer, g.branch, g) for g in gate_layers(model)]
    if not found:
        raise ValueError(f"model {model.name!r} has no v-DropPath gates (a pruned model?)")
    return found


def gates_by_layer(model):
    """``{fusion layer name: {"S": gate, "ST": gate, "D1": gate}}`` in layer order."""
    table = {}
    for info in gates(model):
        table.setdefault(info.layer, {})[info.path] = info.gate
    for name, paths in table.items():
        if set(paths) != set(GATE_PATHS):
            raise ValueError(f"fusion layer {name!r} has gates {sorted(paths)}, expected {GATE_PATHS}")
    return table


def get_gate_mode(model):
    modes = {g.mode for g in gate_layers(model)}
    if len(modes) != 1:
        raise ValueError(f"gates of {model.name!r} are in mixed modes {sorted(modes)}")
    return modes.pop()


def set_gate_mode(model, mode):
    """Switches every gate to ``off``, ``search`` or ``fixed``.

    The mode is a Python attribute (it decides the graph), so a real change drops
    Keras' compiled train/test/predict functions; setting the current mode again
    is a no-op and keeps them (no retrace).
    """
    if mode not in GATE_MODES:
        raise ValueError(f"gate mode must be one of {GATE_MODES}, got {mode!r}")
    changed = False
    for gate in gate_layers(model):
        if gate.mode != mode:
            gate.mode = mode
            changed = True
    if changed:
        model.train_function = None
        model.test_function = None
        model.predict_function = None
    return changed


def drop_probabilities(model):
    """All gates' ``p`` as one float32 tensor, in ``gates()`` order."""
    return tf.stack([g.drop_prob for g in gate_layers(model)])


def fusion_regularizer(model, length_scale, num_train, entropy="binary", prior_form="paper"):
    """Eq. 5 summed over all gates: the KL term added to the search-phase loss.

    ``length_scale`` is the prior ``k`` (paper: 250 Sth-V1, 10 Kinetics-400,
    50 Sth-V2/UCF101), ``num_train`` the number of training clips ``N`` and
    ``prior_form`` the weight-term coefficient: ``"paper"`` ``k^2/(2N)`` (Eq. 5,
    this function's default) or ``"authors_code"`` ``k/N`` (the authors'
    NAS_utils/ops.py; the recipes' form). Returns a float32 scalar tensor.
    """
    if num_train <= 0:
        raise ValueError(f"num_train must be > 0, got {num_train!r}")
    terms = []
    for gate in gate_layers(model):
        terms.append(gate.kl_divergence(_weight_sq_sum(model, gate), length_scale, num_train, entropy, prior_form))
    return tf.add_n(terms)


def _weight_sq_sum(model, gate):
    kernel = model.get_layer(gate.feeds).kernel
    return tf.reduce_sum(tf.square(tf.cast(kernel, tf.float32)))


def regularizer_parts(model, num_train, entropy="binary"):
    """Eq. 5 split as ``coefficient * weights + entropy_term``: returns the floats
    ``weights = sum over gates of (1 - p) sum(w^2)`` (unscaled) and
    ``entropy_term = sum over gates of H(p) / N`` (<= 0), so that the term of any
    ``k`` and form is ``weight_coefficient(k, N, form) * weights + entropy_term``."""
    weights, entropy_sum = 0.0, 0.0
    for gate in gate_layers(model):
        theta = tf.convert_to_tensor(gate.drop_logit)
        weights += float((1.0 - tf.sigmoid(theta)) * _weight_sq_sum(model, gate))
        entropy_sum += float(binary_entropy_term(theta, entropy))
    return weights, entropy_sum / num_train


# A gate this likely to drop its path is, in practice, switched off.
PRIOR_HIGH_P = 0.9
# More than this fraction of such gates: the prior, not the data, decided the template.
PRIOR_WARN_FRACTION = 0.8


def prior_diagnostics(drop_probs, length_scale, num_train, loss=None, regularizer=None, prior_form="paper"):
    """How strongly Eq. 5's length-scale prior pulled the gates after a search phase.

    ``drop_probs``: every gate's ``p``; ``loss`` / ``regularizer``: the mean data
    loss and Eq. 5 term over the last epoch (None if unknown); ``prior_form``:
    the weight-term coefficient's form (``PRIOR_FORMS``). Returns a dict with the
    fraction of gates with ``p > 0.9``, the ratio of the two terms, the form and
    its coefficient (``weight_coefficient``), a summary line and a warning (or
    None) when more than 80% of the gates are above 0.9.
    """
    import numpy as np

    p = np.asarray(drop_probs, np.float64).ravel()
    high = float(np.mean(p > PRIOR_HIGH_P)) if p.size else 0.0
    coefficient = weight_coefficient(length_scale, num_train, prior_form)
    said = describe_coefficient(length_scale, num_train, prior_form)
    ratio = regularizer / loss if loss and regularizer is not None and loss > 0 else None
    summary = (f"{100 * high:.0f}% of {p.size} gates have p > {PRIOR_HIGH_P}; Eq. 5 term / data loss over the last "
               f"epoch = {'unknown' if ratio is None else f'{ratio:.3g}'}; k = {length_scale:g}, "
               f"{said} (N = {num_train}, form {prior_form})")
    warning = None
    if high > PRIOR_WARN_FRACTION:
        warning = (f"the length-scale prior dominates the search: {100 * high:.0f}% of the gates have p > "
                   f"{PRIOR_HIGH_P}, so most paths are dropped whatever the data says ({said} "
                   f"with --length_scale={length_scale:g}, N = {num_train}, --prior_form={prior_form}). Lower "
                   "--length_scale; the README's 'Choosing k' shows how to sweep it from one warm-up.")
    return {"fraction_gates_above_0.9": high, "regularizer_to_loss": ratio, "length_scale": length_scale,
            "num_train": num_train, "prior_form": prior_form, "formula": PRIOR_FORMULAS[prior_form],
            "weight_coefficient": coefficient, "summary": summary, "warning": warning}
