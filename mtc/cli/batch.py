"""`mtc batch`: matte a library of videos on a Ray cluster, one task per video."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from mtc.cli.options import THREADS
from mtc.serve.ray_batch import DEFAULT_MIN_PIECE_FRAMES


@click.command()
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Output folder: one <video name><suffix> per input video.")
@click.option("--address", help="A running Ray cluster (auto, ray://HOST:10001) [default: start a local one].")
@click.option("--num-cpus", type=THREADS, help="CPUs of the local cluster [default: all].")
@click.option("--threads-per-video", type=THREADS, default=1, show_default=True,
              help="Inference threads (and Ray CPUs) per video task.")
@click.option("--what", type=click.Choice(["composite", "alpha", "foreground"]), default="composite", show_default=True,
              help="As `mtc run --what`.")
@click.option("--background", default="green", show_default=True, help="Composite background, as `mtc run`.")
@click.option("--suffix", help="Output extension [default: .mp4, or .mov (ProRes 4444) for --what foreground].")
@click.option("--backend", default="auto", show_default=True, metavar="NAME", help="Execution backend on the workers.")
@click.option("--retries", type=click.IntRange(0, 10), default=1, show_default=True,
              help="Tries again for a failed video before it is reported.")
@click.option("--force", is_flag=True, help="Replace existing outputs (default: skip those videos, so a re-run resumes).")
@click.option("--split-shots", is_flag=True,
              help="Split long videos at scene cuts into pieces matted by separate tasks (same output, sooner).")
@click.option("--min-piece-frames", type=click.IntRange(min=1), default=DEFAULT_MIN_PIECE_FRAMES, show_default=True,
              help="With --split-shots: shots are joined into pieces of at least this many frames.")
def batch(folder: Path, inputs: tuple[Path, ...], output: Path, address: str | None, num_cpus: int | None,
          threads_per_video: int, what: str, background: str, suffix: str | None, backend: str, retries: int,
          force: bool, split_shots: bool, min_piece_frames: int) -> None:
    """Matte every video in INPUTS (files or folders) with the artifact in FOLDER, on Ray.

    Each video is one task (its recurrent state stays in one session), or with --split-shots
    one task per run of shots; a failed video is retried, then reported, and never stops the
    others. Exits 1 if any video failed.
    """
    run_library(folder, inputs, output, address=address, num_cpus=num_cpus, threads_per_video=threads_per_video,
                what=what, background=background, suffix=suffix, backend=backend, retries=retries, force=force,
                split_shots=split_shots, min_piece_frames=min_piece_frames)


def run_library(folder: Path, inputs, output: Path, *, suffix: str | None = None, **options) -> None:
    """Matte a video library on Ray with a progress view and a summary table (`mtc batch`, and
    `mtc run --ray`); exits 1 if any video failed. `options` are `matte_library`'s."""
    from rich.console import Console
    from rich.table import Table

    from mtc.runtime.progress import frame_progress
    from mtc.serve.ray_batch import matte_library

    what = options.get("what", "composite")
    suffix = suffix or (".mov" if what == "foreground" else ".mp4")
    if not suffix.startswith("."):
        suffix = "." + suffix
    started, frames = time.perf_counter(), [0]
    with frame_progress("matting videos", total=None) as advance:
        def on_result(result, done, total):
            if result.error:
                click.secho(f"failed: {result.source}: {result.error}", fg="red", err=True)
            frames[0] += result.frames
            advance(fps=frames[0] / max(time.perf_counter() - started, 1e-9))  # frames per second, all videos

        report = matte_library(folder, inputs, output, suffix=suffix, on_result=on_result, **options)
    table = Table("video", "output", "frames", "pieces", "FPS per task", "status")
    for r in report.results:
        status = ("skipped (exists)" if r.skipped else "failed: " + r.error if r.error
                  else f"ok, lost {len(r.lost_frames)} frame(s)" if r.lost_frames else "ok")
        fps = f"{r.frames / r.seconds:.1f}" if r.seconds else "-"
        table.add_row(str(r.source), str(r.output), str(r.frames), str(r.pieces), fps, status)
    console = Console()
    console.print(table)
    overall = report.frames / report.seconds if report.seconds else 0.0
    console.print(f"{len(report.results) - len(report.failed)} of {len(report.results)} videos done, "
                  f"{report.frames} frames in {report.seconds:.1f} s ({overall:.1f} FPS overall), "
                  f"{len(report.failed)} failed")
    if report.failed:
        sys.exit(1)  # SystemExit: click's Exit would end `mtc` with 0 (see `mtc run`)
