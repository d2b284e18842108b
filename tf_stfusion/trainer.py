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

import dataclasses
import os
import time
from typing import Optional

import keras
import tensorflow as tf

from tf_stfusion import distribute as dist_lib
from tf_stfusion import selection
from tf_stfusion.data.sources import DataSource
from tf_stfusion.fileio import atomic_write_json
from tf_stfusion.gating import drop_probabilities, fusion_regularizer, gate_layers, set_gate_mode
from tf_stfusion.run import phases
from tf_stfusion.run.checkpoints import Saver, restore_weights
from tf_stfusion.run.config import GATE_MODE_OF_PHASE, PHASES, TrainConfig
from tf_stfusion.run.context import RunContext
from tf_stfusion.run.summaries import Summaries


def decayed_variables(model, variables, gated_exempt):
    """Which ``variables`` get weight decay: conv and dense kernels, except
    (``gated_exempt``, the search phase) the kernels that gates feed."""
    kernels = {id(l.kernel) for l in model.layers if getattr(l, "kernel", None) is not None}
    if gated_exempt:
        kernels -= {id(model.get_layer(g.feeds).kernel) for g in gate_layers(model)}
    return [id(v) in kernels for v in variables]


def make_train_step(model, distribution, optimizer, variables, step_var, *, global_batch, weight_decay=0.0,
                    regularizer=None):
    """One SGD step under ``distribution``: ``train_step(clips, labels) -> [loss, reg, accuracy]``.

    Each replica divides its summed cross-entropy by the *global* batch and adds
    its share ``1/replicas`` of the Eq. 5 term (``regularizer = (k, N, entropy, prior form)``,
    search phase only); the optimizer sums gradients over replicas. Weight decay
    is coupled L2 (``g += wd * w``, as ``torch.optim.SGD``) on conv/dense kernels,
    not on gated kernels when the regulariser is on.
    """
    replicas = distribution.num_replicas_in_sync
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
        per_replica = distribution.run(replica_step, (clips, labels))
        step_var.assign_add(1)
        return distribution.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    return train_step


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


@dataclasses.dataclass
class PhaseState:
    phase: str
    mode: Optional[str]
    epochs: int
    steps_per_epoch: int
    optimizer: object
    variables: list
    step: tf.Variable
    saver: Saver
    how: str  # "resumed from ...", "weights from ...", "from scratch"


def make_optimizer(learning_rate, momentum, policy):
    """SGD with momentum; under ``mixed_float16`` wrapped in
    a loss-scale optimizer, since float16 gradients of a small loss underflow."""
    optimizer = keras.optimizers.SGD(learning_rate, momentum=momentum)
    return keras.optimizers.LossScaleOptimizer(optimizer) if policy == "mixed_float16" else optimizer


def _current_lr(optimizer):
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    lr = inner.learning_rate
    return lr.numpy() if hasattr(lr, "numpy") else lr


