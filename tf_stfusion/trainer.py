"""The training loop behind ``python -m tf_stfusion.train`` (SPEC §3, §5).

A run lives in one ``model_dir`` and consists of phases, each in its own
sub-folder with its checkpoints::

    warmup/  template, gates off, SGD + weight decay on every kernel
    search/  the same template from the warm-up weights, v-DropPath gates in
             ``search`` mode, loss + Eq. 5 regulariser, no weight decay on the
             kernels the gates feed (the regulariser replaces it)
    fixed/   instead of the two above: the *pruned* network of one strategy
             (S / ST / S+ST / Opt baselines) trained from scratch

Fault tolerance: a checkpoint (model, optimizer, gate logits, step) is written
every ``checkpoint_every`` steps and at each epoch end; starting the same
command again restores the newest one and goes on from its step. A phase that
finished writes ``<phase>/done.json`` and is not run again. What the
checkpoint cannot hold is the position inside the shuffled input stream: a
resumed run draws a fresh (seeded) stream from the resume step on.

Distribution: everything runs under one ``tf.distribute`` strategy; the global
batch is split over replicas, losses are summed per replica and divided by the
global batch, the optimizer all-reduces gradients, BatchNorm is synchronized
when there is more than one replica. Only the chief writes files; other
workers of a multi-worker run save their share of a checkpoint into a
temporary folder that is deleted right away (TF's documented pattern).
"""

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import time
from typing import Optional, Tuple

import keras
import tensorflow as tf

from tf_stfusion import distribute as dist_lib
from tf_stfusion import gating, selection
from tf_stfusion.data import integrity, pipeline, synthetic
from tf_stfusion.data.sources import DataSource, resolve_source
from tf_stfusion.evaluation import MultiClipEvaluator
from tf_stfusion.fileio import atomic_write_json
from tf_stfusion.gating import drop_probabilities, fusion_regularizer, gate_layers, set_gate_mode
from tf_stfusion.models import build_template
from tf_stfusion.strategy import Strategy, marginals

PHASES = ("warmup", "search", "fixed")
GATE_MODE_OF_PHASE = {"warmup": "off", "search": "search", "fixed": None}
MIXED_PRECISION = ("auto", "off", "float16", "bfloat16")
SELECT_SPLITS = ("holdout", "val")
RUN_RECORD = "run.json"
HOLDOUT_RECORD = "holdout.json"


