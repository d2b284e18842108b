"""What the export measures before it moves anything into place.

* parity (``logit_parity``): max abs difference of the logits of a written or
  pruned network against its reference, held to ``TOLERANCE`` times the output
  scale (the reference's largest |logit|, at least 1): the probabilities of a
  saturated network are 0 or 1 whatever a converted graph computes below them;
* ``serving_check``: every validation video through the SavedModel's
  ``serving_video`` signature as a REST request, against the run's evaluation;
* ``latencies``: size on disk and batch-1 latency of every written file;
* ``precision_accuracy``: top-1 of every precision on the validation split with
  95% intervals, paired with the float reference.

They read the run's own videos through its data side (``run.inputs.open_inputs``,
the ``RunInputs`` training used: the same source and hold-out).
"""

import os

import numpy as np
import tensorflow as tf

from tf_stfusion import selection
from tf_stfusion.calibration import apply_temperature
from tf_stfusion.data import pipeline
from tf_stfusion.evaluation import Evaluator, video_outcomes
from tf_stfusion.export import litert
from tf_stfusion.export.client import VIDEO_SIGNATURE, rest_body
from tf_stfusion.export.local_server import LocalServing
from tf_stfusion.export.serving import clip_shape
from tf_stfusion.fileio import size_on_disk
from tf_stfusion.run.inputs import open_inputs
from tf_stfusion.strategy import Strategy

TOLERANCE = 1e-4  # relative to the output scale


def parity_clips(contract, count, seed):
    """``count`` random uint8 clips ``[count, T, S, S, 3]`` of the contract's shape."""
    return np.random.default_rng(seed).integers(0, 256, (count, *clip_shape(contract)), dtype=np.uint8)


def logit_parity(logits, reference):
    """A parity check of ``logits`` against ``reference`` (both ``[clips, C]``): the
    max abs difference and the scale it is held to (``TOLERANCE`` x scale), the
    reference's largest |logit| but at least 1."""
    logits, reference = np.asarray(logits, np.float64), np.asarray(reference, np.float64)
    return {"max_abs_diff": float(np.max(np.abs(logits - reference))), "output": "logits",
            "scale": max(1.0, float(np.max(np.abs(reference))))}


def probability_parity(max_abs_diff):
    """A parity check of probabilities (scale 1)."""
    return {"max_abs_diff": float(max_abs_diff), "output": "probabilities", "scale": 1.0}


def judge(parity):
    """Marks every check of ``parity`` (name -> check) ``passed`` or not; returns
    the names of the failed ones."""
    for check in parity.values():
        check["passed"] = check["max_abs_diff"] <= TOLERANCE * check["scale"]
    return [name for name, check in parity.items() if not check["passed"]]


def parity_lines(parity):
    """The export log's parity lines."""
    return [f"parity {name}: max abs diff {check['max_abs_diff']:.2e} (scale {check['scale']:.3g})"
            for name, check in parity.items()]


def check_served(template, run_config, contract, saved_model_dir, parity, log, verify=False, members=None,
                 temperature=1.0):
    """``--check_serving``: ``serving_check`` logged, its difference added to
    ``parity`` as ``served_vs_evaluation``; returns its numbers."""
    log(f"export: serving check: every {run_config.data.val_split} video through serving_video")
    served = serving_check(template, run_config, contract, saved_model_dir, verify=verify, members=members,
                           temperature=temperature)
    parity["served_vs_evaluation"] = probability_parity(served["max_abs_diff_probabilities"])
    return served


