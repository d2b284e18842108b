"""``python -m tf_stfusion.search --model_dir=RUN``: evaluate fusion strategies
without retraining, pick the best, and read the layer-level preference (SPEC §4).

From the search-phase checkpoint of RUN:

1. sample ``--num_samples`` strategies from the learned drop probabilities
   (per gate ``drop ~ Bernoulli(p)``), plus the fixed strategies S, ST, S+ST;
2. evaluate each on the validation split with the template's weights in fixed
   mode (multi-clip, top-1 / top-5). One compiled function serves every
   strategy: a validation batch is tiled ``K`` times and each tile carries its
   own gate masks (``apply_strategies``), so clips are decoded once per pass
   for ``K`` strategies and switching strategies only assigns variables;
3. write ``RUN/search/``: ``strategies.jsonl`` (one line per strategy, appended
   as results come, so an interrupted search resumes with the rest),
   ``best.json`` (the best sampled strategy, "Opt"; with ``--max_gflops`` the
   best within that budget), ``marginals.json``, ``fusion.png`` (the paper's
   Fig. 4), ``pareto.png`` and ``report.md``.
"""

import dataclasses
import json
import os
import sys
import time

from absl import app, flags, logging

FLAGS = flags.FLAGS
PLAN = "plan.json"
RESULTS = "strategies.jsonl"
COMPARISON = "comparison.json"


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    model_dir: str
    num_samples: int = 100
    seed: int = 0
    clips: int = 0  # clips per video; 0: the run's --eval_clips
    tiles: int = 8  # strategies evaluated together on one tiled batch
    batch_size: int = 0  # videos per batch; 0: the run's eval batch
    max_gflops: float = 0.0  # 0: no budget
    checkpoint: str = ""  # default: the search phase's final checkpoint
    select_split: str = ""  # "holdout" or "val"; "": the run's
    progress: bool = True


@dataclasses.dataclass
class SearchResult:
    rows: list  # every planned strategy's line of strategies.jsonl, in plan order
    best: dict
    evaluated: int  # strategies evaluated by this call (not resumed, not duplicates)
    traces: int  # traces of the evaluation function
    seconds: float
    out_dir: str
    comparison: dict  # Opt vs S / ST / S+ST on the report split (comparison.json)


# -- evaluation of many strategies with one compiled function -------------------
class TiledEvaluator:
    """Per-video outcomes of ``K`` strategies at once on a tiled batch.

    ``step(clips [B*V, ...], labels [B], position [B])`` returns ``[K, B, 3]``
    outcomes (``evaluation.video_outcomes``: top-1 hit, top-5 hit, NLL) and the
    videos' positions. Traced once: the batch dimension is left open and the
    strategies live in the gates' mask variables.
    """

    def __init__(self, model, num_views, tiles):
        import tensorflow as tf

        from tf_stfusion.evaluation import video_outcomes, video_scores

        self.model, self.num_views, self.tiles = model, num_views, tiles
        self.traces = 0
        spec = model.inputs[0].shape

        @tf.function(input_signature=[tf.TensorSpec([None, *spec[1:]], tf.float32),
                                      tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int64)])
        def step(clips, labels, position):
            self.traces += 1
            tiled = tf.tile(clips, [tiles] + [1] * (len(spec) - 1))  # tile k = rows k*B*V:(k+1)*B*V
            # [K*B, V, ...]: the views of a video stay together (the pipeline puts them next to each other).
            videos = tf.reshape(tiled, tf.concat([[-1, num_views], tf.shape(clips)[1:]], 0))
            probs = tf.reshape(video_scores(model, videos), [tiles, -1, model.outputs[0].shape[-1]])
            return tf.stack([video_outcomes(probs[k], labels) for k in range(tiles)]), position  # [K, B, 3]

        self.step = step

    def evaluate(self, strategies, dataset, num_videos):
        """``VideoResults`` of up to ``tiles`` strategies over one pass of ``dataset``."""
        import numpy as np

        from tf_stfusion.evaluation import VideoResults
        from tf_stfusion.strategy import apply_strategies

        if not 1 <= len(strategies) <= self.tiles:
            raise ValueError(f"evaluate takes 1 to {self.tiles} strategies, got {len(strategies)}")
        # Pad with the last strategy: the tile count, hence the graph, never changes.
        padded = list(strategies) + [strategies[-1]] * (self.tiles - len(strategies))
        apply_strategies(self.model, padded)
        outcomes, positions = [], []
        for clips, labels, position in dataset:
            out, pos = self.step(clips, labels, position)
            outcomes.append(out.numpy())
            positions.append(pos.numpy())
        outcomes, positions = np.concatenate(outcomes, axis=1), np.concatenate(positions)
        return [VideoResults.from_outcomes(outcomes[k], positions, num_videos) for k in range(len(strategies))]


