"""Image and video I/O for the runtime and the CLI (Pillow + PyAV, no torch).

Every frame crossing this module is an ``HxWx3`` (or ``HxWx4`` for alpha output) ``uint8``
numpy array in RGB order. Inputs we cannot handle faithfully (grayscale, transparency,
16-bit) are refused with an `MtcError` instead of being silently converted, because a matting
model fed a flattened alpha or a truncated 16-bit image produces plausible-looking garbage.

Outputs are written to a hidden temporary sibling and renamed into place only when complete,
so an interrupted run never leaves a file that looks finished.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import av
import numpy as np
from av.sidedata.sidedata import Type as SideDataType
from av.video.reformatter import VideoReformatter
from PIL import Image, ImageOps, UnidentifiedImageError

from mtc.errors import MtcError
from mtc.fsutil import (
    atomic_file,
    disk_error,
    finish_file,
    give_default_permissions,
    remove_stale_temporaries,
    temporary_prefix,
)
from mtc.runtime.frames import check_pixels, max_pixels, pixel_limit_error

log = logging.getLogger("mtc")

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".wmv", ".flv", ".3gp"}
)

_TO_8BIT_RGB = "convert it to 8-bit RGB, e.g. `convert in.png -alpha off -depth 8 -type TrueColor out.png`"


def is_image(path: str | os.PathLike) -> bool:
    """Return True if `path` has a still-image extension this module reads."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def is_video(path: str | os.PathLike) -> bool:
    """Return True if `path` has a video container extension."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def _file_bit_depth(path: Path, img: Image.Image) -> int:
    """Bits per channel as stored in the file, where Pillow's mode would hide it."""
    if img.format == "PNG":
        # Pillow opens 16-bit RGB PNGs as 8-bit 'RGB', dropping precision silently; the IHDR
        # chunk (always first) stores the true depth at byte 24.
        with contextlib.suppress(OSError), open(path, "rb") as handle:
            header = handle.read(26)
            if len(header) == 26 and header[12:16] == b"IHDR":
                return header[24]
    if img.format == "TIFF":
        bits = getattr(img, "tag_v2", {}).get(258)  # BitsPerSample
        if bits:
            return max(bits) if isinstance(bits, tuple) else int(bits)
    return 8


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as an RGB frame, honouring EXIF orientation.

    Accepts 8-bit RGB, palette images, CMYK and YCbCr (converted to RGB); an alpha channel or
    transparent palette entry is accepted only where every pixel is opaque (alpha 255).

    Args:
        path: Image file (PNG, JPEG, BMP, WebP, TIFF, ...).

    Returns:
        ``HxWx3`` ``uint8`` array in RGB order.

    Raises:
        MtcError: The file is missing, unreadable, or grayscale / transparent / 16-bit.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not an image" if path.is_dir() else "not found"
        raise MtcError(f"image {path} {what}", hint="check the path")
    try:
        with Image.open(path) as img:  # reads the header only
            check_pixels(*img.size, f"image {path}")
            img.load()
            rgb = _to_rgb(path, img)
            rgb = ImageOps.exif_transpose(rgb)
            return np.array(rgb, dtype=np.uint8)
    except MtcError:
        raise
    except Image.DecompressionBombError as exc:
        # Pillow refuses far larger images on opening, before our check sees the size; its own
        # bound (2 x Image.MAX_IMAGE_PIXELS) still holds where --max-pixels goes past it.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        if found and int(found[1]) > max_pixels():
            raise pixel_limit_error(f"image {path}", int(found[1])) from None
        raise MtcError(f"image {path} is too large to read safely ({exc})", hint="downscale it first") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        # Pillow reports truncated/corrupt data as OSError, SyntaxError or ValueError by format.
        raise MtcError(
            f"cannot read image {path}: not an image or corrupt ({exc})",
            hint="re-export the file as PNG or JPEG",
        ) from None


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a mask picture as HxW uint8 (255 = the object): a grey or black-and-white image, or
    a cut-out whose transparency marks the background (its alpha is the mask).

    Raises:
        MtcError: The file is missing or not an image.
    """
    path = Path(path)
    if not path.is_file():
        raise MtcError(f"mask {path} {'is a folder' if path.is_dir() else 'not found'}", hint="check the path")
    try:
        with Image.open(path) as img:
            check_pixels(*img.size, f"mask {path}")
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                img = img.convert("RGBA")
                if _see_through_share(img) > 0:
                    return np.array(img.getchannel("A"), dtype=np.uint8)
            return np.array(img.convert("L"), dtype=np.uint8)
    except MtcError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise MtcError(f"cannot read mask {path}: not an image or corrupt ({exc})",
                       hint="save the mask as a PNG, white on black") from None


def _see_through_share(img: Image.Image) -> float:
    """The share of pixels whose alpha is below 255 (alpha channel, or palette / colour-key transparency)."""
    bands = img.getbands()
    if "A" in bands or "a" in bands:  # "a": premultiplied (RGBa, La); its alpha is still alpha
        alpha = img.getchannel("A" if "A" in bands else "a")
    else:  # a tRNS chunk: P or RGB with a transparent palette entry or colour
        alpha = img.convert("RGBA").getchannel("A")
    if alpha.getextrema()[0] == 255:  # the common case, without a full-size array
        return 0.0
    return float(np.mean(np.asarray(alpha) < 255))


def _to_rgb(path: Path, img: Image.Image) -> Image.Image:
    mode = img.mode
    bits = 16 if mode.startswith("I;16") else 32 if mode in ("I", "F") else _file_bit_depth(path, img)
    if bits > 8:
        raise MtcError(
            f"image {path} has {bits} bits per channel (mode {mode}); the model needs 8-bit RGB", hint=_TO_8BIT_RGB
        )
    if mode in ("LA", "La", "PA", "RGBA", "RGBa") or "transparency" in img.info:
        see_through = _see_through_share(img)
        if see_through > 0:
            share = f"{see_through:.1%}" if see_through >= 1e-3 else "under 0.1%"
            raise MtcError(
                f"image {path} has transparency (mode {mode}, {share} of pixels not opaque); "
                "the model needs an opaque RGB image",
                hint="flatten it, e.g. `convert in.png -background white -alpha remove -alpha off out.png`",
            )
        # Alpha 255 everywhere carries nothing: editors and screenshot tools often save opaque
        # pictures as RGBA. The image is the RGB picture it shows.
    if mode in ("L", "1", "LA", "La"):
        raise MtcError(f"image {path} is grayscale (mode {mode}); the model needs RGB", hint=_TO_8BIT_RGB)
    if mode == "RGB":
        return img
    if mode in ("P", "PA") and "transparency" in img.info:
        return img.convert("RGBA").convert("RGB")  # the way Pillow wants a tRNS palette converted
    if mode in ("P", "PA", "CMYK", "YCbCr", "RGBX", "RGBA", "RGBa"):
        return img.convert("RGB")
    raise MtcError(f"image {path} has unsupported pixel mode {mode}", hint=_TO_8BIT_RGB)


def write_image(path: str | os.PathLike, array: np.ndarray, *, png_compression: int = 6,
                replace: bool = True) -> None:
    """Write a ``uint8`` image atomically as PNG or JPEG, chosen by extension.

    Args:
        path: Destination ``.png``, ``.jpg`` or ``.jpeg`` file.
        array: ``HxW`` (grayscale, e.g. an alpha matte), ``HxWx3`` (RGB) or ``HxWx4`` (RGBA).
        png_compression: zlib level 0-9 (Pillow's default 6). Video frames use 1: a 1080p RGB
            frame takes 36 instead of 93 ms and its file is about 13% larger.
        replace: Replace a file at `path` (False: refuse, leaving it alone, where one appeared
            since the caller checked).

    Raises:
        MtcError: Unsupported extension or array layout, RGBA to JPEG, or a disk error.
    """
    path = Path(path)
    ext = path.suffix.lower()
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}.get(ext)
    if fmt is None:
        raise MtcError(f"cannot write image {path}: unsupported extension {ext!r}", hint="use .png or .jpg")
    array = np.asarray(array)
    modes = {2: "L", 3: "RGB", 4: "RGBA"}
    channels = 2 if array.ndim == 2 else (array.shape[2] if array.ndim == 3 else 0)
    if array.dtype != np.uint8 or channels not in modes or array.ndim == 3 and channels == 2:
        raise MtcError(
            f"cannot write image {path}: expected uint8 HxW, HxWx3 or HxWx4, got {array.dtype} {array.shape}",
            hint="convert to uint8 with values 0..255",
        )
    mode = modes[channels]
    if mode == "RGBA" and fmt == "JPEG":
        raise MtcError(f"cannot write {path}: JPEG has no alpha channel", hint="write .png to keep the alpha")
    img = Image.fromarray(np.ascontiguousarray(array), mode=mode)
    options = {"quality": 95} if fmt == "JPEG" else {"compress_level": png_compression}
    with atomic_file(path, "wb", replace=replace) as handle:
        img.save(handle, format=fmt, **options)


def cover(image: Image.Image, size: tuple[int, int],
          resample: Image.Resampling = Image.Resampling.BILINEAR) -> Image.Image:
    """`image` filling `size` (width, height): centre-cropped to that aspect, then resized, so
    nothing is squashed."""
    width, height = size
    crop_w, crop_h = min(image.width, image.height * width / height), min(image.height, image.width * height / width)
    left, top = (image.width - crop_w) / 2, (image.height - crop_h) / 2
    return image.resize(size, resample, box=(left, top, left + crop_w, top + crop_h))


def _natural_key(path: Path) -> list:
    # frame_2.png sorts before frame_10.png, matching how sequences are numbered.
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def list_images(folder: str | os.PathLike) -> list[Path]:
    """List the images in a folder (not recursive), in natural order (``2`` before ``10``).

    Hidden files (leftover ``.part`` temporaries, macOS ``._`` files) are skipped.

    Args:
        folder: Folder to scan.

    Returns:
        Sorted image paths.

    Raises:
        MtcError: The folder is missing or contains no images.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MtcError(f"folder {folder} not found", hint="check the path")
    images = [p for p in folder.iterdir() if p.is_file() and is_image(p) and not p.name.startswith(".")]
    if not images:
        exts = ", ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
        raise MtcError(f"no images in folder {folder}", hint=f"put image files there ({exts})")
    return sorted(images, key=_natural_key)


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


# --------------------------------------------------------------------------------------------
# Video writing
# --------------------------------------------------------------------------------------------

_RGB_EXTENSIONS = (".mp4", ".mkv", ".mov", ".webm")
_VP9_OPTIONS = {"crf": "24", "b": "0", "deadline": "good", "cpu-used": "5", "row-mt": "1"}


# x264's speed/size trade-off. veryfast is the default; on a 2-core CPU encoding 1080p costs
# 62 ms of CPU per frame at veryfast, 42 at superfast and 25 at ultrafast (files 1.7x and 2.3x
# larger at the same quality), CPU that inference then does not get.
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow")
DEFAULT_X264_PRESET = "veryfast"
TIMED_CLOCK = 90_000  # MPEG's clock: exact for 24, 25, 30, 50, 60 fps and the 1000/1001 rates


# Hardware H.264 encoders in the order encoder="auto" tries them: (FFmpeg encoder, pix_fmt,
# options at about x264 CRF 18's quality). On a GPU or an Intel box they take the encoding off
# the CPU cores that decoding and the runtime share: x264 veryfast alone costs 37 ms of CPU per
# 1080p frame. Not verified here (no GPU, no Quick Sync device): where one cannot start, a probe
# says why and "auto" falls back to x264.
HARDWARE_H264 = {
    "nvenc": ("h264_nvenc", "yuv420p", {"preset": "p4", "rc": "vbr", "cq": "19", "b": "0"}),
    "qsv": ("h264_qsv", "nv12", {"preset": "medium", "global_quality": "20"}),
}
ENCODERS = ("auto", "x264", *HARDWARE_H264)


@functools.cache
def hardware_encoder_problem(name: str) -> str | None:
    """None where FFmpeg can start the hardware encoder `name` (a key of HARDWARE_H264) and
    encode a frame with it, else why it cannot (a few ms: no device fails fast)."""
    codec, pix_fmt, options = HARDWARE_H264[name]
    if codec not in av.codecs_available:
        return f"this FFmpeg build has no {codec}"
    try:
        ctx = av.CodecContext.create(codec, "w")
        ctx.width, ctx.height, ctx.pix_fmt = 256, 144, pix_fmt
        ctx.time_base, ctx.framerate = Fraction(1, 30), Fraction(30)
        ctx.options = dict(options)
        ctx.encode(av.VideoFrame(256, 144, pix_fmt))
        ctx.encode(None)
    except (av.FFmpegError, OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or exc.__class__.__name__
        return f"{codec} cannot start here ({reason}): no such device or driver"
    return None


def require_hardware_encoder(name: str) -> tuple[str, str, dict[str, str]]:
    """HARDWARE_H264[name] if that encoder starts here, else an MtcError saying why."""
    problem = hardware_encoder_problem(name)
    if problem is not None:
        raise MtcError(problem, hint="use --encoder x264 (the CPU) or auto")
    return HARDWARE_H264[name]


def _h264_encoder(encoder: str, x264_preset: str) -> tuple[str, str, dict[str, str]]:
    if encoder in HARDWARE_H264:
        return require_hardware_encoder(encoder)
    if encoder == "auto":
        problems = []
        for name in HARDWARE_H264:  # stop at the first that starts: probes take milliseconds each
            problem = hardware_encoder_problem(name)
            if problem is None:
                return HARDWARE_H264[name]
            problems.append(problem)
        log.debug("no hardware H.264 encoder: %s", "; ".join(problems))
    elif encoder != "x264":
        raise MtcError(f"unknown encoder {encoder!r}", hint=f"choose one of: {', '.join(ENCODERS)}")
    if "libx264" in av.codecs_available:
        return "libx264", "yuv420p", {"crf": "18", "preset": x264_preset}
    return "mpeg4", "yuv420p", {}


def _video_codec(path: Path, kind: str, x264_preset: str = DEFAULT_X264_PRESET,
                 encoder: str = "auto") -> tuple[str, str, dict[str, str]]:
    """Pick (encoder, pix_fmt, encoder options) for an output file and kind."""
    ext = path.suffix.lower()
    if kind == "rgba":
        if ext == ".mov":
            return "prores_ks", "yuva444p10le", {"profile": "4444", "vendor": "apl0"}
        if ext == ".webm":
            return "libvpx-vp9", "yuva420p", dict(_VP9_OPTIONS)
        raise MtcError(
            f"cannot write a video with alpha to {path}: {ext or 'no extension'} has no alpha support",
            hint="use .mov (ProRes 4444) or .webm (VP9 with alpha)",
        )
    if kind != "rgb":
        raise ValueError(f"kind must be 'rgb' or 'rgba', got {kind!r}")
    if ext not in _RGB_EXTENSIONS:
        raise MtcError(
            f"cannot write video {path}: unsupported extension {ext!r}", hint="use .mp4, .mkv, .mov or .webm"
        )
    if ext == ".webm":
        if encoder in HARDWARE_H264:
            raise MtcError(f"cannot write {path} with {encoder}: WebM holds VP9, not H.264",
                           hint="write .mp4, .mkv or .mov, or leave --encoder at auto")
        return "libvpx-vp9", "yuv420p", dict(_VP9_OPTIONS)
    codec, pix_fmt, options = _h264_encoder(encoder, x264_preset)
    return codec, pix_fmt, dict(options)


def _frame_rate(fps: float | Fraction) -> Fraction:
    # 1001 keeps NTSC rates exact (29.97 float -> 30000/1001) while integer rates stay integers.
    try:
        rate = fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(1001)
    except (ValueError, OverflowError, TypeError):
        rate = Fraction(0)
    if rate <= 0:
        raise MtcError(f"frame rate must be positive, got {fps}", hint="pass the source video's fps")
    return rate


class _AudioCopy:
    """Carries the audio of a source file into an output container, interleaved with video.

    Packets are copied unchanged when the output container accepts the codec, otherwise
    decoded and re-encoded (AAC, or Opus for WebM). Audio is trimmed to the video's length
    and shifted so that it stays in sync with the source's first video frame.
    """

    def __init__(self, source: Path, output: av.container.OutputContainer):
        self._input = av.open(str(source), "r")
        try:
            in_stream = self._input.streams.audio[0]
            video = self._input.streams.video
            start = video[0].start_time * video[0].time_base if video and video[0].start_time is not None else 0
            self._start = Fraction(start)
            self._copy = in_stream.codec_context.name in output.supported_codecs
            if self._copy:
                self._out_stream = output.add_stream_from_template(in_stream)
            else:
                codec = "libopus" if output.format.name == "webm" else "aac"
                rate = 48000 if codec == "libopus" else in_stream.codec_context.sample_rate or 48000
                self._out_stream = output.add_stream(codec, rate=rate)
                stereo = in_stream.codec_context.layout.nb_channels > 1
                self._out_stream.codec_context.layout = "stereo" if stereo else "mono"
                self._next_sample = 0
            self._output = output
            self._packets = self._input.demux(in_stream)
            self._pending: av.Packet | None = None
            self._done = False
        except BaseException:
            self._input.close()
            raise

    def _seconds(self, ts: int | None, time_base: Fraction) -> Fraction | None:
        return None if ts is None else ts * time_base - self._start

    def pump(self, until: Fraction) -> None:
        """Mux source audio up to `until` seconds of output time."""
        while not self._done:
            packet, self._pending = self._pending, None
            if packet is None:
                packet = next(self._packets, None)
            if packet is None:
                self._done = True
                return
            start = self._seconds(packet.pts, packet.time_base)
            if start is None:
                continue  # the demuxer's end-of-stream flush packet
            if start >= until:
                self._pending = packet
                return
            try:
                self._mux(packet, start)
            except av.FFmpegError as exc:
                # Damaged audio should not cost the user their video: keep what we have.
                log.warning("audio stops at %.1f s: cannot carry it further (%s)", float(start), exc)
                self._done = True

    def _mux(self, packet: av.Packet, start: Fraction) -> None:
        tb = packet.time_base
        end = start + (packet.duration or 0) * tb
        if end <= 0 and packet.duration:
            return  # entirely before the first video frame
        if self._copy:
            shift = round(self._start / tb)
            packet.pts -= shift
            if packet.dts is not None:
                packet.dts -= shift
            packet.stream = self._out_stream
            self._output.mux(packet)
            return
        for frame in packet.decode():
            if self._next_sample == 0 and start > 0:
                self._next_sample = round(start * frame.sample_rate)
            frame.pts = self._next_sample
            frame.time_base = Fraction(1, frame.sample_rate)
            self._next_sample += frame.samples
            self._output.mux(self._out_stream.encode(frame))

    def finish(self, end: Fraction) -> None:
        """Mux the audio up to the video's end, flush the encoder and close the source."""
        try:
            self.pump(end)
            if not self._copy:
                self._output.mux(self._out_stream.encode(None))
        finally:
            self.close()

    def close(self) -> None:
        self._input.close()


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


def _video_frame(frame: np.ndarray) -> av.VideoFrame:
    """An HxWx3/4 uint8 RGB(A) array as a frame, without an interleaving copy for planar RGB."""
    if frame.shape[2] == 3 and frame.transpose(2, 0, 1).flags.c_contiguous:
        # Planar memory (e.g. `Matte.composite`'s output): FFmpeg's planar G,B,R format takes
        # the planes as they are, where rgb24 would first need an HWC copy (7 ms at 1080p).
        return av.VideoFrame.from_ndarray(frame, format="gbrp")
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgba" if frame.shape[2] == 4 else "rgb24")


class VideoWriter:
    """Encode frames to a video file, written atomically.

    ``kind="rgb"`` writes H.264 (``libx264``, yuv420p, CRF 18; ``mpeg4`` where libx264 is
    missing) to .mp4/.mkv/.mov, or VP9 to .webm. ``kind="rgba"`` writes a video with an alpha
    channel: ProRes 4444 (``prores_ks``, yuva444p10le) to .mov or VP9 (``libvpx-vp9``,
    yuva420p) to .webm. Pixels are converted with BT.709 coefficients and tagged so.

    4:2:0 formats need even dimensions: an odd width or height is padded by repeating the last
    column/row, so the file is then one pixel wider/taller than the frames written.

    The file is built as a hidden ``.<name>.mtc<pid>-<random>.part<ext>`` sibling and renamed over
    `path` when the ``with`` block exits cleanly; on an exception the partial file is deleted.

    Args:
        path: Output file; the extension picks the container.
        width: Frame width in pixels.
        height: Frame height in pixels.
        fps: Frame rate (float or Fraction; 29.97 is stored as 30000/1001).
        kind: ``"rgb"`` or ``"rgba"``.
        audio_from: A media file whose first audio stream is copied into the output, trimmed
            to the video's length. If it has none, or it cannot be carried, the video is written
            without audio (with a warning in the latter case).
        encoder: H.264 encoder for .mp4/.mkv/.mov: "auto" (the first of NVENC and Quick Sync
            that starts here, else x264), "x264", "nvenc" or "qsv" (an error where it cannot
            start). WebM is VP9 and alpha video ProRes or VP9 whatever this says.
        timed: Frames come with their presentation times (`write`'s `time`, e.g. from
            `VideoReader.timed_frames`), kept on a 90 kHz clock, so a variable-frame-rate source
            keeps its timing. Otherwise frame k is shown at k / fps.
        replace: Replace a file at `path` when done (False: refuse, leaving that file alone,
            when one appeared there meanwhile).

    Raises:
        MtcError: Unsupported extension for `kind`, bad size/fps, frames of the wrong shape,
            no frame written, or a disk error.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        width: int,
        height: int,
        fps: float | Fraction,
        kind: str,
        audio_from: str | os.PathLike | None = None,
        x264_preset: str = DEFAULT_X264_PRESET,
        timed: bool = False,
        encoder: str = "auto",
        replace: bool = True,
    ):
        self.path = Path(path)
        self._replace = replace
        if x264_preset not in X264_PRESETS:
            raise MtcError(f"unknown x264 preset {x264_preset!r}", hint=f"choose one of: {', '.join(X264_PRESETS)}")
        self.width, self.height, self.kind = int(width), int(height), kind
        if self.width < 1 or self.height < 1:
            raise MtcError(f"cannot write video {self.path}: bad size {width}x{height}", hint="pass the frame size")
        codec, self._pix_fmt, options = _video_codec(self.path, kind, x264_preset, encoder)
        self.encoder = codec  # the FFmpeg encoder that runs, e.g. "libx264" or "h264_nvenc"
        log.info("encoding %s with %s", self.path.name, codec)
        self._rate = _frame_rate(fps)
        self._channels = 4 if kind == "rgba" else 3
        even = self._pix_fmt.endswith("420p") or self._pix_fmt == "nv12"  # 4:2:0 chroma
        self._pad = (self.height % 2 if even else 0, self.width % 2 if even else 0)
        self._count = 0
        self._time_base = Fraction(1, TIMED_CLOCK) if timed else 1 / self._rate
        self._frame_ticks = round(1 / (self._rate * self._time_base))  # one frame at `fps`
        self._pts = -self._frame_ticks  # the last frame's
        self._timed = timed
        self._audio: _AudioCopy | None = None
        self._closed = False
        self._to_encoder = FrameConverter()

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.path.parent)
            # The temp keeps the real extension: FFmpeg picks the container from it.
            suffix = f".part{self.path.suffix}"
            fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(self.path.stem), suffix=suffix, dir=self.path.parent)
            os.close(fd)
            give_default_permissions(Path(tmp))
        except OSError as exc:
            raise disk_error(self.path, exc) from None
        self._tmp = Path(tmp)
        try:
            container_options = {"movflags": "+faststart"} if self.path.suffix.lower() in (".mp4", ".mov") else {}
            self._container = av.open(str(self._tmp), "w", container_options=container_options)
            self._stream = self._container.add_stream(codec, rate=self._rate)
            ctx = self._stream.codec_context
            ctx.width, ctx.height = self.width + self._pad[1], self.height + self._pad[0]
            ctx.pix_fmt = self._pix_fmt
            ctx.time_base = self._time_base
            ctx.options = options
            # BT.709 tags make players decode with the same matrix we encode with.
            ctx.colorspace = ctx.color_primaries = ctx.color_trc = 1
            ctx.color_range = 1
            if codec == "libvpx-vp9":
                ctx.bit_rate = 0  # constant quality: crf alone, no bitrate target
            if codec == "mpeg4":
                ctx.qscale = True  # fixed quantiser 3 (in lambda units): visually clean
                ctx.global_quality = 3 * 118
            if audio_from is not None:
                self._audio = self._open_audio(Path(audio_from))
        except BaseException:
            self._discard()
            raise

    def _open_audio(self, source: Path) -> _AudioCopy | None:
        try:
            with av.open(str(source), "r") as probe:
                if not probe.streams.audio:
                    return None
            return _AudioCopy(source, self._container)
        except (av.FFmpegError, OSError, ValueError, IndexError) as exc:
            log.warning("%s: writing without audio, cannot carry the audio of %s (%s)", self.path, source, exc)
            return None

    def write(self, frame: np.ndarray, time: float | None = None) -> None:
        """Encode one frame.

        Args:
            frame: ``HxWx3`` ``uint8`` RGB (``kind="rgb"``), or ``HxWx4`` RGBA
                (``kind="rgba"``; RGB is accepted there and written fully opaque); an ``HxW``
                grey picture (a matte) is written as grey RGB.
            time: With ``timed=True``, the frame's presentation time in seconds from the first
                frame. A frame whose time is None (unknown) or does not advance is shown one
                frame period (1 / fps) after the previous one.
        """
        if time is not None and not self._timed:
            raise ValueError("frame times need a VideoWriter opened with timed=True")
        frame = np.asarray(frame)
        if frame.ndim == 2:
            frame = np.repeat(frame[..., None], 3, axis=2)
        allowed = (3, 4) if self._channels == 4 else (3,)
        expected = (self.height, self.width)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[:2] != expected or frame.shape[2] not in allowed:
            want = f"{self.height}x{self.width}x{self._channels}"
            raise MtcError(
                f"cannot write frame {frame.dtype} {frame.shape} to {self.path}: expected uint8 {want}",
                hint="write frames with the size and kind the writer was opened with",
            )
        image = self._encoder_frame(frame)
        pts = self._pts + self._frame_ticks if time is None else round(time / self._time_base)
        if pts <= self._pts:  # a repeated or backward time (damaged source timestamps)
            pts = self._pts + self._frame_ticks
        image.pts, image.time_base = pts, self._time_base
        try:
            self._container.mux(self._stream.encode(image))
            self._count += 1
            self._pts = pts
            if self._audio is not None:
                self._audio.pump(self._end())
        except OSError as exc:  # PyAV's errno errors (disk full, ...) are OSErrors too
            raise disk_error(self.path, exc) from None
        except av.FFmpegError as exc:
            raise MtcError(f"cannot encode video {self.path}: {exc}", hint="check the output path") from None

    def _encoder_frame(self, frame: np.ndarray) -> av.VideoFrame:
        """A checked RGB(A) frame in the encoder's pixel format."""
        if self._channels == 4 and frame.shape[2] == 3:
            frame = np.concatenate([frame, np.full((*frame.shape[:2], 1), 255, np.uint8)], axis=2)
        if any(self._pad):
            frame = np.pad(frame, ((0, self._pad[0]), (0, self._pad[1]), (0, 0)), mode="edge")
        return self._to_encoder(_video_frame(frame), format=self._pix_fmt, dst_colorspace="ITU709",
                                dst_color_range="MPEG")

    def _end(self) -> Fraction:
        """Seconds from the first frame to the end of the last one written."""
        return (self._pts + self._frame_ticks) * self._time_base

    @property
    def frames_written(self) -> int:
        """Number of frames written so far."""
        return self._count

    def close(self) -> None:
        """Flush the encoder and move the finished file into place."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._count == 0:
                raise MtcError(f"no frames were written to {self.path}", hint="check that the input has frames")
            self._container.mux(self._stream.encode(None))
            if self._audio is not None:
                self._audio.finish(self._end())
            self._container.close()
            finish_file(self._tmp, self.path, replace=self._replace)
        except OSError as exc:
            self._discard()
            raise disk_error(self.path, exc) from None
        except av.FFmpegError as exc:
            self._discard()
            raise MtcError(f"cannot finish video {self.path}: {exc}", hint="check the output path") from None
        except BaseException:
            self._discard()
            raise

    def _discard(self) -> None:
        self._closed = True
        for closeable in (self._audio, getattr(self, "_container", None)):
            if closeable is not None:
                with contextlib.suppress(Exception):
                    closeable.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._discard()
