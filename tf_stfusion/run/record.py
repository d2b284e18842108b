"""run.json as one typed record, ``RunRecord``, with ``to_dict`` / ``from_dict``
like ``Strategy`` and ``InputContract``.

Each fact is stored once. The config holds the settings (``num_frames``,
``input_size``, the sampler, ``eval_clips``, ...); the ``contract`` section holds
only what the config does not (the class names and how ``prepare`` stored the
frames); the run's identity (backbone, units, classes, sizes, selection) is
derived from both. Records written by earlier versions still read:

* ``stfusion-run/1`` (no ``format`` key): an ``identity`` section and a complete
  ``stfusion-contract/1`` (or, before contracts existed, no contract: the class
  names come from the identity, the frame storage from the data's manifest);
* config keys renamed since (``RENAMED_DATA_KEYS``) and settings added since
  (their values before they existed, ``_LEGACY_DEFAULTS``).

No TensorFlow at import: ``InputContract`` and ``Strategy`` are imported where used.
"""

import dataclasses
from typing import Optional

from tf_stfusion.data import synthetic
from tf_stfusion.run.config import DataConfig, TrainConfig, TrainError

FORMAT = "stfusion-run/2"
# run.json config keys written by earlier versions, and what they are called now.
RENAMED_DATA_KEYS = {"eval_views": "eval_clips", "stride": "frame_stride"}
# Settings added after runs were recorded without them, and what those runs did.
_LEGACY_DEFAULTS = {"prior_form": "paper"}  # k^2/(2N) before the form was a setting
_LEGACY_DATA_DEFAULTS = {
    "select_split": "val",  # before hold-outs existed: trained on every video
    "holdout_group": "none",  # before grouped hold-outs: video by video
}
# The contract's fields the config holds (stored once, in the config).
_CONTRACT_FROM_CONFIG = ("num_frames", "frame_stride", "sampler", "eval_clips", "eval_size")


def config_to_dict(config: TrainConfig):
    settings = dataclasses.asdict(config)
    settings["strategy"] = None if config.strategy is None else config.strategy.to_dict()
    return settings


def config_from_dict(settings, where="run.json"):
    """The ``TrainConfig`` of a run.json ``config`` section (any version); a
    one-line ``TrainError`` naming ``where`` when it cannot be read."""
    try:
        settings = {**_LEGACY_DEFAULTS, **settings}
        data = {**_LEGACY_DATA_DEFAULTS,
                **{RENAMED_DATA_KEYS.get(k, k): v for k, v in settings.pop("data").items()}}
        data["synthetic_config"] = synthetic.SyntheticConfig(**data["synthetic_config"])
        data["scale_range"] = tuple(data["scale_range"])
        strategy = settings.pop("strategy")
        for key in ("phases", "lr_steps", "warmup_lr_steps"):
            settings[key] = tuple(settings[key])
        if strategy:
            from tf_stfusion.strategy import Strategy

            strategy = Strategy.from_dict(strategy, where)
        return TrainConfig(data=DataConfig(**data), strategy=strategy or None, **settings)
    except (AttributeError, KeyError, TypeError) as e:
        raise TrainError(f"{where}: unreadable run record ({e}); was it written by another version?") from None


def contract_settings(config: TrainConfig):
    """The input contract's fields that the config holds."""
    data = config.data
    return {"num_frames": data.num_frames, "frame_stride": data.frame_stride, "sampler": data.sampler,
            "eval_clips": data.eval_clips, "eval_size": data.eval_size}


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """What run.json says of a run. ``contract`` is an ``InputContract``; ``data``
    the data summary (name, dir, num_train, num_train_split, num_val, flip);
    ``selection`` the hold-out (split, holdout_fraction, num_holdout, holdout_file,
    grouping, method); ``prior`` the Eq. 5 prior as applied; ``distribution`` the
    ``tf.distribute`` setup in words. ``stored_identity``: the identity an older
    record stored (None: derived)."""

    config: TrainConfig
    contract: object
    data: dict = dataclasses.field(default_factory=dict)
    selection: dict = dataclasses.field(default_factory=dict)
    prior: dict = dataclasses.field(default_factory=dict)
    distribution: Optional[str] = None
    stored_identity: Optional[dict] = None

    def identity(self):
        """What makes two runs the same run (``RunContext`` refuses to start another
        in the same folder): backbone, units, classes, sizes, and for a template the
        videos it trains on."""
        if self.stored_identity is not None:
            return self.stored_identity
        cfg = self.config
        identity = {"backbone": cfg.backbone, "units": None if cfg.strategy is None else cfg.strategy.units,
                    "class_names": list(self.contract.class_names), "num_frames": cfg.data.num_frames,
                    "input_size": cfg.data.input_size}
        if cfg.strategy is None:
            identity["selection"] = {"split": self.selection.get("split"),
                                     "holdout_videos": self.selection.get("num_holdout")}
        return identity

    def to_dict(self):
        stored = {k: v for k, v in self.contract.to_dict().items() if k not in _CONTRACT_FROM_CONFIG}
        return {"format": FORMAT, "config": config_to_dict(self.config), "contract": stored, "data": self.data,
                "selection": self.selection, "prior": self.prior, "distribution": self.distribution}

    @classmethod
    def from_dict(cls, record, where="run.json", manifest=None):
        """A record of any version. ``manifest``: the validation split's manifest, for
        a record made before contracts (``RunFolder.legacy_manifest``)."""
        from tf_stfusion.data.pipeline import InputContract

        if not isinstance(record, dict) or record.get("format", FORMAT) != FORMAT:
            raise TrainError(f"{where}: not a {FORMAT} record; was it written by another version?")
        config = config_from_dict(record.get("config"), where)
        stored = record.get("contract")
        if stored is None:
            stored = _legacy_contract(record, manifest or {}, where)
        try:
            contract = InputContract.from_dict(
                {**contract_settings(config), **stored, "format": InputContract.FORMAT}, where)
        except ValueError as e:
            raise TrainError(str(e)) from None
        return cls(config, contract, record.get("data", {}), record.get("selection", {}), record.get("prior", {}),
                   record.get("distribution"), record.get("identity") if "format" not in record else None)


def _legacy_contract(record, manifest, where):
    """The contract of a run recorded before contracts: classes from its identity,
    frame storage from the manifest of its validation split."""
    try:
        class_names = record["identity"]["class_names"]
    except (KeyError, TypeError):
        raise TrainError(f"{where}: no contract and no identity.class_names; was it written by another "
                         "version?") from None
    return {"class_names": class_names, "frame_short_side": int(manifest.get("short_side") or 0),
            "jpeg_quality": int(manifest.get("jpeg_quality", 90)), "fps": float(manifest.get("fps") or 0)}