# -- the search --------------------------------------------------------------------
def _key(strategy):
    return "|".join(strategy.units)


def plan_strategies(model, config):
    """The fixed strategies, then ``num_samples`` sampled ones, with ids."""
    from tf_stfusion.strategy import fixed_strategies, sample_strategies

    planned = [(f"fixed-{unit}", "fixed", s) for unit, s in fixed_strategies(model).items()]
    sampled = sample_strategies(model, config.num_samples, seed=config.seed)
    planned += [(f"sample-{i:04d}", "sampled", s) for i, s in enumerate(sampled)]
    return planned


def read_results(path):
    """Finished lines of ``strategies.jsonl`` by id (a torn last line is dropped)."""
    done = {}
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the line being written when the run was killed
                done[row["id"]] = row
    return done


def pareto_front(rows):
    """Rows not beaten by another at less or equal cost: sorted by GFLOPs."""
    front, best = [], -1.0
    for row in sorted(rows, key=lambda r: (r["gflops"], -r["top1"])):
        if row["top1"] > best:
            front.append(row)
            best = row["top1"]
    return front


def pick_best(rows, max_gflops=0.0):
    """The best sampled strategy (top-1, then top-5, then fewer GFLOPs)."""
    pool = [r for r in rows if r["kind"] == "sampled" and (not max_gflops or r["gflops"] <= max_gflops)]
    if not pool:
        raise ValueError(f"no sampled strategy costs <= {max_gflops} GFLOPs" if max_gflops
                         else "no sampled strategy was evaluated")
    return max(pool, key=lambda r: (r["top1"], r["top5"], -r["gflops"]))


def result_row(sid, kind, strategy, videos, split, params, gflops):
    """A line of ``strategies.jsonl``: metrics with intervals on ``split`` and the
    per-video top-1 correctness (packed bits, the split's canonical order)."""
    from tf_stfusion.selection import pack_bits

    return {"id": sid, "kind": kind, "units": strategy.units, **videos.metrics(split), "params": params,
            "gflops": round(gflops, 4), "counts": strategy.counts(), "correct": pack_bits(videos.top1)}


def row_correct(row):
    """The per-video top-1 correctness of a result row."""
    from tf_stfusion.selection import unpack_bits

    return unpack_bits(row["correct"], row["num_videos"])


def evaluate_all(evaluator, items, dataset, num_videos, tiles, bar=None):
    """``[(item, VideoResults)]`` of ``items`` (``(id, kind, strategy)``), ``tiles`` per pass."""
    out = []
    for start in range(0, len(items), tiles):
        chunk = items[start:start + tiles]
        out += zip(chunk, evaluator.evaluate([s for _, _, s in chunk], dataset, num_videos))
        if bar:
            bar.update(min(start + tiles, len(items)))
    return out


