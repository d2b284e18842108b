"""Cost of evaluating one strategy in the search, relative to one plain
validation pass of the same model.

    python benchmarks/search_speed.py --model_dir=runs/demo [--tiles=1,4,8] [--strategies=16]

Plain pass: the template in fixed mode with one strategy, evaluated by the
trainer's multi-clip evaluator (decode + forward of every validation clip).
Search: ``TiledEvaluator`` with K strategies per tiled batch, as
``tf_stfusion.search`` runs it. Prints seconds per strategy, the ratio to the
plain pass (target <= 1.1), the number of traces, and the machine.
"""

import dataclasses
import os
import platform
import time

import tf_stfusion  # noqa: F401  (first: TensorFlow's environment defaults, see tf_stfusion/__init__.py)

from absl import app, flags, logging

flags.DEFINE_string("model_dir", "runs/demo", "A training run with a finished search phase.")
flags.DEFINE_list("tiles", ["1", "4", "8"], "Strategies per tiled batch to measure.")
flags.DEFINE_integer("strategies", 16, "Sampled strategies evaluated per setting.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    import tensorflow as tf

    import tf_stfusion as stf
    from tf_stfusion.evaluation import MultiClipEvaluator
    from tf_stfusion.search import TiledEvaluator, _search_checkpoint
    from tf_stfusion.trainer import Trainer, load_run_config

    config = dataclasses.replace(load_run_config(FLAGS.model_dir), progress=False)
    trainer = Trainer(config)
    model = trainer.model
    tf.train.Checkpoint(model=model).restore(_search_checkpoint(FLAGS.model_dir)).expect_partial()
    views = config.data.eval_views
    strategies = stf.sample_strategies(model, FLAGS.strategies, seed=0)
    print(f"machine: CPU {os.cpu_count()} cores ({platform.machine()}), GPUs: "
          f"{len(tf.config.list_physical_devices('GPU'))}; TensorFlow {tf.__version__}")
    print(f"{FLAGS.model_dir}: {config.backbone}, {trainer.source.num_val} videos x {views} clip(s) of "
          f"{config.data.num_frames}x{config.data.eval_input_size}^2")

    num_val = len(trainer.split_videos("val"))
    plain = MultiClipEvaluator(model, views)
    stf.apply_strategy(model, strategies[0])
    plain(trainer.eval_dataset_fn(), num_val, progress=False)  # trace and warm caches
    start = time.perf_counter()
    for s in strategies[:4]:
        stf.apply_strategy(model, s)
        plain(trainer.eval_dataset_fn(), num_val, progress=False)
    t_plain = (time.perf_counter() - start) / 4
    print(f"plain validation pass: {t_plain:.3f} s ({plain.traces} trace(s) for 5 strategies)")
    print(f"{'K':>3} {'s per strategy':>15} {'ratio to plain pass':>20} {'traces':>7}")
    for k in (int(v) for v in FLAGS.tiles):
        evaluator = TiledEvaluator(model, views, k)
        dataset = trainer.eval_dataset_fn()(None)
        evaluator.evaluate(strategies[:k], dataset, num_val)  # trace
        start = time.perf_counter()
        for i in range(0, len(strategies), k):
            evaluator.evaluate(strategies[i:i + k], dataset, num_val)
        per = (time.perf_counter() - start) / len(strategies)
        print(f"{k:>3} {per:>15.3f} {per / t_plain:>19.3f}x {evaluator.traces:>7}")


if __name__ == "__main__":
    app.run(main)
