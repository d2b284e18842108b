"""``python -m tf_stfusion.sweep --model_dir=RUN --length_scales=1,4,16,64``: the k sweep.

The paper chose its length-scale prior ``k`` by grid search. This command runs
one search phase per ``k`` from the *same* finished warm-up of ``RUN`` (same
weights, same hold-out), each in its own run folder ``RUN/sweep/k<k>/`` with
its strategy search, and compares them:

* per ``k``: the pre-flight ratio (Eq. 5 term / data loss at the warm-up
  weights, ``search/preflight.json``), the share of gates with ``p > 0.9``
  after the phase, Opt's top-1 on the hold-out with its 95% Wilson interval;
* the chosen ``k``: Opt's best top-1 on the hold-out (ties: more top-5 hits on
  the hold-out, then the smaller k) -- never chosen on ``val``;
* the chosen k's Opt on ``val`` with the paired difference against the
  runner-up k's Opt on the same videos.

Every ``k`` is an ordinary run folder: ``--only=K`` runs one of them (a job on
its own machine, the run folder on a shared file system), ``--report_only``
writes the comparison from the finished ones. Rerunning the command resumes:
a finished k is skipped, an interrupted one continues from its checkpoint.
The sweep starts every k even where its pre-flight would stop a training run
(the sweep is how that threshold is measured); each k's verdict is reported.
Writes ``RUN/sweep/sweep.json`` and ``sweep.md``.
"""

import dataclasses
import json
import os
import sys
import time

from absl import flags

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    model_dir: str
    length_scales: tuple = (1.0, 4.0, 16.0, 64.0)
    num_samples: int = 100  # strategies sampled per k
    epochs: int = 0  # search-phase epochs per k; 0: the run's
    only: tuple = ()  # run these k only (one job per machine); (): every k
    report_only: bool = False
    progress: bool = True


def k_folder(model_dir, k):
    """The run folder of one k's search phase: ``RUN/sweep/k<k>``."""
    from tf_stfusion.run.folder import RunFolder

    return os.path.join(RunFolder(model_dir).sweep_dir, f"k{k:g}")


def k_config(base, warmup_checkpoint, k, model_dir, epochs=0, progress=True):
    """The search-phase ``TrainConfig`` of one k: ``base``'s recipe and data (so the
    same hold-out), starting from ``warmup_checkpoint``."""
    return dataclasses.replace(base, model_dir=model_dir, phases=("search",), init_from=warmup_checkpoint,
                               length_scale=float(k), epochs=epochs or base.epochs,
                               lr_steps=tuple(s for s in base.lr_steps if s < (epochs or base.epochs)),
                               override_preflight=True, progress=progress)


def run_one(config, base, warmup, k, log=print):
    """Runs (or resumes, or skips when finished) the search phase and the strategy
    search of one k; returns its seconds (this call)."""
    from tf_stfusion.run.folder import RunFolder
    from tf_stfusion.search import COMPARISON, SearchConfig, run_search
    from tf_stfusion.trainer import Trainer

    folder = k_folder(config.model_dir, k)
    if os.path.isfile(os.path.join(RunFolder(folder).strategies_dir, COMPARISON)):
        log(f"sweep: k = {k:g} already finished in {folder}; skipping")
        return 0.0
    t0 = time.time()
    log(f"sweep: k = {k:g} -> {folder}")
    # train(): the phase and probabilities.json; Opt and the fixed strategies are evaluated
    # on val by the strategy search, the template itself is not.
    Trainer(k_config(base, warmup, k, folder, config.epochs, config.progress)).train()
    run_search(SearchConfig(model_dir=folder, num_samples=config.num_samples, seed=base.seed,
                            progress=config.progress), log=log)
    return time.time() - t0


