"""Every path of a run folder (``tf_stfusion.run``'s docstring draws it), and the
readers of older layouts, in one place. No TensorFlow: ``sweep`` and ``compare``
read finished runs with it."""

import json
import os

from tf_stfusion.run.config import TrainError

RUN_RECORD = "run.json"
HOLDOUT_RECORD = "holdout.json"
DONE_RECORD = "done.json"  # in a phase's folder, when the phase finished
PREFLIGHT_RECORD = "preflight.json"  # in the search phase's folder
PROBABILITIES = "probabilities.json"
METRICS = "metrics.json"
BEST_STRATEGY = "best.json"  # in the strategy search's folder
STRATEGIES_FOLDER = "strategies"
OLD_STRATEGIES_FOLDER = "search"  # where searches were written before they got their own folder
LOGS_FOLDER = "logs"
COMPARE_FOLDER = "compare"  # compare's retrained networks, one run folder each, and its table
SWEEP_FOLDER = "sweep"  # sweep's search phases, one run folder per k, and its table


def read_json(path):
    """A JSON file as a dict; None when it does not exist."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


class RunFolder:
    """The files of the run in ``model_dir``."""

    def __init__(self, model_dir):
        self.model_dir = model_dir
        self.record_path = self.path(RUN_RECORD)
        self.holdout_path = self.path(HOLDOUT_RECORD)
        self.preflight_path = os.path.join(self.phase_dir("search"), PREFLIGHT_RECORD)
        self.probabilities_path = self.path(PROBABILITIES)
        self.metrics_path = self.path(METRICS)
        self.logs_dir = self.path(LOGS_FOLDER)  # TensorBoard: logs/<phase>/
        self.strategies_dir = self.path(STRATEGIES_FOLDER)  # where a new search writes (--output_dir overrides)
        self.compare_dir = self.path(COMPARE_FOLDER)
        self.sweep_dir = self.path(SWEEP_FOLDER)

    def path(self, *parts):
        return os.path.join(self.model_dir, *parts)

    # -- run.json and holdout.json --------------------------------------------------
    def has_record(self):
        return os.path.isfile(self.record_path)

    def record_dict(self):
        """run.json as a dict; a one-line ``TrainError`` when there is none."""
        if not self.has_record():
            raise TrainError(f"{self.record_path} not found: {self.model_dir} is not a training run folder")
        return read_json(self.record_path)

    def config(self):
        """The ``TrainConfig`` the run was started with (without TensorFlow)."""
        from tf_stfusion.run.record import config_from_dict

        return config_from_dict(self.record_dict().get("config"), self.record_path)

    def record(self):
        """run.json as a ``RunRecord`` (every older layout read too)."""
        from tf_stfusion.run.record import RunRecord

        record = self.record_dict()
        return RunRecord.from_dict(record, self.record_path, manifest=self.legacy_manifest(record))

    def legacy_manifest(self, record):
        """For a run recorded before input contracts: the validation split's manifest
        of its data folder (how ``prepare`` stored the frames), or {}."""
        if "contract" in record:
            return None
        val_split = record.get("config", {}).get("data", {}).get("val_split", "val")
        return read_json(os.path.join(record.get("data", {}).get("dir") or "", f"{val_split}-manifest.json")) or {}

    # -- phases -----------------------------------------------------------------------
    def phase_dir(self, phase):
        return self.path(phase)

    def done_path(self, phase):
        return os.path.join(self.phase_dir(phase), DONE_RECORD)

    def phase_done(self, phase):
        """The ``done.json`` record of a finished phase (None while unfinished)."""
        return read_json(self.done_path(phase))

    def finished_checkpoint(self, phase):
        """The checkpoint a finished phase ended with."""
        done = self.phase_done(phase)
        if not done:
            raise TrainError(f"{self.model_dir} has no finished {phase} phase ({self.done_path(phase)} missing); "
                             "finish training first or give --checkpoint")
        return os.path.join(self.phase_dir(phase), done["checkpoint"])

    def has_checkpoints(self, phase):
        """Whether the phase's folder's checkpoint state names a checkpoint."""
        import tensorflow as tf  # here: the rest of the folder reads without TensorFlow

        return tf.train.latest_checkpoint(self.phase_dir(phase)) is not None

    def preflight(self):
        """The search phase's pre-flight, or None (a search started before pre-flights existed)."""
        return read_json(self.preflight_path)

    # -- what training writes at the top ---------------------------------------------------
    def metrics(self):
        """The final evaluation (metrics.json), or None before it."""
        return read_json(self.metrics_path)

    # -- the strategy search's results ---------------------------------------------------
    def results_dir(self):
        """Where the run's search results are: ``strategies/``, or ``search/`` for a
        search made before results got their own folder."""
        for folder in (STRATEGIES_FOLDER, OLD_STRATEGIES_FOLDER):
            if os.path.isfile(self.path(folder, BEST_STRATEGY)):
                return self.path(folder)
        raise FileNotFoundError(f"{self.model_dir} holds no strategy search results ({STRATEGIES_FOLDER}/"
                                f"{BEST_STRATEGY}); run python -m tf_stfusion.search --model_dir={self.model_dir}")

    def best_strategy_path(self):
        """The search's best.json (``results_dir``)."""
        return os.path.join(self.results_dir(), BEST_STRATEGY)
