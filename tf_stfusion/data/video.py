"""Decoding: a video file (PyAV / FFmpeg) or a folder of image frames -> RGB
frames as a player shows them, one at a time.

``iter_frames`` is the one decoder of the package (``prepare`` and every serving
client use it). A video file goes packet by packet through FFmpeg's decoder and
then through an FFmpeg filter graph (``av.filter.Graph``) that applies what a
player applies:

* the display matrix (rotation and flips; phone videos), with the filters and
  the angle rule of the ffmpeg CLI's autorotation (``fftools/ffmpeg_filter.c``,
  ``libavutil/display.c``);
* the sample aspect ratio (anamorphic video is stretched to its display width);
* a frame-size change mid-stream: every frame is scaled to the first frame's
  size, as the ffmpeg CLI does;
* ``fps``: a constant output rate by presentation timestamps (FFmpeg's ``fps``
  filter: each output tick takes the frame shown at that time);
* the short side resized (``scale``, bilinear).

A packet that does not decode is skipped and counted; decoding goes on; a file
that ends before the frames its container announced (a truncated download)
counts the undelivered ones as dropped. What was seen is recorded in a
``DecodeStats`` (frames decoded and announced, packets dropped, frames
concealed, average frame rate, duration, variable frame rate).

A frame folder is read image by image with PIL as a player shows an image: EXIF
orientation applied, 16-bit greys scaled (not clipped) to 8 bits, every frame
scaled to the first frame's size; an image that cannot be read is a dropped
frame, like a packet that does not decode.
"""

import dataclasses
import math
import os
import re

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
# Slice threads (or none) only: FFmpeg's frame threads hide a damaged packet's error
# and lose the frames in flight at a truncation (2 of 35 in tests/test_video.py);
# what this costs in speed: README, Data (benchmarks/decode_speed.py).
THREAD_TYPE = "SLICE"


class VideoError(Exception):
    """A video that cannot be used; the message says why (for the manifest)."""


@dataclasses.dataclass
class DecodeStats:
    """What decoding one video saw; filled in by ``iter_frames`` as it goes.

    ``frames_announced``: the frame count the container states (0: none; for a
    frame folder, its image files). ``packets_dropped``: packets the decoder
    rejected, plus those the container announced but did not deliver (a
    truncated or damaged tail); for a frame folder, images that cannot be read.
    ``frames_concealed``: frames the decoder output with errors concealed from
    other frames (FFmpeg's corrupt-frame flags). ``fps``: decoded frames / duration (0 for a frame folder);
    ``duration`` in seconds from the first frame's timestamp to the end of the
    last; ``variable_frame_rate``: the frame intervals differ by more than 10% and
    more than two timestamp ticks. ``frames`` counts the frames yielded (after
    ``fps`` resampling and ``max_frames``). With ``max_frames``, decoding stops
    early: ``frames_decoded``, ``packets``, ``fps`` and ``duration`` describe the
    decoded part only (``frames_announced`` and ``duration_announced`` are still the
    whole video's). ``duration_announced``: the video stream's duration the
    container states, else the container's (s; 0: none), which shows a truncated
    file whose container announces no frame count (Matroska/WebM) as
    ``duration < duration_announced``.
    """

    frames: int = 0
    frames_decoded: int = 0
    frames_announced: int = 0
    packets: int = 0
    packets_dropped: int = 0
    frames_concealed: int = 0
    fps: float = 0.0
    duration: float = 0.0
    duration_announced: float = 0.0
    variable_frame_rate: bool = False

    @property
    def dropped_fraction(self):
        """(Packets lost + frames concealed) / packets. When the container announced a
        frame count and every announced frame decoded, what did not decode was junk
        read past the stream (a damaged AVI index read as data chunks) and cost no
        frame: only concealed frames count then."""
        if self.frames_announced and self.frames_decoded >= self.frames_announced:
            return self.frames_concealed / self.frames_decoded
        return min(1.0, (self.packets_dropped + self.frames_concealed) / self.packets) if self.packets else 0.0

    def damage(self, unit="packets"):
        """``"3 of 60 packets do not decode[ and 2 frames are concealed]"``."""
        text = f"{self.packets_dropped} of {self.packets} {unit} do not decode"
        n = self.frames_concealed
        return text + (f" and {n} frame{'s are' if n > 1 else ' is'} concealed" if n else "")

    def to_dict(self):
        out = dataclasses.asdict(self)
        out.update(fps=round(self.fps, 3), duration=round(self.duration, 3),
                   duration_announced=round(self.duration_announced, 3))
        return out


