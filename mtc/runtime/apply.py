"""Apply a matting session to files: images, image folders, watched folders and videos.

Video runs as a three-stage pipeline (decode thread -> inference -> encode thread) so that
codec work overlaps with the model instead of adding to it. `FinishedSession` adds the
finishing steps `mtc run` offers and the coverage check behind its empty-matte warning.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mtc.errors import MtcError
from mtc.runtime.session import Matte, MattingSession

OUTPUT_KINDS = ("composite", "alpha", "foreground")
NAMED_COLORS = {"green": (0, 255, 0), "blue": (0, 71, 187), "white": (255, 255, 255), "black": (0, 0, 0),
                "gray": (128, 128, 128), "grey": (128, 128, 128)}


def parse_color(text: str) -> tuple[int, int, int]:
    """'green', '#00ff00' or '0,255,0' -> an RGB tuple."""
    text = text.strip().lower()
    if text in NAMED_COLORS:
        return NAMED_COLORS[text]
    if re.fullmatch(r"#?[0-9a-f]{6}", text):
        digits = text.lstrip("#")
        return tuple(int(digits[i:i + 2], 16) for i in (0, 2, 4))
    parts = text.split(",")
    if len(parts) == 3 and all(p.strip().isdigit() and int(p) <= 255 for p in parts):
        return tuple(int(p) for p in parts)
    raise MtcError(f"background {text!r} is not a colour or an image file",
                   hint=f"use a name ({', '.join(NAMED_COLORS)}), #RRGGBB, R,G,B, or an existing image path")


@dataclass
class Renderer:
    """Turns a matte into the output picture the user asked for."""

    kind: str = "composite"
    color: tuple[int, int, int] = (0, 255, 0)
    image: np.ndarray | None = None  # background picture, resized to each frame size on demand
    _resized: dict = field(default_factory=dict)

    @property
    def has_alpha(self) -> bool:
        return self.kind == "foreground"

    def _background(self, height: int, width: int):
        if self.image is None:
            return self.color
        if (height, width) not in self._resized:
            from PIL import Image

            self._resized[(height, width)] = np.asarray(Image.fromarray(self.image).resize((width, height), Image.BILINEAR))
        return self._resized[(height, width)]

    def render(self, matte: Matte) -> np.ndarray:
        if self.kind == "alpha":
            return matte.alpha_u8()
        if self.kind == "foreground":
            return matte.rgba()
        return matte.composite(self._background(*matte.alpha.shape))


def make_renderer(kind: str, background: str | None) -> Renderer:
    if kind not in OUTPUT_KINDS:
        raise MtcError(f"unknown output kind {kind!r}", hint=f"choose one of: {', '.join(OUTPUT_KINDS)}")
    if background is None or kind != "composite":
        return Renderer(kind=kind)
    if Path(background).is_file():
        from mtc.runtime.images import read_image

        return Renderer(kind=kind, image=read_image(background))
    return Renderer(kind=kind, color=parse_color(background))


@dataclass
class RunStats:
    frames: int = 0
    seconds: float = 0.0
    model_seconds: float = 0.0

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    @property
    def model_fps(self) -> float:
        return self.frames / self.model_seconds if self.model_seconds else 0.0


_DONE = object()
CODEC_NICENESS = 10


def _yield_cores_to_inference() -> None:
    """Lower the calling codec thread's CPU priority (Linux; elsewhere a no-op).

    Inference is the pipeline's critical path and the queues let decoding and encoding run late,
    so the codec threads take the cycles inference leaves idle instead of preempting one of its
    worker threads (which stalls the other at the next barrier). The decoder's and x264's own
    threads are created from these threads and inherit the priority. Measured at 1920x1080 on
    2 cores with an FP32 video artifact: 6.9 -> 7.5 FPS end to end (veryfast), 8.3 with ultrafast.
    """
    if not sys.platform.startswith("linux"):
        return  # elsewhere PRIO_PROCESS takes a process id, not a thread id
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                       os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) + CODEC_NICENESS)
    except OSError:
        pass  # best effort: a sandbox may forbid it, and the pipeline works without it


def _produce(items: Iterable, out: queue.Queue, errors: list) -> None:
    _yield_cores_to_inference()
    try:
        for item in items:
            out.put(item)
    except BaseException as exc:  # re-raised in the main thread
        errors.append(exc)
    finally:
        out.put(_DONE)


def _drain(inbox: queue.Queue) -> Iterator:
    while (item := inbox.get()) is not _DONE:
        yield item


def matte_stream(session: MattingSession, frames: Iterable[np.ndarray], write: Callable[[np.ndarray], None],
                 renderer: Renderer, *, on_frame: Callable[[RunStats], None] | None = None) -> RunStats:
    """Decode, matte and encode concurrently; returns timing statistics."""
    errors: list[BaseException] = []
    decoded: queue.Queue = queue.Queue(maxsize=4)
    rendered: queue.Queue = queue.Queue(maxsize=4)
    reader = threading.Thread(target=_produce, args=(frames, decoded, errors), daemon=True)
    # Rendering (compositing a full frame in numpy) runs on the writer thread, overlapped with
    # the next inference; the matte is copied first unless the backend's outputs are fresh
    # arrays (a 1080p copy costs ~10 ms on the inference thread).
    writer = threading.Thread(target=lambda: _consume(rendered, lambda m: write(renderer.render(m)), errors),
                              daemon=True)
    fresh = getattr(getattr(session, "backend", None), "fresh_outputs", False)
    stats = RunStats()
    started = time.perf_counter()
    reader.start()
    writer.start()
    try:
        for frame in _drain(decoded):
            if errors:
                break
            t0 = time.perf_counter()
            matte = session.process(frame)
            stats.model_seconds += time.perf_counter() - t0
            rendered.put(matte if fresh else matte.copy())
            stats.frames += 1
            stats.seconds = time.perf_counter() - started
            if on_frame:
                on_frame(stats)
    finally:
        rendered.put(_DONE)
        writer.join()
    stats.seconds = time.perf_counter() - started
    if errors:
        raise errors[0]
    return stats


def _consume(inbox: queue.Queue, write: Callable[[np.ndarray], None], errors: list) -> None:
    _yield_cores_to_inference()
    for item in _drain(inbox):
        if errors:
            continue  # keep draining so the producer never blocks
        try:
            write(item)
        except BaseException as exc:
            errors.append(exc)


def matte_images(session: MattingSession, paths: Iterable[Path], read: Callable[[Path], np.ndarray],
                 write: Callable[[Path, Matte], None], *, on_image: Callable[[Path], None] | None = None) -> int:
    """Matte independent images with reading and writing overlapped with inference.

    A reader thread decodes image N+1 and a writer thread renders and encodes image N-1 while
    image N runs through the model. Unlike `matte_stream`'s, these threads keep their priority:
    decoding and encoding a full-size photo costs as much as a network at its fixed input size or
    more, so they are the critical path as often as inference is; lowered, they starve beside
    other busy processes (docs/runtime.md). Each image
    starts from a fresh state (`session.reset()`). Images are written in order; an error
    reading or writing one stops the run there, with the images before it written, as a plain
    loop would. At most one decoded image waits ahead and one matte behind, so memory holds
    about three full-size images.

    Args:
        session: the matting session (or a `FinishedSession`; mattes are named by file name).
        paths: the images, in order.
        read: path -> HxWx3 uint8 frame (may raise to stop the run, e.g. an output that exists).
        write: (path, matte) -> None, rendering and saving the matte.
        on_image: called with each path once its output is written.

    Returns:
        How many images were written.
    """
    errors: list[BaseException] = []  # the writer's: it stops writing at the first
    stop = threading.Event()  # tells the reader to read no further
    decoded: queue.Queue = queue.Queue(maxsize=1)
    finished: queue.Queue = queue.Queue(maxsize=1)

    def produce() -> None:
        try:
            for path in paths:
                if stop.is_set():
                    break
                try:
                    decoded.put((path, read(path)))
                except BaseException as exc:  # in order: the images before it are still matted
                    decoded.put((path, exc))
                    break
        finally:
            decoded.put(_DONE)

    written = 0

    def consume() -> None:
        nonlocal written
        for path, matte in _drain(finished):
            if errors:
                continue  # keep draining so the main thread never blocks
            try:
                write(path, matte)
            except BaseException as exc:
                errors.append(exc)
                stop.set()
                continue
            written += 1
            if on_image:
                on_image(path)

    reader = threading.Thread(target=produce, daemon=True)
    writer = threading.Thread(target=consume, daemon=True)
    fresh = getattr(getattr(session, "backend", None), "fresh_outputs", False)
    failure: BaseException | None = None  # reading or matting an image failed: the run ends there
    reader.start()
    writer.start()
    try:
        for path, frame in _drain(decoded):
            if errors:
                break
            if isinstance(frame, BaseException):
                failure = frame
                break
            session.reset()  # images are independent: no state carried from the previous one
            kwargs = {"name": path.name} if isinstance(session, FinishedSession) else {}
            matte = session.process(frame, **kwargs)
            finished.put((path, matte if fresh else matte.copy()))
    except BaseException as exc:
        failure = exc
    finally:
        stop.set()
        finished.put(_DONE)  # the writer finishes the mattes before the failure
        writer.join()
        while reader.is_alive():  # unblock a reader waiting to hand over its next image
            with contextlib.suppress(queue.Empty):
                decoded.get(timeout=0.05)
        reader.join()
    if errors:  # a write failed first: the images after it were never written
        raise errors[0]
    if failure is not None:
        raise failure
    return written


# --------------------------------------------------------------------------------------------
# Finishing steps and the coverage check
# --------------------------------------------------------------------------------------------

# A matte is "almost empty" when fewer than this share of its pixels are at least half opaque,
# and "almost full" when fewer than this share are less: the model found no subject it knows,
# or took the whole picture for one.
COVERAGE_MARGIN = 0.005


@dataclass
class CoverageTally:
    """How many mattes came out almost empty or almost full, and the first of each."""

    mattes: int = 0
    empty: int = 0
    full: int = 0
    first_empty: str | None = None
    first_full: str | None = None

    def add(self, alpha: np.ndarray, name: str) -> None:
        opaque = float(np.count_nonzero(alpha >= 0.5)) / max(alpha.size, 1)
        self.mattes += 1
        if opaque < COVERAGE_MARGIN:
            self.empty += 1
            self.first_empty = self.first_empty or name
        elif opaque > 1 - COVERAGE_MARGIN:
            self.full += 1
            self.first_full = self.first_full or name


class FinishedSession:
    """A session whose mattes pass through finishing steps (see mtc.runtime.refine) and into a
    coverage tally. Everything else (reset, backend, manifest, ...) is the wrapped session's.

    Args:
        session: the session to wrap.
        steps: functions ``(alpha, frame) -> alpha``, applied in order.
        tally: counts almost-empty and almost-full mattes, named by frame number (from 1).
    """

    def __init__(self, session: MattingSession, steps: Iterable[Callable[[np.ndarray, np.ndarray], np.ndarray]] = (),
                 tally: CoverageTally | None = None):
        self._session = session
        self.steps = tuple(steps)
        self.tally = tally

    def __getattr__(self, name: str):
        return getattr(self._session, name)

    def process(self, frame: np.ndarray, *, name: str | None = None) -> Matte:
        matte = self._session.process(frame)
        if self.steps:
            matte = matte.copy()  # the wrapped session may reuse its buffers for the next frame
            for step in self.steps:
                matte.alpha = step(matte.alpha, frame)
        if self.tally is not None:
            self.tally.add(matte.alpha, name or f"frame {self.tally.mattes + 1}")
        return matte


# --------------------------------------------------------------------------------------------
# Watching a folder
# --------------------------------------------------------------------------------------------

WATCH_POLL_SECONDS = 0.5
# A file that looked complete but would not decode is tried again when it changes; only when it
# stays unreadable and unchanged this many polls is it reported (a writer may pause mid-file).
WATCH_GRACE_POLLS = 10


def watch_folder(folder: Path, handle: Callable[[Path], None], *, done: Callable[[Path], bool] = lambda path: False,
                 poll_seconds: float = WATCH_POLL_SECONDS, stop: threading.Event | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> int:
    """Call `handle(path)` for each image that arrives in `folder`, once it has stopped growing.

    Polls the folder (no platform file-event API needed; network drives work too). An image is
    ready when its size and modification time are the same on two polls in a row and it is not
    empty. A file that changes afterwards (saved again, or a copy that had paused) is handled
    again. Files for which `done(path)` is true on the first poll are skipped (their output
    exists). When `handle` raises MtcError (an image that will not decode), the file is retried
    when it changes, and reported as skipped once it has stayed the same for WATCH_GRACE_POLLS
    polls.

    Runs until `stop` is set, or KeyboardInterrupt (Ctrl-C, or SIGTERM where mtc turns it into
    one) arrives. Returns how many images were handled.
    """
    import logging

    log = logging.getLogger("mtc")
    last_seen: dict[Path, tuple[int, int]] = {}
    handled: dict[Path, tuple[int, int]] = {}
    failing: dict[Path, tuple[tuple[int, int], int, MtcError]] = {}  # signature, unchanged polls, error
    count = 0
    first = True
    try:
        while stop is None or not stop.is_set():
            current = _image_signatures(folder)
            if first:
                handled.update({path: sig for path, sig in current.items() if done(path)})
                first = False
            for path, (signature, polls, error) in list(failing.items()):
                if current.get(path) != signature:
                    del failing[path]
                elif polls + 1 >= WATCH_GRACE_POLLS:
                    log.warning("skipped %s: %s", path.name, error)
                    del failing[path]
                else:
                    failing[path] = (signature, polls + 1, error)
            for path in sorted(current):
                signature = current[path]
                if signature[0] > 0 and last_seen.get(path) == signature and handled.get(path) != signature:
                    handled[path] = signature
                    try:
                        handle(path)
                        count += 1
                    except MtcError as exc:
                        failing[path] = (signature, 0, exc)
            last_seen = current
            sleep(poll_seconds)
    except KeyboardInterrupt:
        pass
    return count


def _image_signatures(folder: Path) -> dict[Path, tuple[int, int]]:
    """(size, modification time) of each image file in the folder; hidden files left out (the
    temporaries of tools that write atomically, ours included)."""
    from mtc.runtime.images import is_image

    found = {}
    for path in folder.iterdir():
        if path.name.startswith(".") or not is_image(path):
            continue
        with contextlib.suppress(OSError):  # vanished between listing and stat
            info = path.stat()
            if stat.S_ISREG(info.st_mode):
                found[path] = (info.st_size, info.st_mtime_ns)
    return found
