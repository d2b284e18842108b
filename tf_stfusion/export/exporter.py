"""``export()``: a strategy's pruned network from a template run, checked and
written (``export.main``'s docstring says what lands where).

The export is a sequence of named steps: the options checked (``_check_options``),
the run opened and its template restored (``_open_run``), the pruned network
built and its cost accounted (``_prune``), the Keras parity on random clips
(``_keras_parity``), every format written and held to parity (``_write_formats``),
the LiteRT files quantized, timed and their top-1 measured (``_litert``), the
served-vs-evaluation check (``checks.check_served``), the report (``_report``)
and the move into place (``staging.move_into_place``): nothing lands in the
export folder unless every check passed.
"""

import dataclasses
import os

import tensorflow as tf

from tf_stfusion.accounting import cost
from tf_stfusion.data.pipeline import normalize
from tf_stfusion.export import checks, litert, part_runtimes, staging, writers
from tf_stfusion.export.config import FORMATS, ExportConfig, ExportError
from tf_stfusion.export.ensemble import export_ensemble, read_ensemble
from tf_stfusion.export.serving import clip_shape
from tf_stfusion.models import build_template
from tf_stfusion.models.prune import prune
from tf_stfusion.run.checkpoints import find_checkpoint, restore_weights
from tf_stfusion.run.config import TrainError
from tf_stfusion.run.folder import RunFolder
from tf_stfusion.strategy import Strategy, StrategyError, apply_strategy


def export(config: ExportConfig, log=print):
    """Runs the export; returns the report dict (``export_report.json``).

    Raises ``ExportError`` (one line, nothing left behind) on a bad option, a run
    or checkpoint that does not fit, a conversion that fails or a failed check.
    """
    strategy, ensemble = _check_options(config)
    run_config, template, contract, checkpoint = _open_run(config, strategy)
    log(f"export: {config.strategy_file} ({strategy.counts()}) from {checkpoint}")
    if ensemble is not None:
        return export_ensemble(config, run_config, template, strategy, ensemble, contract, checkpoint, log)
    pruned, costs = _prune(template, strategy, contract)
    video = checks.parity_clips(contract, config.parity_clips, config.seed)
    pruned_logits, parity = _keras_parity(template, pruned, video)
    lite = served = None
    with staging.work_folder(config.export_dir, log) as (parent, work):
        files, loaded = _write_formats(pruned, contract, config, work, video, pruned_logits, parity)
        if "tflite" in files:
            lite = _litert(pruned, run_config, contract, config, work, files, loaded, log, strategy)
        if config.check_serving:
            served = checks.check_served(template, run_config, contract, os.path.join(work, files["saved_model"]),
                                         parity, log, verify=config.verify_data)
        failed = checks.judge(parity)
        report = _report(config, strategy, checkpoint, contract, costs, parity, files, served, lite)
        budget = _latency_budget(strategy, files, loaded, work, contract, config)
        if budget is not None:
            report["latency_budget"] = budget
            error = checks.budget_error(budget)
            if error and not config.allow_over_budget:
                raise ExportError(error)
        if failed:
            raise ExportError("parity check(s) failed: " + ", ".join(
                f"{n} max abs diff {parity[n]['max_abs_diff']:.3g}" for n in failed) + "; nothing was written")
        staging.move_into_place(work, parent, files, report)
    _log_summary(parity, lite, served, costs, parent, log)
    if budget is not None:
        log(f"  {checks.budget_line(budget)}")
    return report


def _check_options(config):
    """The checks that need no run: the strategy file and the flags. Returns
    ``(strategy, ensemble)`` (``ensemble``: ``read_ensemble``'s, or None)."""
    try:
        strategy = Strategy.load(config.strategy_file)
    except StrategyError as e:
        raise ExportError(str(e)) from None
    bad = [f for f in config.formats if f not in FORMATS]
    if bad or not config.formats:
        raise ExportError(f"--formats: unknown {bad}; expected some of {FORMATS}")
    bad = [q for q in config.quantize if q not in litert.QUANTIZATIONS]
    if bad:
        raise ExportError(f"--quantize: unknown {bad}; expected some of {litert.QUANTIZATIONS}")
    if config.quantize and "tflite" not in config.formats:
        raise ExportError("--quantize makes LiteRT files: add tflite to --formats")
    if config.ensemble and (set(config.formats) != {"saved_model"} or config.quantize):
        raise ExportError("--ensemble writes a SavedModel only (an ONNX or LiteRT file holds one network); pass "
                          "--formats=saved_model and no --quantize")
    if config.check_serving and "saved_model" not in config.formats:
        raise ExportError("--check_serving needs the saved_model format")
    ensemble = read_ensemble(config) if config.ensemble else None
    _check_budget_file(config, strategy)
    if config.calibration_clips < 0 or config.latency_repeats < 1:
        raise ExportError("--calibration_clips must be >= 0 (0: the default) and the latency repeats >= 1")
    if not config.model_name or "/" in config.model_name or config.version < 1:
        raise ExportError("--model_name must be a plain name and --version >= 1")
    return strategy, ensemble


