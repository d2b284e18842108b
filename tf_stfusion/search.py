"""``python -m tf_stfusion.search --model_dir=RUN``: evaluate fusion strategies
without retraining, pick the best, and read the layer-level preference (SPEC §4).

From the search-phase checkpoint of RUN:

1. sample ``--num_samples`` strategies from the learned drop probabilities
   (per gate ``drop ~ Bernoulli(p)``), plus the fixed strategies S, ST, S+ST;
2. score them on the *selection* split (the run's hold-out of training videos,
   or ``val`` with ``--select_split=val``) with the template's weights in fixed
   mode. One compiled function serves every strategy: a batch is tiled ``K``
   times and each tile carries its own gate masks (``apply_strategies``), so
   clips are decoded once per pass for ``K`` strategies;
3. **racing** (``selection.eliminate``, successive halving with paired
   elimination): all strategies are scored on a first slice of the selection
   videos; those whose paired 95% upper bound lies below the leader are dropped,
   the best ``1/eta`` of the rest go on to a slice ``eta`` times larger, until
   the survivors have seen the whole split. ``--racing=off`` scores every
   strategy on every video (the fixed strategies always are);
4. report Opt (the best sampled strategy) and S / ST / S+ST on the *report*
   split (val) with intervals and paired differences;
5. write ``RUN/strategies/`` (``--output_dir``): ``rounds.jsonl`` (the journal:
   one line per strategy and round, appended as results come, so an interrupted
   search resumes with the rest), ``strategies.jsonl`` (one row per strategy),
   ``best.json``, ``comparison.json``, ``marginals.json``, ``fusion.png``
   (the paper's Fig. 4), ``pareto.png`` and ``report.md``;
6. the posterior predictive (``--ensemble_sizes``): the mean scores of the first
   ``M`` sampled strategies (draws from the learned gates), for each ``M``,
   scored on val beside Opt and S / ST / S+ST (top-1, NLL, ECE with intervals,
   paired difference to Opt), one temperature per model fitted by NLL on the
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

from absl import app, flags, logging

FLAGS = flags.FLAGS
PLAN = "plan.json"
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
    clips: int = 0  # clips per video; 0: the run's --eval_clips
    tiles: int = 8  # strategies evaluated together on one tiled batch
    batch_size: int = 0  # videos per batch; 0: the run's eval batch
    max_gflops: float = 0.0  # 0: no budget
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


# -- evaluation of many strategies with one compiled function -------------------
class TiledEvaluator:
    """Per-video outcomes of many strategies, ``K`` at a time on a tiled batch, on
    every replica of ``strategy`` (a ``tf.distribute`` strategy; default: one device).

    The data is read once per call: each batch of clips ``[b*V, ...]`` is decoded
    once and scored by every group of ``K`` strategies in turn (the group's masks
    are assigned to the gates' variables, then one step). A replica's step tiles
    its clips ``K`` times, scores all tiles in one model call and returns
    ``[K, b, 3 + C]``: outcomes (``video_outcomes``: top-1 hit, top-5 hit, NLL)
    and the video scores ``[K, b, C]`` (``probabilities``: what ensembles
    average); outcomes, labels and video positions are gathered over replicas
    and workers. Traced
    once: the strategies live in variables and the batch dimension is open.
    """

    def __init__(self, model, num_clips, tiles, distribution=None):
        import tensorflow as tf

        self.model, self.num_clips, self.tiles = model, num_clips, tiles
        self.distribution = distribution or tf.distribute.OneDeviceStrategy("/cpu:0")
        self.traces = 0
        self._step = None

    def _make_step(self, element_spec):
        import tensorflow as tf

        from tf_stfusion.evaluation import outcomes_or_none, video_outcomes, video_scores

        model, views, tiles, distribution = self.model, self.num_clips, self.tiles, self.distribution
        classes = model.outputs[0].shape[-1]

        def replica(clips, labels, position):
            def outcomes():
                tiled = tf.tile(clips, tf.concat([[tiles], tf.ones([tf.rank(clips) - 1], tf.int32)], 0))
                # [K*b, V, ...]: the views of a video stay together (the pipeline puts them next to each other).
                videos = tf.reshape(tiled, tf.concat([[-1, views], tf.shape(clips)[1:]], 0))
                probs = tf.reshape(video_scores(model, videos), [tiles, -1, classes])
                # [K, b, 3 + C]: the outcomes, then the scores themselves (the ensembles average them).
                return tf.concat([tf.stack([video_outcomes(probs[k], labels) for k in range(tiles)]), probs], -1)
            return outcomes_or_none(outcomes, clips, [tiles, 0, 3 + classes]), tf.cast(labels, tf.int64), position

        @tf.function(input_signature=[element_spec])
        def step(batch):
            self.traces += 1
            outcomes, labels, position = distribution.run(replica, batch)
            return (distribution.gather(outcomes, axis=1), distribution.gather(labels, axis=0),
                    distribution.gather(position, axis=0))

        return step

    def _scores(self, strategies, dataset_fn, num_videos, bar):
        """``[len(strategies), m, 3 + C]`` outcomes and scores, labels ``[m]`` and
        positions ``[m]`` (-1: fillers) of one pass over the data."""
        import numpy as np

        from tf_stfusion.strategy import apply_strategies

        groups = [list(strategies[i:i + self.tiles]) for i in range(0, len(strategies), self.tiles)]
        # Pad the last group with its last strategy: the tile count, hence the graph, never changes.
        groups[-1] += [groups[-1][-1]] * (self.tiles - len(groups[-1]))
        dist = self.distribution.distribute_datasets_from_function(dataset_fn)
        if self._step is None:
            self._step = self._make_step(dist.element_spec)
        outcomes, labels, positions = [[] for _ in groups], [], []
        for batch in dist:
            for g, group in enumerate(groups):
                if len(groups) > 1 or not positions:  # one group: its masks stay in place
                    apply_strategies(self.model, group)
                out, label, pos = self._step(batch)
                outcomes[g].append(out.numpy())
            labels.append(label.numpy())
            positions.append(pos.numpy())
            if bar:
                bar.update(min(int(sum(np.sum(p >= 0) for p in positions)), num_videos))
        scored = np.concatenate([np.concatenate(o, axis=1) for o in outcomes], axis=0)[:len(strategies)]
        return scored, np.concatenate(labels), np.concatenate(positions)

    def evaluate(self, strategies, dataset_fn, num_videos, bar=None):
        """``VideoResults`` of every strategy in ``strategies`` over one pass of the
        data that ``dataset_fn(input_context)`` yields (``num_videos`` videos);
        ``bar``: a progress bar advanced by videos."""
        from tf_stfusion.evaluation import VideoResults

        if not strategies:
            return []
        scored, _, positions = self._scores(strategies, dataset_fn, num_videos, bar)
        return [VideoResults.from_outcomes(s[:, :3], positions, num_videos) for s in scored]

    def probabilities(self, strategies, dataset_fn, num_videos, bar=None):
        """The video scores (mean softmax over views) of every strategy, ``[S, n, C]``,
        and the labels ``[n]``, in the order of the videos ``dataset_fn`` was given."""
        import numpy as np

        from tf_stfusion.evaluation import VideoResults

        scored, labels, positions = self._scores(strategies, dataset_fn, num_videos, bar)
        VideoResults.from_outcomes(scored[0, :, :3], positions, num_videos)  # every video seen exactly once
        keep = positions >= 0
        probs = np.zeros((len(strategies), num_videos, scored.shape[-1] - 3))
        probs[:, positions[keep]] = scored[:, keep, 3:]
        ordered = np.zeros(num_videos, np.int64)
        ordered[positions[keep]] = labels[keep]
        return probs, ordered


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


def read_jsonl(path):
    """Complete lines of a JSON-lines file (a torn last line, being written when the
    process was killed, is dropped)."""
    rows = []
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    return rows


def read_results(path):
    """Rows of ``strategies.jsonl`` by id."""
    return {row["id"]: row for row in read_jsonl(path)}


def fully_scored(rows):
    """The rows scored on the whole selection split (racing stops the others on a
    prefix of it: their top-1 rests on fewer videos and is not comparable)."""
    full = max((r["num_videos"] for r in rows), default=0)
    return [r for r in rows if r["num_videos"] == full]


def pareto_front(rows):
    """Rows scored on the whole split not beaten by another at less or equal cost:
    sorted by GFLOPs."""
    front, best = [], -1.0
    for row in sorted(fully_scored(rows), key=lambda r: (r["gflops"], -r["top1"])):
        if row["top1"] > best:
            front.append(row)
            best = row["top1"]
    return front


def pick_best(rows, max_gflops=0.0):
    """The best sampled strategy scored on the whole selection split (top-1, then
    top-5, then fewer GFLOPs), within ``max_gflops`` if given."""
    pool = [r for r in fully_scored(rows) if r["kind"] == "sampled" and (not max_gflops or r["gflops"] <= max_gflops)]
    if not pool:
        raise ValueError(f"no sampled strategy costs <= {max_gflops} GFLOPs" if max_gflops
                         else "no sampled strategy was evaluated")
    return max(pool, key=lambda r: (r["top1"], r["top5"], -r["gflops"]))


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
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")

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


def race(planned, slices, journal, evaluate, gflops_of, eta, max_gflops, log=print):
    """Runs the rounds of a race (``slices`` from ``selection.racing_slices``).

    ``evaluate(items, round)`` scores ``(key, strategy)`` items on the round's
    videos and records them in ``journal``. Fixed strategies run every round
    (they are reported, not selected); sampled ones race. Returns
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
        if max_gflops:
            over = [key for key in racing if gflops_of(unique[key][1]) > max_gflops]
            dropped.update({key: (r, f"over the {max_gflops} GFLOPs budget") for key in over})
            racing = [key for key in racing if key not in over]
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
def compare_on_report_split(room, evaluator, best, rows, select_split, cost_of):
    """Opt and the fixed S / ST / S+ST on the report split, with paired differences.

    When the selection split *is* the report split the search's own rows are
    used (and every output says that the numbers are optimistic).
    """
    from tf_stfusion.selection import SAME_SPLIT_NOTE, fingerprint, paired_difference
    from tf_stfusion.strategy import Strategy

    spec = room.model.stf_spec
    report_split = room.split_name("val")
    fixed = {r["id"].split("-", 1)[1]: r for r in rows if r["kind"] == "fixed"}
    named = [("Opt", best)] + [(u, fixed[u]) for u in ("S", "ST", "S+ST")]
    if select_split == "val":
        table = dict(named)
    else:
        items = [(row["id"], row["kind"], Strategy.from_units(spec.backbone, row["units"])) for _, row in named]
        videos = room.split_videos("val")
        with room.reading("val"):
            results = evaluator.evaluate([s for _, _, s in items], room.eval_dataset_fn("val"), len(videos))
        table = {name: result_row(*item, result, report_split, *cost_of(item[2]))
                 for (name, _), item, result in zip(named, items, results)}
    paired = {name: paired_difference(row_correct(table["Opt"]), row_correct(table[name])).to_dict()
              for name in ("S", "ST", "S+ST")}
    return {"report_split": report_split, "selected_on": room.split_name(select_split),
            "same_split": select_split == "val", "note": SAME_SPLIT_NOTE if select_split == "val" else None,
            "videos": fingerprint(room.split_videos("val")), "strategies": table, "paired_vs_opt": paired}


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
            f"too strong: lower --length_scale (k = {prior['length_scale']:g}, {prior['formula']} = "
            f"{prior['weight_coefficient']:.3g}) "
            "and see the README's 'Choosing k'.")


