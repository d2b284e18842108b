"""Awkward real-world videos, generated here with PyAV: each kind of issue 23 (display
matrix, damaged packets, frame-size changes, frame-folder names, variable frame
rate, an empty split) with the issue's recipe and instances it does not give.

Expected frames are worked out from how each video was made (numpy rotations of
the image that was encoded, the frame numbers painted into the pixels), never
from the decoder under test.
"""

import dataclasses
import fractions
import json
import math
import os
import subprocess
import sys
import types

import av
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tf_stfusion.data import pipeline, prepare, readers
from tf_stfusion.data.video import DecodeStats, VideoError, decode, display_filters, ordered_frame_names, write_video
from tf_stfusion.export import client

H, W = 48, 64  # stored (coded) size of the marker videos


# -- how the videos are made ------------------------------------------------------
def marker_image():
    """A black 48x64 frame with a red 16x16 block in the top-left corner."""
    image = np.zeros((H, W, 3), np.uint8)
    image[:16, :16] = (255, 0, 0)
    return image


def write_marker_video(path, matrix=None, rotation=None, n=4, codec="libx264"):
    """The marker image as an H.264 video whose container carries a display matrix
    (``matrix``: 9 ints, FFmpeg's layout) or PyAV's ``set_display_rotation`` args."""
    with av.open(path, "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        if matrix is not None:
            stream.set_display_matrix(matrix)
        if rotation is not None:
            stream.set_display_rotation(*rotation)
        for _ in range(n):
            for packet in stream.encode(av.VideoFrame.from_ndarray(marker_image(), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def numbered_frames(n, h=H, w=W):
    """Frame ``i`` is grey level ``6 i + 5``: the frame number survives lossy coding."""
    return np.broadcast_to((6 * np.arange(n) + 5).astype(np.uint8)[:, None, None, None], (n, h, w, 3)).copy()


def frame_numbers(frames):
    return np.round((frames[:, :, :, 0].reshape(len(frames), -1).mean(1) - 5) / 6).astype(int).tolist()


def write_noise_video(path, codec, n=60, gop=10, options=None):
    rng = np.random.default_rng(0)
    with av.open(path, "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.codec_context.gop_size = gop
        for _ in range(n):
            image = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def truncate(path, fraction):
    """Keeps the first ``fraction`` of the file's bytes (an interrupted download)."""
    data = open(path, "rb").read()
    open(path, "wb").write(data[:int(len(data) * fraction)])
    return path


def overwrite(path, at, nbytes=64):
    data = bytearray(open(path, "rb").read())
    data[at:at + nbytes] = bytes(range(nbytes))
    open(path, "wb").write(data)


def mdat_offset(path, fraction):
    """The byte ``fraction`` of the way into an MP4's ``mdat`` payload."""
    data = open(path, "rb").read()
    start = data.index(b"mdat") + 4
    return start + int((int.from_bytes(data[start - 8:start - 4], "big") - 8) * fraction)


def packet_offset(path, k):
    """Where the ``k``-th packet (in file order) starts."""
    with av.open(path) as container:
        return sorted(p.pos for p in container.demux(container.streams.video[0]) if p.size)[k]


def concat_copy(out, parts):
    """Joins videos packet by packet without re-encoding (the concat demuxer's ``-c copy``)."""
    with av.open(out, "w") as target:
        stream, offset = None, 0
        for part in parts:
            with av.open(part) as source:
                video = source.streams.video[0]
                stream = stream or target.add_stream_from_template(video)
                end = 0
                for packet in source.demux(video):
                    if packet.dts is None:
                        continue
                    packet.pts += offset
                    packet.dts += offset
                    end = max(end, packet.pts + (packet.duration or 0))
                    packet.stream = stream
                    target.mux(packet)
                offset = end
    return out


def two_size_video(path, codec, first, second):
    """10 frames at size ``first`` (blue) then 10 at ``second`` (green); the right
    half of every frame is white."""
    parts = []
    for i, ((h, w), colour) in enumerate(((first, (0, 0, 255)), (second, (0, 255, 0)))):
        frames = np.zeros((10, h, w, 3), np.uint8)
        frames[:] = colour
        frames[:, :, w // 2:] = 255
        parts.append(write_video(f"{path}.part{i}.webm", frames, codec=codec))
    return concat_copy(path, parts)


VFR_PTS_MS = [33 * i for i in range(30)] + [957 + 500 * k for k in range(1, 11)]  # 30 at 33 ms, 10 at 500 ms


def write_vfr_video(path, pts_ms=VFR_PTS_MS):
    """Frames numbered as ``numbered_frames``, at the millisecond timestamps ``pts_ms``."""
    ms = fractions.Fraction(1, 1000)
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.time_base = stream.codec_context.time_base = ms
        for image, pts in zip(numbered_frames(len(pts_ms)), pts_ms):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = pts, ms
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_frame_folder(folder, names):
    """Frame ``i`` (grey ``6 i + 5``) saved under ``names[i]``."""
    os.makedirs(folder, exist_ok=True)
    for image, name in zip(numbered_frames(len(names), 32, 32), names):
        Image.fromarray(image).save(os.path.join(folder, name))
    return folder


def red_mask(frame):
    return (frame[..., 0] > 128) & (frame[..., 1] < 100)


# -- 1. frames as displayed ------------------------------------------------------------
ROT90 = [0, 1 << 16, 0, -(1 << 16), 0, 0, 0, 0, 1 << 30]  # what `-metadata:s:v:0 rotate=90` writes


@pytest.mark.parametrize("display,expected", [
    ({"matrix": ROT90}, lambda im: np.rot90(im, -1)),  # the issue's phone video: 90 degrees clockwise
    ({"rotation": (90,)}, lambda im: np.rot90(im, 1)),  # PyAV's angles are counter-clockwise
    ({"rotation": (180,)}, lambda im: np.rot90(im, 2)),
    ({"rotation": (0, True)}, np.fliplr),
    ({"rotation": (0, False, True)}, np.flipud),
    ({"rotation": (90, True)}, lambda im: np.fliplr(np.rot90(im, 1))),  # a transpose
    ({"rotation": (90, False, True)}, lambda im: np.flipud(np.rot90(im, 1))),  # the other transpose
    ({"rotation": (270, False, True)}, lambda im: np.flipud(np.rot90(im, 3))),
])
def test_frames_follow_the_display_matrix(tmp_path, display, expected):
    path = write_marker_video(str(tmp_path / "phone.mp4"), **display)
    frames = decode(path)
    want = red_mask(expected(marker_image()))
    assert frames.shape[1:3] == want.shape
    assert (red_mask(frames[0]) != want).mean() < 0.02
    # The client decodes with the same function: a served video is seen the same way.
    contract = pipeline.InputContract(4, 1, "dense", 1, 32, ("a",), frame_short_side=24)
    served = client.decode_video(path, contract)
    assert served.shape[1:3] == ((24, 32) if want.shape[0] < want.shape[1] else (32, 24))


def rotation_matrix(degrees):
    """``av_display_rotation_set(matrix, degrees)`` of libavutil/display.c, written out:
    16.16 fixed point, the angle counter-clockwise."""
    radians = -math.radians(degrees)
    c, s = math.cos(radians), math.sin(radians)
    return [int(c * 65536), int(-s * 65536), 0, int(s * 65536), int(c * 65536), 0, 0, 0, 1 << 30]


@pytest.mark.parametrize("degrees,filters", [
    # The ffmpeg CLI's autorotation (fftools/ffmpeg_filter.c, get_rotation of cmdutils.c):
    # theta = -round(av_display_rotation_get), here = the angle set, wrapped into [0, 360);
    # within 1 degree of 90 / 180 / 270 a transpose or flips; any other theta above 1 the
    # rotate filter, so a matrix set to -1 degree is rotated by 359.
    (0, []),
    (1, []),  # theta 1 is not "> 1": shown as stored
    (2, [("rotate", "2.0*PI/180")]),
    (-1, [("rotate", "359.0*PI/180")]),
    (-2, [("rotate", "358.0*PI/180")]),
    (45, [("rotate", "45.0*PI/180")]),
    (-45, [("rotate", "315.0*PI/180")]),
    (90, [("transpose", "clock")]),  # matrix[3] = sin(-90 deg) < 0
    (-90, [("transpose", "cclock")]),  # theta 270, matrix[3] > 0
    (180, [("hflip", ""), ("vflip", "")]),
    (179, [("rotate", "179.0*PI/180")]),  # |179 - 180| = 1 is not "< 1"
    (-89, [("rotate", "271.0*PI/180")]),  # |271 - 270| = 1: not the transpose
    (89, [("rotate", "89.0*PI/180")]),  # |89 - 90| = 1: not the transpose
])
def test_display_filters_follow_the_cli_rule_at_every_angle(degrees, filters):
    assert display_filters(rotation_matrix(degrees)) == filters


def test_one_timestamp_has_the_guessed_frame_duration_or_none():
    # A single frame lasts one frame at the stream's guessed rate; with no rate, nothing is
    # claimed (duration and fps 0), not a made-up second.
    from tf_stfusion.data.video import _Timing

    for rate, duration, fps in ((25, 0.04, 25.0), (None, 0.0, 0.0)):
        timing, stats = _Timing(), DecodeStats()
        timing.add(types.SimpleNamespace(pts=7), 0)
        timing.fill(stats, fractions.Fraction(1, 25), rate)
        assert stats.duration == pytest.approx(duration) and stats.fps == pytest.approx(fps)


def test_anamorphic_video_is_stretched_to_its_display_width(tmp_path):
    # Stored 32 wide with 2:1 pixels (sample aspect ratio): a player shows it 64 wide.
    with av.open(str(tmp_path / "anamorphic.mkv"), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = W // 2, H, "yuv420p"
        stream.codec_context.sample_aspect_ratio = fractions.Fraction(2, 1)
        stored = marker_image()[:, ::2]  # the marker becomes 16 high x 8 stored pixels
        for packet in [*stream.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")), *stream.encode()]:
            container.mux(packet)
    frames = decode(str(tmp_path / "anamorphic.mkv"))
    assert frames.shape[1:3] == (H, W) and (red_mask(frames[0]) != red_mask(marker_image())).mean() < 0.02


# -- 3. damage is survived and counted -----------------------------------------------------
def test_the_issue_recipe_mid_stream_damage_keeps_the_frames(tmp_path):
    path = write_noise_video(str(tmp_path / "damaged.mp4"), "libx264")
    overwrite(path, mdat_offset(path, 0.25))
    stats = DecodeStats()
    frames = decode(path, stats=stats)
    assert len(frames) >= 55 and stats.frames_announced == 60 and stats.packets == 60


@pytest.mark.parametrize("codec,ext,k", [("libx264", "mp4", 15), ("mpeg4", "avi", 40), ("mpeg4", "mov", 5)])
def test_a_packet_that_does_not_decode_is_skipped_and_counted(tmp_path, codec, ext, k):
    path = write_noise_video(str(tmp_path / f"damaged.{ext}"), codec)
    overwrite(path, packet_offset(path, k))  # the packet's header: the decoder rejects it
    stats = DecodeStats()
    frames = decode(path, stats=stats)
    assert stats.packets_dropped == 1 and stats.packets == 60
    assert len(frames) == stats.frames_decoded >= 55


def test_a_damaged_avi_index_read_as_junk_packets_costs_no_frame(tmp_path):
    path = write_noise_video(str(tmp_path / "index.avi"), "mpeg4")
    # The index's header (idx1, at the end): the demuxer then reads its entries as data chunks.
    overwrite(path, open(path, "rb").read().index(b"idx1") - 128, 256)
    stats = DecodeStats()
    assert len(decode(path, stats=stats)) == 60
    # Junk after the stream costs no frame; the overwrite also reaches the last frame's tail,
    # which the decoder conceals: that frame alone counts.
    assert stats.packets_dropped > 6 and stats.dropped_fraction == stats.frames_concealed / 60 <= 1 / 60


@pytest.mark.parametrize("codec,ext,k", [("libvpx", "webm", 43), ("libx264", "mkv", 31)])
def test_damage_in_matroska_keeps_the_rest(tmp_path, codec, ext, k):
    # Matroska announces no frame count and its demuxer skips a damaged block: the
    # loss shows as fewer frames over the same duration, not as dropped packets.
    path = write_noise_video(str(tmp_path / f"damaged.{ext}"), codec)
    overwrite(path, packet_offset(path, k))
    stats = DecodeStats()
    assert 55 <= len(decode(path, stats=stats)) < 60
    assert stats.frames_announced == 0 and abs(stats.duration - 2.4) < 0.01


def damage_sample_sizes(path):
    """32 bytes of the MP4 sample size table (``stsz``) overwritten: the demuxer stops early."""
    overwrite(path, open(path, "rb").read().index(b"stsz") + 40, 32)
    return path


@pytest.mark.parametrize("codec,ext,options,damage", [
    # the index first: 60 frames announced, 36 in the file
    ("libx264", "mp4", {"movflags": "+faststart"}, lambda path: truncate(path, 0.6)),
    ("mpeg4", "avi", None, lambda path: truncate(path, 0.5)),
    ("libx264", "mp4", None, damage_sample_sizes),
])
def test_a_truncated_file_counts_its_undelivered_frames_as_dropped(tmp_path, codec, ext, options, damage):
    path = damage(write_noise_video(str(tmp_path / f"cut.{ext}"), codec, options=options))
    with av.open(path) as container:  # what the cut file still holds, packet by packet
        delivered = sum(1 for p in container.demux(container.streams.video[0]) if p.size)
    assert delivered < 45
    stats = DecodeStats()
    frames = decode(path, stats=stats)
    assert stats.frames_announced == stats.packets == 60
    assert stats.packets_dropped >= 60 - delivered and stats.dropped_fraction > 0.25
    # Every delivered packet that decodes is a frame: none is lost silently (frame
    # threads lost the two in flight at the cut and reported no error).
    assert len(frames) == stats.frames_decoded == 60 - stats.packets_dropped


def test_a_truncated_webm_shows_as_a_shorter_duration_than_announced(tmp_path):
    # Matroska states no frame count; its duration (in the header) survives the cut.
    path = truncate(write_noise_video(str(tmp_path / "cut.webm"), "libvpx"), 0.5)
    stats = DecodeStats()
    frames = decode(path, stats=stats)
    assert stats.frames_announced == 0 and abs(stats.duration_announced - 2.4) < 0.01
    assert stats.duration < 1.8 and abs(stats.duration - len(frames) / 25) < 0.01


def test_max_frames_stops_early_without_counting_the_rest_as_dropped(tmp_path):
    stats = DecodeStats()
    assert len(decode(write_noise_video(str(tmp_path / "v.mp4"), "libx264"), max_frames=5, stats=stats)) == 5
    assert stats.frames_announced == 60 and stats.packets_dropped == 0 and stats.dropped_fraction == 0
    assert abs(stats.duration - 0.2) < 0.01 and abs(stats.duration_announced - 2.4) < 0.01


def test_concealed_frames_count_as_damage(tmp_path):
    # The reviewer's heavy damage: 64 bytes overwritten at 15 places of mdat. FFmpeg
    # conceals some of the damaged packets from other frames instead of rejecting them.
    path = write_noise_video(str(tmp_path / "heavy.mp4"), "libx264")
    for k in range(1, 16):
        overwrite(path, mdat_offset(path, k / 16))
    stats = DecodeStats()
    decode(path, stats=stats)
    assert stats.frames_concealed >= 1  # 5 of 60 here, and no packet rejected
    assert stats.dropped_fraction == (stats.packets_dropped + stats.frames_concealed) / 60
    assert stats.damage().endswith(f"and {stats.frames_concealed} frames are concealed")


# -- 4. a frame-size change is scaled to the first frame's size ---------------------------------
@pytest.mark.parametrize("codec,second", [("libvpx", (64, 96)), ("libvpx-vp9", (64, 48))])
def test_a_size_change_is_scaled_to_the_first_size(tmp_path, codec, second):
    frames = decode(two_size_video(str(tmp_path / "joined.webm"), codec, (H, W), second))
    assert frames.shape == (20, H, W, 3)
    left, right = frames[:, H // 2, : W // 4].mean(1), frames[:, H // 2, -W // 4:].mean(1)
    assert (left[:10, 2] > 200).all() and (left[10:, 1] > 200).all() and (left[10:, 2] < 60).all()
    assert (right > 200).all()  # the white half stays the right half: scaled, not cropped


# -- 5. frame folders in natural order ------------------------------------------------------------
@pytest.mark.parametrize("pattern", ["{}.jpg", "img_{:05d}.jpg", "frame_{}.png", "{}_rgb.jpeg",
                                     "frame_{:03d}_v2.jpg", "cam1_{}.jpg"])  # a constant number does not order
def test_frame_folders_are_read_in_the_order_of_their_numbers(tmp_path, pattern):
    numbers = [1, 2, 3, 5, 7, 8, 9, 10, 11, 12, 30, 100]  # gaps, and more digits later on
    write_frame_folder(str(tmp_path / "v"), [pattern.format(n) for n in numbers])
    assert frame_numbers(decode(str(tmp_path / "v"))) == list(range(len(numbers)))


@pytest.mark.parametrize("names,why", [
    (["a.jpg", "b.jpg"], "'a.jpg' has none"),
    (["1.jpg", "01.jpg"], "both are frame 1"),
    (["img_1.jpg", "flow_2.jpg"], "more than one naming pattern"),
    (["a1_b2.jpg", "a2_b1.jpg"], "more than one number varies and they disagree"),
])
def test_a_folder_whose_names_have_no_order_is_refused(tmp_path, names, why):
    write_frame_folder(str(tmp_path / "v"), names)
    with pytest.raises(VideoError, match=f"cannot be ordered by a number: .*{why}"):
        ordered_frame_names(str(tmp_path / "v"))


def test_hidden_files_are_not_frames_or_videos(tmp_path):
    folder = write_frame_folder(str(tmp_path / "train" / "a" / "frames"), [f"{n:05d}.jpg" for n in range(1, 4)])
    for name in ("._00001.jpg", ".DS_Store"):  # macOS: AppleDouble resource forks, Finder state
        (tmp_path / "train" / "a" / "frames" / name).write_bytes(b"\0\x05\x16\x07" + b"\0" * 80)
    assert frame_numbers(decode(folder)) == [0, 1, 2]
    write_video(str(tmp_path / "train" / "a" / "good.mp4"), numbered_frames(2))
    (tmp_path / "train" / "a" / "._good.mp4").write_bytes(b"\0\x05\x16\x07" + b"\0" * 80)
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()
    index = readers.read_index("folder", str(tmp_path), "train")
    assert index.class_names == ["a"] and index.problems == []
    assert sorted(e.video_id for e in index.entries) == ["a/frames", "a/good"]


def test_frames_of_other_sizes_are_scaled_to_the_first(tmp_path):
    folder = str(tmp_path / "v")
    write_frame_folder(folder, ["1.jpg", "2.jpg", "3.jpg"])  # 32x32
    for i, name in enumerate(["4.jpg", "5.jpg", "6.jpg"], start=3):
        Image.fromarray(numbered_frames(6, 48, 64)[i]).save(os.path.join(folder, name))
    frames = decode(folder, short_side=16)
    assert frames.shape == (6, 16, 16, 3) and frame_numbers(frames) == list(range(6))


@pytest.mark.parametrize("orientation,shown", [  # EXIF 2.3, tag 0x0112
    (6, lambda im: np.rot90(im, -1)),  # the reviewer's: turned 90 degrees clockwise
    (8, lambda im: np.rot90(im, 1)),
    (3, lambda im: np.rot90(im, 2)),
    (2, np.fliplr),
])
def test_exif_orientation_is_applied(tmp_path, orientation, shown):
    os.makedirs(tmp_path / "v")
    image = Image.fromarray(marker_image())  # 64 wide x 48 high, marker top-left
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(str(tmp_path / "v" / "1.jpg"), exif=exif, quality=95)
    frame, want = decode(str(tmp_path / "v"))[0], red_mask(shown(marker_image()))
    assert frame.shape[:2] == want.shape and (red_mask(frame) != want).mean() < 0.02


def _grey16(path):
    Image.fromarray(np.full((8, 8), 30000, np.uint16)).save(path)


def _grey_alpha(path):
    Image.fromarray(np.dstack([np.full((8, 8), 100, np.uint8), np.zeros((8, 8), np.uint8)]), "LA").save(path)


def _palette_transparent(path):
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    image.save(path, transparency=1)


def _one_bit(path):
    Image.new("1", (8, 8), 1).save(path)


@pytest.mark.parametrize("make,rgb", [
    (_grey16, (117, 117, 117)),  # 30000 / 257: FFmpeg's gray16 -> rgb24 (PIL's convert clips to 255)
    (_grey_alpha, (100, 100, 100)),  # alpha dropped, as FFmpeg's rgb24 drops it
    (_palette_transparent, (10, 200, 30)),
    (_one_bit, (255, 255, 255)),
])
def test_image_modes_are_stored_as_shown(tmp_path, make, rgb):
    os.makedirs(tmp_path / "v")
    make(str(tmp_path / "v" / "1.png"))
    assert (np.abs(decode(str(tmp_path / "v"))[0].astype(int) - rgb) <= 1).all()


def test_an_unreadable_image_is_a_dropped_frame(tmp_path):
    folder = write_frame_folder(str(tmp_path / "v"), [f"{n}.jpg" for n in range(1, 13)])
    truncate(os.path.join(folder, "5.jpg"), 0.3)
    open(os.path.join(folder, "9.jpg"), "wb").close()  # 0 bytes
    stats = DecodeStats()
    assert frame_numbers(decode(folder, stats=stats)) == [0, 1, 2, 3, 5, 6, 7, 9, 10, 11]
    assert (stats.packets, stats.packets_dropped, stats.dropped_fraction) == (12, 2, 2 / 12)


# -- 2. time ------------------------------------------------------------------------------------
def _sampled_seconds(frames, fps):
    """Source times (s) of the frames ``UniformClipSampler(8)`` picks from ``frames``."""
    picks = pipeline.UniformClipSampler(8).indices(tf.constant(len(frames)), 1, False, None).numpy()[0]
    times = [VFR_PTS_MS[i] / 1000 for i in frame_numbers(frames[picks])]
    return np.array(times)


def test_fps_resampling_spreads_sampled_frames_over_time(tmp_path):
    path = write_vfr_video(str(tmp_path / "vfr.mp4"))
    stats = DecodeStats()
    by_index = decode(path, stats=stats)
    assert stats.variable_frame_rate and abs(stats.duration - 5.99) < 0.01 and abs(stats.fps - 40 / 5.99) < 0.01
    assert (_sampled_seconds(by_index, None) < 1).sum() == 6  # the issue's finding, without --fps
    resampled = decode(path, fps=5)
    assert abs(len(resampled) - 30) <= 1  # 6 s at 5 fps
    seconds = _sampled_seconds(resampled, 5)
    assert (seconds < 1).sum() <= 2 and seconds.max() - seconds.min() > 4
    constant = DecodeStats()
    decode(write_marker_video(str(tmp_path / "cfr.mp4"), n=10), stats=constant)
    assert not constant.variable_frame_rate and abs(constant.fps - 25) < 0.01


def test_contracts_without_fps_still_read_and_mean_no_resampling():
    old = pipeline.InputContract(8, 2, "dense", 1, 32, ("a", "b")).to_dict()
    del old["fps"]
    assert pipeline.InputContract.from_dict(old).fps == 0.0


# -- 6. bounded memory: records streamed from a spool ----------------------------------------------
def test_streamed_records_are_the_bytes_tensorflow_writes(tmp_path):
    from tf_stfusion.data.records import FrameSpool, ShardWriter, context_features

    rng = np.random.default_rng(0)
    jpegs = [rng.bytes(n) for n in (0, 1, 127, 128, 300, 20000)]  # sizes around varint boundaries
    with tf.io.TFRecordWriter(str(tmp_path / "tf.tfrecord")) as writer:
        writer.write(b"first")
        writer.write(prepare.sequence_example("v/1", 3, jpegs, 48, 64).SerializeToString(deterministic=True))
    with ShardWriter(str(tmp_path / "ours.tfrecord")) as writer:
        writer.write(b"first")
        spool = FrameSpool(str(tmp_path))
        for jpeg in jpegs:
            spool.add(jpeg)
        writer.example(context_features("v/1", 3, len(jpegs), 48, 64), spool)
        spool.close()
    assert (tmp_path / "ours.tfrecord").read_bytes() == (tmp_path / "tf.tfrecord").read_bytes()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".frames-")] == []


# -- the whole split: prepare ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def awkward_folder(tmp_path_factory):
    """A ``folder`` dataset holding one of each awkward kind, next to good clips."""
    root = tmp_path_factory.mktemp("awkward")
    train = root / "train"
    for klass in ("a", "b"):
        (train / klass).mkdir(parents=True)
    write_video(str(train / "a" / "good.mp4"), numbered_frames(8))
    write_marker_video(str(train / "a" / "phone.mp4"), matrix=ROT90)
    damaged = write_noise_video(str(train / "a" / "damaged.mp4"), "libx264")
    overwrite(damaged, packet_offset(damaged, 15))
    two_size_video(str(train / "b" / "joined.webm"), "libvpx", (H, W), (64, 96))
    write_vfr_video(str(train / "b" / "vfr.mp4"))
    write_frame_folder(str(train / "b" / "frames"), [f"{n}.jpg" for n in range(1, 13)])
    write_frame_folder(str(train / "b" / "unnamed"), ["x.jpg", "y.jpg"])
    (train / "b" / "junk.mp4").write_bytes(b"\0" * 1000)
    return root


def _stored(out, video_id):
    for shard in pipeline.list_shards(str(out), "train"):
        for record in tf.data.TFRecordDataset(shard):
            encoded, _, media_id = pipeline.parse_example(record)
            if media_id.numpy().decode() == video_id:
                return np.stack([tf.io.decode_jpeg(jpeg).numpy() for jpeg in encoded])
    raise AssertionError(f"{video_id} not stored")


def test_prepare_keeps_every_usable_video_and_says_what_it_saw(awkward_folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "train-00000-of-00002.tfrecord.tmp-4242").write_bytes(b"left by a killed run")
    index = readers.read_index("folder", str(awkward_folder), "train")
    manifest = prepare.prepare(index, str(out), examples_per_shard=4, num_workers=1, short_side=0,
                               progress=False, fps=5)
    assert not [p for p in os.listdir(out) if ".tmp-" in p]
    skipped = dict(manifest["skipped"])
    assert set(skipped) == {"b/unnamed", "b/junk"}
    assert "cannot be ordered by a number" in skipped["b/unnamed"] and skipped["b/junk"].startswith("cannot decode")
    videos = manifest["videos"]
    assert videos["a/damaged"]["packets_dropped"] == 1 and videos["a/damaged"]["frames_announced"] == 60
    assert videos["a/damaged"]["frames_decoded"] == 59
    assert videos["b/vfr"]["variable_frame_rate"] and videos["b/vfr"]["duration"] == 5.99
    assert not videos["a/good"]["variable_frame_rate"] and videos["a/good"]["fps"] == 25
    assert manifest["fps"] == 5
    assert _stored(out, "a/phone").shape[1:3] == (W, H)
    assert _stored(out, "b/joined").shape[1:3] == (H, W)
    assert frame_numbers(_stored(out, "b/frames")) == list(range(12))  # frame folders are never resampled
    # What a client sends for the VFR video is what prepare stored (same decoder, same --fps).
    contract = pipeline.InputContract(4, 1, "dense", 1, 32, ("a", "b"), fps=5)
    sent, _ = client.request_frames(str(awkward_folder / "train" / "b" / "vfr.mp4"), contract, whole_video=True)
    assert frame_numbers(np.stack([tf.io.decode_jpeg(f).numpy() for f in sent])) == \
        frame_numbers(_stored(out, "b/vfr"))


def test_the_rate_reaches_the_data_source(awkward_folder, tmp_path):
    from tf_stfusion.data import sources

    index = readers.read_index("folder", str(awkward_folder), "train")
    index.entries[:] = [e for e in index.entries if e.video_id == "a/good"]
    for split in ("train", "val"):
        prepare.prepare(dataclasses.replace(index, split=split), str(tmp_path), num_workers=1, short_side=0,
                        progress=False, fps=12.5)
    assert sources.resolve_source("tfrecord", str(tmp_path)).fps == 12.5


def test_too_many_dropped_packets_skip_the_video(awkward_folder, tmp_path):
    index = readers.read_index("folder", str(awkward_folder), "train")
    index.entries[:] = [e for e in index.entries if e.video_id in ("a/damaged", "a/good")]
    manifest = prepare.prepare(index, str(tmp_path), num_workers=1, short_side=0, progress=False,
                               max_dropped_fraction=0.01)
    assert manifest["num_examples"] == 1
    assert dict(manifest["skipped"])["a/damaged"] == \
        "damaged: 1 of 60 packets do not decode (> --max_dropped_fraction=0.01)"


def test_any_other_failure_is_that_videos_skip(awkward_folder, tmp_path, monkeypatch):
    index = readers.read_index("folder", str(awkward_folder), "train")
    index.entries[:] = [e for e in index.entries if e.video_id in ("a/good", "a/phone")]
    encode = prepare.encode_jpeg

    def encode_jpeg(frame, quality):  # fails on the phone video's frames (48 wide) only
        if frame.shape[1] == H:
            raise RuntimeError("simulated fault")
        return encode(frame, quality)

    monkeypatch.setattr(prepare, "encode_jpeg", encode_jpeg)
    manifest = prepare.prepare(index, str(tmp_path), num_workers=1, short_side=0, progress=False)
    assert manifest["skipped"] == [["a/phone", "failed: RuntimeError: simulated fault"]]
    assert manifest["num_examples"] == 1 and not list(tmp_path.glob(".frames-*"))


def test_a_full_disk_is_a_split_wide_error_naming_the_file(awkward_folder, tmp_path, monkeypatch):
    from tf_stfusion.data import records

    def full(self, jpeg):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(records.FrameSpool, "add", records._writing(full))
    index = readers.read_index("folder", str(awkward_folder), "train")
    index.entries[:] = [e for e in index.entries if e.video_id == "a/good"]
    message = r"the frame spool in .*: cannot write \(OSError: \[Errno 28\] No space left on device\); check the space"
    with pytest.raises(prepare.PrepareError, match=message):
        prepare.prepare(index, str(tmp_path), num_workers=1, short_side=0, progress=False)


def test_a_split_with_no_readable_video_fails_with_the_reasons(tmp_path):
    # Kinetics extracted flat, without class folders: every listed clip is "missing".
    rows = ["label,youtube_id,time_start,time_end,split"]
    for i in range(6):
        write_video(str(tmp_path / f"yt{i}.mp4"), numbered_frames(2))
        rows.append(f"abseiling,yt{i},0,10,train")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    result = subprocess.run([sys.executable, "-m", "tf_stfusion.data.prepare", "--dataset=kinetics400",
                             f"--data_dir={tmp_path}", f"--output_dir={tmp_path / 'out'}", "--num_workers=1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: no video of the train split was written (6 missing (e.g. yt0_000000_000010: missing:" \
        in result.stderr
    assert json.loads((tmp_path / "out" / "train-manifest.json").read_text())["num_skipped"] == 6


def test_duplicate_video_ids_keep_the_first_and_name_both(tmp_path):
    os.makedirs(tmp_path / "train" / "a")
    write_video(str(tmp_path / "train" / "a" / "clip.mp4"), numbered_frames(2))
    write_video(str(tmp_path / "train" / "a" / "clip.MOV"), numbered_frames(3))
    write_frame_folder(str(tmp_path / "train" / "a" / "clip"), ["1.jpg"])
    index = readers.read_index("folder", str(tmp_path), "train")
    assert [e.source for e in index.entries] == [str(tmp_path / "train" / "a" / "clip")]
    assert [(v, r.split(":")[0]) for v, r in index.problems] == [("a/clip", "duplicate video id")] * 2
    assert "clip.MOV has the id of " in index.problems[0][1] and "rename one" in index.problems[0][1]
    # Every layout: a Kinetics row listed twice.
    (tmp_path / "train.csv").write_text("label,youtube_id,time_start,time_end,split\n"
                                        + "abseiling,yt0,0,10,train\n" * 2)
    os.makedirs(tmp_path / "k" / "train" / "abseiling")
    write_video(str(tmp_path / "k" / "train" / "abseiling" / "yt0.mp4"), numbered_frames(2))
    index = readers.read_index("kinetics400", str(tmp_path), "train", video_dir=str(tmp_path / "k"))
    assert len(index.entries) == 1 and index.problems[0][1].startswith("listed twice: ")


def test_the_stream_a_player_picks_not_a_thumbnail_stored_first(tmp_path):
    """A one-frame 32x24 picture stream written before the 64x48 video, which is
    the default stream (as some phones and editors store a thumbnail): the video
    is decoded, as FFmpeg's av_find_best_stream (players) and the ffmpeg CLI pick it."""
    path = str(tmp_path / "thumb_first.mp4")
    with av.open(path, "w") as container:
        thumb = container.add_stream("mjpeg", rate=25)
        thumb.width, thumb.height, thumb.pix_fmt = 32, 24, "yuvj420p"
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = W, H, "yuv420p"
        thumb.disposition, video.disposition = av.stream.Disposition(0), av.stream.Disposition.default
        frames = numbered_frames(10)
        for packet in thumb.encode(av.VideoFrame.from_ndarray(np.full((24, 32, 3), 250, np.uint8), format="rgb24")):
            container.mux(packet)
        for packet in thumb.encode():
            container.mux(packet)
        for image in frames:
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
    decoded = decode(path)
    assert decoded.shape == (10, H, W, 3)
    np.testing.assert_allclose(decoded.reshape(10, -1).mean(axis=1), frames.reshape(10, -1).mean(axis=1), atol=3)


def test_other_containers_are_videos_and_a_wrong_file_names_what_is_accepted(tmp_path):
    os.makedirs(tmp_path / "train" / "a")
    frames = numbered_frames(6)
    write_video(str(tmp_path / "train" / "a" / "tv.ts"), frames)
    write_video(str(tmp_path / "train" / "a" / "anim.gif"), frames, codec="gif", pix_fmt="rgb8")
    (tmp_path / "train" / "a" / "notes.txt").write_text("not a video")
    index = readers.read_index("folder", str(tmp_path), "train")
    assert sorted(e.video_id for e in index.entries) == ["a/anim", "a/tv"]
    assert [len(decode(e.source)) for e in sorted(index.entries, key=lambda e: e.video_id)] == [6, 6]
    (video_id, reason), = index.problems
    assert video_id == "a/notes" and "not a video file" in reason and ".ts" in reason and "-c copy" in reason


def test_fps_above_a_videos_length_names_fps_and_the_length(tmp_path):
    path = write_video(str(tmp_path / "one.mp4"), numbered_frames(1), fps=25)
    with pytest.raises(VideoError, match=r"no frames at --fps=0.5: the video lasts 0.04 s \(1 frames decoded\)"):
        decode(path, fps=0.5)


def test_prepare_warns_of_classes_without_videos_and_folders_fps_cannot_resample():
    manifest = {"split": "train", "counts_per_class": {"a": 3, "hid": 0}, "fps": 10.0,
                "videos": {"a/v": {"fps": 25.0}, "a/frames": {"fps": 0.0}}}
    lines = prepare._warnings(manifest)
    assert lines == ["1 class(es) with no train video: hid; remove the folder(s) or add videos",
                     "--fps=10 does not resample frame folders (no timestamps): 1 video(s) kept every frame, "
                     "e.g. a/frames"]
    assert prepare._warnings({**manifest, "num_tasks": 2}) == []


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_an_output_dir_that_cannot_be_made_is_one_line(tmp_path, where):
    (tmp_path / "taken").write_text("")
    output_dir = tmp_path / "taken" if where == "a file" else tmp_path / "taken" / "out"
    index = readers.DatasetIndex("folder", "train", ["a"], [])
    with pytest.raises(prepare.PrepareError, match=f"--output_dir {output_dir} .*; give a folder you can write to"):
        prepare.prepare(index, str(output_dir), progress=False)


def test_a_folder_losing_too_many_images_is_skipped(tmp_path):
    folder = write_frame_folder(str(tmp_path / "train" / "a" / "frames"), [f"{n}.jpg" for n in range(1, 13)])
    open(os.path.join(folder, "3.jpg"), "wb").close()
    write_video(str(tmp_path / "train" / "a" / "good.mp4"), numbered_frames(2))
    index = readers.read_index("folder", str(tmp_path), "train")
    manifest = prepare.prepare(index, str(tmp_path / "out"), num_workers=1, short_side=0, progress=False,
                               max_dropped_fraction=0.05)
    assert manifest["skipped"] == [["a/frames", "damaged: 1 of 12 frame images do not decode "
                                    "(> --max_dropped_fraction=0.05)"]]


def test_jpg_and_jpeg_are_one_pattern_png_and_jpg_two(tmp_path):
    """``1.jpg, 2.jpeg, 3.JPG``: one format, so one naming pattern, in order; ``1.png,
    2.jpg``: two formats, two patterns, skipped with the reason."""
    folder = write_frame_folder(str(tmp_path / "mixed_case"), ["1.jpg", "2.jpeg", "3.JPG"])
    assert ordered_frame_names(folder) == ["1.jpg", "2.jpeg", "3.JPG"]
    folder = write_frame_folder(str(tmp_path / "two_formats"), ["1.png", "2.jpg"])
    with pytest.raises(VideoError, match="more than one naming pattern"):
        ordered_frame_names(folder)


def test_a_video_starting_at_5_s_lasts_its_own_length():
    """Frames stamped 5.00 s ... 5.36 s (10 at 25 fps, as a cut from a longer
    recording keeps its timestamps): 0.4 s at 25 fps, not 5.4 s."""
    import fractions
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "late.mp4")
        with av.open(path, "w") as container:
            stream = container.add_stream("libx264", rate=25)
            stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
            for i, image in enumerate(numbered_frames(10)):
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts, frame.time_base = 125 + i, fractions.Fraction(1, 25)
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        stats = DecodeStats()
        assert len(decode(path, stats=stats)) == 10
    assert stats.duration == pytest.approx(0.4) and stats.fps == pytest.approx(25.0)


def test_the_damage_sentence_counts_in_words():
    assert DecodeStats(packets=60, packets_dropped=3).damage() == "3 of 60 packets do not decode"
    assert DecodeStats(packets=60, packets_dropped=3, frames_concealed=1).damage() == \
        "3 of 60 packets do not decode and 1 frame is concealed"
    assert DecodeStats(packets=12, packets_dropped=0, frames_concealed=2).damage("frame images") == \
        "0 of 12 frame images do not decode and 2 frames are concealed"


# -- data/video: boundaries, defaults and constants pinned by hand (issue 29) ------------------------
# Each expected value below is worked out from the documented rule (the docstring, FFmpeg's code or
# PIL's documented default), not by calling the function under test.
def test_decode_stats_fraction_and_manifest_rounding_by_hand():
    assert DecodeStats().dropped_fraction == 0.0  # no packet read yet: nothing lost
    assert DecodeStats(packets=40, packets_dropped=6, frames_concealed=2).dropped_fraction == 0.2  # (6 + 2) / 40
    assert DecodeStats(packets=10, packets_dropped=8, frames_concealed=5).dropped_fraction == 1.0  # 13 / 10, capped
    # Every announced frame decoded: the 20 rejected packets were junk past the stream; only the
    # 2 concealed frames count (2 / 50). One frame short: the lost packets count ((1 + 2) / 50).
    assert DecodeStats(frames_announced=50, frames_decoded=50, packets=70, packets_dropped=20,
                       frames_concealed=2).dropped_fraction == 0.04
    assert DecodeStats(frames_announced=50, frames_decoded=49, packets=50, packets_dropped=1,
                       frames_concealed=2).dropped_fraction == 0.06
    # The manifest keeps times and rates to the millisecond / thousandth.
    stats = DecodeStats(frames=3, fps=12.34567, duration=1.23456, duration_announced=2.00049)
    assert stats.to_dict() == {"frames": 3, "frames_decoded": 0, "frames_announced": 0, "packets": 0,
                               "packets_dropped": 0, "frames_concealed": 0, "fps": 12.346, "duration": 1.235,
                               "duration_announced": 2.0, "variable_frame_rate": False}


def _timed(pts, time_base):
    from tf_stfusion.data.video import _Timing

    timing, stats = _Timing(), DecodeStats()
    for i, t in enumerate(pts):
        timing.add(types.SimpleNamespace(pts=t), i)
    timing.fill(stats, time_base, 25)
    return stats


def test_timing_of_two_frames_and_the_variable_rate_thresholds_by_hand():
    # Two frames one tick apart last two ticks (the last frame lasts the median step), not the
    # one frame at the guessed rate that a single timestamp gets.
    stats = _timed([1, 0], fractions.Fraction(1, 25))
    assert stats.duration == pytest.approx(0.08) and stats.fps == pytest.approx(25.0)
    # "Variable": the steps differ by more than two ticks and by more than 10% of the median step.
    ms = fractions.Fraction(1, 1000)
    for pts, variable in (([0, 1, 2, 5], False),  # steps 1, 1, 3: a spread of 2 ticks is not more than 2
                          ([0, 1, 2, 6], True),  # spread 3 ticks > 2 (and > 10% of 1)
                          ([0, 100, 200, 310], False),  # spread 10 = 10% of the median 100: not more
                          ([0, 100, 200, 315], True)):  # spread 15 > 10
        assert _timed(pts, ms).variable_frame_rate is variable, pts
    stats = _timed([0, 100, 200, 310], ms)
    assert stats.duration == pytest.approx(0.41) and stats.fps == pytest.approx(4 / 0.41)  # (310 + 100) ms


def test_announced_duration_the_stream_then_the_container_by_hand():
    from tf_stfusion.data.video import _announced_duration

    ns, hundredth = types.SimpleNamespace, fractions.Fraction(1, 100)
    assert _announced_duration(ns(duration=9_000_000), ns(duration=250, time_base=hundredth)) == 2.5
    # The stream states no duration (or no time base): the container's, in microseconds.
    assert _announced_duration(ns(duration=1_500_000), ns(duration=None, time_base=hundredth)) == 1.5
    assert _announced_duration(ns(duration=1_500_000), ns(duration=250, time_base=None)) == 1.5
    assert _announced_duration(ns(duration=1), ns(duration=None, time_base=None)) == 1e-6
    for unknown in (None, 0, -5):  # none, zero or negative (FFmpeg's AV_NOPTS_VALUE is negative): 0 s
        assert _announced_duration(ns(duration=unknown), ns(duration=None, time_base=None)) == 0.0


def flipped(matrix, column=0):
    """``av_display_matrix_flip`` of libavutil/display.c: hflip negates the first column
    (entries 0, 3, 6), vflip (``column=1``) the second (1, 4, 7)."""
    return [-v if i % 3 == column else v for i, v in enumerate(matrix)]


def test_display_geometry_edge_cases_by_hand():
    from tf_stfusion.data.video import _display_size, display_rotation, resized_shape

    # A matrix with a zero column has no angle (av_display_rotation_get's NaN), and the CLI's
    # last case, "fabs(theta) < 1.0", is false for NaN and for exactly 1 degree: shown as stored,
    # even where matrix[4] < 0 would flip it at 0 degrees.
    for singular in ([0] * 8 + [1 << 30], [0, 1 << 16, 0, 0, 1 << 16, 0, 0, 0, 1 << 30],
                     [0, 0, 0, 0, -(1 << 16), 0, 0, 0, 1 << 30]):
        assert math.isnan(display_rotation(singular)) and display_filters(singular) == []
    assert display_filters(flipped(rotation_matrix(0), column=1)) == [("vflip", "")]
    one_degree_flipped = flipped(rotation_matrix(-1), column=1)  # [4] < 0 at theta = 1
    assert display_rotation(one_degree_flipped) == 1.0 and display_filters(one_degree_flipped) == []
    # A mirrored phone video: the transpose that also flips, by the sign of matrix[3]
    # (ffmpeg_filter.c: "> 0 ? cclock_flip : clock" at 90, "< 0 ? clock_flip : cclock" at 270).
    assert display_filters(flipped(rotation_matrix(90))) == [("transpose", "cclock_flip")]
    assert display_filters(flipped(rotation_matrix(-90))) == [("transpose", "clock_flip")]
    assert display_filters([0, 1 << 16, 0, 1, 0, 0, 0, 0, 1 << 30]) == [("transpose", "cclock_flip")]  # [3] = 1
    # The short side scaled, the other side rounded: 4x8 -> 1x2, 8x4 -> 2x1; None keeps the size.
    assert resized_shape(4, 8, 1) == (1, 2) and resized_shape(8, 4, 1) == (2, 1)
    assert resized_shape(48, 64, 24) == (24, 32) and resized_shape(48, 64, None) == (48, 64)
    # The sample aspect ratio stretches (2:1) or squeezes (1:2) the width; square pixels keep it;
    # a width that rounds to 0 is 1 pixel; a transpose swaps the sides.
    frame = types.SimpleNamespace(height=48, width=64)
    assert _display_size(frame, fractions.Fraction(1, 2), [], None) == (48, 32)
    assert _display_size(frame, fractions.Fraction(2, 1), [("transpose", "clock")], None) == (128, 48)
    assert _display_size(frame, None, [], 24) == (24, 32)
    assert _display_size(types.SimpleNamespace(height=2, width=1), fractions.Fraction(1, 3), [], None) == (2, 1)


def test_jpeg_default_quality_and_resize_image_by_hand():
    import io

    from tf_stfusion.data.video import encode_jpeg, resize_image

    frame = np.add.outer(np.arange(16), np.arange(24))[:, :, None].repeat(3, 2).astype(np.uint8) * 7
    pil = {}
    for quality in (75, 76):  # PIL's documented default is 75
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
        pil[quality] = buf.getvalue()
    assert pil[75] != pil[76] and encode_jpeg(frame) == pil[75]
    assert resize_image(np.zeros((32, 48, 3), np.uint8), 16).shape == (16, 24, 3)
    assert resize_image(Image.fromarray(frame), 16).shape == (16, 24, 3)
    assert resize_image(frame, 16) is not frame and (resize_image(frame, 16) == frame).all()  # already 16


def test_an_empty_file_is_named_as_such(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoError, match=r"^empty file \(0 bytes\)$"):
        decode(str(tmp_path / "empty.mp4"))


def test_frame_folder_messages_name_the_frames_by_hand(tmp_path):
    def refused(names):
        folder = write_frame_folder(str(tmp_path / str(len(os.listdir(tmp_path)))), names)
        with pytest.raises(VideoError) as error:
            ordered_frame_names(folder)
        return str(error.value).split(": ", 1)[1]

    assert refused(["a1_b3.jpg", "a2_b2.jpg", "a3_b1.jpg"]) == \
        "more than one number varies and they disagree ('a1_b3.jpg' ... 'a3_b1.jpg')"
    # The varying number is the frame; the constant "v2" is not.
    assert refused(["1_v2.jpg", "01_v2.jpg", "2_v2.jpg"]) == "'01_v2.jpg' and '1_v2.jpg' both are frame 1"
    # No number varies: the last one is the frame.
    assert refused(["clip2_1.jpg", "clip2_01.jpg"]) == "'clip2_01.jpg' and 'clip2_1.jpg' both are frame 1"
    # Text after the number makes a pattern too; the message shows the first three.
    assert refused(["1_a.jpg", "2_b.jpg", "3_c.jpg", "4_d.jpg"]) == \
        "more than one naming pattern (<n>_a.jpg, <n>_b.jpg, <n>_c.jpg)"


def test_a_folder_of_unreadable_images_names_the_first_error(tmp_path):
    folder = tmp_path / "v"
    folder.mkdir()
    for name in ("1.jpg", "2.jpg"):
        (folder / name).write_bytes(b"")
    with pytest.raises(VideoError, match=r"^cannot read any frame \(2 of 2; e\.g\. 1\.jpg: "):
        decode(str(folder))


def test_a_wide_first_frame_sets_a_wide_size_by_hand(tmp_path):
    # First frame 32 high x 48 wide, then one 48 x 64: both shown 16 x 24 (short side 16).
    folder = write_frame_folder(str(tmp_path / "v"), ["1.png"])
    Image.fromarray(numbered_frames(1, 32, 48)[0]).save(os.path.join(folder, "1.png"))
    Image.fromarray(numbered_frames(2, 48, 64)[1]).save(os.path.join(folder, "2.png"))
    frames = decode(folder, short_side=16)
    assert frames.shape == (2, 16, 24, 3) and frame_numbers(frames) == [0, 1]


def test_wide_greys_are_scaled_by_257_and_clipped_by_hand(tmp_path):
    from tf_stfusion.data.video import read_image

    # A 32-bit grey (mode I; a TIFF whatever its name): v / 257 rounded, clipped to [0, 255].
    values = [-300, 0, 128, 129, 30000, 65535, 70000]
    Image.fromarray(np.array([values], np.int32)).save(str(tmp_path / "grey.tif"))
    grey = np.asarray(read_image(str(tmp_path / "grey.tif")))
    assert grey[0, :, 0].tolist() == [0, 0, 0, 1, 117, 255, 255]  # 128 / 257 = 0.498, 129 / 257 = 0.502


def test_a_rotated_video_that_changes_size_keeps_its_picture(tmp_path):
    # A phone video (ROT90: shown turned 90 degrees clockwise) joined from 10 frames of 48x64
    # and 10 of 64x96, the top half of each white: every frame is shown 64 high x 48 wide with
    # its top half turned into the right half -- the second part too, scaled before it is turned.
    parts = []
    for i, (h, w) in enumerate(((H, W), (64, 96))):
        with av.open(str(tmp_path / f"part{i}.webm"), "w") as container:
            stream = container.add_stream("libvpx", rate=25)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.set_display_matrix(ROT90)
            image = np.zeros((h, w, 3), np.uint8)
            image[: h // 2] = 255
            for frame in [av.VideoFrame.from_ndarray(image, format="rgb24")] * 10:
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        parts.append(str(tmp_path / f"part{i}.webm"))
    frames = decode(concat_copy(str(tmp_path / "joined.webm"), parts))
    assert frames.shape == (20, W, H, 3)
    columns = frames[..., 0].mean(axis=1)  # [frame, column]
    assert (columns[:, : H // 2 - 2] < 40).all() and (columns[:, H // 2 + 2:] > 215).all()