def _check_budget_file(config, strategy):
    """Refuses, before anything is built, a single-network export that cannot time
    the file of the runtime the search's latency budget was predicted for."""
    try:
        chosen = checks.budget_file(strategy)
    except ValueError as e:
        raise ExportError(f"{config.strategy_file}: {e}") from None
    if chosen and not config.ensemble and chosen[1] not in config.formats and not config.allow_over_budget:
        raise ExportError(f"{config.strategy_file}: chosen under a {strategy.provenance['max_latency_ms']} ms latency "
                          f"budget predicted for {chosen[0]}; add {chosen[1]} to --formats so that the export measures "
                          "that file, or pass --allow_over_budget")


def _open_run(config, strategy):
    """The run's config, its template restored from the checkpoint, its input
    contract (``--num_frames`` / ``--size`` applied) and the checkpoint's path;
    refuses a fixed-strategy run, a strategy of another backbone, an existing
    version folder (without ``--overwrite``) and a checkpoint that does not match."""
    try:
        run_config = RunFolder(config.model_dir).config()  # without TensorFlow: refusals come first
    except TrainError as e:
        raise ExportError(str(e)) from None
    if run_config.strategy is not None:
        raise ExportError(f"{config.model_dir} trained the fixed strategy network itself; export prunes a "
                          "template run (warm-up / search)")
    if strategy.backbone != run_config.backbone:
        raise ExportError(f"{config.strategy_file}: strategy for backbone {strategy.backbone!r}, but the run in "
                          f"{config.model_dir} trained {run_config.backbone!r}")
    version_dir = os.path.join(config.export_dir, config.model_name, str(config.version))
    if os.path.exists(version_dir) and not config.overwrite:
        raise ExportError(f"{version_dir} exists; choose another --version or pass --overwrite")
    try:
        checkpoint = find_checkpoint(config.checkpoint or config.model_dir, "--checkpoint")
    except TrainError as e:
        raise ExportError(str(e)) from None
    try:
        record = RunFolder(config.model_dir).record()
    except TrainError as e:  # its contract
        raise ExportError(str(e)) from None
    contract = dataclasses.replace(record.contract, num_frames=config.num_frames or record.contract.num_frames,
                                   eval_size=config.size or record.contract.eval_size)
    class_names, frames, size = list(contract.class_names), contract.num_frames, contract.eval_size
    template = build_template(run_config.backbone, num_classes=len(class_names), num_frames=frames, input_size=size)
    try:
        restore_weights(template, checkpoint)
    except TrainError as e:
        raise ExportError(str(e)) from None
    return run_config, template, contract, checkpoint


def _prune(template, strategy, contract):
    """The pruned network of ``strategy`` and the ``(template, pruned)`` costs;
    its parameter count is checked against cost accounting."""
    apply_strategy(template, strategy)
    pruned = prune(template, strategy)
    shape = clip_shape(contract)
    costs = cost(template, None, input_shape=shape), cost(template, strategy, input_shape=shape)
    if pruned.count_params() != costs[1].params_with_bn_stats:
        raise ExportError(f"internal: the pruned network has {pruned.count_params()} parameters, cost accounting "
                          f"predicts {costs[1].params_with_bn_stats}")
    return pruned, costs


def _keras_parity(template, pruned, video):
    """The pruned network's logits on ``video`` and ``{check: parity}`` against the
    template in fixed mode."""
    x = normalize(tf.constant(video))
    ref_logits = template(x, training=False).numpy()
    pruned_logits = pruned(x, training=False).numpy()
    return pruned_logits, {"keras_pruned_vs_template_fixed": checks.logit_parity(pruned_logits, ref_logits)}


def _write_formats(pruned, contract, config, work, video, pruned_logits, parity):
    """Every ``--formats`` file written into ``work``, loaded and held to parity on
    ``video`` against the pruned Keras network (added to ``parity``). Returns
    ``(files, loaded)``: name -> path relative to ``work``, and -> its runner."""
    files, loaded = {}, {}
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
        parity[writer.parity] = checks.logit_parity(loaded[name](video)["logits"], pruned_logits)
    return files, loaded


def _latency_budget(strategy, files, loaded, work, contract, config):
    """The report's ``latency_budget`` (``checks.latency_budget``): the written file
    of the search's latency table's runtime, timed against the search's budget."""
    runners = {name: lambda x, call=call: call(x)["probabilities"] for name, call in loaded.items()}
    chosen = checks.budget_file(strategy)
    version = part_runtimes.runtime(chosen[0]).version if chosen else None
    return checks.latency_budget(strategy, runners, files, work, contract, config.latency_repeats, version)


