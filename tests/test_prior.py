"""The Eq. 5 prior's two forms, the pre-flight's numbers, grouped hold-outs and the k sweep."""

import dataclasses
import json
import math
import os
import re
import shutil

import numpy as np
import pytest

import tf_stfusion as stf
from tf_stfusion import configs, gating, prior, selection
from tf_stfusion.data import readers

from conftest import hand_regularizer

Z = 1.959963984540054  # the normal 97.5% quantile


# -- the two forms -------------------------------------------------------------------------
def test_each_form_s_coefficient_against_a_hand_computation(tiny):
    # The table: SthV1 (k = 250, N = 86,017) is 125x stronger in the paper's form.
    assert prior.weight_coefficient(250, 86017, "paper") == pytest.approx(62500 / 172034)
    assert prior.weight_coefficient(250, 86017, "authors_code") == pytest.approx(250 / 86017)
    assert prior.length_scale_for(250 / 86017, 86017, "authors_code") == pytest.approx(250)
    assert prior.length_scale_for(62500 / 172034, 86017, "paper") == pytest.approx(250)
    rng = np.random.default_rng(3)
    for gate in gating.gate_layers(tiny):
        gate.drop_logit.assign(rng.uniform(-3, 3))
    for form in prior.PRIOR_FORMS:
        got = float(stf.fusion_regularizer(tiny, 50.0, 900, prior_form=form))
        assert got == pytest.approx(hand_regularizer(tiny, 50.0, 900, form=form), rel=1e-5)
    # regularizer_parts rebuilds the same term for any k and form.
    weights, entropy_term = gating.regularizer_parts(tiny, 900)
    assert prior.weight_coefficient(50.0, 900, "authors_code") * weights + entropy_term == pytest.approx(
        hand_regularizer(tiny, 50.0, 900, form="authors_code"), rel=1e-5)
    with pytest.raises(ValueError, match="prior_form"):
        prior.weight_coefficient(1.0, 10, "eq5")


@pytest.mark.parametrize("name", ["k400", "sthv1", "sthv2", "ucf101"])
def test_paper_recipes_use_the_form_their_k_was_tuned_under(name):
    text = open(configs.path(name)).read()
    assert configs.settings(name)["prior_form"] == "authors_code"
    assert "NAS_utils/ops.py" in text  # the provenance, in the file


def test_the_demo_keeps_its_effective_coefficient():
    demo = configs.settings("demo")
    k, n = float(demo["length_scale"]), 920  # the demo trains on 920 clips (README)
    assert prior.weight_coefficient(k, n, demo["prior_form"]) == pytest.approx(4.0**2 / (2 * 920))


# -- the pre-flight's numbers ----------------------------------------------------------------
def test_preflight_ratio_suggested_k_and_verdicts():
    # Eq. 5 term = c * 1000 - 0.01 with c = k / N; data loss 2.
    ok = prior.preflight(2.0, 1000.0, -0.01, length_scale=1.0, num_train=1000, prior_form="authors_code")
    assert ok["ratio"] == pytest.approx((1.0 - 0.01) / 2.0) and ok["verdict"] == "ok"
    assert ok["forms"]["paper"]["eq5_term"] == pytest.approx(0.5 - 0.01)
    assert ok["suggested_length_scale"] == pytest.approx(2.01)  # (2 + 0.01) / 1000 * 1000
    again = prior.preflight(2.0, 1000.0, -0.01, ok["suggested_length_scale"], 1000, "authors_code")
    assert again["ratio"] == pytest.approx(1.0)
    paper = prior.preflight(2.0, 1000.0, -0.01, 2.01, 1000, "paper")
    assert paper["suggested_length_scale"] == pytest.approx(math.sqrt(2 * 1000 * 2.01 / 1000))
    warn = prior.preflight(2.0, 1000.0, 0.0, prior.PREFLIGHT_WARN_RATIO * 2.0 * 1.01, 1000, "authors_code")
    assert warn["verdict"] == "warn" and "warning" in warn["message"]
    stop = prior.preflight(2.0, 1000.0, 0.0, prior.PREFLIGHT_STOP_RATIO * 2.0 * 1.01, 1000, "authors_code")
    assert stop["verdict"] == "stop" and "--override_preflight" in stop["message"]
    assert "\n" not in stop["message"]


def _wilson_half_width_at_half(n):
    # By hand: at p = 1/2 the Wilson centre is 1/2 and the half-width z/(1 + z^2/n) sqrt(1/(4n) + z^2/(4n^2)).
    return Z / (1 + Z * Z / n) * math.sqrt(0.25 / n + Z * Z / (4 * n * n))