def read_k(model_dir, k):
    """One k's numbers from its run folder, or None while unfinished."""
    from tf_stfusion.run.folder import BEST_STRATEGY, RunFolder
    from tf_stfusion.search import COMPARISON

    folder = k_folder(model_dir, k)
    run = RunFolder(folder)
    paths = {"preflight": run.preflight_path, "done": run.done_path("search"),
             "probabilities": run.probabilities_path, "comparison": os.path.join(run.strategies_dir, COMPARISON),
             "best": os.path.join(run.strategies_dir, BEST_STRATEGY)}
    if not all(os.path.isfile(p) for p in paths.values()):
        return None
    loaded = {}
    for name, path in paths.items():
        with open(path) as f:
            loaded[name] = json.load(f)
    selected = loaded["best"]["metrics"]["selection"]
    return {"k": k, "folder": folder, "preflight_ratio": loaded["preflight"]["ratio"],
            "data_loss": loaded["preflight"]["data_loss"],
            "eq5_term": loaded["preflight"]["forms"][loaded["preflight"]["prior_form"]]["eq5_term"],
            "prior_form": loaded["preflight"]["prior_form"],
            "gates_above_0.9": loaded["probabilities"]["diagnostics"]["fraction_gates_above_0.9"],
            "holdout": {key: selected[key] for key in ("top1", "top1_ci", "top5", "num_videos", "split")},
            "val": loaded["comparison"]["strategies"]["Opt"], "val_videos": loaded["comparison"]["videos"],
            "search_phase_seconds": loaded["done"].get("seconds_this_run")}


def choose(rows):
    """The rows ranked by Opt on the hold-out: top-1, then top-5, then smaller k."""
    return sorted(rows, key=lambda r: (-r["holdout"]["top1"], -r["holdout"]["top5"], r["k"]))


def compare(model_dir, length_scales):
    """The sweep's comparison (``sweep.json``) from the finished k; None if fewer than one."""
    from tf_stfusion.prior import verdict_of
    from tf_stfusion.search import row_correct
    from tf_stfusion.selection import CI_METHOD, PAIRED_METHOD, paired_difference

    rows = [r for r in (read_k(model_dir, k) for k in length_scales) if r is not None]
    missing = [k for k in length_scales if k not in {r["k"] for r in rows}]
    if not rows:
        return None
    # Every k starts from the same warm-up weights, so the data loss is one quantity measured
    # once per k on a few random batches: their mean gives each k's ratio without that noise.
    # The verdict is today's (thresholds calibrated on sweeps like this), not the recorded one.
    pooled_loss = sum(r["data_loss"] for r in rows) / len(rows)
    for r in rows:
        r["pooled_ratio"] = r["eq5_term"] / pooled_loss
        r["preflight_verdict"] = verdict_of(r["pooled_ratio"])
    ranked = choose(rows)
    chosen = ranked[0]
    result = {"rows": rows, "missing": missing, "chosen_k": chosen["k"], "chosen_on": chosen["holdout"]["split"],
              "pooled_data_loss": pooled_loss,
              "ci_method": CI_METHOD, "paired_method": PAIRED_METHOD, "runner_up_k": None, "paired_val": None}
    if len(ranked) > 1:
        runner = ranked[1]
        if runner["val_videos"] != chosen["val_videos"]:
            raise ValueError(f"{chosen['folder']} and {runner['folder']} were evaluated on different val videos; "
                             "cannot pair them")
        result["runner_up_k"] = runner["k"]
        result["paired_val"] = paired_difference(row_correct(chosen["val"]), row_correct(runner["val"])).to_dict()
    return result


