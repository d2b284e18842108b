"""What a training run is asked to do: ``TrainConfig`` (and its ``DataConfig``),
checked for contradictions before any work starts. Plain dataclasses: the CLI
(``train.py``) builds them from flags, ``runs.load_run_config`` from a run's
``run.json``; nothing here touches TensorFlow, so the CLI can check its flags
before TensorFlow starts.

The defaults are the paper's recipe (SPEC §5) and the only ones: the CLI's flags
take theirs from these fields (``train.py``), and a test holds them equal.
"""

import dataclasses
import string
from typing import TYPE_CHECKING, Optional, Tuple

from tf_stfusion.data import synthetic
from tf_stfusion.prior import PRIOR_FORMS

if TYPE_CHECKING:  # strategy.py loads TensorFlow
    from tf_stfusion.strategy import Strategy

PHASES = ("warmup", "search", "fixed")
GATE_MODE_OF_PHASE = {"warmup": "off", "search": "search", "fixed": None}
MIXED_PRECISION = ("auto", "off", "float16", "bfloat16")
SELECT_SPLITS = ("holdout", "val")
# The names of ``models.BACKBONES`` and of those ``models.inflate`` inflates from
# Keras' ImageNet weights, here without TensorFlow so that flags and configs are
# checked before it starts (tests/test_configs.py holds them equal to the registry).
BACKBONE_NAMES = ("densenet121", "mobilenet_v2", "resnet50", "resnext101_32x4d", "resnext50_32x4d", "tiny")
IMAGENET_BACKBONES = ("densenet121", "resnet50")


class TrainError(ValueError):
    """A configuration or state problem found before (or instead of) training.

    A message names settings as ``$field`` (``$batch_size``, ``$phases``): ``str()``
    gives the field names, ``render(name_of)`` whatever a front end calls them (the
    CLI: its flags, ``--batch_size``, ``--phase``). Flag names stop at the CLI.
    """

    def render(self, name_of):
        names = _Names(name_of)
        return string.Template(str(self.args[0]) if self.args else "").safe_substitute(names)

    def __str__(self):
        return self.render(lambda field: field)


