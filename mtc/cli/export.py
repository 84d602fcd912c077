"""`mtc export`: build a verified artifact folder for a registered model or an ONNX file."""

from __future__ import annotations

import math
import re
from pathlib import Path

import click

from mtc.cli.options import (
    check_quantization_flags,
    max_pixels_option,
    parse_resolution,
    quantization_options,
    run_quantization,
)


def _floats3(ctx, param, value):
    if value is None:
        return None
    try:
        numbers = tuple(float(v) for v in value.split(","))
    except ValueError:
        numbers = ()
    if len(numbers) != 3 or not all(math.isfinite(n) for n in numbers):
        raise click.BadParameter(f"{value!r} is not three comma-separated finite numbers, e.g. 0.485,0.456,0.406")
    if param.name == "std" and min(numbers) <= 0:
        raise click.BadParameter(f"{value!r}: a std divides the pixels, so each must be above 0, e.g. 0.229,0.224,0.225")
    return numbers


def _state_pairs(ctx, param, values):
    pairs = []
    for value in values:
        parts = value.split(":")
        if len(parts) != 2 or not all(parts):
            raise click.BadParameter(f"{value!r} is not INPUT:OUTPUT, e.g. r1i:r1o")
        pairs.append((parts[0], parts[1]))
    return tuple(pairs)


@click.command()
@click.argument("model")
@click.option("--variant", help="Model variant (default: the model's default; see `mtc models`).")
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Artifact folder [default: artifacts/MODEL-VARIANT-PRECISION].")
@click.option("--int8", "precision", flag_value="int8", help="Also quantize to INT8 (checked against FP32).")
@click.option("--fp16", "precision", flag_value="fp16", help="Also convert to FP16 (checked against FP32).")
@click.option("--bf16", "precision", flag_value="bf16",
              help="Also make a BF16 artifact: OpenVINO's CPU BF16, checked against FP32.")
@click.option("--weights", "weights_path", type=click.Path(path_type=Path),
              help="Use this weight file instead of downloading (checked against the known sha256).")
@click.option("--offline", is_flag=True, default=None, help="Never download; use the cache or --weights (also MTC_OFFLINE=1).")
@click.option("--force", is_flag=True, help="Replace the output folder if it exists (only once the new one is complete).")
@click.option("--no-simplify", is_flag=True, help="Skip the onnxsim simplification step.")
@click.option("--alpha-only", is_flag=True,
              help="Drop the foreground output (RVM): alpha only, less full-resolution work; "
                   "composites use the source frame as foreground.")
@click.option("--task", type=click.Choice(["image", "video"]), help="ONNX file: image (no state) or video model "
              "[default: video when recurrent states are found].")
@click.option("--input-size", callback=parse_resolution, metavar="WxH",
              help="ONNX file: resize frames to this model input size [default: the graph's fixed size, else any]; "
                   "variants trained on many sizes (birefnet dynamic): the size to export at.")
@click.option("--multiple-of", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="ONNX file with a dynamic input size: floor the input sides to a multiple of this.")
@click.option("--mean", callback=_floats3, metavar="R,G,B", help="ONNX file: normalisation mean on RGB in [0, 1] [default: 0,0,0].")
@click.option("--std", callback=_floats3, metavar="R,G,B", help="ONNX file: normalisation std [default: 1,1,1].")
@click.option("--state", "states", multiple=True, callback=_state_pairs, metavar="INPUT:OUTPUT",
              help="ONNX file: a recurrent state pair (repeat for each) [default: pairs found by name, e.g. r1i:r1o].")