def render(result, seconds=None):
    """``sweep.md``: one row per k, the chosen k, and its paired difference on val."""
    from tf_stfusion.report import percent  # matplotlib loads only when a report is written

    rows = sorted(result["rows"], key=lambda r: r["k"])
    first = rows[0]
    lines = ["# k sweep", "",
             f"One search phase per k from the same warm-up ({first['prior_form']} form), each followed by the "
             "strategy search; Opt chosen on the hold-out, k chosen by Opt's hold-out top-1.", "",
             f"Pre-flight: Eq. 5 term at the warm-up weights over the data loss, as each k measured it and "
             f"over the mean data loss of all k ({result['pooled_data_loss']:.3g}; the same weights, so one "
             "quantity measured on a few random batches each time).", "",
             "| k | Eq. 5 term | data loss | pre-flight ratio | ratio at the mean data loss | verdict | "
             "gates p > 0.9 | "
             "Opt top-1 on hold-out (%) [95% CI] | Opt top-1 on val (%) [95% CI] | search phase (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mark = " (chosen)" if r["k"] == result["chosen_k"] else ""
        lines.append(f"| {r['k']:g}{mark} | {r['eq5_term']:.4g} | {r['data_loss']:.3g} | {r['preflight_ratio']:.3g} | "
                     f"{r['pooled_ratio']:.3g} | {r['preflight_verdict']} | "
                     f"{100 * r['gates_above_0.9']:.0f}% | {percent(r['holdout']['top1'], r['holdout']['top1_ci'], digits=1)} "
                     f"(n = {r['holdout']['num_videos']}) | {percent(r['val']['top1'], r['val']['top1_ci'], digits=1)} | "
                     f"{r['search_phase_seconds']} |")
    lines += ["", f"Chosen k = {result['chosen_k']:g} (best Opt top-1 on {result['chosen_on']})."]
    paired = result["paired_val"]
    if paired:
        lines.append(f"On val, its Opt minus the runner-up's (k = {result['runner_up_k']:g}): "
                     f"{100 * paired['diff']:+.1f} points [{100 * paired['ci'][0]:+.1f}, {100 * paired['ci'][1]:+.1f}]"
                     f" ({paired['verdict']}).")
    if result["missing"]:
        lines.append(f"Not finished yet: k = {', '.join(f'{k:g}' for k in result['missing'])}.")
    if seconds is not None:
        lines.append(f"This call ran for {seconds:.0f} s.")
    lines += ["", f"Top-1 intervals: {result['ci_method']}. Differences: {result['paired_method']}.", ""]
    return "\n".join(lines)


def run_sweep(config: SweepConfig, log=print):
    """Runs (or resumes) every k of ``config`` (or ``only``), then writes the comparison."""
    from tf_stfusion.run.config import TrainError
    from tf_stfusion.fileio import atomic_write_json, atomic_write_text
    from tf_stfusion.run.folder import RunFolder

    folder = RunFolder(config.model_dir)
    base = folder.config()
    if base.strategy is not None or base.data.select_split != "holdout":
        raise TrainError(f"{config.model_dir}: the sweep needs a template run with a hold-out (--select_split="
                         "holdout) to choose k on")
    unknown = [k for k in config.only if k not in config.length_scales]
    if unknown:
        raise TrainError(f"--only={unknown[0]:g} is not one of --length_scales")
    t0 = time.time()
    if not config.report_only:
        warmup = folder.finished_checkpoint("warmup")
        for k in config.only or config.length_scales:
            run_one(config, base, warmup, k, log)
    result = compare(config.model_dir, config.length_scales)
    out = folder.sweep_dir
    if result is None:
        raise TrainError(f"no k of the sweep in {out} has finished yet")
    text = render(result, time.time() - t0)
    atomic_write_json(os.path.join(out, "sweep.json"), result)
    atomic_write_text(os.path.join(out, "sweep.md"), text)
    log(text)
    return result


def run():
    """Console-script entry point (``stfusion-sweep``): the flags below, then ``main``."""
    from tf_stfusion.configs import run_app

    run_app(main, define_flags)


def define_flags():
    flags.DEFINE_string("model_dir", None, "A template run with a finished warm-up and a hold-out.")
    flags.DEFINE_list("length_scales", ["1", "4", "16", "64"], "The k to try (in the run's --prior_form).")
    flags.DEFINE_integer("num_strategy_samples", 100, "Strategies sampled per k.")
    flags.DEFINE_integer("epochs", 0, "Search-phase epochs per k (0: the run's).")
    flags.DEFINE_list("only", [], "Run only these k (one job per machine); the report covers those finished.")
    flags.DEFINE_bool("report_only", False, "Write the comparison of the finished k; train nothing.")
    flags.DEFINE_bool("progress", True, "Progress bars.")


def _floats(name):
    try:
        return tuple(float(v) for v in FLAGS[name].value)
    except ValueError:
        raise ValueError(f"--{name} takes comma-separated numbers, got {','.join(FLAGS[name].value)}") from None


def main(argv):
    del argv  # run_app refuses positional arguments
    from tf_stfusion.run.config import TrainError

    try:
        if not FLAGS.model_dir:
            raise ValueError("--model_dir is required")
        scales = _floats("length_scales")
        if not scales or any(k <= 0 for k in scales) or len(set(scales)) != len(scales):
            raise ValueError(f"--length_scales takes distinct numbers > 0, got {','.join(FLAGS.length_scales)}")
        run_sweep(SweepConfig(model_dir=FLAGS.model_dir, length_scales=scales, num_samples=FLAGS.num_strategy_samples,
                              epochs=FLAGS.epochs, only=_floats("only"), report_only=FLAGS.report_only,
                              progress=FLAGS.progress))
    except (ValueError, FileNotFoundError) as e:  # TrainError included: settings named as flags
        print("error: " + (e.render(lambda field: f"--{field}") if isinstance(e, TrainError) else str(e)),
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    run()