def serving_check(template, run_config, contract, saved_model_dir, batch_size=8, verify=False, members=None,
                  temperature=1.0):
    """Every validation video through the SavedModel's ``serving_video`` signature,
    as a REST request would arrive (its stored JPEG frames as b64 strings), against
    the run's evaluation of the same strategy (``template`` in fixed mode, the
    evaluation pipeline under ``contract``) -- of an ensemble's ``members`` (unit
    lists): the mean of each one's evaluation, scaled by ``temperature``. Returns
    the report's numbers."""
    source = open_inputs(run_config, verify).source
    ids = sorted(v for v, _ in source.val_examples)
    position = {v: i for i, v in enumerate(ids)}
    dataset = pipeline.make_dataset(source.val_files, contract.clip_spec(), training=False, batch_size=batch_size,
                                    deterministic=True, video_index=ids)
    if members is None:
        evaluated = Evaluator(template, contract.eval_clips).evaluate(lambda _: dataset, len(ids)).probabilities[0]
    else:
        # One pass over the videos scores every member (the Evaluator applies each one's masks).
        strategies = [Strategy.from_units(template.stf_spec.backbone, units) for units in members]
        scores = Evaluator(template, contract.eval_clips).evaluate(lambda _: dataset, len(ids), strategies=strategies)
        evaluated = apply_temperature(np.mean(scores.probabilities, axis=0), temperature)
    server = LocalServing(saved_model_dir)
    served = np.zeros_like(evaluated)
    labels = np.zeros(len(ids), np.int32)
    for serialized in tf.data.TFRecordDataset(source.val_files):
        encoded, label, media_id = pipeline.parse_example(serialized)
        i = position[media_id.numpy().decode()]
        served[i] = server.rest(rest_body(encoded.numpy().tolist(), VIDEO_SIGNATURE))["outputs"]["probabilities"][0]
        labels[i] = int(label)
    hits = {name: video_outcomes(tf.constant(p, tf.float32), labels).numpy()[:, 0] > 0.5
            for name, p in (("served", served), ("evaluation", evaluated))}
    served_top1, eval_top1 = selection.proportion(hits["served"]), selection.proportion(hits["evaluation"])
    return {"split": run_config.data.val_split, "num_videos": len(ids), "signature": VIDEO_SIGNATURE,
            "request": "each video's stored JPEG frames, as TF Serving REST b64 strings",
            "served_top1": served_top1["value"], "served_top1_ci": served_top1["ci"],
            "evaluation_top1": eval_top1["value"], "evaluation_top1_ci": eval_top1["ci"],
            "same_answer": float(np.mean(np.argmax(served, 1) == np.argmax(evaluated, 1))),
            "max_abs_diff_probabilities": float(np.max(np.abs(served - evaluated)))}


DEFAULT_CALIBRATION_CLIPS = 100  # --calibration_clips=0 for a strategy not picked in int8


def calibration_clips(run_config, contract, count, strategy=None):
    """``count`` uint8 clips ``[T, S, S, 3]`` and where they come from
    (``RunInputs.calibration_clips``): the run's hold-out (its training videos
    when it selected on val) -- or, for a ``strategy`` the search picked by its
    int8 score (provenance ``score_precision: int8``), the training videos its
    finalists were calibrated on, so the int8 file shipped is calibrated as the
    one that was scored. ``count`` 0: as many as the finalists were calibrated
    on (provenance ``calibration_clips``), else ``DEFAULT_CALIBRATION_CLIPS``."""
    provenance = (strategy.provenance or {}) if strategy else {}
    picked_in_int8 = provenance.get("score_precision") == "int8"
    count = count or (picked_in_int8 and provenance.get("calibration_clips")) or DEFAULT_CALIBRATION_CLIPS
    return open_inputs(run_config).calibration_clips(contract, count, trained_on=picked_in_int8)


def latencies(runners, files, folder, contract, repeats):
    """Size on disk and batch-1 latency (median of ``repeats`` runs on a zero clip,
    ``litert.median_latency``) of every written file: ``runners`` (name -> uint8
    clips -> probabilities) of ``files`` (name -> path relative to ``folder``).
    Returns ``{name: {"file", "bytes", "latency_ms_batch1"}}``."""
    clip = np.zeros((1, *clip_shape(contract)), np.uint8)
    out = {}
    for name, call in runners.items():
        size = size_on_disk(os.path.join(folder, files[name]))
        seconds = litert.median_latency(lambda: call(clip), repeats=repeats)
        out[name] = {"file": files[name], "bytes": size, "latency_ms_batch1": 1000 * seconds}
    return out


# The file each latency table's runtime runs (tf_stfusion.latency.RUNTIMES).
RUNTIME_FILES = {"tensorflow": "saved_model", "onnxruntime": "onnx", "litert": "tflite"}


