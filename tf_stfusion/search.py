"""``python -m tf_stfusion.search --model_dir=RUN``: evaluate fusion strategies
without retraining, pick the best, and read the layer-level preference (SPEC §4).

From the search-phase checkpoint of RUN:

1. sample ``--num_samples`` strategies from the learned drop probabilities
   (per gate ``drop ~ Bernoulli(p)``), plus the fixed strategies S, ST, S+ST;
2. score them on the *selection* split (the run's hold-out of training videos,
   or ``val`` with ``--select_split=val``) with the template's weights in fixed
   mode. One compiled function serves every strategy (``evaluation.Evaluator``,
   as in training's evaluation and the export's checks): a batch is tiled ``K``
   times and each tile carries its own gate masks (``apply_strategies``), so
   clips are decoded once per pass for ``K`` strategies;
3. **racing** (``selection.eliminate``, successive halving with paired
   elimination): all strategies are scored on a first slice of the selection
   videos; those whose paired 95% upper bound lies below the leader are dropped,
   the best ``1/eta`` of the rest go on to a slice ``eta`` times larger, until
   the survivors have seen the whole split. ``--racing=off`` scores every
   strategy on every video (the fixed strategies always are); with
   ``--score_precision=int8`` the ``--int8_finalists`` best strategies are
   converted to int8 LiteRT and scored again on the selection split, and Opt is
   the best of them in int8 (``finalists.py``; ``finalists.json``);
4. report Opt (the best sampled strategy) and S / ST / S+ST on the *report*
   split (val) with intervals and paired differences;
5. write ``RUN/strategies/`` (``--output_dir``): ``rounds.jsonl`` (the journal:
   one line per strategy and round, appended as results come, so an interrupted
   search resumes with the rest), ``strategies.jsonl`` (one row per strategy),
   ``best.json``, ``comparison.json``, ``marginals.json``, ``fusion.png``
   (the paper's Fig. 4), ``pareto.png`` and ``report.md``;
6. the posterior predictive (``--ensemble_sizes``): the mean scores of the first
   ``M`` sampled strategies (draws from the learned gates), for each ``M``,
   scored on val beside Opt and S / ST / S+ST, in the same pass over val as
   step 4 (top-1, NLL, ECE with intervals, paired difference to Opt), one
   temperature per model fitted by NLL on the
   hold-out, risk-coverage curves and an abstention threshold for
   ``--target_accuracy`` chosen on the hold-out (``calibration.py``): written to
   ``calibration.json`` (with the members, which ``stfusion-export --ensemble=M``
   reads), ``calibration.png`` and ``risk_coverage.png``.

Under ``--distribution`` (and ``TF_CONFIG``) the search runs on every device
and worker, like training: batches are split over replicas, each worker reads
its own file shards (padded with empty batches so all take the same number of
steps), per-video outcomes are gathered, every worker takes the same racing
decisions, and only the chief writes.
"""

import dataclasses
import json
import os
import sys
import time

from absl import flags

from tf_stfusion.fileio import append_jsonl, read_jsonl
from tf_stfusion.run.folder import BEST_STRATEGY
from tf_stfusion.units import FIXED_STRATEGIES

FLAGS = flags.FLAGS
PLAN = "plan.json"
RENAMED_PLAN_KEYS = {"clips_per_video": "eval_clips"}  # plan.json keys of earlier versions
ROUNDS = "rounds.jsonl"
RESULTS = "strategies.jsonl"
COMPARISON = "comparison.json"
CALIBRATION = "calibration.json"
RACING = ("auto", "on", "off")
PASS_GROUPS = 4  # groups of K strategies scored per pass over the data (and per journal write)


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    model_dir: str
    num_samples: int = 100
    seed: int = 0
    eval_clips: int = 0  # views (clips) per video; 0: the run's --eval_clips
    tiles: int = 8  # strategies evaluated together on one tiled batch
    batch_size: int = 0  # videos per batch; 0: the run's eval batch
    max_gflops: float = 0.0  # 0: no budget
    max_latency_ms: float = 0.0  # 0: no budget; else predicted by latency_table
    latency_table: str = ""  # a table of tf_stfusion.latency (python -m tf_stfusion.latency_table)
    checkpoint: str = ""  # default: the search phase's final checkpoint
    select_split: str = ""  # "holdout" or "val"; "": the run's
    racing: str = "auto"  # auto: on when there are more strategies than one tile holds
    racing_eta: int = 3
    racing_min_videos: int = 10  # the first slice is never smaller
    output_dir: str = ""  # default: RUN/strategies
    progress: bool = True
    verify_data: bool = False  # check the shards' CRC32C too, not only their sizes
    skip_corrupt_records: bool = False
    ensemble_sizes: tuple = (1, 2, 4, 8, 16)  # posterior-averaged ensembles reported (); (): none
    target_accuracy: float = 0.9  # the abstention threshold's target, chosen on the hold-out
    ensemble_from: str = "samples"  # samples: draws from the gates; survivors: those racing kept to the end
    score_precision: str = "float32"  # int8: the finalists converted to int8 LiteRT, the pick by their int8 top-1
    int8_finalists: int = 5  # finalists: the best distinct sampled strategies by the float ranking
    calibration_clips: int = 100  # int8 calibration clips (as stfusion-export's), of videos trained on

    def folder(self):
        from tf_stfusion.run.folder import RunFolder

        return self.output_dir or RunFolder(self.model_dir).strategies_dir


@dataclasses.dataclass
class SearchResult:
    rows: list  # every planned strategy's row of strategies.jsonl, in plan order
    best: dict
    evaluated: int  # (strategy, round) evaluations run by this call (not resumed, not duplicates)
    traces: int  # traces of the evaluation function
    seconds: float
    out_dir: str
    comparison: dict  # Opt vs S / ST / S+ST on the report split (comparison.json)
    strategy_videos: int  # (strategy, video) pairs scored on the selection split, this call and before
    exhaustive_videos: int  # what scoring every unique strategy on every video would take
    posterior: dict = None  # the posterior-averaged evaluation (calibration.json); None without ensembles
    finalists: dict = None  # the int8 finalists (finalists.json); None with --score_precision=float32




# -- the plan and its results --------------------------------------------------------
def unit_key(strategy):
    return "|".join(strategy.units)


def plan_strategies(model, config):
    """The fixed strategies, then ``num_samples`` sampled ones, with ids."""
    from tf_stfusion.strategy import fixed_strategies, sample_strategies

    planned = [(f"fixed-{unit}", "fixed", s) for unit, s in fixed_strategies(model).items()]
    sampled = sample_strategies(model, config.num_samples, seed=config.seed)
    planned += [(f"sample-{i:04d}", "sampled", s) for i, s in enumerate(sampled)]
    return planned


def read_results(path):
    """Rows of ``strategies.jsonl`` by id."""
    return {row["id"]: row for row in read_jsonl(path)}


def fully_scored(rows):
    """The rows scored on the whole selection split (racing stops the others on a
    prefix of it: their top-1 rests on fewer videos and is not comparable)."""
    full = max((r["num_videos"] for r in rows), default=0)
    return [r for r in rows if r["num_videos"] == full]


