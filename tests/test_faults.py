"""Fault injection: damaged shards and checkpoints are detected, named and
recovered from -- a one-line error or a warning, never a traceback, and nothing
good is lost."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tf_stfusion.data import integrity, prepare, synthetic
from tf_stfusion.run.checkpoints import newest_readable
from tf_stfusion.run.config import DataConfig, TrainConfig, TrainError
from tf_stfusion.trainer import Trainer

SMALL = synthetic.SyntheticConfig(videos_per_class=4, val_videos_per_class=2, num_frames=8, size=32)


def _prepare(out, split):
    index = prepare.build_index("synthetic", None, split, synthetic_config=SMALL)
    return prepare.prepare(index, str(out), examples_per_shard=8, num_workers=1, short_side=0, synthetic_config=SMALL,
                           progress=False, command=f"python -m tf_stfusion.data.prepare --split={split} ...")


@pytest.fixture
def shards(tmp_path):
    """Prepared shards (not the self-repairing synthetic cache): 4 train, 2 val."""
    out = tmp_path / "data"
    for split in ("train", "val"):
        _prepare(out, split)
    return out


def _truncate(path, fraction=0.5):
    with open(path, "r+b") as f:
        f.truncate(int(os.path.getsize(path) * fraction))


def _flip(path, at=0.6):
    with open(path, "r+b") as f:
        f.seek(int(os.path.getsize(path) * at))
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))


def _config(model_dir, data_dir, **overrides):
    data = DataConfig(dataset="tfrecord", data_dir=str(data_dir), num_frames=8, input_size=32, eval_clips=1)
    settings = dict(model_dir=str(model_dir), data=data, backbone="tiny", batch_size=8, warmup_epochs=1, epochs=1,
                    steps_per_epoch=3, progress=False, phases=("warmup",), checkpoint_every=1)
    settings.update(overrides)
    return TrainConfig(**settings)


def _cli(model_dir, data_dir, *extra):
    return subprocess.run(
        [sys.executable, "-m", "tf_stfusion.train", f"--model_dir={model_dir}", "--dataset=tfrecord",
         f"--data_dir={data_dir}", "--backbone=tiny", "--num_frames=8", "--input_size=32", "--batch_size=8",
         "--steps_per_epoch=3", "--warmup_epochs=1", "--phase=warmup", "--noprogress", *extra],
        capture_output=True, text=True, timeout=300)


# -- shards ----------------------------------------------------------------------------
def test_prepare_records_sizes_and_checksums(shards):
    manifest = json.loads((shards / "train-manifest.json").read_text())
    assert manifest["command"].startswith("python -m tf_stfusion.data.prepare")
    for name, record in manifest["shard_info"].items():
        path = str(shards / name)
        assert record == {"bytes": os.path.getsize(path), "crc32c": integrity.file_crc32c(path)}
        assert json.loads((shards / f"{name}.done.json").read_text())["crc32c"] == record["crc32c"]


def test_rerunning_prepare_rewrites_only_damaged_or_missing_shards(shards):
    names = json.loads((shards / "train-manifest.json").read_text())["shards"]
    _truncate(shards / names[0])
    _flip(shards / names[1])
    os.remove(shards / names[2])
    untouched = os.stat(shards / names[3]).st_mtime_ns
    _prepare(shards, "train")
    assert os.stat(shards / names[3]).st_mtime_ns == untouched
    manifest = json.loads((shards / "train-manifest.json").read_text())
    files = [str(shards / n) for n in names]
    assert integrity.check_shards(files, manifest["shard_info"], verify=True) == []


def test_a_truncated_or_missing_shard_stops_the_run_at_the_start_with_one_line(shards, tmp_path):
    names = json.loads((shards / "train-manifest.json").read_text())["shards"]
    _truncate(shards / names[1])
    proc = _cli(tmp_path / "run", shards)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert names[1] in line and "expected" in line and "found" in line and "tf_stfusion.data.prepare" in line
    assert not (tmp_path / "run" / "warmup").exists()  # no step was taken
    os.remove(shards / names[1])
    with pytest.raises(integrity.DataError, match=f"{names[1]} is missing"):
        Trainer(_config(tmp_path / "run2", shards))


def test_a_record_damaged_after_the_check_is_named_not_a_traceback(shards, tmp_path):
    """Flipped bytes keep the size: the start check passes, the record then fails to
    read, and the run stops naming the shard (found by its checksum)."""
    names = json.loads((shards / "val-manifest.json").read_text())["shards"]
    trainer = Trainer(_config(tmp_path / "run", shards))
    _flip(shards / names[0], at=0.3)
    with pytest.raises(integrity.DataError, match=rf"{names[0]} is damaged \(checksum"):
        trainer.context.evaluate()
    # --verify_data finds it before the first step.
    with pytest.raises(integrity.DataError, match="checksum: expected"):
        Trainer(_config(tmp_path / "run2", shards, verify_data=True))


def test_skip_corrupt_records_trains_on_what_is_readable_and_counts_the_loss(shards, tmp_path):
    names = json.loads((shards / "train-manifest.json").read_text())["shards"]
    _flip(shards / names[2], at=0.5)
    proc = _cli(tmp_path / "run", shards, "--skip_corrupt_records", "--verify_data")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "skipping" in proc.stdout and names[2] in proc.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    lost = metrics["skipped_records"]
    assert lost["shards"] == {names[2]: lost["videos"]} and 1 <= lost["videos"] <= 8


# -- checkpoints ---------------------------------------------------------------------------
@pytest.fixture
def checkpointed(shards, tmp_path):
    """A warm-up of 3 steps with a checkpoint after each (ckpt-1, ckpt-2, ckpt-3)."""
    config = _config(tmp_path / "run", shards, warmup_epochs=1, steps_per_epoch=3)
    Trainer(config).run_phase("warmup")
    return tmp_path / "run", config


def _truncate_checkpoint(prefix):
    data = [f for f in os.listdir(os.path.dirname(prefix)) if f.startswith(os.path.basename(prefix) + ".data")]
    _truncate(os.path.join(os.path.dirname(prefix), data[0]), 0.3)


def test_resume_skips_an_unreadable_newest_checkpoint_with_a_warning(checkpointed, capsys):
    run, config = checkpointed
    os.remove(run / "warmup" / "done.json")  # as if killed before the phase finished
    _truncate_checkpoint(str(run / "warmup" / "ckpt-3"))
    files = sorted(os.listdir(run / "warmup"))
    trainer = Trainer(config)
    state = trainer.setup_phase("warmup")
    assert state.how.endswith("ckpt-2") and int(state.step) == 2
    out = capsys.readouterr().out
    assert "checkpoint" in out and "ckpt-3 is unreadable" in out and "using the previous one" in out
    assert sorted(os.listdir(run / "warmup")) == files  # nothing was deleted


def test_no_readable_checkpoint_and_search_export_name_the_alternatives(checkpointed):
    from tf_stfusion.run.checkpoints import find_checkpoint

    run, config = checkpointed
    _truncate_checkpoint(str(run / "warmup" / "ckpt-3"))
    with pytest.raises(TrainError, match=r"ckpt-3 is unreadable .*readable ones in that folder: .*ckpt-2"):
        find_checkpoint(str(run / "warmup" / "ckpt-3"), "--checkpoint")
    for prefix in ("ckpt-1", "ckpt-2"):
        _truncate_checkpoint(str(run / "warmup" / prefix))
    with pytest.raises(TrainError, match="no readable checkpoint in .*ckpt-3 .*ckpt-2 .*ckpt-1"):
        newest_readable(str(run / "warmup"))


def test_checkpoints_of_a_run_started_with_a_relative_model_dir_are_found(tmp_path, monkeypatch):
    # TF's checkpoint state file records paths as the manager was given them: relative
    # to the working directory of the process that trained (runs/demo/search/ckpt-400).
    from tf_stfusion.run.checkpoints import checkpoint_chain, find_checkpoint

    monkeypatch.chdir(tmp_path)
    step = tf.Variable(0, dtype=tf.int64)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(step=step), os.path.join("runs", "demo", "search"), 3)
    for n in (1, 2):
        manager.save(checkpoint_number=n)
    for folder in (os.path.join("runs", "demo", "search"), str(tmp_path / "runs" / "demo" / "search")):
        assert [os.path.basename(p) for p in checkpoint_chain(folder)] == ["ckpt-2", "ckpt-1"]
        assert tf.io.gfile.exists(find_checkpoint(folder, "--checkpoint") + ".index")
    monkeypatch.chdir(tmp_path / "runs")  # another working directory than the trainer's
    assert find_checkpoint(os.path.join("demo", "search"), "--checkpoint").endswith(os.path.join("search", "ckpt-2"))


_SAVER = """
import os, sys, tensorflow as tf
big = tf.Variable(tf.random.normal([4096, 2048]))  # 32 MB: a save takes a while
step = tf.Variable(0, dtype=tf.int64)
manager = tf.train.CheckpointManager(tf.train.Checkpoint(big=big, step=step), sys.argv[1], 2)
print("ready", flush=True)
while True:
    step.assign_add(1)
    manager.save(checkpoint_number=int(step))