def budget_file(strategy):
    """``(runtime, format)`` of the latency budget ``strategy`` was chosen under
    (its provenance's ``latency_runtime``), or ``None`` without a budget. Raises a
    one-line ``ValueError`` for a runtime without a file."""
    provenance = strategy.provenance or {}
    if not provenance.get("max_latency_ms"):
        return None
    runtime = (provenance.get("latency_runtime") or "tensorflow").split()[0]
    if runtime not in RUNTIME_FILES:
        raise ValueError(f"the latency budget was predicted for runtime {runtime!r}, which no export file runs; "
                         f"expected one of {sorted(RUNTIME_FILES)}")
    return runtime, RUNTIME_FILES[runtime]


def latency_budget(strategy, runners, files, folder, contract, repeats, runtime_version=None):
    """The measured batch-1 latency of the exported file against the latency budget
    the search chose ``strategy`` under (its provenance's ``max_latency_ms``, the
    table's runtime and validated relative error): ``{"max_latency_ms",
    "predicted_ms", "runtime", "allowed_error", "file", "measured_ms",
    "within_budget", "within_allowed_error", "method"}``; ``None`` when the search
    had no such budget. Measured as ``latencies`` does, on this machine: compare
    with the table's machine line (``table_machine``; ``other_machine``: how this
    one, or ``runtime_version`` -- this machine's version of the table's runtime
    -- differs, else None). ``allowed_error``: the table's ``validated_error``
    (relative), 0 when it was never validated."""
    chosen = budget_file(strategy)
    if chosen is None:
        return None
    provenance, metrics = strategy.provenance, strategy.metrics or {}
    allowed = provenance.get("latency_validated_error") or 0.0
    budget = {"max_latency_ms": provenance["max_latency_ms"], "predicted_ms": metrics.get("latency_ms"),
              "runtime": provenance.get("latency_runtime"), "table_machine": provenance.get("latency_machine"),
              "allowed_error": allowed, "allowed_error_source": ("the latency table's validated_error" if allowed else
                                                                "none: the table was never validated")}
    budget["other_machine"] = other_machine(provenance.get("latency_machine"), budget["runtime"], runtime_version)
    name = chosen[1]
    if name not in runners:
        return {**budget, "file": None, "measured_ms": None, "within_budget": None, "within_allowed_error": None,
                "method": f"not measured: the {name} file was not written"}
    measured = latencies({name: runners[name]}, files, folder, contract, repeats)[name]["latency_ms_batch1"]
    return {**budget, "file": files[name], "measured_ms": measured,
            "within_budget": measured <= budget["max_latency_ms"],
            "within_allowed_error": measured <= budget["max_latency_ms"] * (1 + allowed),
            "method": latency_method(repeats)}


def other_machine(table_machine, runtime, here_version=None):
    """How the table's machine (its ``machine:`` line) or runtime version (``runtime``:
    ``"onnxruntime 1.32.0"``) differs from this one's (``here_version``: this
    machine's version of that runtime; None: not compared), or None when they
    agree: the export measures its file here, which checks the budget only where
    the table was built (the CPU, cores and GPUs; the runtime's version)."""
    from tf_stfusion.machine import machine_line

    name, _, version = (runtime or "tensorflow").partition(" ")
    here = machine_line()
    (cpu, gpus), (cpu_here, gpus_here) = _hardware(table_machine or ""), _hardware(here)
    differs = []
    if cpu != cpu_here or (gpus is not None and gpus_here is not None and gpus != gpus_here):
        differs.append(f"the table was timed on {(table_machine or 'an unrecorded machine').split(';')[0]!r}, "
                       f"this is {here.split(';')[0]!r}")
    if version and here_version and version != here_version:
        differs.append(f"the table's {name} is {version}, this one's {here_version}")
    return "; ".join(differs) or None


def _hardware(line):
    """``(CPU part, GPU part or None)`` of a ``machine:`` line; the GPUs are named only
    where TensorFlow was imported (a table timed on a device without it has none)."""
    cpu, _, gpus = line.split(";")[0].partition(", GPUs:")
    return cpu, (gpus or None)