def resized_shape(height, width, short_side):
    """(h, w) with the short side scaled to ``short_side`` (None: unchanged)."""
    if not short_side:
        return height, width
    scale = short_side / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_image(image, short_side):
    """A uint8 ``[H, W, 3]`` array or PIL image, short side resized (PIL, bilinear)."""
    from PIL import Image

    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    h, w = resized_shape(img.height, img.width, short_side)
    if (h, w) != (img.height, img.width):
        img = img.resize((w, h), Image.BILINEAR)
    return np.asarray(img)


def encode_jpeg(frame, quality=75):
    """A uint8 ``[H, W, 3]`` frame as JPEG bytes (PIL; ``quality`` 1-95, PIL's default
    75). The one JPEG encoder of the package: ``prepare`` stores the shards' frames
    with it and the serving clients send theirs with it."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# -- display geometry -------------------------------------------------------------
def display_rotation(matrix):
    """The clockwise display angle in degrees, [0, 360), of an FFmpeg display matrix
    (9 ints, 16.16 fixed point): ``get_rotation`` of fftools/cmdutils.c over
    ``av_display_rotation_get`` of libavutil/display.c; NaN (no angle) for a matrix
    with a zero column, as ``av_display_rotation_get`` returns."""
    scale0 = math.hypot(matrix[0], matrix[3])
    scale1 = math.hypot(matrix[1], matrix[4])
    if not scale0 or not scale1:
        return math.nan
    theta = math.degrees(math.atan2(matrix[1] / scale1, matrix[0] / scale0))
    theta = math.copysign(math.floor(abs(theta) + 0.5), theta)  # C's round(): halves away from zero
    return theta - 360 * math.floor(theta / 360 + 0.9 / 360)


def display_filters(matrix):
    """``[(filter, args)]`` that show a frame as its display matrix says, chosen as
    the ffmpeg CLI's autorotation chooses them (fftools/ffmpeg_filter.c); [] for none."""
    if matrix is None:
        return []
    theta = display_rotation(matrix)
    if abs(theta - 90) < 1:
        return [("transpose", "cclock_flip" if matrix[3] > 0 else "clock")]
    if abs(theta - 180) < 1:
        return ([("hflip", "")] if matrix[0] < 0 else []) + ([("vflip", "")] if matrix[4] < 0 else [])
    if abs(theta - 270) < 1:
        return [("transpose", "clock_flip" if matrix[3] < 0 else "cclock")]
    if abs(theta) > 1:
        return [("rotate", f"{theta}*PI/180")]
    # The CLI's last case is "fabs(theta) < 1.0": exactly 1 degree, or no angle (NaN), shows as stored.
    return [("vflip", "")] if abs(theta) < 1 and matrix[4] < 0 else []


def _display_matrix(frame):
    import struct

    data = frame.side_data.get("DISPLAYMATRIX")
    return struct.unpack("<9i", bytes(data)) if data is not None else None


def _display_size(frame, sar, filters, short_side):
    """The (h, w) a player shows ``frame`` at (the stream's sample aspect ratio
    applied, then the display transform), short side resized."""
    height, width = frame.height, frame.width
    if sar and sar.numerator > 0 and sar != 1:
        width = max(1, round(width * float(sar)))
    if any(name == "transpose" for name, _ in filters):
        height, width = width, height
    return resized_shape(height, width, short_side)


