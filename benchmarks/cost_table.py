"""Params and GFLOPs of backbones under the fixed strategies S, ST, S+ST and the
paper's hand-designed Opt rule (S+ST in the first half and the last three
fusion layers, ST elsewhere).

    python benchmarks/cost_table.py --backbones=densenet121,resnet50 --num_classes=174 \
        --num_frames=16 --input_size=224

Prints a Markdown table (the one in the README) and the machine it ran on.
Counting rules are in tf_stfusion/accounting.py.
"""

import time

from machine import machine_line  # benchmarks/machine.py

import tf_stfusion  # noqa: F401  (first: TensorFlow's environment defaults, see tf_stfusion/__init__.py)

from absl import app, flags

flags.DEFINE_list("backbones", ["densenet121"], "Backbone names.")
flags.DEFINE_integer("num_classes", 174, "Classes (174: Something-Something).")
flags.DEFINE_integer("num_frames", 16, "Frames per clip.")
flags.DEFINE_integer("input_size", 224, "Height and width.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import tf_stfusion as stf

    from tf_stfusion.transfer import paper_opt_strategy

    shape = (FLAGS.num_frames, FLAGS.input_size, FLAGS.input_size, 3)
    start = time.time()
    print(f"{FLAGS.num_classes} classes, input {'x'.join(map(str, shape[:3]))}")
    print("| backbone | strategy | params (M) | params incl. BN stats (M) | GFLOPs | GMACs |")
    print("|---|---|---|---|---|---|")
    for backbone in FLAGS.backbones:
        strategies = dict(stf.fixed_strategies(backbone), Opt=paper_opt_strategy(backbone))
        for name, strategy in strategies.items():
            c = stf.cost(backbone, strategy, shape, num_classes=FLAGS.num_classes)
            print(f"| {backbone} | {name} | {c.params / 1e6:.2f} | {c.params_with_bn_stats / 1e6:.2f} | "
                  f"{c.gflops:.1f} | {c.gmacs:.1f} |", flush=True)
    print(f"{machine_line()}; took {time.time() - start:.1f}s")


if __name__ == "__main__":
    app.run(main)
