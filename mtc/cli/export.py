"""`mtc export`: build a verified artifact folder for a registered model."""

from __future__ import annotations

from pathlib import Path

import click

from mtc.cli.options import quantization_options, run_quantization


@click.command()
@click.argument("model")
@click.option("--variant", help="Model variant (default: the model's default; see `mtc models`).")
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Artifact folder [default: artifacts/MODEL-VARIANT-PRECISION].")
@click.option("--int8", "precision", flag_value="int8", help="Also quantize to INT8 (checked against FP32).")
@click.option("--fp16", "precision", flag_value="fp16", help="Also convert to FP16 (checked against FP32).")
@click.option("--weights", "weights_path", type=click.Path(path_type=Path),
              help="Use this weight file instead of downloading (checked against the known sha256).")
@click.option("--offline", is_flag=True, default=None, help="Never download; use the cache or --weights (also MTC_OFFLINE=1).")
@click.option("--force", is_flag=True, help="Replace the output folder if it exists (only once the new one is complete).")
@click.option("--no-simplify", is_flag=True, help="Skip the onnxsim simplification step.")
@click.option("--alpha-only", is_flag=True,
              help="Drop the foreground output (RVM): alpha only, less full-resolution work; "
                   "composites use the source frame as foreground.")
@quantization_options
def export(model: str, variant: str | None, output: Path | None, precision: str | None, weights_path: Path | None,
           offline: bool | None, force: bool, no_simplify: bool, alpha_only: bool, **quant_options) -> None:
    """Export MODEL to an artifact folder: ONNX, manifest.json and report.json.

    The graph is sanitized (opset 17, unique dim names, state outputs routed, simplified) and
    checked against the original before anything is written. With --int8 or --fp16 the FP32
    export is then quantized and gated against it (see `mtc quantize`).
    """
    from mtc.models.export import default_output_dir, export_model
    from mtc.models.registry import get_model

    spec = get_model(model)
    var = spec.variant(variant).alpha_only() if alpha_only else spec.variant(variant)
    output = output or default_output_dir(spec, var, precision or "fp32")
    export_options = dict(variant=variant, weights_path=weights_path, offline=offline, simplify=not no_simplify,
                          alpha_only=alpha_only)
    if precision is None:
        folder = export_model(model, output=output, overwrite=force, **export_options)
        click.echo(f"artifact: {folder}")
        return
    # The FP32 artifact stays beside the quantized one: it is the reference `mtc bench` compares against.
    fp32 = output.parent / default_output_dir(spec, var, "fp32").name
    if not _is_fp32_artifact_of(fp32, spec.name, var.name) or force:
        export_model(model, output=fp32, overwrite=force, **export_options)
    else:
        click.echo(f"reusing FP32 artifact {fp32}")
    run_quantization(fp32, output, precision=precision, force=force, **quant_options)


def _is_fp32_artifact_of(folder: Path, model: str, variant: str) -> bool:
    from mtc.errors import MtcError
    from mtc.artifact.manifest import read_manifest

    try:
        manifest = read_manifest(folder)
    except MtcError:
        return False
    return manifest.precision.mode == "fp32" and (manifest.model, manifest.variant) == (model, variant)
