"""`mtc bench`: measure an artifact (speed, latency, memory, cost, accuracy) and check CI gates."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from mtc.cli.options import RATIO, THREADS, max_pixels_option


def _resolutions(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]):
    from mtc.bench.data import parse_resolutions
    from mtc.errors import MtcError
    from mtc.runtime.frames import check_pixels

    try:
        sizes = tuple(parse_resolutions(values))
        for width, height in sizes:
            check_pixels(width, height, f"resolution {width}x{height}")
    except MtcError as exc:
        raise click.BadParameter(str(exc)) from None
    return sizes


def _input_video(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if value != "builtin" and not Path(value).exists():
        raise click.BadParameter(f"{value!r} is not `builtin`, a video file or a folder of images")
    return value


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send everything written to file descriptor 1 to stderr inside the block, native libraries'
    prints included, so that `--json -` leaves stdout to the JSON alone."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _metrics(ctx: click.Context, param: click.Parameter, value: str | None):
    from mtc.bench.accuracy import parse_metric_names
    from mtc.errors import MtcError

    if value is None:
        return None
    try:
        return parse_metric_names(value)
    except MtcError as exc:
        raise click.BadParameter(str(exc)) from None


def _gates(ctx: click.Context, param: click.Parameter, value: Path | None):
    if value is None:
        return None
    from mtc.bench.gates import load_gates
    from mtc.errors import MtcError

    try:  # a broken gates file is a usage error (exit 2), never a measured failure (exit 1)
        return load_gates(value)
    except MtcError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--backend", default="auto", show_default=True, metavar="NAME",
              help="Execution backend to measure: auto, or one `mtc backends` lists.")
@click.option("--resolution", "-r", "resolutions", multiple=True, callback=_resolutions,
              help="WIDTHxHEIGHT; repeat or comma-separate for several (default: the gates file's, the "
                   "input video's size, or 512x288).")
@click.option("--frames", "-n", default=48, show_default=True, type=click.IntRange(min=1),
              help="Frames measured per resolution.")
@click.option("--warmup", default=5, show_default=True, type=click.IntRange(min=0), help="Untimed frames first.")
@click.option("--input", "input_", default="builtin", show_default=True, metavar="VIDEO|FOLDER", callback=_input_video,
              help="Video whose first frames are used (resized to each resolution), `builtin`, or a folder of "
                   "images (each matted at its own size, paired with --gt by file stem).")
@click.option("--reference", type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="Artifact to compare alpha against (default: the manifest's provenance.reference_artifact).")
@click.option("--no-reference", is_flag=True, help="Do not compare against any reference artifact.")
@click.option("--gt", type=click.Path(path_type=Path, exists=True),
              help="Ground-truth alpha: frame-aligned with a video input (a folder of alpha images or an alpha "
                   "video), or for an image folder a folder of alpha images with the same file stems.")
@click.option("--metrics", callback=_metrics,
              help="Accuracy metrics, comma-separated: mad, mse, grad, conn, dtssd, and the SOD metrics mae, max_f, "
                   "mean_f, weighted_f, s_measure, max_e, mean_e (default: mad,mse,grad,conn,dtssd; image folder: "
                   "all but dtssd). Grad and Conn take ~1.5 s per HD frame.")
@click.option("--gate", "gates", type=click.Path(path_type=Path), callback=_gates,
              help="TOML thresholds; exit code 1 if any gate fails.")
@click.option("--json", "json_path", type=click.Path(path_type=Path, allow_dash=True),
              help="Write the mtc.bench/1 report here (`-` for stdout; the table then goes to stderr).")
@click.option("--junit", type=click.Path(path_type=Path), help="Write gate results as JUnit XML.")
@click.option("--ratio", type=RATIO, help="Downsample ratio for recurrent models, in (0, 1] (default: auto per resolution).")
@click.option("--threads", type=THREADS, help="Inference threads (default: all available cores).")
@click.option("--no-e2e", is_flag=True, help="Skip the end-to-end (decode -> matte -> encode) measurement.")
@click.option("--no-gflops", is_flag=True, help="Skip counting GFLOPs per frame.")
@max_pixels_option
def bench(folder: Path, backend: str, resolutions, frames: int, warmup: int, input_: str, reference: Path | None,
          no_reference: bool, gt: Path | None, metrics, gates, json_path: Path | None, junit: Path | None,
          ratio: float | None, threads: int | None, no_e2e: bool, no_gflops: bool) -> None:
    """Benchmark the artifact in FOLDER: FPS, latency percentiles, end-to-end FPS, peak memory,
    GFLOPs, and alpha error vs a reference artifact and/or ground truth.

    With --gate, exits 1 when any threshold fails (0 when all pass); --junit writes one
    testcase per gate per resolution for CI dashboards.
    """
    from rich.console import Console

    from mtc.bench.gates import junit_xml
    from mtc.bench.runner import BenchConfig, report_json, run_bench
    from mtc.bench.table import print_report
    from mtc.fsutil import atomic_write_text

    if reference is not None and no_reference:
        raise click.UsageError("--reference and --no-reference exclude each other")
    if junit is not None and gates is None:
        raise click.UsageError("--junit needs --gate (JUnit XML holds the gate results)")
    config = BenchConfig(folder=folder, backend=backend, resolutions=resolutions, frames=frames, warmup=warmup,
                         input=input_, reference=reference, use_manifest_reference=not no_reference, gt=gt,
                         ratio=ratio, threads=threads, metrics=metrics, end_to_end=not no_e2e,
                         gflops=not no_gflops, gates=gates)
    to_stdout = json_path is not None and str(json_path) == "-"
    with _stdout_to_stderr() if to_stdout else contextlib.nullcontext():
        report = run_bench(config)
    text = report_json(report)
    # CI logs are not terminals (rich would assume 80 columns): keep the table on one line per row.
    stream = sys.stderr if to_stdout else sys.stdout
    print_report(report, Console(stderr=to_stdout, width=None if stream.isatty() else 150))
    if to_stdout:
        click.echo(text, nl=False)
    elif json_path is not None:
        atomic_write_text(json_path, text)
    if junit is not None and report["gates"] is not None:
        from mtc.bench.gates import GateResult

        results = [GateResult(**g) for g in report["gates"]["results"]]
        atomic_write_text(junit, junit_xml(results, seconds=report["seconds"]))
    if not report["passed"]:
        # SystemExit, not click's Exit: `mtc`'s main() runs click with standalone_mode=False,
        # where click turns Exit into a return value that would end the process with 0.
        sys.exit(1)

