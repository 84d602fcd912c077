"""Video and raw-frame input for the runtime and the CLI (PyAV, no torch).

Frames come out as ``HxWx3`` ``uint8`` numpy arrays in RGB order, shown as players show them
(the display matrix applied). A damaged file costs the frames it damages, which are named, not
the rest of the video. `FrameConverter` is the one pixel-format conversion both directions use.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import av
import numpy as np
from av.sidedata.sidedata import Type as SideDataType
from av.video.reformatter import VideoReformatter

from mtc.errors import MtcError
from mtc.runtime.frames import check_pixels

log = logging.getLogger("mtc")

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".wmv", ".flv", ".3gp"}
)


def is_video(path: str | os.PathLike) -> bool:
    """Return True if `path` has a video container extension."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


# --------------------------------------------------------------------------------------------
# Raw frames (shell pipelines: ffmpeg -f rawvideo -pix_fmt rgb24)
# --------------------------------------------------------------------------------------------

RAW_HINT = "send whole frames of the --raw size, e.g. `ffmpeg -i in.mp4 -f rawvideo -pix_fmt rgb24 -`"


def read_raw_frames(stream, width: int, height: int) -> Iterator[np.ndarray]:
    """HxWx3 uint8 frames from a stream of packed RGB bytes (rgb24), until it ends.

    Args:
        stream: a binary file object (e.g. ``sys.stdin.buffer``).
        width, height: the frame size; each frame is ``width * height * 3`` bytes.

    Raises:
        MtcError: the size is over the pixel limit, or the stream ends inside a frame.
    """
    check_pixels(width, height, f"raw frame size {width}x{height}")
    size = width * height * 3
    number = 0
    while True:
        buffer = bytearray(size)
        view, got = memoryview(buffer), 0
        while got < size:  # a pipe hands over what it has; a short read is not the end
            read = stream.readinto(view[got:])
            if not read:
                break
            got += read
        if got == 0:
            return
        number += 1
        if got < size:
            raise MtcError(f"the raw input ended {got} bytes into frame {number}, which needs {size} "
                           f"({width}x{height} RGB)", hint=RAW_HINT)
        yield np.frombuffer(buffer, np.uint8).reshape(height, width, 3)


# --------------------------------------------------------------------------------------------
# Video reading
# --------------------------------------------------------------------------------------------


def _open_input(path: Path) -> av.container.InputContainer:
    if not path.is_file():
        what = "is a folder, not a video" if path.is_dir() else "not found"
        raise MtcError(f"video {path} {what}", hint="check the path")
    if path.stat().st_size == 0:
        raise MtcError(f"video {path} is an empty file", hint="re-export or re-download the video")
    try:
        return av.open(str(path), "r")
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise MtcError(
            f"cannot read video {path}: not a video or corrupt ({exc.__class__.__name__})",
            hint="check the file plays, or re-encode it: `ffmpeg -i in -c:v libx264 out.mp4`",
        ) from None


class _PacketLedger:
    """Which packets went into the decoder and which frames came out, to name the frames lost.

    Timestamps identify frames across the decoder's reordering and its threads (a frame-threaded
    decoder reports a damaged packet one call late); a stream without them is counted instead.
    Packets an edit list cuts away (a video trimmed without re-encoding starts mid-GOP) are
    decoded for reference only: their frames are not the video's, so they are not lost.
    """

    def __init__(self) -> None:
        self.sent_pts: list[int] = []
        self.sent_without_pts = 0
        self.cut_pts: set[int] = set()
        self.cut_count = 0
        self.shown_pts: set[int] = set()
        self.frames_out = 0
        self.header_count: int | None = None  # the container's frame count, where it stores one

    def sent(self, packet: av.Packet) -> None:
        if not packet.size:  # the demuxer's end-of-stream packet, which drains the decoder
            return
        if packet.is_discard:
            self.cut_count += 1
            if packet.pts is not None:
                self.cut_pts.add(packet.pts)
        elif packet.pts is None:
            self.sent_without_pts += 1
        else:
            self.sent_pts.append(packet.pts)

    def shown(self, frame: av.VideoFrame) -> None:
        if frame.pts is not None and frame.pts in self.cut_pts:
            return
        self.frames_out += 1
        if frame.pts is not None:
            self.shown_pts.add(frame.pts)

    def lost_frames(self) -> list[int]:
        order = sorted(set(self.sent_pts))
        if self.shown_pts <= set(order):
            lost = [index for index, pts in enumerate(order) if pts not in self.shown_pts]
        else:  # the decoder stamps frames its own way: count only
            lost = []
        sent = len(order) + self.sent_without_pts
        uncounted = max(0, sent - self.frames_out - len(lost))  # lost frames without a timestamp
        missing = max(0, (self.header_count or 0) - sent - self.cut_count)  # never reached the decoder
        return lost + list(range(len(order), len(order) + uncounted + missing))


