"""Training: phases, regulariser, fixed strategies, resume after kill -9,
MirroredStrategy vs one device, a two-process MultiWorkerMirroredStrategy run."""

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_stfusion as stf
from tf_stfusion.data import sources, synthetic
from tf_stfusion.gating import drop_probabilities, gate_layers
from tf_stfusion.run.config import DataConfig, TrainConfig, TrainError
from tf_stfusion.trainer import Trainer

from conftest import hand_regularizer

# 32 training and 32 validation clips in 2 + 2 shards (two workers get one each).
SMALL = synthetic.SyntheticConfig(videos_per_class=4, val_videos_per_class=4, num_frames=8, size=32)
SMALL_FLAGS = ["--synthetic_videos_per_class=4", "--synthetic_val_videos_per_class=4",
               "--synthetic_frames=8", "--synthetic_size=32"]


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("synthetic"))
    sources.ensure_synthetic(SMALL, folder, progress=False)
    return folder


def small_config(model_dir, synth_dir, **overrides):
    data = DataConfig(data_dir=synth_dir, num_frames=8, input_size=32, synthetic_config=SMALL)
    settings = dict(model_dir=str(model_dir), data=data, backbone="tiny", batch_size=8, warmup_epochs=1,
                    epochs=1, steps_per_epoch=2, learning_rate=0.05, progress=False, checkpoint_every=1,
                    # N is tiny here, so any k's prior is far above the pre-flight's stop; these tests are
                    # about other things (the pre-flight's own tests set it back).
                    override_preflight=True)
    settings.update(overrides)
    return TrainConfig(**settings)


def cli(model_dir, synth_dir, *extra):
    return [sys.executable, "-m", "tf_stfusion.train", f"--model_dir={model_dir}", "--dataset=synthetic",
            f"--data_dir={synth_dir}", *SMALL_FLAGS, "--backbone=tiny", "--num_frames=8",
            "--input_size=32", "--batch_size=8", "--steps_per_epoch=2", "--learning_rate=0.05",
            "--progress=false", "--override_preflight", *extra]


def fixed_batch(seed=0, batch=8):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, 8, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 8, size=batch).astype("int32")
    return x, y


def weights_equal(a, b):
    return all(np.array_equal(u, v) for u, v in zip(a.get_weights(), b.get_weights()))


def test_warmup_then_search_continues_from_warmup_weights(tmp_path, synth_dir):
    warm = Trainer(small_config(tmp_path, synth_dir, phases=("warmup",)))
    warm.run()
    assert (tmp_path / "warmup" / "done.json").is_file()
    assert set(json.loads((tmp_path / "metrics.json").read_text())) >= {"top1", "top5"}

    search = Trainer(small_config(tmp_path, synth_dir, phases=("search",), epochs=2))
    state = search.setup_phase("search")
    assert state.how.startswith("weights from") and "warmup" in state.how and int(state.step) == 0
    assert weights_equal(search.model, warm.model)  # the search starts at the warm-up's end
    # Gate logits are trained only now.
    gate_vars = {id(g.drop_logit) for g in gate_layers(search.model)}
    assert gate_vars <= {id(v) for v in state.variables}
    assert not gate_vars & {id(v) for v in warm.setup_phase("warmup").variables}

    before = drop_probabilities(search.model).numpy()
    search.run()
    after = drop_probabilities(search.model).numpy()
    assert np.abs(after - before).max() > 1e-4
    probs = json.loads((tmp_path / "probabilities.json").read_text())
    assert len(probs["gates"]) == 24 and len(probs["layers"]) == 8
    np.testing.assert_allclose([g["p"] for g in probs["gates"]], after, rtol=1e-5)
    # The TensorBoard logs hold the gates' p and the regulariser.
    assert os.listdir(tmp_path / "logs" / "search")


def _one_step(trainer, phase, batch):
    state = trainer.setup_phase(phase)
    step = trainer.make_step(state)
    x, y = batch
    return step(tf.constant(x), tf.constant(y)).numpy()


