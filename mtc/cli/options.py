"""Option parsing shared by several commands."""

from __future__ import annotations

import re

import click


def parse_resolution(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    """'1920x1080' -> (1920, 1080)."""
    if value is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", value)
    if not match or min(int(match[1]), int(match[2])) < 16:
        raise click.BadParameter(f"{value!r} is not WIDTHxHEIGHT with both sides >= 16, e.g. 1920x1080")
    return int(match[1]), int(match[2])


def quantization_options(command):
    """Options shared by `mtc quantize` and `mtc export --int8/--fp16`."""
    decorators = [
        click.option("--preset", type=click.Choice(["speed", "openvino", "tensorrt"]), default="speed",
                     show_default=True,
                     help="INT8 Q/DQ placement: speed (integer kernels end to end on CPU backends), "
                          "openvino (also the smaller convs: faster on OpenVINO, more error) or "
                          "tensorrt (conv inputs and weights only; the backend fuses the rest)."),
        click.option("--method", type=click.Choice(["mse", "minmax", "percentile", "entropy"]), default=None,
                     help="Activation range calibration [default: mse]."),
        click.option("--weight-rounding", type=click.Choice(["gptq", "nearest"]), default=None,
                     help="INT8 conv weights: nearest, or gptq (Hessian-aware on the calibration frames, same "
                          "speed; use with --calib on footage like yours) [default: nearest]."),
        click.option("--weight-bits", type=click.Choice(["auto", "8", "7"]), default="auto", show_default=True,
                     help="INT8 conv weights on 8 bits, or 7 (what CPUs without VNNI compute exactly); auto: 8, "
                          "and 7 too where this CPU's integer kernels measure unfaithful, keeping the better."),
        click.option("--calib", default="builtin", show_default=True,
                     help="Calibration frames: a video, a folder of images, or `builtin`."),
        click.option("--calib-frames", type=click.IntRange(1, 10000), default=24, show_default=True,
                     help="Calibration frames per resolution setting."),
        click.option("--check", "check_source", default=None,
                     help="Held-out frames for the gates (video or folder) [default: the built-in clip, other motion]."),
        click.option("--max-mad", type=float, help="Gate: MAD vs FP32 (x1e3) on every check clip [int8 2.0, fp16 0.1]."),
        click.option("--max-dtssd", type=float, help="Gate: dtSSD vs FP32 (x1e2) on every check clip [int8 2.0, fp16 0.1]."),
        click.option("--gates", "gates_file", type=click.Path(exists=True, dir_okay=False),
                     help="TOML file with max_mad / max_dtssd (top level or under [gates])."),
        click.option("--no-fallback", is_flag=True, help="Do not move sensitive layers back to float."),
        click.option("--keep-float", default=None, metavar="LAYER[,LAYER...]",
                     help="Layers (ONNX node names) kept in float from the start, e.g. the most sensitive ones "
                          "in report.html."),
        click.option("--float-budget", type=click.FloatRange(0, 100), default=None, metavar="PERCENT",
                     help="Share of the model's MACs that may stay in float where returning a layer to float "
                          "removes the most error per MAC (measured one layer at a time; 0 turns it off) "
                          "[default: speed 4, openvino 4, tensorrt 0]."),
        click.option("--float-budget-probes", type=click.IntRange(1, None), default=None, metavar="N",
                     help="Probe at most N layers for the float budget (one check each); when more fit it, "
                          "the ones with the largest isolated INT8 error per MAC [default: 24]."),
        click.option("--no-equalize", is_flag=True,
                     help="Do not rescale the inputs of quantized convs' channel Concats (on by default: same "
                          "function in float, lower INT8 error; see docs/quantization.md)."),
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


def build_gates(precision: str, max_mad: float | None, max_dtssd: float | None, gates_file: str | None):
    """Gates from defaults, then the TOML file, then the command-line flags (which win)."""
    from mtc.errors import MtcError
    from mtc.quant.config import Gates
    from mtc.quant.pipeline import DEFAULT_GATES

    values = {"max_mad": DEFAULT_GATES[precision].max_mad, "max_dtssd": DEFAULT_GATES[precision].max_dtssd}
    if gates_file:
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib

        try:
            data = tomllib.loads(open(gates_file, encoding="utf-8").read())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise MtcError(f"{gates_file} is not valid TOML: {exc}", hint="fix the file's syntax") from None
        table = data.get("gates", data)
        for key, value in table.items():
            if key not in values or not isinstance(value, (int, float)):
                raise MtcError(f"{gates_file}: unexpected gate {key!r} = {value!r}",
                               hint="use numeric max_mad and max_dtssd")
            values[key] = float(value)
    if max_mad is not None:
        values["max_mad"] = max_mad
    if max_dtssd is not None:
        values["max_dtssd"] = max_dtssd
    return Gates(**values)


def run_quantization(source, output, *, precision, preset, method, weight_rounding, weight_bits, calib, calib_frames,
                     check_source,
                     max_mad, max_dtssd, gates_file, no_fallback, no_equalize, keep_float, float_budget,
                     float_budget_probes, force):
    """Call the library and turn a gate failure into a one-line error after the report is written."""
    from pathlib import Path

    from mtc.errors import MtcError
    from mtc.quant.config import Fallback
    from mtc.quant.config import preset as make_preset  # "preset" is this function's CLI argument
    from mtc.quant.pipeline import DataPlan, quantize_artifact

    keep = tuple(name.strip() for name in keep_float.split(",") if name.strip()) if keep_float else None
    config = make_preset(preset, method=method, weight_rounding=weight_rounding, exclude_nodes=keep,
                         equalize_concats=False if no_equalize else None,
                         float_budget=None if float_budget is None else float_budget / 100,
                         float_budget_probes=float_budget_probes)
    if weight_bits != "auto":
        import dataclasses

        config = dataclasses.replace(config, weight_bits=int(weight_bits))
    gates = build_gates(precision, max_mad, max_dtssd, gates_file)
    data = DataPlan(calib=calib, calib_frames=calib_frames, check=check_source)
    outcome = quantize_artifact(Path(source), Path(output), precision=precision, config=config, gates=gates,
                                fallback=Fallback(enabled=not no_fallback), data=data, overwrite=force)
    worst = max(outcome.check.clips, key=lambda c: c.mad + c.dtssd)
    if not outcome.passed:
        raise MtcError(f"{precision.upper()} model fails its gates ({'; '.join(outcome.check.failures)}); "
                       f"report in {output}/report.html, no artifact written",
                       hint="relax --max-mad/--max-dtssd, allow fallback, or calibrate on frames like yours (--calib)")
    click.echo(f"artifact: {output} ({precision}, worst clip MAD {worst.mad:.3f}, dtSSD {worst.dtssd:.3f}; "
               f"report {output}/report.html)")
