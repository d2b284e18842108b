"""Dataset index readers: annotation files -> (video source, label, class names).

One function per layout (SPEC §6); each returns a ``DatasetIndex``. A missing
video is recorded in ``index.problems`` and left out, never fatal; an
annotation file in the wrong format fails at once with an ``AnnotationError``
naming the file, the line and what was expected.

Layouts (``data_dir`` holds the annotations, ``video_dir`` the videos; it
defaults to the usual place under ``data_dir``):

* ``ucf101``: ``UCF-101/<Class>/v_*.avi`` and ``ucfTrainTestlist/`` with
  ``classInd.txt``, ``trainlist0{1,2,3}.txt`` and ``testlist0{1,2,3}.txt``.
* ``kinetics400``: ``<split>.csv`` (``label,youtube_id,time_start,time_end,split``),
  clips ``<video_dir>/<split>/<label>/<id>_<start:06d>_<end:06d>.mp4`` or ``<id>.mp4``.
* ``sthv1``: ``something-something-v1-{train,validation}.csv`` (``id;label``),
  ``something-something-v1-labels.csv``, frames ``<video_dir>/<id>/00001.jpg``.
* ``sthv2``: ``something-something-v2-{train,validation}.json``,
  ``something-something-v2-labels.json``, videos ``<video_dir>/<id>.webm``.
* ``folder``: ``<data_dir>/<split>/<class>/<video>`` (classes sorted by name).
"""

import csv
import dataclasses
import inspect
import json
import os
from typing import List, Tuple

# Containers FFmpeg reads that users' tools write (cameras, browsers, screen and TV
# recorders, GIF makers); the decoder takes anything FFmpeg can open.
VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".3gp", ".ts", ".mts", ".m2ts", ".mpg",
                    ".mpeg", ".vob", ".flv", ".wmv", ".asf", ".ogv", ".gif", ".apng")
SPLITS = ("train", "val")


class AnnotationError(ValueError):
    """An annotation file that does not have the expected format."""


@dataclasses.dataclass(frozen=True)
class VideoEntry:
    video_id: str
    source: str  # a video file, or a folder of JPEG frames
    label: int


@dataclasses.dataclass
class DatasetIndex:
    name: str
    split: str
    class_names: List[str]
    entries: List[VideoEntry]
    problems: List[Tuple[str, str]] = dataclasses.field(default_factory=list)  # (item, reason)
    # Left/right is part of the label (Something-Something): no horizontal flip.
    flip_ok: bool = True


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _open_annotation(path, **kwargs):
    try:
        return open(path, encoding="utf-8", **kwargs)
    except FileNotFoundError:
        raise AnnotationError(f"{path}: annotation file not found") from None


def _read_lines(path):
    with _open_annotation(path) as f:
        return [line.rstrip("\r\n") for line in f]


def _add(index, video_id, source, label, is_frames=False):
    exists = os.path.isdir(source) if is_frames else os.path.isfile(source)
    if exists:
        index.entries.append(VideoEntry(video_id, source, label))
    else:
        index.problems.append((video_id, f"missing: {source}"))


# -- UCF101 -----------------------------------------------------------------
def read_ucf101(data_dir, split, fold=1, video_dir=None):
    _check_split(split)
    if fold not in (1, 2, 3):
        raise ValueError(f"UCF101 fold must be 1, 2 or 3, got {fold!r}")
    lists = os.path.join(data_dir, "ucfTrainTestlist")
    video_dir = video_dir or os.path.join(data_dir, "UCF-101")
    class_file = os.path.join(lists, "classInd.txt")
    class_names = []
    for lineno, line in enumerate(_read_lines(class_file), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) != len(class_names) + 1:
            raise AnnotationError(
                f"{class_file}:{lineno}: expected '<index> <ClassName>' with index "
                f"{len(class_names) + 1}, got {line!r}"
            )
        class_names.append(parts[1])
    lookup = {name: i for i, name in enumerate(class_names)}
    list_file = os.path.join(lists, f"{'trainlist' if split == 'train' else 'testlist'}0{fold}.txt")
    index = DatasetIndex("ucf101", split, class_names, [])
    for lineno, line in enumerate(_read_lines(list_file), start=1):
        if not line.strip():
            continue
        parts = line.split()
        rel = parts[0]
        klass = rel.split("/")[0]
        if "/" not in rel or klass not in lookup or len(parts) > 2:
            raise AnnotationError(
                f"{list_file}:{lineno}: expected '<Class>/<video>.avi"
                f"{' <label>' if split == 'train' else ''}' with a class of classInd.txt, got {line!r}"
            )
        if len(parts) == 2 and (not parts[1].isdigit() or int(parts[1]) - 1 != lookup[klass]):
            raise AnnotationError(
                f"{list_file}:{lineno}: label {parts[1]!r} does not match class {klass!r} "
                f"(expected {lookup[klass] + 1}, 1-based)"
            )
        video_id = os.path.splitext(os.path.basename(rel))[0]
        _add(index, video_id, os.path.join(video_dir, rel), lookup[klass])
    return index