def pareto_front(rows, cost="gflops"):
    """Rows scored on the whole split not beaten by another at less or equal
    ``cost`` (``gflops``, or the predicted ``latency_ms``): sorted by it."""
    front, best = [], -1.0
    for row in sorted(fully_scored(rows), key=lambda r: (r[cost], -r["top1"])):
        if row["top1"] > best:
            front.append(row)
            best = row["top1"]
    return front


def over_budget(gflops, latency_ms, max_gflops=0.0, max_latency_ms=0.0):
    """Why a strategy of ``gflops`` and predicted ``latency_ms`` is over the budgets
    (0: none), or None when it is within them."""
    if max_gflops and gflops > max_gflops:
        return f"over the {max_gflops} GFLOPs budget"
    if max_latency_ms and latency_ms > max_latency_ms:
        return f"over the {max_latency_ms} ms latency budget ({latency_ms:.2f} ms predicted)"
    return None


def ranked(rows, max_gflops=0.0, max_latency_ms=0.0):
    """The sampled strategies scored on the whole selection split, within
    ``max_gflops`` and ``max_latency_ms`` (the rows' predicted ``latency_ms``) if
    given, best first: top-1, then top-5, then fewer GFLOPs (a stable sort: equal
    rows keep plan order)."""
    pool = [r for r in fully_scored(rows) if r["kind"] == "sampled"
            and not over_budget(r["gflops"], r.get("latency_ms", 0.0), max_gflops, max_latency_ms)]
    if not pool:
        budgets = " and ".join([f"costs <= {max_gflops} GFLOPs"] * bool(max_gflops)
                               + [f"is predicted to take <= {max_latency_ms} ms"] * bool(max_latency_ms))
        raise ValueError(f"no sampled strategy {budgets}" if budgets else "no sampled strategy was evaluated")
    return sorted(pool, key=lambda r: (-r["top1"], -r["top5"], r["gflops"]))


def pick_best(rows, max_gflops=0.0, max_latency_ms=0.0):
    """The best of ``ranked(rows, max_gflops, max_latency_ms)``."""
    return ranked(rows, max_gflops, max_latency_ms)[0]


def result_row(sid, kind, strategy, videos, split, params, gflops):
    """A row: metrics with intervals on ``split`` and the per-video top-1
    correctness (packed bits, in the split's selection order)."""
    from tf_stfusion.selection import pack_bits

    return {"id": sid, "kind": kind, "units": strategy.units, **videos.metrics(split), "params": params,
            "gflops": round(gflops, 4), "counts": strategy.counts(), "correct": pack_bits(videos.top1)}


def row_correct(row):
    """The per-video top-1 correctness of a row."""
    from tf_stfusion.selection import unpack_bits

    return unpack_bits(row["correct"], row["num_videos"])


# -- racing ------------------------------------------------------------------------
class Journal:
    """``rounds.jsonl``: per unique strategy (its units) and round, the packed
    top-1 / top-5 bits and NLL sum of the round's new videos. Appended as results
    come; a resumed search re-reads it and evaluates only what is missing."""

    def __init__(self, path, chief):
        self.path, self.chief = path, chief
        self.entries = {(row["key"], row["round"]): row for row in read_jsonl(path)}

    def has(self, key, round_):
        return (key, round_) in self.entries

    def add(self, key, round_, start, end, videos):
        from tf_stfusion.selection import pack_bits

        row = {"key": key, "round": round_, "start": start, "end": end, "top1": pack_bits(videos.top1),
               "top5": pack_bits(videos.top5), "nll": float(videos.nll.sum())}
        self.entries[(key, round_)] = row
        if self.chief:
            append_jsonl(self.path, row)

    def videos(self, key, rounds):
        """``VideoResults`` of ``key`` over ``rounds`` (consecutive from 0), concatenated."""
        import numpy as np

        from tf_stfusion.evaluation import VideoResults
        from tf_stfusion.selection import unpack_bits

        parts = [self.entries[(key, r)] for r in range(rounds)]
        top1 = np.concatenate([unpack_bits(p["top1"], p["end"] - p["start"]) for p in parts])
        top5 = np.concatenate([unpack_bits(p["top5"], p["end"] - p["start"]) for p in parts])
        nll = np.full(top1.size, sum(p["nll"] for p in parts) / max(top1.size, 1))  # only the mean is kept
        return VideoResults(top1, top5, nll)


def race(planned, slices, journal, evaluate, gflops_of, eta, max_gflops, log=print, max_latency_ms=0.0,
         latency_of=None):
    """Runs the rounds of a race (``slices`` from ``selection.racing_slices``).

    ``evaluate(items, round)`` scores ``(key, strategy)`` items on the round's
    videos and records them in ``journal``. Fixed strategies run every round
    (they are reported, not selected); sampled ones race, and those over the
    budgets (``max_gflops``; ``max_latency_ms``, by ``latency_of(strategy)``
    in ms) are dropped after the first round. Returns
    ``({key: rounds seen}, {key: (dropped round, reason)})``.
    """
    from tf_stfusion.selection import Score, eliminate

    unique = {}
    for _, kind, strategy in planned:
        unique.setdefault(unit_key(strategy), (kind, strategy))
    alive = list(unique)
    seen, dropped = {}, {}
    for r, (start, end) in enumerate(slices):
        todo = [(key, unique[key][1]) for key in alive if not journal.has(key, r)]
        if todo:
            log(f"search: round {r + 1}/{len(slices)}: {len(alive)} strategies on selection videos {start}:{end} "
                f"({len(todo)} to score)")
            evaluate(todo, r)
        for key in alive:
            seen[key] = r + 1
        if r == len(slices) - 1:
            break
        fixed = [key for key in alive if unique[key][0] == "fixed"]
        racing = [key for key in alive if unique[key][0] != "fixed"]
        if max_gflops or max_latency_ms:
            reasons = {key: over_budget(gflops_of(unique[key][1]),
                                        latency_of(unique[key][1]) if max_latency_ms else 0.0,
                                        max_gflops, max_latency_ms) for key in racing}
            dropped.update({key: (r, reason) for key, reason in reasons.items() if reason})
            racing = [key for key in racing if not reasons[key]]
        if len(racing) > 1:
            scores = {}
            for key in racing:
                v = journal.videos(key, r + 1)
                scores[key] = Score(v.top1, v.top5, float(v.nll.sum()), gflops_of(unique[key][1]))
            kept, out = eliminate(scores, eta)
            dropped.update({key: (r, reason) for key, reason in out.items()})
            racing = [key for key in racing if key in kept]
        alive = fixed + racing
    return seen, dropped


# -- the report split --------------------------------------------------------------

@dataclasses.dataclass
class SplitScores:
    """One ``Evaluator`` pass of some ``strategies`` over a split: per strategy its
    ``VideoResults`` and video scores ``[S, n, C]``, and the labels ``[n]``."""

    strategies: list
    results: list  # [VideoResults], one per strategy
    probabilities: object  # np.ndarray [S, n, C]
    labels: object  # np.ndarray [n] int64


