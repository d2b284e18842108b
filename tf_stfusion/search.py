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

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS
PLAN = "plan.json"
RESULTS = "strategies.jsonl"


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
    progress: bool = True


@dataclasses.dataclass
class SearchResult:
    rows: list  # every planned strategy's line of strategies.jsonl, in plan order
    best: dict
    evaluated: int  # strategies evaluated by this call (not resumed, not duplicates)
    traces: int  # traces of the evaluation function
    seconds: float
    out_dir: str


# -- evaluation of many strategies with one compiled function -------------------
class TiledEvaluator:
    """Top-1 / top-5 hits of ``K`` strategies at once on a tiled batch.

    ``step(clips [B*V, ...], labels [B])`` returns ``[K, 4]`` sums per tile
    (``evaluation.score_sums``: top-1 hits, top-5 hits, NLL, videos). Traced
    once: the batch dimension is left open and the strategies live in the
    gates' mask variables.
    """

    def __init__(self, model, num_views, tiles):
        import tensorflow as tf

        from tf_stfusion.evaluation import score_sums, video_scores

        self.model, self.num_views, self.tiles = model, num_views, tiles
        self.traces = 0
        spec = model.inputs[0].shape

        @tf.function(input_signature=[tf.TensorSpec([None, *spec[1:]], tf.float32),
                                      tf.TensorSpec([None], tf.int32)])
        def step(clips, labels):
            self.traces += 1
            tiled = tf.tile(clips, [tiles] + [1] * (len(spec) - 1))  # tile k = rows k*B*V:(k+1)*B*V
            # [K*B, V, ...]: the views of a video stay together (the pipeline puts them next to each other).
            videos = tf.reshape(tiled, tf.concat([[-1, num_views], tf.shape(clips)[1:]], 0))
            probs = tf.reshape(video_scores(model, videos), [tiles, -1, model.outputs[0].shape[-1]])
            return tf.stack([score_sums(probs[k], labels) for k in range(tiles)])  # [K, 4]

        self.step = step

    def evaluate(self, strategies, dataset):
        """Metrics of up to ``tiles`` strategies over one pass of ``dataset``."""
        import numpy as np

        from tf_stfusion.evaluation import summarize
        from tf_stfusion.strategy import apply_strategies

        if not 1 <= len(strategies) <= self.tiles:
            raise ValueError(f"evaluate takes 1 to {self.tiles} strategies, got {len(strategies)}")
        # Pad with the last strategy: the tile count, hence the graph, never changes.
        padded = list(strategies) + [strategies[-1]] * (self.tiles - len(strategies))
        apply_strategies(self.model, padded)
        sums = np.zeros((self.tiles, 4))
        for clips, labels in dataset:
            sums += self.step(clips, labels).numpy()
        return [summarize(row) for row in sums[: len(strategies)]]


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


def run_search(config: SearchConfig, log=print):
    """Runs (or resumes) the search of ``config``; returns a ``SearchResult``."""
    import keras
    import tensorflow as tf

    from tf_stfusion.accounting import cost
    from tf_stfusion.fileio import atomic_write_json, claim_settings
    from tf_stfusion.strategy import Strategy, marginals
    from tf_stfusion.trainer import Trainer, find_checkpoint, load_run_config

    run = load_run_config(config.model_dir)
    if run.strategy is not None or "search" not in run.phases:
        raise ValueError(f"{config.model_dir} is not a template run with a search phase (phases "
                         f"{','.join(run.phases)}); train with --phase=warmup,search first")
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
    plan = {"checkpoint": os.path.basename(checkpoint), "num_samples": config.num_samples, "seed": config.seed,
            "clips_per_video": data.eval_views, "val_split": data.val_split}
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
        f"evaluated; {len(unique)} to evaluate, {config.tiles} per pass over {trainer.source.num_val} videos "
        f"x {data.eval_views} clip(s)")

    spec = model.stf_spec
    shape = (data.num_frames, data.eval_input_size, data.eval_input_size, 3)
    costs = {}

    def cost_of(strategy):
        key = _key(strategy)
        if key not in costs:
            c = cost(spec.backbone, strategy, input_shape=shape, num_classes=spec.num_classes)
            costs[key] = (c.params, c.gflops)
        return costs[key]

    dataset = trainer.eval_dataset_fn()(None)
    evaluator = TiledEvaluator(model, data.eval_views, config.tiles)
    bar = keras.utils.Progbar(len(unique), unit_name="strategy") if config.progress else None
    t0 = time.time()
    with open(results_path, "a") as f:
        for start in range(0, len(unique), config.tiles):
            chunk = unique[start:start + config.tiles]
            metrics = evaluator.evaluate([s for _, _, s in chunk], dataset)
            for (sid, kind, strategy), m in zip(chunk, metrics):
                params, gflops = cost_of(strategy)
                row = {"id": sid, "kind": kind, "units": strategy.units, **m, "params": params,
                       "gflops": round(gflops, 4), "counts": strategy.counts()}
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
    seconds = time.time() - t0
    rows = [done[sid] for sid, _, _ in planned]

    best = pick_best(rows, config.max_gflops)
    best_strategy = Strategy.from_units(
        spec.backbone, best["units"],
        metrics={"top1": best["top1"], "top5": best["top5"], "params": best["params"], "gflops": best["gflops"]},
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
    report.write_report(os.path.join(out_dir, "report.md"), rows, best, probs, plan, config.max_gflops)
    log(f"search: evaluated {len(unique)} strategies in {seconds:.1f}s ({evaluator.traces} trace(s)); "
        f"best {best['id']}: top-1 {best['top1']:.4f}, {best['gflops']:.3f} GFLOPs -> {out_dir}/best.json")
    return SearchResult(rows, best, len(unique), evaluator.traces, seconds, out_dir)


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
        checkpoint=FLAGS.checkpoint or "", progress=FLAGS.progress,
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
