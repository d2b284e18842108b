"""``stfusion-export --strategy best.json --model_dir=RUN --export_dir=OUT``.

Builds the *pruned* network of a strategy from the template checkpoint of a
training run and writes, under ``OUT``:

    <model_name>/<version>/      SavedModel, TF Serving layout, signature serving_default
    <model_name>.onnx            the same function as ONNX (opset 17)
    <model_name>.tflite          with ``--formats=...,tflite``: LiteRT, builtin ops only (the
                                 deploy graph: 3D convs and pools as 2D ops); ``--quantize=
                                 float16,int8`` adds ``<model_name>_fp16.tflite`` and
                                 ``<model_name>_int8.tflite`` (int8 calibrated on
                                 ``--calibration_clips`` clips of the run's hold-out videos)
    export_report.json           params / GFLOPs of template and pruned network, and the
                                 measured parity: (a) pruned Keras vs template in fixed mode,
                                 (b) SavedModel vs pruned Keras, (c) ONNX Runtime vs pruned Keras,
                                 (d) LiteRT float32 vs pruned Keras; with tflite, ``litert``:
                                 file sizes, batch-1 latency (median of 10) of every file, and
                                 with ``--quantize`` every precision's top-1 on the validation
                                 split next to the float SavedModel's (same clips, paired)

Everything is written into a temporary folder next to ``OUT`` and moved into
place only when every parity check passed (max abs difference of the logits
<= 1e-4 times their scale, the largest |logit| of the reference but at least 1;
the served-vs-evaluation check compares view-averaged probabilities); otherwise nothing is left behind and the exit code is 1.
``--ensemble=M`` writes instead one SavedModel of the search's ``ensemble-M`` (its
members, temperature and threshold from ``calibration.json`` beside ``--strategy``):
the M pruned networks on one input, returning temperature-scaled averaged
probabilities, their predictive ``entropy`` and an ``abstain`` flag, checked
against the template in fixed mode member by member (``export_ensemble``), with
its batch-1 latency against Opt's network in ``export_report.json``.

A bad strategy file, a strategy for another backbone, a checkpoint that does
not match, or an existing version folder (without ``--overwrite``) stop the
export before anything is built.
"""

import dataclasses
import json
import os
import shutil
import sys
import tempfile

from absl import app, flags, logging

from tf_stfusion import cluster as cluster_lib

FLAGS = flags.FLAGS
FORMATS = ("saved_model", "onnx", "tflite")  # the keys of writers.WRITERS, in writing order
DEFAULT_FORMATS = ("saved_model", "onnx")
TOLERANCE = 1e-4  # relative to the output scale
WORK_PREFIX = ".stfusion-export-"  # + pid: the temporary folder an export writes into


class ExportError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    strategy_file: str
    model_dir: str
    export_dir: str
    checkpoint: str = ""
    formats: tuple = DEFAULT_FORMATS
    model_name: str = "stfusion"
    version: int = 1
    num_frames: int = 0  # 0: the run's
    size: int = 0  # 0: the run's eval size
    overwrite: bool = False
    parity_clips: int = 2
    seed: int = 0
    check_serving: bool = False  # feed every validation video through serving_video and compare
    verify_data: bool = False  # with check_serving: the shards' CRC32C too, not only their sizes
    quantize: tuple = ()  # with tflite: some of litert.QUANTIZATIONS (float16, int8)
    calibration_clips: int = 100  # int8: representative clips from the run's hold-out (else training) videos
    latency_repeats: int = 10  # with tflite: batch-1 latency, median of this many runs of every file
    ensemble: int = 0  # M > 0: the posterior-averaged ensemble of the search's first M sampled strategies


def _logit_parity(logits, reference):
    """A parity check of ``logits`` against ``reference`` (both ``[clips, C]``): the
    max abs difference and the scale it is held to (``TOLERANCE`` x scale), the
    reference's largest |logit| but at least 1."""
    import numpy as np

    logits, reference = np.asarray(logits, np.float64), np.asarray(reference, np.float64)
    return {"max_abs_diff": float(np.max(np.abs(logits - reference))), "output": "logits",
            "scale": max(1.0, float(np.max(np.abs(reference))))}


