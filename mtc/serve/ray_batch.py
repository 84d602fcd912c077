"""Batch matting of a video library on a Ray cluster: one task per video.

Each video is one task, so its recurrent state stays in one session from its first frame to
its last, exactly as in a single-process `mtc run`. A worker process loads the artifact once
and reuses the loaded engine for every video it is given (a new session state per video). A
task that fails is retried, then reported; the other videos go on. Every output is written
atomically (the runtime's writer), so a failed video leaves no partial file.
"""

from __future__ import annotations

import collections
import functools
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mtc.errors import MtcError, exception_summary

RAY_HINT = "pip install 'mtc[ray]'"
# Pieces shorter than this are joined to their neighbour: a task costs a worker's model load on
# its first use, a decode of the video up to the piece, and a lossless write and read.
DEFAULT_MIN_PIECE_FRAMES = 250


@dataclass
class VideoResult:
    source: Path
    output: Path
    frames: int = 0
    seconds: float = 0.0  # the workers' time on it (decode, matte, encode), summed over its tasks
    lost_frames: list[int] = field(default_factory=list)
    error: str | None = None
    skipped: bool = False  # the output was already there
    pieces: int = 1  # tasks it was matted in (more than one when split at scene cuts)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class BatchReport:
    results: list[VideoResult]
    seconds: float

    @property
    def failed(self) -> list[VideoResult]:
        return [r for r in self.results if not r.ok]

    @property
    def frames(self) -> int:
        return sum(r.frames for r in self.results)


def import_ray():
    try:
        import ray
    except ImportError:
        raise MtcError("batch matting on Ray needs the ray package", hint=RAY_HINT) from None
    return ray


def find_videos(inputs: Iterable[str | Path]) -> list[Path]:
    """The video files among `inputs`, folders expanded (sorted, not recursive).

    Raises:
        MtcError: an input that does not exist, or no video at all.
    """
    from mtc.runtime.video_reader import is_video

    videos = []
    for item in map(Path, inputs):
        if item.is_dir():
            videos.extend(sorted(p for p in item.iterdir() if p.is_file() and is_video(p)))
        elif item.is_file():
            videos.append(item)
        else:
            raise MtcError(f"input {item} does not exist", hint="pass video files or folders of videos")
    if not videos:
        raise MtcError("no video files among the inputs", hint="pass video files (.mp4, .mov, .mkv, ...) or folders")
    return videos


def plan_outputs(videos: list[Path], output_dir: Path, suffix: str) -> list[tuple[Path, Path]]:
    """(source, output) pairs: output_dir/<source stem><suffix>. Two sources with one stem, or an
    output that is its own source, are refused before any work starts."""
    pairs, seen = [], {}
    for video in videos:
        target = output_dir / f"{video.stem}{suffix}"
        if target.resolve() == video.resolve():
            raise MtcError(f"{video} would be overwritten by its own output",
                           hint="write the outputs to another folder (-o), or pick another --suffix")
        if target in seen:
            raise MtcError(f"{seen[target]} and {video} would both be written to {target}",
                           hint="rename one of them, or run them into different output folders")
        seen[target] = video
        pairs.append((video, target))
    return pairs


@functools.lru_cache(maxsize=2)
def _loaded_session(artifact: str, backend: str, threads: int):
    """The worker's session, loaded on its first video and kept for the next ones."""
    import mtc.runtime

    return mtc.runtime.load(artifact, backend=backend, threads=threads, allow_spinning=False)


def _matte_range(artifact: str, reader, write: Callable, *, what: str, background: str, backend: str,
                 threads: int, first: int = 0, stop: int | None = None) -> dict:
    """Matte frames [first, stop) of an open VideoReader from fresh state, passing (time, picture)
    to `write`."""
    import itertools

    from mtc.runtime.apply import make_renderer, matte_stream

    session = _loaded_session(artifact, backend, threads)
    session.reset()  # a new video or piece is a new shot: nothing carries over from the last one
    renderer = make_renderer(what, background)
    started = time.perf_counter()
    times: collections.deque = collections.deque()  # the decode thread appends, the writer pops
    timed = reader.timed_frames(first)
    if stop is not None:
        timed = itertools.islice(timed, stop - first)

    def frames():
        for moment, frame in timed:
            times.append(moment)
            yield frame

    stats = matte_stream(session, frames(), lambda picture: write(times.popleft(), picture), renderer)
    lost = list(reader.lost_frames) if stop is None else []  # complete only when read to the end
    return {"frames": stats.frames, "seconds": time.perf_counter() - started, "lost_frames": lost}


