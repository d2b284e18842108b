"""Latency tables: a strategy's batch-1 latency on a runtime, predicted from timed parts.

A table is built where the model will run (``python -m tf_stfusion.latency_table``)
and holds, in milliseconds at one clip size and batch 1:

* ``layers``: per fusion layer, the time of each of its units S, ST, S+ST (``none``:
  0, the layer is absent from the pruned network);
* ``fixed``: the parts no strategy removes -- the shipped file's ``input``
  (uint8 clip -> ImageNet-normalised floats, ``data.pipeline.normalize``, as
  the SavedModel does it) and for a DenseNet the stem, the transitions and the
  head;
* ``call_overhead_ms``: the runtime's cost of one call that does nothing.

``predict(table, units)`` = the fixed parts + the chosen units' entries, less
the per-call overhead of every part but one (each part was timed as its own
call; the shipped network is one call), each part's work scaled by its FLOPs
in the strategy over its FLOPs where it was timed (the table's ``flops``,
``fixed_flops``), then times the table's fitted ``calibration.scale``.

How a unit is timed *in its place* (``time_parts``): per-part sub-networks, not
whole-network differences. For each unit u the uniform pruned network of u is
built (``build_template(..., units=[u] * N)``, what ``models.prune`` ships); a
fusion layer's Keras layers (named after it: ``block2/layer3`` ->
``block2_layer3_*``) are cut out of it with the tensors that feed them
(``cut``), so the part reads the feature map of the true shape and channel
count that it reads in the network, and is timed as one compiled call on
random inputs of those shapes. The remaining layers fall into connected pieces
(stem, transitions, head), cut from the uniform S network. Whole-network
differences (full network vs the network with one layer's unit changed) were
not used: a unit of a 121-layer network is well under the run-to-run noise of
a whole network's time, so its entry would be mostly that noise, and every
entry would cost a full network's build and timing (~180 for DenseNet-121).

Entries are timed with every earlier layer kept (the uniform network), while
in a DenseNet a skipped layer gives every later layer of its block, the
transition and the head fewer input channels: ``predict`` scales each such
part's work by its FLOPs (the backbone's own count, ``strategy_flops``), which
took DenseNet-121's median error from 35% to 21% and its rank correlation from
0.93 to 0.95 (README). Not timed: the ``TemporalBias`` a skipped layer adds
after later convs. The remaining over-prediction (parts timed alone lose the
whole graph's overlap) is the ``calibration.scale`` that
``benchmarks/latency_table.py --record_error`` fits on measured files of random
strategies, and whose leave-one-out error it records.

Runtimes: ``tensorflow`` (the SavedModel's: each part a ``tf.function``,
``TensorFlowRuntime``), ``onnxruntime`` and ``litert``
(``export.part_runtimes``: each part converted with the ONNX / LiteRT file's
converter -- tf2onnx; the LiteRT converter on the deploy graph -- and timed in
an ONNX Runtime session / a LiteRT interpreter with the export's thread
settings). Converting needs TensorFlow; the calls timed are the runtime's alone.
"""

import collections
import os
import statistics
import time

from tf_stfusion.units import UNITS  # no TensorFlow on import: the CLIs check flags first

FORMAT = "stfusion-latency-table/1"
RUNTIMES = ("tensorflow", "onnxruntime", "litert")  # the runtimes of export.checks.RUNTIME_FILES
PART_DTYPES = ("float32", "uint8")  # a part's inputs: the clip as decoded (fixed:input), else activations
UNIT_CHOICES = tuple(u for u in UNITS if u != "none")  # the units timed; "none" costs nothing
OVERHEAD_REPEATS = 200  # the empty call takes well under a millisecond: many calls cost nothing


def median_latency(call, repeats=10, warmup=2):
    """Median wall seconds of ``call()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# -- cutting a functional network into parts -----------------------------------------------
def keras_prefix(fusion_layer):
    """The prefix of a fusion layer's Keras layer names: ``block2/layer3`` -> ``block2_layer3_``."""
    return fusion_layer.replace("/", "_") + "_"


def _producer(tensor):
    return tensor._keras_history.operation.name


def _inputs_of(layer):
    import keras

    return keras.tree.flatten(layer.input)