def export(config: ExportConfig, log=print):
    """Runs the export; returns the report dict. Raises ExportError on failure."""
    from tf_stfusion.strategy import Strategy, StrategyError

    # -- checks that need no model ----------------------------------------------
    try:
        strategy = Strategy.load(config.strategy_file)
    except StrategyError as e:
        raise ExportError(str(e)) from None
    bad = [f for f in config.formats if f not in FORMATS]
    if bad or not config.formats:
        raise ExportError(f"--formats: unknown {bad}; expected some of {FORMATS}")
    from tf_stfusion.export.litert import QUANTIZATIONS

    bad = [q for q in config.quantize if q not in QUANTIZATIONS]
    if bad:
        raise ExportError(f"--quantize: unknown {bad}; expected some of {QUANTIZATIONS}")
    if config.quantize and "tflite" not in config.formats:
        raise ExportError("--quantize makes LiteRT files: add tflite to --formats")
    if config.ensemble and (set(config.formats) != {"saved_model"} or config.quantize):
        raise ExportError("--ensemble writes a SavedModel only (an ONNX or LiteRT file holds one network); pass "
                          "--formats=saved_model and no --quantize")
    ensemble = read_ensemble(config) if config.ensemble else None
    if config.calibration_clips < 1 or config.latency_repeats < 1:
        raise ExportError("--calibration_clips and the latency repeats must be >= 1")
    if not config.model_name or "/" in config.model_name or config.version < 1:
        raise ExportError("--model_name must be a plain name and --version >= 1")
    from tf_stfusion.run.checkpoints import find_checkpoint, restore_weights
    from tf_stfusion.run.config import TrainError
    from tf_stfusion.run.folder import RunFolder

    try:
        run = RunFolder(config.model_dir).config()  # without TensorFlow: refusals come first
    except TrainError as e:
        raise ExportError(str(e)) from None
    if run.strategy is not None:
        raise ExportError(f"{config.model_dir} trained the fixed strategy network itself; export prunes a "
                          "template run (warm-up / search)")
    if strategy.backbone != run.backbone:
        raise ExportError(f"{config.strategy_file}: strategy for backbone {strategy.backbone!r}, but the run in "
                          f"{config.model_dir} trained {run.backbone!r}")
    version_dir = os.path.join(config.export_dir, config.model_name, str(config.version))
    if os.path.exists(version_dir) and not config.overwrite:
        raise ExportError(f"{version_dir} exists; choose another --version or pass --overwrite")
    try:
        checkpoint = find_checkpoint(config.checkpoint or config.model_dir, "--checkpoint")
    except TrainError as e:
        raise ExportError(str(e)) from None

    import numpy as np
    import tensorflow as tf

    import tf_stfusion as stf
    from tf_stfusion.data.pipeline import normalize
    from tf_stfusion.export import writers
    from tf_stfusion.models.prune import prune

    try:
        record = RunFolder(config.model_dir).record()
    except TrainError as e:  # its contract
        raise ExportError(str(e)) from None
    contract = dataclasses.replace(record.contract, num_frames=config.num_frames or record.contract.num_frames,
                                   eval_size=config.size or record.contract.eval_size)
    class_names, frames, size = list(contract.class_names), contract.num_frames, contract.eval_size
    template = stf.build_template(run.backbone, num_classes=len(class_names), num_frames=frames, input_size=size)
    try:
        restore_weights(template, checkpoint)
    except TrainError as e:
        raise ExportError(str(e)) from None
    log(f"export: {config.strategy_file} ({strategy.counts()}) from {checkpoint}")

    if ensemble is not None:
        return export_ensemble(config, run, template, strategy, ensemble, contract, checkpoint, log)
    stf.apply_strategy(template, strategy)
    pruned = prune(template, strategy)
    shape = (frames, size, size, 3)
    template_cost = stf.cost(template, None, input_shape=shape)
    pruned_cost = stf.cost(template, strategy, input_shape=shape)
    if pruned.count_params() != pruned_cost.params_with_bn_stats:
        raise ExportError(f"internal: the pruned network has {pruned.count_params()} parameters, cost accounting "
                          f"predicts {pruned_cost.params_with_bn_stats}")

    # -- parity on random clips ------------------------------------------------------
    video = np.random.default_rng(config.seed).integers(0, 256, (config.parity_clips, *shape), dtype=np.uint8)
    x = normalize(tf.constant(video))
    ref_logits = template(x, training=False).numpy()
    pruned_logits = pruned(x, training=False).numpy()
    # Every check compares logits, relative to their scale: the probabilities of a
    # saturated network are 0 or 1 whatever the converted graph computes below them.
    parity = {"keras_pruned_vs_template_fixed": _logit_parity(pruned_logits, ref_logits)}

    parent = os.path.abspath(config.export_dir)
    os.makedirs(parent, exist_ok=True)
    for leftover in remove_interrupted_exports(parent):
        log(f"export: removed {leftover}, left by an export that was killed")
    work = tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{os.getpid()}-", dir=parent)
    try:
        files, loaded = {}, {}  # loaded: format -> its file, loaded to run (parity, then LiteRT latency / accuracy)
        for name in config.formats:
            writer = writers.WRITERS[name]
            files[name] = writer.relative_path(config.model_name, config.version)
            path = os.path.join(work, files[name])
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                writer.write(pruned, contract, path, config.model_name)
            except ValueError as e:  # LiteRTError / DeployError: which op has no builtin form
                raise ExportError(f"{name}: {e}; nothing was written") from None
            loaded[name] = writer.load(path)
            parity[writer.parity] = _logit_parity(loaded[name](video)["logits"], pruned_logits)
        lite = None
        if "tflite" in files:
            lite = litert_check(pruned, run, contract, config, work, files, loaded, log)
        served = None
        if config.check_serving:
            if "saved_model" not in files:
                raise ExportError("--check_serving needs the saved_model format")
            log(f"export: serving check: every {run.data.val_split} video through serving_video")
            served = serving_check(template, run, contract, os.path.join(work, files["saved_model"]),
                                   verify=config.verify_data)
            parity["served_vs_evaluation"] = {"max_abs_diff": served["max_abs_diff_probabilities"],
                                              "output": "probabilities", "scale": 1.0}
        for check in parity.values():
            check["passed"] = check["max_abs_diff"] <= TOLERANCE * check["scale"]
        report = {
            "strategy": strategy.to_dict(), "strategy_file": os.path.abspath(config.strategy_file),
            "checkpoint": checkpoint, "input": {"name": "video", "dtype": "uint8", "shape": [None, *shape]},
            "outputs": ["probabilities", "top_k", "logits"] + (["labels"] if "saved_model" in config.formats else []),
            "template": template_cost.to_dict(), "pruned": pruned_cost.to_dict(),
            "gflops_ratio": pruned_cost.gflops / template_cost.gflops,
            "parity": parity, "tolerance": f"{TOLERANCE} x output scale", "files": files,
            "input_contract": contract.to_dict(),
            "signatures": (["serving_default", "serving_video", "serving_clips", "input_contract"]
                           if "saved_model" in files else []),
        }
        if served is not None:
            report["serving_check"] = served
        if lite is not None:
            report["litert"] = lite
        failed = [name for name, check in parity.items() if not check["passed"]]
        if failed:
            raise ExportError("parity check(s) failed: " + ", ".join(
                f"{n} max abs diff {parity[n]['max_abs_diff']:.3g}" for n in failed) + "; nothing was written")
        from tf_stfusion.fileio import atomic_write_json

        atomic_write_json(os.path.join(work, "export_report.json"), report)
        # Move into place: folders (the SavedModel's version folder) last, so TF Serving
        # never sees a partial export.
        for name in sorted(files, key=lambda n: n in writers.WRITERS and writers.WRITERS[n].folder):
            final = os.path.join(parent, files[name])
            if os.path.isdir(final):
                shutil.rmtree(final)  # --overwrite was given
            os.makedirs(os.path.dirname(final), exist_ok=True)
            os.replace(os.path.join(work, files[name]), final)
        os.replace(os.path.join(work, "export_report.json"), os.path.join(parent, "export_report.json"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for name, check in parity.items():
        log(f"  parity {name}: max abs diff {check['max_abs_diff']:.2e} (scale {check['scale']:.3g})")
    if lite is not None:
        for line in litert_lines(lite):
            log(f"  {line}")
    if served is not None:
        log(f"  served top-1 {100 * served['served_top1']:.2f}% vs evaluation top-1 "
            f"{100 * served['evaluation_top1']:.2f}% on {served['split']} ({served['num_videos']} videos)")
    log(f"  params {template_cost.params:,} -> {pruned_cost.params:,}; GFLOPs {template_cost.gflops:.3f} -> "
        f"{pruned_cost.gflops:.3f}; written to {parent}")
    return report


def read_ensemble(config):
    """The first ``config.ensemble`` members, temperature and threshold of the search
    whose ``calibration.json`` lies beside ``--strategy`` (the search's best.json)."""
    path = os.path.join(os.path.dirname(os.path.abspath(config.strategy_file)), "calibration.json")
    if not os.path.isfile(path):
        raise ExportError(f"--ensemble needs the search's calibration.json beside {config.strategy_file}; run "
                          f"python -m tf_stfusion.search --model_dir={config.model_dir} (with --ensemble_sizes)")
    try:
        with open(path) as f:
            posterior = json.load(f)
        name = f"ensemble-{config.ensemble}"
        if name not in posterior["models"]:
            raise ExportError(f"{path}: no ensemble of {config.ensemble} members; the search measured M = "
                              f"{', '.join(map(str, posterior['sizes']))} (search with --ensemble_sizes to add one)")
        selective = posterior["models"][name]["selective"]
        threshold = selective["threshold"]
        units = posterior["member_units"][:config.ensemble]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ExportError(f"{path} is not a complete calibration.json ({type(e).__name__}: {e}); rerun "
                          f"python -m tf_stfusion.search --model_dir={config.model_dir}") from None
    return {"members": posterior["members"][:config.ensemble],
            "units": units, "temperature": selective["temperature"],
            "threshold": threshold["val"]["threshold"], "abstain_on": threshold["on"],
            "target_accuracy": threshold["target_accuracy"], "target_reached_on_fit_split": threshold["reachable"],
            "fitted_on": posterior["fit_split"], "source": path}


def export_ensemble(config, run, template, opt, ensemble, contract, checkpoint, log):
    """``--ensemble=M``: one SavedModel of the M pruned member networks on one input
    (``serving.Ensemble``), with the search's temperature and threshold; parity of its
    logits and scores against the template in fixed mode, member by member, and
    batch-1 latency against Opt's pruned network. Returns the report."""
    import numpy as np
    import tensorflow as tf

    import tf_stfusion as stf
    from tf_stfusion.calibration import apply_temperature
    from tf_stfusion.data.pipeline import normalize
    from tf_stfusion.export import writers
    from tf_stfusion.export.serving import Ensemble, EnsembleHead
    from tf_stfusion.models.prune import prune

    shape = (contract.num_frames, contract.eval_size, contract.eval_size, 3)
    video = np.random.default_rng(config.seed).integers(0, 256, (config.parity_clips, *shape), dtype=np.uint8)
    x = normalize(tf.constant(video))
    members, reference = pruned_members(template, ensemble["units"], x)
    model = Ensemble(members)
    head = EnsembleHead(ensemble["temperature"], ensemble["threshold"],
                        {k: v for k, v in ensemble.items() if k != "source"})
    logits = model(x).numpy()
    expected = apply_temperature(np.mean(tf.nn.softmax(reference).numpy(), axis=1), head.temperature)
    parity = {"keras_ensemble_vs_template_fixed": _logit_parity(logits, reference)}
    stf.apply_strategy(template, opt)
    opt_pruned = prune(template, opt)
    parent = os.path.abspath(config.export_dir)
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{os.getpid()}-", dir=parent)
    try:
        relative = writers.WRITERS["saved_model"].relative_path(config.model_name, config.version)
        path = writers.write_saved_model(model, contract, os.path.join(work, relative), model_name=config.model_name,
                                         head=head)
        served = writers.load_saved_model(path)(video)
        parity["saved_model_vs_keras_ensemble"] = _logit_parity(served["logits"], logits)
        parity["saved_model_vs_evaluation"] = {
            "max_abs_diff": float(np.max(np.abs(served["probabilities"] - expected))), "output": "probabilities",
            "scale": 1.0}
        served_check = None
        if config.check_serving:
            log(f"export: serving check: every {run.data.val_split} video through serving_video")
            served_check = serving_check(template, run, contract, path, verify=config.verify_data,
                                         members=ensemble["units"], temperature=head.temperature)
            parity["served_vs_evaluation"] = {"max_abs_diff": served_check["max_abs_diff_probabilities"],
                                              "output": "probabilities", "scale": 1.0}
        for check in parity.values():
            check["passed"] = check["max_abs_diff"] <= TOLERANCE * check["scale"]
        wrong = int(np.sum(served["abstain"] != (served["probabilities"].max(axis=1) < head.threshold)))
        report = ensemble_report(config, ensemble, contract, checkpoint, parity, wrong, relative,
                                 ensemble_latency(model, opt_pruned, shape, config.latency_repeats))
        if served_check is not None:
            report["serving_check"] = served_check
        failed = [n for n, c in parity.items() if not c["passed"]] + (["abstain"] if wrong else [])
        if failed:
            raise ExportError(f"ensemble check(s) failed: {', '.join(failed)}; nothing was written")
        from tf_stfusion.fileio import atomic_write_json

        final = os.path.join(parent, relative)
        if os.path.isdir(final):
            shutil.rmtree(final)  # --overwrite was given
        os.makedirs(os.path.dirname(final), exist_ok=True)
        atomic_write_json(os.path.join(parent, "export_report.json"), report)
        os.replace(path, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for name, check in parity.items():
        log(f"  parity {name}: max abs diff {check['max_abs_diff']:.2e} (scale {check['scale']:.3g})")
    lat = report["ensemble"]["latency"]
    log(f"  ensemble of {config.ensemble}: temperature {head.temperature:.3f}, abstains below {head.threshold:.3f}; "
        f"batch-1 latency {lat['ensemble_ms']:.1f} ms vs Opt {lat['opt_ms']:.1f} ms; written to {parent}")
    return report


def pruned_members(template, member_units, x):
    """The members' pruned networks, and the template's logits ``[clips, M, C]`` on
    normalised clips ``x`` in fixed mode with each member's masks (the evaluation's
    networks, one by one)."""
    import numpy as np

    import tf_stfusion as stf
    from tf_stfusion.models.prune import prune

    members, reference = [], []
    for units in member_units:
        strategy = stf.Strategy.from_units(template.stf_spec.backbone, units)
        stf.apply_strategy(template, strategy)
        reference.append(template(x, training=False).numpy())
        members.append(prune(template, strategy))
    return members, np.stack(reference, axis=1)


def ensemble_latency(model, opt_pruned, shape, repeats):
    """Batch-1 latency (ms, median) of the ensemble's and Opt's scores, as graphs."""
    import numpy as np
    import tensorflow as tf

    from tf_stfusion.export import litert
    from tf_stfusion.export.serving import clip_probabilities

    clip = tf.constant(np.zeros((1, *shape), np.uint8))
    out = {}
    for name, net in (("ensemble_ms", model), ("opt_ms", opt_pruned)):
        fn = tf.function(lambda v, net=net: clip_probabilities(net, v))
        out[name] = 1000 * litert.median_latency(lambda: fn(clip), repeats=repeats)
    out["ratio"] = out["ensemble_ms"] / out["opt_ms"]
    out["method"] = f"batch 1, median of {repeats} runs after 2 warm-up runs, Keras graph, {os.cpu_count()} CPU threads"
    return out


def ensemble_report(config, ensemble, contract, checkpoint, parity, wrong, relative, latency):
    shape = (contract.num_frames, contract.eval_size, contract.eval_size, 3)
    return {"ensemble": {**ensemble, "size": config.ensemble, "latency": latency, "abstain_mismatches": wrong},
            "strategy_file": os.path.abspath(config.strategy_file), "checkpoint": checkpoint,
            "input": {"name": "video", "dtype": "uint8", "shape": [None, *shape]},
            "outputs": ["probabilities", "top_k", "labels", "entropy", "abstain", "logits"],
            "parity": parity, "tolerance": f"{TOLERANCE} x output scale", "files": {"saved_model": relative},
            "input_contract": contract.to_dict(),
            "signatures": ["serving_default", "serving_video", "serving_clips", "input_contract"]}


def remove_interrupted_exports(parent):
    """Work folders of exports whose process is gone (killed before it could clean up):
    never a version folder (those are moved into place complete), removed here."""
    import re

    removed = []
    for name in os.listdir(parent):
        found = re.match(rf"{re.escape(WORK_PREFIX)}(\d+)-", name)
        if not found:
            continue
        try:
            os.kill(int(found.group(1)), 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # another user's live process
        shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
        removed.append(os.path.join(parent, name))
    return removed


def serving_check(template, run, contract, saved_model_dir, batch_size=8, verify=False, members=None,
                  temperature=1.0):
    """Every validation video through the SavedModel's ``serving_video`` signature,
    as a REST request would arrive (its stored JPEG frames as b64 strings), against
    the run's evaluation of the same strategy (``template`` in fixed mode, the
    evaluation pipeline under ``contract``) -- of an ensemble's ``members`` (unit
    lists): the mean of each one's evaluation, scaled by ``temperature``. Returns
    the report's numbers."""
    import numpy as np
    import tensorflow as tf

    from tf_stfusion import selection
    from tf_stfusion.calibration import apply_temperature
    from tf_stfusion.data import pipeline
    from tf_stfusion.evaluation import video_outcomes, video_probabilities
    from tf_stfusion.export.client import VIDEO_SIGNATURE, rest_body
    from tf_stfusion.export.local_server import LocalServing

    data = run.data
    source = run_source(run, verify)
    ids = sorted(v for v, _ in source.val_examples)
    position = {v: i for i, v in enumerate(ids)}
    dataset = pipeline.make_dataset(
        source.val_files, training=False, num_frames=contract.num_frames, input_size=contract.eval_size,
        batch_size=batch_size, sampler=contract.sampler, frame_stride=contract.frame_stride,
        num_clips=contract.eval_clips, deterministic=True, video_index=ids)
    if members is None:
        evaluated = video_probabilities(template, dataset, contract.eval_clips, len(ids))
    else:
        evaluated = apply_temperature(np.mean([evaluate_member(template, units, dataset, contract, len(ids))
                                               for units in members], axis=0), temperature)
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
    return {"split": data.val_split, "num_videos": len(ids), "signature": VIDEO_SIGNATURE,
            "request": "each video's stored JPEG frames, as TF Serving REST b64 strings",
            "served_top1": served_top1["value"], "served_top1_ci": served_top1["ci"],
            "evaluation_top1": eval_top1["value"], "evaluation_top1_ci": eval_top1["ci"],
            "same_answer": float(np.mean(np.argmax(served, 1) == np.argmax(evaluated, 1))),
            "max_abs_diff_probabilities": float(np.max(np.abs(served - evaluated)))}


def evaluate_member(template, units, dataset, contract, num_videos):
    """One ensemble member's video scores ``[n, C]``: ``template`` in fixed mode."""
    import tf_stfusion as stf
    from tf_stfusion.evaluation import video_probabilities

    stf.apply_strategy(template, stf.Strategy.from_units(template.stf_spec.backbone, units))
    return video_probabilities(template, dataset, contract.eval_clips, num_videos)


def run_source(run, verify=False):
    """The run's data (its prepared shards or the synthetic set), read quietly."""
    from tf_stfusion.data.sources import resolve_source

    data = run.data
    return resolve_source(data.dataset, data.data_dir, data.train_split, data.val_split,
                          synthetic_config=data.synthetic_config, progress=False, verify=verify)


def calibration_clips(run, contract, count):
    """``count`` uint8 clips ``[T, S, S, 3]`` (one per video, the evaluation view)
    of the run's hold-out videos -- trained on by no phase, not the report split --
    or of its training videos when it selected on val; the videos are the first
    ``count`` of the split in racing's pseudo-random order, so only they are read
    and decoded. Returns ``(clips, where)``."""
    from tf_stfusion import selection
    from tf_stfusion.data import pipeline

    data = run.data
    source = run_source(run)
    if data.select_split == "holdout":
        candidates = selection.holdout_ids(source.train_examples, data.holdout_fraction)
        where = f"hold-out of {data.train_split} ({len(candidates)} videos)"
    else:
        candidates = [video_id for video_id, _ in source.train_examples]
        where = f"{data.train_split} ({len(candidates)} videos; the run selected on {data.val_split})"
    chosen = selection.selection_order(candidates)[:count]
    views = pipeline.uint8_views(source.train_files, contract, chosen, num_clips=1)
    return [clips.numpy()[0] for clips, _, _ in views], where


def litert_check(pruned, run, contract, config, work, files, loaded, log):
    """Quantized LiteRT files (written into ``work``, added to ``files`` and, loaded,
    to ``loaded``), every file's size and batch-1 latency, and with ``--quantize``
    every precision's top-1 on the validation split next to the float SavedModel's
    (same uint8 clips). ``loaded``: the files already loaded for the parity check."""
    import numpy as np

    from tf_stfusion.export import litert, writers
    from tf_stfusion.fileio import size_on_disk

    out = {"calibration": None, "builtin_ops": sorted(litert.builtin_ops(os.path.join(work, files["tflite"]))),
           "files": {}}
    if "int8" in config.quantize:
        clips, where = calibration_clips(run, contract, config.calibration_clips)
        out["calibration"] = {"clips": len(clips), "videos": where, "view": "one evaluation clip per video"}
        log(f"export: int8 calibration on {len(clips)} clips of the {where}")
    for precision in config.quantize:
        name = f"tflite_{precision}"
        files[name] = litert.file_name(config.model_name, precision)
        try:
            writers.write_tflite(pruned, contract, os.path.join(work, files[name]), precision,
                                 clips if precision == "int8" else None)
        except ValueError as e:
            raise ExportError(f"{name}: {e}; nothing was written") from None
        loaded[name] = writers.WRITERS["tflite"].load(os.path.join(work, files[name]))
    shape = (contract.num_frames, contract.eval_size, contract.eval_size, 3)
    clip = np.zeros((1, *shape), np.uint8)
    runners = {name: lambda x, run=call: run(x)["probabilities"] for name, call in loaded.items()}
    for name, call in runners.items():
        size = size_on_disk(os.path.join(work, files[name]))
        seconds = litert.median_latency(lambda: call(clip), repeats=config.latency_repeats)
        out["files"][name] = {"file": files[name], "bytes": size, "latency_ms_batch1": 1000 * seconds}
    if "int8" in config.quantize:
        out["int8_ops"] = dict(zip(("int8", "all"), litert.int8_ops(os.path.join(work, files["tflite_int8"]))))
    out["latency"] = (f"batch 1, median of {config.latency_repeats} runs after 2 warm-up runs, "
                      f"{os.cpu_count()} CPU threads")
    if config.quantize:
        out["accuracy"] = precision_accuracy(run, contract, runners, log)
    return out


def precision_accuracy(run, contract, runners, log):
    """Top-1 of every runner on the validation split: the same uint8 clips (each
    video's evaluation views, scores averaged), with 95% intervals, and each one's
    paired difference to the float reference (the SavedModel, else LiteRT float32)."""
    import numpy as np

    from tf_stfusion import selection
    from tf_stfusion.data import pipeline

    data = run.data
    source = run_source(run)
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
    lines = []
    accuracy = (lite.get("accuracy") or {}).get("top1", {})
    for name, entry in lite["files"].items():
        line = f"{name}: {entry['bytes'] / 1e6:.2f} MB, {entry['latency_ms_batch1']:.1f} ms (batch 1)"
        if name in accuracy:
            top = accuracy[name]
            line += f", top-1 {100 * top['value']:.2f}% [{100 * top['ci'][0]:.1f}, {100 * top['ci'][1]:.1f}]"
            if "vs_reference" in top:
                d, reference = top["vs_reference"], lite["accuracy"]["reference"]
                if d["only_a"] == d["only_b"] == 0:
                    line += f", right on the same videos as {reference}"
                else:
                    line += (f", {100 * d['diff']:+.2f} [{100 * d['ci'][0]:+.1f}, {100 * d['ci'][1]:+.1f}] vs "
                             f"{reference} ({d['verdict']}; right only here on {d['only_a']}, only there on "
                             f"{d['only_b']} videos)")
        lines.append(line)
    if "accuracy" in lite:
        lines.append(f"top-1 on {lite['accuracy']['split']} ({lite['accuracy']['interval']})")
    return lines


def define_flags():
    flags.DEFINE_string("strategy", None, "Strategy file (e.g. RUN/strategies/best.json).")
    flags.DEFINE_string("model_dir", None, "The training run whose template weights are used.")
    flags.DEFINE_string("checkpoint", None, "Checkpoint (default: the run's newest, search before warm-up).")
    flags.DEFINE_string("export_dir", None, "Output folder.")
    flags.DEFINE_list("formats", list(DEFAULT_FORMATS), "Some of saved_model, onnx, tflite (LiteRT, builtin ops "
                      "only).")
    flags.DEFINE_list("quantize", [], "With tflite: also float16 (weights) and/or int8 (post-training, calibrated) "
                      "LiteRT files, with their top-1 on the validation split next to the float model's.")
    flags.DEFINE_integer("calibration_clips", 100, "int8: clips (one per video) of the run's hold-out videos "
                         "(training videos if it had none) that calibrate the activation ranges.")
    flags.DEFINE_string("model_name", "stfusion", "Model name (TF Serving's model folder).")
    flags.DEFINE_integer("version", 1, "Model version folder.")
    flags.DEFINE_integer("num_frames", 0, "Frames per input clip (0: the run's).")
    flags.DEFINE_integer("size", 0, "Input height and width (0: the run's evaluation size).")
    flags.DEFINE_bool("overwrite", False, "Replace an existing version folder.")
    flags.DEFINE_bool("verify_data", False, "With --check_serving: check the shards' CRC32C before reading them.")
    flags.DEFINE_integer("ensemble", 0, "Export the posterior-averaged ensemble of the search's first M sampled "
                         "strategies (RUN/strategies/calibration.json, beside --strategy) as one SavedModel: "
                         "averaged, temperature-scaled probabilities, predictive entropy and an abstain flag.")
    flags.DEFINE_bool("check_serving", False, "Feed every validation video (its stored JPEG frames) through the "
                      "SavedModel's serving_video signature as a REST request would arrive, and compare with the "
                      "run's evaluation of the strategy; a difference beyond 1e-4 fails the export.")
    cluster_lib.define_flags(flags)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.ERROR)
    missing = [n for n in ("strategy", "model_dir", "export_dir") if not FLAGS[n].value]
    if missing:
        print(f"error: --{', --'.join(missing)} required", file=sys.stderr)
        return 2
    try:  # in a multi-machine job, one export: the chief's
        job = cluster_lib.resolve(FLAGS.cluster, FLAGS.cluster_port)
    except cluster_lib.ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not job.is_chief:
        print(f"{job.describe()}; the export and its checks run on the chief only")
        return 0
    config = ExportConfig(
        strategy_file=FLAGS.strategy, model_dir=FLAGS.model_dir, export_dir=FLAGS.export_dir,
        checkpoint=FLAGS.checkpoint or "", formats=tuple(FLAGS.formats), model_name=FLAGS.model_name,
        version=FLAGS.version, num_frames=FLAGS.num_frames, size=FLAGS.size, overwrite=FLAGS.overwrite,
        check_serving=FLAGS.check_serving, verify_data=FLAGS.verify_data, quantize=tuple(FLAGS.quantize),
        calibration_clips=FLAGS.calibration_clips, ensemble=FLAGS.ensemble,
    )
    if FLAGS.ensemble and not FLAGS["formats"].present:
        config = dataclasses.replace(config, formats=("saved_model",))
    if FLAGS.ensemble < 0:
        print("error: --ensemble takes a member count M >= 1 (0: one network)", file=sys.stderr)
        return 2
    from tf_stfusion.data.integrity import DataError

    try:
        export(config)
    except (ExportError, DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def run():
    """Console-script entry point (``stfusion-export``)."""
    define_flags()
    from tf_stfusion.configs import resolve_flagfiles

    app.run(main, argv=resolve_flagfiles(sys.argv))


if __name__ == "__main__":
    run()