# -- the posterior predictive: ensembles of sampled strategies -------------------------
FIXED_UNITS = ("S", "ST", "S+ST")


ENSEMBLE_FROM = ("samples", "survivors")


def ensemble_members(planned, size, keep=None):
    """The first ``size`` sampled strategies of the plan, ``[(id, Strategy)]``: i.i.d.
    draws from the learned gates, so their mean prediction is a Monte Carlo estimate
    of the posterior predictive (repeated draws count as often as they were drawn);
    with ``keep`` (a set of ids), only those (racing's survivors)."""
    return [(sid, s) for sid, kind, s in planned if kind == "sampled" and (keep is None or sid in keep)][:size]


def split_probabilities(room, evaluator, split, videos, strategies):
    """Video scores ``[len(strategies), n, C]`` and labels ``[n]`` of ``strategies`` on
    ``videos`` of ``split``, each distinct strategy evaluated once, in one pass."""
    unique = {}
    for strategy in strategies:
        unique.setdefault(unit_key(strategy), strategy)
    keys = list(unique)
    with room.reading(split):
        probs, labels = evaluator.probabilities([unique[k] for k in keys], room.eval_dataset_fn(split, videos=videos),
                                                len(videos))
    return probs[[keys.index(unit_key(s)) for s in strategies]], labels


