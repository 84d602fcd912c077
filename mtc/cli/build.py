"""`mtc build`: prepare an artifact for a backend ahead of run time."""

from __future__ import annotations

from pathlib import Path

import click

from mtc.cli.options import THREADS


@click.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--backend", required=True, metavar="NAME",
              help="A registered backend. tensorrt: plans into FOLDER/engines; openvino: precompile into the cache; "
                   "onnxruntime: save the optimized model into the cache.")
@click.option("--profile", "profiles", default="hd", show_default=True,
              help="Comma-separated frame sizes: 512, 720p, hd, 4k or WIDTHxHEIGHT[@RATIO], e.g. 1080x1920@0.25; "
                   "each is built for the model input the session feeds at that size (ratio: the model's rule).")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="OpenVINO inference precision to precompile for.")
@click.option("--opt-level", "optimization_level", type=click.IntRange(0, 5), default=3, show_default=True,
              help="TensorRT builder optimization level (higher: longer build, maybe faster engine).")
@click.option("--threads", type=THREADS, help="OpenVINO inference threads (default: all available cores).")
@click.option("--force", is_flag=True, help="Rebuild TensorRT plans even when they are up to date.")
def build(folder: Path, backend: str, profiles: str, precision: str, optimization_level: int, threads: int | None,
          force: bool) -> None:
    """Build what BACKEND needs to run the artifact in FOLDER without first-frame delays.

    TensorRT plans are checked before use: a plan from another TensorRT version, GPU or model
    is rebuilt (its JSON sidecar records all three).
    """
    from mtc.backends.build import build as build_engines

    for line in build_engines(folder, backend=backend, profiles=profiles, precision=precision, threads=threads,
                              optimization_level=optimization_level, force=force):
        click.echo(f"{backend}: {line}")
