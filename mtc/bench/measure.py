"""The measuring core: timings of any session-like object, with an injectable clock.

A *session* here is anything with ``.process(frame)`` returning an object with ``.alpha``
(``mtc.runtime.MattingSession`` or a test double); ``.reset()`` is used when present. The
clock is any zero-argument callable returning seconds, so tests can drive a fake clock that
the fake backend advances and check every statistic exactly.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mtc.bench.stats import latency_stats
from mtc.errors import MtcError

log = logging.getLogger("mtc")

Clock = Callable[[], float]


def _reset(session) -> None:
    reset = getattr(session, "reset", None)
    if callable(reset):
        reset()


def measure_model(session, frames: Sequence[np.ndarray], *, warmup: int = 3,
                  clock: Clock = time.perf_counter) -> dict:
    """Time ``session.process`` frame by frame on pre-decoded frames (model-only path).

    `warmup` calls (cycling through `frames`) run first and are not timed; the session is then
    reset so the timed pass starts from the initial recurrent state, as a real clip would.

    Args:
        session: the session-like object to time.
        frames: HxWx3 uint8 frames, processed in order.
        warmup: untimed calls before measuring.
        clock: returns the time in seconds (default ``time.perf_counter``).

    Returns:
        `mtc.bench.stats.latency_stats` of the per-frame times.
    """
    if not frames:
        raise MtcError("no frames to benchmark", hint="pass --frames 1 or more")
    if warmup < 0:
        raise MtcError(f"--warmup must be >= 0, got {warmup}", hint="pass --warmup 3")
    for frame in itertools.islice(itertools.cycle(frames), warmup):
        session.process(frame)
    _reset(session)
    seconds = []
    for frame in frames:
        start = clock()
        session.process(frame)
        seconds.append(clock() - start)
    return latency_stats(seconds)


def write_source_video(frames: Sequence[np.ndarray], path: Path, *, fps: float = 25.0) -> Path:
    """Encode frames to an H.264 file, the input of the end-to-end measurement."""
    from mtc.runtime.video_writer import VideoWriter

    height, width = frames[0].shape[:2]
    with VideoWriter(path, width=width, height=height, fps=fps, kind="rgb") as writer:
        for frame in frames:
            writer.write(frame)
    return path


def measure_end_to_end(session, video: Path, output: Path, *, frames: int | None = None,
                       clock: Clock = time.perf_counter, x264_preset: str | None = None,
                       encoder: str = "auto") -> dict:
    """Decode -> matte -> encode with the runtime's video pipeline and time it.

    Uses `mtc.runtime.apply.matte_stream` (decoding, inference and encoding overlap in three
    threads) with `VideoReader` / `VideoWriter`, compositing on green into `output` (H.264).

    Args:
        session: the session-like object (its ``.process`` must return a `Matte`).
        video: the input video.
        output: where to write the composited video (a temporary file).
        frames: stop after this many frames (default: the whole video).
        clock: timestamps each finished frame for the interval statistics.
        x264_preset: x264's speed preset (default: VideoWriter's).
        encoder: VideoWriter's H.264 encoder choice ("auto", as `mtc run`; "x264" for the CPU).

    Returns:
        ``{"frames", "seconds", "fps", "model_fps", "encoder", "interval_ms": {...}}``: the wall time from
        the first decode to the closed output file (encoder flush included), the model's own
        throughput inside the pipeline, and the spread of the intervals between finished frames
        (the first interval includes pipeline start-up; nearest-rank percentiles).
    """
    from mtc.runtime.apply import Renderer, matte_stream
    from mtc.runtime.video_reader import VideoReader
    from mtc.runtime.video_writer import VideoWriter

    _reset(session)
    with VideoReader(video) as reader:
        decoded = itertools.islice(iter(reader), frames) if frames else iter(reader)
        preset = {"x264_preset": x264_preset} if x264_preset else {}
        writer = VideoWriter(output, width=reader.width, height=reader.height, fps=reader.fps, kind="rgb",
                             encoder=encoder, **preset)
        stamps = [clock()]
        with writer:  # closing flushes the encoder's look-ahead: part of the end-to-end time
            stats = matte_stream(session, decoded, writer.write, Renderer(kind="composite"),
                                 on_frame=lambda _: stamps.append(clock()))
        seconds = clock() - stamps[0]
    intervals = latency_stats(np.diff(stamps).tolist()) if len(stamps) > 1 else None
    return {
        "frames": stats.frames,
        "seconds": seconds,
        "fps": stats.frames / seconds if seconds > 0 else float("inf"),
        "model_fps": stats.model_fps,
        "encoder": writer.encoder,
        "interval_ms": intervals["latency_ms"] if intervals else None,
    }