# -- Kinetics-400 -------------------------------------------------------------
KINETICS_HEADER = ["label", "youtube_id", "time_start", "time_end", "split"]


def _read_kinetics_csv(path):
    with _open_annotation(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or [h.strip() for h in rows[0]][:5] != KINETICS_HEADER:
        raise AnnotationError(
            f"{path}:1: expected header {','.join(KINETICS_HEADER)}, got {','.join(rows[0]) if rows else '(empty file)'!r}"
        )
    out = []
    for lineno, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) < 5 or not _is_number(row[2]) or not _is_number(row[3]):
            raise AnnotationError(
                f"{path}:{lineno}: expected label,youtube_id,time_start,time_end,split with "
                f"numeric times, got {','.join(row)!r}"
            )
        out.append((row[0], row[1], int(float(row[2])), int(float(row[3]))))
    return out


def _is_number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


def read_kinetics400(data_dir, split, video_dir=None, annotation_file=None):
    _check_split(split)
    video_dir = video_dir or data_dir
    annotation_file = annotation_file or os.path.join(data_dir, f"{split}.csv")
    rows = _read_kinetics_csv(annotation_file)
    # Class indices come from the training list so that every split agrees.
    train_csv = os.path.join(data_dir, "train.csv")
    class_rows = _read_kinetics_csv(train_csv) if os.path.isfile(train_csv) else rows
    class_names = sorted({r[0] for r in class_rows})
    lookup = {name: i for i, name in enumerate(class_names)}
    index = DatasetIndex("kinetics400", split, class_names, [])
    for label, youtube_id, start, end in rows:
        video_id = f"{youtube_id}_{start:06d}_{end:06d}"
        if label not in lookup:
            index.problems.append((video_id, f"label {label!r} is not a training class"))
            continue
        candidates = [
            os.path.join(video_dir, split, folder, name)
            for folder in dict.fromkeys([label, label.replace(" ", "_")])
            for name in (f"{video_id}.mp4", f"{youtube_id}.mp4")
        ]
        found = next((c for c in candidates if os.path.isfile(c)), candidates[0])
        _add(index, video_id, found, lookup[label])
    return index


# -- Something-Something ------------------------------------------------------
def read_sthv1(data_dir, split, video_dir=None):
    _check_split(split)
    video_dir = video_dir or os.path.join(data_dir, "20bn-something-something-v1")
    label_file = os.path.join(data_dir, "something-something-v1-labels.csv")
    class_names = [l.strip() for l in _read_lines(label_file) if l.strip()]
    lookup = {name: i for i, name in enumerate(class_names)}
    name = "train" if split == "train" else "validation"
    list_file = os.path.join(data_dir, f"something-something-v1-{name}.csv")
    index = DatasetIndex("sthv1", split, class_names, [], flip_ok=False)
    for lineno, line in enumerate(_read_lines(list_file), start=1):
        if not line.strip():
            continue
        video_id, sep, label = line.partition(";")
        if not sep or not video_id.strip().isdigit() or label.strip() not in lookup:
            raise AnnotationError(
                f"{list_file}:{lineno}: expected '<numeric id>;<label of "
                f"something-something-v1-labels.csv>', got {line!r}"
            )
        video_id = video_id.strip()
        _add(index, video_id, os.path.join(video_dir, video_id), lookup[label.strip()], is_frames=True)
    return index


def _sthv2_template(text):
    return text.replace("[", "").replace("]", "")