def _output_kind(what: str) -> str:
    return "rgba" if what == "foreground" else "rgb"


def matte_video(artifact: str, source: str, output: str, *, what: str = "composite", background: str = "green",
                backend: str = "auto", threads: int = 1, x264_preset: str = "veryfast", encoder: str = "auto") -> dict:
    """Matte one video into `output` (what runs inside each Ray task; also callable directly).

    Returns {"frames", "seconds", "lost_frames"}.
    """
    from mtc.runtime.video_reader import VideoReader
    from mtc.runtime.video_writer import VideoWriter

    with VideoReader(Path(source)) as reader, VideoWriter(
            output, width=reader.width, height=reader.height, fps=reader.fps, kind=_output_kind(what), timed=True,
            x264_preset=x264_preset, audio_from=source if reader.has_audio else None, encoder=encoder) as writer:
        return _matte_range(artifact, reader, lambda moment, picture: writer.write(picture, time=moment),
                            what=what, background=background, backend=backend, threads=threads)


def matte_piece(artifact: str, source: str, piece: str, first: int, stop: int, *, what: str, background: str,
                backend: str, threads: int) -> dict:
    """Matte frames [first, stop) of `source` into the lossless file `piece` (a Ray task)."""
    from mtc.runtime.video_reader import VideoReader
    from mtc.serve.lossless import LosslessWriter

    with VideoReader(Path(source)) as reader, LosslessWriter(piece) as writer:
        return _matte_range(artifact, reader, lambda moment, picture: writer.write(picture), what=what,
                            background=background, backend=backend, threads=threads, first=first, stop=stop)


def join_pieces(source: str, pieces: list[str], output: str, times: list[float | None], *, what: str,
                x264_preset: str = "veryfast", encoder: str = "auto") -> None:
    """Encode the pieces' pictures, in order, with the source's frame times and audio, into
    `output` (a Ray task): the file a single run writes."""
    from mtc.runtime.video_reader import VideoReader
    from mtc.runtime.video_writer import VideoWriter
    from mtc.serve.lossless import read_lossless

    with VideoReader(Path(source)) as probe:
        size, fps, audio = (probe.width, probe.height), probe.fps, probe.has_audio
    moments = iter(times)
    with VideoWriter(output, width=size[0], height=size[1], fps=fps, kind=_output_kind(what), timed=True,
                     x264_preset=x264_preset, audio_from=source if audio else None, encoder=encoder) as writer:
        for piece in pieces:
            for picture in read_lossless(piece):
                writer.write(picture, time=next(moments))