def _litert(pruned, run_config, contract, config, work, files, loaded, log, strategy=None):
    """The report's ``litert``: the float LiteRT file's ops, the ``--quantize`` files
    (written, added to ``files`` and ``loaded``), every file's size and batch-1
    latency and, with ``--quantize``, every precision's top-1 on the validation split."""
    lite = {"calibration": None, "builtin_ops": sorted(litert.builtin_ops(os.path.join(work, files["tflite"])))}
    lite["calibration"] = _write_quantized(pruned, run_config, contract, config, work, files, loaded, log, strategy)
    runners = {name: lambda x, call=call: call(x)["probabilities"] for name, call in loaded.items()}
    lite["files"] = checks.latencies(runners, files, work, contract, config.latency_repeats)
    if "int8" in config.quantize:
        lite["int8_ops"] = dict(zip(("int8", "all"), litert.int8_ops(os.path.join(work, files["tflite_int8"]))))
    lite["latency"] = checks.latency_method(config.latency_repeats)
    if config.quantize:
        lite["accuracy"] = checks.precision_accuracy(run_config, contract, runners, log)
    return lite


def _write_quantized(pruned, run_config, contract, config, work, files, loaded, log, strategy=None):
    """The ``--quantize`` LiteRT files, written into ``work`` and loaded (added to
    ``files`` and ``loaded``); int8 calibrated on ``calibration_clips`` (those of
    ``strategy``'s int8 finalists when the search picked it in int8). Returns the
    calibration's description (None without int8)."""
    calibration, clips = None, None
    if "int8" in config.quantize:
        clips, where = checks.calibration_clips(run_config, contract, config.calibration_clips, strategy)
        calibration = {"clips": len(clips), "videos": where, "view": "one evaluation clip per video"}
        log(f"export: int8 calibration on {len(clips)} clips of the {where}")
        scored = ((strategy.provenance or {}) if strategy else {}).get("calibration_clips")
        if scored and scored != len(clips):
            log(f"export: warning: the search scored this strategy's int8 file calibrated on {scored} clips, this "
                f"one is calibrated on {len(clips)} (--calibration_clips={config.calibration_clips}); pass "
                f"--calibration_clips={scored} or 0 to ship the file that was scored")
    for precision in config.quantize:
        name = f"tflite_{precision}"
        files[name] = litert.file_name(config.model_name, precision)
        path = os.path.join(work, files[name])
        try:
            writers.write_tflite(pruned, contract, path, precision, clips if precision == "int8" else None)
        except ValueError as e:
            raise ExportError(f"{name}: {e}; nothing was written") from None
        loaded[name] = writers.WRITERS["tflite"].load(path)
    return calibration


def _report(config, strategy, checkpoint, contract, costs, parity, files, served, lite):
    """``export_report.json`` of a single network."""
    template_cost, pruned_cost = costs
    report = {
        "strategy": strategy.to_dict(), "strategy_file": os.path.abspath(config.strategy_file),
        "checkpoint": checkpoint, "input": {"name": "video", "dtype": "uint8", "shape": [None, *clip_shape(contract)]},
        "outputs": ["probabilities", "top_k", "logits"] + (["labels"] if "saved_model" in config.formats else []),
        "template": template_cost.to_dict(), "pruned": pruned_cost.to_dict(),
        "gflops_ratio": pruned_cost.gflops / template_cost.gflops,
        "parity": parity, "tolerance": f"{checks.TOLERANCE} x output scale", "files": files,
        "input_contract": contract.to_dict(),
        "signatures": (["serving_default", "serving_video", "serving_clips", "input_contract"]
                       if "saved_model" in files else []),
    }
    if served is not None:
        report["serving_check"] = served
    if lite is not None:
        report["litert"] = lite
    return report


def _log_summary(parity, lite, served, costs, parent, log):
    """The export log's closing lines: parity, LiteRT, serving check and cost."""
    for line in checks.parity_lines(parity) + (checks.litert_lines(lite) if lite is not None else []):
        log(f"  {line}")
    if served is not None:
        log(f"  served top-1 {100 * served['served_top1']:.2f}% vs evaluation top-1 "
            f"{100 * served['evaluation_top1']:.2f}% on {served['split']} ({served['num_videos']} videos)")
    template_cost, pruned_cost = costs
    log(f"  params {template_cost.params:,} -> {pruned_cost.params:,}; GFLOPs {template_cost.gflops:.3f} -> "
        f"{pruned_cost.gflops:.3f}; written to {parent}")