def split_scores(context, evaluator, split, videos, strategies):
    """``SplitScores`` of ``strategies`` on ``videos`` of ``split`` (in the order of
    ``strategies``), each distinct strategy evaluated once, in one pass."""
    unique = {}
    for strategy in strategies:
        unique.setdefault(unit_key(strategy), strategy)
    keys = list(unique)
    with context.inputs.reading(split):
        scored = evaluator.evaluate(context.inputs.eval_dataset_fn(split, videos=videos), len(videos),
                                    [unique[k] for k in keys])
    index = [keys.index(unit_key(s)) for s in strategies]
    return SplitScores(list(strategies), [scored.results[i] for i in index], scored.probabilities[index],
                       scored.labels)


def fixed_strategies_of(planned):
    """``{unit: Strategy}`` of the plan's fixed strategies S / ST / S+ST."""
    return {sid.split("-", 1)[1]: s for sid, kind, s in planned if kind == "fixed"}


def report_split_scores(context, evaluator, planned, best, members, select_split):
    """The one pass over the report split (val): Opt, S, ST, S+ST, then the largest
    ensemble's ``members`` (``[(id, Strategy)]``). ``None`` when nothing needs it
    (selected on val, where the search's own rows are Opt's and the fixed ones',
    and no ensembles)."""
    from tf_stfusion.strategy import Strategy

    if select_split == "val" and not members:
        return None
    opt = Strategy.from_units(context.model.stf_spec.backbone, best["units"])
    fixed = fixed_strategies_of(planned)
    strategies = [opt] + [fixed[u] for u in FIXED_STRATEGIES] + [s for _, s in members]
    return split_scores(context, evaluator, "val", context.inputs.split_videos("val"), strategies)


def compare_on_report_split(context, best, rows, select_split, cost_of, val_scores):
    """Opt and the fixed S / ST / S+ST on the report split, with paired differences;
    ``val_scores``: their ``SplitScores`` on val first (``report_split_scores``).

    When the selection split *is* the report split the search's own rows are
    used (and every output says that the numbers are optimistic).
    """
    from tf_stfusion.selection import SAME_SPLIT_NOTE, fingerprint, paired_difference
    from tf_stfusion.strategy import Strategy

    spec = context.model.stf_spec
    report_split = context.inputs.split_name("val")
    fixed = {r["id"].split("-", 1)[1]: r for r in rows if r["kind"] == "fixed"}
    named = [("Opt", best)] + [(u, fixed[u]) for u in FIXED_STRATEGIES]
    if select_split == "val":
        table = dict(named)
    else:
        items = [(row["id"], row["kind"], Strategy.from_units(spec.backbone, row["units"])) for _, row in named]
        table = {name: result_row(*item, result, report_split, *cost_of(item[2]))
                 for (name, _), item, result in zip(named, items, val_scores.results)}
    paired = {name: paired_difference(row_correct(table["Opt"]), row_correct(table[name])).to_dict()
              for name in FIXED_STRATEGIES}
    return {"report_split": report_split, "selected_on": context.inputs.split_name(select_split),
            "same_split": select_split == "val", "note": SAME_SPLIT_NOTE if select_split == "val" else None,
            "videos": fingerprint(context.inputs.split_videos("val")), "strategies": table, "paired_vs_opt": paired}


def chance_warning(comparison, best, num_classes, prior):
    """A warning when the fixed strategies S / ST / S+ST are indistinguishable from
    chance on the report split while sampled strategies are clearly above it: the
    search phase trained the template with most paths dropped (usually the
    length-scale prior), so turning every path on breaks it."""
    chance = 1.0 / num_classes
    fixed = [comparison["strategies"][u] for u in FIXED_STRATEGIES]
    if not all(r["top1_ci"][0] <= chance for r in fixed) or best["top1_ci"][0] <= chance:
        return None
    return (f"the fixed strategies S / ST / S+ST score near chance ({100 * chance:.1f}% for {num_classes} classes) on "
            f"{comparison['report_split']} while the best sampled strategy is clearly above it: the search phase "
            f"trained the template with most paths dropped ({prior['summary']}). The length-scale prior is probably "
            f"too strong: lower --length_scale (k = {prior['length_scale']:g}, {prior['formula']} = "
            f"{prior['weight_coefficient']:.3g}) "
            "and see the README's 'Choosing k'.")


# -- the posterior predictive: ensembles of sampled strategies -------------------------
ENSEMBLE_FROM = ("samples", "survivors")


def ensemble_members(planned, size, keep=None):
    """The first ``size`` sampled strategies of the plan, ``[(id, Strategy)]``: i.i.d.
    draws from the learned gates, so their mean prediction is a Monte Carlo estimate
    of the posterior predictive (repeated draws count as often as they were drawn);
    with ``keep`` (a set of ids), only those (racing's survivors)."""
    return [(sid, s) for sid, kind, s in planned if kind == "sampled" and (keep is None or sid in keep)][:size]


def ensemble_plan(planned, rows, config):
    """The ensemble sizes reported (``config.ensemble_sizes`` that enough members
    allow, sorted) and the largest one's members ``[(id, Strategy)]``: the first
    sampled strategies, or with ``config.ensemble_from == "survivors"`` those scored
    on the whole selection split (``rows``). ``([], [])``: no ensembles."""
    if config.ensemble_from not in ENSEMBLE_FROM:
        raise ValueError(f"--ensemble_from must be one of {ENSEMBLE_FROM}, got {config.ensemble_from!r}")
    keep = ({r["id"] for r in fully_scored(rows) if r["kind"] == "sampled"} if config.ensemble_from == "survivors"
            else None)
    available = len(ensemble_members(planned, len(planned), keep))
    sizes = sorted({m for m in config.ensemble_sizes if 1 <= m <= available})
    return sizes, (ensemble_members(planned, max(sizes), keep) if sizes else [])


def posterior_scores(context, evaluator, val_scores, sizes, select_split, select_videos):
    """Scores of Opt, the ensembles of ``sizes`` members and S / ST / S+ST on val
    (``{name: [n, C]}``, from ``val_scores``: ``report_split_scores``), labels, of
    Opt and the ensembles on the split that fits the temperature and threshold (the
    hold-out; val when the run selected on val) and its labels."""
    probs, labels = val_scores.probabilities, val_scores.labels

    def named(opt_probs, member_probs):
        return {"Opt": opt_probs, **{f"ensemble-{m}": member_probs[:m].mean(axis=0) for m in sizes}}

    val = {**named(probs[0], probs[4:]), **dict(zip(FIXED_STRATEGIES, probs[1:4]))}
    if select_split != "holdout":
        return val, labels, named(probs[0], probs[4:]), labels
    opt_and_members = val_scores.strategies[:1] + val_scores.strategies[4:]
    fit = split_scores(context, evaluator, "holdout", select_videos, opt_and_members)
    return val, labels, named(fit.probabilities[0], fit.probabilities[1:]), fit.labels