def _cause(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc  # a Ray task error wraps the worker's exception
    return str(cause) if isinstance(cause, MtcError) else exception_summary(cause)


@dataclass
class _Job:
    """One video in flight: its result so far and, when split, its pieces."""

    result: VideoResult
    plan: object = None  # the ShotPlan, once known
    pieces: list[Path] = field(default_factory=list)
    waiting: int = 0  # pieces not yet finished
    work: Path | None = None  # the folder its pieces live in until they are joined

    def discard_work(self) -> None:
        if self.work is not None:
            shutil.rmtree(self.work, ignore_errors=True)


def _work_folder(target: Path) -> Path:
    """Where the pieces of `target` wait to be joined: hidden beside it, so every worker sees it."""
    return target.parent / f".{target.name}.mtc-pieces"


def matte_library(artifact: str | Path, inputs: Iterable[str | Path], output_dir: str | Path, *,
                  address: str | None = None, num_cpus: int | None = None, threads_per_video: int = 1,
                  what: str = "composite", background: str = "green", suffix: str = ".mp4", backend: str = "auto",
                  retries: int = 1, force: bool = False, x264_preset: str = "veryfast", encoder: str = "auto",
                  split_shots: bool = False,
                  min_piece_frames: int = DEFAULT_MIN_PIECE_FRAMES,
                  on_result: Callable[[VideoResult, int, int], None] | None = None) -> BatchReport:
    """Matte every video among `inputs` into `output_dir` on Ray, one task per video.

    Args:
        artifact: the artifact folder; every Ray worker must see it at this path.
        inputs: video files and folders of videos.
        output_dir: where `<stem><suffix>` is written per video; every worker must see it too
            when `split_shots` is on (the pieces wait there).
        address: a running Ray cluster ("auto", "ray://host:10001"); None starts a local one,
            which stays up for later calls in this process (`ray.shutdown()` ends it). Where Ray
            is already initialized, its cluster is used.
        num_cpus: CPUs for a local cluster (default: all).
        threads_per_video: inference threads (and Ray CPUs) per task.
        what, background, x264_preset, encoder: as `mtc run`'s options of those names.
        retries: how often a failed task is tried again before its video is reported.
        force: replace existing outputs (otherwise those videos are skipped, so a re-run resumes).
        split_shots: find each video's scene cuts first and matte runs of shots of at least
            `min_piece_frames` frames as separate tasks, joined in order into the output. The
            session resets its state at those cuts anyway, so the output equals the unsplit one.
        min_piece_frames: the shortest piece worth a task of its own.
        on_result: called as each video finishes, with (result, done, total).

    Raises:
        MtcError: no videos, clashing output names, a bad artifact or setting, or ray missing.
    """
    from mtc.artifact.manifest import read_manifest
    from mtc.runtime.scenes import find_shots

    if min_piece_frames < 1:
        raise MtcError(f"the shortest piece must be at least 1 frame, got {min_piece_frames}",
                       hint=f"pass a positive frame count (default {DEFAULT_MIN_PIECE_FRAMES})")
    ray = import_ray()
    artifact = Path(artifact).resolve()
    read_manifest(artifact)  # a broken artifact fails here once, not in every task
    output_dir = Path(output_dir)
    pairs = plan_outputs(find_videos(inputs), output_dir, suffix)
    output_dir.mkdir(parents=True, exist_ok=True)
    if not ray.is_initialized():
        ray.init(address=address, num_cpus=num_cpus if address is None else None, include_dashboard=False,
                 logging_level="warning", log_to_driver=False)

    def task(function, cpus=threads_per_video):
        return ray.remote(function).options(num_cpus=cpus, max_retries=retries, retry_exceptions=True)

    look = dict(what=what, background=background, backend=backend, threads=threads_per_video)
    encoding = dict(x264_preset=x264_preset, encoder=encoder)
    whole, plan, piece, join = task(matte_video), task(find_shots, 1), task(matte_piece), task(join_pieces, 1)
    started = time.perf_counter()
    results: list[VideoResult] = []
    pending: dict = {}  # task reference -> (what the task was, its job)
    total = len(pairs)

    def finish(job: _Job) -> None:
        job.discard_work()
        results.append(job.result)
        if on_result:
            on_result(job.result, len(results), total)

    def start_whole(job: _Job) -> None:
        ref = whole.remote(str(artifact), str(job.result.source.resolve()), str(job.result.output.resolve()), **look,
                           **encoding)
        pending[ref] = ("whole", job)

    for source, target in pairs:
        job = _Job(VideoResult(source, target))
        if target.exists() and not force:
            job.result.skipped = True
            finish(job)
        elif split_shots:
            pending[plan.remote(str(source.resolve()))] = ("plan", job)
        else:
            start_whole(job)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        kind, job = pending.pop(ready[0])
        try:
            done = ray.get(ready[0])
        except Exception as exc:  # noqa: BLE001 - any failure of one task is its video's report
            if job.result.error is None:
                job.result.error = _cause(exc)
            done = None
        if job.result.error is not None:
            if kind == "piece":
                job.waiting -= 1
            if kind != "piece" or job.waiting == 0:
                finish(job)
            continue
        if kind == "whole":
            job.result.frames, job.result.lost_frames = done["frames"], done["lost_frames"]
            job.result.seconds = done["seconds"]
            finish(job)
        elif kind == "plan":
            job.plan = done
            job.result.lost_frames = list(done.lost_frames)
            spans = done.pieces(min_piece_frames)
            if len(spans) == 1:
                start_whole(job)
                continue
            job.work = _work_folder(job.result.output)
            shutil.rmtree(job.work, ignore_errors=True)  # what a crashed run left
            job.work.mkdir(parents=True)
            for number, (first, stop) in enumerate(spans):
                path = job.work / f"{number:05d}.mkv"
                job.pieces.append(path)
                ref = piece.remote(str(artifact), str(job.result.source.resolve()), str(path), first, stop, **look)
                pending[ref] = ("piece", job)
            job.waiting = job.result.pieces = len(spans)
        elif kind == "piece":
            job.result.frames += done["frames"]
            job.result.seconds += done["seconds"]
            job.waiting -= 1
            if job.waiting == 0:
                ref = join.remote(str(job.result.source.resolve()), [str(p) for p in job.pieces],
                                  str(job.result.output.resolve()), list(job.plan.times), what=what, **encoding)
                pending[ref] = ("join", job)
        else:  # the pieces are joined: the video is done
            finish(job)
    order = {source: i for i, (source, _) in enumerate(pairs)}
    results.sort(key=lambda r: order[r.source])
    return BatchReport(results, time.perf_counter() - started)
