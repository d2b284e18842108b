"""A training run: its folder, its record and the run brought to life.

A run lives in one ``model_dir``; every path in it is named by ``folder.RunFolder``::

    run.json           the run's record (``record.RunRecord``): config, input contract,
                       data summary, selection hold-out, prior, distribution
    holdout.json       the training videos held out for the strategy selection
    <phase>/           checkpoints of warmup / search / fixed; ``done.json`` when finished;
                       ``search/preflight.json``, the search phase's pre-flight
    probabilities.json the learned drop probabilities (after the search phase)
    metrics.json       the final evaluation
    strategies/        the strategy search's results (``best.json``, ...); ``search/``
                       held them before they got their own folder
    compare/, sweep/   ``compare`` and ``sweep``'s runs and tables
    logs/              TensorBoard scalars (``summaries``)

Modules: ``config`` (``TrainConfig``, no TensorFlow: the CLIs check flags with it
before TensorFlow starts), ``folder`` (paths and the readers of older layouts, no
TensorFlow), ``record`` (run.json as one typed record), ``inputs`` (the data side:
source, hold-out, datasets; ``open_inputs``), ``context`` (``RunContext``: the
model side holding the data side as ``context.inputs``, ``restore`` and
``open_run``), ``phases`` (the ImageNet start weights, the search phase's
pre-flight and probabilities.json, metrics.json's record), ``checkpoints`` and
``summaries``.

This package imports nothing on import: ``import tf_stfusion.run.config`` must not
load TensorFlow.
"""