"""


def test_kill_minus_9_while_saving_never_leaves_a_torn_latest_checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    folder = str(tmp_path / "ckpts")
    for attempt in range(4):
        proc = subprocess.Popen([sys.executable, "-c", _SAVER, folder], stdout=subprocess.PIPE, text=True,
                                env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5 + rng.uniform(0, 1.5))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        latest = tf.train.latest_checkpoint(folder)
        if latest:  # a torn save never becomes "latest"
            reader = tf.train.load_checkpoint(latest)
            assert reader.get_tensor("big/.ATTRIBUTES/VARIABLE_VALUE").shape == (4096, 2048)
    assert tf.train.latest_checkpoint(folder)


def test_kill_minus_9_during_export_leaves_no_version_folder(trained_run, tmp_path):
    """The export writes into a work folder and moves the version folder into place
    last; killed before that, no version folder exists, and the next export removes
    the leftovers and succeeds."""
    import tf_stfusion as stf

    strategy = tmp_path / "s.json"
    stf.Strategy.uniform("ST", "tiny").save(str(strategy))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "tf_stfusion.export.main", f"--strategy={strategy}",
                             f"--model_dir={trained_run}", f"--export_dir={out}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not (out.is_dir() and any(n.startswith(".stfusion-export-")
                                                                  for n in os.listdir(out))):
        time.sleep(0.2)
    time.sleep(1.0)  # inside the work folder, before the move
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "stfusion").exists()
    leftovers = [n for n in os.listdir(out) if n.startswith(".stfusion-export-")]
    assert leftovers
    proc = subprocess.run([sys.executable, "-m", "tf_stfusion.export.main", f"--strategy={strategy}",
                           f"--model_dir={trained_run}", f"--export_dir={out}", "--formats=saved_model"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "left by an export that was killed" in proc.stdout
    assert (out / "stfusion" / "1" / "saved_model.pb").is_file()
    assert not [n for n in os.listdir(out) if n.startswith(".stfusion-export-")]