def cut(model, layers):
    """The sub-network of ``model`` made of ``layers`` (Keras layers of it): a
    ``keras.Model`` from the tensors that feed them from outside to the tensors
    they hand on (to other layers or as the model's outputs). Raises ``ValueError``
    for an empty part."""
    import keras

    if not layers:
        raise ValueError("an empty part cannot be cut out of a network")
    names = {layer.name for layer in layers}
    inputs, outputs = {}, {}
    for layer in layers:
        for tensor in _inputs_of(layer):
            if _producer(tensor) not in names:
                inputs.setdefault(id(tensor), tensor)
    for layer in model.layers:
        if layer.name in names:
            continue
        for tensor in _inputs_of(layer):
            if _producer(tensor) in names:
                outputs.setdefault(id(tensor), tensor)
    for tensor in model.outputs:
        if _producer(tensor) in names:
            outputs.setdefault(id(tensor), tensor)
    return keras.Model(list(inputs.values()), list(outputs.values()), name=f"part_{layers[0].name}")


def fusion_parts(model, fusion_layers):
    """``{fusion layer: its Keras layers}`` of a pruned network (in layer order)."""
    parts = {}
    for name in fusion_layers:
        prefix = keras_prefix(name)
        parts[name] = [layer for layer in model.layers if layer.name.startswith(prefix)]
    return parts


def fixed_parts(model, fusion_layers):
    """The layers of ``model`` outside every fusion layer, as connected pieces
    ``{name: layers}``, each named by its first layer's name up to the first ``_``
    (``stem``, ``transition1``, ``head``)."""
    import keras

    claimed = {layer.name for layers in fusion_parts(model, fusion_layers).values() for layer in layers}
    rest = [layer for layer in model.layers
            if layer.name not in claimed and not isinstance(layer, keras.layers.InputLayer)]
    piece_of = {}
    pieces = []
    for layer in rest:  # model.layers is in topological order: a producer comes first
        joined = {piece_of[_producer(t)] for t in _inputs_of(layer) if _producer(t) in piece_of}
        if not joined:
            pieces.append([layer])
            piece_of[layer.name] = len(pieces) - 1
            continue
        into = min(joined)
        for other in sorted(joined - {into}):
            for moved in pieces[other]:
                piece_of[moved.name] = into
            pieces[into] += pieces[other]
            pieces[other] = []
        pieces[into].append(layer)
        piece_of[layer.name] = into
    named = {}
    for piece in (p for p in pieces if p):
        base = piece[0].name.split("_")[0]
        name, n = base, 1
        while name in named:
            n += 1
            name = f"{base}{n}"
        named[name] = piece
    return named


# -- timing on a runtime --------------------------------------------------------------------
class TensorFlowRuntime:
    """The ``tensorflow`` runtime (the SavedModel's): a part is a ``tf.function``.

    A runtime (this one, or ``export.part_runtimes``' ONNX Runtime and LiteRT) has
    ``name``, ``version``, ``precision``, ``method`` (how a part is converted and
    called, for the table) and ``compile(fn, input_signature, model=None)``: a
    callable that runs ``fn(model, *inputs)`` (-> ``{name: tensor}``) on a list of
    numpy inputs of ``input_signature`` (a list of named ``tf.TensorSpec``) in the
    runtime; a runtime may hand ``fn`` its own form of ``model`` (LiteRT: the deploy graph);
    ``prepare(feeds)``: numpy inputs in the form ``compile``'s callable takes them
    fastest, made before timing. The input step is timed from numpy, as the file is called."""

    name, precision = "tensorflow", "float32"
    method = "each part a tf.function of the Keras sub-network (inference mode)"

    @property
    def version(self):
        import tensorflow as tf

        return tf.__version__

    def compile(self, fn, input_signature, model=None):
        import tensorflow as tf

        call = tf.function(lambda *xs: fn(model, *xs), input_signature=input_signature)
        return lambda feeds: call(*feeds)

    def prepare(self, feeds):
        """``feeds`` (numpy) as tensors, made once before a part is timed: in the
        file a part's input is the tensor the layer before it made, not a copy from
        numpy (a copy per call, in proportion to the feature map, made the sum of
        the parts over-predict ``tiny`` at 16x112x112 by 3.7 ms, 41%)."""
        import tensorflow as tf

        return [tf.constant(x) for x in feeds]


def _check_runtime(runtime, where="runtime"):
    if runtime not in RUNTIMES:
        raise ValueError(f"{where}: {runtime!r} has no latency tables; expected one of {RUNTIMES}")