def _read_json(path):
    with _open_annotation(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise AnnotationError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


def read_sthv2(data_dir, split, video_dir=None):
    _check_split(split)
    video_dir = video_dir or os.path.join(data_dir, "20bn-something-something-v2")
    label_file = os.path.join(data_dir, "something-something-v2-labels.json")
    labels = _read_json(label_file)
    if not isinstance(labels, dict) or not all(str(v).isdigit() for v in labels.values()):
        raise AnnotationError(f"{label_file}: expected an object mapping template text to a class index")
    by_index = {int(v): k for k, v in labels.items()}
    if sorted(by_index) != list(range(len(by_index))):
        raise AnnotationError(f"{label_file}: class indices must be 0..{len(by_index) - 1} without gaps")
    class_names = [by_index[i] for i in range(len(by_index))]
    name = "train" if split == "train" else "validation"
    list_file = os.path.join(data_dir, f"something-something-v2-{name}.json")
    items = _read_json(list_file)
    if not isinstance(items, list):
        raise AnnotationError(f"{list_file}: expected a list of {{id, label, template, placeholders}}")
    index = DatasetIndex("sthv2", split, class_names, [], flip_ok=False)
    for i, item in enumerate(items):
        template = _sthv2_template(item.get("template", "")) if isinstance(item, dict) else None
        if not isinstance(item, dict) or "id" not in item or template not in labels:
            raise AnnotationError(
                f"{list_file}: item {i}: expected {{\"id\", \"template\"}} with a template of "
                f"something-something-v2-labels.json, got {str(item)[:200]!r}"
            )
        video_id = str(item["id"])
        _add(index, video_id, os.path.join(video_dir, f"{video_id}.webm"), int(labels[template]))
    return index


# -- Generic folder layout -----------------------------------------------------
def _listed(folder):
    """A folder's entries but hidden ones (``.DS_Store``, macOS's ``._*`` AppleDouble
    files, ``.ipynb_checkpoints``): never videos or classes."""
    return [name for name in os.listdir(folder) if not name.startswith(".")]


def read_folder(data_dir, split, video_dir=None):
    """``<data_dir>/<split>/<class>/<video>``; class names are the sorted folder names.

    The class list is taken from the train split (when present) so that splits agree.
    """
    _check_split(split)
    root = os.path.join(video_dir or data_dir, split)
    if not os.path.isdir(root):
        raise AnnotationError(f"{root}: expected a folder <class>/<video> per split")
    train_root = os.path.join(video_dir or data_dir, "train")
    class_root = train_root if os.path.isdir(train_root) else root
    class_names = sorted(d for d in _listed(class_root) if os.path.isdir(os.path.join(class_root, d)))
    if not class_names:
        raise AnnotationError(f"{class_root}: no class folders found")
    index = DatasetIndex("folder", split, class_names, [])
    for label, klass in enumerate(class_names):
        folder = os.path.join(root, klass)
        if not os.path.isdir(folder):
            continue
        for name in sorted(_listed(folder)):
            path = os.path.join(folder, name)
            video_id = f"{klass}/{os.path.splitext(name)[0]}"
            if os.path.isdir(path) or name.lower().endswith(VIDEO_EXTENSIONS):
                index.entries.append(VideoEntry(video_id, path, label))
            else:
                index.problems.append((video_id, f"not a video file: {path} (accepted: frame folders and "
                                               f"{' '.join(VIDEO_EXTENSIONS)}; remux another container with "
                                               f"ffmpeg -i IN -c copy OUT.mkv)"))
    return index


READERS = {
    "ucf101": read_ucf101,
    "kinetics400": read_kinetics400,
    "sthv1": read_sthv1,
    "sthv2": read_sthv2,
    "folder": read_folder,
}


def read_index(dataset, data_dir, split, **kwargs):
    """Reads one split of a dataset; see the module docstring for the layouts."""
    try:
        reader = READERS[dataset]
    except KeyError:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(READERS)}") from None
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    accepted = inspect.signature(reader).parameters
    unused = sorted(k for k in kwargs if k not in accepted)
    if unused:
        raise ValueError(f"--dataset={dataset} takes no {', '.join('--' + k for k in unused)}; its options are "
                         f"{', '.join('--' + k for k in accepted if k not in ('data_dir', 'split')) or 'none'}")
    return _without_duplicate_ids(reader(data_dir, split, **kwargs))


def _without_duplicate_ids(index):
    """Keeps the first entry of each video id; a later one (``a/clip.mp4`` next to
    ``a/clip.MOV``, a row listed twice) is a problem naming both sources: one id
    must name one video in the records and the manifest."""
    first, kept = {}, []
    for entry in index.entries:
        if entry.video_id in first and entry.source == first[entry.video_id]:
            index.problems.append((entry.video_id, f"listed twice: {entry.source} (kept once)"))
        elif entry.video_id in first:
            index.problems.append((entry.video_id, f"duplicate video id: {entry.source} has the id of "
                                   f"{first[entry.video_id]}, which is kept; rename one to keep both"))
        else:
            first[entry.video_id] = entry.source
            kept.append(entry)
    index.entries[:] = kept
    return index