class TrainError(ValueError):
    """A configuration or state problem found before (or instead of) training."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    dataset: str = "synthetic"
    data_dir: Optional[str] = None
    train_split: str = "train"
    val_split: str = "val"
    num_frames: int = 16
    stride: int = 1
    sampler: str = "dense"
    input_size: int = 224
    eval_size: Optional[int] = None  # default: input_size
    eval_views: int = 1
    flip: Optional[bool] = None  # None: as the manifest allows (no flip for Something-Something)
    scale_range: Tuple[float, float] = (1.0, 1.25)
    shuffle_buffer: int = 256
    synthetic_config: synthetic.SyntheticConfig = synthetic.SyntheticConfig()
    # Where the search selects its strategy: "holdout" (a class-stratified part of
    # the training videos that the template phases do not train on) or "val" (the
    # paper's protocol: selected and reported on the same split, optimistic).
    select_split: str = "holdout"
    holdout_fraction: float = 0.1

    @property
    def eval_input_size(self):
        return self.eval_size or self.input_size


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model_dir: str
    data: DataConfig = DataConfig()
    backbone: str = "tiny"
    phases: Tuple[str, ...] = ("warmup", "search")
    strategy: Optional[Strategy] = None  # the fixed phase's strategy
    init_from: Optional[str] = None
    init: str = "none"  # "imagenet": inflate Keras' 2D ImageNet weights when starting from scratch
    batch_size: int = 8  # global
    warmup_epochs: int = 1
    epochs: int = 1  # of the search (or fixed) phase
    steps_per_epoch: int = 0  # 0: training clips // batch size
    learning_rate: float = 0.01
    warmup_learning_rate: Optional[float] = None  # default: learning_rate
    lr_steps: Tuple[int, ...] = ()  # epochs (inside the phase) where lr *= lr_decay
    warmup_lr_steps: Tuple[int, ...] = ()
    lr_decay: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    length_scale: float = 50.0
    temperature: float = 0.2
    init_drop_prob: float = 0.1
    entropy: str = "binary"
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 10
    eval_every: int = 0  # epochs; 0: only the final evaluation
    eval_batch_size: int = 0  # videos; 0: batch_size
    mixed_precision: str = "off"
    seed: int = 0
    progress: bool = True
    verify_data: bool = False  # check every shard's CRC32C before the first step (not only its size)
    skip_corrupt_records: bool = False  # go on without unreadable records, counting them

    def validate(self):
        """Refuses contradictions before any work starts."""
        phases = tuple(self.phases)
        if not phases:
            raise TrainError("--phase is empty; give warmup, search, warmup,search or fixed")
        unknown = [p for p in phases if p not in PHASES]
        if unknown:
            raise TrainError(f"unknown phase(s) {unknown}; expected some of {PHASES}")
        if len(set(phases)) != len(phases):
            raise TrainError(f"--phase repeats a phase: {','.join(phases)}")
        if "fixed" in phases and len(phases) > 1:
            raise TrainError("--phase=fixed trains a strategy network from scratch; it cannot be combined "
                             "with warmup/search")
        if phases == ("search", "warmup"):
            raise TrainError("--phase=search,warmup: warm-up comes first (warmup,search)")
        if (self.strategy is not None) != ("fixed" in phases):
            raise TrainError("--strategy=FILE trains that fixed strategy (--phase=fixed); the template "
                             "phases warmup/search take no --strategy" if self.strategy is not None else
                             "--phase=fixed needs --strategy=FILE (or S, ST, S+ST)")
        if self.strategy is not None and self.strategy.backbone != self.backbone:
            raise TrainError(f"the strategy is for backbone {self.strategy.backbone!r} but --backbone="
                             f"{self.backbone}")
        for name in ("batch_size", "checkpoint_every", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise TrainError(f"--{name} must be >= 1, got {getattr(self, name)}")
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
            raise TrainError(f"--init must be none or imagenet, got {self.init!r}")
        if self.init == "imagenet":
            from tf_stfusion.models.inflate import INFLATABLE

            if self.backbone not in INFLATABLE:
                raise TrainError(f"--init=imagenet is available for {sorted(INFLATABLE)}, not {self.backbone}")
            if self.init_from:
                raise TrainError("--init=imagenet and --init_from both set the starting weights; give one")
        if not 0.0 < self.init_drop_prob < 1.0:
            raise TrainError(f"--init_drop_prob must lie in (0, 1), got {self.init_drop_prob}")
        if self.temperature <= 0 or self.length_scale <= 0:
            raise TrainError("--temperature and --length_scale must be > 0")
        if self.weight_decay < 0 or self.momentum < 0 or not 0 < self.lr_decay <= 1:
            raise TrainError("need --weight_decay >= 0, --momentum >= 0 and 0 < --lr_decay <= 1")
        if self.mixed_precision not in MIXED_PRECISION:
            raise TrainError(f"--mixed_precision must be one of {MIXED_PRECISION}")
        if self.data.eval_views < 1 or self.data.num_frames < 1 or self.data.stride < 1:
            raise TrainError("--eval_clips, --num_frames and --frame_stride must be >= 1")
        if self.data.select_split not in SELECT_SPLITS:
            raise TrainError(f"--select_split must be one of {SELECT_SPLITS}, got {self.data.select_split!r}")
        if self.data.select_split == "holdout" and not 0.0 < self.data.holdout_fraction < 1.0:
            raise TrainError(f"--holdout_fraction must lie in (0, 1), got {self.data.holdout_fraction} "
                             "(or --select_split=val to train on every training video)")
        return self

    def phase_schedule(self, phase):
        """``(epochs, base learning rate, lr step epochs)`` of a phase."""
        if phase == "warmup":
            return self.warmup_epochs, self.warmup_learning_rate or self.learning_rate, tuple(self.warmup_lr_steps)
        return self.epochs, self.learning_rate, tuple(self.lr_steps)


def decayed_variables(model, variables, gated_exempt):
    """Which ``variables`` get weight decay: conv and dense kernels, except
    (``gated_exempt``, the search phase) the kernels that gates feed."""
    kernels = {id(l.kernel) for l in model.layers if getattr(l, "kernel", None) is not None}
    if gated_exempt:
        kernels -= {id(model.get_layer(g.feeds).kernel) for g in gate_layers(model)}
    return [id(v) in kernels for v in variables]


def make_train_step(model, strategy, optimizer, variables, step_var, *, global_batch, weight_decay=0.0,
                    regularizer=None):
    """One SGD step under ``strategy``: ``train_step(clips, labels) -> [loss, reg, accuracy]``.

    Each replica divides its summed cross-entropy by the *global* batch and adds
    its share ``1/replicas`` of the Eq. 5 term (``regularizer = (k, N, entropy)``,
    search phase only); the optimizer sums gradients over replicas. Weight decay
    is coupled L2 (``g += wd * w``, as ``torch.optim.SGD``) on conv/dense kernels,
    not on gated kernels when the regulariser is on.
    """
    replicas = strategy.num_replicas_in_sync
    decayed = decayed_variables(model, variables, regularizer is not None) if weight_decay else [False] * len(
        variables)
    global_batch = float(global_batch)

    def replica_step(clips, labels):
        with tf.GradientTape() as tape:
            logits = tf.cast(model(clips, training=True), tf.float32)
            per_clip = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(labels, tf.int32), logits)
            loss = tf.reduce_sum(per_clip) / global_batch
            reg = fusion_regularizer(model, *regularizer) / replicas if regularizer else tf.constant(0.0)
            scaled = optimizer.scale_loss(loss + reg)
        grads = tape.gradient(scaled, variables)
        grads = [g + weight_decay * tf.cast(v, g.dtype) if d else g for g, v, d in zip(grads, variables, decayed)]
        optimizer.apply(grads, variables)
        hits = tf.reduce_sum(tf.cast(tf.math.in_top_k(tf.cast(labels, tf.int32), logits, 1), tf.float32))
        return tf.stack([loss, reg, hits / global_batch])

    @tf.function
    def train_step(clips, labels):
        per_replica = strategy.run(replica_step, (clips, labels))
        step_var.assign_add(1)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    return train_step


def load_run_config(model_dir):
    """The ``TrainConfig`` a run in ``model_dir`` was started with (from run.json)."""
    path = os.path.join(model_dir, RUN_RECORD)
    if not os.path.isfile(path):
        raise TrainError(f"{path} not found: {model_dir} is not a training run folder")
    with open(path) as f:
        record = json.load(f)
    try:
        settings = dict(record["config"])
        data = dict(settings.pop("data"))
        data.setdefault("select_split", "val")  # recorded before hold-outs existed: trained on every video
        data["synthetic_config"] = synthetic.SyntheticConfig(**data["synthetic_config"])
        data["scale_range"] = tuple(data["scale_range"])
        strategy = settings.pop("strategy")
        for key in ("phases", "lr_steps", "warmup_lr_steps"):
            settings[key] = tuple(settings[key])
        return TrainConfig(data=DataConfig(**data), strategy=Strategy.from_dict(strategy, path) if strategy else None,
                           **settings)
    except (KeyError, TypeError) as e:
        raise TrainError(f"{path}: unreadable run record ({e}); was it written by another version?") from None


@contextlib.contextmanager
def dtype_policy(name):
    """Layers built inside use the policy ``name`` (e.g. ``mixed_float16``)."""
    old = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(old)


def resolve_mixed_precision(choice):
    """``auto`` -> float16 on a GPU, off on CPU. Returns a Keras policy name."""
    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    if choice == "auto":
        choice = "float16" if has_gpu else "off"
    if choice == "float16" and not has_gpu:
        raise TrainError("--mixed_precision=float16 needs a GPU; use bfloat16 or off on a CPU")
    return "float32" if choice == "off" else f"mixed_{choice}"


def checkpoint_chain(directory):
    """Checkpoint prefixes in ``directory``, newest first: those the folder's
    ``checkpoint`` state lists, then any other complete ``ckpt-N`` (index file present)."""
    import glob
    import re

    state = tf.train.get_checkpoint_state(directory) if tf.io.gfile.isdir(directory) else None
    listed = [p if os.path.isabs(p) else os.path.join(directory, p)
              for p in (state.all_model_checkpoint_paths if state else [])]
    found = [f[:-len(".index")] for f in glob.glob(os.path.join(directory, "ckpt-*.index"))]
    number = lambda p: int(re.search(r"-(\d+)$", p).group(1)) if re.search(r"-(\d+)$", p) else -1  # noqa: E731
    return sorted(set(listed) | set(found), key=number, reverse=True)


def unreadable(prefix):
    """Why the checkpoint at ``prefix`` cannot be read (None when every tensor reads)."""
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except (tf.errors.OpError, ValueError, IndexError, RuntimeError, OSError) as e:
        return str(e).strip().splitlines()[0][:200] or type(e).__name__
    return None


def newest_readable(directory, warn=print):
    """The newest readable checkpoint of ``directory`` (None if it has none at all);
    an unreadable newer one is named in a warning and skipped, never deleted."""
    chain = checkpoint_chain(directory)
    bad = []
    for prefix in chain:
        reason = unreadable(prefix)
        if reason is None:
            for skipped, why in bad:
                warn(f"warning: checkpoint {skipped} is unreadable ({why}); using the previous one, {prefix}")
            return prefix
        bad.append((prefix, reason))
    if bad:
        raise TrainError(f"no readable checkpoint in {directory}: " + "; ".join(f"{p} ({why})" for p, why in bad)
                         + "; move the folder away to start this phase again, or resume from another run with "
                         "--init_from")
    return None


def find_checkpoint(path, what="--init_from"):
    """A readable checkpoint prefix from a prefix, a phase folder, or a run folder
    (its newest of search/, warmup/, fixed/). An unreadable one is refused in one
    line naming the readable alternatives of its folder."""
    if tf.io.gfile.exists(f"{path}.index"):
        prefix = path
    elif not tf.io.gfile.isdir(path):
        raise TrainError(f"{what}={path}: no such checkpoint or folder")
    else:
        folders = [path] + [os.path.join(path, phase) for phase in ("search", "warmup", "fixed")]
        chains = [checkpoint_chain(folder) for folder in folders]
        prefix = next((chain[0] for chain in chains if chain), None)
        if prefix is None:
            raise TrainError(f"{what}={path}: no checkpoint in it or in its search/, warmup/, fixed/ folders")
    return require_readable(prefix, what)


def require_readable(prefix, what="checkpoint"):
    reason = unreadable(prefix)
    if reason is None:
        return prefix
    others = [p for p in checkpoint_chain(os.path.dirname(prefix)) if p != prefix and unreadable(p) is None]
    raise TrainError(f"{what}: checkpoint {prefix} is unreadable ({reason}); "
                     + (f"readable ones in that folder: {', '.join(others)} (pass one with --checkpoint)"
                        if others else "no other readable checkpoint is in that folder"))


def piecewise_lr(base, boundaries, decay):
    """Step decay: ``base * decay**i`` from the ``boundaries[i-1]``-th update on (0-based
    update counts, e.g. ``epoch * steps_per_epoch``).

    Keras evaluates the schedule at the optimizer's ``iterations`` *before* the update
    and ``PiecewiseConstantDecay`` keeps ``values[i]`` up to and including
    ``boundaries[i]``, so the Keras boundaries are one less: update ``b`` (0-based)
    is the first at the new rate.
    """
    if not boundaries:
        return base
    values = [base * decay**i for i in range(len(boundaries) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay([b - 1 for b in boundaries], values)


class _Saver:
    """Checkpoints of one phase; non-chief workers write to a throwaway folder."""

    def __init__(self, checkpoint, directory, chief, keep):
        self.checkpoint = checkpoint
        self.chief = chief
        self.directory = directory
        self.manager = tf.train.CheckpointManager(checkpoint, directory, keep) if chief else None

    @property
    def latest(self):
        return tf.train.latest_checkpoint(self.directory)

    def newest_readable(self, warn=print):
        return newest_readable(self.directory, warn)

    def save(self, step):
        if self.chief:
            return self.manager.save(checkpoint_number=step)
        tmp = tempfile.mkdtemp(prefix="stfusion-worker-ckpt-")
        try:
            self.checkpoint.write(os.path.join(tmp, "ckpt"))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return None


@dataclasses.dataclass
class PhaseState:
    phase: str
    mode: Optional[str]
    epochs: int
    steps_per_epoch: int
    optimizer: object
    variables: list
    step: tf.Variable
    saver: _Saver
    how: str  # "resumed from ...", "weights from ...", "from scratch"


class Trainer:
    """Runs the phases of ``config`` under a ``tf.distribute`` strategy."""

    def __init__(self, config: TrainConfig, strategy=None, source: Optional[DataSource] = None):
        self.config = config.validate()
        self.strategy = strategy or dist_lib.make_distribution("one_device")
        self.chief = dist_lib.is_chief(self.strategy)
        self.replicas = self.strategy.num_replicas_in_sync
        if config.batch_size % self.replicas:
            raise TrainError(f"--batch_size={config.batch_size} (global) is not divisible by the "
                             f"{self.replicas} replicas")
        self.policy = resolve_mixed_precision(config.mixed_precision)
        data = config.data
        self.log = print if self.chief else (lambda *a, **k: None)
        self.source = source or resolve_source(
            data.dataset, data.data_dir, data.train_split, data.val_split,
            synthetic_config=data.synthetic_config, progress=config.progress and self.chief,
            verify=config.verify_data, skip_corrupt=config.skip_corrupt_records,
        )
        self.lost = self.source.lost_videos  # unreadable videos (--skip_corrupt_records)
        if self.lost:
            self.log(f"data: skipping {len(self.lost)} unreadable video(s) of {len(self.source.lost)} damaged "
                     "shard(s): " + ", ".join(f"{os.path.basename(p)} ({len(v)})" for p, v in self.source.lost.items()))
        self.num_classes = len(self.source.class_names)
        self.flip = self.source.flip_ok if data.flip is None else data.flip
        if data.flip and not self.source.flip_ok:
            raise TrainError(f"--flip: {self.source.name} forbids horizontal flips (left/right is part of "
                             "the label)")
        self.holdout = self._holdout()
        lost_train = {v for v, _ in self.source.train_examples if v in self.lost and v not in self.holdout}
        self.num_train = self.source.num_train - len(self.holdout) - len(lost_train)  # N of Eq. 5
        self.steps_per_epoch = config.steps_per_epoch or self.num_train // config.batch_size
        if self.steps_per_epoch < 1:
            raise TrainError(f"{self.num_train} training clips make no full batch of "
                             f"{config.batch_size}; lower --batch_size or set --steps_per_epoch")
        self._check_start()
        self.model = self._build_model()
        self._weights_from = None  # checkpoint holding the newest finished phase's weights
        self._writers = {}

    # -- set-up ------------------------------------------------------------
    def _holdout(self):
        """Video ids of the selection hold-out: none for a fixed-strategy run (it
        selects nothing) or with ``select_split=val``."""
        data = self.config.data
        if self.config.strategy is not None or data.select_split != "holdout":
            return frozenset()
        held = selection.holdout_ids(self.source.train_examples, data.holdout_fraction)
        if not held:
            raise TrainError(f"--holdout_fraction={data.holdout_fraction} holds out no training video (every "
                             "class has fewer than 2); use --select_split=val")
        return frozenset(held)

    def _identity(self):
        cfg = self.config
        identity = {
            "backbone": cfg.backbone,
            "units": None if cfg.strategy is None else cfg.strategy.units,
            "class_names": self.source.class_names,
            "num_frames": cfg.data.num_frames,
            "input_size": cfg.data.input_size,
        }
        if cfg.strategy is None:  # the videos the template trains on
            identity["selection"] = {"split": cfg.data.select_split, "holdout_videos": len(self.holdout)}
        return identity

    def _check_start(self):
        """Same run as the one in model_dir (if any); a search phase has weights to start from."""
        cfg = self.config
        record_path = os.path.join(cfg.model_dir, RUN_RECORD)
        if os.path.isfile(record_path):
            with open(record_path) as f:
                record = json.load(f)
            theirs = record.get("identity", {})
            for key, value in self._identity().items():
                if key == "selection" and key not in theirs:
                    continue  # a run recorded before hold-outs existed
                if theirs.get(key) != value:
                    raise TrainError(f"{cfg.model_dir} holds another run ({key} differs: {theirs.get(key)!r} "
                                     f"there, {value!r} now); use a new --model_dir")
        if cfg.phases[0] == "search" and not cfg.init_from and not self._has_checkpoints("search"):
            if not self._phase_done("warmup"):
                raise TrainError("the search phase starts from warm-up weights: run --phase=warmup,search, "
                                 f"or finish the warm-up in {cfg.model_dir} first, or give --init_from=RUN")
        if cfg.init_from:
            find_checkpoint(cfg.init_from)

    def _build_model(self):
        cfg, data = self.config, self.config.data
        size = data.input_size if data.eval_input_size == data.input_size else None
        with dtype_policy(self.policy), self.strategy.scope():
            return build_template(
                cfg.backbone, num_classes=self.num_classes, num_frames=data.num_frames, input_size=size,
                units=None if cfg.strategy is None else cfg.strategy.units,
                init_drop_prob=cfg.init_drop_prob, temperature=cfg.temperature,
                sync_batchnorm=self.replicas > 1, seed=cfg.seed,
            )

    def _phase_dir(self, phase):
        return os.path.join(self.config.model_dir, phase)

    def _phase_done(self, phase):
        path = os.path.join(self._phase_dir(phase), "done.json")
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            return json.load(f)

    def _has_checkpoints(self, phase):
        return tf.train.latest_checkpoint(self._phase_dir(phase)) is not None

    def _write_record(self):
        if not self.chief:
            return
        cfg = self.config
        settings = dataclasses.asdict(cfg)
        settings["strategy"] = None if cfg.strategy is None else cfg.strategy.to_dict()
        atomic_write_json(os.path.join(cfg.model_dir, RUN_RECORD), {
            "identity": self._identity(),
            "config": settings,
            "data": {"name": self.source.name, "dir": self.source.data_dir,
                     "num_train": self.num_train, "num_train_split": self.source.num_train,
                     "num_val": self.source.num_val, "flip": self.flip},
            "selection": {"split": cfg.data.select_split if cfg.strategy is None else None,
                          "holdout_fraction": cfg.data.holdout_fraction if self.holdout else 0.0,
                          "num_holdout": len(self.holdout),
                          "holdout_file": HOLDOUT_RECORD if self.holdout else None,
                          "method": "class-stratified, the first round(fraction * n) of each class by "
                                    f"sha256({selection.SALT!r} + video id)"},
            "distribution": dist_lib.describe(self.strategy),
            "contract": self.contract().to_dict(),
        })
        if self.holdout:
            labels = dict(self.source.train_examples)
            atomic_write_json(os.path.join(cfg.model_dir, HOLDOUT_RECORD), {
                "split": cfg.data.train_split, "fraction": cfg.data.holdout_fraction,
                "videos": [[v, labels[v]] for v in sorted(self.holdout)],
            })

    # -- data ----------------------------------------------------------------
    def train_dataset_fn(self, seed):
        data = self.config.data

        def dataset_fn(ctx):
            return pipeline.make_dataset(
                self.source.train_files, training=True, num_frames=data.num_frames,
                input_size=data.input_size, batch_size=self.config.batch_size, sampler=data.sampler,
                stride=data.stride, flip=self.flip, scale_range=data.scale_range,
                shuffle_buffer=data.shuffle_buffer, seed=seed, input_context=ctx, exclude_ids=self.holdout,
                skip_corrupt=self.config.skip_corrupt_records,
            )
        return dataset_fn

    def split_videos(self, split="val"):
        """The canonical order (sorted ids) of an evaluation split: ``val`` or ``holdout``."""
        if split == "holdout":
            if not self.holdout:
                raise TrainError(f"{self.config.model_dir} holds out no training videos (--select_split=val)")
            return sorted(self.holdout - self.lost)
        if split != "val":
            raise ValueError(f"evaluation split must be 'val' or 'holdout', got {split!r}")
        ids = sorted(v for v, _ in self.source.val_examples if v not in self.lost)
        twice = [a for a, b in zip(ids, ids[1:]) if a == b]
        if twice:
            raise TrainError(f"{self.source.data_dir}: video id {twice[0]!r} appears twice in the "
                             f"{self.config.data.val_split} split; ids must be unique")
        return ids

    def eval_dataset_fn(self, split="val", videos=None):
        """Eval batches ``(clips, labels, position in videos)`` of ``videos`` (default:
        ``split_videos(split)``, all of the split). With several input pipelines
        (workers) each reads its own file shards; every batch has the full size
        (fillers at position -1) and every replica gets the same number of
        batches, so that all take the same steps."""
        data = self.config.data
        batch = self.config.eval_batch_size or self.config.batch_size
        videos = list(videos) if videos is not None else self.split_videos(split)
        every = self.source.train_files if split == "holdout" else self.source.val_files
        # Only the shards holding a wanted video are read (a racing slice of the hold-out
        # lives in a few of the training split's shards).
        wanted = set(videos)
        holding = [f for f in every if wanted.intersection(self.source.shard_videos[f])]

        def dataset_fn(ctx):
            pipelines = 1 if ctx is None else ctx.num_input_pipelines
            files = holding if len(holding) >= pipelines else every
            ds = pipeline.make_dataset(
                files, training=False, num_frames=data.num_frames,
                input_size=data.eval_input_size, batch_size=batch, sampler=data.sampler,
                stride=data.stride, num_views=data.eval_views, input_context=ctx, deterministic=True,
                video_index=videos, pad_batches=True, skip_corrupt=self.config.skip_corrupt_records,
            )
            if ctx is None:
                return ds
            mine, target = pipeline.pipeline_batches(files, self.source.shard_videos, videos, batch, ctx)
            per_replica = ctx.get_per_replica_batch_size(batch)
            return pipeline.filler_batches(ds, target - mine, per_replica, data.eval_views)
        return dataset_fn

    def contract(self):
        """The run's ``InputContract``: how its evaluation samples, resizes and
        normalises a video (recorded in run.json, carried by every export)."""
        data = self.config.data
        return pipeline.InputContract(
            num_frames=data.num_frames, frame_stride=data.stride, sampler=data.sampler, eval_clips=data.eval_views,
            eval_size=data.eval_input_size, class_names=tuple(self.source.class_names),
            frame_short_side=self.source.frame_short_side, jpeg_quality=self.source.jpeg_quality,
        )

    def split_name(self, split):
        """How outputs name a split: the val split's own name, or ``holdout``."""
        return "holdout" if split == "holdout" else self.config.data.val_split

    # -- one phase -------------------------------------------------------------
    def make_step(self, state):
        """The compiled train step of a phase set up by ``setup_phase``."""
        cfg = self.config
        return make_train_step(
            self.model, self.strategy, state.optimizer, state.variables, state.step,
            global_batch=cfg.batch_size, weight_decay=cfg.weight_decay,
            regularizer=(cfg.length_scale, self.num_train, cfg.entropy) if state.phase == "search" else None,
        )

    def _restore_start(self, phase, checkpoint, saver):
        """Restores the phase's newest checkpoint, or its starting weights."""
        latest = saver.newest_readable(self.log)
        if latest:
            checkpoint.restore(latest).assert_existing_objects_matched()
            return f"resumed from {latest}"
        source = self._weights_from
        warmup = self._phase_done("warmup")
        if source is None and phase == "search" and warmup:
            source = os.path.join(self._phase_dir("warmup"), warmup["checkpoint"])  # an earlier run's warm-up
        if source is None and self.config.init_from:
            source = find_checkpoint(self.config.init_from)
        if source:
            try:
                tf.train.Checkpoint(model=self.model).restore(source).expect_partial().assert_existing_objects_matched()
            except (AssertionError, ValueError) as e:  # missing objects / a variable of another shape
                raise TrainError(f"{source} does not match this model ({self.config.backbone}, "
                                 f"{self.num_classes} classes): {str(e)[:300]}") from None
            return f"weights from {source}"
        if self.config.init == "imagenet":
            self.inflate_imagenet()
            return "from ImageNet weights (inflated)"
        return "from scratch"

    def inflate_imagenet(self):
        """Keras' 2D ImageNet weights inflated into the model (via the template and
        ``prune`` for a fixed strategy, so skipped layers are handled)."""
        from tf_stfusion.models import inflate
        from tf_stfusion.models.prune import prune
        from tf_stfusion.strategy import apply_strategy

        model2d = inflate.imagenet_2d(self.config.backbone)
        if self.config.strategy is None:
            inflate.inflate(self.model, model2d)
            return
        spec = self.model.stf_spec
        template = build_template(spec.backbone, num_classes=spec.num_classes, num_frames=spec.num_frames,
                                  input_size=spec.input_size)
        inflate.inflate(template, model2d)
        apply_strategy(template, self.config.strategy)
        self.model.set_weights(prune(template, self.config.strategy).get_weights())

    def setup_phase(self, phase):
        """Gate mode, optimizer, step counter and checkpoint of a phase, restored
        from the phase's newest checkpoint or from its starting weights."""
        cfg = self.config
        mode = GATE_MODE_OF_PHASE[phase]
        if mode is not None:
            set_gate_mode(self.model, mode)
        epochs, base_lr, lr_steps = cfg.phase_schedule(phase)
        spe = self.steps_per_epoch
        with self.strategy.scope():
            optimizer = keras.optimizers.SGD(
                piecewise_lr(base_lr, [s * spe for s in lr_steps], cfg.lr_decay), momentum=cfg.momentum
            )
            if self.policy == "mixed_float16":
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            variables = self.model.trainable_variables
            optimizer.build(variables)
            step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        checkpoint = tf.train.Checkpoint(model=self.model, optimizer=optimizer, step=step_var)
        saver = _Saver(checkpoint, self._phase_dir(phase), self.chief, cfg.keep_checkpoints)
        how = self._restore_start(phase, checkpoint, saver)
        return PhaseState(phase, mode, epochs, spe, optimizer, variables, step_var, saver, how)

    def run_phase(self, phase):
        """Runs (or resumes, or skips when finished) one phase; returns its done record."""
        cfg = self.config
        done = self._phase_done(phase)
        if done:
            self.log(f"[{phase}] already finished at step {done['step']} ({done['checkpoint']}); skipping")
            self._weights_from = os.path.join(self._phase_dir(phase), done["checkpoint"])
            return done
        state = self.setup_phase(phase)
        mode, epochs, spe, saver = state.mode, state.epochs, state.steps_per_epoch, state.saver
        optimizer, step_var = state.optimizer, state.step
        total_steps = epochs * spe
        start = int(step_var.numpy())
        self.log(f"[{phase}] {epochs} epochs x {spe} steps, global batch {cfg.batch_size}, "
                 f"{dist_lib.describe(self.strategy)}; {state.how} (step {start}/{total_steps})")
        train_step = self.make_step(state)
        # A fresh, seeded stream per (phase, start step): a resumed run does not
        # replay the clips of the steps before its checkpoint.
        seed = cfg.seed * 1_000_003 + PHASES.index(phase) * 10_007 + start
        stream = iter(self.strategy.distribute_datasets_from_function(self.train_dataset_fn(seed)))
        writer = self._writer(phase)
        gate_names = [f"{g.fusion_layer}/{g.branch}" for g in gate_layers(self.model)] if mode == "search" else []
        last_saved = start
        t0 = time.time()
        for epoch in range(start // spe, epochs):
            bar = None
            if cfg.progress and self.chief:
                self.log(f"[{phase}] epoch {epoch + 1}/{epochs}")
                bar = keras.utils.Progbar(spe, stateful_metrics=["lr"])
            first = start - epoch * spe if epoch == start // spe else 0
            sums, t_epoch = [0.0, 0.0, 0.0], time.time()
            for i in range(first, spe):
                clips, labels = self._next(stream, "train")
                lr = float(_current_lr(optimizer))  # the rate this update uses
                loss, reg, acc = (float(v) for v in train_step(clips, labels).numpy())
                sums[0] += loss
                sums[1] += acc
                sums[2] += reg
                step = epoch * spe + i + 1
                if bar:
                    values = [("loss", loss), ("acc", acc), ("lr", lr)] + ([("kl", reg)] if mode == "search" else [])
                    bar.update(i + 1, values)
                if step % cfg.log_every == 0 or step == total_steps:
                    self._summaries(writer, step, loss, reg, acc, lr, gate_names)
                if step % cfg.checkpoint_every == 0:
                    saver.save(step)
                    last_saved = step
            if not bar:
                n = max(spe - first, 1)
                self.log(f"[{phase}] epoch {epoch + 1}/{epochs}: loss {sums[0] / n:.4f}, accuracy {sums[1] / n:.4f}, "
                         f"{time.time() - t_epoch:.1f}s")
            if last_saved != (epoch + 1) * spe:
                saver.save((epoch + 1) * spe)
                last_saved = (epoch + 1) * spe
            if cfg.eval_every and (epoch + 1) % cfg.eval_every == 0 and epoch + 1 < epochs:
                metrics = self.evaluate(label=f"[{phase}] validation after epoch {epoch + 1}")
                self._eval_summaries(writer, (epoch + 1) * spe, metrics)
        final = saver.latest
        record = {"phase": phase, "step": total_steps, "epochs": epochs, "steps_per_epoch": spe,
                  "checkpoint": os.path.basename(final) if final else None,
                  "seconds_this_run": round(time.time() - t0, 1)}
        if epochs > start // spe:  # the last epoch ran in this process: its mean losses
            n = max(spe - first, 1)
            record["last_epoch"] = {"loss": sums[0] / n, "accuracy": sums[1] / n, "regularizer": sums[2] / n}
        if self.chief:
            atomic_write_json(os.path.join(self._phase_dir(phase), "done.json"), record)
        self._weights_from = final
        if writer is not None:
            writer.flush()
        return record

    # -- logs and reports ----------------------------------------------------------
    def _writer(self, phase):
        if not self.chief:
            return None
        if phase not in self._writers:
            path = os.path.join(self.config.model_dir, "logs", phase)
            self._writers[phase] = tf.summary.create_file_writer(path)
        return self._writers[phase]

    def _summaries(self, writer, step, loss, reg, acc, lr, gate_names):
        if writer is None:
            return
        with writer.as_default(step=step):
            write_scalar("train/loss", loss)
            write_scalar("train/accuracy", acc)
            write_scalar("train/learning_rate", lr)
            if gate_names:
                write_scalar("train/regularizer", reg)
                for name, p in zip(gate_names, drop_probabilities(self.model).numpy()):
                    write_scalar(f"drop_prob/{name}", p)

    def _eval_summaries(self, writer, step, metrics):
        if writer is None:
            return
        with writer.as_default(step=step):
            for key in ("top1", "top5", "loss"):
                write_scalar(f"val/{key}", metrics[key])

    def evaluate_videos(self, split="val", label="validation"):
        """Per-video outcomes (``VideoResults``) of the model on ``split``."""
        evaluator = MultiClipEvaluator(self.model, self.config.data.eval_views, self.strategy)
        show = self.config.progress and self.chief
        videos = self.split_videos(split)
        with self.reading(split):
            return evaluator.videos(self.eval_dataset_fn(split), len(videos), show, label)

    # -- damaged data met while reading ----------------------------------------------
    def _next(self, stream, split):
        with self.reading(split):
            return next(stream)

    @contextlib.contextmanager
    def reading(self, split):
        """Turns a record that fails to read into a one-line ``DataError`` naming the
        damaged shard (checked against its size and CRC32C) and how to rewrite it."""
        try:
            yield
        except tf.errors.DataLossError as e:
            files = self.source.val_files if split == "val" else self.source.train_files
            problems = integrity.check_shards(files, self.source.shard_info, verify=True)
            if problems:
                raise integrity.damage_error(problems, self.source.command_for(problems[0].path)) from None
            data = self.config.data
            command = self.source.commands.get(data.val_split if split == "val" else data.train_split)
            first = str(e).strip().splitlines()[0][:200]
            raise integrity.DataError(f"a record of the {split} split could not be read ({first}) although every "
                                      f"shard matches its size and checksum; {integrity.rewrite_advice(command)}"
                                      ) from None

    def damage_report(self):
        """Videos lost to damaged shards, for metrics.json (``--skip_corrupt_records``):
        those found at the start, and shards damaged since (their size changed, or with
        ``--verify_data`` their checksum)."""
        files = self.source.train_files + self.source.val_files
        lost = dict(self.source.lost)
        for problem in integrity.check_shards(files, self.source.shard_info, self.config.verify_data):
            if problem.path not in lost:
                readable = set(integrity.readable_ids(problem.path)) if problem.what != "missing" else set()
                lost[problem.path] = [v for v in self.source.shard_videos[problem.path] if v not in readable]
        return {"videos": sum(len(v) for v in lost.values()),
                "shards": {os.path.basename(p): len(v) for p, v in lost.items()}}

    def evaluate(self, split="val", label="validation"):
        """Metrics of the model on ``split`` (top-1/top-5 with 95% intervals)."""
        return self.evaluate_videos(split, label).metrics(self.split_name(split))

    def prior_diagnostics(self):
        """How strongly the Eq. 5 prior pulled the gates (after the search phase)."""
        done = self._phase_done("search") or {}
        last = done.get("last_epoch", {})
        return gating.prior_diagnostics(
            drop_probabilities(self.model).numpy(), self.config.length_scale, self.num_train,
            loss=last.get("loss"), regularizer=last.get("regularizer"),
        )

    def write_probabilities(self):
        diagnostics = self.prior_diagnostics()
        self.log(f"[search] prior: {diagnostics['summary']}")
        if diagnostics["warning"]:
            self.log(f"[search] warning: {diagnostics['warning']}")
        if self.chief:
            path = os.path.join(self.config.model_dir, "probabilities.json")
            atomic_write_json(path, {**marginals(self.model), "diagnostics": diagnostics})
            self.log(f"wrote {path}")

    def run(self):
        """Runs (or resumes) every phase, then the final evaluation; returns its metrics."""
        cfg = self.config
        if self.chief:
            os.makedirs(cfg.model_dir, exist_ok=True)
        self._write_record()
        for phase in cfg.phases:
            self.run_phase(phase)
            if phase == "search":
                self._load_weights()
                self.write_probabilities()
        last = cfg.phases[-1]
        metrics_path = os.path.join(cfg.model_dir, "metrics.json")
        done = self._phase_done(last) or {}
        if os.path.isfile(metrics_path):
            with open(metrics_path) as f:
                old = json.load(f)
            if old.get("phase") == last and old.get("checkpoint") == done.get("checkpoint"):
                self.log(f"final evaluation already in {metrics_path}")
                return old
        self._load_weights()
        mode = GATE_MODE_OF_PHASE[last]
        videos = self.evaluate_videos(label=f"final evaluation ({self.config.data.eval_views} clip(s) per video)")
        metrics = videos.metrics(self.split_name("val"))
        if cfg.skip_corrupt_records:
            metrics["skipped_records"] = self.damage_report()
            self.log(f"data: {metrics['skipped_records']['videos']} unreadable video(s) skipped in this run")
        metrics.update(phase=last, gate_mode=mode, checkpoint=done.get("checkpoint"),
                       clips_per_video=cfg.data.eval_views, dataset=self.source.name,
                       strategy=None if cfg.strategy is None else cfg.strategy.units,
                       per_video={"order": "sorted video ids of the split",
                                  "videos": selection.fingerprint(self.split_videos("val")),
                                  "top1": selection.pack_bits(videos.top1)})
        if self.chief:
            atomic_write_json(metrics_path, metrics)
        self._eval_summaries(self._writer(last), done.get("step", 0), metrics)
        for writer in self._writers.values():
            writer.flush()
        self.log(f"{selection.describe(metrics)} -> {metrics_path}")
        return metrics

    def _load_weights(self):
        """Puts the newest finished phase's weights into the model (after a skip)."""
        if self._weights_from:
            tf.train.Checkpoint(model=self.model).restore(self._weights_from).expect_partial()
        last = self.config.phases[-1]
        mode = GATE_MODE_OF_PHASE[last]
        if mode is not None:
            set_gate_mode(self.model, mode)


def _scalar_metadata():
    # What tensorboard.summary.v2.scalar writes; done by hand because TF 2.21
    # no longer installs the tensorboard package (the logs still open in it).
    from tensorflow.core.framework import summary_pb2

    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
    ).SerializeToString()


def write_scalar(tag, value, step=None):
    """A TensorBoard scalar without the tensorboard package."""
    tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=_scalar_metadata())


def _current_lr(optimizer):
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    lr = inner.learning_rate
    return lr.numpy() if hasattr(lr, "numpy") else lr
