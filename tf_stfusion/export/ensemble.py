"""``--ensemble=M``: one SavedModel of the search's posterior-averaged ensemble.

The M pruned member networks of the search's first M sampled strategies run on
one input (``serving.Ensemble``); the ``serving.EnsembleHead`` applies the
temperature and abstain threshold the search fitted (``calibration.json``
beside ``--strategy``). Parity: the ensemble's logits against the template in
fixed mode, member by member, and the served probabilities against the
temperature-scaled mean of the members' softmax; batch-1 latency against Opt's
pruned network.
"""

import json
import os

import numpy as np
import tensorflow as tf

from tf_stfusion.calibration import apply_temperature
from tf_stfusion.data.pipeline import normalize
from tf_stfusion.export import checks, litert, staging, writers
from tf_stfusion.export.config import ExportError
from tf_stfusion.export.serving import Ensemble, EnsembleHead, clip_probabilities, clip_shape
from tf_stfusion.models.prune import prune
from tf_stfusion.strategy import Strategy, apply_strategy


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


def export_ensemble(config, run_config, template, opt, ensemble, contract, checkpoint, log):
    """``--ensemble=M``: one SavedModel of the M pruned member networks on one input
    (``serving.Ensemble``), with the search's temperature and threshold; parity of its
    logits and scores against the template in fixed mode, member by member, and
    batch-1 latency against Opt's pruned network. Returns the report."""
    video = checks.parity_clips(contract, config.parity_clips, config.seed)
    x = normalize(tf.constant(video))
    members, reference = pruned_members(template, ensemble["units"], x)
    model = Ensemble(members)
    head = EnsembleHead(ensemble["temperature"], ensemble["threshold"],
                        {k: v for k, v in ensemble.items() if k != "source"})
    logits = model(x).numpy()
    parity = {"keras_ensemble_vs_template_fixed": checks.logit_parity(logits, reference)}
    apply_strategy(template, opt)
    opt_pruned = prune(template, opt)
    relative = writers.WRITERS["saved_model"].relative_path(config.model_name, config.version)
    with staging.work_folder(config.export_dir, log) as (parent, work):
        path = os.path.join(work, relative)
        served = _write_and_compare(model, head, contract, config, path, video, logits, reference, parity)
        served_check = None
        if config.check_serving:
            served_check = checks.check_served(template, run_config, contract, path, parity, log,
                                               verify=config.verify_data, members=ensemble["units"],
                                               temperature=head.temperature)
        failed = checks.judge(parity)
        wrong = int(np.sum(served["abstain"] != (served["probabilities"].max(axis=1) < head.threshold)))
        report = ensemble_report(config, ensemble, contract, checkpoint, parity, wrong, relative,
                                 ensemble_latency(model, opt_pruned, contract, config.latency_repeats))
        if served_check is not None:
            report["serving_check"] = served_check
        failed += ["abstain"] if wrong else []
        if failed:
            raise ExportError(f"ensemble check(s) failed: {', '.join(failed)}; nothing was written")
        staging.move_into_place(work, parent, {"saved_model": relative}, report)
    for line in checks.parity_lines(parity):
        log(f"  {line}")
    lat = report["ensemble"]["latency"]
    log(f"  ensemble of {config.ensemble}: temperature {head.temperature:.3f}, abstains below {head.threshold:.3f}; "
        f"batch-1 latency {lat['ensemble_ms']:.1f} ms vs Opt {lat['opt_ms']:.1f} ms; written to {parent}")
    return report


def _write_and_compare(model, head, contract, config, path, video, logits, reference, parity):
    """Writes the ensemble's SavedModel to ``path``, runs ``video`` through it and adds
    its parity checks: logits against the Keras ensemble, probabilities against the
    temperature-scaled mean softmax of the template's members. Returns its outputs."""
    writers.write_saved_model(model, contract, path, model_name=config.model_name, head=head)
    served = writers.load_saved_model(path)(video)
    expected = apply_temperature(np.mean(tf.nn.softmax(reference).numpy(), axis=1), head.temperature)
    parity["saved_model_vs_keras_ensemble"] = checks.logit_parity(served["logits"], logits)
    parity["saved_model_vs_evaluation"] = checks.probability_parity(
        np.max(np.abs(served["probabilities"] - expected)))
    return served


def pruned_members(template, member_units, x):
    """The members' pruned networks, and the template's logits ``[clips, M, C]`` on
    normalised clips ``x`` in fixed mode with each member's masks (the evaluation's
    networks, one by one)."""
    members, reference = [], []
    for units in member_units:
        strategy = Strategy.from_units(template.stf_spec.backbone, units)
        apply_strategy(template, strategy)
        reference.append(template(x, training=False).numpy())
        members.append(prune(template, strategy))
    return members, np.stack(reference, axis=1)


def ensemble_latency(model, opt_pruned, contract, repeats):
    """Batch-1 latency (ms, median) of the ensemble's and Opt's scores, as graphs."""
    clip = tf.constant(np.zeros((1, *clip_shape(contract)), np.uint8))
    out = {}
    for name, net in (("ensemble_ms", model), ("opt_ms", opt_pruned)):
        fn = tf.function(lambda v, net=net: clip_probabilities(net, v))
        out[name] = 1000 * litert.median_latency(lambda: fn(clip), repeats=repeats)
    out["ratio"] = out["ensemble_ms"] / out["opt_ms"]
    out["method"] = checks.latency_method(repeats, "Keras graph, ")
    return out


def ensemble_report(config, ensemble, contract, checkpoint, parity, wrong, relative, latency):
    """The ensemble's ``export_report.json``."""
    return {"ensemble": {**ensemble, "size": config.ensemble, "latency": latency, "abstain_mismatches": wrong},
            "strategy_file": os.path.abspath(config.strategy_file), "checkpoint": checkpoint,
            "input": {"name": "video", "dtype": "uint8", "shape": [None, *clip_shape(contract)]},
            "outputs": ["probabilities", "top_k", "labels", "entropy", "abstain", "logits"],
            "parity": parity, "tolerance": f"{checks.TOLERANCE} x output scale", "files": {"saved_model": relative},
            "input_contract": contract.to_dict(),
            "signatures": ["serving_default", "serving_video", "serving_clips", "input_contract"]}
