"""Strategies across backbones (paper §4.5, SPEC §7).

* ``paper_opt_strategy(backbone)``: the paper's hand-designed "Opt" rule --
  S+ST in the first half of the fusion layers and in the last three, ST
  elsewhere.
* ``map_strategy(strategy, backbone)``: carries a strategy's per-stage pattern
  (a DenseNet's blocks 1-4 <-> a ResNet's conv2-conv5) onto another backbone:
  block ``j`` of ``n`` in a target stage takes the unit found at the same
  relative depth ``j / n`` of the source stage.

    python -m tf_stfusion.transfer --backbone=resnet50 --opt_rule --output=opt.json
    python -m tf_stfusion.transfer --backbone=resnet50 --from_strategy=runs/demo/strategies/best.json --output=m.json
"""

import sys

from absl import flags

# models and strategy load TensorFlow: imported where used, so that the command
# line checks its flags before TensorFlow starts.


def paper_opt_strategy(backbone):
    from tf_stfusion.models import layer_names
    from tf_stfusion.strategy import Strategy

    names = layer_names(backbone)
    n = len(names)
    units = ["S+ST" if (i < n // 2 or i >= n - 3) else "ST" for i in range(n)]
    return Strategy.from_units(backbone, units, provenance={"kind": "paper-opt-rule"})


def stages(names):
    """Layer names grouped by stage (the part before '/'), in order."""
    grouped = {}
    for name in names:
        grouped.setdefault(name.split("/")[0], []).append(name)
    return list(grouped.values())


def map_strategy(strategy, backbone):
    """``strategy`` (any backbone) mapped stage by stage onto ``backbone``."""
    from tf_stfusion.models import layer_names
    from tf_stfusion.strategy import Strategy, StrategyError

    source = stages(strategy.names)
    target = stages(layer_names(backbone))
    if len(source) != len(target):
        raise StrategyError(f"{strategy.backbone} has {len(source)} stages, {backbone} {len(target)}: "
                            "no stage-by-stage mapping")
    units = dict(strategy.layers)
    mapped = []
    for src, dst in zip(source, target):
        for j in range(len(dst)):
            mapped.append(units[src[j * len(src) // len(dst)]])
    return Strategy.from_units(backbone, mapped, provenance={"kind": "mapped", "from_backbone": strategy.backbone,
                                                             **({"from": strategy.provenance}
                                                                if strategy.provenance else {})})


FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("backbone", None, "Target backbone.")
    flags.DEFINE_bool("opt_rule", False, "Write the paper's hand-designed Opt rule for --backbone.")
    flags.DEFINE_string("from_strategy", None, "Map this strategy file onto --backbone.")
    flags.DEFINE_string("output", None, "Strategy file to write.")


def main(argv):
    del argv  # run_app refuses positional arguments
    if not FLAGS.backbone or not FLAGS.output or FLAGS.opt_rule == bool(FLAGS.from_strategy):
        print("error: give --backbone, --output and exactly one of --opt_rule / --from_strategy", file=sys.stderr)
        return 2
    from tf_stfusion.strategy import Strategy, StrategyError

    try:
        if FLAGS.opt_rule:
            strategy = paper_opt_strategy(FLAGS.backbone)
        else:
            strategy = map_strategy(Strategy.load(FLAGS.from_strategy), FLAGS.backbone)
    except (StrategyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    strategy.save(FLAGS.output)
    print(f"{FLAGS.output}: {FLAGS.backbone}, {strategy.counts()}")
    return 0


def run():
    """``python -m tf_stfusion.transfer``: the flags above, then ``main``."""
    from tf_stfusion.configs import run_app

    run_app(main, define_flags)


if __name__ == "__main__":
    run()