def test_regularizer_is_in_the_search_loss(tmp_path, synth_dir):
    Trainer(small_config(tmp_path, synth_dir, phases=("warmup",))).run()
    gated_norms = {}
    for k in (0.01, 20.0):
        trainer = Trainer(small_config(tmp_path, synth_dir, phases=("search",), length_scale=k, weight_decay=0.0,
                                       prior_form="paper"))
        trainer.setup_phase("search")
        model = trainer.model
        kernels = [model.get_layer(g.feeds).kernel for g in gate_layers(model)]
        # N of Eq. 5 is the number of clips trained on: the training split minus the selection hold-out.
        inputs = trainer.context.inputs
        assert inputs.num_train == inputs.source.num_train - len(inputs.holdout) > 0
        expected_reg = hand_regularizer(model, k, inputs.num_train)  # Eq. 5 by hand (conftest)
        before = sum(float(tf.reduce_sum(tf.square(w))) for w in kernels)
        loss, reg, _ = _one_step(trainer, "search", fixed_batch())
        assert reg == pytest.approx(expected_reg, rel=1e-4)  # the step's loss carried Eq. 5
        gated_norms[k] = sum(float(tf.reduce_sum(tf.square(w))) for w in kernels) / before
    # k^2/(2N) * (1 - p) * ||w||^2 pulls the gated kernels towards 0, strongly for k = 20.
    assert gated_norms[20.0] < 0.5 * gated_norms[0.01]


def test_fixed_strategy_trains_only_the_kept_paths(tmp_path, synth_dir):
    strategy = stf.Strategy.uniform("S", "tiny")
    trainer = Trainer(small_config(tmp_path, synth_dir, phases=("fixed",), strategy=strategy, epochs=1))
    names = [layer.name for layer in trainer.model.layers]
    assert not [n for n in names if n.startswith("block") and "_st_" in n]  # no ST path at all
    assert not gate_layers(trainer.model)
    before = [w.copy() for w in trainer.model.get_weights()]
    metrics = trainer.run()
    assert metrics["strategy"] == ["S"] * 8 and metrics["phase"] == "fixed"
    kernels = [i for i, v in enumerate(trainer.model.weights) if v.path.endswith("kernel")]
    after = trainer.model.get_weights()
    assert all(not np.array_equal(before[i], after[i]) for i in kernels)