def selective_summary(val_probs, val_labels, fit_probs, fit_labels, target, member_probs=None):
    """Temperature scaling (fitted on the fit split) and selective prediction of one
    model's scores: ECE / NLL after scaling on val, AURC on val per ranking, the
    abstention threshold on the scaled maximum probability chosen on the fit split
    for ``target`` accuracy, and its coverage and accuracy on val."""
    from tf_stfusion import calibration as cal

    temperature = cal.fit_temperature(fit_probs, fit_labels)
    scaled, fit_scaled = cal.apply_temperature(val_probs, temperature), cal.apply_temperature(fit_probs, temperature)
    confidence, correct = cal.confidence_and_correct(scaled, val_labels)
    rankings = {"max_probability": confidence, "entropy": -cal.entropy(scaled)}
    if member_probs is not None:
        rankings["mutual_information"] = -cal.mutual_information(member_probs)
    fit_confidence, fit_correct = cal.confidence_and_correct(fit_scaled, fit_labels)
    threshold, reachable = cal.choose_threshold(fit_confidence, fit_correct, target)
    return {"temperature": temperature, "scaled": cal.calibration_metrics(scaled, val_labels),
            "aurc": {name: cal.risk_coverage_area(score, correct) for name, score in rankings.items()},
            "curves": {name: cal.risk_coverage(score, correct) for name, score in rankings.items()},
            "threshold": {"on": "max_probability", "target_accuracy": target, "reachable": reachable,
                          "fit": cal.selective_result(fit_confidence, fit_correct, threshold),
                          "val": cal.selective_result(confidence, correct, threshold)}}


def posterior_evaluation(search, planned, best, ensembles, val_scores):
    """The posterior-averaged evaluation (``calibration.json``): per model on val
    top-1, NLL and ECE with intervals, its paired top-1 difference to Opt, cost,
    reliability data; temperature scaling and selective prediction of Opt and the
    ensembles. ``ensembles``: ``ensemble_plan``'s sizes and members; ``val_scores``:
    ``report_split_scores``. ``None`` when there are no ensembles."""
    import numpy as np

    from tf_stfusion import calibration as cal
    from tf_stfusion.selection import (
        CI_METHOD,
        PAIRED_METHOD,
        SAME_SPLIT_NOTE,
        paired_difference,
    )

    (sizes, chosen), config, cost_of = ensembles, search.config, search.cost_of
    if not sizes:
        return None
    val, labels, fit, fit_labels = posterior_scores(search.context, search.evaluator, val_scores, sizes,
                                                    search.select_split, search.select_videos)
    members = val_scores.probabilities[4:]
    fixed = fixed_strategies_of(planned)
    member_costs = np.array([cost_of(s) for _, s in chosen], np.float64)  # [M, (params, GFLOPs)]: M networks run
    opt_correct = cal.confidence_and_correct(val["Opt"], labels)[1]
    rows = {}
    for name, probs in val.items():
        m = int(name.split("-")[1]) if name.startswith("ensemble-") else 0
        params, gflops = (member_costs[:m].sum(axis=0) if m else cost_of(fixed[name]) if name in fixed
                          else (best["params"], best["gflops"]))
        correct = cal.confidence_and_correct(probs, labels)[1]
        rows[name] = {**cal.calibration_metrics(probs, labels), "members": m or 1, "params": int(params),
                      "gflops": round(float(gflops), 4), "reliability": cal.reliability(probs, labels),
                      "vs_opt": None if name == "Opt" else paired_difference(correct, opt_correct).to_dict()}
        if name in fit:
            rows[name]["selective"] = selective_summary(probs, labels, fit[name], fit_labels, config.target_accuracy,
                                                        members[:m] if m > 1 else None)
    return {"report_split": search.context.inputs.split_name("val"), "fit_split": search.select_name,
            "note": SAME_SPLIT_NOTE if search.select_split == "val" else None, "sizes": sizes,
            "members_from": config.ensemble_from,
            "members": [sid for sid, _ in chosen], "member_units": [s.units for _, s in chosen],
            "target_accuracy": config.target_accuracy, "ece_method": cal.ECE_METHOD,
            "interval_methods": {"top1": CI_METHOD, "nll_ece": cal.BOOTSTRAP_METHOD, "vs_opt": PAIRED_METHOD},
            "models": rows}
def write_posterior(out_dir, posterior, log=print):
    """``calibration.json``, ``calibration.png`` and ``risk_coverage.png`` of the
    posterior-averaged evaluation; returns the report's lines about it."""
    from tf_stfusion import report
    from tf_stfusion.fileio import atomic_write_json

    if posterior is None:
        return []
    atomic_write_json(os.path.join(out_dir, CALIBRATION), posterior)
    report.calibration_plot(posterior, os.path.join(out_dir, "calibration.png"))
    report.risk_coverage_plot(posterior, os.path.join(out_dir, "risk_coverage.png"))
    lines = report.posterior_lines(posterior)
    for name, row in posterior["models"].items():
        if name == "Opt" or name.startswith("ensemble-"):
            log(f"search: {name} on {posterior['report_split']}: top-1 {100 * row['top1']:.2f}%, NLL {row['nll']:.3f}, "
                f"ECE {100 * row['ece']:.1f}% ({row['gflops']:.3f} GFLOPs)")
    return lines


# -- the search ------------------------------------------------------------------------
# -- the search ------------------------------------------------------------------------
def use_racing(config, num_candidates):
    if config.racing not in RACING:
        raise ValueError(f"--racing must be one of {RACING}, got {config.racing!r}")
    return config.racing == "on" or (config.racing == "auto" and num_candidates > config.tiles)


@dataclasses.dataclass
class Search:
    """What the steps of one search share: the opened run (``context``) and its
    search checkpoint, the selection split and its videos (in selection order), the
    evaluator, whether this worker writes, and the strategies' costs (computed once
    per distinct strategy)."""

    config: SearchConfig
    context: object  # the opened run (run.RunContext), its template restored
    checkpoint: str
    select_split: str  # "holdout" or "val"
    select_videos: list
    distribution: object  # the tf.distribute object every worker runs under
    evaluator: object  # evaluation.Evaluator, config.tiles strategies per model call
    chief: bool
    log: object  # print-like; silent off the chief
    costs: dict = dataclasses.field(default_factory=dict)
    latency: dict = None  # the latency table (tf_stfusion.latency) of --latency_table; None: none

    @property
    def data(self):
        return self.context.config.data

    @property
    def select_name(self):
        return self.context.inputs.split_name(self.select_split)

    def cost_of(self, strategy):
        """``(params, GFLOPs)`` of ``strategy`` on one eval clip of the run."""
        from tf_stfusion.accounting import cost

        key = unit_key(strategy)
        if key not in self.costs:
            spec, data = self.context.model.stf_spec, self.data
            shape = (data.num_frames, data.eval_size, data.eval_size, 3)
            c = cost(spec.backbone, strategy, input_shape=shape, num_classes=spec.num_classes)
            self.costs[key] = (c.params, c.gflops)
        return self.costs[key]

    def latency_of(self, strategy):
        """Predicted batch-1 milliseconds of ``strategy`` by the latency table."""
        from tf_stfusion.latency import predict

        return predict(self.latency, strategy.units)


def latency_budget(search):
    """best.json's and report.md's record of the latency budget: the budget, the
    table, what it was measured on and its validated relative error (None: never
    validated), which the export allows the shipped file over the budget."""
    table, note = search.latency, precision_note(search)
    return {"max_latency_ms": search.config.max_latency_ms,
            "latency_table": os.path.abspath(search.config.latency_table),
            "latency_runtime": f"{table['runtime']} {table['runtime_version']}", "latency_machine": table["machine"],
            "latency_validated_error": (table.get("validated_error") or {}).get("relative"),
            **({"latency_precision_note": note} if note else {})}


