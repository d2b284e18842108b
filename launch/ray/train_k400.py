"""The Kinetics-400 recipe under Ray Train (optional: ``pip install .[ray]``).

Ray Train's ``TensorflowTrainer`` starts one worker per GPU host and sets each
worker's ``TF_CONFIG`` for ``MultiWorkerMirroredStrategy``; each worker runs the
ordinary training command, which reads it (``--cluster=tf_config``). Ray is never
imported by tf_stfusion itself.

    python launch/ray/train_k400.py --model_dir=/shared/runs/k400 \\
        --data_dir=/shared/data/kinetics400/tfrecords --num_workers=4 --gpus_per_worker=8
"""

import subprocess
import sys

from absl import flags
from ray.train import RunConfig, ScalingConfig
from ray.train.tensorflow import TensorflowTrainer


def train_loop_per_worker(config):
    """One worker: the training command in a child process, which inherits the
    TF_CONFIG Ray set for this worker."""
    subprocess.run([sys.executable, "-m", "tf_stfusion.train", "--flagfile=k400.flags", "--cluster=tf_config",
                    f"--model_dir={config['model_dir']}", f"--data_dir={config['data_dir']}"], check=True)


def define_flags():
    flags.DEFINE_string("model_dir", None, "A folder every worker sees.", required=True)
    flags.DEFINE_string("data_dir", None, "prepare's shards and manifests.", required=True)
    flags.DEFINE_integer("num_workers", 4, "Workers: one per GPU host.")
    flags.DEFINE_integer("gpus_per_worker", 8, "GPUs of each worker host.")


def main(argv):
    del argv  # run_app refuses positional arguments
    values = flags.FLAGS
    trainer = TensorflowTrainer(
        train_loop_per_worker,
        train_loop_config={"model_dir": values.model_dir, "data_dir": values.data_dir},
        scaling_config=ScalingConfig(num_workers=values.num_workers, use_gpu=True,
                                     resources_per_worker={"GPU": values.gpus_per_worker}),
        run_config=RunConfig(name="stfusion-k400"),
    )
    trainer.fit()
    return 0


if __name__ == "__main__":
    from tf_stfusion.configs import run_app

    run_app(main, define_flags)
