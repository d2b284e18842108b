"""``python -m tf_stfusion.compare --model_dir=RUN``: the paper's Table 2, honestly.

The search scores strategies with the *template's* weights. What a user deploys
is a strategy's pruned network trained on its own, so this command trains Opt
(``RUN/strategies/best.json``) and the fixed S / ST / S+ST from scratch as their
pruned networks, with the run's recipe, and compares them on the report split:

* each network is a fixed-strategy run in ``RUN/compare/<name>/`` (resumable:
  the same command again continues or skips finished runs), trained for the
  template's whole schedule (warm-up + search epochs, the search phase's
  learning rate, the lr steps of both phases in sequence) on every training
  video, as the paper retrains;
* each is evaluated on the run's report split (``--val_split``) with the run's
  multi-clip evaluation; per-video correctness is kept in its ``metrics.json``;
* ``RUN/compare/comparison.json`` and ``table.md``: top-1 with 95% Wilson
  intervals, Opt minus each baseline as a paired difference with its paired
  bootstrap interval, params and GFLOPs.
"""

import dataclasses
import os
import sys

from absl import flags

from tf_stfusion.units import FIXED_STRATEGIES

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    model_dir: str
    strategies: tuple = ("Opt",) + FIXED_STRATEGIES  # Opt, S, ST, S+ST or strategy files
    epochs: int = 0  # 0: the run's warm-up + search epochs
    distribution: str = "one_device"
    progress: bool = True


def resolve_strategies(config, backbone):
    """``[(name, Strategy)]``: Opt is the search's best.json, S / ST / S+ST the
    uniform baselines, anything else a strategy file (named by its file stem)."""
    from tf_stfusion.run.folder import RunFolder
    from tf_stfusion.strategy import Strategy

    out = []
    for item in config.strategies:
        if item == "Opt":
            out.append(("Opt", Strategy.load(RunFolder(config.model_dir).best_strategy_path())))
        elif item in FIXED_STRATEGIES:
            out.append((item, Strategy.uniform(item, backbone)))
        else:
            out.append((os.path.splitext(os.path.basename(item))[0], Strategy.load(item)))
    names = [n for n, _ in out]
    if len(set(names)) != len(names) or "Opt" not in names:
        raise ValueError(f"--strategies needs Opt and distinct names, got {names}")
    for name, strategy in out:
        if strategy.backbone != backbone:
            raise ValueError(f"strategy {name} is for backbone {strategy.backbone!r}, the run trained {backbone!r}")
    return out


def retrain_config(run, strategy, model_dir, epochs=0, progress=True):
    """A fixed-strategy ``TrainConfig`` with ``run``'s recipe (see the module docstring)."""
    total = epochs or run.warmup_epochs + run.epochs
    steps = tuple(run.warmup_lr_steps) + tuple(run.warmup_epochs + s for s in run.lr_steps)
    steps = tuple(s for s in steps if s < total) if epochs else steps
    return dataclasses.replace(
        run, model_dir=model_dir, phases=("fixed",), strategy=strategy, init_from=None, epochs=total,
        lr_steps=steps, warmup_lr_steps=(), progress=progress,
        data=dataclasses.replace(run.data, select_split="val"),
    )


def run_compare(config: CompareConfig, log=print):
    """Trains (or resumes) every network, then writes the comparison; returns it."""
    from tf_stfusion import distribute
    from tf_stfusion.accounting import cost
    from tf_stfusion.fileio import atomic_write_json, atomic_write_text
    from tf_stfusion.report import comparison_table
    from tf_stfusion.selection import CI_METHOD, PAIRED_METHOD, paired_difference, unpack_bits
    from tf_stfusion.run.folder import RunFolder
    from tf_stfusion.trainer import Trainer

    run = RunFolder(config.model_dir).config()
    if run.strategy is not None:
        raise ValueError(f"{config.model_dir} is a fixed-strategy run; compare takes a template run with a search")
    strategies = resolve_strategies(config, run.backbone)
    out_dir = RunFolder(config.model_dir).compare_dir
    distribution = distribute.make_distribution(config.distribution)
    table, correct = {}, {}
    for name, strategy in strategies:
        sub = os.path.join(out_dir, name)
        log(f"compare: {name} ({strategy.counts()}) from scratch -> {sub}")
        trainer = Trainer(retrain_config(run, strategy, sub, config.epochs, config.progress), distribution)
        trainer.run()
        metrics = trainer.folder.metrics()  # as written: the per-video bits as stored
        data = trainer.config.data
        c = cost(run.backbone, strategy, input_shape=(data.num_frames, data.eval_size, data.eval_size, 3),
                 num_classes=trainer.context.inputs.num_classes)
        table[name] = {k: metrics[k] for k in ("top1", "top1_ci", "top5", "top5_ci", "num_videos", "split")}
        table[name].update(params=c.params, gflops=c.gflops, units=strategy.units, model_dir=sub,
                           videos=metrics["per_video"]["videos"])
        correct[name] = unpack_bits(metrics["per_video"]["top1"], metrics["num_videos"])
    if len({row["videos"] for row in table.values()}) != 1:
        raise ValueError("the compared networks were evaluated on different videos; cannot pair them")
    paired = {name: paired_difference(correct["Opt"], correct[name]).to_dict() for name in table if name != "Opt"}
    comparison = {"report_split": table["Opt"]["split"], "strategies": table, "paired_vs_opt": paired,
                  "trained": "from scratch as pruned networks, on every training video, with the run's recipe",
                  "ci_method": CI_METHOD, "paired_method": PAIRED_METHOD}
    atomic_write_json(os.path.join(out_dir, "comparison.json"), comparison)
    lines = ["# Opt vs the fixed strategies, each trained from scratch", "",
             f"Each network is its strategy's pruned network, trained from scratch on every training video "
             "with the run's recipe "
             f"({trainer.config.epochs} epochs), evaluated on `{comparison['report_split']}` "
             f"({table['Opt']['num_videos']} videos, {run.data.eval_clips} clip(s) per video).", ""]
    lines += comparison_table(comparison)
    lines += ["", f"Top-1 intervals: {CI_METHOD}. Differences: {PAIRED_METHOD}; a strategy is called better only "
              "when that interval excludes 0.", ""]
    atomic_write_text(os.path.join(out_dir, "table.md"), "\n".join(lines))
    log("\n".join(lines))
    return comparison


def define_flags():
    flags.DEFINE_string("model_dir", None, "A template run with a finished strategy search.")
    flags.DEFINE_list("strategies", ["Opt", *FIXED_STRATEGIES],
                      "What to train: Opt (the search's best.json), S, ST, S+ST or strategy files.")
    flags.DEFINE_integer("epochs", 0, "Epochs per network (0: the run's warm-up + search epochs).")
    flags.DEFINE_enum("distribution", "one_device", ["one_device", "mirrored", "auto"], "tf.distribute strategy.")
    flags.DEFINE_bool("progress", True, "Progress bars.")


def main(argv):
    del argv  # run_app refuses positional arguments
    if not FLAGS.model_dir:
        print("error: --model_dir is required", file=sys.stderr)
        return 2
    config = CompareConfig(model_dir=FLAGS.model_dir, strategies=tuple(FLAGS.strategies), epochs=FLAGS.epochs,
                           distribution=FLAGS.distribution, progress=FLAGS.progress)
    try:
        run_compare(config)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def run():
    """Console-script entry point (``stfusion-compare``)."""
    from tf_stfusion.configs import run_app

    run_app(main, define_flags)


if __name__ == "__main__":
    run()