def posterior_scores(room, evaluator, planned, best, select_split, select_videos, sizes, keep=None):
    """Scores of Opt, the ensembles of ``sizes`` members and S / ST / S+ST on val
    (``{name: [n, C]}``, labels), of Opt and the ensembles on the split that fits the
    temperature and threshold (the hold-out; val when the run selected on val), and
    the largest ensemble's members on val ``[M, n, C]``."""
    from tf_stfusion.strategy import Strategy

    members = [s for _, s in ensemble_members(planned, max(sizes), keep)]
    opt = Strategy.from_units(room.model.stf_spec.backbone, best["units"])
    fixed = {sid.split("-", 1)[1]: s for sid, kind, s in planned if kind == "fixed"}
    probs, labels = split_probabilities(room, evaluator, "val", room.split_videos("val"),
                                        [opt] + [fixed[u] for u in FIXED_UNITS] + members)

    def named(opt_probs, member_probs):
        return {"Opt": opt_probs, **{f"ensemble-{m}": member_probs[:m].mean(axis=0) for m in sizes}}

    val = {**named(probs[0], probs[4:]), **dict(zip(FIXED_UNITS, probs[1:4]))}
    if select_split == "holdout":
        fit_probs, fit_labels = split_probabilities(room, evaluator, "holdout", select_videos, [opt] + members)
        fit = named(fit_probs[0], fit_probs[1:])
    else:
        fit, fit_labels = named(probs[0], probs[4:]), labels
    return val, labels, fit, fit_labels, probs[4:]


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