def test_holdout_check_gives_the_interval_width_and_the_size_that_is_usable():
    four = prior.holdout_check(4, 44)  # Weizmann: 4 held-out videos of 44
    assert four["top1_ci_at_50"] == pytest.approx([0.5 - _wilson_half_width_at_half(4), 0.5 + _wilson_half_width_at_half(4)])
    assert not four["usable"] and "4 videos" in four["warning"]
    needed = next(n for n in range(1, 1000) if _wilson_half_width_at_half(n) <= prior.HOLDOUT_HALF_WIDTH)
    assert four["videos_needed"] == needed
    big = prior.holdout_check(needed, 10 * needed)
    assert big["usable"] and big["warning"] is None and big["fraction_needed"] == pytest.approx(0.1)


# -- hold-outs that keep a source video's clips together ---------------------------------------
def _write_ucf101_lists(root, groups=6, clips=3):
    classes = ["ApplyEyeMakeup", "Basketball"]
    lists = os.path.join(root, "ucfTrainTestlist")
    os.makedirs(lists)
    with open(os.path.join(lists, "classInd.txt"), "w") as f:
        f.writelines(f"{i + 1} {c}\n" for i, c in enumerate(classes))
    rels = [f"{c}/v_{c}_g{g:02d}_c{k:02d}.avi" for c in classes for g in range(1, groups + 1) for k in range(1, clips + 1)]
    for rel in rels:  # the index only lists files; nothing is decoded
        os.makedirs(os.path.join(root, "UCF-101", os.path.dirname(rel)), exist_ok=True)
        open(os.path.join(root, "UCF-101", rel), "w").close()
    with open(os.path.join(lists, "trainlist01.txt"), "w") as f:
        f.writelines(f"{r} {classes.index(r.split('/')[0]) + 1}\n" for r in rels)


def _whole_groups_only(held, examples, group_of):
    groups = {}
    for video_id, _ in examples:
        groups.setdefault(group_of(video_id), set()).add(video_id)
    return all(members <= held or not members & held for members in groups.values())


def test_a_ucf101_layout_holds_out_whole_groups(tmp_path):
    _write_ucf101_lists(str(tmp_path))
    index = readers.read_index("ucf101", str(tmp_path), "train")
    examples = [(e.video_id, e.label) for e in index.entries]
    group_of, said = selection.group_function("auto", index.name)
    assert "ucf101" in said and group_of("v_Basketball_g03_c02") == "Basketball_g03"
    by_group = lambda v: re.sub(r"_c\d+$", "", v)  # noqa: E731 (the grouping, written independently)
    held = selection.holdout_ids(examples, 0.3, group_of)
    assert held and _whole_groups_only(held, examples, by_group)
    assert all(any(label == c and v not in held for v, label in examples) for c in (0, 1))  # training keeps each class
    # Clip by clip (no grouping) the same fraction cuts groups: the check above can fail.
    assert not _whole_groups_only(selection.holdout_ids(examples, 0.3), examples, by_group)


def test_a_folder_layout_with_a_holdout_group_pattern(tmp_path):
    for klass in ("jump", "run"):
        for g in range(5):
            for k in range(4):
                os.makedirs(tmp_path / "train" / klass, exist_ok=True)
                (tmp_path / "train" / klass / f"person{g}_take{k}.mp4").write_bytes(b"")
    index = readers.read_index("folder", str(tmp_path), "train")
    examples = [(e.video_id, e.label) for e in index.entries]
    group_of, said = selection.group_function(r"^(.+)_take\d+$", "folder")
    assert "--holdout_group" in said
    held = selection.holdout_ids(examples, 0.25, group_of)
    assert len(held) == 2 * 4 and _whole_groups_only(held, examples, lambda v: v.rsplit("_take", 1)[0])
    assert selection.group_function("auto", "folder")[0] is None  # no grouping known: video by video
    whole_match, _ = selection.group_function(r"person\d+", "folder")  # no capturing group: the whole match
    assert [whole_match(v) for v in ("jump/person3_take1", "odd_one")] == ["person3", "odd_one"]  # unmatched: itself
    with pytest.raises(ValueError, match="regular expression"):
        selection.group_function("(unclosed", "folder")