def _declared_seconds(stream: av.video.stream.VideoStream) -> float | None:
    """The video stream's own duration: its header field, else Matroska's DURATION tag."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    match = re.fullmatch(r"(\d+):(\d+):(\d+(?:\.\d+)?)", stream.metadata.get("DURATION", "").strip())
    return int(match[1]) * 3600 + int(match[2]) * 60 + float(match[3]) if match else None


def describe_frames(numbers: list[int], *, shown: int = 8) -> str:
    """'frames 13, 14, 20' for 0-based numbers, named 1-based as frame files are."""
    names = [str(n + 1) for n in numbers[:shown]]
    more = f" and {len(numbers) - shown} more" if len(numbers) > shown else ""
    return ("frame " if len(numbers) == 1 else "frames ") + ", ".join(names) + more


class VideoReader:
    """Decode a video into RGB frames.

    Use as a context manager and iterate once::

        with VideoReader("in.mp4") as video:
            for rgb in video:  # HxWx3 uint8 (planar memory where FFmpeg converts exactly)
                ...

    Frames come as players show them: the display matrix's rotation and mirror are applied
    (phones store portrait video as landscape frames plus a rotation), so the model sees people
    standing and `width` / `height` are the displayed size.

    Damaged data is skipped as players skip it: a packet the decoder rejects costs its own
    frame, and decoding goes on with the next one. A file truncated part-way yields the frames
    that decode. Either way a warning is logged and, once iterated, `lost_frames` names the
    frames that never came out, while the others keep their order and times. A stream that
    changes resolution part-way is scaled to its first frame's size, so one output holds them all.

    Args:
        path: Video file.

    Raises:
        MtcError: The file is missing, not a video, has no video stream, declares a frame size
            over the pixel limit (checked before any frame is decoded), or contains no
            decodable frame (the first frame is decoded on opening, for its display matrix).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._container = _open_input(self.path)
        if not self._container.streams.video:
            self._container.close()
            raise MtcError(f"{self.path} has no video stream", hint="pass a video file, or an image for single frames")
        self._stream = self._container.streams.video[0]
        if self._container.format.name == "tty":
            # FFmpeg's ANSI-art demuxer accepts any text file as a "video" of rendered text.
            self._container.close()
            raise MtcError(f"{self.path} is a text file, not a video", hint="pass a video file")
        self._stream.thread_type = "AUTO"
        ctx = self._stream.codec_context
        if not ctx.width or not ctx.height:
            self._container.close()
            raise MtcError(f"video {self.path} has no frame size (corrupt?)", hint="re-encode it with ffmpeg")
        try:
            check_pixels(ctx.width, ctx.height, f"video {self.path}")
        except MtcError:
            self._container.close()
            raise
        self._started = False
        self._ledger = _PacketLedger()
        self._decoded = self._decode()
        try:
            self._first = next(self._decoded)
        except BaseException:
            self._container.close()
            raise
        self._orientation = _display_orientation(self._first)
        self._stored_size = (self._first.width, self._first.height)
        self._resized_from: set[tuple[int, int]] = set()  # sizes already warned about

    @property
    def width(self) -> int:
        """Displayed frame width in pixels (the first frame's: later sizes are scaled to it)."""
        return self._stored_size[1] if self._orientation.transpose else self._stored_size[0]

    @property
    def height(self) -> int:
        """Displayed frame height in pixels (the first frame's)."""
        return self._stored_size[0] if self._orientation.transpose else self._stored_size[1]

    @property
    def fps(self) -> float:
        """Average frame rate; 25 when the container does not say."""
        rate = self._stream.average_rate or self._stream.guessed_rate
        return float(rate) if rate else 25.0

    @property
    def frame_count(self) -> int | None:
        """Frame count from the container header, or None where the format does not store it."""
        return self._stream.frames or None

    @property
    def has_audio(self) -> bool:
        """Whether the file has at least one audio stream."""
        return bool(self._container.streams.audio)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (rgb for _, rgb in self.timed_frames())

    def timed_frames(self, first: int = 0) -> Iterator[tuple[float | None, np.ndarray]]:
        """(presentation time in seconds from the first frame, frame) pairs; the time is None
        where the container stores none. Phones write variable frame rates: these times, not
        the frame count, keep a re-encoded video in step with its audio.

        Frames before number `first` (0-based) are decoded, as the ones after need them, but
        not converted or returned: a piece of the video starting there."""
        if self._started:
            raise RuntimeError("VideoReader can be iterated only once; open a new one")
        self._started = True
        to_rgb = FrameConverter()
        start = self._first.pts
        width, height = self._stored_size
        for index, frame in enumerate(itertools.chain([self._first], self._decoded)):
            if index < first:
                continue
            if (frame.width, frame.height) != self._stored_size:
                self._note_resize(frame)
                rgb = to_rgb(frame, format="rgb24", width=width, height=height).to_ndarray()
            elif _planar_conversion_is_exact(frame):
                rgb = _planar_rgb(to_rgb(frame, format="gbrp"))
            else:
                rgb = to_rgb(frame, format="rgb24").to_ndarray()
            known = frame.pts is not None and start is not None and frame.time_base is not None
            yield (float((frame.pts - start) * frame.time_base) if known else None,
                   self._orientation.apply(rgb))

    def _note_resize(self, frame: av.VideoFrame) -> None:
        size = (frame.width, frame.height)
        if size not in self._resized_from:
            self._resized_from.add(size)
            log.warning("%s: the stream changes to %dx%d part-way; scaling those frames to the first size %dx%d",
                        self.path, *size, *self._stored_size)

    @property
    def lost_frames(self) -> list[int]:
        """Frame numbers (0-based, in presentation order) that damaged or missing data cost.

        Complete once the frames have been iterated. Frames known lost only by count (packets
        without timestamps, a header frame count the file falls short of) are numbered after
        the last frame that was sent to the decoder.
        """
        return self._ledger.lost_frames()

    def _decode(self) -> Iterator[av.VideoFrame]:
        ledger = self._ledger
        demuxer_error = None
        try:
            for packet in self._container.demux(self._stream):
                ledger.sent(packet)
                try:
                    frames = packet.decode()
                except av.FFmpegError as exc:
                    # What players do: drop the damaged packet, keep decoding. The decoder
                    # conceals the damage in frames that refer to it.
                    log.debug("%s: the decoder rejects a packet (pts %s): %s", self.path, packet.pts, exc)
                    continue
                for frame in frames:
                    ledger.shown(frame)
                    yield frame
        except av.FFmpegError as exc:
            # The container itself is damaged past where its demuxer can resynchronise.
            demuxer_error = exc
        if not ledger.frames_out:
            reason = f" ({demuxer_error.__class__.__name__})" if demuxer_error is not None else ""
            raise MtcError(
                f"video {self.path} contains no decodable video frames{reason}",
                hint="check the file plays, or re-encode it: `ffmpeg -i in -c:v libx264 out.mp4`",
            )
        ledger.header_count = self.frame_count or self._frames_by_duration(ledger)
        if demuxer_error is not None:
            log.warning("%s: stopped reading after %d frames, the rest of the file is unreadable (%s)",
                        self.path, ledger.frames_out, demuxer_error)
        lost = ledger.lost_frames()
        if lost:
            log.warning("%s: %d frame(s) lost to damaged or missing data: %s", self.path, len(lost),
                        describe_frames(lost))

    def _frames_by_duration(self, ledger: _PacketLedger) -> int | None:
        """The frame count the stream's declared duration implies (Matroska stores a duration,
        no count), where it clearly exceeds what was read: a demuxer that loses its way in a
        damaged file just ends, and this is the only sign. The margin absorbs variable rates."""
        seconds = _declared_seconds(self._stream)
        if seconds is None:
            return None
        implied = round(seconds * self.fps)
        sent = len(ledger.sent_pts) + ledger.sent_without_pts + ledger.cut_count
        return implied if implied - sent > max(2, implied // 50) else None

    def close(self) -> None:
        """Release the file."""
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class FrameConverter:
    """Converts video frames to another pixel format or size (FFmpeg's swscale, taking
    `VideoFrame.reformat`'s options), keeping the conversion context from frame to frame.

    Every conversion in mtc goes through one, so that each runs on one swscale thread: FFmpeg 8's
    threaded swscale (PyAV 18) corrupts whole rows converting odd-width RGBA to yuva444p10le, and
    a CI run once encoded a planar and a packed copy of the same frames differently in two
    macroblocks (not reproduced in 25 runs under load). Conversions run beside inference, so
    their CPU time is what counts, and one thread spends no more of it.
    """

    def __init__(self):
        self._swscale = VideoReformatter()

    def __call__(self, frame: av.VideoFrame, **options) -> av.VideoFrame:
        return self._swscale.reformat(frame, threads=1, **options)


# 8-bit planar YUV where FFmpeg's planar G,B,R conversion gives the same pixels as packed RGB
# (measured on PyAV 18's FFmpeg 8, every width and height up to 80 and common video sizes):
# 4:4:4 always; 4:2:0 and 4:2:2 at even heights and widths that are multiples of 16. Elsewhere
# swscale's planar path zeroes the last columns (widths 16k+2 .. 16k+8) or interpolates chroma
# differently (odd heights; 10-bit and NV12 sources), so those frames keep rgb24.
_PLANAR_EXACT_ANY_SIZE = frozenset({"yuv444p", "yuvj444p"})
_PLANAR_EXACT_ALIGNED = frozenset({"yuv420p", "yuvj420p", "yuv422p", "yuvj422p"})


def _planar_conversion_is_exact(frame: av.VideoFrame) -> bool:
    name = frame.format.name
    aligned = frame.width % 16 == 0 and frame.height % 2 == 0
    return name in _PLANAR_EXACT_ANY_SIZE or (name in _PLANAR_EXACT_ALIGNED and aligned)


class Orientation(NamedTuple):
    """How a stored frame is displayed: transposed (rows become columns), then mirrored."""

    transpose: bool = False
    flip_rows: bool = False
    flip_columns: bool = False

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """The displayed HxWx3 frame (`rgb` itself when upright), turned frames copied to planar
        memory: the model's input conversion reads a turned view at half speed (1080x1920: 9.9
        vs 4.5 ms), and this copy runs on the decoding thread, not the inference thread."""
        if self == UPRIGHT:
            return rgb
        planes = rgb.transpose(2, 0, 1)
        if self.transpose:
            planes = planes.transpose(0, 2, 1)
        planes = planes[:, ::-1 if self.flip_rows else 1, ::-1 if self.flip_columns else 1]
        return np.ascontiguousarray(planes).transpose(1, 2, 0)


UPRIGHT = Orientation()


def _display_orientation(frame: av.VideoFrame) -> Orientation:
    """The orientation a frame's display matrix asks for, snapped to a right angle.

    FFmpeg's matrix maps a stored pixel (x, y) to the displayed x' = a x + c y, y' = b x + d y
    (y downwards, plus a shift), with [a, b, c, d] its entries 0, 1, 3 and 4 (16.16 fixed point):
    rotations and mirrors alike. `VideoFrame.rotation` alone cannot tell a mirror from a half
    turn (a horizontal mirror reads as -180).
    """
    raw = next((bytes(data) for data in frame.side_data if data.type == SideDataType.DISPLAYMATRIX), b"")
    if len(raw) < 36:  # none, or not the 3x3 matrix FFmpeg documents
        return UPRIGHT
    matrix = np.frombuffer(raw[:36], "<i4")
    a, b, c, d = (int(v) for v in matrix[[0, 1, 3, 4]])
    if abs(a) >= abs(b):  # x' follows x
        return Orientation(transpose=False, flip_rows=d < 0, flip_columns=a < 0)
    return Orientation(transpose=True, flip_rows=b < 0, flip_columns=c < 0)


def _planar_rgb(frame: av.VideoFrame) -> np.ndarray:
    """A gbrp frame as HxWx3 RGB with planar memory (a view of 3xHxW).

    Decoding to planar G,B,R is FFmpeg's fast path: 0.9 ms per 1080p frame against 12.5 ms
    for packed rgb24 (see `_planar_conversion_is_exact` for where the pixels are the same).
    """
    height, width = frame.height, frame.width
    rgb = np.empty((3, height, width), np.uint8)
    for channel, plane in zip((1, 2, 0), frame.planes):  # gbrp stores G, B, R
        rows = np.frombuffer(plane, np.uint8)[:height * plane.line_size].reshape(height, plane.line_size)
        rgb[channel] = rows[:, :width]
    return rgb.transpose(1, 2, 0)