def _specs(shapes, dtype="float32"):
    import tensorflow as tf

    return [tf.TensorSpec((1, *shape), dtype, name=f"x{i}") for i, shape in enumerate(shapes)]


class Part(collections.namedtuple("Part", "label fn shapes dtype model")):
    """One timed call of a table: ``label`` (``layer:<fusion layer>:<unit>``,
    ``fixed:<piece>`` or ``call_overhead``), ``fn(model, *inputs) -> {name: tensor}``
    on batch-1 inputs of ``shapes`` (without the batch) and ``dtype``."""


def _part_outputs(model, *inputs):
    outputs = model(list(inputs), training=False)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return {f"y{i}": y for i, y in enumerate(outputs)}


def _normalize(_, video):
    from tf_stfusion.data.pipeline import normalize

    return {"y0": normalize(video)}


def _identity(_, x):
    import tensorflow as tf

    return {"y0": tf.identity(x)}


def _sub_network(label, model, layers):
    part = cut(model, layers)
    return Part(label, _part_outputs, [tuple(t.shape[1:]) for t in part.inputs], "float32", part)


def table_parts(backbone, num_classes, clip):
    """Every ``Part`` of a table of ``backbone`` at ``clip`` ``(frames, height, width,
    3)``, in order: per unit u of ``UNIT_CHOICES``, each fusion layer cut out of the
    uniform pruned network of u (``cut``: the feature maps that feed it, true shapes
    and channels); after S's layers the shipped file's input step (uint8 ->
    normalised floats, ``data.pipeline.normalize``) and the fixed pieces of that
    network (``fixed_parts``); last, the runtime's empty call (an identity)."""
    from tf_stfusion.models import build_template, layer_names

    names = layer_names(backbone)
    for unit in UNIT_CHOICES:
        model = build_template(backbone, num_classes=num_classes, num_frames=clip[0], input_size=clip[1:3],
                               units=[unit] * len(names))
        for name, layers in fusion_parts(model, names).items():
            if not layers:
                raise ValueError(f"{backbone}: no Keras layer is named {keras_prefix(name)}*; cannot time {name}")
            yield _sub_network(f"layer:{name}:{unit}", model, layers)
        if unit == "S":
            yield Part("fixed:input", _normalize, [tuple(clip)], "uint8", None)
            for name, layers in fixed_parts(model, names).items():
                yield _sub_network(f"fixed:{name}", model, layers)
    yield Part("call_overhead", _identity, [tuple(clip)], "float32", None)


