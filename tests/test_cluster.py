"""The cluster of a multi-machine run from its environment (TF_CONFIG, a Slurm
step, a Kubernetes Indexed Job), its contradictions, a two-task Slurm run, and a
split prepared by three tasks (one killed and rerun) equal to one machine's."""

import ast
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from test_train import _free_ports, cli, synth_dir  # noqa: F401 -- synth_dir is a fixture
from tf_stfusion import cluster
from tf_stfusion.data import prepare, synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIABLES = ("TF_CONFIG", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_STEP_NODELIST", "SLURM_STEP_TASKS_PER_NODE",
             "SLURM_GPUS_ON_NODE", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN",
             "JOB_COMPLETION_INDEX", cluster.K8S_WORKERS, cluster.K8S_SERVICE)


@pytest.fixture
def env(monkeypatch):
    """A clean environment (no cluster variables, no GPU) to fake one in."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")

    def fake(**variables):
        for name, value in variables.items():
            monkeypatch.setenv(name, str(value))
    return fake


def slurm(procid, nodes="node[1-2]", ntasks=2, per_node="1(x2)"):
    return dict(SLURM_PROCID=procid, SLURM_STEP_NUM_TASKS=ntasks, SLURM_STEP_NODELIST=nodes,
                SLURM_STEP_TASKS_PER_NODE=per_node)


def test_auto_finds_a_slurm_step(env):
    env(**slurm(1))
    found = cluster.resolve("auto", port=7000)
    assert found.source == "slurm"
    assert dict(found.spec) == {"worker": ("node1:7000", "node2:7000")}
    assert (found.task_type, found.task_index, found.chief, found.is_chief) == ("worker", 1, ("worker", 0), False)
    assert found.describe() == ("cluster: slurm: worker 1 of 2 workers [node1:7000, node2:7000], "
                                "chief worker 0 (node1:7000)")


def test_two_slurm_tasks_on_one_node_take_consecutive_ports(env):
    env(**slurm(0, nodes="127.0.0.1", per_node="2"))
    found = cluster.resolve("slurm", port=7000)
    assert dict(found.spec) == {"worker": ("127.0.0.1:7000", "127.0.0.1:7001")}
    assert found.is_chief


@pytest.mark.parametrize("per_node, visible, rank, expected", [
    ("1(x2)", "4,5,6,7", 1, "4,5,6,7"),  # one task per node keeps every GPU Slurm gave it
    ("2", "0,1,2,3", 1, "2,3"),           # two tasks on a node split its four GPUs
])
def test_a_node_splits_its_gpus_only_between_its_own_tasks(env, per_node, visible, rank, expected):
    env(**slurm(rank, nodes="node1" if per_node == "2" else "node[1-2]", per_node=per_node),
        CUDA_VISIBLE_DEVICES=visible)
    cluster.resolve("slurm")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == expected


def test_auto_finds_an_indexed_job(env):
    env(JOB_COMPLETION_INDEX=2, HOSTNAME="k400-2", STFUSION_NUM_WORKERS=4, STFUSION_SERVICE="k400")
    found = cluster.resolve("auto", port=2222)
    assert found.source == "kubernetes"
    assert dict(found.spec) == {"worker": tuple(f"k400-{i}.k400:2222" for i in range(4))}
    assert (found.task_index, found.is_chief) == (2, False)
    # A JobSet's pod names end in the pod's index too: <jobset>-<job>-<job index>-<pod index>.
    env(JOB_COMPLETION_INDEX=0, HOSTNAME="k400-workers-0-0")
    assert cluster.resolve("kubernetes", port=2222).spec[0][1][1] == "k400-workers-0-1.k400:2222"


def test_auto_finds_tf_config_with_a_chief(env):
    env(TF_CONFIG=json.dumps({"cluster": {"worker": ["b:1", "c:1"], "chief": ["a:1"]},
                              "task": {"type": "worker", "index": 1}}))
    found = cluster.resolve("auto")
    assert found.source == "tf_config" and found.num_workers == 3
    assert (found.task_type, found.task_index, found.chief, found.is_chief) == ("worker", 1, ("chief", 0), False)
    assert found.describe().endswith("chief chief 0 (a:1)")


def test_an_explicit_tf_config_inside_a_slurm_step_is_taken_as_given(env):
    env(**slurm(0), TF_CONFIG=json.dumps({"cluster": {"worker": ["10.0.0.5:6000", "10.0.0.6:6000"]},
                                          "task": {"type": "worker", "index": 1}}))
    found = cluster.resolve("tf_config")
    assert (found.source, found.task_index, dict(found.spec)) == \
        ("tf_config", 1, {"worker": ("10.0.0.5:6000", "10.0.0.6:6000")})


def test_nothing_or_none_is_this_machine_alone(env):
    assert cluster.resolve("auto").num_workers == 0
    env(**slurm(1))
    assert cluster.resolve("none").describe() == "cluster: none: this machine alone"


@pytest.mark.parametrize("kind, variables, message", [
    ("auto", dict(slurm(0), TF_CONFIG=json.dumps({"cluster": {"worker": ["node1:1", "elsewhere:1"]},
                                                  "task": {"type": "worker", "index": 0}})),
     r"a Slurm step on node1, node2 has a TF_CONFIG naming other hosts \(elsewhere:1\)"),
    ("auto", slurm(2), "SLURM_PROCID=2 is beyond the step's SLURM_STEP_NUM_TASKS=2"),
    ("auto", dict(JOB_COMPLETION_INDEX=4, HOSTNAME="k400-4", STFUSION_NUM_WORKERS=4),
     "JOB_COMPLETION_INDEX=4 is beyond the 4 worker task"),
    ("auto", dict(JOB_COMPLETION_INDEX=1, HOSTNAME="k400-1"), "set STFUSION_NUM_WORKERS to the Job's completions"),
    ("auto", dict(JOB_COMPLETION_INDEX=1, HOSTNAME="k400", STFUSION_NUM_WORKERS=2), "does not end in -1"),
    ("auto", dict(TF_CONFIG=json.dumps({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker",
                                                                                       "index": 2}})),
     "TF_CONFIG's task index=2 is beyond the 2 worker task"),
    ("auto", dict(slurm(0), JOB_COMPLETION_INDEX=0), "both a Slurm step"),
    ("slurm", {}, "--cluster=slurm but SLURM_PROCID/SLURM_STEP_NUM_TASKS is not set"),
    ("kubernetes", {}, "--cluster=kubernetes but JOB_COMPLETION_INDEX is not set"),
])
def test_contradictions_are_one_line(env, kind, variables, message):
    env(**variables)
    with pytest.raises(cluster.ClusterError, match=message) as error:
        cluster.resolve(kind)
    assert "\n" not in str(error.value)


def test_the_cli_says_a_contradiction_in_one_line(env, tmp_path):
    env(**slurm(0, nodes="127.0.0.1", ntasks=1, per_node="1"), TF_CONFIG=json.dumps(
        {"cluster": {"worker": ["10.0.0.9:2222"]}, "task": {"type": "worker", "index": 0}}))
    proc = subprocess.run([sys.executable, "-m", "tf_stfusion.search", f"--model_dir={tmp_path}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: a Slurm step on 127.0.0.1 has a TF_CONFIG naming other hosts (10.0.0.9:2222): unset TF_CONFIG "
        "(--cluster=slurm resolves the step), or pass --cluster=tf_config if it is right (Ray inside a Slurm "
        "allocation)")


def test_task_share_from_flags_a_job_array_or_an_indexed_job(env):
    assert cluster.task_share() == (1, 0)
    env(SLURM_ARRAY_TASK_ID=11, SLURM_ARRAY_TASK_MIN=10, SLURM_ARRAY_TASK_COUNT=3)
    assert cluster.task_share() == (3, 1)
    assert cluster.task_share(4, 3) == (4, 3)
    with pytest.raises(cluster.ClusterError, match=r"task index 1 \(SLURM_ARRAY_TASK_ID\) is beyond --num_tasks=1"):
        cluster.task_share(num_tasks=1)
    for name in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_COUNT"):
        os.environ.pop(name)
    env(JOB_COMPLETION_INDEX=2, STFUSION_NUM_WORKERS=5)
    assert cluster.task_share() == (5, 2)


def test_two_slurm_tasks_train_together(env, tmp_path, synth_dir):  # noqa: F811
    """Two processes started as srun would start two tasks on one node (faked
    step variables, 127.0.0.1 ports) train a tiny model for two steps."""
    port = _free_ports(1)[0]  # the second task takes port + 1
    model_dir = tmp_path / "run"
    procs = []
    for rank in range(2):
        (tmp_path / f"tmp{rank}").mkdir()
        task_env = dict(os.environ, **{k: str(v) for k, v in slurm(rank, nodes="127.0.0.1", per_node="2").items()},
                        TMPDIR=str(tmp_path / f"tmp{rank}"))
        procs.append(subprocess.Popen(
            cli(model_dir, synth_dir, "--cluster=slurm", f"--cluster_port={port}", "--phase=warmup",
                "--warmup_epochs=1", "--eval_clips=1"),
            env=task_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        outputs = [p.communicate(timeout=400) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    lines = [[line for line in err.splitlines() if line.startswith("cluster: ")] for _, err in outputs]
    workers = f"of 2 workers [127.0.0.1:{port}, 127.0.0.1:{port + 1}], chief worker 0 (127.0.0.1:{port})"
    assert lines == [[f"cluster: slurm: worker 0 {workers}"], [f"cluster: slurm: worker 1 {workers}"]]
    assert "MultiWorkerMirroredStrategy with 2 replica(s)" in outputs[0][0]
    assert json.loads((model_dir / "warmup" / "done.json").read_text())["step"] == 2


# -- a split prepared by three tasks -------------------------------------------------
TASKS = synthetic.SyntheticConfig(videos_per_class=3, val_videos_per_class=1, num_frames=8, size=96)
TASK_FLAGS = ["--dataset=synthetic", "--synthetic_videos_per_class=3", "--synthetic_val_videos_per_class=1",
              "--synthetic_frames=8", "--synthetic_size=96", "--examples_per_shard=2", "--num_workers=1"]


def _prepare(out, **share):
    index = prepare.build_index("synthetic", None, "train", synthetic_config=TASKS)
    return prepare.prepare(index, str(out), examples_per_shard=2, num_workers=1, short_side=0,
                           synthetic_config=TASKS, progress=False, **share)


def _files(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def test_three_tasks_one_killed_and_rerun_equal_one_machine(env, tmp_path):
    _prepare(tmp_path / "one")
    split = tmp_path / "three"
    _prepare(split, num_tasks=3, task_index=0)
    # Task 1 comes from a Slurm job array's index, is killed midway and started again.
    task_env = dict(os.environ, SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_TASK_COUNT="3")
    cmd = [sys.executable, "-m", "tf_stfusion.data.prepare", f"--output_dir={split}", *TASK_FLAGS]
    proc = subprocess.Popen(cmd, env=task_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(split.glob("*-00001-of-*.done.json")):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(split.glob("*.done.json")))
    assert 4 + 1 <= done < 4 + 4, "the kill must land midway through task 1's four shards"
    with pytest.raises(prepare.PrepareError, match=r"shards are not ready \(train-00002-of-00012.tfrecord: not "
                                                   r"finished.*rerun the task of each"):
        prepare.merge(str(split), "train")  # task 2 has not run yet, task 1 is unfinished
    writing = split / "train-00001-of-00012.tfrecord.tmp-99999"  # as if task 1 were writing it now
    writing.write_bytes(b"task 1 at work")
    _prepare(split, num_tasks=3, task_index=2)
    assert writing.exists()  # task 2 leaves another task's temporary shard alone
    finished = {p.name: p.stat().st_mtime_ns for p in split.glob("*.tfrecord")}
    rerun = subprocess.run(cmd, env=task_env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "task 1 of 3: 8 videos written" in rerun.stdout
    # Every finished shard (task 1's before the kill, and the other tasks') is kept as it was.
    assert {name: (split / name).stat().st_mtime_ns for name in finished} == finished
    assert not [p for p in os.listdir(split) if ".tmp-" in p]
    merged = prepare.merge(str(split), "train")
    one, three = _files(tmp_path / "one"), _files(split)
    assert sorted(three) == sorted([*one, "train-index.json"])
    for name in one:
        if name != "train-manifest.json":
            assert three[name] == one[name], name
    # Equal manifests (the command is None in both: the API's prepare is given none).
    assert merged == json.loads(three["train-manifest.json"]) == json.loads(one["train-manifest.json"])


def test_a_task_with_other_options_is_refused(env, tmp_path):
    _prepare(tmp_path, num_tasks=2, task_index=0)
    index = prepare.build_index("synthetic", None, "train", synthetic_config=TASKS)
    with pytest.raises(prepare.PrepareError, match="options differ from those the split was started with "
                                                   r"\(jpeg_quality\); run every task with the same command"):
        prepare.prepare(index, str(tmp_path), examples_per_shard=2, short_side=0, jpeg_quality=80,
                        synthetic_config=TASKS, progress=False, num_tasks=2, task_index=1)


def test_the_ray_example_parses_without_ray():
    """Ray is an optional extra, never installed in CI: the example is parsed, not imported."""
    path = os.path.join(REPO, "launch", "ray", "train_k400.py")
    tree = ast.parse(open(path).read(), path)
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "ray" in imported
