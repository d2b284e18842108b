"""The Kinetics-400 recipe under Ray Train (optional: ``pip install .[ray]``).

Ray Train's ``TensorflowTrainer`` starts one worker per GPU host and sets each
worker's ``TF_CONFIG`` for ``MultiWorkerMirroredStrategy``; each worker runs the
ordinary training command, which reads it (``--cluster=tf_config``). Ray is never
imported by tf_stfusion itself.

    python launch/ray/train_k400.py --model_dir=/shared/runs/k400 \\
        --data_dir=/shared/data/kinetics400/tfrecords --num_workers=4 --gpus_per_worker=8
"""

import argparse
import subprocess
import sys

from ray.train import RunConfig, ScalingConfig
from ray.train.tensorflow import TensorflowTrainer


def train_loop_per_worker(config):
    """One worker: the training command in a child process, which inherits the
    TF_CONFIG Ray set for this worker."""
    subprocess.run([sys.executable, "-m", "tf_stfusion.train", "--flagfile=k400.flags", "--cluster=tf_config",
                    f"--model_dir={config['model_dir']}", f"--data_dir={config['data_dir']}"], check=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_dir", required=True, help="A folder every worker sees.")
    parser.add_argument("--data_dir", required=True, help="prepare's shards and manifests.")
    parser.add_argument("--num_workers", type=int, default=4, help="Workers: one per GPU host.")
    parser.add_argument("--gpus_per_worker", type=int, default=8)
    args = parser.parse_args()
    trainer = TensorflowTrainer(
        train_loop_per_worker,
        train_loop_config={"model_dir": args.model_dir, "data_dir": args.data_dir},
        scaling_config=ScalingConfig(num_workers=args.num_workers, use_gpu=True,
                                     resources_per_worker={"GPU": args.gpus_per_worker}),
        run_config=RunConfig(name="stfusion-k400"),
    )
    trainer.fit()


if __name__ == "__main__":
    main()
