"""Where training and validation clips come from: prepared shards or the
built-in synthetic set (generated once into a cache folder).

``resolve_source`` turns the data flags into a ``DataSource``: shard files of
both splits plus what the trainer needs from the manifests (class names,
``N`` = number of training clips for Eq. 5, whether horizontal flips are
allowed). Missing or inconsistent data fails here, before a model is built.
"""

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import subprocess
import sys
from typing import List, Optional, Tuple

from tf_stfusion.data import synthetic
from tf_stfusion.fileio import claim_settings

DATASETS = ("synthetic", "tfrecord")


@dataclasses.dataclass(frozen=True)
class DataSource:
    name: str
    data_dir: str
    train_files: List[str]
    val_files: List[str]
    class_names: List[str]
    num_train: int
    num_val: int
    flip_ok: bool
    train_examples: List[Tuple[str, int]] = ()  # (video id, label) of every training video
    val_examples: List[Tuple[str, int]] = ()
    frame_short_side: int = 0  # how prepare stored the validation frames (0: as decoded)
    jpeg_quality: int = 90


def default_synthetic_dir(config):
    """``~/.cache/tf_stfusion/synthetic/<kind>-<hash of the config>``."""
    key = json.dumps(dataclasses.asdict(config), sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    root = os.environ.get("STFUSION_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "tf_stfusion"))
    return os.path.join(root, "synthetic", f"{config.kind}-{digest}")


@contextlib.contextmanager
def _locked(folder):
    # Several processes (workers of one machine, parallel test runs) may ask for
    # the same cache: one generates, the others wait and then find it complete.
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_synthetic(config, data_dir=None, splits=("train", "val"), progress=True):
    """Generates the synthetic set as shards (once; later calls reuse it)."""
    data_dir = data_dir or default_synthetic_dir(config)
    with _locked(data_dir):
        claim_settings(os.path.join(data_dir, "synthetic.json"), dataclasses.asdict(config),
                       f"{data_dir} holds a synthetic set made with other settings ({{keys}} differ); "
                       "use another --data_dir or the same --synthetic_* flags")
        for split in splits:
            if os.path.isfile(os.path.join(data_dir, f"{split}-manifest.json")):
                continue
            # A child process: prepare's worker pool forks, which is only safe in
            # a process that has not started TensorFlow (this one may have).
            cmd = [sys.executable, "-m", "tf_stfusion.data.prepare", "--dataset=synthetic", f"--split={split}",
                   f"--output_dir={data_dir}", "--examples_per_shard=16", "--short_side=0",
                   f"--synthetic_kind={config.kind}", f"--synthetic_videos_per_class={config.videos_per_class}",
                   f"--synthetic_val_videos_per_class={config.val_videos_per_class}",
                   f"--synthetic_frames={config.num_frames}", f"--synthetic_size={config.size}",
                   f"--seed={config.seed}"]
            proc = subprocess.run(cmd, stdout=subprocess.DEVNULL,
                                  stderr=None if progress else subprocess.PIPE, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"generating the synthetic {split} split into {data_dir} failed "
                                   f"(exit {proc.returncode}): {(proc.stderr or '')[-2000:]}")
    return data_dir


def read_manifest(data_dir, split):
    path = os.path.join(data_dir, f"{split}-manifest.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found: prepare the {split!r} split first "
            f"(python -m tf_stfusion.data.prepare --split={split} --output_dir={data_dir} ...)"
        )
    with open(path) as f:
        manifest = json.load(f)
    for key in ("class_names", "num_examples", "shards"):
        if key not in manifest:
            raise ValueError(f"{path}: field {key!r} is missing; rerun prepare")
    return manifest


def read_examples(data_dir, manifest, split):
    """``(video_id, label)`` of every example of a split, from its shards' ``.done.json``
    records (prepare writes one beside each finished shard)."""
    examples = []
    for shard in manifest["shards"]:
        path = os.path.join(data_dir, f"{shard}.done.json")
        try:
            with open(path) as f:
                examples.extend((str(video_id), int(label)) for video_id, label in json.load(f)["examples"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise FileNotFoundError(f"{path}: the record of a finished {split} shard is missing or unreadable "
                                    f"({type(e).__name__}); rerun prepare for the {split!r} split to rewrite "
                                    "it") from None
    if len(examples) != manifest["num_examples"]:
        raise ValueError(f"{data_dir}: the {split} shards' records list {len(examples)} videos, the manifest "
                         f"{manifest['num_examples']}; rerun prepare for the {split!r} split")
    return examples


def resolve_source(dataset, data_dir=None, train_split="train", val_split="val",
                   synthetic_config: Optional[synthetic.SyntheticConfig] = None, progress=True):
    """The ``DataSource`` of ``--dataset``/``--data_dir``."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if dataset == "synthetic":
        data_dir = ensure_synthetic(synthetic_config or synthetic.SyntheticConfig(), data_dir,
                                    (train_split, val_split), progress)
    elif not data_dir:
        raise ValueError("--data_dir (a folder of shards written by prepare) is required for --dataset=tfrecord")
    train, val = read_manifest(data_dir, train_split), read_manifest(data_dir, val_split)
    if train["class_names"] != val["class_names"]:
        raise ValueError(
            f"{data_dir}: the {train_split} and {val_split} manifests list different classes "
            f"({len(train['class_names'])} vs {len(val['class_names'])}); prepare both from the same index"
        )
    files = {}
    for split, manifest in ((train_split, train), (val_split, val)):
        paths = [os.path.join(data_dir, s) for s in manifest["shards"]]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"{len(missing)} {split} shard(s) listed in the manifest are missing, "
                                    f"e.g. {missing[0]}; rerun prepare to complete them")
        files[split] = paths
    if train["num_examples"] == 0:
        raise ValueError(f"{data_dir}: the {train_split} split has no examples")
    return DataSource(
        name=train.get("dataset", os.path.basename(data_dir)),
        data_dir=data_dir,
        train_files=files[train_split],
        val_files=files[val_split],
        class_names=list(train["class_names"]),
        num_train=int(train["num_examples"]),
        num_val=int(val["num_examples"]),
        flip_ok=bool(train.get("flip_ok", True)),
        train_examples=read_examples(data_dir, train, train_split),
        val_examples=read_examples(data_dir, val, val_split),
        frame_short_side=int(val.get("short_side") or 0),
        jpeg_quality=int(val.get("jpeg_quality", 90)),
    )
