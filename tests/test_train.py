"""The first training entry point: warm-up then search on random clips."""

import json
import subprocess
import sys


def test_train_runs_both_phases_and_writes_probabilities(tmp_path):
    cmd = [
        sys.executable, "-m", "tf_stfusion.train", f"--model_dir={tmp_path}",
        "--warmup_steps=2", "--search_steps=3", "--batch_size=4", "--learning_rate=0.05",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "probabilities.json").read_text())
    assert len(data["gates"]) == 24 and len(data["layers"]) == 8
    # The search phase trained the drop probabilities away from their initial 0.1.
    assert any(abs(g["p"] - 0.1) > 1e-4 for g in data["gates"])
    assert all(0 < g["p"] < 1 for g in data["gates"])


def test_train_refuses_stray_arguments(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tf_stfusion.train", f"--model_dir={tmp_path}", "extra"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0 and "unexpected arguments" in proc.stderr