def run_epoch(context, summaries, state, epoch, first, stream, train_step):
    """Steps ``first..steps_per_epoch-1`` of ``epoch`` of the phase ``state`` on the
    run ``context``: progress bar, scalars (``summaries``), checkpoints every
    ``checkpoint_every`` steps and at the epoch's end. Returns the epoch's mean
    loss, accuracy and regulariser (over the steps run here)."""
    cfg, phase, spe, log = context.config, state.phase, state.steps_per_epoch, context.log
    search = state.mode == "search"
    gate_names = [f"{g.fusion_layer}/{g.branch}" for g in gate_layers(context.model)] if search else []
    bar = None
    if cfg.progress and context.chief:
        log(f"[{phase}] epoch {epoch + 1}/{state.epochs}")
        bar = keras.utils.Progbar(spe, stateful_metrics=["lr"])
    sums, t_epoch, step = [0.0, 0.0, 0.0], time.time(), epoch * spe + first
    for i in range(first, spe):
        clips, labels = context.inputs.next_batch(stream, "train")
        lr = float(_current_lr(state.optimizer))  # the rate this update uses
        loss, reg, acc = (float(v) for v in train_step(clips, labels).numpy())
        sums[0] += loss
        sums[1] += acc
        sums[2] += reg
        step = epoch * spe + i + 1
        if bar:
            bar.update(i + 1, [("loss", loss), ("acc", acc), ("lr", lr)] + ([("kl", reg)] if search else []))
        if step % cfg.log_every == 0 or step == state.epochs * spe:
            gates = dict(zip(gate_names, drop_probabilities(context.model).numpy())) if search else None
            summaries.train(phase, step, loss, reg, acc, lr, gates)
        if step % cfg.checkpoint_every == 0:
            state.saver.save(step)
    n = max(spe - first, 1)
    if not bar:
        log(f"[{phase}] epoch {epoch + 1}/{state.epochs}: loss {sums[0] / n:.4f}, accuracy "
            f"{sums[1] / n:.4f}, {time.time() - t_epoch:.1f}s")
    if (epoch + 1) * spe % cfg.checkpoint_every:  # not saved by the loop above
        state.saver.save((epoch + 1) * spe)
    return {"loss": sums[0] / n, "accuracy": sums[1] / n, "regularizer": sums[2] / n}