def compare_on_report_split(trainer, evaluator, best, rows, select_split, tiles, cost_of):
    """Opt and the fixed S / ST / S+ST on the report split, with paired differences.

    When the selection split *is* the report split the search's own rows are
    used (and every output says that the numbers are optimistic).
    """
    from tf_stfusion.selection import SAME_SPLIT_NOTE, fingerprint, paired_difference
    from tf_stfusion.strategy import Strategy

    spec = trainer.model.stf_spec
    report_split = trainer.split_name("val")
    fixed = {r["id"].split("-", 1)[1]: r for r in rows if r["kind"] == "fixed"}
    named = [("Opt", best)] + [(u, fixed[u]) for u in ("S", "ST", "S+ST")]
    if select_split == "val":
        table = dict(named)
    else:
        items = [(row["id"], row["kind"], Strategy.from_units(spec.backbone, row["units"])) for _, row in named]
        videos = trainer.split_videos("val")
        results = evaluate_all(evaluator, items, trainer.eval_dataset_fn("val")(None), len(videos), tiles)
        table = {name: result_row(*item, result, report_split, *cost_of(item[2]))
                 for (name, _), (item, result) in zip(named, results)}
    paired = {name: paired_difference(row_correct(table["Opt"]), row_correct(table[name])).to_dict()
              for name in ("S", "ST", "S+ST")}
    return {"report_split": report_split, "selected_on": trainer.split_name(select_split),
            "same_split": select_split == "val", "note": SAME_SPLIT_NOTE if select_split == "val" else None,
            "videos": fingerprint(trainer.split_videos("val")), "strategies": table, "paired_vs_opt": paired}