def part_feeds(shapes, dtype, seed=0):
    """Random batch-1 numpy inputs of ``shapes`` (uint8 clips: 0-255; floats: normal)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    if dtype == "uint8":
        return [rng.integers(0, 256, (1, *shape), dtype=np.uint8) for shape in shapes]
    return [rng.standard_normal((1, *shape)).astype(np.float32) for shape in shapes]


def time_call(label, call, feeds, repeats):
    """Milliseconds of ``call(feeds)``: ``median_latency`` of ``repeats`` calls, of at
    least ``OVERHEAD_REPEATS`` for the empty call (``predict`` subtracts it once
    per part -- dozens -- so a noisy estimate moves a prediction by dozens of times
    its error: a 5-call median on a busy machine was 0.99 ms against 0.16 ms quiet,
    a ``tiny`` prediction of -6 ms)."""
    repeats = max(repeats, OVERHEAD_REPEATS) if label == "call_overhead" else repeats
    return 1000 * median_latency(lambda: call(feeds), repeats=repeats)


def time_parts(backbone, num_classes, clip, runtime, repeats=10, log=print):
    """``{label: ms}`` of every ``table_parts`` part compiled in ``runtime`` (each
    converted as the runtime's file is) and timed on ``part_feeds``."""
    from tf_stfusion.models import layer_names

    last, timings = layer_names(backbone)[-1], {}
    for part in table_parts(backbone, num_classes, tuple(clip)):
        call = runtime.compile(part.fn, _specs(part.shapes, part.dtype), part.model)
        timings[part.label] = time_call(part.label, call, runtime.prepare(part_feeds(part.shapes, part.dtype)),
                                        repeats)
        if part.label.startswith(f"layer:{last}:"):
            log(f"latency: {backbone} {part.label.rsplit(':', 1)[1]}: every layer timed ({len(timings)} parts)")
    return timings


def strategy_flops(backbone, num_classes, clip, units):
    """``{part: FLOPs}`` of the pruned network of ``units`` at ``clip``, batch 1, by
    the backbone's own count (``models.Backbone.count``, without building it): the
    parts whose width depends on the strategy -- a DenseNet's layers, transitions
    and head, whose inputs are the kept layers' channels -- by the names the table
    gives them; the other backbones' parts are not split (``{"other": ...}``)."""
    from tf_stfusion.models import backbone_config

    return dict(backbone_config(backbone).count(list(units), num_classes, tuple(clip)).flops_by_part)


def table_flops(backbone, num_classes, clip, layer_names, fixed):
    """The FLOPs of every timed part in the network it was timed in (a unit's
    uniform network; the fixed parts: the uniform S network's): ``(per layer
    {unit: FLOPs}, {fixed part: FLOPs})`` -- only the parts the count names."""
    uniform = {u: strategy_flops(backbone, num_classes, clip, [u] * len(layer_names)) for u in UNIT_CHOICES}
    layers = [{u: uniform[u][name] for u in UNIT_CHOICES if name in uniform[u]} for name in layer_names]
    return layers, {name: uniform["S"][name] for name in fixed if name in uniform["S"]}


def assemble_table(backbone, num_classes, clip, timings, flops, runtime, repeats):
    """The latency table (a dict, ``FORMAT``) of ``timings`` (``{label: ms}`` of every
    ``table_parts`` label) and ``flops`` (``table_flops``' pair), with the machine
    line and ``runtime``'s ``name``, ``version``, ``precision`` and ``method``.
    Raises ``ValueError`` naming a part without a timing."""
    from tf_stfusion.machine import machine_line

    layer_flops, fixed_flops = flops
    names, missing = layers_of(timings), missing_parts(timings)
    if missing:
        raise ValueError(f"no timing for part(s) {missing[:3]}")
    layers = [{"name": n, "none": 0.0, **{u: timings[f"layer:{n}:{u}"] for u in UNIT_CHOICES},
               **({"flops": f} if f else {})} for n, f in zip(names, layer_flops)]
    fixed = {label.split(":", 1)[1]: ms for label, ms in timings.items() if label.startswith("fixed:")}
    return {"format": FORMAT, "backbone": backbone, "num_classes": num_classes, "clip": list(clip), "batch": 1,
            "runtime": runtime.name, "runtime_version": runtime.version, "precision": runtime.precision,
            "threads": os.cpu_count(), "machine": machine_line(**{runtime.name: runtime.version}),
            "method": (f"{runtime.method}; each part a sub-network cut from the uniform pruned network, timed "
                       f"alone: median of {repeats} calls after 2 warm-up calls (tf_stfusion.latency)"),
            "call_overhead_ms": timings["call_overhead"], "fixed": fixed,
            **({"fixed_flops": fixed_flops} if fixed_flops else {}), "layers": layers}


def layers_of(labels):
    """The fusion layers that ``Part`` labels name, in order of first appearance."""
    return list(dict.fromkeys(label.split(":")[1] for label in labels if label.startswith("layer:")))


def missing_parts(labels):
    """The labels a table needs that ``labels`` lack: every unit of every layer they
    name, the empty call and the input step."""
    needed = ["call_overhead", "fixed:input", *(f"layer:{n}:{u}" for n in layers_of(labels) for u in UNIT_CHOICES)]
    return [label for label in needed if label not in labels]


def labels_flops(backbone, num_classes, clip, labels):
    """``table_flops`` of the parts that ``Part`` labels name."""
    fixed = [label.split(":", 1)[1] for label in labels if label.startswith("fixed:")]
    return table_flops(backbone, num_classes, clip, layers_of(labels), fixed)


def is_clip(clip):
    """Whether ``clip`` is a table's ``[frames, height, width, 3]`` (a list of positive integers)."""
    return isinstance(clip, list) and len(clip) == 4 and all(isinstance(n, int) and n > 0 for n in clip)


def build_table(backbone, num_classes, clip, runtime=None, repeats=10, log=print):
    """The latency table (a dict, ``FORMAT``) of ``backbone`` at ``clip``
    ``(frames, height, width, 3)``, batch 1, timed here in ``runtime`` (a runtime
    object, see ``TensorFlowRuntime``; None: TensorFlow)."""
    runtime = runtime or TensorFlowRuntime()
    _check_runtime(runtime.name)
    clip = tuple(clip)
    timings = time_parts(backbone, num_classes, clip, runtime, repeats, log)
    flops = labels_flops(backbone, num_classes, clip, list(timings))
    return assemble_table(backbone, num_classes, clip, timings, flops, runtime, repeats)


def table_line(table):
    """The CLIs' one-line summary of a table: ``latency: <backbone> at <clip>, batch 1,
    <runtime> <version>: fixed parts <ms> ms``."""
    clip = "x".join(map(str, table["clip"][:3]))
    return (f"latency: {table['backbone']} at {clip}, batch 1, {table['runtime']} {table['runtime_version']}: "
            f"fixed parts {sum(table['fixed'].values()):.2f} ms")


# -- parts converted here, timed on a device ----------------------------------------------------
PARTS_FORMAT = "stfusion-latency-parts/1"
PARTS_MANIFEST = "parts.json"


def export_parts(backbone, num_classes, clip, runtime, folder, log=print):
    """Converts every ``table_parts`` part for ``runtime`` (an object with
    ``convert`` and ``extension``: ``export.part_runtimes``' ONNX Runtime and
    LiteRT) into ``folder``, with ``parts.json``: the backbone, classes, clip,
    runtime, each part's label, file, input names, shapes and dtype, and the
    timed parts' FLOPs. ``latency_device`` times them where only the runtime is
    installed and writes the table. Needs TensorFlow (the conversion)."""
    from tf_stfusion.fileio import atomic_write_json
    from tf_stfusion.machine import machine_line

    _clear_parts_folder(folder)
    clip, entries = tuple(clip), []
    for i, part in enumerate(table_parts(backbone, num_classes, clip)):
        specs = _specs(part.shapes, part.dtype)
        name = f"part{i:03d}{runtime.extension}"
        with open(os.path.join(folder, name), "wb") as f:
            f.write(runtime.convert(part.fn, specs, part.model))
        entries.append({"label": part.label, "file": name, "inputs": [s.name for s in specs],
                        "shapes": [list(shape) for shape in part.shapes], "dtype": part.dtype})
    log(f"latency: {backbone}: {len(entries)} parts converted for {runtime.name} into {folder}")
    layer_flops, fixed_flops = labels_flops(backbone, num_classes, clip, [e["label"] for e in entries])
    atomic_write_json(os.path.join(folder, PARTS_MANIFEST), {
        "format": PARTS_FORMAT, "backbone": backbone, "num_classes": num_classes, "clip": list(clip),
        "runtime": runtime.name, "precision": runtime.precision, "method": runtime.method,
        "converted_on": machine_line(), "layer_flops": layer_flops, "fixed_flops": fixed_flops, "parts": entries})


def _clear_parts_folder(folder):
    """Makes ``folder``, or empties it of an earlier ``export_parts`` (its manifest
    first: an interrupted export must never leave an old ``parts.json`` naming new
    files); a one-line ``ValueError`` for a folder holding anything else."""
    import re

    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"--parts_dir={folder}: a file, not a folder; give an empty or new folder")
    os.makedirs(folder, exist_ok=True)
    ours = re.compile(r"part\d{3}\.(tflite|onnx)|" + re.escape(PARTS_MANIFEST))
    others = sorted(name for name in os.listdir(folder) if not ours.fullmatch(name))
    if others:
        raise ValueError(f"--parts_dir={folder}: holds {others[:3]}, not an earlier parts export; give an empty "
                         "or new folder")
    for name in sorted(os.listdir(folder), key=lambda n: n != PARTS_MANIFEST):
        os.remove(os.path.join(folder, name))


