"""The synthetic motion set: class is defined by motion, in time-reversal pairs."""

import subprocess
import sys

import numpy as np
import pytest

from tf_stfusion.data import synthetic

N = 48  # clips per class


def _clips(config, label):
    n_cls = len(config.class_names)
    return [synthetic.render_clip(config, "train", label + n_cls * i)[1].astype(np.float32) for i in range(N)]


def _t_squared(a, b):
    """Mean squared two-sample t-statistic over features (about 1 when the laws agree)."""
    a, b = np.asarray(a), np.asarray(b)
    se = np.sqrt(a.var(0, ddof=1) / len(a) + b.var(0, ddof=1) / len(b)) + 1e-6
    return float(np.mean(((a.mean(0) - b.mean(0)) / se) ** 2))


def _pooled(frame, cells=4):
    s = frame.shape[0] // cells
    return frame[: s * cells, : s * cells].reshape(cells, s, cells, s, -1).mean((1, 3))


def _presence(clip):
    """Where the shape is: distance of each frame to the clip's median frame."""
    return np.abs(clip - np.median(clip, axis=0)).sum(-1, keepdims=True)


def _time_average(clip, frames=slice(None)):
    """Pooled time-averaged frame and shape presence (the latter has the power)."""
    return np.concatenate([_pooled(clip[frames].mean(0)).ravel(),
                           _pooled(_presence(clip)[frames].mean(0)).ravel()])


def _presence_slope(clip):
    """Per-cell temporal slope of 'shape presence' (distance to the clip's median frame)."""
    cells = np.stack([_pooled(p) for p in _presence(clip)])[..., 0]  # [T, 4, 4]
    t = np.arange(len(clip)) - (len(clip) - 1) / 2
    return np.tensordot(t, cells, axes=1).ravel()


@pytest.fixture(scope="module")
def by_class():
    config = synthetic.SyntheticConfig(num_frames=12, size=48, seed=3)
    return {label: _clips(config, label) for label in range(8)}


@pytest.mark.parametrize("pair", [(0, 1), (2, 3), (4, 5), (6, 7)])
def test_reversal_pairs_have_the_same_time_averaged_frames(by_class, pair):
    a, b = ([_time_average(c) for c in by_class[k]] for k in pair)
    assert _t_squared(a, b) < 2.0


def test_the_statistic_has_power_on_half_clips(by_class):
    # Averaged over only the first half of the frames, the pair members differ
    # (the shape starts on opposite sides): the statistic above can fail.
    for pair in ((0, 1), (2, 3)):
        a, b = ([_time_average(c, slice(0, 6))[16:] for c in by_class[k]] for k in pair)
        assert _t_squared(a, b) > 2.5, pair


@pytest.mark.parametrize("pair", [(0, 1), (2, 3), (6, 7)])
def test_frame_order_differs_within_a_pair(by_class, pair):
    a, b = ([_presence_slope(c) for c in by_class[k]] for k in pair)
    assert _t_squared(a, b) > 10.0


def test_every_motion_clip_differs_from_its_reversal(by_class):
    for clips in by_class.values():
        for clip in clips[:8]:
            assert np.abs(clip - clip[::-1]).mean() > 1.0


def test_generation_is_seeded():
    config = synthetic.SyntheticConfig(num_frames=4, size=32, seed=1)
    a = synthetic.render_clip(config, "val", 5)[1]
    np.testing.assert_array_equal(a, synthetic.render_clip(config, "val", 5)[1])
    other = synthetic.SyntheticConfig(num_frames=4, size=32, seed=2)
    assert not np.array_equal(a, synthetic.render_clip(other, "val", 5)[1])
    assert synthetic.render_clip(config, "train", 5)[2] == 5 % 8


def test_appearance_variant_labels_are_shape_and_colour():
    config = synthetic.SyntheticConfig(kind="appearance", num_frames=4, size=32)
    assert len(config.class_names) == 9 and config.class_names[0] == "square_red"
    with pytest.raises(ValueError, match="synthetic kind"):
        synthetic.SyntheticConfig(kind="colour")


def test_video_writer_cli_writes_the_folder_layout(tmp_path):
    # The same --synthetic_* flags as train and prepare take; an odd size is one error line, exit 2.
    command = [sys.executable, "-m", "tf_stfusion.data.synthetic", f"--output_dir={tmp_path}",
               "--synthetic_videos_per_class=1", "--synthetic_val_videos_per_class=1", "--synthetic_frames=4"]
    done = subprocess.run([*command, "--synthetic_size=32"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "wrote 16 videos" in done.stdout, done.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == sorted(synthetic.MOTION_CLASSES)
    odd = subprocess.run([*command, "--synthetic_size=33"], capture_output=True, text=True, timeout=120)
    assert odd.returncode == 2 and odd.stderr.splitlines() == ["error: --synthetic_size=33 must be even (H.264 with "
                                                               "yuv420p)"]
