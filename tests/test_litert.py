"""LiteRT export: the deploy graph's 2D ops compute the 3D network's function,
builtin-ops-only files at float32 / float16 / int8, the report, the client."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_stfusion as stf
from tf_stfusion.export import litert
from tf_stfusion.deploy import DeployError, Relayout, deploy_model
from tf_stfusion.export.main import ExportConfig, ExportError, export
from tf_stfusion.models.prune import prune

MIXED = ["S", "none", "ST", "S+ST", "none", "none", "ST", "S"]


def _random_stats(model, seed=0):
    """BatchNorm statistics away from (0, 1), so that a wrong fold or order shows."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        if "moving_variance" in w.path:
            w.assign(rng.uniform(0.5, 2.0, w.shape))
        elif "moving_mean" in w.path or "beta" in w.path:
            w.assign(rng.normal(0.0, 0.3, w.shape))


@pytest.mark.parametrize("kernel,strides,padding,groups", [
    ((1, 3, 3), (1, 1, 1), "same", 1),  # the spatial conv of a fusion unit
    ((1, 3, 3), (1, 2, 2), "same", 1),  # strided, odd padding split
    ((3, 1, 1), (1, 1, 1), "same", 1),  # the ST path: a K x 1 conv of [B, T, H*W, C]
    ((5, 7, 7), (1, 2, 2), "valid", 1),  # the stems, after their explicit padding
    ((3, 3, 3), (1, 2, 2), "same", 1),  # the MobileNetV2 stem
    ((1, 3, 3), (1, 2, 2), "same", 8),  # depthwise
    ((1, 3, 3), (1, 1, 1), "same", 4),  # grouped (ResNeXt)
    ((1, 1, 1), (1, 2, 2), "same", 1),  # a strided projection shortcut
])
def test_deployed_conv_is_the_3d_conv(kernel, strides, padding, groups):
    x = tf.random.stateless_normal((2, 6, 9, 10, 8), seed=(1, 2))
    inputs = keras.Input(x.shape[1:])
    conv3d = keras.layers.Conv3D(8, kernel, strides=strides, padding=padding, groups=groups, use_bias=True)
    model = keras.Model(inputs, conv3d(inputs))
    conv3d.bias.assign(tf.random.stateless_normal(conv3d.bias.shape, seed=(3, 4)))
    expected = model(x).numpy()  # XLA-compiled for groups > 1, the reference all the same
    deployed = deploy_model(model)
    np.testing.assert_allclose(deployed(x).numpy(), expected, atol=2e-5, rtol=1e-5)
    # And it writes no 3D op: what LiteRT's builtin set and int8 kernels need.
    graph = tf.function(deployed).get_concrete_function(tf.TensorSpec(x.shape)).graph.as_graph_def()
    assert not {n.op for n in graph.node} & {"Conv3D", "MaxPool3D", "AvgPool3D"}


def test_deploy_refuses_what_has_no_2d_form():
    inputs = keras.Input((4, 8, 8, 3))
    pooled = keras.Model(inputs, keras.layers.MaxPooling3D((2, 2, 2), name="time_pool")(inputs))
    with pytest.raises(DeployError, match="time_pool: a pool over time"):
        deploy_model(pooled)
    strided = keras.Model(inputs, keras.layers.Conv3D(4, (3, 1, 1), strides=(2, 1, 1), name="tconv")(inputs))
    with pytest.raises(DeployError, match="tconv: a temporal stride"):
        deploy_model(strided)


@pytest.mark.parametrize("backbone,units", [("tiny", MIXED), ("mobilenet_v2", "S+ST"), ("densenet121", "S")])
def test_deploy_graph_computes_the_pruned_network(backbone, units):
    # tiny with skipped layers (TemporalBias folds), MobileNetV2 (depthwise, 3x3x3 stem),
    # DenseNet-121 (pools, 5x7x7 stem) -- the three backbones the LiteRT export is for.
    template = stf.build_template(backbone, num_classes=5, num_frames=4, input_size=32)
    _random_stats(template)
    strategy = (stf.Strategy.uniform(units, backbone) if isinstance(units, str)
                else stf.Strategy.from_units(backbone, units))
    stf.apply_strategy(template, strategy)
    pruned = prune(template, strategy)
    deployed = deploy_model(pruned)
    names = {layer.name for layer in deployed.layers if not isinstance(layer, Relayout)}
    assert names == {layer.name for layer in pruned.layers}  # every layer, under its own name
    x = tf.random.stateless_normal((2, 4, 32, 32, 3), seed=(5, 6))
    reference = pruned(x, training=False).numpy()
    scale = max(1.0, float(np.abs(reference).max()))
    assert np.abs(deployed(x, training=False).numpy() - reference).max() <= 1e-4 * scale
    assert not any(isinstance(layer, (keras.layers.MaxPooling3D, keras.layers.AveragePooling3D))
                   and type(layer).__module__.startswith("keras") for layer in deployed.layers)