def _graph(frame, time_base, filters, size, fps):
    """buffer -> display filters -> [fps] -> scale -> rgb24 -> buffersink."""
    import av

    graph = av.filter.Graph()
    chain = [graph.add_buffer(width=frame.width, height=frame.height, format=frame.format.name,
                              time_base=time_base)]
    steps = list(filters) + ([("fps", f"fps={fps}")] if fps else [])
    steps += [("scale", f"{size[1]}:{size[0]}:flags=bilinear"), ("format", "rgb24"), ("buffersink", "")]
    for name, args in steps:
        chain.append(graph.add(name, args) if args else graph.add(name))
        chain[-2].link_to(chain[-1])
    graph.configure()
    return graph


def _pull_all(graph):
    import av

    while True:
        try:
            yield graph.vpull()
        except (av.BlockingIOError, av.EOFError):
            return


# -- video files ------------------------------------------------------------------
def _packets(container, stream, stats):
    """Decoded frames of ``stream``, packet by packet: a packet that does not decode
    is counted in ``stats.packets_dropped`` and skipped."""
    import av

    demuxed = container.demux(stream)
    while True:
        try:
            packet = next(demuxed)
        except (StopIteration, av.FFmpegError):
            # The end of the file, early or not, or a container damaged from here on:
            # what it announced and did not deliver is lost.
            lost = max(0, stats.frames_announced - stats.packets)
            stats.packets_dropped += lost
            stats.packets += lost
            return
        if packet.size:
            stats.packets += 1
        try:
            frames = packet.decode()
        except av.FFmpegError:
            stats.packets_dropped += 1
            continue
        stats.frames_concealed += sum(frame.is_corrupt for frame in frames)
        yield from frames


class _Timing:
    """Frame timestamps -> average rate, duration, variable frame rate."""

    def __init__(self):
        self.pts = []

    def add(self, frame, index):
        self.pts.append(frame.pts if frame.pts is not None else index)

    def fill(self, stats, time_base, guessed_rate):
        pts = sorted(self.pts)
        if len(pts) < 2:
            stats.duration = float(1 / guessed_rate) if guessed_rate else 0.0
        else:
            steps = np.diff(pts)
            median = float(np.median(steps))
            stats.duration = float((pts[-1] - pts[0] + median) * time_base)
            spread = float(steps.max() - steps.min())
            stats.variable_frame_rate = spread > max(2.0, 0.1 * median)
        stats.fps = len(pts) / stats.duration if stats.duration else 0.0