def posterior_evaluation(room, evaluator, planned, rows, best, select_split, select_videos, cost_of, config):
    """The posterior-averaged evaluation (``calibration.json``): per model on val
    top-1, NLL and ECE with intervals, its paired top-1 difference to Opt, cost,
    reliability data; temperature scaling and selective prediction of Opt and the
    ensembles. Members: the first sampled strategies, or with
    ``config.ensemble_from == "survivors"`` those scored on the whole selection
    split (``rows``). ``None`` when ``config.ensemble_sizes`` is empty."""
    import numpy as np

    from tf_stfusion import calibration as cal
    from tf_stfusion.selection import CI_METHOD, PAIRED_METHOD, SAME_SPLIT_NOTE, paired_difference

    if config.ensemble_from not in ENSEMBLE_FROM:
        raise ValueError(f"--ensemble_from must be one of {ENSEMBLE_FROM}, got {config.ensemble_from!r}")
    keep = ({r["id"] for r in fully_scored(rows) if r["kind"] == "sampled"} if config.ensemble_from == "survivors"
            else None)
    available = len(ensemble_members(planned, len(planned), keep))
    sizes = sorted({m for m in config.ensemble_sizes if 1 <= m <= available})
    if not sizes:
        return None
    val, labels, fit, fit_labels, members = posterior_scores(room, evaluator, planned, best, select_split,
                                                             select_videos, sizes, keep)
    chosen = ensemble_members(planned, max(sizes), keep)
    fixed = {sid.split("-", 1)[1]: s for sid, kind, s in planned if kind == "fixed"}
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
    return {"report_split": room.split_name("val"), "fit_split": room.split_name(select_split),
            "note": SAME_SPLIT_NOTE if select_split == "val" else None, "sizes": sizes,
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
def use_racing(config, num_candidates):
    if config.racing not in RACING:
        raise ValueError(f"--racing must be one of {RACING}, got {config.racing!r}")
    return config.racing == "on" or (config.racing == "auto" and num_candidates > config.tiles)


def run_search(config: SearchConfig, log=print, tf_strategy=None):
    """Runs (or resumes) the search of ``config`` under ``tf_strategy`` (default:
    one device); returns a ``SearchResult``. Every worker calls it; the chief writes."""
    import keras

    from tf_stfusion import distribute as dist_lib
    from tf_stfusion.accounting import cost
    from tf_stfusion.fileio import atomic_write_json, atomic_write_text, claim_settings
    from tf_stfusion.selection import SAME_SPLIT_NOTE, leakage_warning, racing_slices, selection_order
    from tf_stfusion.strategy import Strategy, marginals
    from tf_stfusion.run.context import open_run
    from tf_stfusion.run.folder import BEST_STRATEGY, RunFolder

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
    tf_strategy = tf_strategy or dist_lib.default_distribution()
    chief = dist_lib.is_chief(tf_strategy)
    log = log if chief else (lambda *a, **k: None)
    room = open_run(config.model_dir, tf_strategy, progress=False,
                    eval_batch_size=config.batch_size or run.eval_batch_size, verify_data=config.verify_data,
                    skip_corrupt_records=config.skip_corrupt_records,
                    data={"eval_clips": config.clips or run.data.eval_clips})
    data = room.config.data
    model = room.model
    room.restore(checkpoint, "--checkpoint")

    out_dir = config.folder()
    select_videos = selection_order(room.split_videos(select_split))
    select_name = room.split_name(select_split)
    planned = plan_strategies(model, config)
    sampled = len({unit_key(s) for _, kind, s in planned if kind == "sampled"})
    distinct = len({unit_key(s) for _, _, s in planned})
    racing = use_racing(config, len(planned))
    slices = (racing_slices(len(select_videos), sampled, config.racing_eta, config.tiles, config.racing_min_videos)
              if racing else [(0, len(select_videos))])
    plan = {"checkpoint": os.path.basename(checkpoint), "num_samples": config.num_samples, "seed": config.seed,
            "clips_per_video": data.eval_clips, "select_split": select_name, "report_split": room.split_name("val"),
            "racing": {"eta": config.racing_eta, "slices": [list(s) for s in slices]} if racing else None,
            "max_gflops": config.max_gflops}
    if chief:
        os.makedirs(out_dir, exist_ok=True)
        claim_settings(os.path.join(out_dir, PLAN), plan,
                       f"{out_dir} holds a search with other settings ({{keys}} differ); remove that folder, use "
                       "another --output_dir, or use the same settings to resume it")
    journal = Journal(os.path.join(out_dir, ROUNDS), chief)
    log(f"search: {len(planned)} strategies ({len(planned) - 3} sampled, 3 fixed; {distinct} distinct), "
        f"{config.tiles} per pass, on the {len(select_videos)} videos of the selection split ({select_name}) x "
        f"{data.eval_clips} clip(s); " + (f"racing (eta {config.racing_eta}) over slices ending at "
                                          f"{[end for _, end in slices]}" if racing else "every strategy on every video")
        + f"; {dist_lib.describe(tf_strategy)}")
    if select_split == "val":
        log(f"search: {SAME_SPLIT_NOTE}: the best of {config.num_samples} is chosen on the split it is reported on")

    spec = model.stf_spec
    shape = (data.num_frames, data.eval_size, data.eval_size, 3)
    costs = {}

    def cost_of(strategy):
        key = unit_key(strategy)
        if key not in costs:
            c = cost(spec.backbone, strategy, input_shape=shape, num_classes=spec.num_classes)
            costs[key] = (c.params, c.gflops)
        return costs[key]

    evaluator = TiledEvaluator(model, data.eval_clips, config.tiles, tf_strategy)
    counts = {"evaluated": 0, "strategy_videos": 0}
    t0 = time.time()

    def evaluate(items, round_):
        # One pass over the round's videos per PASS_GROUPS groups of K strategies: the
        # data is read once for all of them, and the journal is written after each pass.
        start, end = slices[round_]
        videos = select_videos[start:end]
        per_pass = PASS_GROUPS * config.tiles
        for first in range(0, len(items), per_pass):
            chunk = items[first:first + per_pass]
            bar = keras.utils.Progbar(len(videos), unit_name="video") if config.progress and chief else None
            if bar:
                print(f"strategies {first + 1}-{first + len(chunk)} of {len(items)}")
            with room.reading(select_split):
                results = evaluator.evaluate([s for _, s in chunk],
                                             room.eval_dataset_fn(select_split, videos=videos), len(videos), bar)
            for (key, _), result in zip(chunk, results):
                journal.add(key, round_, start, end, result)
            counts["evaluated"] += len(chunk)

    seen, dropped = race(planned, slices, journal, evaluate, lambda s: cost_of(s)[1], config.racing_eta,
                         config.max_gflops, log)
    rows = []
    for sid, kind, strategy in planned:
        key = unit_key(strategy)
        videos = journal.videos(key, seen[key])
        row = result_row(sid, kind, strategy, videos, select_name, *cost_of(strategy))
        row["dropped_round"], row["dropped_because"] = dropped.get(key, (None, None))
        row["rounds"] = seen[key]
        rows.append(row)
    strategy_videos = sum(slices[seen[key] - 1][1] for key in seen)
    exhaustive = len(seen) * len(select_videos)

    best = pick_best(rows, config.max_gflops)
    comparison = compare_on_report_split(room, evaluator, best, rows, select_split, cost_of)
    comparison["prior"] = room.prior_diagnostics()
    comparison["preflight"] = room.preflight_record()
    comparison["holdout_grouping"] = room.holdout_grouping
    comparison["leakage_warning"] = None if select_split == "val" else leakage_warning(
        best, comparison["strategies"]["Opt"], room.holdout_grouping)
    comparison["chance_warning"] = chance_warning(comparison, best, spec.num_classes, comparison["prior"])
    comparison["search"] = {"racing": racing, "strategy_videos": strategy_videos, "exhaustive_videos": exhaustive,
                            "clip_evaluations": strategy_videos * data.eval_clips}
    posterior = posterior_evaluation(room, evaluator, planned, rows, best, select_split, select_videos, cost_of,
                                     config)
    seconds = time.time() - t0
    result = SearchResult(rows, best, counts["evaluated"], evaluator.traces, seconds, out_dir, comparison,
                          strategy_videos, exhaustive, posterior)
    if not chief:
        return result
    atomic_write_text(os.path.join(out_dir, RESULTS), "".join(json.dumps(row) + "\n" for row in rows))
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
                    "num_samples": config.num_samples, "clips_per_video": data.eval_clips,
                    "racing": racing, **({"max_gflops": config.max_gflops} if config.max_gflops else {})},
    )
    best_strategy.save(os.path.join(out_dir, BEST_STRATEGY))
    probs = marginals(model)
    atomic_write_json(os.path.join(out_dir, "marginals.json"), probs)

    from tf_stfusion import report

    report.fusion_plot(probs, best["units"], os.path.join(out_dir, "fusion.png"))
    report.pareto_plot(rows, pareto_front(rows), best, os.path.join(out_dir, "pareto.png"))
    report.write_report(os.path.join(out_dir, "report.md"), rows, best, probs, plan, comparison, config.max_gflops,
                        sections=write_posterior(out_dir, posterior, log))
    log(f"search: {counts['evaluated']} strategy-rounds scored in {seconds:.1f}s ({evaluator.traces} trace(s)); "
        f"{strategy_videos:,} strategy-video evaluations, {100 * strategy_videos / exhaustive:.0f}% of scoring every "
        f"strategy on every video")
    log(f"search: best {best['id']} chosen on {select_name} (top-1 {100 * best['top1']:.2f}%), "
        f"on {reported['split']}: {100 * reported['top1']:.2f}% [{100 * reported['top1_ci'][0]:.1f}, "
        f"{100 * reported['top1_ci'][1]:.1f}], {best['gflops']:.3f} GFLOPs -> {os.path.join(out_dir, BEST_STRATEGY)}")
    for warning in (comparison["chance_warning"] or comparison["prior"]["warning"], comparison["leakage_warning"]):
        if warning:
            log(f"search: warning: {warning}")
    return result


