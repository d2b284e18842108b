"""The flag files travel with the package and are found by name from any directory."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from tf_stfusion import configs

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_a_bare_or_old_style_name_resolves_to_the_packaged_file_and_a_real_path_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    packaged = os.path.join(configs.FOLDER, "demo.flags")
    assert configs.names() == ["demo.flags", "k400.flags", "sthv1.flags", "sthv2.flags", "ucf101.flags"]
    assert configs.resolve_flagfiles(["train", "--flagfile=demo.flags", "--epochs=2"]) == \
        ["train", f"--flagfile={packaged}", "--epochs=2"]
    assert configs.resolve_flagfiles(["train", "--flagfile=configs/demo.flags"]) == ["train", f"--flagfile={packaged}"]
    assert configs.resolve_flagfiles(["train", "--flagfile", "k400.flags"])[2].endswith("tf_stfusion/configs/k400.flags")
    assert configs.resolve_flagfiles(["train", "--flagfile=mine.flags"]) == ["train", "--flagfile=mine.flags"]
    (tmp_path / "demo.flags").write_text("--epochs=1\n")
    assert configs.resolve_flagfiles(["train", "--flagfile=demo.flags"]) == ["train", "--flagfile=demo.flags"]


def test_packaged_flag_files_work_from_any_directory_after_a_wheel_install(tmp_path):
    wheels, site, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    # Built from a copy of the sources: setuptools writes build/ next to them.
    source = tmp_path / "source"
    shutil.copytree(REPO / "tf_stfusion", source / "tf_stfusion", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("tf_stfusion-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    env = dict(os.environ, PYTHONPATH=str(site))  # the wheel's copy, not the source tree
    where = subprocess.run([sys.executable, "-c", "import tf_stfusion.configs as c; print(c.FOLDER)"], cwd=elsewhere,
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(site)) and os.path.isfile(os.path.join(where, "demo.flags"))
    # The demo's flags are read (its --num_strategy_samples=100 among them): with a --phase that has no
    # search phase they contradict it, which stops the run before any work.
    result = subprocess.run([sys.executable, "-m", "tf_stfusion.train", "--flagfile=demo.flags", "--phase=nope"],
                            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert "Unable to open flagfile" not in result.stderr
    assert result.returncode == 2 and "--num_strategy_samples samples from a search phase" in result.stderr
    assert not (elsewhere / "runs").exists()


# -- the command-line convention (configs.run_app) -------------------------------------------
# Runs a CLI module as `python -m` does, then says its exit code and whether TensorFlow was imported.
_RUN_AND_REPORT = ("import runpy, sys\n"
                   "sys.argv = sys.argv[1:]\n"
                   "try:\n"
                   "    runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
                   "except SystemExit as e:\n"
                   "    print(e.code, 'tensorflow' in sys.modules)\n")


@pytest.mark.parametrize("module, args, message", [
    ("tf_stfusion.train", ["--model_dir=run", "--batch_size=-1"], "error: --batch_size must be >= 1, got -1"),
    ("tf_stfusion.train", ["--batch_size=abc"], "error: flag --batch_size=abc: invalid literal for int() with base "
                                                 "10: 'abc'"),
    ("tf_stfusion.train", ["--flagfile=missing.flags"], "error: Unable to open flagfile: [Errno 2] No such file or "
                                                        "directory: 'missing.flags'"),
    ("tf_stfusion.train", ["--flagfile=bad.flags"], "error: flag --epochs=ten: invalid literal for int() with base "
                                                    "10: 'ten'"),
    # TrainConfig.validate() with init=imagenet: the inflatable backbones without TensorFlow.
    ("tf_stfusion.train", ["--model_dir=run", "--init=imagenet", "--backbone=tiny"],
     "error: --init=imagenet is available for ['densenet121', 'resnet50'], not tiny"),
    ("tf_stfusion.search", ["--model_dir=run", "--tiles=0"], "error: need --num_samples >= 1, --tiles >= 1, "
     "--max_gflops >= 0, --racing_eta >= 2, --racing_min_videos >= 1, 0 < --target_accuracy <= 1"),
    ("tf_stfusion.search", ["--model_dir=run", "--max_latency_ms=5"], "error: --max_latency_ms needs a "
     "--latency_table to predict it (python -m tf_stfusion.latency_table --model_dir=RUN)"),
    ("tf_stfusion.search", ["--model_dir=run", "--max_latency_ms=-1", "--latency_table=t.json"],
     "error: --max_latency_ms=-1.0: a budget is a positive number of milliseconds (0: no latency budget)"),
    ("tf_stfusion.latency_table", ["--backbone=tiny"], "error: --output is required (where the JSON table goes)"),
    ("tf_stfusion.latency_table", ["--backbone=tiny", "--output=/no-such-folder/t.json"],
     "error: --output=/no-such-folder/t.json: no folder /no-such-folder; create it first"),
    ("tf_stfusion.latency_table", ["--backbone=tiny", "--output=."],
     "error: --output=.: a folder; give the JSON file's path (e.g. ./latency_tensorflow.json)"),
    ("tf_stfusion.export.main", ["--strategy=s.json"], "error: --model_dir, --export_dir required"),
    ("tf_stfusion.compare", ["--model_dir=run", "stray"], "error: unexpected arguments ['stray']; every setting "
                                                          "is a --flag"),
])
def test_a_bad_flag_is_one_line_and_exit_2_before_tensorflow_starts(tmp_path, module, args, message):
    (tmp_path / "bad.flags").write_text("--backbone=tiny\n--epochs=ten\n")
    proc = subprocess.run([sys.executable, "-c", _RUN_AND_REPORT, module, *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["2", "False"], proc.stdout + proc.stderr[-2000:]
    assert proc.stderr.splitlines() == [message]
    assert not (tmp_path / "run").exists()


def test_the_names_checked_before_tensorflow_are_the_registrys():
    # run/config.py holds them so that flags and TrainConfig.validate() need no TensorFlow.
    from tf_stfusion import models
    from tf_stfusion.run import config
    from tf_stfusion.models import inflate

    assert list(config.BACKBONE_NAMES) == sorted(models.BACKBONES)
    assert list(config.IMAGENET_BACKBONES) == sorted(inflate.INFLATABLE)
