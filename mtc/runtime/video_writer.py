"""Video output for the runtime and the CLI (PyAV, no torch): H.264 or VP9, alpha video as
ProRes 4444 or VP9, the source's audio carried along.

Frames go in as ``HxWx3`` (or ``HxWx4``) ``uint8`` RGB(A) numpy arrays. The file is written to
a hidden temporary sibling and renamed into place only when complete, so an interrupted run
never leaves a file that looks finished.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from mtc.errors import MtcError
from mtc.fsutil import (
    disk_error,
    finish_file,
    give_default_permissions,
    remove_stale_temporaries,
    temporary_prefix,
)
from mtc.runtime.video_reader import FrameConverter

log = logging.getLogger("mtc")

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