# -- reading and predicting ---------------------------------------------------------------------
def check_table(table, where="latency table"):
    """``table`` if it is a readable latency table, else a one-line ``ValueError``
    naming ``where`` and the field."""
    if not isinstance(table, dict) or table.get("format") != FORMAT:
        raise ValueError(f"{where}: not a {FORMAT} file; build one with python -m tf_stfusion.latency_table")
    from tf_stfusion.models import layer_names

    missing = [k for k in ("backbone", "clip", "runtime", "runtime_version", "machine", "call_overhead_ms", "fixed",
                           "layers") if k not in table]
    if missing:
        raise ValueError(f"{where}: field(s) {missing} missing; rebuild the table with python -m "
                         "tf_stfusion.latency_table")
    clip = table["clip"]
    if not is_clip(clip):
        raise ValueError(f"{where}: field 'clip' must be [frames, height, width, 3], got {clip!r}")
    _check_runtime(table["runtime"], f"{where}: field 'runtime'")
    try:
        expected = layer_names(table["backbone"])
    except ValueError as e:
        raise ValueError(f"{where}: field 'backbone': {e}") from None
    layers = table.get("layers")
    if not isinstance(layers, list) or [e.get("name") for e in layers if isinstance(e, dict)] != expected:
        raise ValueError(f"{where}: field 'layers' must list {table['backbone']}'s {len(expected)} fusion layers "
                         "in order; rebuild the table")
    _check_mappings(table, where)
    # every part was timed: a time of 0 (hand-edited) would predict a strategy free, within any budget
    numbers = [("call_overhead_ms", table.get("call_overhead_ms"))]
    numbers += [(f"fixed.{k}", v) for k, v in (table.get("fixed") or {}).items()]
    numbers += [(f"layers.{e['name']}.{u}", e.get(u)) for e in layers for u in UNIT_CHOICES]
    for field, value in numbers:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{where}: field {field!r} must be a measured time in milliseconds (> 0), got {value!r}; "
                             "rebuild the table")
    if not table.get("fixed"):
        raise ValueError(f"{where}: field 'fixed' is empty; rebuild the table")
    _check_flops(table, where)
    _check_validated_error(table.get("validated_error"), where)
    _check_calibration(table.get("calibration"), where)
    return table