def run_search(config: SearchConfig, log=print):
    """Runs (or resumes) the search of ``config``; returns a ``SearchResult``."""
    import keras
    import tensorflow as tf

    from tf_stfusion.accounting import cost
    from tf_stfusion.fileio import atomic_write_json, claim_settings
    from tf_stfusion.selection import SAME_SPLIT_NOTE
    from tf_stfusion.strategy import Strategy, marginals
    from tf_stfusion.trainer import Trainer, find_checkpoint, load_run_config

    run = load_run_config(config.model_dir)
    if run.strategy is not None or "search" not in run.phases:
        raise ValueError(f"{config.model_dir} is not a template run with a search phase (phases "
                         f"{','.join(run.phases)}); train with --phase=warmup,search first")
    select_split = config.select_split or run.data.select_split
    if select_split not in ("holdout", "val"):
        raise ValueError(f"--select_split must be holdout or val, got {select_split!r}")
    if select_split == "holdout" and run.data.select_split != "holdout":
        raise ValueError(f"{config.model_dir} trained on every training video (--select_split=val): it has no "
                         "hold-out to select on; search with --select_split=val, or train a run with a hold-out")
    data = dataclasses.replace(run.data, eval_views=config.clips or run.data.eval_views)
    run = dataclasses.replace(run, data=data, progress=False,
                              eval_batch_size=config.batch_size or run.eval_batch_size)
    checkpoint = config.checkpoint or _search_checkpoint(config.model_dir)
    trainer = Trainer(run, source=None)
    model = trainer.model
    tf.train.Checkpoint(model=model).restore(find_checkpoint(checkpoint)).expect_partial() \
        .assert_existing_objects_matched()

    out_dir = os.path.join(config.model_dir, "search")
    os.makedirs(out_dir, exist_ok=True)
    select_videos = trainer.split_videos(select_split)
    select_name = trainer.split_name(select_split)
    plan = {"checkpoint": os.path.basename(checkpoint), "num_samples": config.num_samples, "seed": config.seed,
            "clips_per_video": data.eval_views, "select_split": select_name, "report_split": trainer.split_name("val")}
    claim_settings(os.path.join(out_dir, PLAN), plan,
                   f"{out_dir} holds a search with other settings ({{keys}} differ); remove that folder or use "
                   "the same settings to resume it")

    planned = plan_strategies(model, config)
    results_path = os.path.join(out_dir, RESULTS)
    done = read_results(results_path)
    by_key = {}  # units -> metrics: a strategy drawn twice is evaluated once
    for row in done.values():
        by_key.setdefault("|".join(row["units"]), row)
    todo = [(i, k, s) for i, k, s in planned if i not in done]
    unique = []
    for item in todo:
        if _key(item[2]) not in by_key and _key(item[2]) not in {_key(u[2]) for u in unique}:
            unique.append(item)
    log(f"search: {len(planned)} strategies ({len(planned) - 3} sampled, 3 fixed); {len(done)} already "
        f"evaluated; {len(unique)} to evaluate, {config.tiles} per pass over the {len(select_videos)} videos of the "
        f"selection split ({select_name}) x {data.eval_views} clip(s)")
    if select_split == "val":
        log(f"search: {SAME_SPLIT_NOTE}: the best of {config.num_samples} is chosen on the split it is reported on")

    spec = model.stf_spec
    shape = (data.num_frames, data.eval_input_size, data.eval_input_size, 3)
    costs = {}

    def cost_of(strategy):
        key = _key(strategy)
        if key not in costs:
            c = cost(spec.backbone, strategy, input_shape=shape, num_classes=spec.num_classes)
            costs[key] = (c.params, c.gflops)
        return costs[key]

    dataset = trainer.eval_dataset_fn(select_split)(None)
    evaluator = TiledEvaluator(model, data.eval_views, config.tiles)
    bar = keras.utils.Progbar(len(unique), unit_name="strategy") if config.progress else None
    t0 = time.time()
    with open(results_path, "a") as f:
        for start in range(0, len(unique), config.tiles):
            chunk = unique[start:start + config.tiles]
            for (sid, kind, strategy), videos in evaluate_all(evaluator, chunk, dataset, len(select_videos),
                                                              config.tiles):
                row = result_row(sid, kind, strategy, videos, select_name, *cost_of(strategy))
                f.write(json.dumps(row) + "\n")
                f.flush()
                done[sid] = row
                by_key[_key(strategy)] = row
            if bar:
                bar.update(min(start + config.tiles, len(unique)))
    # Strategies drawn twice share the first one's numbers.
    with open(results_path, "a") as f:
        for sid, kind, strategy in todo:
            if sid not in done:
                row = dict(by_key[_key(strategy)], id=sid, kind=kind)
                f.write(json.dumps(row) + "\n")
                done[sid] = row
    rows = [done[sid] for sid, _, _ in planned]

    best = pick_best(rows, config.max_gflops)
    comparison = compare_on_report_split(trainer, evaluator, best, rows, select_split, config.tiles, cost_of)
    comparison["prior"] = trainer.prior_diagnostics()
    comparison["chance_warning"] = chance_warning(comparison, best, spec.num_classes, comparison["prior"])
    seconds = time.time() - t0
    atomic_write_json(os.path.join(out_dir, COMPARISON), comparison)
    reported = comparison["strategies"]["Opt"]
    metric_keys = ("top1", "top1_ci", "top5", "top5_ci", "num_videos", "split")
    best_strategy = Strategy.from_units(
        spec.backbone, best["units"],
        metrics={**{k: reported[k] for k in metric_keys}, "selected_on": select_name,
                 "selection": {k: best[k] for k in metric_keys},
                 **({"note": SAME_SPLIT_NOTE} if select_split == "val" else {}),
                 "ci_method": reported["ci_method"], "params": best["params"], "gflops": best["gflops"]},
        provenance={"kind": "search", "id": best["id"], "model_dir": os.path.abspath(config.model_dir),
                    "checkpoint": os.path.basename(checkpoint), "seed": config.seed,
                    "num_samples": config.num_samples, "clips_per_video": data.eval_views,
                    **({"max_gflops": config.max_gflops} if config.max_gflops else {})},
    )
    best_strategy.save(os.path.join(out_dir, "best.json"))
    probs = marginals(model)
    atomic_write_json(os.path.join(out_dir, "marginals.json"), probs)

    from tf_stfusion import report

    report.fusion_plot(probs, best["units"], os.path.join(out_dir, "fusion.png"))
    report.pareto_plot(rows, pareto_front(rows), best, os.path.join(out_dir, "pareto.png"))
    report.write_report(os.path.join(out_dir, "report.md"), rows, best, probs, plan, comparison, config.max_gflops)
    log(f"search: evaluated {len(unique)} strategies in {seconds:.1f}s ({evaluator.traces} trace(s)); "
        f"best {best['id']} chosen on {select_name} (top-1 {100 * best['top1']:.2f}%), "
        f"on {reported['split']}: {100 * reported['top1']:.2f}% [{100 * reported['top1_ci'][0]:.1f}, "
        f"{100 * reported['top1_ci'][1]:.1f}], {best['gflops']:.3f} GFLOPs -> {out_dir}/best.json")
    if comparison["prior"]["warning"] or comparison["chance_warning"]:
        log(f"search: warning: {comparison['chance_warning'] or comparison['prior']['warning']}")
    return SearchResult(rows, best, len(unique), evaluator.traces, seconds, out_dir, comparison)


