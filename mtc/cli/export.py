"""`mtc export`: build a verified artifact folder for a registered model."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("model")
@click.option("--variant", help="Model variant (default: the model's default; see `mtc models`).")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Artifact folder [default: artifacts/MODEL-VARIANT-fp32].")
@click.option("--weights", "weights_path", type=click.Path(path_type=Path),
              help="Use this weight file instead of downloading (checked against the known sha256).")
@click.option("--offline", is_flag=True, default=None, help="Never download; use the cache or --weights (also MTC_OFFLINE=1).")
@click.option("--force", is_flag=True, help="Replace the output folder if it exists (only once the new one is complete).")
@click.option("--no-simplify", is_flag=True, help="Skip the onnxsim simplification step.")
def export(model: str, variant: str | None, output: Path | None, weights_path: Path | None, offline: bool | None,
           force: bool, no_simplify: bool) -> None:
    """Export MODEL to an artifact folder: ONNX, manifest.json and report.json.

    The graph is sanitized (opset 17, unique dim names, state outputs routed, simplified) and
    checked against the original on the built-in clip before anything is written.
    """
    from mtc.exporters.pipeline import export_model

    folder = export_model(model, variant=variant, output=output, weights_path=weights_path, offline=offline,
                          overwrite=force, simplify=not no_simplify)
    click.echo(f"artifact: {folder}")