def _announced_duration(container, stream):
    """Seconds: the video stream's stated duration, else the container's (µs), else 0."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return container.duration / 1e6 if container.duration and container.duration > 0 else 0.0


def _iter_file(path, short_side, fps, stats):
    import av

    if os.path.getsize(path) == 0:
        raise VideoError("empty file (0 bytes)")
    try:
        container = av.open(path)
    except av.FFmpegError as e:
        raise VideoError(f"cannot decode: {type(e).__name__}: {e}") from None
    with container:
        # The stream a player picks (FFmpeg's av_find_best_stream): not a thumbnail or
        # cover picture that a phone or an editor stored first.
        stream = container.streams.best("video")
        if stream is None:
            raise VideoError("no video stream")
        stream.thread_type = THREAD_TYPE
        stats.frames_announced = int(stream.frames or 0)
        stats.duration_announced = _announced_duration(container, stream)
        time_base = stream.time_base or stream.codec_context.time_base
        timing = _Timing()
        try:
            yield from _displayed(container, stream, time_base, stats, timing, short_side, fps)
        finally:
            timing.fill(stats, time_base, stream.guessed_rate)


def _displayed(container, stream, time_base, stats, timing, short_side, fps):
    """The frames of ``_packets`` through the display graph (``_graph``)."""
    graph = first = None
    for frame in _packets(container, stream, stats):
        timing.add(frame, stats.frames_decoded)
        if frame.pts is None:
            frame.pts = stats.frames_decoded  # some AVI/raw streams: one tick per frame
        stats.frames_decoded += 1
        if graph is None:
            first = frame
            filters = display_filters(_display_matrix(frame))
            size = _display_size(frame, stream.sample_aspect_ratio, filters, short_side)
            graph = _graph(frame, time_base, filters, size, fps)
        elif (frame.width, frame.height, frame.format.name) != (first.width, first.height, first.format.name):
            # A size change mid-stream: scaled to the first frame's size, as the ffmpeg CLI does.
            frame = frame.reformat(width=first.width, height=first.height, format=first.format.name)
        graph.vpush(frame)
        for out in _pull_all(graph):
            yield out.to_ndarray()
    if graph is None:
        raise VideoError(f"cannot decode: no frame decoded ({stats.packets_dropped} of {stats.packets} "
                         "packets rejected)")
    graph.vpush(None)  # flush: the fps filter emits its last frames at end of stream
    for out in _pull_all(graph):
        yield out.to_ndarray()


# -- frame folders -----------------------------------------------------------------
_DIGITS = re.compile(r"(\d+)")
_WIDE_GREY_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")  # 16-bit PNG greys (PIL opens them so)


def _frame_files(path):
    """The image files of a frame folder; hidden files (``.DS_Store``, macOS's
    ``._*`` AppleDouble files) are not frames."""
    return sorted(n for n in os.listdir(path) if not n.startswith(".") and n.lower().endswith(IMAGE_EXTENSIONS))


def _extension(name):
    """``.jpg`` for ``x.JPG``, ``x.jpeg``: one format, one pattern."""
    ext = os.path.splitext(name)[1].lower()
    return ".jpg" if ext == ".jpeg" else ext


def ordered_frame_names(path):
    """The image files of a frame folder in the order of the number in their names
    (``1.jpg, 2.jpg, ..., 10.jpg``; ``img_00001.jpg``; ``frame_001_v2.jpg``), as the
    tools that write such folders number them. The names must be one pattern of
    text and numbers; the numbers that vary across the folder give the order (a
    constant one, like ``v2``, does not). Raises VideoError when there is no order
    to trust: a name without a number, two patterns, two names of one frame, or
    two varying numbers that disagree."""
    names = _frame_files(path)
    parts = {name: _DIGITS.split(os.path.splitext(name)[0]) for name in names}
    for name, split in parts.items():
        if len(split) == 1:
            raise VideoError(f"frame names cannot be ordered by a number: {name!r} has none")
    patterns = {"<n>".join(split[0::2]) + _extension(name) for name, split in parts.items()}
    if len(patterns) > 1:
        raise VideoError(f"frame names cannot be ordered by a number: more than one naming pattern "
                         f"({', '.join(sorted(patterns)[:3])})")
    numbers = {name: [int(n) for n in split[1::2]] for name, split in parts.items()}
    width = len(next(iter(numbers.values()), []))
    varying = [i for i in range(width) if len({n[i] for n in numbers.values()}) > 1] or [width - 1]
    ordered = sorted(names, key=lambda name: [numbers[name][i] for i in varying])
    for i in varying:
        column = [numbers[name][i] for name in ordered]
        if column != sorted(column):
            raise VideoError("frame names cannot be ordered by a number: more than one number varies "
                             f"and they disagree ({ordered[0]!r} ... {ordered[-1]!r})")
    for before, name in zip(ordered, ordered[1:]):
        if [numbers[before][i] for i in varying] == [numbers[name][i] for i in varying]:
            raise VideoError(f"frame names cannot be ordered by a number: {before!r} and {name!r} both are "
                             f"frame {numbers[name][varying[-1]]}")
    return ordered


def read_image(path):
    """An image file as a uint8 RGB PIL image, as a player shows it: EXIF orientation
    applied (``ImageOps.exif_transpose``), 16-bit greys scaled to 8 bits (v / 257,
    rounded: FFmpeg's gray16 -> rgb24, where PIL's ``convert`` clips them to 255);
    alpha dropped, as FFmpeg's rgb24 output drops it. Raises OSError when the file
    cannot be read (truncated, empty, not an image)."""
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)  # loads the pixels: a truncated file fails here
    if img.mode in _WIDE_GREY_MODES:
        grey = np.clip(np.rint(np.asarray(img, np.float64) / 257), 0, 255).astype(np.uint8)
        img = Image.fromarray(grey)
    return img.convert("RGB")


def _iter_frames_dir(path, short_side, stats):
    """Frames of a folder, each scaled to the first readable frame's size (then its
    short side resized); an image that cannot be read is a dropped frame."""
    from PIL import Image

    names = ordered_frame_names(path)
    if not names:
        raise VideoError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in the frame folder")
    stats.frames_announced = stats.packets = len(names)
    size, first_error = None, None
    for name in names:
        try:
            img = read_image(os.path.join(path, name))
        except (OSError, SyntaxError, ValueError) as e:  # PIL's decoders raise all three
            stats.packets_dropped += 1
            first_error = first_error or f"{name}: {e}"
            continue
        size = size or resized_shape(img.height, img.width, short_side)
        if (img.height, img.width) != size:
            img = img.resize(size[::-1], Image.BILINEAR)
        stats.frames_decoded += 1
        yield np.asarray(img)
    if not stats.frames_decoded:
        raise VideoError(f"cannot read any frame ({stats.packets_dropped} of {len(names)}; e.g. {first_error})")


# -- the one entry point -------------------------------------------------------------
def iter_frames(source, short_side=None, max_frames=None, fps=None, stats=None):
    """Frames of ``source`` (a video file or a frame folder) as uint8 ``[H, W, 3]``
    arrays, one at a time, as a player shows them (module docstring).

    ``short_side``: resize the short side to this (None/0: keep). ``fps``: resample
    a video file to this constant rate (frames/s) by timestamps (None/0: every
    decoded frame; frame folders have no timestamps and are never resampled).
    ``max_frames``: stop after this many frames (the first ones, after
    resampling). ``stats``: a ``DecodeStats`` filled in as frames are read.
    Raises VideoError (missing, empty, undecodable, unorderable frame names).
    """
    stats = stats if stats is not None else DecodeStats()
    if os.path.isdir(source):
        frames = _iter_frames_dir(source, short_side, stats)
    elif os.path.isfile(source):
        frames = _iter_file(source, short_side, fps, stats)
    else:
        raise VideoError(f"missing: {source}")
    try:
        for frame in frames:
            stats.frames += 1
            yield frame
            if max_frames and stats.frames >= max_frames:
                return
    finally:
        frames.close()
    if not stats.frames and fps and stats.frames_decoded:
        raise VideoError(f"no frames at --fps={fps:g}: the video lasts {stats.duration:.3g} s "
                         f"({stats.frames_decoded} frames decoded), shorter than one output frame")
    if not stats.frames:
        raise VideoError("no frames")


def decode(source, short_side=None, max_frames=None, fps=None, stats=None):
    """All frames of ``source`` as a uint8 array ``[N, H, W, 3]`` (``iter_frames``)."""
    return np.stack(list(iter_frames(source, short_side, max_frames, fps, stats)))


def write_video(path, frames, fps=25, codec="libx264", pix_fmt="yuv420p"):
    """Encodes uint8 frames ``[N, H, W, 3]`` (H, W even) into a video file with PyAV."""
    import av

    frames = np.asarray(frames, dtype=np.uint8)
    with av.open(path, mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