def _check_mappings(table, where):
    """``fixed``, ``fixed_flops`` and each layer's ``flops`` are ``{name: number}`` objects (when present)."""
    fields = [("fixed", table["fixed"]), ("fixed_flops", table.get("fixed_flops", {}))]
    fields += [(f"layers.{e['name']}.flops", e.get("flops", {})) for e in table["layers"]]
    for field, value in fields:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: field {field!r} must be an object {{part: number}}, got {value!r}; rebuild "
                             "the table")


def _check_flops(table, where):
    """The optional FLOPs of the timed parts: counts > 0, the ``num_classes`` a
    strategy's FLOPs are counted with, and each the backbone's own count at the
    table's clip and classes (``table_flops``): a table whose clip, classes or
    FLOPs were edited by hand would scale every part by a wrong ratio."""
    counts = [(f"fixed_flops.{k}", v) for k, v in (table.get("fixed_flops") or {}).items()]
    counts += [(f"layers.{e['name']}.flops.{u}", v) for e in table["layers"] for u, v in (e.get("flops") or {}).items()]
    if not counts:
        return
    classes = table.get("num_classes")
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise ValueError(f"{where}: field 'num_classes' must be the head's class count (an integer >= 1) when the "
                         f"table has FLOPs, got {classes!r}; rebuild the table")
    for field, value in counts:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{where}: field {field!r} must be a FLOP count (an integer > 0), got {value!r}; "
                             "rebuild the table")
    layers, fixed = table_flops(table["backbone"], classes, tuple(table["clip"]), [e["name"] for e in table["layers"]],
                                table["fixed"])
    counted = {f"fixed_flops.{k}": v for k, v in fixed.items()}
    counted.update({f"layers.{e['name']}.flops.{u}": v for e, f in zip(table["layers"], layers) for u, v in f.items()})
    for field, value in counts:
        if counted.get(field) != value:
            count = f"is {counted[field]}" if field in counted else "names no such part"
            raise ValueError(f"{where}: field {field!r} is {value}, but {table['backbone']}'s count at the table's "
                             f"clip {table['clip']} and {classes} classes {count}: its clip, classes or FLOPs were "
                             "edited, or another version built it; rebuild the table")


def _check_calibration(calibration, where):
    if calibration is None:
        return
    scale = calibration.get("scale") if isinstance(calibration, dict) else None
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise ValueError(f"{where}: field 'calibration.scale' must be a number > 0, got {scale!r}; validate the "
                         "table again with benchmarks/latency_table.py --table --record_error")


def _check_validated_error(validated, where):
    if validated is None:
        return
    relative = validated.get("relative") if isinstance(validated, dict) else None
    if isinstance(relative, bool) or not isinstance(relative, (int, float)) or not relative >= 0:
        raise ValueError(f"{where}: field 'validated_error.relative' must be a fraction >= 0 (0.1: 10%), got "
                         f"{relative!r}; validate the table again with benchmarks/latency_table.py --table")