@pytest.fixture(scope="module")
def lite_export(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("lite")
    strategy_file = str(out / "strategy.json")
    stf.Strategy.from_units("tiny", MIXED).save(strategy_file)
    lines = []
    report = export(ExportConfig(strategy_file=strategy_file, model_dir=trained_run, export_dir=str(out / "out"),
                                 formats=("saved_model", "onnx", "tflite"), quantize=("float16", "int8"),
                                 calibration_clips=8, latency_repeats=2), log=lines.append)
    return out / "out", report, lines


def test_tflite_files_are_builtin_and_match_keras(lite_export):
    out, report, lines = lite_export
    check = report["parity"]["litert_float32_vs_keras_pruned"]
    assert check["passed"] and check["max_abs_diff"] <= 1e-4
    assert report["files"]["tflite"] == "stfusion.tflite"
    for name in ("stfusion.tflite", "stfusion_fp16.tflite", "stfusion_int8.tflite"):
        ops = litert.builtin_ops(str(out / name))
        assert not [op for op in ops if op.startswith("Flex") or op in ("CUSTOM", "DELEGATE")], (name, ops)
        assert not ops & {"CONV_3D", "CONV_3D_TRANSPOSE"}, (name, ops)
        contract = json.loads(litert.read_metadata(str(out / name)))
        assert contract["class_names"][0] == "move_right" and contract["num_frames"] == 8
        runner = litert.interpreter(str(out / name))
        detail = runner.get_signature_runner("serving_default").get_input_details()["video"]
        assert list(detail["shape"]) == [1, 8, 32, 32, 3] and detail["dtype"] == np.uint8
    sizes = {name: entry["bytes"] for name, entry in report["litert"]["files"].items()}
    assert sizes["tflite_int8"] < sizes["tflite_float16"] < sizes["tflite"]
    assert report["litert"]["int8_ops"]["int8"] > 0
    assert report["litert"]["calibration"]["clips"] == 8
    assert "hold-out" in report["litert"]["calibration"]["videos"]


def test_deploy_graph_reshapes_only_around_temporal_convs(lite_export):
    # tiny's MIXED strategy, worked out by hand: ST paths in layers 3, 4 (S+ST) and 7,
    # one 3x1x1 conv in each of the 3 transitions -> 6 temporal convs, 2 RESHAPEs each
    # (frames -> [B, T, H*W, C] and back); the stem's stacked frames -> frames: 1; the
    # head's pool reads [B, T, H*W, C]: 1. Per-layer reshaping (the old graph) made 45+.
    out, _, _ = lite_export
    for name in ("stfusion.tflite", "stfusion_int8.tflite"):
        ops = litert.op_counts(str(out / name))
        assert ops["RESHAPE"] == 6 * 2 + 1 + 1, (name, ops)
        assert "AVERAGE_POOL_2D" not in ops  # no int8 kernel in XNNPACK: a depthwise conv instead
        # Every BatchNorm folded into its conv or a 1x1 depthwise conv: the only MULs left
        # are the input normalisation's two ((x / 255 - mean) / std).
        assert ops["MUL"] == 2, (name, ops)
    # One XNNPACK partition in float; in int8 one more only for the softmax's tail (no int8
    # SOFTMAX in XNNPACK). The per-layer graph took 5.
    assert litert.delegate_partitions(str(out / "stfusion.tflite"), 1) == 1
    assert litert.delegate_partitions(str(out / "stfusion_int8.tflite"), 1) <= 2


def test_quantized_top1_is_reported_paired_with_the_float_model(lite_export, trained_run):
    from tf_stfusion.run.folder import RunFolder
    from tf_stfusion.run.inputs import open_inputs

    out, report, lines = lite_export
    accuracy = report["litert"]["accuracy"]
    assert accuracy["reference"] == "saved_model" and accuracy["split"] == "val"
    top1 = accuracy["top1"]
    assert set(top1) == {"saved_model", "onnx", "tflite", "tflite_float16", "tflite_int8"}
    n = top1["saved_model"]["n"]
    assert n == len(open_inputs(RunFolder(trained_run).config()).source.val_examples)  # every validation video
    for name, entry in top1.items():
        low, high = entry["ci"]
        assert 0 <= low <= entry["value"] <= high <= 1 and entry["n"] == n
        if name != "saved_model":
            d = entry["vs_reference"]
            assert d["diff"] == pytest.approx(entry["value"] - top1["saved_model"]["value"])
            assert d["ci"][0] <= d["diff"] <= d["ci"][1]
    for name in ("onnx", "tflite"):  # float parity: the same answers on every video
        assert top1[name]["vs_reference"]["only_a"] == top1[name]["vs_reference"]["only_b"] == 0
    for name in ("saved_model", "onnx", "tflite", "tflite_float16", "tflite_int8"):
        assert report["litert"]["files"][name]["latency_ms_batch1"] > 0
    assert any(line.strip().startswith("tflite_int8:") and "saved_model" in line for line in lines)
    on_disk = json.loads((out / "export_report.json").read_text())
    assert on_disk["litert"]["accuracy"]["top1"]["tflite_int8"]["n"] == n


def test_calibration_reads_the_holdout_not_the_report_split(trained_run):
    from tf_stfusion.export.checks import calibration_clips
    from tf_stfusion.run.folder import RunFolder
    from tf_stfusion.run.inputs import open_inputs

    folder = RunFolder(trained_run)
    record = folder.record()
    run, contract = record.config, record.contract
    clips, where = calibration_clips(run, contract, 100)
    held = json.loads(open(folder.holdout_path).read())["videos"]  # what training held out (holdout.json)
    assert len(clips) == len(held) and "hold-out" in where  # fewer videos than asked: all of them
    assert sorted(open_inputs(run).holdout) == sorted(v for v, _ in held)  # the run's data side: its hold-out
    assert clips[0].shape == (8, 32, 32, 3) and clips[0].dtype == np.uint8
    assert len(calibration_clips(run, contract, 3)[0]) == 3
    # A run that selected on val never held videos out: its training videos calibrate.
    import dataclasses

    on_val = dataclasses.replace(run, data=dataclasses.replace(run.data, select_split="val"))
    clips, where = calibration_clips(on_val, contract, 100)
    assert len(clips) == len(open_inputs(run).source.train_examples) and "selected on val" in where


def test_litert_refusals(trained_run, tmp_path):
    strategy_file = str(tmp_path / "s.json")
    stf.Strategy.uniform("S", "tiny").save(strategy_file)
    with pytest.raises(ExportError, match="add tflite to --formats"):
        export(ExportConfig(strategy_file=strategy_file, model_dir=trained_run, export_dir=str(tmp_path / "o"),
                            quantize=("int8",)))
    with pytest.raises(ExportError, match="--quantize: unknown"):
        export(ExportConfig(strategy_file=strategy_file, model_dir=trained_run, export_dir=str(tmp_path / "o"),
                            formats=("tflite",), quantize=("int4",)))
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a model")
    with pytest.raises(litert.LiteRTError, match="not a LiteRT"):
        litert.read_metadata(str(bad))


def test_litert_client_classifies_a_video(lite_export, tmp_path):
    from tf_stfusion.data import synthetic
    from tf_stfusion.data.video import write_video

    out, _, _ = lite_export
    config = synthetic.SyntheticConfig(num_frames=12, size=48)
    _, frames, _ = synthetic.render_clip(config, "val", 0)
    write_video(str(tmp_path / "clip.mp4"), frames)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(repo, "export", "litert_client.py")
    proc = subprocess.run([sys.executable, script, f"--model={out}/stfusion_int8.tflite", f"--video={tmp_path}/clip.mp4"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 5 and all(line.split()[1] in synthetic.MOTION_CLASSES for line in lines)
    # Its answer is the float file's on the same clips, averaged over the views.
    sys.path.insert(0, os.path.join(repo, "export"))
    try:
        import litert_client
    finally:
        sys.path.pop(0)
    top = litert_client.classify(str(out / "stfusion.tflite"), str(tmp_path / "clip.mp4"))
    from tf_stfusion.export import client

    contract = client.contract_from_json(litert.read_metadata(str(out / "stfusion.tflite")))
    clips = client.contract_clips(str(tmp_path / "clip.mp4"), contract)
    loaded = tf.saved_model.load(str(out / "stfusion" / "1")).signatures["serving_default"]
    expected = loaded(video=tf.constant(clips))["probabilities"].numpy().mean(axis=0)
    assert top[0][1] == contract.class_names[int(np.argmax(expected))]
    assert top[0][0] == pytest.approx(float(expected.max()), abs=1e-4)
    bad = subprocess.run([sys.executable, script, f"--model={tmp_path}/missing.tflite", f"--video={tmp_path}/clip.mp4"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("error:") and "missing.tflite" in bad.stderr


def test_a_file_with_non_builtin_ops_is_refused(monkeypatch):
    # The converter is asked for builtin ops only; the written file is checked all the same.
    from tf_stfusion.data.pipeline import InputContract

    template = stf.build_template("tiny", num_classes=3, num_frames=4, input_size=32)
    strategy = stf.Strategy.uniform("S", "tiny")
    stf.apply_strategy(template, strategy)
    contract = InputContract(num_frames=4, frame_stride=1, sampler="dense", eval_clips=1, eval_size=32,
                             class_names=("a", "b", "c"))
    from tf_stfusion import litert as converter  # convert's own module (the export re-exports it)

    monkeypatch.setattr(converter, "builtin_ops", lambda flat: {"CONV_2D", "FlexAvgPool3D"})
    with pytest.raises(litert.LiteRTError, match=r"non-builtin ops \['FlexAvgPool3D'\]"):
        litert.convert(prune(template, strategy), contract)