def chance_warning(comparison, best, num_classes, prior):
    """A warning when the fixed strategies S / ST / S+ST are indistinguishable from
    chance on the report split while sampled strategies are clearly above it: the
    search phase trained the template with most paths dropped (usually the
    length-scale prior), so turning every path on breaks it."""
    chance = 1.0 / num_classes
    fixed = [comparison["strategies"][u] for u in ("S", "ST", "S+ST")]
    if not all(r["top1_ci"][0] <= chance for r in fixed) or best["top1_ci"][0] <= chance:
        return None
    return (f"the fixed strategies S / ST / S+ST score near chance ({100 * chance:.1f}% for {num_classes} classes) on "
            f"{comparison['report_split']} while the best sampled strategy is clearly above it: the search phase "
            f"trained the template with most paths dropped ({prior['summary']}). The length-scale prior is probably "
            f"too strong: lower --length_scale (k = {prior['length_scale']:g}, k^2/(2N) = {prior['k2_over_2n']:.3g}) "
            "and see the README's 'Choosing k'.")


def _search_checkpoint(model_dir):
    path = os.path.join(model_dir, "search", "done.json")
    if not os.path.isfile(path):
        raise ValueError(f"{model_dir} has no finished search phase ({path} missing); finish training first "
                         "or give --checkpoint")
    with open(path) as f:
        return os.path.join(model_dir, "search", json.load(f)["checkpoint"])


# -- CLI ---------------------------------------------------------------------------
def define_flags():
    flags.DEFINE_string("model_dir", None, "A training run with a finished search phase.")
    flags.DEFINE_integer("num_samples", 100, "Strategies sampled from the learned probabilities.")
    flags.DEFINE_integer("seed", 0, "Sampling seed.")
    flags.DEFINE_integer("clips", 0, "Clips per validation video (0: the run's --eval_clips).")
    flags.DEFINE_integer("tiles", 8, "Strategies evaluated together on one tiled batch (1-32).")
    flags.DEFINE_integer("batch_size", 0, "Validation videos per batch (0: the run's evaluation batch).")
    flags.DEFINE_float("max_gflops", 0.0, "best.json: the best strategy within this compute budget (0: none).")
    flags.DEFINE_string("checkpoint", None, "Template checkpoint (default: the run's final search checkpoint).")
    flags.DEFINE_enum("select_split", None, ["holdout", "val"], "Split the best strategy is chosen on (default: the "
                      "run's --select_split). val: the paper's protocol, selected and reported on the same split "
                      "(optimistic).")
    flags.DEFINE_bool("progress", True, "Progress bar.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    if not FLAGS.model_dir:
        print("error: --model_dir is required", file=sys.stderr)
        return 2
    if FLAGS.num_samples < 1 or not 1 <= FLAGS.tiles <= 32 or FLAGS.max_gflops < 0:
        print("error: need --num_samples >= 1, 1 <= --tiles <= 32, --max_gflops >= 0", file=sys.stderr)
        return 2
    config = SearchConfig(
        model_dir=FLAGS.model_dir, num_samples=FLAGS.num_samples, seed=FLAGS.seed, clips=FLAGS.clips,
        tiles=FLAGS.tiles, batch_size=FLAGS.batch_size, max_gflops=FLAGS.max_gflops,
        checkpoint=FLAGS.checkpoint or "", select_split=FLAGS.select_split or "", progress=FLAGS.progress,
    )
    try:
        run_search(config)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def run():
    """Console-script entry point (``stfusion-search``)."""
    define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
