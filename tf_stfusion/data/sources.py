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
from typing import Dict, List, Optional, Tuple

from tf_stfusion.data import integrity, synthetic
from tf_stfusion.fileio import claim_settings

SOURCE_KINDS = ("synthetic", "tfrecord")  # what a run reads: the built-in set, or prepared shards


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
    fps: float = 0.0  # the rate prepare --fps resampled the videos to (0: as decoded)
    shard_videos: Dict[str, Tuple[str, ...]] = dataclasses.field(default_factory=dict)  # shard file -> video ids
    shard_info: Dict[str, dict] = dataclasses.field(default_factory=dict)  # shard name -> {bytes, crc32c}
    commands: Dict[str, Optional[str]] = dataclasses.field(default_factory=dict)  # split -> how prepare wrote it
    lost: Dict[str, List[str]] = dataclasses.field(default_factory=dict)  # damaged shard -> unreadable video ids

    @property
    def lost_videos(self):
        return frozenset(v for ids in self.lost.values() for v in ids)

    def command_for(self, path):
        """How to rewrite the shard at ``path`` (the prepare command of its split)."""
        split = os.path.basename(path).split("-")[0]
        return self.commands.get(split)


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


SYNTHETIC_SHARD_SIZE = 16  # videos per shard of the synthetic cache


def ensure_synthetic(config, data_dir=None, splits=("train", "val"), progress=True):
    """Generates the synthetic set as shards (once; later calls reuse it)."""
    data_dir = data_dir or default_synthetic_dir(config)
    with _locked(data_dir):
        claim_settings(os.path.join(data_dir, "synthetic.json"), dataclasses.asdict(config),
                       f"{data_dir} holds a synthetic set made with other settings ({{keys}} differ); "
                       "use another --data_dir or the same --synthetic_* flags")
        # A split is (re)generated when its manifest is missing or a shard of it is missing or
        # cut short; prepare then rewrites only the damaged shards.
        missing = [s for s in splits if not os.path.isfile(os.path.join(data_dir, f"{s}-manifest.json"))
                   or _damaged_split(data_dir, s)]
        if missing:
            # One child process for all missing splits, handed the settings as one JSON
            # object: prepare's worker pool forks, which is only safe in a process that
            # has not started TensorFlow (this one may have).
            job = synthetic_job(config, missing, data_dir, progress)
            proc = subprocess.run([sys.executable, "-m", "tf_stfusion.data.sources", job], stdout=subprocess.DEVNULL,
                                  stderr=None if progress else subprocess.PIPE, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"generating the synthetic {', '.join(missing)} split(s) into {data_dir} failed "
                                   f"(exit {proc.returncode}): {(proc.stderr or '')[-2000:]}")
    return data_dir


def synthetic_job(config, splits, data_dir, progress=True):
    return json.dumps({"config": dataclasses.asdict(config), "splits": list(splits), "data_dir": data_dir,
                       "progress": progress})


def _damaged_split(data_dir, split):
    try:
        manifest = read_manifest(data_dir, split)
    except (FileNotFoundError, ValueError):
        return True
    files = [os.path.join(data_dir, name) for name in manifest["shards"]]
    return bool(integrity.check_shards(files, manifest.get("shard_info", {})))


def _generate(job):
    """The child process of ``ensure_synthetic``: writes the splits of ``job``."""
    import shlex

    from tf_stfusion.data import prepare

    config = synthetic.SyntheticConfig(**job["config"])
    for split in job["splits"]:
        index = prepare.build_index("synthetic", None, split, synthetic_config=config)
        command = " ".join(["python", "-m", "tf_stfusion.data.sources",
                            shlex.quote(synthetic_job(config, [split], job["data_dir"]))])
        prepare.prepare(index, job["data_dir"], examples_per_shard=SYNTHETIC_SHARD_SIZE, short_side=0,
                        synthetic_config=config, progress=job["progress"], command=command)


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


def read_examples(data_dir, manifest, split, by_shard=None):
    """``(video_id, label)`` of every example of a split, from its shards' ``.done.json``
    records (prepare writes one beside each finished shard). ``by_shard``, a dict,
    receives each shard file's video ids."""
    examples = []
    for shard in manifest["shards"]:
        path = os.path.join(data_dir, f"{shard}.done.json")
        try:
            with open(path) as f:
                found = [(str(video_id), int(label)) for video_id, label in json.load(f)["examples"]]
            examples.extend(found)
            if by_shard is not None:
                by_shard[os.path.join(data_dir, shard)] = tuple(video_id for video_id, _ in found)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise FileNotFoundError(f"{path}: the record of a finished {split} shard is missing or unreadable "
                                    f"({type(e).__name__}); rerun prepare for the {split!r} split to rewrite "
                                    "it") from None
    if len(examples) != manifest["num_examples"]:
        raise ValueError(f"{data_dir}: the {split} shards' records list {len(examples)} videos, the manifest "
                         f"{manifest['num_examples']}; rerun prepare for the {split!r} split")
    return examples


def resolve_source(dataset, data_dir=None, train_split="train", val_split="val",
                   synthetic_config: Optional[synthetic.SyntheticConfig] = None, progress=True,
                   verify=False, skip_corrupt=False):
    """The ``DataSource`` of ``--dataset``/``--data_dir``.

    Every shard's size is checked against its record (``verify``: its CRC32C
    too); a damaged or missing shard stops here with a ``DataError`` naming it,
    unless ``skip_corrupt``: then the videos that cannot be read are listed in
    ``lost_videos`` and the run goes on without them.
    """
    if dataset not in SOURCE_KINDS:
        raise ValueError(f"dataset must be one of {SOURCE_KINDS}, got {dataset!r}")
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
    files, lost, shard_info, commands, examples = {}, {}, {}, {}, {}
    shard_videos = {}
    for split, manifest in ((train_split, train), (val_split, val)):
        paths = [os.path.join(data_dir, s) for s in manifest["shards"]]
        info = manifest.get("shard_info", {})
        shard_info.update(info)
        commands[split] = manifest.get("command")
        problems = integrity.check_shards(paths, info, verify)
        if problems and not skip_corrupt:
            raise integrity.damage_error(problems, commands[split])
        examples[split] = read_examples(data_dir, manifest, split, shard_videos)
        for problem in problems:
            readable = set(integrity.readable_ids(problem.path)) if problem.what != "missing" else set()
            lost[problem.path] = [v for v in shard_videos[problem.path] if v not in readable]
        files[split] = [p for p in paths if os.path.isfile(p)]
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
        train_examples=examples[train_split],
        val_examples=examples[val_split],
        frame_short_side=int(val.get("short_side") or 0),
        jpeg_quality=int(val.get("jpeg_quality", 90)),
        fps=float(val.get("fps") or 0),
        shard_videos=shard_videos,
        shard_info=shard_info,
        commands=commands,
        lost=lost,
    )


if __name__ == "__main__":
    _generate(json.loads(sys.argv[1]))