def read_json_file(path, what, make):
    """The JSON in ``path``, or one-line errors naming it and ``what`` it should be:
    ``FileNotFoundError`` (saying ``make``: how to make one), ``ValueError``."""
    import json

    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such {what}; {make}") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable {what} ({e})") from None


def read_table(path, runtime=None):
    """The latency table in the JSON file ``path`` (checked by ``check_table``);
    with ``runtime``, a one-line ``ValueError`` for a table of another runtime."""
    table = check_table(read_json_file(path, "latency table", "build one with python -m tf_stfusion.latency_table"),
                        path)
    if runtime is not None and table["runtime"] != runtime:
        raise ValueError(f"{path}: a latency table of {table['runtime']}, but {runtime} is expected here; build "
                         f"one with python -m tf_stfusion.latency_table --runtime={runtime}")
    return table


def unscaled_note(table):
    """A one-line note when ``table`` records no FLOPs although its backbone's count
    splits them by part (a table built before the width scaling), else None: its
    predictions are the plain sum of parts, which over-predicts a DenseNet strategy
    that skips layers (35% median error against 21% scaled on DenseNet-121, README)."""
    if table.get("fixed_flops") or any("flops" in e for e in table["layers"]):
        return None
    layers, fixed = table_flops(table["backbone"], table.get("num_classes") or 1, tuple(table["clip"]),
                                [e["name"] for e in table["layers"]], table["fixed"])
    if not fixed and not any(layers):
        return None
    return ("the latency table records no FLOPs (built before parts were scaled by their width): its predictions "
            "are the plain sum of parts; rebuild it with python -m tf_stfusion.latency_table")


def _work_scales(table, units):
    """``{part: FLOPs in the strategy / FLOPs where it was timed}`` of the parts the
    table has FLOPs for (the ones whose width the strategy changes)."""
    if not table.get("fixed_flops") and not any("flops" in e for e in table["layers"]):
        return {}
    now = strategy_flops(table["backbone"], table["num_classes"], table["clip"], units)
    timed = {name: flops for name, flops in (table.get("fixed_flops") or {}).items()}
    timed.update({e["name"]: e["flops"][u] for e, u in zip(table["layers"], units) if u in e.get("flops", {})})
    return {name: now.get(name, 0) / flops for name, flops in timed.items() if flops > 0}


def predict(table, units, calibrated=True, widths=True):
    """Predicted batch-1 milliseconds of the strategy ``units`` (one unit per fusion
    layer, in order): the call overhead (``call_overhead_ms``, paid once: the
    shipped network is one call) plus each part's work -- every fixed part and
    each kept layer's entry for its unit, less the overhead its own timed call
    paid -- times the ratio of the part's FLOPs in this strategy to its FLOPs
    where it was timed, when the table has them and ``widths`` (a DenseNet's
    layers were timed with every earlier layer of the block kept; a strategy
    that skips some gives the later ones, the transition and the head fewer
    input channels: ``strategy_flops``); then times the table's
    ``calibration.scale`` when it has one and ``calibrated`` (a scale fitted on
    measured files of random strategies by ``benchmarks/latency_table.py
    --record_error``). With every ratio 1 (and no part under the overhead) this
    is the plain sum of parts less one overhead per part but one. Raises ``ValueError`` for a strategy of
    another length or an unknown unit."""
    layers = table["layers"]
    if len(units) != len(layers):
        raise ValueError(f"a strategy of {len(units)} layers against a {table['backbone']} latency table of "
                         f"{len(layers)} layers")
    for entry, unit in zip(layers, units):
        if unit not in UNITS:
            raise ValueError(f"unknown unit {unit!r} for {entry['name']}; expected one of {UNITS}")
    parts = dict(table["fixed"])
    parts.update({entry["name"]: entry[unit] for entry, unit in zip(layers, units) if unit != "none"})
    scales = _work_scales(table, units) if widths else {}
    overhead = table["call_overhead_ms"]
    # a part timed at under one empty call (noise) did no work, not negative work
    total = overhead + sum(max(ms - overhead, 0.0) * scales.get(name, 1.0) for name, ms in parts.items())
    return total * table["calibration"]["scale"] if calibrated and table.get("calibration") else total