def precision_note(search):
    """What the budget means when the pick is scored in int8 (``--score_precision=int8``),
    else None: the tables time float32 files only."""
    if search.config.score_precision != "int8" or not search.latency:
        return None
    runtime = search.latency["runtime"]
    return (f"the latency table times the float32 {runtime} file, not the int8 LiteRT file the pick was scored as: "
            "the budget, the predictions and the export's check of them are the float file's (there are no int8 "
            "latency tables yet)")


def open_latency_table(config, context, log=print):
    """The ``--latency_table`` of ``config`` (None without one), checked against the
    run: its backbone, classes and the search's clip (frames, evaluation crop).
    Raises ``ValueError`` naming the file and what differs; logs a warning for a
    table without FLOPs (``latency.unscaled_note``)."""
    from tf_stfusion.latency import read_table, unscaled_note

    if not config.latency_table:
        if config.max_latency_ms:
            raise ValueError("--max_latency_ms needs --latency_table (build one with python -m "
                             "tf_stfusion.latency_table --model_dir=RUN)")
        return None
    table = read_table(config.latency_table)
    data, spec = context.config.data, context.model.stf_spec
    clip = [data.num_frames, data.eval_size, data.eval_size, 3]
    # the head was timed (and its FLOPs counted) at the table's class count; an older table may not record it
    classes = table.get("num_classes", spec.num_classes)
    if table["backbone"] != spec.backbone or list(table["clip"]) != clip or classes != spec.num_classes:
        raise ValueError(f"{config.latency_table}: a table of {table['backbone']} at clip {table['clip']} with "
                         f"{classes} classes, but the run is {spec.backbone} at {clip} with {spec.num_classes}; build "
                         f"it with python -m tf_stfusion.latency_table --model_dir={config.model_dir}")
    if note := unscaled_note(table):
        log(f"warning: {config.latency_table}: {note}")
    return table


@dataclasses.dataclass
class SearchPlan:
    """What a search scores (``_plan``): the strategies, the racing rounds, and
    the ``plan.json`` record."""

    planned: list  # [(id, kind, Strategy)]: the fixed strategies, then the sampled ones
    slices: list  # each racing round's [start, end) of the selection videos
    racing: bool
    record: dict  # plan.json: the settings a resumed search must share


def _open_run(config, distribution):
    """The run of ``config.model_dir`` as the search reads it (the search's clips,
    batch and data checks), its template restored from the search checkpoint:
    ``(context, checkpoint, select_split)``. Raises ``ValueError`` for a run without
    a search phase or a selection split it lacks."""
    from tf_stfusion.run.context import open_run
    from tf_stfusion.run.folder import RunFolder

    folder = RunFolder(config.model_dir)
    run = folder.config()
    if run.strategy is not None or "search" not in run.phases:
        raise ValueError(f"{config.model_dir} is not a template run with a search phase (phases "
                         f"{','.join(run.phases)}); train with --phase=warmup,search first")
    select_split = config.select_split or run.data.select_split
    if select_split not in ("holdout", "val"):
        raise ValueError(f"--select_split must be holdout or val, got {select_split!r}")
    if select_split == "holdout" and run.data.select_split != "holdout":
        raise ValueError(f"{config.model_dir} trained on every training video (--select_split=val): it has no "
                         "hold-out to select on; search with --select_split=val, or train a run with a hold-out")
    checkpoint = config.checkpoint or folder.finished_checkpoint("search")
    context = open_run(config.model_dir, distribution, progress=False,
                       eval_batch_size=config.batch_size or run.eval_batch_size, verify_data=config.verify_data,
                       skip_corrupt_records=config.skip_corrupt_records,
                       data={"eval_clips": config.eval_clips or run.data.eval_clips})
    context.restore(checkpoint, "--checkpoint")
    return context, checkpoint, select_split


def _open_search(config, distribution, log):
    """The ``Search`` of ``config``: the run opened, the selection videos ordered."""
    from tf_stfusion import distribute as dist_lib
    from tf_stfusion.evaluation import Evaluator
    from tf_stfusion.selection import selection_order

    chief = dist_lib.is_chief(distribution)
    context, checkpoint, select_split = _open_run(config, distribution)
    evaluator = Evaluator(context.model, context.config.data.eval_clips, tiles=config.tiles, distribution=distribution)
    log = log if chief else (lambda *a, **k: None)
    return Search(config, context, checkpoint, select_split, selection_order(context.inputs.split_videos(select_split)),
                  distribution, evaluator, chief, log, latency=open_latency_table(config, context, log))


def _check_latency_budget(search, planned):
    """Refuses, before anything is scored or written, a latency budget that no
    sampled strategy is predicted to meet (the predictions need only the table)."""
    if not search.config.max_latency_ms:
        return
    if note := precision_note(search):
        search.log(f"warning: {note}")
    fastest = min(search.latency_of(s) for _, kind, s in planned if kind == "sampled")
    if fastest > search.config.max_latency_ms:
        raise ValueError(f"--max_latency_ms={search.config.max_latency_ms}: no sampled strategy is predicted to "
                         f"take that little (the fastest: {fastest:.2f} ms by {search.config.latency_table}); raise "
                         "the budget or sample more strategies (--num_samples)")


def _plan(search):
    """The strategies and racing slices of the search; the chief claims its folder
    with ``plan.json`` (a folder holding another plan is refused, not mixed in)."""
    from tf_stfusion import distribute as dist_lib
    from tf_stfusion.fileio import claim_settings
    from tf_stfusion.selection import SAME_SPLIT_NOTE, racing_slices

    config, data, log, out_dir = search.config, search.data, search.log, search.config.folder()
    planned = plan_strategies(search.context.model, config)
    _check_latency_budget(search, planned)
    sampled = len({unit_key(s) for _, kind, s in planned if kind == "sampled"})
    distinct = len({unit_key(s) for _, _, s in planned})
    racing = use_racing(config, len(planned))
    num_videos = len(search.select_videos)
    slices = (racing_slices(num_videos, sampled, config.racing_eta, config.tiles, config.racing_min_videos)
              if racing else [(0, num_videos)])
    record = {"checkpoint": os.path.basename(search.checkpoint), "num_samples": config.num_samples,
              "seed": config.seed, "eval_clips": data.eval_clips, "select_split": search.select_name,
              "report_split": search.context.inputs.split_name("val"),
              "racing": {"eta": config.racing_eta, "slices": [list(s) for s in slices]} if racing else None,
              "max_gflops": config.max_gflops,
              **({"max_latency_ms": config.max_latency_ms} if config.max_latency_ms else {})}
    if search.chief:
        os.makedirs(out_dir, exist_ok=True)
        claim_settings(os.path.join(out_dir, PLAN), record,
                       f"{out_dir} holds a search with other settings ({{keys}} differ); remove that folder, use "
                       "another --output_dir, or use the same settings to resume it", renamed=RENAMED_PLAN_KEYS)
    how = (f"racing (eta {config.racing_eta}) over slices ending at {[end for _, end in slices]}" if racing
           else "every strategy on every video")
    log(f"search: {len(planned)} strategies ({len(planned) - 3} sampled, 3 fixed; {distinct} distinct), "
        f"{config.tiles} per pass, on the {num_videos} videos of the selection split ({search.select_name}) x "
        f"{data.eval_clips} clip(s); {how}; {dist_lib.describe(search.distribution)}")
    if search.select_split == "val":
        log(f"search: {SAME_SPLIT_NOTE}: the best of {config.num_samples} is chosen on the split it is reported on")
    return SearchPlan(planned, slices, racing, record)


