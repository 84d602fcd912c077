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
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mtc.errors import MtcError, exception_summary

RAY_HINT = "pip install 'mtc[ray]'"


@dataclass
class VideoResult:
    source: Path
    output: Path
    frames: int = 0
    seconds: float = 0.0
    lost_frames: list[int] = field(default_factory=list)
    error: str | None = None
    skipped: bool = False  # the output was already there

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
    from mtc.runtime.media import is_video

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


def matte_video(artifact: str, source: str, output: str, *, what: str = "composite", background: str = "green",
                backend: str = "auto", threads: int = 1, x264_preset: str = "veryfast", encoder: str = "auto") -> dict:
    """Matte one video into `output` (what runs inside each Ray task; also callable directly).

    Returns {"frames", "seconds", "lost_frames"}.
    """
    import numpy as np

    from mtc.runtime.apply import make_renderer, matte_stream
    from mtc.runtime.media import VideoReader, VideoWriter

    session = _loaded_session(artifact, backend, threads)
    session.reset()  # a new video is a new shot: nothing carries over from the last one
    renderer = make_renderer(what, background)
    started = time.perf_counter()
    with VideoReader(Path(source)) as reader:
        times: collections.deque = collections.deque()  # the decode thread appends, the writer pops

        def frames():
            for moment, frame in reader.timed_frames():
                times.append(moment)
                yield frame

        with VideoWriter(output, width=reader.width, height=reader.height, fps=reader.fps,
                         kind="rgba" if renderer.has_alpha else "rgb", timed=True, x264_preset=x264_preset,
                         audio_from=source if reader.has_audio else None, encoder=encoder) as writer:
            def write(picture):
                if picture.ndim == 2:  # an alpha matte, as grey video
                    picture = np.repeat(picture[..., None], 3, axis=2)
                writer.write(picture, time=times.popleft())

            stats = matte_stream(session, frames(), write, renderer)
        lost = list(reader.lost_frames)
    return {"frames": stats.frames, "seconds": time.perf_counter() - started, "lost_frames": lost}


def _cause(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc  # a Ray task error wraps the worker's exception
    return str(cause) if isinstance(cause, MtcError) else exception_summary(cause)


def matte_library(artifact: str | Path, inputs: Iterable[str | Path], output_dir: str | Path, *,
                  address: str | None = None, num_cpus: int | None = None, threads_per_video: int = 1,
                  what: str = "composite", background: str = "green", suffix: str = ".mp4", backend: str = "auto",
                  retries: int = 1, force: bool = False,
                  on_result: Callable[[VideoResult, int, int], None] | None = None) -> BatchReport:
    """Matte every video among `inputs` into `output_dir` on Ray, one task per video.

    Args:
        artifact: the artifact folder; every Ray worker must see it at this path.
        inputs: video files and folders of videos.
        output_dir: where `<stem><suffix>` is written per video.
        address: a running Ray cluster ("auto", "ray://host:10001"); None starts a local one,
            which stays up for later calls in this process (`ray.shutdown()` ends it). Where Ray
            is already initialized, its cluster is used.
        num_cpus: CPUs for a local cluster (default: all).
        threads_per_video: inference threads (and Ray CPUs) per task.
        what, background: as `mtc run --what/--background`.
        retries: how often a failed video is tried again before it is reported.
        force: replace existing outputs (otherwise those videos are skipped, so a re-run resumes).
        on_result: called as each video finishes, with (result, done, total).

    Raises:
        MtcError: no videos, clashing output names, a bad artifact, or ray missing.
    """
    from mtc.artifact.manifest import read_manifest

    ray = import_ray()
    artifact = Path(artifact).resolve()
    read_manifest(artifact)  # a broken artifact fails here once, not in every task
    output_dir = Path(output_dir)
    pairs = plan_outputs(find_videos(inputs), output_dir, suffix)
    output_dir.mkdir(parents=True, exist_ok=True)
    if not ray.is_initialized():
        ray.init(address=address, num_cpus=num_cpus if address is None else None, include_dashboard=False,
                 logging_level="warning", log_to_driver=False)
    remote = ray.remote(matte_video).options(num_cpus=threads_per_video, max_retries=retries, retry_exceptions=True)
    started = time.perf_counter()
    results, pending = [], {}
    for source, target in pairs:
        if target.exists() and not force:
            results.append(VideoResult(source, target, skipped=True))
            continue
        ref = remote.remote(str(artifact), str(source.resolve()), str(target.resolve()), what=what,
                            background=background, backend=backend, threads=threads_per_video)
        pending[ref] = VideoResult(source, target)
    total = len(pairs)
    for result in results:
        if on_result:
            on_result(result, len(results), total)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        result = pending.pop(ready[0])
        try:
            done = ray.get(ready[0])
            result.frames, result.seconds, result.lost_frames = done["frames"], done["seconds"], done["lost_frames"]
        except Exception as exc:  # noqa: BLE001 - any failure of one video is that video's report
            result.error = _cause(exc)
        results.append(result)
        if on_result:
            on_result(result, len(results), total)
    order = {source: i for i, (source, _) in enumerate(pairs)}
    results.sort(key=lambda r: order[r.source])
    return BatchReport(results, time.perf_counter() - started)