# -- the k sweep -------------------------------------------------------------------------------
def test_a_two_k_sweep_writes_the_comparison_and_resumes_after_a_kill(trained_run, tmp_path, monkeypatch):
    from tf_stfusion import search, sweep

    base = str(tmp_path / "run")
    shutil.copytree(trained_run, base)
    config = sweep.SweepConfig(model_dir=base, length_scales=(0.5, 8.0), num_samples=4, progress=False)
    sweep.run_sweep(dataclasses.replace(config, only=(0.5,)))  # one job: k = 0.5 only

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the job of k = 8 dies after its search phase
    monkeypatch.setattr(search, "run_search", killed)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(dataclasses.replace(config, only=(8.0,)))
    assert os.path.isfile(os.path.join(base, "sweep", "k8", "search", "done.json"))
    monkeypatch.undo()

    said = []
    result = sweep.run_sweep(config, log=said.append)  # the same command again: resumes
    assert any("k = 0.5 already finished" in line for line in said)
    rows = {r["k"]: r for r in result["rows"]}
    assert set(rows) == {0.5, 8.0} and not result["missing"]
    pre = {}
    for k, row in rows.items():
        pre[k] = json.load(open(os.path.join(row["folder"], "search", "preflight.json")))
        assert row["preflight_ratio"] == pre[k]["ratio"] and 0.0 <= row["gates_above_0.9"] <= 1.0
        assert row["holdout"]["split"] == "holdout" and row["val"]["split"] == "val"
    # Both k start from the same warm-up weights, and under the authors' form the weight term is
    # linear in k: k = 8 is 16x k = 0.5.
    assert pre[8.0]["weights"] == pytest.approx(pre[0.5]["weights"], rel=1e-6)
    entropy_term = pre[0.5]["entropy_term"]
    assert rows[8.0]["eq5_term"] - entropy_term == pytest.approx(16 * (rows[0.5]["eq5_term"] - entropy_term), rel=1e-5)
    best = max(rows.values(), key=lambda r: (r["holdout"]["top1"], r["holdout"]["top5"], -r["k"]))
    assert result["chosen_k"] == best["k"] and result["paired_val"]["n"] == best["val"]["num_videos"]
    text = open(os.path.join(base, "sweep", "sweep.md")).read()
    assert "| k | Eq. 5 term | data loss | pre-flight ratio |" in text and f"Chosen k = {best['k']:g}" in text


def test_a_run_holds_out_the_groups_of_its_holdout_group_and_records_the_grouping(trained_run, tmp_path):
    from tf_stfusion.run.context import RunContext
    from tf_stfusion.run.folder import RunFolder

    run = RunFolder(trained_run).config()
    pattern = r"^train_\d{4}(\d)\d$"  # synthetic ids train_000123: groups by the tens digit, across classes
    data = dataclasses.replace(run.data, holdout_group=pattern, holdout_fraction=0.3)
    context = RunContext(dataclasses.replace(run, model_dir=str(tmp_path / "grouped"), phases=("warmup",), data=data))
    examples = context.inputs.source.train_examples
    assert context.inputs.holdout and _whole_groups_only(set(context.inputs.holdout), examples, lambda v: v[-2])
    os.makedirs(tmp_path / "grouped")
    context.write_record()
    record = json.load(open(tmp_path / "grouped" / "run.json"))
    assert pattern in record["selection"]["grouping"] and "whole groups" in record["selection"]["method"]
    assert record["prior"]["form"] == run.prior_form and record["prior"]["weight_coefficient"] == pytest.approx(
        prior.weight_coefficient(run.length_scale, context.inputs.num_train, run.prior_form))


def test_the_leakage_warning_fires_only_when_the_intervals_do_not_overlap():
    # The UCF101 measurement: 68.9% [54.3, 80.5] on a 45-clip hold-out, 39.9% [33.2, 46.9] on val.
    held = {"top1": 0.689, "top1_ci": [0.543, 0.805], "split": "holdout"}
    val = {"top1": 0.399, "top1_ci": [0.332, 0.469], "split": "val"}
    said = selection.leakage_warning(held, val, selection.NO_GROUPS)
    assert "--holdout_group" in said
    assert "(68.9% [54.3, 80.5]) is above its top-1 on val (39.9% [33.2, 46.9])" in said
    assert selection.leakage_warning(held, {**val, "top1_ci": [0.40, 0.55]}, selection.NO_GROUPS) is None


def test_a_class_of_two_groups_gives_one_to_the_holdout_and_keeps_one():
    """The smallest class that can be split by groups: two groups of three clips.
    Worked out by hand: the target is round(0.5 * 6) = 3, one whole group."""
    examples = [(f"{klass}_g{g}_c{c}", label) for label, klass in enumerate("ab") for g in (1, 2) for c in (1, 2, 3)]
    group_of = lambda v: v.rsplit("_c", 1)[0]  # noqa: E731
    held = selection.holdout_ids(examples, 0.5, group_of)
    for klass in "ab":
        groups = {group_of(v) for v in held if v.startswith(klass)}
        assert len(groups) == 1 and sum(v.startswith(klass) for v in held) == 3
    # A fraction too small for one clip still holds out one group, and only one (round(0.1 * 3) = 0 -> 1).
    singles = [(f"a_g{g}_c1", 0) for g in (1, 2, 3)]
    assert len(selection.holdout_ids(singles, 0.1, group_of)) == 1
    # Even a fraction that asks for more (round(0.9 * 6) = 5) never takes the class's last group.
    held = selection.holdout_ids(examples, 0.9, group_of)
    assert all(sum(v.startswith(klass) for v in held) == 3 for klass in "ab")
    # One group only: nothing can be held out without emptying the class.
    assert selection.holdout_ids([(f"a_g1_c{c}", 0) for c in (1, 2, 3)], 0.5, group_of) == set()
