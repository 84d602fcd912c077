"""`mtc inspect`: what an artifact holds and what a frame costs."""

from __future__ import annotations

from pathlib import Path

import click

from mtc.cli.options import RATIO, max_pixels_option, parse_resolution
from mtc.safe_text import plain, printable


@click.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--resolution", "-r", default="1920x1080", show_default=True, callback=parse_resolution,
              help="Frame size (WxH) to compute the cost per frame at.")
@click.option("--ratio", type=RATIO, help="Downsample ratio for the cost, in (0, 1] (default: the model's auto rule).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of tables.")
@max_pixels_option
def inspect(folder: Path, resolution: tuple[int, int], ratio: float | None, as_json: bool) -> None:
    """Print FOLDER's manifest and a graph summary: ops, parameters, GFLOPs per frame.

    Every string from the manifest or the graph is shown literally (control characters escaped,
    no rich markup): an artifact is data from whoever made it.
    """
    import json

    import onnx
    from rich.console import Console
    from rich.table import Table

    from mtc.artifact.manifest import read_manifest
    from mtc.graph_stats import frame_cost, summarize_graph

    manifest = read_manifest(folder)
    manifest.require_single_graph("mtc inspect")
    model = onnx.load(str(folder / manifest.model_file))
    width, height = resolution
    if ratio is not None and manifest.io.downsample is not None:
        ratio = manifest.io.downsample.check(ratio)
    summary = summarize_graph(model)
    feeds = manifest.io.example_feeds(height, width, downsample_ratio=ratio)
    cost = frame_cost(model, feeds)
    used_ratio = float(feeds[manifest.io.downsample.input][0]) if manifest.io.downsample else None

    if as_json:
        click.echo(json.dumps({
            "manifest": manifest.to_dict(),
            "graph": {"opset": summary.opset, "nodes": summary.node_count, "op_counts": summary.op_counts,
                      "params": summary.param_count, "param_bytes": summary.param_bytes},
            "cost": {"resolution": f"{width}x{height}", "downsample_ratio": used_ratio, "gflops": cost.gflops,
                     "conv_gmacs": cost.conv_gmacs, "per_op_type_gflops": cost.per_op_type_gflops},
        }, indent=2))
        return

    console = Console()
    head = Table(title=plain(folder), show_header=False)
    head.add_row("model", plain(f"{manifest.model} / {manifest.variant} ({manifest.task}, {manifest.license})"))
    head.add_row("precision", manifest.precision.mode)
    head.add_row("opset / nodes", f"{summary.opset} / {summary.node_count}")
    head.add_row("parameters", f"{summary.param_count / 1e6:.2f} M ({summary.param_bytes / 1e6:.1f} MB)")
    ratio_text = f", ratio {used_ratio:.3f}" if used_ratio is not None else ""
    head.add_row("cost per frame", f"{cost.gflops:.2f} GFLOPs at {width}x{height}{ratio_text}")
    head.add_row("created", plain(manifest.provenance.get("created", "?")))
    console.print(head)

    tensors = Table(title="inputs and outputs")
    for column in ("kind", "name", "role", "dtype", "shape"):
        tensors.add_column(column)
    for kind, group in (("in", manifest.io.inputs), ("out", manifest.io.outputs)):
        for t in group:
            tensors.add_row(kind, plain(t.name), t.role, t.dtype, plain("[" + ", ".join(map(str, t.shape)) + "]"))
    console.print(tensors)
    if manifest.io.states:
        console.print("recurrent state: " + printable(", ".join(f"{p.output} -> {p.input}" for p in manifest.io.states)),
                      markup=False, highlight=False)

    ops = Table(title="ops")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    ops.add_column("GFLOPs/frame", justify="right")
    for op, count in summary.op_counts.items():
        ops.add_row(plain(op), str(count), f"{cost.per_op_type_gflops.get(op, 0.0):.3f}")
    console.print(ops)
