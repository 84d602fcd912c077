"""`mtc package`: put an artifact into a serving engine's layout (a Triton model repository)."""

from __future__ import annotations

from pathlib import Path

import click

from mtc.cli.options import THREADS


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path, file_okay=False))
@click.option("--triton", "repository", type=click.Path(path_type=Path, dir_okay=True, file_okay=False), required=True,
              help="The Triton model repository to add the model to (created if missing).")
@click.option("--kind", type=click.Choice(["python", "network", "ensemble"]), default="python", show_default=True,
              help="python: mtc.runtime in Triton's Python backend, raw RGB frames in (runs on any Triton, CPU or "
                   "GPU); network: the graph itself on ONNX Runtime or TensorRT, for GPU fleets; ensemble: Python "
                   "pre/post-processing around the network model, raw frames in.")
@click.option("--name", help="Triton model name [default: from the artifact folder's name].")
@click.option("--max-batch", type=click.IntRange(0, 1024), default=8, show_default=True,
              help="network: the largest dynamic batch, where the graph has a free batch dimension (0: off).")
@click.option("--instances", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Model instances (parallel executions) per device.")
@click.option("--platform", type=click.Choice(["onnxruntime_onnx", "tensorrt_plan"]), default="onnxruntime_onnx",
              show_default=True, help="network, ensemble: the Triton backend that runs the graph.")
@click.option("--plan", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="tensorrt_plan: the engine built on the serving GPU's TensorRT.")
@click.option("--device", type=click.Choice(["gpu", "cpu"]), default="gpu", show_default=True,
              help="network, ensemble: where the network instances run.")
@click.option("--backend", default="auto", show_default=True, metavar="NAME",
              help="python: the mtc backend inside Triton (auto, onnxruntime, openvino, tensorrt).")
@click.option("--threads", type=THREADS, help="python: inference threads per instance (default: all it sees).")
@click.option("--idle-seconds", type=click.FloatRange(1, 86400), default=60, show_default=True,
              help="Drop a stream's state after this long without a frame.")
@click.option("--force", is_flag=True, help="Replace a model of the same name (only once the new one is complete).")
def package(artifact: Path, repository: Path, kind: str, name: str | None, max_batch: int, instances: int,
            platform: str, plan: Path | None, device: str, backend: str, threads: int | None, idle_seconds: float,
            force: bool) -> None:
    """Add the artifact in ARTIFACT to a Triton model repository.

    Start Triton on the repository (`tritonserver --model-repository REPO`); see docs/scale-out.md.
    """
    from mtc.serve.triton_repo import package_triton

    packaged = package_triton(artifact, repository, kind=kind, name=name, max_batch=max_batch, instances=instances,
                              platform=platform, plan=plan, device=device, backend=backend, threads=threads,
                              idle_seconds=idle_seconds, force=force)
    for note in packaged.notes:
        click.echo(f"{packaged.repository / note.split(':')[0]}  ({note.split(': ', 1)[1]})")