def _score_round(search, journal, items, start, end, round_):
    """Scores ``(key, Strategy)`` items on the selection videos ``start:end`` and
    journals them: one pass over the videos per ``PASS_GROUPS`` groups of ``K``
    strategies (the data is read once for all of them; the journal is written after
    each pass)."""
    from tf_stfusion.evaluation import progress_bar

    config, split = search.config, search.select_split
    videos = search.select_videos[start:end]
    per_pass = PASS_GROUPS * config.tiles
    for first in range(0, len(items), per_pass):
        chunk = items[first:first + per_pass]
        bar = (progress_bar(len(videos), f"strategies {first + 1}-{first + len(chunk)} of {len(items)}")
               if config.progress and search.chief else None)
        with search.context.inputs.reading(split):
            scored = search.evaluator.evaluate(search.context.inputs.eval_dataset_fn(split, videos=videos), len(videos),
                                               [s for _, s in chunk], bar)
        for (key, _), result in zip(chunk, scored.results):
            journal.add(key, round_, start, end, result)


def _race_selection(search, plan):
    """Races the plan on the selection split (resuming from ``rounds.jsonl``): every
    planned strategy's row, in plan order, ``{key: rounds seen}`` and the number of
    (strategy, round) evaluations this call ran."""
    journal = Journal(os.path.join(search.config.folder(), ROUNDS), search.chief)
    evaluated = []

    def evaluate(items, round_):
        _score_round(search, journal, items, *plan.slices[round_], round_)
        evaluated.append(len(items))

    config = search.config
    seen, dropped = race(plan.planned, plan.slices, journal, evaluate, lambda s: search.cost_of(s)[1],
                         config.racing_eta, config.max_gflops, search.log, config.max_latency_ms, search.latency_of)
    rows = []
    for sid, kind, strategy in plan.planned:
        key = unit_key(strategy)
        row = result_row(sid, kind, strategy, journal.videos(key, seen[key]), search.select_name,
                         *search.cost_of(strategy))
        row["dropped_round"], row["dropped_because"] = dropped.get(key, (None, None))
        row["rounds"] = seen[key]
        if search.latency is not None:
            row["latency_ms"] = round(search.latency_of(strategy), 3)
        rows.append(row)
    return rows, seen, sum(evaluated)


def _shipping_template(search):
    """The search's template rebuilt at the contract's clip size (the export's
    ``build_template`` at ``eval_size``), its weights copied: the deploy graph
    needs static sizes."""
    from tf_stfusion.models import build_template

    spec, data = search.context.model.stf_spec, search.data
    template = build_template(spec.backbone, num_classes=spec.num_classes, num_frames=data.num_frames,
                              input_size=data.eval_size)
    template.set_weights(search.context.model.get_weights())
    return template


def _score_finalists(search, rows):
    """``--score_precision=int8``: the finalists (``ranked``'s first distinct
    ``int8_finalists``) converted to int8 LiteRT and scored on the selection split
    (``finalists`` module). Returns the pick's row and ``finalists.json``'s record."""
    from tf_stfusion import finalists

    config, context = search.config, search.context
    chosen = finalists.distinct_first(ranked(rows, config.max_gflops, config.max_latency_ms), config.int8_finalists)
    contract = context.contract()
    clips, where = context.inputs.calibration_clips(contract, config.calibration_clips, trained_on=True)
    search.log(f"search: {len(chosen)} finalist(s) to int8 LiteRT, calibrated on {len(clips)} clips of {where}; "
               f"scored on the {len(search.select_videos)} videos of {search.select_name}")
    journal = finalists.Journal(config.folder(), {"clips": len(clips), "videos": where}, search.chief)
    entries, num_videos, template = [], len(search.select_videos), None
    for row in chosen:
        scored, note = journal.get(row["units"], num_videos), f" (scored earlier: {finalists.JOURNAL})"
        if scored is None:
            template = _shipping_template(search) if template is None else template  # only if one is left
            scored, note = _int8_scores(search, template, row["units"], contract, clips), ""
            journal.add(row["units"], *scored)
        correct, size = scored
        entries.append(finalists.finalist_entry(row, row_correct(row), correct, size))
        search.log(f"search: finalist {row['id']}: top-1 float32 {100 * row['top1']:.2f}%, int8 "
                   f"{100 * entries[-1]['int8']['top1']:.2f}% ({size / 1e6:.2f} MB){note}")
    pick = finalists.pick_by_int8(entries)
    calibration = {"clips": len(clips), "videos": where, "view": "one evaluation clip per video"}
    result = finalists.record(entries, pick, search.select_name, calibration, config.int8_finalists)
    if "shortfall" in result:
        search.log(f"search: warning: only {result['shortfall']}")
    return chosen[pick], result


def _int8_scores(search, template, units, contract, clips):
    """``(per-video int8 top-1 on the selection split, bytes)`` of ``units``'
    int8 LiteRT file pruned from ``template``, calibrated on ``clips``."""
    from tf_stfusion import finalists
    from tf_stfusion.strategy import Strategy

    context = search.context
    strategy = Strategy.from_units(context.model.stf_spec.backbone, units)
    dataset_fn = context.inputs.eval_dataset_fn(search.select_split, videos=search.select_videos)
    with context.inputs.reading(search.select_split):
        return finalists.int8_correct(template, strategy, contract, clips, dataset_fn, len(search.select_videos),
                                      search.distribution)


def _report(search, plan, rows, best, scored_videos):
    """Opt and S / ST / S+ST on the report split with the search's diagnostics
    (``comparison.json``), and the posterior-averaged evaluation: both from one pass
    over val. ``scored_videos``: the (strategy, video) pairs the race scored and an
    exhaustive search would have, for ``comparison.json``'s ``search`` record."""
    from tf_stfusion.selection import leakage_warning

    context, select_split = search.context, search.select_split
    ensembles = ensemble_plan(plan.planned, rows, search.config)
    val_scores = report_split_scores(context, search.evaluator, plan.planned, best, ensembles[1], select_split)
    comparison = compare_on_report_split(context, best, rows, select_split, search.cost_of, val_scores)
    comparison["prior"] = context.prior_diagnostics()
    comparison["preflight"] = context.preflight_record()
    comparison["holdout_grouping"] = context.inputs.holdout_grouping
    comparison["leakage_warning"] = None if select_split == "val" else leakage_warning(
        best, comparison["strategies"]["Opt"], context.inputs.holdout_grouping)
    comparison["chance_warning"] = chance_warning(comparison, best, context.model.stf_spec.num_classes,
                                                  comparison["prior"])
    comparison["search"] = {"racing": plan.racing, **scored_videos,
                            "clip_evaluations": scored_videos["strategy_videos"] * search.data.eval_clips}
    return comparison, posterior_evaluation(search, plan.planned, best, ensembles, val_scores)


