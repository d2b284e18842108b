"""Export: pruned network parity with the template, SavedModel for TF Serving,
ONNX Runtime, the cost accounting's parameter count, refusals, cleanup."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import tf_stfusion as stf
from tf_stfusion.export import checks, staging
from tf_stfusion.export import config as export_config
from tf_stfusion.export.main import ExportConfig, ExportError, export
from tf_stfusion.models.prune import prune

MIXED = ["S", "none", "ST", "S+ST", "none", "none", "ST", "S"]


def _strategy_file(tmp_path, units, backbone="tiny"):
    path = tmp_path / "strategy.json"
    if isinstance(units, str):
        stf.Strategy.uniform(units, backbone).save(str(path))
    else:
        stf.Strategy.from_units(backbone, units).save(str(path))
    return str(path)


@pytest.mark.parametrize("units", ["S", "ST", "S+ST", "mixed"])
def test_export_passes_every_parity_check(trained_run, tmp_path, units):
    out = tmp_path / "out"
    strategy_file = _strategy_file(tmp_path, MIXED if units == "mixed" else units)
    report = export(ExportConfig(strategy_file=strategy_file, model_dir=trained_run, export_dir=str(out)),
                    log=lambda *a: None)
    assert set(report["parity"]) == {"keras_pruned_vs_template_fixed", "saved_model_vs_keras_pruned",
                                     "onnx_runtime_vs_keras_pruned"}
    for check in report["parity"].values():
        assert check["output"] == "logits" and check["passed"] and check["max_abs_diff"] <= 1e-4 * check["scale"]
    on_disk = json.loads((out / "export_report.json").read_text())
    assert on_disk["parity"] == report["parity"]
    # The pruned network is smaller exactly as the cost accounting predicts.
    assert report["pruned"]["params"] <= report["template"]["params"]
    if units == "S+ST":
        assert report["pruned"]["params"] == report["template"]["params"]
    version = out / "stfusion" / "1"
    loaded = tf.saved_model.load(str(version))
    sig = loaded.signatures["serving_default"]
    assert set(sig.structured_outputs) == {"probabilities", "top_k", "labels", "logits"}
    video = np.random.default_rng(5).integers(0, 256, (1, 8, 32, 32, 3), dtype=np.uint8)
    result = sig(video=tf.constant(video))
    assert result["labels"].shape == (1, 5) and (version / "assets" / "labels.txt").is_file()
    # No gate or mask is left in the exported graph; dropped paths' weights are not in the file.
    graph = str(loaded.signatures["serving_default"].graph.as_graph_def())
    assert "drop_logit" not in graph and "fixed_mask" not in graph
    names = [n for n, _ in tf.train.list_variables(str(version / "variables" / "variables"))]
    assert not any("gate" in n for n in names)


def test_pruned_model_drops_paths_and_matches_cost_accounting(trained_run):
    template = stf.build_template("tiny", num_classes=8, num_frames=8, input_size=32)
    done = json.loads(open(f"{trained_run}/search/done.json").read())
    tf.train.Checkpoint(model=template).restore(f"{trained_run}/search/{done['checkpoint']}").expect_partial()
    for units in (["S"] * 8, ["ST"] * 8, MIXED):
        strategy = stf.Strategy.from_units("tiny", units)
        stf.apply_strategy(template, strategy)
        pruned = prune(template, strategy)
        layer_names = {layer.name for layer in pruned.layers}
        assert not any("gate" in n for n in layer_names)
        for name, unit in zip(stf.layer_names("tiny"), units):
            prefix = name.replace("/", "_")
            assert (f"{prefix}_s_conv" in layer_names) == (unit in ("S", "S+ST"))
            assert (f"{prefix}_st_conv" in layer_names) == (unit in ("ST", "S+ST"))
            assert (f"{prefix}_conv" in layer_names) == (unit != "none")
        cost = stf.cost(template, strategy, input_shape=(8, 32, 32, 3))
        assert pruned.count_params() == cost.params_with_bn_stats
        assert sum(int(np.prod(v.shape)) for v in pruned.trainable_weights) == cost.params
        x = np.random.default_rng(1).normal(size=(2, 8, 32, 32, 3)).astype("float32")
        ref = template(x, training=False).numpy()
        np.testing.assert_allclose(pruned(x, training=False).numpy(), ref, atol=1e-4 * max(1, np.abs(ref).max()))


def test_refusals_leave_nothing_behind(trained_run, tmp_path, monkeypatch):
    out = tmp_path / "out"
    other = _strategy_file(tmp_path, "ST", backbone="densenet121")
    with pytest.raises(ExportError, match="backbone 'densenet121'"):
        export(ExportConfig(strategy_file=other, model_dir=trained_run, export_dir=str(out)))
    assert not out.exists()
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ExportError, match="bad.json"):
        export(ExportConfig(strategy_file=str(tmp_path / "bad.json"), model_dir=trained_run, export_dir=str(out)))
    good = _strategy_file(tmp_path, "S")
    # A checkpoint of another template does not match.
    foreign = stf.build_template("tiny", num_classes=3, num_frames=8, input_size=32)
    prefix = tf.train.Checkpoint(model=foreign).write(str(tmp_path / "foreign" / "ckpt"))
    with pytest.raises(ExportError, match="does not match"):
        export(ExportConfig(strategy_file=good, model_dir=trained_run, export_dir=str(out), checkpoint=prefix))
    # A failed parity check removes everything it wrote.
    monkeypatch.setattr(checks, "TOLERANCE", -1.0)
    with pytest.raises(ExportError, match="parity check"):
        export(ExportConfig(strategy_file=good, model_dir=trained_run, export_dir=str(out)), log=lambda *a: None)
    assert os.listdir(out) == []
    monkeypatch.undo()
    # An existing version is refused unless --overwrite.
    config = ExportConfig(strategy_file=good, model_dir=trained_run, export_dir=str(out), formats=("saved_model",))
    export(config, log=lambda *a: None)
    with pytest.raises(ExportError, match="exists"):
        export(config)
    export(ExportConfig(**{**config.__dict__, "overwrite": True}), log=lambda *a: None)


def test_cli_and_saved_model_cli(trained_run, tmp_path):
    out = tmp_path / "out"
    strategy_file = _strategy_file(tmp_path, MIXED)
    proc = subprocess.run([sys.executable, "-m", "tf_stfusion.export.main", f"--strategy={strategy_file}",
                           f"--model_dir={trained_run}", f"--export_dir={out}", "--model_name=demo", "--version=3"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "parity onnx_runtime_vs_keras_pruned" in proc.stdout
    show = subprocess.run(["saved_model_cli", "show", "--dir", str(out / "demo" / "3"), "--tag_set", "serve",
                           "--signature_def", "serving_default"], capture_output=True, text=True, timeout=120)
    assert show.returncode == 0, show.stderr[-2000:]
    assert "inputs['video']" in show.stdout and "DT_UINT8" in show.stdout
    assert "outputs['probabilities']" in show.stdout and "outputs['top_k']" in show.stdout
    import onnx

    model = onnx.load(str(out / "demo.onnx"))
    assert model.opset_import[0].version >= 17
    assert [i.name for i in model.graph.input] == ["video"]
    assert {o.name for o in model.graph.output} == {"probabilities", "top_k", "logits"}
    assert json.loads({p.key: p.value for p in model.metadata_props}["class_names"])[0] == "move_right"


def test_onnx_client_example_classifies_a_video(trained_run, tmp_path):
    from tf_stfusion.data import synthetic
    from tf_stfusion.data.video import write_video

    out = tmp_path / "out"
    export(ExportConfig(strategy_file=_strategy_file(tmp_path, "ST"), model_dir=trained_run, export_dir=str(out),
                        formats=("onnx",)), log=lambda *a: None)
    config = synthetic.SyntheticConfig(num_frames=12, size=48)
    _, frames, _ = synthetic.render_clip(config, "val", 0)
    write_video(str(tmp_path / "clip.mp4"), frames)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, os.path.join(repo, "export", "onnx_client.py"), f"--model={out}/stfusion.onnx",
                           f"--video={tmp_path}/clip.mp4"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 5 and all(line.split()[1] in synthetic.MOTION_CLASSES for line in lines)


def test_formats_are_the_writer_table():
    # The CLI's --formats (checked before TensorFlow loads) and the table of writers name the same formats.
    from tf_stfusion.export import writers

    assert tuple(writers.WRITERS) == export_config.FORMATS


def test_folders_are_moved_into_place_last(tmp_path, monkeypatch):
    # TF Serving watches the model folder: a version folder appears only when every file is in place.
    work, parent = tmp_path / "work", tmp_path / "out"
    (work / "m" / "1").mkdir(parents=True)
    (work / "m" / "1" / "saved_model.pb").write_text("pb")
    (work / "m.onnx").write_text("onnx")
    (parent / "m" / "1").mkdir(parents=True)
    (parent / "m" / "1" / "stale.pb").write_text("old")  # --overwrite: the old version goes
    moved, replace = [], os.replace
    monkeypatch.setattr(staging.os, "replace", lambda a, b: (moved.append(os.path.basename(b)), replace(a, b)))
    staging.move_into_place(str(work), str(parent), {"saved_model": "m/1", "onnx": "m.onnx"}, {"ok": 1})
    assert moved[:2] == ["m.onnx", "1"]
    assert sorted(os.listdir(parent / "m" / "1")) == ["saved_model.pb"]
    assert json.loads((parent / "export_report.json").read_text()) == {"ok": 1}


def test_parity_on_logits_catches_a_broken_conversion_of_a_saturated_model(trained_run, tmp_path, monkeypatch):
    """A barely trained network can saturate (logits of order 1e4): every probability
    is 0 or 1, and a check on probabilities reads 0.0 whatever the converted graph
    computes. The check compares logits, so a conversion that is off below the
    softmax fails it. Broken here: ONNX's file is written with the classifier's
    kernel 1% too large."""
    from tf_stfusion.export import writers

    template = stf.build_template("tiny", num_classes=8, num_frames=8, input_size=32)
    done = json.loads(open(f"{trained_run}/search/done.json").read())
    tf.train.Checkpoint(model=template).restore(f"{trained_run}/search/{done['checkpoint']}").expect_partial()
    dense = template.layers[-1]
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel * 1e4, bias])  # saturate: |logits| ~ 1e3-1e5
    saturated = tmp_path / "saturated" / "ckpt"
    prefix = tf.train.Checkpoint(model=template).save(str(saturated))
    strategy_file = _strategy_file(tmp_path, "S")
    good = export(ExportConfig(strategy_file=strategy_file, model_dir=trained_run, export_dir=str(tmp_path / "ok"),
                               checkpoint=prefix, formats=("onnx",)), log=lambda *a: None)
    scale = good["parity"]["onnx_runtime_vs_keras_pruned"]["scale"]
    assert scale > 1e3 and good["parity"]["onnx_runtime_vs_keras_pruned"]["passed"]

    real_write = writers.write_onnx

    def broken_write(model, contract, path, top_k=5):
        # The file gets a classifier 1% off: a saturated network's softmax and top-1
        # do not move, its logits move by ~1% of their scale (10x the tolerance is 1e-4).
        head = model.layers[-1]
        kernel, bias = head.get_weights()
        head.set_weights([kernel * 1.01, bias])
        try:
            return real_write(model, contract, path, top_k)
        finally:
            head.set_weights([kernel, bias])

    monkeypatch.setitem(writers.WRITERS, "onnx", writers.dataclasses.replace(
        writers.WRITERS["onnx"], write=lambda model, contract, path, name: broken_write(model, contract, path)))
    out = tmp_path / "broken"
    # The broken file's probabilities equal the right ones: a check on them would pass it.
    from tf_stfusion.data.pipeline import InputContract, normalize

    contract = InputContract.from_dict(good["input_contract"], "export report")
    strategy = stf.Strategy.uniform("S", "tiny")
    stf.apply_strategy(template, strategy)
    pruned = prune(template, strategy)
    video = np.random.default_rng(0).integers(0, 256, (2, 8, 32, 32, 3), dtype=np.uint8)
    right = pruned(normalize(tf.constant(video)), training=False).numpy()
    wrong = writers.load_onnx(broken_write(pruned, contract, str(tmp_path / "broken.onnx")))(video)
    np.testing.assert_allclose(wrong["probabilities"], tf.nn.softmax(right).numpy(), atol=1e-6)
    assert np.max(np.abs(wrong["logits"] - right)) > 10 * 1e-4 * scale
    with pytest.raises(ExportError, match="onnx_runtime_vs_keras_pruned"):
        export(ExportConfig(strategy_file=strategy_file, model_dir=trained_run, export_dir=str(out),
                            checkpoint=prefix, formats=("onnx",)), log=lambda *a: None)
    assert not out.exists() or os.listdir(out) == []


def test_ensemble_head_scales_and_abstains_by_hand():
    from tf_stfusion.export.serving import EnsembleHead

    # T = 2: softmax(log p / 2) = sqrt(p) / sum sqrt(p): [0.9, 0.1] -> [0.75, 0.25]; [0.6, 0.4] -> [0.5505, 0.4495].
    head = EnsembleHead(temperature=2.0, threshold=0.7, info={})
    scaled, entropy, abstain = head.apply(tf.constant([[0.9, 0.1], [0.6, 0.4]], tf.float32))
    np.testing.assert_allclose(scaled.numpy(), [[0.75, 0.25], [0.550510, 0.449490]], atol=1e-5)
    np.testing.assert_allclose(entropy.numpy()[0], -(0.75 * np.log(0.75) + 0.25 * np.log(0.25)), atol=1e-5)
    assert abstain.numpy().tolist() == [False, True]
    # A score right at the threshold is kept, as the hold-out fit kept it (calibration's
    # choose_threshold: score >= t); equal logits give exactly 0.5 at T = 1.
    at_threshold = EnsembleHead(temperature=1.0, threshold=0.5, info={}).apply(tf.constant([[0.5, 0.5]]))[2]
    assert at_threshold.numpy().tolist() == [False]


def test_ensemble_export_equals_the_evaluated_ensemble(trained_run, tmp_path):
    """``--ensemble=3``: one SavedModel of the three pruned members whose scores equal
    the search's evaluation of the same three strategies (template in fixed mode,
    mean softmax, the fitted temperature), on random clips and on every val video."""
    import shutil

    from tf_stfusion.calibration import apply_temperature
    from tf_stfusion.data import pipeline
    from tf_stfusion.search import SearchConfig, run_search

    model_dir = str(tmp_path / "run")
    shutil.copytree(trained_run, model_dir)
    run_search(SearchConfig(model_dir=model_dir, num_samples=4, tiles=4, racing="off", progress=False,
                            ensemble_sizes=(3,), target_accuracy=0.5))
    posterior = json.loads(open(f"{model_dir}/strategies/calibration.json").read())
    best, out = f"{model_dir}/strategies/best.json", tmp_path / "out"
    with pytest.raises(ExportError, match="M = 3"):
        export(ExportConfig(strategy_file=best, model_dir=model_dir, export_dir=str(out), formats=("saved_model",),
                            ensemble=2), log=lambda *a: None)
    with pytest.raises(ExportError, match="SavedModel only"):
        export(ExportConfig(strategy_file=best, model_dir=model_dir, export_dir=str(out), ensemble=3))
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(best, alone / "best.json")
    with pytest.raises(ExportError, match="needs the search's calibration.json"):
        export(ExportConfig(strategy_file=str(alone / "best.json"), model_dir=model_dir, export_dir=str(out),
                            formats=("saved_model",), ensemble=3))
    (alone / "calibration.json").write_text('{"models": {}')  # torn
    with pytest.raises(ExportError, match="not a complete calibration.json"):
        export(ExportConfig(strategy_file=str(alone / "best.json"), model_dir=model_dir, export_dir=str(out),
                            formats=("saved_model",), ensemble=3))
    assert not out.exists() or not any(out.iterdir())  # refusals leave nothing behind
    report = export(ExportConfig(strategy_file=best, model_dir=model_dir, export_dir=str(out),
                                 formats=("saved_model",), ensemble=3, check_serving=True), log=lambda *a: None)
    assert all(check["passed"] for check in report["parity"].values())
    assert report["parity"]["served_vs_evaluation"]["max_abs_diff"] <= 1e-4  # every val video, serving_video
    selective = posterior["models"]["ensemble-3"]["selective"]
    assert report["ensemble"]["temperature"] == selective["temperature"]
    assert report["ensemble"]["threshold"] == selective["threshold"]["val"]["threshold"]
    assert report["ensemble"]["latency"]["ensemble_ms"] > 0 and report["ensemble"]["latency"]["opt_ms"] > 0
    loaded = tf.saved_model.load(str(out / "stfusion" / "1"))
    info = json.loads(loaded.signatures["input_contract"]()["ensemble"].numpy())
    assert info["units"] == posterior["member_units"][:3] and info["temperature"] == selective["temperature"]
    # Independently of the export: the template in fixed mode, one member at a time.
    classes = len(report["input_contract"]["class_names"])
    template = stf.build_template("tiny", num_classes=classes, num_frames=8, input_size=32)
    done = json.loads(open(f"{model_dir}/search/done.json").read())
    tf.train.Checkpoint(model=template).restore(f"{model_dir}/search/{done['checkpoint']}").expect_partial()
    video = np.random.default_rng(7).integers(0, 256, (4, 8, 32, 32, 3), dtype=np.uint8)
    x = pipeline.normalize(tf.constant(video))
    softmaxes = []
    for units in info["units"]:
        stf.apply_strategy(template, stf.Strategy.from_units("tiny", units))
        softmaxes.append(tf.nn.softmax(template(x, training=False)).numpy())
    served = loaded.signatures["serving_default"](video=tf.constant(video))
    want = apply_temperature(np.mean(softmaxes, axis=0), info["temperature"])
    np.testing.assert_allclose(served["probabilities"].numpy(), want, atol=1e-5)
    assert served["logits"].shape == (4, 3, classes)
    probs = served["probabilities"].numpy()
    assert np.array_equal(served["abstain"].numpy(), probs.max(axis=1) < info["threshold"])
    np.testing.assert_allclose(served["entropy"].numpy(), -np.sum(probs * np.log(probs), axis=1), atol=1e-5)
    graph = str(loaded.signatures["serving_default"].graph.as_graph_def())
    assert "drop_logit" not in graph and "fixed_mask" not in graph  # pruned members, not the template with masks