class _Names(dict):
    def __init__(self, name_of):
        super().__init__()
        self.name_of = name_of

    def __missing__(self, field):
        return self.name_of(field)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    dataset: str = "synthetic"
    data_dir: Optional[str] = None
    train_split: str = "train"
    val_split: str = "val"
    num_frames: int = 16
    frame_stride: int = 1
    sampler: str = "dense"
    input_size: int = 224
    eval_size: Optional[int] = None  # the evaluation crop (short side and centre crop); None: input_size
    eval_clips: int = 1
    flip: Optional[bool] = None  # None: as the manifest allows (no flip for Something-Something)
    scale_range: Tuple[float, float] = (1.0, 1.25)
    shuffle_buffer: int = 256
    synthetic_config: synthetic.SyntheticConfig = synthetic.SyntheticConfig()
    # Where the search selects its strategy: "holdout" (a class-stratified part of
    # the training videos that the template phases do not train on) or "val" (the
    # paper's protocol: selected and reported on the same split, optimistic).
    select_split: str = "holdout"
    holdout_fraction: float = 0.1
    # Which training videos share a source and are held out together: "auto" (the
    # dataset's own grouping: UCF101's v_<Class>_g<NN>_c<MM>, Kinetics' YouTube id;
    # else none), "none" (video by video) or a regular expression over the video id
    # (its first group, or the whole match, names the group).
    holdout_group: str = "auto"

    def __post_init__(self):
        # Resolved once: every reader (datasets, contract, cost) sees a number; a run.json
        # written with eval_size null (the default then) reads as its input_size.
        if not self.eval_size:
            object.__setattr__(self, "eval_size", self.input_size)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model_dir: str
    data: DataConfig = DataConfig()
    backbone: str = "densenet121"
    phases: Tuple[str, ...] = ("warmup", "search")
    strategy: Optional["Strategy"] = None  # the fixed phase's fusion strategy
    init_from: Optional[str] = None
    init: str = "none"  # "imagenet": inflate Keras' 2D ImageNet weights when starting from scratch
    batch_size: int = 32  # global
    warmup_epochs: int = 50
    epochs: int = 90  # of the search (or fixed) phase
    steps_per_epoch: int = 0  # 0: training clips // batch size
    learning_rate: float = 0.005
    warmup_learning_rate: Optional[float] = None  # default: learning_rate
    lr_steps: Tuple[int, ...] = ()  # epochs (inside the phase) where lr *= lr_decay
    warmup_lr_steps: Tuple[int, ...] = ()
    lr_decay: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    length_scale: float = 50.0
    # The Eq. 5 weight-term coefficient: "authors_code" k/N (the form the paper's k
    # were tuned under, NAS_utils/ops.py of the authors' code) or "paper" k^2/(2N).
    prior_form: str = "authors_code"
    override_preflight: bool = False  # start the search even when the pre-flight would stop it
    preflight_batches: int = 8  # training batches the pre-flight measures the data loss on
    temperature: float = 0.2
    init_drop_prob: float = 0.1
    entropy: str = "binary"
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 20
    eval_every: int = 0  # epochs; 0: only the final evaluation
    eval_batch_size: int = 0  # videos; 0: batch_size
    mixed_precision: str = "auto"  # float16 on a GPU, off on a CPU
    seed: int = 0
    progress: bool = True
    verify_data: bool = False  # check every shard's CRC32C before the first step (not only its size)
    skip_corrupt_records: bool = False  # go on without unreadable records, counting them

    def validate(self):
        """Refuses contradictions before any work starts."""
        phases = tuple(self.phases)
        if not phases:
            raise TrainError("$phases is empty; give warmup, search, warmup,search or fixed")
        unknown = [p for p in phases if p not in PHASES]
        if unknown:
            raise TrainError(f"unknown phase(s) {unknown}; expected some of {PHASES}")
        if len(set(phases)) != len(phases):
            raise TrainError(f"$phases repeats a phase: {','.join(phases)}")
        if "fixed" in phases and len(phases) > 1:
            raise TrainError("$phases=fixed trains a strategy network from scratch; it cannot be combined "
                             "with warmup/search")
        if phases == ("search", "warmup"):
            raise TrainError("$phases=search,warmup: warm-up comes first (warmup,search)")
        if (self.strategy is not None) != ("fixed" in phases):
            raise TrainError("$strategy=FILE trains that fixed strategy ($phases=fixed); the template "
                             "phases warmup/search take no $strategy" if self.strategy is not None else
                             "$phases=fixed needs $strategy=FILE (or S, ST, S+ST)")
        if self.strategy is not None and self.strategy.backbone != self.backbone:
            raise TrainError(f"the strategy is for backbone {self.strategy.backbone!r} but $backbone="
                             f"{self.backbone}")
        for name in ("batch_size", "checkpoint_every", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise TrainError(f"${name} must be >= 1, got {getattr(self, name)}")
        for phase in phases:
            epochs, lr, steps = self.phase_schedule(phase)
            if epochs < 1:
                raise TrainError(f"the {phase} phase needs >= 1 epoch, got {epochs}")
            if lr <= 0:
                raise TrainError(f"learning rate of the {phase} phase must be > 0, got {lr}")
            if list(steps) != sorted(set(steps)) or any(not 0 < s < epochs for s in steps):
                raise TrainError(f"lr steps of the {phase} phase must increase strictly and lie inside "
                                 f"(0, {epochs}) epochs, got {list(steps)}")
        if self.init not in ("none", "imagenet"):
            raise TrainError(f"$init must be none or imagenet, got {self.init!r}")
        if self.init == "imagenet":
            if self.backbone not in IMAGENET_BACKBONES:
                raise TrainError(f"$init=imagenet is available for {list(IMAGENET_BACKBONES)}, not {self.backbone}")
            if self.init_from:
                raise TrainError("$init=imagenet and $init_from both set the starting weights; give one")
        if not 0.0 < self.init_drop_prob < 1.0:
            raise TrainError(f"$init_drop_prob must lie in (0, 1), got {self.init_drop_prob}")
        if self.prior_form not in PRIOR_FORMS:
            raise TrainError(f"$prior_form must be one of {PRIOR_FORMS}, got {self.prior_form!r}")
        if self.preflight_batches < 1:
            raise TrainError(f"$preflight_batches must be >= 1, got {self.preflight_batches}")
        if self.temperature <= 0 or self.length_scale <= 0:
            raise TrainError("$temperature and $length_scale must be > 0")
        if self.weight_decay < 0 or self.momentum < 0 or not 0 < self.lr_decay <= 1:
            raise TrainError("need $weight_decay >= 0, $momentum >= 0 and 0 < $lr_decay <= 1")
        if self.mixed_precision not in MIXED_PRECISION:
            raise TrainError(f"$mixed_precision must be one of {MIXED_PRECISION}")
        if self.data.eval_clips < 1 or self.data.num_frames < 1 or self.data.frame_stride < 1:
            raise TrainError("$eval_clips, $num_frames and $frame_stride must be >= 1")
        if self.data.select_split not in SELECT_SPLITS:
            raise TrainError(f"$select_split must be one of {SELECT_SPLITS}, got {self.data.select_split!r}")
        if self.data.select_split == "holdout" and not 0.0 < self.data.holdout_fraction < 1.0:
            raise TrainError(f"$holdout_fraction must lie in (0, 1), got {self.data.holdout_fraction} "
                             "(or $select_split=val to train on every training video)")
        if self.data.select_split == "holdout":
            from tf_stfusion.selection import group_function

            try:
                group_function(self.data.holdout_group, "")  # a bad pattern: refused before any work
            except ValueError as e:
                raise TrainError(f"$holdout_group: {e}") from None
        return self

    def phase_schedule(self, phase):
        """``(epochs, base learning rate, lr step epochs)`` of a phase."""
        if phase == "warmup":
            return self.warmup_epochs, self.warmup_learning_rate or self.learning_rate, tuple(self.warmup_lr_steps)
        return self.epochs, self.learning_rate, tuple(self.lr_steps)