def test_mirrored_two_devices_matches_one_device(synth_dir, tmp_path, mirrored_two_cpus):
    batch = fixed_batch(seed=3, batch=8)
    results = {}
    for name, strategy in (("one", tf.distribute.OneDeviceStrategy("/cpu:0")),
                           ("mirrored", mirrored_two_cpus)):
        keras.utils.set_random_seed(7)
        trainer = Trainer(small_config(tmp_path / name, synth_dir, phases=("warmup",)), distribution=strategy)
        trainer.model.get_layer("head_dropout").rate = 0.0  # dropout noise differs per replica
        state = trainer.setup_phase("warmup")
        step = trainer.make_step(state)
        dist = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch))
        clips, labels = next(iter(dist))
        results[name] = (step(clips, labels).numpy(), [v.numpy() for v in state.variables])
    assert trainer.context.replicas == 2 and trainer.model.get_layer("stem_bn").synchronized
    np.testing.assert_allclose(results["mirrored"][0], results["one"][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(results["mirrored"][1], results["one"][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_bfloat16_mixed_precision_trains_on_cpu(tmp_path, synth_dir):
    trainer = Trainer(small_config(tmp_path, synth_dir, mixed_precision="bfloat16", steps_per_epoch=1))
    assert trainer.model.get_layer("stem_conv").compute_dtype == "bfloat16"
    metrics = trainer.run()
    assert np.isfinite(metrics["loss"])
    assert keras.config.dtype_policy().name == "float32"  # the global policy was restored


def test_kill_minus_9_then_rerun_resumes_at_the_checkpoint(tmp_path, synth_dir):
    cmd = cli(tmp_path, synth_dir, "--phase=warmup", "--warmup_epochs=60", "--checkpoint_every=3",
              "--keep_checkpoints=100")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 240
    latest = None
    while time.time() < deadline and proc.poll() is None:
        latest = tf.train.latest_checkpoint(str(tmp_path / "warmup"))
        if latest and int(latest.rsplit("-", 1)[1]) >= 6:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    latest = tf.train.latest_checkpoint(str(tmp_path / "warmup"))
    saved_step = int(latest.rsplit("-", 1)[1])
    assert not (tmp_path / "warmup" / "done.json").exists()

    # A restarted trainer stands exactly at that checkpoint.
    config = small_config(tmp_path, synth_dir, phases=("warmup",), warmup_epochs=60)
    trainer = Trainer(config)
    state = trainer.setup_phase("warmup")
    assert state.how == f"resumed from {latest}" and int(state.step) == saved_step
    reader = tf.train.load_checkpoint(latest)
    assert reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE") == saved_step
    reference = stf.build_template("tiny", num_classes=8, num_frames=8, input_size=32)
    tf.train.Checkpoint(model=reference).restore(latest).expect_partial()
    assert weights_equal(trainer.model, reference)

    # The same command again: continues from there and finishes the phase.
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from {latest} (step {saved_step}/120)" in done.stdout
    record = json.loads((tmp_path / "warmup" / "done.json").read_text())
    assert record["step"] == 120
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert "already finished at step 120" in again.stdout  # a finished phase is not redone


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_two_process_multi_worker_run_completes_and_only_the_chief_writes(tmp_path, synth_dir):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    model_dir = tmp_path / "run"
    procs = []
    for index in range(2):
        tmp = tmp_path / f"tmp{index}"
        tmp.mkdir()
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
                   TMPDIR=str(tmp), CUDA_VISIBLE_DEVICES="")
        procs.append(subprocess.Popen(
            cli(model_dir, synth_dir, "--distribution=multi_worker", "--warmup_epochs=1", "--epochs=1",
                "--eval_clips=2", "--num_strategy_samples=4"),
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    assert "MultiWorkerMirroredStrategy with 2 replica(s)" in outputs[0][0]
    assert outputs[1][0].strip() == ""  # the worker reports nothing
    assert (model_dir / "metrics.json").is_file() and (model_dir / "probabilities.json").is_file()
    for phase in ("warmup", "search"):
        assert len(os.listdir(model_dir / "logs" / phase)) == 1  # one event file: the chief's
        assert (model_dir / phase / "done.json").is_file()
    # The worker's share of each checkpoint went to a temporary folder, since removed.
    assert not [p for p in (tmp_path / "tmp1").iterdir() if p.name.startswith("stfusion-worker-ckpt")]
    # The strategy search ran on both workers (each reading its own shards); the chief wrote
    # what a one-device search of the same checkpoint finds.
    from tf_stfusion.search import SearchConfig, read_results, run_search

    plan = [line for line in outputs[0][0].splitlines() if line.startswith("search: ") and " strategies (" in line]
    assert plan and "MultiWorkerMirroredStrategy" in plan[0]
    two = read_results(model_dir / "strategies" / "strategies.jsonl")
    one = run_search(SearchConfig(model_dir=str(model_dir), num_samples=4, output_dir=str(tmp_path / "one"),
                                  progress=False))
    assert [(r["id"], r["correct"], r["top5"]) for r in one.rows] == \
        [(two[r["id"]]["id"], two[r["id"]]["correct"], two[r["id"]]["top5"]) for r in one.rows]
    for r in one.rows:
        assert two[r["id"]]["loss"] == pytest.approx(r["loss"], rel=1e-5)


@pytest.mark.parametrize("extra, message", [
    (["--strategy=S", "--phase=search"], "take no --strategy"),
    (["--phase=fixed"], "needs --strategy"),
    (["--phase=search"], "starts from warm-up weights"),
    (["--strategy=nope.json"], "no such file"),
    (["--lr_steps=5", "--epochs=3"], "lr steps"),
    (["--mixed_precision=float16"], "needs a GPU"),
])
def test_cli_refuses_contradictions_before_work(tmp_path, synth_dir, extra, message):
    # As a user who set no TensorFlow log level runs it (CI exports its own, which would win).
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", stf.DEFAULT_TF_LOG_LEVEL)}
    proc = subprocess.run(cli(tmp_path / "run", synth_dir, *extra), capture_output=True, text=True, timeout=120,
                          env=env)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    # One line: none of TensorFlow's C++ start-up lines (oneDNN, cuda drivers, cuInit 303) either.
    assert len(proc.stderr.splitlines()) == 1, proc.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_verbosity_brings_tensorflows_own_lines_back(tmp_path, synth_dir):
    proc = subprocess.run(cli(tmp_path / "run", synth_dir, "--mixed_precision=float16", "--verbosity=0"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "needs a GPU" in proc.stderr.splitlines()[-1]
    assert "oneDNN custom operations are on" in proc.stderr  # tf_stfusion turns oneDNN on: always said


def test_cli_refuses_a_strategy_file_of_another_backbone(tmp_path, synth_dir):
    path = tmp_path / "s.json"
    stf.Strategy.uniform("ST", "densenet121").save(str(path))
    proc = subprocess.run(cli(tmp_path / "run", synth_dir, f"--strategy={path}"), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "densenet121" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_a_global_batch_that_does_not_split_over_replicas_is_refused(tmp_path, synth_dir, mirrored_two_cpus):
    strategy = mirrored_two_cpus
    with pytest.raises(TrainError, match="not divisible by the 2 replicas"):
        Trainer(small_config(tmp_path, synth_dir, batch_size=7), distribution=strategy)


def test_a_model_dir_of_another_run_is_refused(tmp_path, synth_dir):
    Trainer(small_config(tmp_path, synth_dir, phases=("warmup",))).run()
    with pytest.raises(TrainError, match="holds another run"):
        Trainer(small_config(tmp_path, synth_dir, phases=("fixed",), strategy=stf.Strategy.uniform("S", "tiny")))


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_config_errors_name_fields_and_the_cli_names_flags():
    # Flag names stop at the CLI: the config speaks of its fields, train.py renders its flags.
    import tf_stfusion.train as train_cli

    with pytest.raises(TrainError) as caught:
        TrainConfig(model_dir="x", phases=(), batch_size=0).validate()
    assert str(caught.value) == "phases is empty; give warmup, search, warmup,search or fixed"
    assert train_cli.message(caught.value) == "--phase is empty; give warmup, search, warmup,search or fixed"
    with pytest.raises(TrainError) as caught:
        TrainConfig(model_dir="x", batch_size=0).validate()
    assert str(caught.value) == "batch_size must be >= 1, got 0"
    assert train_cli.message(caught.value) == "--batch_size must be >= 1, got 0"


def _train_cli():
    """``tf_stfusion.train`` with its flags defined: once per process (absl refuses a second
    definition); importing the module defines none."""
    from absl import flags

    import tf_stfusion.train as train_cli

    if "phase" not in flags.FLAGS:
        train_cli.define_flags()
    return train_cli


def test_a_command_line_without_flags_gives_the_dataclass_defaults():
    # One source of defaults: TrainConfig / DataConfig (the paper's recipe); the flags take theirs.
    from absl import flags
    from absl.testing import flagsaver

    train_cli = _train_cli()
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["train", "--model_dir=somewhere"])
        config = train_cli.config_from_flags()
    assert config == TrainConfig(model_dir="somewhere")
    assert (config.backbone, config.batch_size, config.epochs, config.data.input_size) == ("densenet121", 32, 90, 224)


@pytest.mark.parametrize("name, k, batch, epochs, lr, lr_steps", [
    ("k400", 10, 64, 110, 0.01, (40, 80)),
    ("sthv1", 250, 32, 90, 0.005, (40, 60, 80)),
    ("sthv2", 50, 32, 90, 0.005, (40, 60, 80)),
    ("ucf101", 50, 32, 90, 0.005, (40, 60, 80)),
    ("demo", 4, 16, 10, 0.05, (7,)),
])
def test_config_files_hold_the_papers_settings(name, k, batch, epochs, lr, lr_steps):
    from absl import flags
    from absl.testing import flagsaver

    train_cli = _train_cli()
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["train", f"--flagfile={REPO}/tf_stfusion/configs/{name}.flags"])
        config = train_cli.config_from_flags()
    assert (config.length_scale, config.batch_size, config.epochs, config.learning_rate) == (k, batch, epochs, lr)
    assert config.lr_steps == lr_steps and config.phases == ("warmup", "search")
    assert config.warmup_epochs == (15 if name == "demo" else 50)
    assert config.backbone == ("tiny" if name == "demo" else "densenet121")
    assert config.data.dataset == ("synthetic" if name == "demo" else "tfrecord")


# -- the search phase's own step -------------------------------------------------------------
def _search_trainer(name, tmp_path, synth_dir, strategy=None, **overrides):
    keras.utils.set_random_seed(7)
    config = small_config(tmp_path / name, synth_dir, phases=("warmup", "search"), length_scale=5.0, **overrides)
    trainer = Trainer(config, distribution=strategy)
    state = trainer.setup_phase("search")  # from scratch: both trainers start from the same weights
    return trainer, state, trainer.make_step(state)


def test_search_step_on_two_replicas_equals_one_device(synth_dir, tmp_path, mirrored_two_cpus):
    """Gates in search mode (per-sample relaxed Bernoulli noise) and the Eq. 5 term:
    the same loss, regulariser and updates on one device and on two replicas."""
    x, y = fixed_batch(seed=4, batch=8)
    results = {}
    for name, strategy in (("one", tf.distribute.OneDeviceStrategy("/cpu:0")), ("two", mirrored_two_cpus)):
        trainer, state, step = _search_trainer(name, tmp_path, synth_dir, strategy, weight_decay=1e-3)
        clips, labels = next(iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors((x, y)))))
        out = step(clips, labels).numpy()
        results[name] = (out, {v.path: v.numpy() for v in state.variables})
    assert results["one"][0][1] > 0  # the Eq. 5 term is in the loss
    np.testing.assert_allclose(results["two"][0], results["one"][0], rtol=1e-5, atol=1e-6)
    for path, value in results["one"][1].items():
        np.testing.assert_allclose(results["two"][1][path], value, rtol=1e-4, atol=1e-5, err_msg=path)


def test_search_step_decays_every_kernel_but_the_gated_ones(synth_dir, tmp_path):
    """With weight decay wd and lr, the first SGD update of a decayed kernel w moves by
    an extra -lr * wd * w; the kernels the gates drop (found from the graph) get none."""
    from conftest import gate_kernel

    x, y = fixed_batch(seed=5)
    runs = {}
    for wd in (0.0, 0.01):
        trainer, state, step = _search_trainer(f"wd{wd}", tmp_path, synth_dir, weight_decay=wd, learning_rate=0.1)
        before = {v.path: v.numpy() for v in state.variables}
        step(tf.constant(x), tf.constant(y))
        runs[wd] = (before, {v.path: v.numpy() - before[v.path] for v in state.variables}, trainer.model)
    model = runs[0.01][2]
    gated = {gate_kernel(model, g).path for g in gate_layers(model)}
    kernels = [l.kernel.path for l in model.layers if getattr(l, "kernel", None) is not None]
    assert gated and set(kernels) - gated
    before = runs[0.01][0]
    for path in kernels:
        extra = runs[0.01][1][path] - runs[0.0][1][path]
        want = np.zeros_like(extra) if path in gated else -0.1 * 0.01 * before[path]
        np.testing.assert_allclose(extra, want, rtol=2e-3, atol=2e-8, err_msg=path)


def test_learning_rate_steps_at_the_configured_epochs(synth_dir, tmp_path):
    from tf_stfusion.trainer import _current_lr

    trainer = Trainer(small_config(tmp_path, synth_dir, phases=("warmup",), warmup_epochs=3, steps_per_epoch=2,
                                   warmup_lr_steps=(1, 2), learning_rate=0.05))
    state = trainer.setup_phase("warmup")
    step = trainer.make_step(state)
    x, y = fixed_batch(seed=6)
    used = []
    for _ in range(6):
        used.append(float(_current_lr(state.optimizer)))  # what the coming update uses
        step(tf.constant(x), tf.constant(y))
    np.testing.assert_allclose(used, [0.05, 0.05, 0.005, 0.005, 0.0005, 0.0005], rtol=1e-6)
    assert int(state.step) == 6  # the step a checkpoint records and a resume starts from


def test_no_frame_is_mirrored_without_flip(synth_dir, tmp_path):
    from tf_stfusion.data import pipeline
    from tf_stfusion.data.prepare import make_sequence_example

    frames = np.zeros((8, 32, 32, 3), np.uint8)
    frames[:, :, :16] = 255  # the left half bright: a mirrored clip has it on the right
    path = str(tmp_path / "asym.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for i in range(4):
            writer.write(make_sequence_example(f"v{i}", 0, frames, 95).SerializeToString())
    mirrored = {}
    for flip in (False, True):
        ds = pipeline.make_dataset([path], pipeline.ClipSpec(num_frames=8, input_size=24, flip=flip), training=True,
                                   batch_size=4, seed=1, shuffle_buffer=4)
        sides = [(c[..., :12, :].mean() < c[..., 12:, :].mean()) for clips, _ in ds.take(16) for c in clips.numpy()]
        mirrored[flip] = sum(sides)
    assert mirrored[False] == 0 and 10 < mirrored[True] < 54
    # The motion set forbids flips (left/right motions swap under a mirror): the trainer turns them off.
    assert not Trainer(small_config(tmp_path / "run", synth_dir)).context.inputs.flip


# -- the pre-flight before the search phase ----------------------------------------------------
def test_preflight_stops_an_absurd_prior_before_any_search_step_passes_a_sane_one_and_can_be_overridden(
        tmp_path, synth_dir):
    Trainer(small_config(tmp_path, synth_dir, phases=("warmup",))).run()
    search_dir = tmp_path / "search"
    absurd = small_config(tmp_path, synth_dir, phases=("search",), length_scale=1e4, override_preflight=False)
    with pytest.raises(TrainError) as stopped:
        Trainer(absurd).run()
    said = str(stopped.value)
    record = json.loads((search_dir / "preflight.json").read_text())
    assert record["verdict"] == "stop" and record["ratio"] > record["stop_ratio"]
    assert "\n" not in said and f"Eq. 5 term / data loss = {record['ratio']:.3g}" in said
    assert "k = 10000" in said and f"N = {record['num_train']}" in said and "form authors_code" in said
    assert f"k = {record['suggested_length_scale']:.3g} would make it 1" in said
    assert tf.train.latest_checkpoint(str(search_dir)) is None  # no search step was taken
    # The CLI says it in one line and exits 2.
    proc = subprocess.run(cli(tmp_path, synth_dir, "--phase=search", "--length_scale=10000", "--nooverride_preflight"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: pre-flight: ")
    assert tf.train.latest_checkpoint(str(search_dir)) is None
    # A sane k passes (the suggested one makes the ratio about 1 -- the data loss is measured on other
    # random crops -- far below the stop), and the search runs.
    sane = small_config(tmp_path, synth_dir, phases=("search",), length_scale=record["suggested_length_scale"],
                        override_preflight=False)
    Trainer(sane).run_phase("search")
    passed = json.loads((search_dir / "preflight.json").read_text())
    assert 0.5 < passed["ratio"] < 2.0 and passed["verdict"] != "stop" and not passed["overridden"]
    assert (search_dir / "done.json").is_file()
    # The override starts an absurd prior anyway (a fresh search folder).
    shutil.rmtree(search_dir)
    Trainer(dataclasses.replace(absurd, override_preflight=True)).run_phase("search")
    forced = json.loads((search_dir / "preflight.json").read_text())
    assert forced["verdict"] == "stop" and forced["overridden"] and (search_dir / "done.json").is_file()