# -- CLI ---------------------------------------------------------------------------
def define_flags():
    from tf_stfusion import cluster as cluster_lib
    from tf_stfusion.distribute import DISTRIBUTIONS
    from tf_stfusion.layers.drop_path import MAX_TILES

    flags.DEFINE_string("model_dir", None, "A training run with a finished search phase.")
    flags.DEFINE_integer("num_samples", 100, "Strategies sampled from the learned probabilities.")
    flags.DEFINE_integer("seed", 0, "Sampling seed.")
    flags.DEFINE_integer("clips", 0, "Clips per validation video (0: the run's --eval_clips).")
    flags.DEFINE_integer("tiles", 8, f"Strategies evaluated together on one tiled batch (1-{MAX_TILES}).")
    flags.DEFINE_integer("batch_size", 0, "Videos per batch (0: the run's evaluation batch).")
    flags.DEFINE_float("max_gflops", 0.0, "best.json: the best strategy within this compute budget (0: none).")
    flags.DEFINE_string("checkpoint", None, "Template checkpoint (default: the run's final search checkpoint).")
    flags.DEFINE_enum("select_split", None, ["holdout", "val"], "Split the best strategy is chosen on (default: the "
                      "run's --select_split). val: the paper's protocol, selected and reported on the same split "
                      "(optimistic).")
    flags.DEFINE_enum("racing", "auto", list(RACING), "Successive halving with paired elimination (auto: on when "
                      "there are more strategies than --tiles); off scores every strategy on every video.")
    flags.DEFINE_integer("racing_eta", 3, "Racing: keep the best 1/eta each round, on a slice eta times larger.")
    flags.DEFINE_integer("racing_min_videos", 10, "Racing: the smallest first slice, in videos.")
    flags.DEFINE_string("output_dir", None, "Where results go (default: MODEL_DIR/strategies).")
    flags.DEFINE_enum("distribution", "auto", list(DISTRIBUTIONS),
                      "As for training: auto, one_device, mirrored or multi_worker (TF_CONFIG).")
    flags.DEFINE_list("devices", [], "Devices for mirrored / one_device.")
    cluster_lib.define_flags(flags)
    flags.DEFINE_bool("verify_data", False, "Check every shard's CRC32C before reading (its size is always checked).")
    flags.DEFINE_bool("skip_corrupt_records", False, "Go on without videos whose records cannot be read.")
    flags.DEFINE_bool("progress", True, "Progress bar.")
    flags.DEFINE_list("ensemble_sizes", ["1", "2", "4", "8", "16"], "Posterior-averaged ensembles reported: the "
                      "mean scores of the first M sampled strategies, for each M (empty: none).")
    flags.DEFINE_enum("ensemble_from", "samples", list(ENSEMBLE_FROM), "Ensemble members: samples (draws from the "
                      "learned gates: the posterior predictive) or survivors (the sampled strategies racing scored "
                      "on the whole selection split).")
    flags.DEFINE_float("target_accuracy", 0.9, "Abstention: the threshold on the (temperature-scaled) maximum "
                       "probability is the lowest at which the hold-out's kept videos reach this top-1.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    if not FLAGS.model_dir:
        print("error: --model_dir is required", file=sys.stderr)
        return 2
    from tf_stfusion.layers.drop_path import MAX_TILES

    if (FLAGS.num_samples < 1 or not 1 <= FLAGS.tiles <= MAX_TILES or FLAGS.max_gflops < 0 or FLAGS.racing_eta < 2
            or FLAGS.racing_min_videos < 1 or not 0 < FLAGS.target_accuracy <= 1):
        print(f"error: need --num_samples >= 1, 1 <= --tiles <= {MAX_TILES}, --max_gflops >= 0, --racing_eta >= 2, "
              "--racing_min_videos >= 1, 0 < --target_accuracy <= 1", file=sys.stderr)
        return 2
    try:
        sizes = tuple(int(m) for m in FLAGS.ensemble_sizes)
    except ValueError:
        sizes = (0,)
    if any(m < 1 for m in sizes):
        print(f"error: --ensemble_sizes takes whole numbers >= 1, got {','.join(FLAGS.ensemble_sizes)}",
              file=sys.stderr)
        return 2
    config = SearchConfig(
        model_dir=FLAGS.model_dir, num_samples=FLAGS.num_samples, seed=FLAGS.seed, clips=FLAGS.clips,
        tiles=FLAGS.tiles, batch_size=FLAGS.batch_size, max_gflops=FLAGS.max_gflops,
        checkpoint=FLAGS.checkpoint or "", select_split=FLAGS.select_split or "", racing=FLAGS.racing,
        racing_eta=FLAGS.racing_eta, racing_min_videos=FLAGS.racing_min_videos, output_dir=FLAGS.output_dir or "",
        progress=FLAGS.progress, verify_data=FLAGS.verify_data, skip_corrupt_records=FLAGS.skip_corrupt_records,
        ensemble_sizes=sizes, target_accuracy=FLAGS.target_accuracy, ensemble_from=FLAGS.ensemble_from,
    )
    try:
        from tf_stfusion import distribute

        strategy = distribute.make_distribution(FLAGS.distribution, FLAGS.devices or None, FLAGS.cluster,
                                                FLAGS.cluster_port)
        run_search(config, tf_strategy=strategy)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def run():
    """Console-script entry point (``stfusion-search``)."""
    from tf_stfusion.configs import run_app

    run_app(main, define_flags)


if __name__ == "__main__":
    run()
