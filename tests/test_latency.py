"""Latency tables (tf_stfusion.latency) and selection by latency (search --max_latency_ms)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import tf_stfusion as stf
from tf_stfusion import latency
from tf_stfusion.search import Journal, SearchConfig, pareto_front, pick_best, race, run_search, unit_key


@pytest.fixture(scope="module")
def tiny_table(trained_run, tmp_path_factory):
    """The CLI's table of the tiny test run (its contract: 8 frames, 32x32), 2 timed calls per part."""
    path = tmp_path_factory.mktemp("latency") / "tiny.json"
    proc = subprocess.run([sys.executable, "-m", "tf_stfusion.latency_table", f"--model_dir={trained_run}",
                           "--repeats=2", f"--output={path}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("machine: ") and "predicted S" in proc.stdout
    return path


def test_table_of_tiny_times_every_layer_unit_and_fixed_part(tiny_table):
    import tensorflow as tf

    table = latency.read_table(tiny_table)
    assert table["backbone"] == "tiny" and table["clip"] == [8, 32, 32, 3] and table["batch"] == 1
    assert table["runtime"] == "tensorflow" and table["runtime_version"] == tf.__version__
    assert table["machine"].startswith("machine: ") and f"tensorflow {tf.__version__}" in table["machine"]
    assert [e["name"] for e in table["layers"]] == stf.layer_names("tiny")
    for entry in table["layers"]:
        assert entry["none"] == 0.0 and all(entry[u] > 0 for u in ("S", "ST", "S+ST"))
    # tiny (DenseNet, 4 blocks): the input step, the stem, 3 transitions and the head are what no strategy removes.
    assert sorted(table["fixed"]) == ["head", "input", "stem", "transition1", "transition2", "transition3"]
    assert all(ms > 0 for ms in table["fixed"].values()) and table["call_overhead_ms"] > 0
    # every timed part's FLOPs where it was timed; the input step has none (no conv), so it is never scaled
    assert all(sorted(e["flops"]) == ["S", "S+ST", "ST"] and min(e["flops"].values()) > 0 for e in table["layers"])
    assert sorted(table["fixed_flops"]) == ["head", "stem", "transition1", "transition2", "transition3"]


NO_TENSORFLOW = """
import runpy, sys

class NoTensorFlow:  # a device with only the runtime: TensorFlow, Keras and tf2onnx are not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "tf_keras", "tf2onnx"):
            raise ImportError(f"No module named {name!r} (not installed on this device)")

sys.meta_path.insert(0, NoTensorFlow())
sys.argv = ["latency_device", *sys.argv[1:]]
runpy.run_module("tf_stfusion.latency_device", run_name="__main__")
"""


@pytest.mark.parametrize("runtime,package", [("onnxruntime", "onnxruntime"), ("litert", "ai-edge-litert")])
def test_table_of_tiny_on_onnxruntime_and_litert_timed_on_a_device_without_tensorflow(runtime, package, tmp_path):
    """The table of another runtime, built as a device without TensorFlow builds it: the parts converted where
    TensorFlow is (``latency_table --parts_dir``), then timed by ``latency_device`` in a process that cannot
    import TensorFlow, Keras or tf2onnx. The table names the runtime, its package's version and the precision,
    and carries the FLOPs the prediction scales by."""
    from importlib.metadata import version

    parts, path = tmp_path / "parts", tmp_path / f"tiny_{runtime}.json"
    proc = subprocess.run([sys.executable, "-m", "tf_stfusion.latency_table", "--backbone=tiny", "--num_classes=4",
                           "--num_frames=4", "--size=32", f"--runtime={runtime}", f"--parts_dir={parts}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"latency_device --parts={parts}" in proc.stdout
    device = tmp_path / "device.py"
    device.write_text(NO_TENSORFLOW)
    proc = subprocess.run([sys.executable, str(device), f"--parts={parts}", f"--output={path}", "--repeats=1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = latency.read_table(path, runtime=runtime)
    assert table["runtime"] == runtime and table["runtime_version"] == version(package)
    assert table["precision"] == "float32" and f"{runtime} {version(package)}" in table["machine"]
    assert "tensorflow" not in table["machine"] and "timed here" in table["method"]
    assert table["clip"] == [4, 32, 32, 3] and sorted(table["fixed"]) == sorted(
        ["head", "input", "stem", "transition1", "transition2", "transition3"])
    assert all(entry[u] > 0 for entry in table["layers"] for u in ("S", "ST", "S+ST"))
    assert ("tf2onnx" if runtime == "onnxruntime" else "deploy graph") in table["method"]
    names = stf.layer_names("tiny")
    assert ([e["flops"] for e in table["layers"]], table["fixed_flops"]) == latency.table_flops(
        "tiny", 4, (4, 32, 32, 3), names, list(table["fixed"]))
    # A table of one runtime where another is expected: one line naming the file and both runtimes.
    with pytest.raises(ValueError, match=f"a latency table of {runtime}, but tensorflow is expected here"):
        latency.read_table(path, runtime="tensorflow")
    # A part lost on the way: one line naming it and what to do.
    (parts / "part003" ).with_suffix(".onnx" if runtime == "onnxruntime" else ".tflite").unlink()
    proc = subprocess.run([sys.executable, str(device), f"--parts={parts}", f"--output={path}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "file 'part003" in proc.stderr and "copy the whole folder" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_device_timing_and_parts_export_refuse_what_they_cannot_do(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tf_stfusion.latency_device", f"--parts={tmp_path}",
                           f"--output={tmp_path / 't.json'}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and f"{tmp_path / 'parts.json'}: no such parts manifest" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "tf_stfusion.latency_device", f"--parts={tmp_path}",
                           f"--output={tmp_path / 't.json'}", "--repeats=0"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--repeats=0: need at least 1 timed call per part" in proc.stderr
    (tmp_path / "parts.json").write_text(json.dumps({"format": "stfusion-latency-parts/1", "runtime": "tensorflow"}))
    proc = subprocess.run([sys.executable, "-m", "tf_stfusion.latency_device", f"--parts={tmp_path}",
                           f"--output={tmp_path / 't.json'}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "field 'runtime' must be one of ('onnxruntime', 'litert')" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "tf_stfusion.latency_table", "--backbone=tiny", "--num_classes=4",
                           "--num_frames=4", "--size=32", "--runtime=tensorflow", f"--parts_dir={tmp_path}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--parts_dir converts parts for onnxruntime or litert" in proc.stderr
    # --output and --repeats with --parts_dir did nothing (the device times and writes the table): refused.
    proc = subprocess.run([sys.executable, "-m", "tf_stfusion.latency_table", "--backbone=tiny", "--runtime=litert",
                           f"--parts_dir={tmp_path / 'p'}", f"--output={tmp_path / 't.json'}", "--repeats=3"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--parts_dir converts, it times nothing: give --output and --repeats to python " \
        "-m tf_stfusion.latency_device" in proc.stderr and not (tmp_path / "p").exists()


def test_a_part_runs_in_each_runtime_as_it_computes_in_keras():
    """A cut part converted for ONNX Runtime and LiteRT (its deploy graph: the 3D convs as 2D ones) computes the
    Keras part's function -- the timed call is the part's real work, not an empty or failed graph."""
    import tensorflow as tf

    from tf_stfusion.export.part_runtimes import runtime

    model = stf.build_template("tiny", num_classes=4, num_frames=4, input_size=32, units=["S+ST"] * 8)
    part = latency.cut(model, latency.fusion_parts(model, stf.layer_names("tiny"))["block1/layer2"])
    x = np.random.default_rng(1).standard_normal((1, *part.inputs[0].shape[1:])).astype(np.float32)
    expected = part(x, training=False).numpy()
    spec = [tf.TensorSpec(x.shape, tf.float32, name="x0")]
    for name in ("onnxruntime", "litert"):
        out = runtime(name).compile(latency._part_outputs, spec, part)([x])
        out = out["y0"] if isinstance(out, dict) else out[0]
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max(), err_msg=name)
    with pytest.raises(ValueError, match="runtime 'tvm' has no latency tables"):
        runtime("tvm")


def test_every_layer_of_the_network_is_timed_in_exactly_one_part():
    import keras

    model = stf.build_template("tiny", num_classes=4, num_frames=8, input_size=32, units=["ST"] * 8)
    names = stf.layer_names("tiny")
    parts = list(latency.fusion_parts(model, names).values()) + list(latency.fixed_parts(model, names).values())
    timed = [layer.name for part in parts for layer in part]
    assert sorted(timed) == sorted(l.name for l in model.layers if not isinstance(l, keras.layers.InputLayer))
    # A cut part computes what it computes in the network: block1/layer1 reads the stem's 16 channels and
    # hands on 16 + 8 (its concatenation).
    part = latency.cut(model, latency.fusion_parts(model, names)["block1/layer1"])
    assert part.inputs[0].shape[-1] == 16 and part.outputs[0].shape[-1] == 24


def _hand_table():
    """A tiny table worked out by hand: every layer S 1.0, ST 2.0, S+ST 2.5 ms; stem 3, head 1; 0.25 ms a call."""
    layers = [{"name": n, "S": 1.0, "ST": 2.0, "S+ST": 2.5, "none": 0.0} for n in stf.layer_names("tiny")]
    return {"format": latency.FORMAT, "backbone": "tiny", "clip": [8, 32, 32, 3], "batch": 1,
            "runtime": "tensorflow", "runtime_version": "x", "machine": "machine: hand-made",
            "call_overhead_ms": 0.25, "fixed": {"stem": 3.0, "head": 1.0}, "layers": layers}


def test_prediction_is_the_sum_of_the_parts_less_the_extra_calls():
    table = latency.check_table(_hand_table())
    units = ["S", "ST", "none", "S+ST", "none", "none", "none", "S"]
    # parts: stem 3 + head 1 + S 1 + ST 2 + S+ST 2.5 + S 1 = 10.5 ms in 6 calls; one call is shipped: 10.5 - 5 x 0.25
    assert latency.predict(table, units) == pytest.approx(9.25)
    assert latency.predict(table, ["none"] * 8) == pytest.approx(3.0 + 1.0 - 0.25)
    with pytest.raises(ValueError, match="7 layers"):
        latency.predict(table, units[:7])
    bad = _hand_table()
    bad["layers"][2]["ST"] = -1.0
    with pytest.raises(ValueError, match="t.json: field 'layers.block2/layer1.ST' must be a measured time"):
        latency.check_table(bad, "t.json")
    # a time of 0 was never measured (a hand edit): it would predict the part, or the whole strategy, free
    for field, edit in (("call_overhead_ms", {"call_overhead_ms": 0}), ("fixed.stem", {"fixed": {"stem": 0.0}})):
        with pytest.raises(ValueError, match=f"t.json: field '{field}' must be a measured time in milliseconds "
                                             "\\(> 0\\), got 0"):
            latency.check_table(dict(_hand_table(), **edit), "t.json")
    bad = dict(_hand_table(), runtime="tvm")
    with pytest.raises(ValueError, match="t.json: field 'runtime': 'tvm' has no latency tables"):
        latency.check_table(bad, "t.json")
    bad = dict(_hand_table(), validated_error={"relative": "10%"})
    with pytest.raises(ValueError, match="field 'validated_error.relative' must be a fraction"):
        latency.check_table(bad, "t.json")
    # a scale fitted on measured files multiplies the sum (9.25 x 0.8 = 7.4), unless asked for the sum itself
    scaled = latency.check_table(dict(_hand_table(), calibration={"scale": 0.8}))
    assert latency.predict(scaled, units) == pytest.approx(7.4)
    assert latency.predict(scaled, units, calibrated=False) == pytest.approx(9.25)
    for field in ("clip", "backbone", "runtime"):
        bad = {k: v for k, v in _hand_table().items() if k != field}
        with pytest.raises(ValueError, match=f"t.json: field\\(s\\) \\['{field}'\\] missing; rebuild the table"):
            latency.check_table(bad, "t.json")
    with pytest.raises(ValueError, match="t.json: field 'clip' must be \\[frames, height, width, 3\\], got \\[8, 32\\]"):
        latency.check_table(dict(_hand_table(), clip=[8, 32]), "t.json")
    for scale in (0, -1.0, "0.8", True):
        with pytest.raises(ValueError, match="t.json: field 'calibration.scale' must be a number > 0"):
            latency.check_table(dict(_hand_table(), calibration={"scale": scale}), "t.json")


def test_a_densenets_flops_are_split_by_the_parts_the_table_times():
    """The count names each part's FLOPs as the table names the part; they add up to the network's FLOPs."""
    from tf_stfusion.models import backbone_config

    names = stf.layer_names("densenet121")
    tally = backbone_config("densenet121").count(["S+ST"] * len(names), 400, (16, 112, 112, 3))
    fixed = ["stem", "transition1", "transition2", "transition3", "head"]
    assert list(tally.flops_by_part) == ["stem", *names[:6], "transition1", *names[6:18], "transition2",
                                         *names[18:42], "transition3", *names[42:], "head"]
    assert sum(tally.flops_by_part.values()) == tally.flops and all(tally.flops_by_part[n] > 0 for n in fixed)


def test_a_part_is_scaled_by_its_flops_in_the_strategy():
    """tiny at 8x32x32 (stem 16 channels, growth 8, bottleneck 32; block 1 at 8x8x8 = 512 positions):
    block1/layer2 as S reads 24 channels when block1/layer1 is kept -- 2 x 512 x (24 x 32 + 9 x 32 x 8) FLOPs,
    what the table records -- and 16 when it is skipped: 2 x 512 x (16 x 32 + 9 x 32 x 8), 2816/3072 of it.
    Its 1.0-ms entry less the 0.25-ms call is 0.75 ms of work, so 0.6875 ms; with stem 3 and head 1 (no FLOPs
    recorded: not scaled) one call of 0.25 + 2.75 + 0.75 + 0.6875 = 4.4375 ms. A part timed under one empty
    call (noise) adds no work rather than negative work."""
    table = _hand_table()
    table["num_classes"] = 4
    table["layers"][1]["flops"] = {"S": 2 * 512 * (24 * 32 + 9 * 32 * 8)}
    table = latency.check_table(table)
    units = ["none", "S"] + ["none"] * 6
    assert latency.predict(table, units) == pytest.approx(4.4375)
    assert latency.predict(table, units, widths=False) == pytest.approx(4.5)  # the plain sum: 3 + 1 + 1 - 2 x 0.25
    assert latency.predict(table, ["S"] * 2 + ["none"] * 6) == pytest.approx(4.5 + 0.75)  # layer1 kept: 24 channels
    table["layers"][1]["S"] = 0.1  # under the 0.25-ms empty call
    assert latency.predict(table, units) == pytest.approx(0.25 + 2.75 + 0.75)
    for bad in (0, -5, 1.5, "3"):
        broken = _hand_table()
        broken["num_classes"] = 4
        broken["layers"][1]["flops"] = {"S": bad}
        with pytest.raises(ValueError, match="t.json: field 'layers.block1/layer2.flops.S' must be a FLOP count"):
            latency.check_table(broken, "t.json")
    broken = _hand_table()
    broken["fixed_flops"] = {"stem": 10}
    with pytest.raises(ValueError, match="t.json: field 'num_classes' must be the head's class count"):
        latency.check_table(broken, "t.json")


def test_a_table_whose_flops_are_not_the_backbones_count_or_not_objects_is_refused():
    """Each recorded FLOP count is the backbone's own at the table's clip and classes (tiny's block1/layer2 as S
    at 8x32x32: 2 x 512 x (24 x 32 + 9 x 32 x 8), worked out by hand above); a hand-edited clip, class count or
    count -- which would scale every part by a wrong ratio -- and parts or FLOPs that are not objects are refused
    in one line naming the field."""
    def table(**edits):
        t = dict(_hand_table(), num_classes=4, **edits)
        t["layers"][1]["flops"] = {"S": 2 * 512 * (24 * 32 + 9 * 32 * 8)}
        return t

    latency.check_table(table())
    # at 8x48x48 block 1 has 8 x 12 x 12 = 1152 positions, 9/4 of 512: 2 x 1152 x 3072 = 7077888
    count = "field 'layers.block1/layer2.flops.S' is 3145728, but tiny's count at the table's clip"
    with pytest.raises(ValueError, match=f"t.json: {count} \\[8, 48, 48, 3\\] and 4 classes is 7077888: its clip"):
        latency.check_table(table(clip=[8, 48, 48, 3]), "t.json")
    broken = table()
    broken["layers"][1]["flops"]["X"] = 5
    with pytest.raises(ValueError, match="field 'layers.block1/layer2.flops.X' is 5, but .* names no such part"):
        latency.check_table(broken, "t.json")
    with pytest.raises(ValueError, match="t.json: field 'fixed_flops.stem' is 7, but .* is [0-9]+: its clip"):
        latency.check_table(table(fixed_flops={"stem": 7}), "t.json")
    broken = table()
    broken["layers"][0]["flops"] = 5
    for bad, field in ((table(fixed=[3.0, 1.0]), "fixed"), (table(fixed_flops=[7]), "fixed_flops"),
                       (broken, "layers.block1/layer1.flops")):
        with pytest.raises(ValueError, match=f"t.json: field '{field}' must be an object \\{{part: number\\}}"):
            latency.check_table(bad, "t.json")


def test_the_validation_refits_saved_measurements_without_timing(tmp_path):
    """``--measurements`` reads a table and its strategies' measured ms back and scores the models on them:
    5 strategies of the hand table measured at exactly 2x the width-scaled sum give a fitted scale of 2.000,
    0.0% error and Spearman 1 (the plain sum is the same here: the hand table has no FLOPs)."""
    units = [["S"] * 8, ["ST"] * 8, ["S+ST"] * 8, ["none"] * 8, ["S", "ST"] * 4]
    table = dict(_hand_table(), num_classes=4)
    saved = {"table": table, "runs": 10, "seed": 0,
             "strategies": [{"units": u, "measured_ms": 2 * latency.predict(table, u)} for u in units]}
    path = tmp_path / "m.json"
    path.write_text(json.dumps(saved))
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "benchmarks/latency_table.py", f"--measurements={path}"],
                          capture_output=True, text=True, timeout=300, cwd=repo)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "strategy  4: sum of parts" in proc.stdout and "measured" in proc.stdout
    assert "times a fitted scale (2.000 on all; each strategy's fitted without it): median error 0.0%" in proc.stdout
    assert "Spearman 1.000" in proc.stdout
    path.write_text("{}")
    proc = subprocess.run([sys.executable, "benchmarks/latency_table.py", f"--measurements={path}"],
                          capture_output=True, text=True, timeout=300, cwd=repo)
    assert proc.returncode != 0 and f"error: {path}: not a file --save_measurements wrote" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_table_without_flops_is_flagged_where_its_backbone_counts_them():
    """A DenseNet table built before the width scaling (no FLOPs) predicts the plain sum: the search warns; a
    table with FLOPs, or of a backbone whose count is not split by part (resnet50), has nothing to warn of."""
    old = dict(_hand_table(), num_classes=4)
    assert "records no FLOPs" in latency.unscaled_note(old) and "rebuild it" in latency.unscaled_note(old)
    old["layers"][1]["flops"] = {"S": 2 * 512 * (24 * 32 + 9 * 32 * 8)}
    assert latency.unscaled_note(old) is None
    resnet = {"backbone": "resnet50", "clip": [8, 32, 32, 3], "num_classes": 4, "fixed": {"stem": 1.0},
              "layers": [{"name": n} for n in stf.layer_names("resnet50")]}
    assert latency.unscaled_note(resnet) is None


def test_the_validation_refuses_bad_measurements_use_in_one_line(tmp_path):
    """``--measurements`` with a --table that is missing or not a table, with flags that would do nothing (it times
    nothing; a --table has its own backbone and clip), or with a saved strategy whose units do not fit the table;
    ``--record_error`` into a table built on another machine: one line naming the file (and the row), no
    traceback, before anything is timed."""
    table = dict(_hand_table(), num_classes=4)
    rows = [{"units": ["S"] * 8, "measured_ms": 5.0}] * 5
    path, bad, missing = tmp_path / "m.json", tmp_path / "bad.json", tmp_path / "none.json"
    path.write_text(json.dumps({"table": table, "strategies": rows}))
    bad.write_text(json.dumps({"table": table, "strategies": rows[:4] + [{"units": ["S"] * 7, "measured_ms": 5.0}]}))
    (tmp_path / "t.json").write_text(json.dumps(table))
    measured = f"--measurements={path}"
    cases = [([measured, f"--table={missing}"], f"error: {missing}: no such latency table"),
             ([measured, f"--table={path}"], f"error: {path}: not a stfusion-latency-table/1 file"),
             ([measured, "--retest", "--runtime=litert"], "error: --runtime, --retest would do nothing: "
                                                          "--measurements times nothing; drop them"),
             ([measured, f"--save_measurements={tmp_path / 'again.json'}"], "error: --save_measurements would do"),
             ([f"--table={tmp_path / 't.json'}", "--num_frames=16"], "error: --num_frames would do nothing: --table "
                                                                     "has its backbone, clip, classes and runtime"),
             ([f"--table={tmp_path / 't.json'}", "--save_measurements=/no-such-folder/m.json"],
              "error: --save_measurements=/no-such-folder/m.json: no folder /no-such-folder; create it first"),
             ([f"--table={tmp_path / 't.json'}", f"--save_measurements={tmp_path}/{{table}}.json"],
              "{backbone} is the only name it may hold in braces (KeyError('table'))"),
             ([f"--table={tmp_path / 't.json'}", "--record_error"], f"error: {tmp_path / 't.json'}: the table was "
                                                                   "timed on 'machine: hand-made', this is"),
             ([f"--measurements={bad}"], f"error: {bad}: not a file --save_measurements wrote (field "
                                         "'strategies[4].units': a strategy of 7 layers")]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for flags, message in cases:
        proc = subprocess.run([sys.executable, "benchmarks/latency_table.py", *flags],
                              capture_output=True, text=True, timeout=300, cwd=repo)
        assert proc.returncode != 0 and message in proc.stderr, (flags, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr


def _budget_strategy(runtime=None, validated=0.10, machine=None):
    """A strategy chosen under a 10 ms budget by a (hand-made) table of ``runtime`` (default: this ONNX Runtime),
    validated to ``validated``, built on ``machine`` (default: this one)."""
    import onnxruntime

    from tf_stfusion.machine import machine_line

    runtime = runtime or f"onnxruntime {onnxruntime.__version__}"
    machine = machine or machine_line(onnxruntime=onnxruntime.__version__)
    return stf.Strategy.from_units(
        "tiny", ["S"] * 8, metrics={"latency_ms": 9.0}, provenance={"max_latency_ms": 10.0, "latency_runtime": runtime,
                                                 "latency_machine": machine, "latency_validated_error": validated})


@pytest.mark.parametrize("seconds,validated,fails", [(0.0105, 0.10, False), (0.0115, 0.10, True),
                                                     (0.0095, None, False), (0.0101, None, True)])
def test_export_fails_closed_beyond_the_tables_validated_error(monkeypatch, tmp_path, seconds, validated, fails):
    """The export's check of the search's budget with a fake timing: 10 ms budget, a table validated to 10%:
    10.5 ms passes, 11.5 ms fails; a table never validated allows nothing over (10.1 ms fails)."""
    from tf_stfusion.data.pipeline import InputContract
    from tf_stfusion.export import checks

    monkeypatch.setattr(checks.litert, "median_latency", lambda call, repeats: seconds)
    contract = InputContract(num_frames=4, frame_stride=1, sampler="dense", eval_clips=1, eval_size=16,
                             class_names=("a", "b"))
    (tmp_path / "m.onnx").write_bytes(b"not timed: the timing is faked")
    budget = checks.latency_budget(_budget_strategy(validated=validated), {"onnx": lambda clip: None},
                                   {"onnx": "m.onnx"}, str(tmp_path), contract, repeats=3)
    assert budget["file"] == "m.onnx" and budget["measured_ms"] == pytest.approx(1000 * seconds)
    assert budget["within_budget"] == (seconds <= 0.010) and budget["allowed_error"] == (validated or 0.0)
    error = checks.budget_error(budget)
    assert (error is not None) == fails
    if fails:
        allowed = ("10.0%", "the latency table's validated_error", "11.00") if validated else (
            "0.0%", "none: the table was never validated", "10.00")
        assert error == (f"m.onnx: measured {1000 * seconds:.2f} ms (batch 1), over the search's latency budget of "
                         f"10.0 ms by more than the allowed error {allowed[0]} ({allowed[1]}; at most {allowed[2]} "
                         "ms); nothing was written; choose a faster strategy, or pass --allow_over_budget")


def test_the_budget_check_names_a_table_built_on_another_machine_or_runtime_version(monkeypatch, tmp_path):
    """A table's budget measured on another machine checks nothing about the table's: the report, the log line
    and the refusal say how the machines differ (hardware; the runtime's version)."""
    from tf_stfusion.data.pipeline import InputContract
    from tf_stfusion.export import checks

    monkeypatch.setattr(checks.litert, "median_latency", lambda call, repeats: 0.0115)
    contract = InputContract(num_frames=4, frame_stride=1, sampler="dense", eval_clips=1, eval_size=16,
                             class_names=("a", "b"))
    (tmp_path / "m.onnx").write_bytes(b"not timed: the timing is faked")
    version = __import__("onnxruntime").__version__
    here = checks.latency_budget(_budget_strategy(), {"onnx": lambda clip: None}, {"onnx": "m.onnx"},
                                 str(tmp_path), contract, repeats=3, runtime_version=version)
    assert here["other_machine"] is None and "table's machine" not in checks.budget_error(here)
    # a table timed on a device without TensorFlow names no GPUs: the same CPU is the same machine
    cpu_only = _budget_strategy(machine=_budget_strategy().provenance["latency_machine"].split(", GPUs:")[0]
                                + "; Python 3")
    assert checks.latency_budget(cpu_only, {"onnx": lambda clip: None}, {"onnx": "m.onnx"}, str(tmp_path),
                                 contract, repeats=3, runtime_version=version)["other_machine"] is None
    other = _budget_strategy("onnxruntime 0.9.0", machine="machine: 64 CPU cores (Ampere Altra, aarch64); Python 3")
    budget = checks.latency_budget(other, {"onnx": lambda clip: None}, {"onnx": "m.onnx"}, str(tmp_path), contract,
                                   repeats=3, runtime_version=version)
    assert budget["other_machine"].startswith("the table was timed on 'machine: 64 CPU cores (Ampere Altra, "
                                              "aarch64)', this is 'machine: ")
    assert budget["other_machine"].endswith(f"; the table's onnxruntime is 0.9.0, this one's {version}")
    assert f"({budget['other_machine']}: export on the table's machine, or build a table here)" in \
        checks.budget_error(budget)
    assert checks.budget_line(budget).endswith(f"; not the table's machine: {budget['other_machine']}")


def test_export_refuses_a_budget_whose_runtime_file_it_does_not_write(tmp_path):
    from tf_stfusion.export.config import ExportConfig, ExportError
    from tf_stfusion.export.exporter import export

    path = str(tmp_path / "best.json")
    _budget_strategy("litert 2.3.0").save(path)
    config = ExportConfig(strategy_file=path, model_dir=str(tmp_path), export_dir=str(tmp_path / "out"),
                          formats=("saved_model", "onnx"))
    with pytest.raises(ExportError, match="budget predicted for litert; add tflite to --formats"):
        export(config, log=lambda *a: None)
    _budget_strategy("tvm 0.1").save(path)
    with pytest.raises(ExportError, match="predicted for runtime 'tvm', which no export file runs"):
        export(config, log=lambda *a: None)


def test_pick_best_keeps_to_the_latency_budget():
    rows = [{"id": "a", "kind": "sampled", "top1": 0.8, "top5": 1, "gflops": 2.0, "num_videos": 10, "latency_ms": 5.0},
            {"id": "b", "kind": "sampled", "top1": 0.9, "top5": 1, "gflops": 1.0, "num_videos": 10, "latency_ms": 9.0},
            {"id": "c", "kind": "sampled", "top1": 0.7, "top5": 1, "gflops": 3.0, "num_videos": 10, "latency_ms": 4.0},
            {"id": "d", "kind": "sampled", "top1": 0.99, "top5": 1, "gflops": 0.5, "num_videos": 4, "latency_ms": 1.0}]
    assert pick_best(rows)["id"] == "b"
    # b is fastest to compute but slowest to run: the fronts differ (d, on 4 videos, is on neither).
    assert [r["id"] for r in pareto_front(rows)] == ["b"]
    assert [r["id"] for r in pareto_front(rows, "latency_ms")] == ["c", "a", "b"]
    assert pick_best(rows, max_latency_ms=8.0)["id"] == "a"  # b is over; d is not scored on the whole split
    assert pick_best(rows, max_gflops=2.5, max_latency_ms=8.0)["id"] == "a"
    with pytest.raises(ValueError, match="costs <= 2.5 GFLOPs and is predicted to take <= 4.5 ms"):
        pick_best(rows, max_gflops=2.5, max_latency_ms=4.5)  # a is over the time, c over the GFLOPs
    with pytest.raises(ValueError, match="predicted to take <= 3.0 ms"):
        pick_best(rows, max_latency_ms=3.0)


def test_racing_drops_strategies_over_the_latency_budget_after_the_first_round():
    from tf_stfusion.evaluation import VideoResults

    names = stf.layer_names("tiny")
    planned = [(f"sample-{i}", "sampled", stf.Strategy.uniform(u, "tiny")) for i, u in enumerate(("S", "ST", "S+ST"))]
    ms = {"S": 1.0, "ST": 2.0, "S+ST": 3.0}
    journal = Journal("/nonexistent/rounds.jsonl", chief=False)

    def evaluate(items, round_):
        for key, _ in items:
            hits = np.ones(slices[round_][1] - slices[round_][0], bool)
            journal.add(key, round_, *slices[round_], VideoResults(hits, hits, np.zeros(hits.size)))

    slices = [(0, 5), (5, 20)]
    seen, dropped = race(planned, slices, journal, evaluate, lambda s: 1.0, eta=3, max_gflops=0,
                         log=lambda *a: None, max_latency_ms=2.5, latency_of=lambda s: ms[s.units[0]])
    over = unit_key(stf.Strategy.uniform("S+ST", "tiny"))
    assert dropped[over][0] == 0 and "2.5 ms latency budget (3.00 ms predicted)" in dropped[over][1]
    assert seen[over] == 1 and len(names) == 8
    # S and ST are within it: they race on (halving keeps the better one for the last round).
    within = [unit_key(stf.Strategy.uniform(u, "tiny")) for u in ("S", "ST")]
    assert not any("latency" in dropped.get(key, (0, ""))[1] for key in within)
    assert max(seen[key] for key in within) == 2


def test_search_under_a_latency_budget_picks_a_strategy_within_it(trained_run, tiny_table, tmp_path, monkeypatch):
    import shutil

    model_dir = str(tmp_path / "run")
    shutil.copytree(trained_run, model_dir)
    table = latency.read_table(tiny_table)
    budget = round(latency.predict(table, ["S+ST"] * 8) * 0.9, 3)  # S+ST everywhere is over it
    # (a table timed on a busy machine may predict nonsense; say so rather than test a budget of <= 0)
    assert budget > 0, f"the tiny table (2 timed calls per part) predicts S+ST at {budget / 0.9:.3f} ms"
    result = run_search(SearchConfig(model_dir=model_dir, num_samples=6, racing="off", progress=False,
                                     ensemble_sizes=(), max_latency_ms=budget, latency_table=str(tiny_table)),
                        log=lambda *a: None)
    assert all(r["latency_ms"] == pytest.approx(latency.predict(table, r["units"]), abs=1e-3) for r in result.rows)
    assert result.best["latency_ms"] <= budget
    best = stf.Strategy.load(f"{model_dir}/strategies/best.json")
    assert best.provenance["max_latency_ms"] == budget and best.metrics["latency_ms"] <= budget
    assert best.provenance["latency_runtime"].startswith("tensorflow ")
    report_md = (tmp_path / "run" / "strategies" / "report.md").read_text()
    assert f"at most {budget} ms" in report_md and "the export allows its file nothing over the budget" in report_md
    assert (tmp_path / "run" / "strategies" / "pareto_latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The export times the file of the table's runtime (the SavedModel) against the search's budget; the table
    # was never validated, so a file timed (fake timing) at twice the budget fails it, nothing written ...
    from tf_stfusion.export import checks
    from tf_stfusion.export.config import ExportConfig, ExportError
    from tf_stfusion.export.exporter import export

    assert best.provenance["latency_validated_error"] is None
    monkeypatch.setattr(checks.litert, "median_latency", lambda call, repeats: 2 * budget / 1000)
    config = ExportConfig(strategy_file=f"{model_dir}/strategies/best.json", model_dir=model_dir,
                          export_dir=str(tmp_path / "exported"), formats=("saved_model",))
    with pytest.raises(ExportError, match=f"stfusion/1: measured {2 * budget:.2f} ms \\(batch 1\\), over the "
                       f"search's latency budget of {budget} ms by more than the allowed error 0.0%"):
        export(config, log=lambda *a: None)
    assert not list((tmp_path / "exported").iterdir())
    # ... unless --allow_over_budget: written, the miss in the report.
    import dataclasses

    report = export(dataclasses.replace(config, allow_over_budget=True), log=lambda *a: None)
    measured = report["latency_budget"]
    assert measured["file"] == report["files"]["saved_model"] and measured["measured_ms"] == pytest.approx(2 * budget)
    assert measured["max_latency_ms"] == budget and measured["predicted_ms"] == best.metrics["latency_ms"]
    assert measured["within_budget"] is False and measured["within_allowed_error"] is False
    assert json.loads((tmp_path / "exported" / "export_report.json").read_text()
                      )["latency_budget"] == measured
    # A table of another clip or class count (without FLOPs: with them, check_table's recount refuses the edit).
    plain = {k: v for k, v in table.items() if k != "fixed_flops"}
    plain["layers"] = [{k: v for k, v in e.items() if k != "flops"} for e in table["layers"]]
    classes = table["num_classes"]
    for edit, message in (({"clip": [16, 32, 32, 3]}, f"at clip \\[16, 32, 32, 3\\] with {classes} classes, but "
                                                      f"the run is tiny at \\[8, 32, 32, 3\\] with {classes}"),
                          ({"num_classes": classes + 1}, f"with {classes + 1} classes, but the run is tiny at "
                                                         f"\\[8, 32, 32, 3\\] with {classes};")):
        (tmp_path / "other.json").write_text(json.dumps(dict(plain, **edit)))
        with pytest.raises(ValueError, match=message):
            run_search(SearchConfig(model_dir=model_dir, num_samples=2, output_dir=str(tmp_path / "o"),
                                    progress=False, ensemble_sizes=(), max_latency_ms=1.0,
                                    latency_table=str(tmp_path / "other.json")))
    # A budget below every sampled strategy's prediction is refused before anything is scored or written.
    fastest = min(latency.predict(table, s.units) for s in (stf.Strategy.uniform(u, "tiny") for u in ("S", "ST")))
    with pytest.raises(ValueError, match="--max_latency_ms=0.001: no sampled strategy is predicted to take that "
                                         "little \\(the fastest: "):
        run_search(SearchConfig(model_dir=model_dir, num_samples=6, output_dir=str(tmp_path / "low"), progress=False,
                                ensemble_sizes=(), max_latency_ms=0.001, latency_table=str(tiny_table)))
    assert fastest > 0.001 and not (tmp_path / "low").exists()


def test_the_validation_fits_a_scale_and_scores_it_on_strategies_it_never_saw():
    """benchmarks/latency_table.py's calibration, by hand: sums [1, 2, 3] measured [2, 4, 6] -> scale 2, and
    each held-out prediction exact; sums [1, 1] measured [1, 3] -> scale 2 on both, but held out each is
    predicted by the other's scale: 3 for 1 (error 2.0) and 1 for 3 (error 2/3); sums [1, 2] measured [1, 3]:
    least squares through the origin (1 + 6) / (1 + 4) = 1.4, not the ratio of the totals 4/3."""
    code = ("import sys; sys.path.insert(0, 'benchmarks'); import numpy as np; import latency_table as b; "
            "a = np.array([1., 2, 3]); c = np.array([1., 1]); "
            "print(b.fit_scale(a, 2 * a), b.held_out_scaled(a, 2 * a).tolist(), b.fit_scale(c, np.array([1., 3])), "
            "b.held_out_scaled(c, np.array([1., 3])).tolist(), b.errors(b.held_out_scaled(c, np.array([1., 3])), "
            "np.array([1., 3]))['median_relative'], b.fit_scale(np.array([1., 2]), np.array([1., 3])))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["2.0", "[2.0,", "4.0,", "6.0]", "2.0", "[3.0,", "1.0]", "1.3333", "1.4"]


def test_the_report_names_a_wide_validated_error():
    """report.md's words on the budget's allowed error: none, a 10% one as is, a 40% one flagged as wide (> 25%)."""
    from tf_stfusion.report import validated_line

    assert "never validated" in validated_line({"latency_validated_error": None})
    assert validated_line({"latency_validated_error": 0.10}).endswith("is 10.0%, which the export allows its file "
                                                                      "over the budget")
    assert "**a wide error**" in validated_line({"latency_validated_error": 0.40})
    assert "wide" not in validated_line({"latency_validated_error": 0.25})


def test_an_int8_pick_under_a_float_latency_table_says_whose_latency_the_budget_is():
    """The tables time float32 files; with --score_precision=int8 best.json and report.md say the budget and its
    export check are the float file's, not the int8 file's; a float32 pick says nothing of it."""
    from types import SimpleNamespace

    from tf_stfusion.report import write_report  # noqa: F401  (the section below is write_report's)
    from tf_stfusion.search import latency_budget, precision_note

    table = dict(_hand_table(), runtime="litert")
    config = SimpleNamespace(score_precision="int8", max_latency_ms=10.0, latency_table="t.json")
    search = SimpleNamespace(config=config, latency=table)
    note = precision_note(search)
    assert note.startswith("the latency table times the float32 litert file, not the int8 LiteRT file")
    assert latency_budget(search)["latency_precision_note"] == note
    config.score_precision = "float32"
    assert precision_note(search) is None and "latency_precision_note" not in latency_budget(search)


def test_the_report_counts_the_strategies_dropped_for_each_budget_and_the_plot_draws_the_budget(monkeypatch):
    """report.md says how many sampled strategies racing dropped per budget; the Pareto plot draws the budget
    as a vertical line at its value (none without a budget)."""
    from tf_stfusion import report
    from tf_stfusion.search import over_budget

    rows = [{"kind": "sampled", "dropped_because": over_budget(1.0, 12.0, 0.0, 10.0)},
            {"kind": "sampled", "dropped_because": over_budget(1.0, 13.5, 0.0, 10.0)},
            {"kind": "sampled", "dropped_because": over_budget(3.0, 1.0, 2.0, 10.0)},
            {"kind": "sampled", "dropped_because": "below the leader"}, {"kind": "sampled"},
            {"kind": "fixed", "dropped_because": over_budget(1.0, 12.0, 0.0, 10.0)}]
    assert report.budget_drops(rows) == ["Racing dropped 1 for the GFLOPs budget and 2 for the latency budget of the "
                                         "5 sampled strategies after its first round (`dropped_because` in "
                                         "`strategies.jsonl`).", ""]
    assert report.budget_drops(rows[3:]) == []
    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, path: figures.append(fig))
    scored = [{"kind": "sampled", "num_videos": 10, "latency_ms": ms, "top1": top1, "split": "holdout"}
              for ms, top1 in ((4.0, 0.5), (6.0, 0.7), (9.0, 0.8))]
    for budget, lines in ((7.5, [7.5]), (0.0, [])):
        report.pareto_plot(scored, scored, scored[1], "unused.png", cost="latency_ms", budget=budget)
        ax = figures[-1].axes[0]
        vertical = [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert vertical == lines
        assert any(t.get_text() == "budget: 7.5 ms" for t in ax.get_legend().get_texts()) == bool(lines)


def _hand_parts(folder):
    """A parts folder as ``export_parts`` writes it, by hand: one fusion layer of three units, the empty call and
    the input step; the part files are placeholders (``read_parts`` checks the manifest before any runtime)."""
    clip, labels = [4, 32, 32, 3], ["layer:block1/layer1:S", "layer:block1/layer1:ST", "layer:block1/layer1:S+ST",
                                     "fixed:input", "call_overhead"]
    parts = [{"label": label, "file": f"part{i:03d}.tflite", "inputs": ["x"], "shapes": [clip],
              "dtype": "uint8" if label == "fixed:input" else "float32"} for i, label in enumerate(labels)]
    for part in parts:
        (folder / part["file"]).write_bytes(b"")
    return {"format": "stfusion-latency-parts/1", "backbone": "tiny", "num_classes": 4, "clip": clip,
            "runtime": "litert", "precision": "float32", "method": "m", "converted_on": "machine: x",
            "layer_flops": [{"S": 1, "ST": 2, "S+ST": 3}], "fixed_flops": {}, "parts": parts}


@pytest.mark.parametrize("edit,message", [
    (lambda m: m.pop("method"), r"field\(s\) \['method'\] missing"),
    (lambda m: m.update(parts=[]), "field 'parts' must be a non-empty list"),
    (lambda m: m["parts"].__setitem__(0, "x"), r"parts\[0\]: must be an object"),
    (lambda m: m["parts"][1].pop("label"), r"parts\[1\]: must be an object with strings 'label'"),
    (lambda m: m["parts"][0].update(shapes=5), r"parts\[0\] \(layer:block1/layer1:S\): field 'shapes' must be"),
    (lambda m: m["parts"][0].update(shapes=[[4, "32"]]), "field 'shapes' must be a list of"),
    (lambda m: m["parts"][0].update(inputs=["x", "y"]), "field 'inputs' must name one input per shape"),
    (lambda m: m["parts"][0].update(dtype="float99"), "field 'dtype' must be one of"),
    (lambda m: m["parts"][0].update(label="bogus"), "label 'bogus' is not a part of a latency table"),
    (lambda m: m["parts"][0].update(label="layer:block1/layer1:T"), "label 'layer:block1/layer1:T' is not a part"),
    (lambda m: m["parts"][1].update(label="layer:block1/layer1:S"), r"\['layer:block1/layer1:S'\] repeated"),
    (lambda m: m["parts"].pop(3), r"\['fixed:input'\] missing"),
    (lambda m: m.update(clip=[4, 32, 32]), r"field 'clip' must be \[frames, height, width, 3\]"),
    (lambda m: m.update(num_classes="4"), "field 'num_classes' must be an integer >= 1"),
    (lambda m: m.update(layer_flops=[]), "field 'layer_flops' must list the 1 timed layers' FLOPs"),
    (lambda m: m["parts"][1].update(label="layer:zzz:ST"), r"\['layer:block1/layer1:ST', 'layer:zzz:S', 'layer:zzz:S\+ST'\] missing"),
])
def test_a_hand_edited_parts_manifest_is_refused_in_one_line_before_any_timing(edit, message, tmp_path):
    from tf_stfusion.latency_device import read_parts

    manifest = _hand_parts(tmp_path)
    (tmp_path / "parts.json").write_text(json.dumps(manifest))
    assert read_parts(str(tmp_path))["parts"] == manifest["parts"]  # the untouched manifest reads
    edit(manifest)
    (tmp_path / "parts.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=f"{tmp_path / 'parts.json'}: .*{message}"):
        read_parts(str(tmp_path))


def test_a_part_its_runtime_cannot_run_is_refused_in_one_line_naming_its_file(tmp_path):
    from tf_stfusion.latency_device import time_exported_parts

    (tmp_path / "parts.json").write_text(json.dumps(_hand_parts(tmp_path)))  # empty files: not a LiteRT model
    with pytest.raises(ValueError, match=f"{tmp_path / 'part000.tflite'}: part 'layer:block1/layer1:S' does not run "
                                         r"in litert on inputs \[\[4, 32, 32, 3\]\] float32 \(\w+: .*\); copy the folder again"):
        time_exported_parts(str(tmp_path), repeats=1)


def test_parts_written_into_an_earlier_export_replace_it_and_a_foreign_folder_is_refused(tmp_path, monkeypatch):
    """An earlier export's files (more parts, the other runtime's) must not outlive the new one: a device would
    otherwise copy them along, and an interrupted export would leave the old manifest naming new files."""
    class Runtime:  # converts nothing: the folder's bookkeeping is under test, not the conversion
        name, extension, precision, method = "litert", ".tflite", "float32", "m"

        def convert(self, fn, specs, model):
            return b"new"

    monkeypatch.setattr(latency, "table_parts", lambda *a: [latency.Part("call_overhead", None, [(4, 8, 8, 3)],
                                                                         "float32", None)])
    monkeypatch.setattr(latency, "table_flops", lambda *a: ([], {}))
    folder = tmp_path / "parts"
    folder.mkdir()
    for name in ("parts.json", "part000.tflite", "part030.tflite", "part001.onnx"):
        (folder / name).write_text("old")
    latency.export_parts("tiny", 4, (4, 8, 8, 3), Runtime(), str(folder), log=lambda _: None)
    assert sorted(p.name for p in folder.iterdir()) == ["part000.tflite", "parts.json"]
    assert (folder / "part000.tflite").read_bytes() == b"new"
    assert json.loads((folder / "parts.json").read_text())["parts"][0]["file"] == "part000.tflite"
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"--parts_dir=.*parts: holds \['notes.txt'\], not an earlier parts export"):
        latency.export_parts("tiny", 4, (4, 8, 8, 3), Runtime(), str(folder), log=lambda _: None)
    assert (folder / "notes.txt").read_text() == "mine" and (folder / "parts.json").exists()
    with pytest.raises(ValueError, match=r"--parts_dir=.*notes.txt: a file, not a folder"):
        latency.export_parts("tiny", 4, (4, 8, 8, 3), Runtime(), str(folder / "notes.txt"), log=lambda _: None)


@pytest.mark.parametrize("runtime,package", [("onnxruntime", "onnxruntime"), ("litert", "ai-edge-litert")])
def test_parts_of_a_runtime_not_installed_name_the_package_to_install(runtime, package, tmp_path, monkeypatch):
    import importlib.metadata

    from tf_stfusion.latency_device import time_exported_parts

    def not_installed(name):  # what importlib.metadata says on a device without the package
        raise importlib.metadata.PackageNotFoundError(name)

    (tmp_path / "parts.json").write_text(json.dumps({**_hand_parts(tmp_path), "runtime": runtime}))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # importing it fails, as where it is not installed
    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    with pytest.raises(ValueError, match=f"the parts are for {runtime}, whose package {package} is not installed "
                                         f"here .*; pip install {package}$"):
        time_exported_parts(str(tmp_path), repeats=1)