def _best_strategy(search, plan, best, reported, int8=None):
    """``best.json``: the chosen strategy, its numbers on the report split
    (``reported``) and on the selection split, and where it came from; ``int8``:
    the finalists' record (``--score_precision=int8``)."""
    from tf_stfusion.finalists import summary_metrics
    from tf_stfusion.selection import SAME_SPLIT_NOTE
    from tf_stfusion.strategy import Strategy

    config = search.config
    metric_keys = ("top1", "top1_ci", "top5", "top5_ci", "num_videos", "split")
    return Strategy.from_units(
        search.context.model.stf_spec.backbone, best["units"],
        metrics={**{k: reported[k] for k in metric_keys}, "selected_on": search.select_name,
                 "selection": {k: best[k] for k in metric_keys},
                 **({"note": SAME_SPLIT_NOTE} if search.select_split == "val" else {}),
                 "ci_method": reported["ci_method"], "params": best["params"], "gflops": best["gflops"],
                 **({"latency_ms": best["latency_ms"]} if "latency_ms" in best else {}),
                 **(summary_metrics(int8) if int8 else {})},
        provenance={"kind": "search", "id": best["id"], "model_dir": os.path.abspath(config.model_dir),
                    "checkpoint": os.path.basename(search.checkpoint), "seed": config.seed,
                    "num_samples": config.num_samples, "eval_clips": search.data.eval_clips,
                    "racing": plan.racing, **({"max_gflops": config.max_gflops} if config.max_gflops else {}),
                    **(latency_budget(search) if config.max_latency_ms else {}),
                    **({"score_precision": "int8", "calibration_clips": int8["calibration"]["clips"]} if int8 else {})},
    )


def _write_outputs(search, plan, result):
    """The chief's files: ``strategies.jsonl``, ``comparison.json``, ``best.json``,
    ``marginals.json``, the plots, ``calibration.json``, ``finalists.json`` and ``report.md``."""
    from tf_stfusion import report
    from tf_stfusion.fileio import atomic_write_json, atomic_write_text
    from tf_stfusion.finalists import write_finalists
    from tf_stfusion.strategy import marginals

    out_dir, rows, best, comparison = result.out_dir, result.rows, result.best, result.comparison
    atomic_write_text(os.path.join(out_dir, RESULTS), "".join(json.dumps(row) + "\n" for row in rows))
    atomic_write_json(os.path.join(out_dir, COMPARISON), comparison)
    _best_strategy(search, plan, best, comparison["strategies"]["Opt"], result.finalists).save(
        os.path.join(out_dir, BEST_STRATEGY))
    sections = write_finalists(out_dir, result.finalists) + write_posterior(out_dir, result.posterior, search.log)
    probs = marginals(search.context.model)
    atomic_write_json(os.path.join(out_dir, "marginals.json"), probs)
    report.fusion_plot(probs, best["units"], os.path.join(out_dir, "fusion.png"))
    report.pareto_plot(rows, pareto_front(rows), best, os.path.join(out_dir, "pareto.png"),
                       budget=search.config.max_gflops)
    if search.latency is not None:
        report.pareto_plot(rows, pareto_front(rows, "latency_ms"), best, os.path.join(out_dir, "pareto_latency.png"),
                           cost="latency_ms", budget=search.config.max_latency_ms)
    report.write_report(os.path.join(out_dir, "report.md"), rows, best, probs, plan.record, comparison,
                        search.config.max_gflops, sections=sections,
                        latency=latency_budget(search) if search.config.max_latency_ms else None)


def _log_summary(search, result):
    """The search's last lines: its cost, its pick, and any warning."""
    log, best, comparison = search.log, result.best, result.comparison
    reported = comparison["strategies"]["Opt"]
    log(f"search: {result.evaluated} strategy-rounds scored in {result.seconds:.1f}s ({result.traces} trace(s)); "
        f"{result.strategy_videos:,} strategy-video evaluations, "
        f"{100 * result.strategy_videos / result.exhaustive_videos:.0f}% of scoring every strategy on every video")
    log(f"search: best {best['id']} chosen on {search.select_name} (top-1 {100 * best['top1']:.2f}%), "
        f"on {reported['split']}: {100 * reported['top1']:.2f}% [{100 * reported['top1_ci'][0]:.1f}, "
        f"{100 * reported['top1_ci'][1]:.1f}], {best['gflops']:.3f} GFLOPs"
        + (f", {best['latency_ms']:.2f} ms predicted ({search.latency['runtime']})" if "latency_ms" in best else "")
        + f" -> {os.path.join(result.out_dir, BEST_STRATEGY)}")
    if result.finalists:
        from tf_stfusion.finalists import FINALISTS

        log(f"search: picked by int8 LiteRT top-1 on {result.finalists['split']} among "
            f"{len(result.finalists['finalists'])} finalists (float pick {result.finalists['float_pick']}) -> "
            f"{os.path.join(result.out_dir, FINALISTS)}")
    for warning in (comparison["chance_warning"] or comparison["prior"]["warning"], comparison["leakage_warning"]):
        if warning:
            log(f"search: warning: {warning}")


def run_search(config: SearchConfig, log=print, distribution=None):
    """Runs (or resumes) the search of ``config`` under ``distribution`` (a
    ``tf.distribute`` object; default: one device); returns a ``SearchResult``.
    Every worker calls it; the chief writes. Raises ``ValueError`` /
    ``FileNotFoundError`` with a one-line message for a run or settings it cannot
    search."""
    from tf_stfusion import distribute as dist_lib
    from tf_stfusion.finalists import check_settings

    check_settings(config.score_precision, config.int8_finalists, config.calibration_clips)
    search = _open_search(config, distribution or dist_lib.make_distribution("one_device"), log)
    plan = _plan(search)
    start = time.time()
    rows, seen, evaluated = _race_selection(search, plan)
    best = pick_best(rows, config.max_gflops, config.max_latency_ms)
    finalists = None  # --score_precision=int8: the pick is the finalist best in int8
    if config.score_precision == "int8":
        best, finalists = _score_finalists(search, rows)
    scored_videos = {"strategy_videos": sum(plan.slices[seen[key] - 1][1] for key in seen),
                     "exhaustive_videos": len(seen) * len(search.select_videos)}
    comparison, posterior = _report(search, plan, rows, best, scored_videos)
    result = SearchResult(rows, best, evaluated, search.evaluator.traces, time.time() - start, config.folder(),
                          comparison, **scored_videos, posterior=posterior, finalists=finalists)
    if search.chief:
        _write_outputs(search, plan, result)
        _log_summary(search, result)
    return result