@click.option("--alpha", "alpha_output", metavar="NAME", help="ONNX file: the alpha output [default: inferred].")
@click.option("--name", "model_name", help="ONNX file: the model name in the manifest [default: the file name].")
@quantization_options
@max_pixels_option
def export(model: str, variant: str | None, output: Path | None, precision: str | None, weights_path: Path | None,
           offline: bool | None, force: bool, no_simplify: bool, alpha_only: bool, task: str | None,
           input_size: tuple[int, int] | None, multiple_of: int, mean, std, states, alpha_output: str | None,
           model_name: str | None, **quant_options) -> None:
    """Export MODEL (a registered name, or a path to an .onnx file) to an artifact folder: ONNX,
    manifest.json and report.json.

    The graph is sanitized (opset 17, unique dim names, state outputs routed, simplified) and
    checked against the original before anything is written. For an ONNX file that is not a
    registered model's official file, the roles of its inputs and outputs are inferred from
    names and shapes (printed; the ONNX-file options override them). With --int8, --fp16 or --bf16
    the FP32 export is then quantized and gated against it (see `mtc quantize`).
    """
    from mtc.models.export import default_output_dir, export_model
    from mtc.models.registry import get_model

    if precision is not None:
        check_quantization_flags(precision, quant_options)
    if model.lower().endswith(".onnx") or Path(model).is_file():
        _export_onnx_file(Path(model), output=output, precision=precision, force=force, simplify=not no_simplify,
                          task=task, input_size=input_size, multiple_of=multiple_of, mean=mean, std=std,
                          states=states, alpha=alpha_output, name=model_name, quant_options=quant_options)
        return

    spec = get_model(model)
    var = spec.variant(variant).alpha_only() if alpha_only else spec.variant(variant)
    if input_size is not None:
        var = var.sized(input_size[1], input_size[0])
    output = output or default_output_dir(spec, var, precision or "fp32")
    click.echo(f"{spec.name} is licensed under {spec.license}", err=True)
    export_options = dict(variant=variant, weights_path=weights_path, offline=offline, simplify=not no_simplify,
                          alpha_only=alpha_only, size=(input_size[1], input_size[0]) if input_size else None)
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


def _export_onnx_file(path: Path, *, output: Path | None, precision: str | None, force: bool, simplify: bool,
                      quant_options: dict, name: str | None, **hint_values) -> None:
    from mtc.export.byo import ContractHints
    from mtc.models.export import export_onnx_file

    hints = ContractHints(task=hint_values["task"], input_size=hint_values["input_size"],
                          multiple_of=hint_values["multiple_of"], mean=hint_values["mean"] or (0.0, 0.0, 0.0),
                          std=hint_values["std"] or (1.0, 1.0, 1.0), states=hint_values["states"],
                          alpha=hint_values["alpha"])
    if precision is None:
        click.echo(f"artifact: {export_onnx_file(path, output=output, overwrite=force, simplify=simplify, hints=hints, name=name)}")
        return
    target = output or Path("artifacts") / f"{name or path.stem}-onnx-{precision}"
    # The FP32 artifact stays beside the quantized one, as for registered models: the reference.
    fp32 = target.with_name(re.sub(r"-(int8|fp16|bf16)$", "", target.name) + "-fp32")
    if force or not _is_fp32_artifact_from(fp32, path):
        export_onnx_file(path, output=fp32, overwrite=force, simplify=simplify, hints=hints, name=name)
    else:
        click.echo(f"reusing FP32 artifact {fp32}")
    run_quantization(fp32, target, precision=precision, force=force, **quant_options)


def _fp32_manifest(folder: Path):
    """The manifest of an FP32 artifact at `folder` that can be reused as the reference, else None."""
    from mtc.artifact.manifest import read_manifest
    from mtc.errors import MtcError

    try:
        manifest = read_manifest(folder)
    except MtcError:
        return None
    return manifest if manifest.precision.mode == "fp32" else None


def _is_fp32_artifact_from(folder: Path, source: Path) -> bool:
    from mtc.artifact.manifest import sha256_file

    manifest = _fp32_manifest(folder)
    return manifest is not None and manifest.provenance.get("source_sha256") == sha256_file(source)


def _is_fp32_artifact_of(folder: Path, model: str, variant: str) -> bool:
    manifest = _fp32_manifest(folder)
    return manifest is not None and (manifest.model, manifest.variant) == (model, variant)