def budget_error(budget):
    """The one-line refusal of an export whose file misses the latency budget by
    more than the table's validated error (or was not measured); None if it does not."""
    if budget is None or budget["within_allowed_error"]:
        return None
    limit = budget["max_latency_ms"] * (1 + budget["allowed_error"])
    if budget["measured_ms"] is None:
        return (f"the search's {budget['max_latency_ms']} ms latency budget ({budget['runtime']}) cannot be checked: "
                f"{budget['method']}; add it to --formats or pass --allow_over_budget")
    elsewhere = (f" ({budget['other_machine']}: export on the table's machine, or build a table here)"
                 if budget.get("other_machine") else "")
    return (f"{budget['file']}: measured {budget['measured_ms']:.2f} ms (batch 1), over the search's latency budget of "
            f"{budget['max_latency_ms']} ms by more than the allowed error {100 * budget['allowed_error']:.1f}% "
            f"({budget['allowed_error_source']}; at most {limit:.2f} ms){elsewhere}; nothing was written; choose a "
            "faster strategy, or pass --allow_over_budget")


def budget_line(budget):
    """The export log's line on the latency budget."""
    if budget["measured_ms"] is None:
        return f"latency budget {budget['max_latency_ms']} ms ({budget['runtime']}): {budget['method']}"
    verdict = "within" if budget["within_budget"] else (
        f"within {100 * budget['allowed_error']:.1f}% of" if budget["within_allowed_error"] else "OVER")
    elsewhere = f"; not the table's machine: {budget['other_machine']}" if budget.get("other_machine") else ""
    return (f"latency budget {budget['max_latency_ms']} ms ({budget['runtime']}): {budget['file']} measured "
            f"{budget['measured_ms']:.2f} ms here, {verdict} the budget (predicted {budget['predicted_ms']:.2f} ms)"
            f"{elsewhere}")


def latency_method(repeats, runtime=""):
    """How ``latencies`` (and the ensemble's latency) measured, for the report."""
    return f"batch 1, median of {repeats} runs after 2 warm-up runs, {runtime}{os.cpu_count()} CPU threads"


def precision_accuracy(run_config, contract, runners, log):
    """Top-1 of every runner on the validation split: the same uint8 clips (each
    video's evaluation views, scores averaged), with 95% intervals, and each one's
    paired difference to the float reference (the SavedModel, else LiteRT float32)."""
    data = run_config.data
    source = open_inputs(run_config).source
    log(f"export: top-1 of every precision on {data.val_split} ({len(source.val_examples)} videos)")
    hits = {name: [] for name in runners}
    for clips, label, _ in pipeline.uint8_views(source.val_files, contract):
        for name, call in runners.items():
            hits[name].append(int(np.argmax(call(clips.numpy()).mean(axis=0))) == int(label))
    reference = "saved_model" if "saved_model" in hits else "tflite"
    result = {"split": data.val_split, "reference": reference, "interval": selection.CI_METHOD,
              "clips": f"{contract.eval_clips} evaluation views per video, uint8 as a clip client sends them",
              "top1": {}}
    for name, correct in hits.items():
        correct = np.asarray(correct, bool)
        entry = selection.proportion(correct)
        if name != reference:
            entry["vs_reference"] = selection.paired_difference(correct, np.asarray(hits[reference], bool)).to_dict()
        result["top1"][name] = entry
    return result


def litert_lines(lite):
    """The export log's LiteRT lines: size, latency and top-1 of every file."""
    accuracy = (lite.get("accuracy") or {}).get("top1", {})
    lines = [_file_line(name, entry, accuracy.get(name), lite.get("accuracy", {}).get("reference"))
             for name, entry in lite["files"].items()]
    if "accuracy" in lite:
        lines.append(f"top-1 on {lite['accuracy']['split']} ({lite['accuracy']['interval']})")
    return lines


def _file_line(name, entry, top, reference):
    line = f"{name}: {entry['bytes'] / 1e6:.2f} MB, {entry['latency_ms_batch1']:.1f} ms (batch 1)"
    if top is None:
        return line
    line += f", top-1 {100 * top['value']:.2f}% [{100 * top['ci'][0]:.1f}, {100 * top['ci'][1]:.1f}]"
    if "vs_reference" in top:
        d = top["vs_reference"]
        if d["only_a"] == d["only_b"] == 0:
            line += f", right on the same videos as {reference}"
        else:
            line += (f", {100 * d['diff']:+.2f} [{100 * d['ci'][0]:+.1f}, {100 * d['ci'][1]:+.1f}] vs "
                     f"{reference} ({d['verdict']}; right only here on {d['only_a']}, only there on "
                     f"{d['only_b']} videos)")
    return line
