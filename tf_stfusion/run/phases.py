"""What a training run's phases start from and leave besides checkpoints, apart
from the training loop (``trainer.Trainer``) so that each reads at once: the
ImageNet start weights, the search phase's pre-flight (``search/preflight.json``)
and its learned probabilities (``probabilities.json``), and the final evaluation's
record (``metrics.json``). Each takes a ``context.RunContext``; only the chief
writes."""

import os

import tensorflow as tf

from tf_stfusion import prior, selection
from tf_stfusion.fileio import atomic_write_json
from tf_stfusion.gating import regularizer_parts
from tf_stfusion.models import build_template
from tf_stfusion.run.checkpoints import find_checkpoint, restore_weights
from tf_stfusion.run.config import GATE_MODE_OF_PHASE, TrainError
from tf_stfusion.strategy import apply_strategy, marginals


def inflate_imagenet(model, config):
    """Keras' 2D ImageNet weights of ``config.backbone`` inflated into ``model``. A
    fixed strategy's pruned network has no slot for a skipped path, so its weights
    go through the template (``apply_strategy`` then ``prune``)."""
    from tf_stfusion.models import inflate  # keras.applications: only when asked for
    from tf_stfusion.models.prune import prune

    model2d = inflate.imagenet_2d(config.backbone)
    if config.strategy is None:
        inflate.inflate(model, model2d)
        return
    spec = model.stf_spec
    template = build_template(spec.backbone, num_classes=spec.num_classes, num_frames=spec.num_frames,
                              input_size=spec.input_size)
    inflate.inflate(template, model2d)
    apply_strategy(template, config.strategy)
    model.set_weights(prune(template, config.strategy).get_weights())


def start_weights(context, phase, weights_from=None):
    """Puts a phase's starting weights into ``context.model`` when it has no
    checkpoint of its own to resume: ``weights_from`` (the phase finished before
    it in this process), else for the search phase the folder's finished
    warm-up, else ``--init_from``, else ImageNet (``--init=imagenet``), else the
    fresh initialisation. Returns how, in words, for the log."""
    config, folder = context.config, context.folder
    source = weights_from
    warmup = folder.phase_done("warmup")
    if source is None and phase == "search" and warmup:
        source = os.path.join(folder.phase_dir("warmup"), warmup["checkpoint"])  # an earlier run's warm-up
    if source is None and config.init_from:
        source = find_checkpoint(config.init_from)
    if source:
        restore_weights(context.model, source)
        return f"weights from {source}"
    if config.init == "imagenet":
        inflate_imagenet(context.model, config)
        return "from ImageNet weights (inflated)"
    return "from scratch"


def preflight(context):
    """Before the search phase's first step: the data loss on ``preflight_batches``
    training batches at the warm-up weights (gates in search mode, inference:
    keep ``1 - p``) against the Eq. 5 term in both forms (``prior.preflight``),
    and how wide a top-1 interval the selection split gives
    (``prior.holdout_check``). Writes ``search/preflight.json``; raises a
    one-line ``TrainError`` when the ratio is above the stopping threshold,
    unless ``override_preflight``. Returns the record."""
    cfg, inputs, model, log = context.config, context.inputs, context.model, context.log
    batches = iter(inputs.train_dataset_fn(cfg.seed * 1_000_003 + 7)(None).take(cfg.preflight_batches))
    losses = []
    for clips, labels in batches:
        logits = tf.cast(model(clips, training=False), tf.float32)
        losses.append(tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(labels, tf.int32), logits))
    data_loss = float(tf.reduce_mean(tf.concat(losses, 0)))
    weights, entropy_term = regularizer_parts(model, inputs.num_train, cfg.entropy)
    result = prior.preflight(data_loss, weights, entropy_term, cfg.length_scale, inputs.num_train, cfg.prior_form)
    result["batches"] = cfg.preflight_batches
    if inputs.holdout:
        held = len(inputs.holdout - inputs.lost)
        result["selection_split"] = prior.holdout_check(held, inputs.source.num_train)
        log(result["selection_split"]["warning"] or f"pre-flight: {result['selection_split']['summary']}")
    log(result["message"])
    result["overridden"] = result["verdict"] == "stop" and cfg.override_preflight
    if context.chief:
        os.makedirs(context.folder.phase_dir("search"), exist_ok=True)
        atomic_write_json(context.folder.preflight_path, result)
    if result["verdict"] == "stop" and not cfg.override_preflight:
        raise TrainError(result["message"])
    if result["overridden"]:
        log("pre-flight: --override_preflight given; starting the search anyway")
    return result


def write_probabilities(context):
    """``probabilities.json`` after the search phase: the learned drop
    probabilities and unit marginals (``strategy.marginals``, Eq. 7) with how
    strongly the prior pulled them (``RunContext.prior_diagnostics``)."""
    diagnostics = context.prior_diagnostics()
    context.log(f"[search] prior: {diagnostics['summary']}")
    if diagnostics["warning"]:
        context.log(f"[search] warning: {diagnostics['warning']}")
    if context.chief:
        path = context.folder.probabilities_path
        atomic_write_json(path, {**marginals(context.model), "diagnostics": diagnostics})
        context.log(f"wrote {path}")


def final_metrics(context, videos, phase, done):
    """``metrics.json``'s record of the final evaluation: ``videos`` (the
    ``VideoResults`` on val) of the model after ``phase`` (its ``done`` record),
    with the skipped records (``--skip_corrupt_records``) and the per-video
    top-1 bits in the split's sorted order (``selection.pack_bits``)."""
    cfg, inputs = context.config, context.inputs
    metrics = videos.metrics(inputs.split_name("val"))
    if cfg.skip_corrupt_records:
        metrics["skipped_records"] = inputs.damage_report()
        context.log(f"data: {metrics['skipped_records']['videos']} unreadable video(s) skipped in this run")
    metrics.update(phase=phase, gate_mode=GATE_MODE_OF_PHASE[phase], checkpoint=done.get("checkpoint"),
                   eval_clips=cfg.data.eval_clips, dataset=inputs.source.name,
                   strategy=None if cfg.strategy is None else cfg.strategy.units,
                   per_video={"order": "sorted video ids of the split",
                              "videos": selection.fingerprint(inputs.split_videos("val")),
                              "top1": selection.pack_bits(videos.top1)})
    return metrics
