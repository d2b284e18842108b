"""Strategy search: many strategies through one compiled function, results equal
to a fixed-strategy evaluation, racing (successive halving with paired
elimination), one device vs two replicas, resume, best under a budget, plots and
report."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import tf_stfusion as stf
from tf_stfusion import selection
from tf_stfusion.evaluation import Evaluator
from tf_stfusion.search import SearchConfig, pareto_front, pick_best, read_results, run_search
from tf_stfusion.run.context import open_run


def _fresh_copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return str(dst)


def test_twenty_strategies_through_one_trace_and_outputs(trained_run, tmp_path, monkeypatch):
    model_dir = _fresh_copy(trained_run, tmp_path / "run")
    passes = []  # videos of each pass over the data
    evaluate = Evaluator.evaluate

    def counted(self, dataset_fn, num_videos, *args, **kwargs):
        passes.append(num_videos)
        return evaluate(self, dataset_fn, num_videos, *args, **kwargs)

    monkeypatch.setattr(Evaluator, "evaluate", counted)
    result = run_search(SearchConfig(model_dir=model_dir, num_samples=17, tiles=8, racing="off", progress=False))
    assert len(result.rows) == 20 and result.traces == 1
    # The 8 hold-out videos: the race, then the ensembles' temperature fit; the 16 val videos once for Opt,
    # S / ST / S+ST and the ensembles together.
    assert passes == [8, 16, 8]
    assert 1 <= result.evaluated <= 20
    out = tmp_path / "run" / "strategies"  # apart from the search phase's checkpoints in run/search/
    lines = read_results(out / "strategies.jsonl")
    assert len(lines) == 20
    holdout = json.loads((tmp_path / "run" / "holdout.json").read_text())["videos"]
    for row in lines.values():
        assert 0 <= row["top1"] <= row["top5"] <= 1 and row["params"] > 0 and row["gflops"] > 0
        assert len(row["units"]) == 8
        # Scored on the hold-out, with an interval, and the per-video correctness kept.
        assert row["split"] == "holdout" and row["num_videos"] == len(holdout)
        assert row["top1_ci"][0] <= row["top1"] <= row["top1_ci"][1]
        assert selection.unpack_bits(row["correct"], row["num_videos"]).mean() == pytest.approx(row["top1"])
    best = stf.Strategy.load(str(out / "best.json"))
    # Chosen on the hold-out, reported on val.
    assert best.metrics["selection"]["top1"] == max(r["top1"] for r in lines.values() if r["kind"] == "sampled")
    assert best.metrics["selected_on"] == "holdout" and best.metrics["split"] == "val"
    assert best.metrics["selection"]["split"] == "holdout" and "note" not in best.metrics
    assert best.provenance["kind"] == "search"
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["report_split"] == "val" and not comparison["same_split"]
    assert best.metrics["top1"] == comparison["strategies"]["Opt"]["top1"]
    for name in ("S", "ST", "S+ST"):
        d = comparison["paired_vs_opt"][name]
        opt, other = (selection.unpack_bits(comparison["strategies"][k]["correct"], 16) for k in ("Opt", name))
        assert d["diff"] == pytest.approx(opt.mean() - other.mean()) and d["ci"][0] <= d["diff"] <= d["ci"][1]
    for name in ("fusion.png", "pareto.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    report = (out / "report.md").read_text()
    assert "| Opt |" in report and "| S |" in report and "| ST |" in report and "| S+ST |" in report
    assert "Mean path marginal" in report and "Selection protocol" in report and "optimistic" not in report
    assert "Wilson" in report and "paired bootstrap" in report and "Prior diagnostics" in report
    for name in ("S", "ST", "S+ST"):
        verdict = comparison["paired_vs_opt"][name]["verdict"]
        assert {"better": "Opt better", "worse": "Opt worse"}.get(verdict, verdict) in report
    marginals = json.loads((out / "marginals.json").read_text())
    assert len(marginals["layers"]) == 8


def test_search_results_equal_a_fresh_model_in_fixed_mode(trained_run, tmp_path):
    """With racing off every strategy is scored on every selection video, exactly as
    a plain multi-clip evaluation of the template in fixed mode scores it."""
    model_dir = _fresh_copy(trained_run, tmp_path / "run")
    result = run_search(SearchConfig(model_dir=model_dir, num_samples=5, tiles=3, racing="off", progress=False))
    context = open_run(model_dir, progress=False)
    done = json.loads(open(f"{model_dir}/search/done.json").read())
    tf.train.Checkpoint(model=context.model).restore(f"{model_dir}/search/{done['checkpoint']}").expect_partial()
    evaluator = Evaluator(context.model, 2)
    videos = context.inputs.split_videos("holdout")
    for row in result.rows[:2] + result.rows[-2:]:  # two fixed, two sampled
        stf.apply_strategy(context.model, stf.Strategy.from_units("tiny", row["units"]))
        results = evaluator.videos(context.inputs.eval_dataset_fn("holdout"), len(videos), progress=False)
        got = results.metrics()
        assert got["top1"] == pytest.approx(row["top1"]) and got["top5"] == pytest.approx(row["top5"])
        # Rows keep the bits in the selection order (videos sorted by a hash of their id).
        order = [videos.index(v) for v in selection.selection_order(videos)]
        assert np.array_equal(results.top1[order], selection.unpack_bits(row["correct"], len(videos)))
        assert row["dropped_round"] is None and row["rounds"] == 1


def test_selecting_on_val_says_it_is_optimistic(trained_run, tmp_path):
    model_dir = _fresh_copy(trained_run, tmp_path / "run")
    result = run_search(SearchConfig(model_dir=model_dir, num_samples=4, tiles=8, select_split="val",
                                     progress=False))
    best = stf.Strategy.load(f"{model_dir}/strategies/best.json")
    assert best.metrics["selected_on"] == best.metrics["split"] == "val"
    assert best.metrics["note"] == selection.SAME_SPLIT_NOTE
    assert result.comparison["same_split"] and result.comparison["note"] == selection.SAME_SPLIT_NOTE
    assert "Selected and reported on the same split (optimistic)" in open(f"{model_dir}/strategies/report.md").read()
    assert all(r["split"] == "val" for r in result.rows)


RACE = dict(num_samples=17, tiles=4, racing="on", racing_min_videos=2, progress=False)


def test_racing_scores_fewer_videos_and_its_pick_saw_the_whole_split(trained_run, tmp_path):
    model_dir = _fresh_copy(trained_run, tmp_path / "run")
    result = run_search(SearchConfig(model_dir=model_dir, ensemble_from="survivors", ensemble_sizes=(2, 17),
                                     **RACE))
    plan = json.loads((tmp_path / "run" / "strategies" / "plan.json").read_text())
    slices = plan["racing"]["slices"]
    assert len(slices) == 2 and slices[-1][1] == 8  # 8 hold-out videos: a first slice, then all of them
    assert result.best["num_videos"] == 8 and result.best["dropped_round"] is None
    dropped = [r for r in result.rows if r["dropped_round"] is not None]
    assert dropped and all(r["num_videos"] == slices[0][1] and r["dropped_round"] == 0 for r in dropped)
    assert all(r["dropped_because"] for r in dropped)
    assert all(r["num_videos"] == 8 for r in result.rows if r["kind"] == "fixed")  # always reported
    assert result.strategy_videos < result.exhaustive_videos
    # Every planned strategy has its row (marginals and plots use them all).
    assert len(read_results(tmp_path / "run" / "strategies" / "strategies.jsonl")) == 20
    # --ensemble_from=survivors: the members are the sampled strategies racing kept to the end, in plan order.
    survivors = [r["id"] for r in result.rows if r["kind"] == "sampled" and r["dropped_round"] is None]
    assert result.posterior["members"] == survivors[:2] and result.posterior["sizes"] == [2]  # 17: too few survivors


def test_a_killed_racing_search_resumes_with_the_same_pick(trained_run, tmp_path):
    model_dir = _fresh_copy(trained_run, tmp_path / "run")
    first = run_search(SearchConfig(model_dir=model_dir, **RACE))
    path = tmp_path / "run" / "strategies" / "rounds.jsonl"
    lines = path.read_text().splitlines()
    kept = lines[:7]
    path.write_text("\n".join(kept) + "\n" + lines[7][:17])  # killed while writing line 8
    (tmp_path / "run" / "strategies" / "strategies.jsonl").unlink()
    again = run_search(SearchConfig(model_dir=model_dir, **RACE))
    assert again.evaluated == len(lines) - len(kept)  # only what the journal lacked
    assert again.best["id"] == first.best["id"]
    assert [(r["id"], r["top1"], r["dropped_round"]) for r in again.rows] == \
        [(r["id"], r["top1"], r["dropped_round"]) for r in first.rows]
    # Other settings in the same folder are refused instead of mixed in.
    with pytest.raises(ValueError, match="num_samples"):
        run_search(SearchConfig(model_dir=model_dir, **{**RACE, "num_samples": 10}))


def test_two_replicas_give_the_one_device_results(trained_run, tmp_path, mirrored_two_cpus):
    model_dir = _fresh_copy(trained_run, tmp_path / "run")
    one = run_search(SearchConfig(model_dir=model_dir, output_dir=str(tmp_path / "one"), **RACE))
    two = run_search(SearchConfig(model_dir=model_dir, output_dir=str(tmp_path / "two"), **RACE),
                     distribution=mirrored_two_cpus)
    assert [(r["id"], r["correct"], r["dropped_round"]) for r in two.rows] == \
        [(r["id"], r["correct"], r["dropped_round"]) for r in one.rows]
    for a, b in zip(one.rows, two.rows):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert two.best["id"] == one.best["id"] and two.traces == 1


def test_ensembles_average_their_members_evaluated_one_by_one(trained_run, tmp_path):
    """The posterior-averaged scores are the mean of the members' scores, each from a
    plain one-device evaluation of the template in fixed mode (no tiling)."""
    from tf_stfusion import calibration
    from tf_stfusion.search import ensemble_members, plan_strategies

    model_dir = _fresh_copy(trained_run, tmp_path / "run")
    config = SearchConfig(model_dir=model_dir, num_samples=5, tiles=4, racing="off", progress=False,
                          ensemble_sizes=(1, 3, 99), target_accuracy=0.5)
    result = run_search(config)
    posterior = json.loads((tmp_path / "run" / "strategies" / "calibration.json").read_text())
    assert posterior["sizes"] == [1, 3] and list(posterior["models"]) == \
        ["Opt", "ensemble-1", "ensemble-3", "S", "ST", "S+ST"]  # 99 > the 5 samples: left out
    context = open_run(model_dir, progress=False)
    done = json.loads(open(f"{model_dir}/search/done.json").read())
    tf.train.Checkpoint(model=context.model).restore(f"{model_dir}/search/{done['checkpoint']}").expect_partial()
    members = ensemble_members(plan_strategies(context.model, config), 3)
    assert [sid for sid, _ in members] == posterior["members"]
    videos = context.inputs.split_videos("val")
    one_by_one = []
    for _, strategy in members:
        stf.apply_strategy(context.model, strategy)
        dataset = context.inputs.eval_dataset_fn("val")(None)  # one device: no input context
        one_by_one.append(Evaluator(context.model, 2).evaluate(lambda _, d=dataset: d, len(videos)).probabilities[0])
    label_of = dict(context.inputs.source.val_examples)
    labels = np.array([label_of[v] for v in videos])
    mean = np.mean(one_by_one, axis=0)
    ensemble = posterior["models"]["ensemble-3"]
    assert ensemble["nll"] == pytest.approx(calibration.nll(mean, labels), abs=1e-5)
    assert ensemble["top1"] == pytest.approx(np.mean(mean.argmax(1) == labels))
    assert ensemble["ece"] == pytest.approx(calibration.expected_calibration_error(mean, labels), abs=1e-5)
    assert posterior["models"]["ensemble-1"]["nll"] == pytest.approx(calibration.nll(one_by_one[0], labels), abs=1e-5)
    assert ensemble["gflops"] == pytest.approx(sum(r["gflops"] for r in result.rows if r["id"] in
                                                   posterior["members"]), abs=1e-3)
    # Opt is paired with itself nowhere; every other model carries its paired difference to Opt.
    assert posterior["models"]["Opt"]["vs_opt"] is None and ensemble["vs_opt"]["n"] == len(videos)
    threshold = ensemble["selective"]["threshold"]
    assert threshold["target_accuracy"] == 0.5 and threshold["val"]["num_videos"] == len(videos)
    assert set(ensemble["selective"]["aurc"]) == {"max_probability", "entropy", "mutual_information"}
    for name in ("calibration.png", "risk_coverage.png"):
        assert (tmp_path / "run" / "strategies" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (tmp_path / "run" / "strategies" / "report.md").read_text()
    assert "| ensemble-3 | 3 |" in report and "ensemble-3 minus Opt:" in report and "AURC" in report


def test_best_under_a_budget_comes_from_the_pareto_set():
    rows = [{"id": "fixed-ST", "kind": "fixed", "top1": 0.9, "top5": 1, "gflops": 5.0, "num_videos": 10},
            {"id": "a", "kind": "sampled", "top1": 0.8, "top5": 1, "gflops": 2.0, "num_videos": 10},
            {"id": "b", "kind": "sampled", "top1": 0.7, "top5": 1, "gflops": 3.0, "num_videos": 10},
            {"id": "c", "kind": "sampled", "top1": 0.85, "top5": 1, "gflops": 4.0, "num_videos": 10},
            {"id": "d", "kind": "sampled", "top1": 0.95, "top5": 1, "gflops": 1.0, "num_videos": 4}]  # raced out
    # The front rests on the whole split only: d's 95% on 4 videos is not comparable.
    assert [r["id"] for r in pareto_front(rows)] == ["a", "c", "fixed-ST"]
    assert pick_best(rows)["id"] == "c"  # only strategies scored on the whole split can be picked
    assert pick_best(rows, max_gflops=3.5)["id"] == "a"
    with pytest.raises(ValueError, match="1.0 GFLOPs"):
        pick_best(rows, max_gflops=1.0)


def test_cli_runs_and_refuses_a_run_without_search(trained_run, tmp_path):
    model_dir = _fresh_copy(trained_run, tmp_path / "run")
    proc = subprocess.run([sys.executable, "-m", "tf_stfusion.search", f"--model_dir={model_dir}",
                           "--num_samples=4", "--max_gflops=1000", "--noprogress"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 trace(s)" in proc.stdout
    assert stf.Strategy.load(f"{model_dir}/strategies/best.json").provenance["max_gflops"] == 1000
    proc = subprocess.run([sys.executable, "-m", "tf_stfusion.search", f"--model_dir={tmp_path}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not a training run folder" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "tf_stfusion.search", f"--model_dir={model_dir}", "--tiles=33"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "1 <= --tiles <= 32" in proc.stderr  # MAX_TILES masks fit one gate


def test_sampled_strategies_follow_the_learned_probabilities():
    model = stf.build_template("tiny", num_classes=3, num_frames=4, input_size=32)
    rng = np.random.default_rng(0)
    for info in stf.gates(model):
        info.gate.drop_logit.assign(float(rng.uniform(-2, 2)))
    probs = {(i.layer, i.path): i.p for i in stf.gates(model)}
    strategies = stf.sample_strategies(model, 4000, seed=3)
    for layer in stf.layer_names("tiny")[:3]:
        p_s, p_st, p_d1 = (probs[(layer, path)] for path in ("S", "ST", "D1"))
        want_none = p_d1 + (1 - p_d1) * p_s * p_st
        want_st = (1 - p_d1) * p_s * (1 - p_st)
        units = [dict(s.layers)[layer] for s in strategies]
        for unit, want in (("none", want_none), ("ST", want_st)):
            got = units.count(unit) / len(units)
            assert abs(got - want) < 4 * np.sqrt(want * (1 - want) / len(units)) + 1e-3