# -- CLI ---------------------------------------------------------------------------
def define_flags():
    from tf_stfusion import cluster as cluster_lib

    flags.DEFINE_string("model_dir", None, "A training run with a finished search phase.")
    flags.DEFINE_integer("num_samples", 100, "Strategies sampled from the learned probabilities.")
    flags.DEFINE_integer("seed", 0, "Sampling seed.")
    flags.DEFINE_integer("eval_clips", 0, "Views (clips) per video, spread uniformly, scores averaged (0: the "
                         "run's --eval_clips).")
    flags.DEFINE_integer("tiles", 8, "Strategies evaluated together on one tiled batch (1 to the gate's "
                         "capacity, layers.drop_path.MAX_TILES).")
    flags.DEFINE_integer("batch_size", 0, "Videos per batch (0: the run's evaluation batch).")
    flags.DEFINE_float("max_gflops", 0.0, "best.json: the best strategy within this compute budget (0: none).")
    flags.DEFINE_float("max_latency_ms", 0.0, "best.json: the best strategy whose batch-1 latency, predicted by "
                       "--latency_table, is within this budget (0: none); racing drops the others.")
    flags.DEFINE_string("latency_table", None, "A latency table of the run's backbone and clip, built on the target "
                        "machine and runtime (python -m tf_stfusion.latency_table --model_dir=RUN); rows get its "
                        "predicted latency_ms.")
    flags.DEFINE_string("checkpoint", None, "Template checkpoint (default: the run's final search checkpoint).")
    flags.DEFINE_enum("select_split", None, ["holdout", "val"], "Split the best strategy is chosen on (default: the "
                      "run's --select_split). val: the paper's protocol, selected and reported on the same split "
                      "(optimistic).")
    flags.DEFINE_enum("racing", "auto", list(RACING), "Successive halving with paired elimination (auto: on when "
                      "there are more strategies than --tiles); off scores every strategy on every video.")
    flags.DEFINE_integer("racing_eta", 3, "Racing: keep the best 1/eta each round, on a slice eta times larger.")
    flags.DEFINE_integer("racing_min_videos", 10, "Racing: the smallest first slice, in videos.")
    flags.DEFINE_string("output_dir", None, "Where results go (default: MODEL_DIR/strategies).")
    cluster_lib.define_distribution_flags(flags)
    flags.DEFINE_bool("verify_data", False, "Check every shard's CRC32C before reading (its size is always checked).")
    flags.DEFINE_bool("skip_corrupt_records", False, "Go on without videos whose records cannot be read.")
    flags.DEFINE_bool("progress", True, "Progress bar.")
    flags.DEFINE_list("ensemble_sizes", ["1", "2", "4", "8", "16"], "Posterior-averaged ensembles reported: the "
                      "mean scores of the first M sampled strategies, for each M (empty: none).")
    flags.DEFINE_enum("ensemble_from", "samples", list(ENSEMBLE_FROM), "Ensemble members: samples (draws from the "
                      "learned gates: the posterior predictive) or survivors (the sampled strategies racing scored "
                      "on the whole selection split).")
    flags.DEFINE_enum("score_precision", "float32", ["float32", "int8"], "The precision the pick is scored in: "
                      "int8 converts the --int8_finalists best strategies to int8 LiteRT (as stfusion-export "
                      "--quantize=int8), scores them on the selection split and picks the best in int8 "
                      "(finalists.json).")
    flags.DEFINE_integer("int8_finalists", 5, "--score_precision=int8: the best distinct sampled strategies by the "
                         "float ranking (top-1, top-5, fewer GFLOPs; within the budgets) scored in int8.")
    flags.DEFINE_integer("calibration_clips", 100, "--score_precision=int8: clips (one per video) of the training "
                         "videos the template trained on (never the selection split) calibrating int8.")
    flags.DEFINE_float("target_accuracy", 0.9, "Abstention: the threshold on the (temperature-scaled) maximum "
                       "probability is the lowest at which the hold-out's kept videos reach this top-1.")


def main(argv):
    del argv  # run_app refuses positional arguments
    try:
        config = config_from_flags()
        from tf_stfusion import distribute

        distribution = distribute.make_distribution(FLAGS.distribution, FLAGS.devices or None, FLAGS.cluster,
                                                    FLAGS.cluster_port)
        run_search(config, distribution=distribution)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def config_from_flags():
    """The ``SearchConfig`` of the command line; raises ValueError naming the flag. The tile
    capacity is the gate layer's (TensorFlow), so ``--tiles`` is checked last."""
    if not FLAGS.model_dir:
        raise ValueError("--model_dir is required")
    if (FLAGS.num_samples < 1 or FLAGS.tiles < 1 or FLAGS.max_gflops < 0 or FLAGS.racing_eta < 2
            or FLAGS.racing_min_videos < 1 or not 0 < FLAGS.target_accuracy <= 1):
        raise ValueError("need --num_samples >= 1, --tiles >= 1, --max_gflops >= 0, --racing_eta >= 2, "
                         "--racing_min_videos >= 1, 0 < --target_accuracy <= 1")
    if FLAGS.max_latency_ms < 0:
        raise ValueError(f"--max_latency_ms={FLAGS.max_latency_ms}: a budget is a positive number of milliseconds "
                         "(0: no latency budget)")
    if FLAGS.max_latency_ms and not FLAGS.latency_table:
        raise ValueError("--max_latency_ms needs a --latency_table to predict it (python -m "
                         "tf_stfusion.latency_table --model_dir=RUN)")
    try:
        sizes = tuple(int(m) for m in FLAGS.ensemble_sizes)
    except ValueError:
        sizes = (0,)
    for name in ("int8_finalists", "calibration_clips"):
        if FLAGS[name].present and FLAGS.score_precision != "int8":
            raise ValueError(f"--{name} applies to --score_precision=int8 only")
    from tf_stfusion.finalists import check_settings

    check_settings(FLAGS.score_precision, FLAGS.int8_finalists, FLAGS.calibration_clips)
    if any(m < 1 for m in sizes):
        raise ValueError(f"--ensemble_sizes takes whole numbers >= 1, got {','.join(FLAGS.ensemble_sizes)}")
    from tf_stfusion.layers.drop_path import MAX_TILES

    if FLAGS.tiles > MAX_TILES:
        raise ValueError(f"--tiles={FLAGS.tiles}: need 1 <= --tiles <= {MAX_TILES} (the strategies one gate "
                         "carries per batch)")
    return SearchConfig(
        model_dir=FLAGS.model_dir, num_samples=FLAGS.num_samples, seed=FLAGS.seed, eval_clips=FLAGS.eval_clips,
        tiles=FLAGS.tiles, batch_size=FLAGS.batch_size, max_gflops=FLAGS.max_gflops,
        max_latency_ms=FLAGS.max_latency_ms, latency_table=FLAGS.latency_table or "",
        checkpoint=FLAGS.checkpoint or "", select_split=FLAGS.select_split or "", racing=FLAGS.racing,
        racing_eta=FLAGS.racing_eta, racing_min_videos=FLAGS.racing_min_videos, output_dir=FLAGS.output_dir or "",
        progress=FLAGS.progress, verify_data=FLAGS.verify_data, skip_corrupt_records=FLAGS.skip_corrupt_records,
        ensemble_sizes=sizes, target_accuracy=FLAGS.target_accuracy, ensemble_from=FLAGS.ensemble_from,
        score_precision=FLAGS.score_precision, int8_finalists=FLAGS.int8_finalists,
        calibration_clips=FLAGS.calibration_clips,
    )


def run():
    """Console-script entry point (``stfusion-search``)."""
    from tf_stfusion.configs import run_app

    run_app(main, define_flags)


if __name__ == "__main__":
    run()
