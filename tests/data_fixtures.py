"""Tiny fake copies of the paper's dataset layouts, with real encoded videos.

Every frame of a video of class ``c`` has the colour ``class_colour(c)``, so a
test can check labels from pixels after decode -> JPEG -> pipeline.
"""

import csv
import json
import os

import numpy as np
from PIL import Image

from tf_stfusion.data.video import write_video

H, W = 32, 48


def class_colour(label):
    return np.array([(60 + 90 * label) % 256, (200 - 70 * label) % 256, 120], np.uint8)


def frames_of(label, n=10):
    frames = np.broadcast_to(class_colour(label), (n, H, W, 3)).copy()
    frames[:, :4, :4] = np.arange(n)[:, None, None, None] * 20  # a moving corner: real content
    return frames


def write_ucf101(root, problems=False):
    classes = ["ApplyEyeMakeup", "Basketball"]
    lists = os.path.join(root, "ucfTrainTestlist")
    os.makedirs(lists)
    with open(os.path.join(lists, "classInd.txt"), "w") as f:
        f.writelines(f"{i + 1} {c}\n" for i, c in enumerate(classes))
    train, test = [], []
    for label, c in enumerate(classes):
        os.makedirs(os.path.join(root, "UCF-101", c))
        for g in (1, 8):
            rel = f"{c}/v_{c}_g{g:02d}_c01.avi"
            write_video(os.path.join(root, "UCF-101", rel), frames_of(label), codec="mpeg4")
            (train if g == 8 else test).append(rel)
    for fold in (1, 2, 3):
        with open(os.path.join(lists, f"trainlist0{fold}.txt"), "w") as f:
            f.writelines(f"{r} {classes.index(r.split('/')[0]) + 1}\n" for r in train)
        with open(os.path.join(lists, f"testlist0{fold}.txt"), "w") as f:
            f.writelines(f"{r}\n" for r in test)
    return classes


def write_kinetics(root, split="train"):
    """Two classes; plus a corrupt, an empty, a short and a missing video."""
    classes = ["abseiling", "air drumming"]
    rows = []
    for label, c in enumerate(classes):
        folder = os.path.join(root, split, c)
        os.makedirs(folder, exist_ok=True)
        for k in range(2):
            yid, start = f"yt{label}{k}aaaaaaa", 10 * k
            name = f"{yid}_{start:06d}_{start + 10:06d}.mp4" if k == 0 else f"{yid}.mp4"  # both naming styles
            write_video(os.path.join(folder, name), frames_of(label))
            rows.append((c, yid, start, start + 10))
    folder = os.path.join(root, split, classes[0])
    with open(os.path.join(folder, "corrupt00000_000000_000010.mp4"), "wb") as f:
        f.write(os.urandom(3000))
    open(os.path.join(folder, "empty000000_000000_000010.mp4"), "wb").close()
    write_video(os.path.join(folder, "short000000_000000_000010.mp4"), frames_of(0, n=3))
    rows += [(classes[0], y, 0, 10) for y in ("corrupt00000", "empty000000", "short000000", "missing0000")]
    with open(os.path.join(root, f"{split}.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
        w.writerows([*r, split] for r in rows)
    return classes


def write_sthv1(root):
    os.makedirs(root, exist_ok=True)
    classes = ["Pushing something from left to right", "Pushing something from right to left"]
    with open(os.path.join(root, "something-something-v1-labels.csv"), "w") as f:
        f.writelines(c + "\n" for c in classes)
    lines = {"train": [], "validation": []}
    for label in range(2):
        for k, split in enumerate(("train", "validation")):
            vid = str(100 + 10 * label + k)
            folder = os.path.join(root, "20bn-something-something-v1", vid)
            os.makedirs(folder)
            for i, frame in enumerate(frames_of(label)):
                Image.fromarray(frame).save(os.path.join(folder, f"{i + 1:05d}.jpg"), quality=95)
            lines[split].append(f"{vid};{classes[label]}\n")
    for split, ls in lines.items():
        with open(os.path.join(root, f"something-something-v1-{split}.csv"), "w") as f:
            f.writelines(ls)
    return classes


def write_sthv2(root):
    os.makedirs(root, exist_ok=True)
    templates = ["Moving something up", "Putting something on a surface"]
    with open(os.path.join(root, "something-something-v2-labels.json"), "w") as f:
        json.dump({t: str(i) for i, t in enumerate(templates)}, f)
    folder = os.path.join(root, "20bn-something-something-v2")
    os.makedirs(folder)
    items = {"train": [], "validation": []}
    for label, t in enumerate(templates):
        for k, split in enumerate(("train", "validation")):
            vid = 500 + 10 * label + k
            write_video(os.path.join(folder, f"{vid}.webm"), frames_of(label), codec="libvpx-vp9")
            bracketed = t.replace("something", "[something]")
            items[split].append({"id": str(vid), "label": t.lower(), "template": bracketed,
                                 "placeholders": ["a cup"]})
    for split, its in items.items():
        with open(os.path.join(root, f"something-something-v2-{split}.json"), "w") as f:
            json.dump(its, f)
    return templates