class Trainer:
    """Runs the phases of ``config`` under a ``tf.distribute`` object
    (``distribution``, default one device), on the run's ``RunContext`` (``context``:
    the model, the folder and the data side, ``context.inputs``). What the phases
    start from and leave besides checkpoints is ``run.phases``' work."""

    def __init__(self, config: TrainConfig, distribution=None, source: Optional[DataSource] = None):
        self.context = RunContext(config, distribution, source)
        self.config = self.context.config
        self.folder = self.context.folder
        self.log = self.context.log
        self._weights_from = None  # checkpoint holding the newest finished phase's weights
        self.summaries = Summaries(self.folder.logs_dir, self.context.chief)

    @property
    def model(self):
        return self.context.model

    def make_step(self, state):
        """The compiled train step of a phase set up by ``setup_phase``."""
        cfg = self.config
        return make_train_step(
            self.model, self.context.distribution, state.optimizer, state.variables, state.step,
            global_batch=cfg.batch_size, weight_decay=cfg.weight_decay,
            regularizer=((cfg.length_scale, self.context.inputs.num_train, cfg.entropy, cfg.prior_form)
                         if state.phase == "search" else None),
        )

    def _restore_start(self, phase, checkpoint, saver):
        """Restores the phase's newest checkpoint, or its starting weights."""
        latest = saver.newest_readable(self.log)
        if latest:
            checkpoint.restore(latest).assert_existing_objects_matched()
            return f"resumed from {latest}"
        return phases.start_weights(self.context, phase, self._weights_from)

    def setup_phase(self, phase):
        """Gate mode, optimizer, step counter and checkpoint of a phase, restored
        from the phase's newest checkpoint or from its starting weights."""
        cfg = self.config
        mode = GATE_MODE_OF_PHASE[phase]
        if mode is not None:
            set_gate_mode(self.model, mode)
        epochs, base_lr, lr_steps = cfg.phase_schedule(phase)
        spe = self.context.steps_per_epoch
        with self.context.distribution.scope():
            optimizer = make_optimizer(piecewise_lr(base_lr, [s * spe for s in lr_steps], cfg.lr_decay),
                                       cfg.momentum, self.context.policy)
            variables = self.model.trainable_variables
            optimizer.build(variables)
            step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        checkpoint = tf.train.Checkpoint(model=self.model, optimizer=optimizer, step=step_var)
        saver = Saver(checkpoint, self.folder.phase_dir(phase), self.context.chief, cfg.keep_checkpoints)
        how = self._restore_start(phase, checkpoint, saver)
        return PhaseState(phase, mode, epochs, spe, optimizer, variables, step_var, saver, how)

    def run_phase(self, phase):
        """Runs (or resumes, or skips when finished) one phase; returns its done record."""
        cfg = self.config
        done = self.folder.phase_done(phase)
        if done:
            self.log(f"[{phase}] already finished at step {done['step']} ({done['checkpoint']}); skipping")
            self._weights_from = os.path.join(self.folder.phase_dir(phase), done["checkpoint"])
            return done
        state = self.setup_phase(phase)
        epochs, spe = state.epochs, state.steps_per_epoch
        start = int(state.step.numpy())
        if phase == "search" and start == 0:
            phases.preflight(self.context)
        self.log(f"[{phase}] {epochs} epochs x {spe} steps, global batch {cfg.batch_size}, "
                 f"{dist_lib.describe(self.context.distribution)}; {state.how} (step {start}/{epochs * spe})")
        train_step = self.make_step(state)
        # A fresh, seeded stream per (phase, start step): a resumed run does not
        # replay the clips of the steps before its checkpoint.
        seed = cfg.seed * 1_000_003 + PHASES.index(phase) * 10_007 + start
        dataset_fn = self.context.inputs.train_dataset_fn(seed)
        stream = iter(self.context.distribution.distribute_datasets_from_function(dataset_fn))
        t0, means = time.time(), None
        for epoch in range(start // spe, epochs):
            first = start - epoch * spe if epoch == start // spe else 0
            means = run_epoch(self.context, self.summaries, state, epoch, first, stream, train_step)
            if cfg.eval_every and (epoch + 1) % cfg.eval_every == 0 and epoch + 1 < epochs:
                metrics = self.context.evaluate(label=f"[{phase}] validation after epoch {epoch + 1}")
                self.summaries.evaluation(phase, (epoch + 1) * spe, metrics)
        final = state.saver.latest
        record = {"phase": phase, "step": epochs * spe, "epochs": epochs, "steps_per_epoch": spe,
                  "checkpoint": os.path.basename(final) if final else None,
                  "seconds_this_run": round(time.time() - t0, 1)}
        if means is not None:  # the last epoch ran in this process: its mean losses
            record["last_epoch"] = means
        if self.context.chief:
            atomic_write_json(self.folder.done_path(phase), record)
        self._weights_from = final
        self.summaries.flush()
        return record

    def train(self):
        """Runs (or resumes) every phase; after a search phase writes probabilities.json."""
        cfg = self.config
        if self.context.chief:
            os.makedirs(cfg.model_dir, exist_ok=True)
        self.context.write_record()
        for phase in cfg.phases:
            self.run_phase(phase)
            if phase == "search":
                self._load_weights()
                phases.write_probabilities(self.context)

    def run(self):
        """Runs (or resumes) every phase, then the final evaluation; returns its metrics."""
        cfg = self.config
        self.train()
        last = cfg.phases[-1]
        metrics_path = self.folder.metrics_path
        done = self.folder.phase_done(last) or {}
        old = self.folder.metrics()
        if old is not None and old.get("phase") == last and old.get("checkpoint") == done.get("checkpoint"):
            self.log(f"final evaluation already in {metrics_path}")
            return old
        self._load_weights()
        videos = self.context.evaluate_videos(label=f"final evaluation ({cfg.data.eval_clips} clip(s) per video)")
        metrics = phases.final_metrics(self.context, videos, last, done)
        if self.context.chief:
            atomic_write_json(metrics_path, metrics)
        self.summaries.evaluation(last, done.get("step", 0), metrics)
        self.summaries.flush()
        self.log(f"{selection.describe(metrics)} -> {metrics_path}")
        return metrics

    def _load_weights(self):
        """Puts the newest finished phase's weights into the model (after a skip)."""
        if self._weights_from:
            restore_weights(self.model, self._weights_from)
        last = self.config.phases[-1]
        mode = GATE_MODE_OF_PHASE[last]
        if mode is not None:
            set_gate_mode(self.model, mode)
