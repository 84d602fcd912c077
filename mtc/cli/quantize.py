"""`mtc quantize`: INT8 or FP16 from an existing FP32 artifact, gated against it."""

from __future__ import annotations

from pathlib import Path

import click

from mtc.cli.options import (
    SIMULATED_MODES,
    check_quantization_flags,
    check_simulation_flags,
    quantization_options,
    run_quantization,
    run_simulation,
)


@click.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Folder for the new artifact.")
@click.option("--int8", "precision", flag_value="int8", help="INT8 with Q/DQ (TensorRT-compatible).")
@click.option("--fp16", "precision", flag_value="fp16", help="FP16 with FP32 I/O; overflow-prone ops stay FP32.")
@click.option("--bf16", "precision", flag_value="bf16",
              help="The FP32 graph, checked as OpenVINO runs it in BF16 on this CPU (needs AVX-512 BF16 or AMX).")
@click.option("--simulate", type=click.Choice(SIMULATED_MODES), default=None,
              help="Evaluate low-bit weights/activations (W4A8, W4A4) in simulation, first and last layers at 8 "
                   "bits, every conv of the placement quantized; -o gets a report only, no artifact (no backend "
                   "runs 4-bit kernels). Needs torch ('mtc[export]').")
@quantization_options
@click.option("--force", is_flag=True, help="Replace the output folder if it exists.")
def quantize(folder: Path, output: Path, precision: str | None, simulate: str | None, force: bool, **options) -> None:
    """Quantize the FP32 artifact FOLDER, check it against FP32 frame by frame, write -o.

    A model that misses its gates is not written as an artifact: the command fails and the
    folder holds only the report (report.json, report.html) and the rejected model. With
    --simulate, -o only ever gets the simulated report.
    """
    if simulate is not None:
        check_simulation_flags(precision, options)
        run_simulation(folder, output, mode=simulate, force=force, **options)
        return
    if precision is None:
        raise click.UsageError("choose --int8, --fp16 or --bf16")
    check_quantization_flags(precision, options)
    run_quantization(folder, output, precision=precision, force=force, **options)
