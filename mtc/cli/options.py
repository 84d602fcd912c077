"""Option parsing shared by several commands.

Every flag is checked while the command line is parsed, before any work starts: a bad value
is a one-line usage error (exit 2), never a failure minutes into a run.
"""

from __future__ import annotations

import math
import re

import click


class FiniteFloat(click.ParamType):
    """A finite number within bounds. click.FloatRange lets NaN through (NaN compares false
    against both bounds), and a NaN gate or ratio would otherwise surface deep in a run."""

    name = "number"

    def __init__(self, minimum: float | None = None, maximum: float | None = None, *, min_open: bool = False):
        self.minimum, self.maximum, self.min_open = minimum, maximum, min_open

    def _range(self) -> str:
        low = "" if self.minimum is None else f"{self.minimum:g} {'<' if self.min_open else '<='} x"
        high = "" if self.maximum is None else f"x <= {self.maximum:g}"
        return (low + high[1:] if low and high else low or high) or "any finite number"

    def convert(self, value, param, ctx) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        below = self.minimum is not None and (number <= self.minimum if self.min_open else number < self.minimum)
        above = self.maximum is not None and number > self.maximum
        if not math.isfinite(number) or below or above:
            self.fail(f"{value!r} is out of range: needs {self._range()}", param, ctx)
        return number


# Flag types shared by the commands.
RATIO = FiniteFloat(0, 1, min_open=True)
THRESHOLD = FiniteFloat(0)
THREADS = click.IntRange(min=1)


def parse_resolution(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    """'1920x1080' -> (1920, 1080), within the pixel limit."""
    from mtc.errors import MtcError
    from mtc.runtime.frames import check_pixels

    if value is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", value)
    if not match or min(int(match[1]), int(match[2])) < 16:
        raise click.BadParameter(f"{value!r} is not WIDTHxHEIGHT with both sides >= 16, e.g. 1920x1080")
    size = int(match[1]), int(match[2])
    try:
        check_pixels(*size, f"resolution {value.strip()}")
    except MtcError as exc:
        raise click.BadParameter(str(exc)) from None
    return size


def _enter_pixel_limit(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    from mtc.errors import MtcError
    from mtc.runtime.frames import parse_max_pixels, pixel_limit

    if value is None:
        return
    try:
        limit = parse_max_pixels(value)
    except MtcError as exc:
        raise click.BadParameter(str(exc)) from None
    ctx.with_resource(pixel_limit(limit))  # for this command only, restored when it ends


def max_pixels_option(command):
    """`--max-pixels N`: raise (or lower) the pixel limit for this command. Eager, so that the
    resolution flags parsed after it are checked against it."""
    return click.option("--max-pixels", callback=_enter_pixel_limit, is_eager=True, expose_value=False,
                        metavar="N", help="Largest frame in pixels (e.g. 1e8 or 12000x9000) [default: 8192x8192, "
                                          "or $MTC_MAX_PIXELS].")(command)


def _frame_sources(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...] | None:
    """Each of `builtin`, a video file or a folder of images, checked to exist before the model
    loads; None when the flag was not given and has no default (the built-in check)."""
    from pathlib import Path

    from mtc.runtime.video_reader import is_video

    for source in value:
        path = Path(source)
        if source != "builtin" and not (path.is_dir() or path.is_file() and is_video(path)):
            raise click.BadParameter(f"{source!r} is not `builtin`, a video file or a folder of images")
    return value or None


PLACEMENT_PRESETS = ("speed", "openvino", "dense", "tensorrt")  # mtc.quant.config.PRESETS
EFFORT_PRESETS = ("fast", "thorough")  # how long PTQ4VM learns (mtc.quant.config.PTQ4VM_PRESETS)
PTQ4VM_FLAGS = {"ptq4vm_iterations": "--ptq4vm-iterations", "ptq4vm_batch": "--ptq4vm-batch",
                "ptq4vm_samples": "--ptq4vm-samples", "ptq4vm_qdrop": "--ptq4vm-qdrop",
                "ptq4vm_threads": "--ptq4vm-threads"}


def split_presets(presets: tuple[str, ...], method: str | None) -> tuple[str | None, str | None]:
    """--preset values -> (placement, PTQ4VM effort): at most one of each, and an effort only
    with --method ptq4vm (where it defaults to fast)."""
    placement = [p for p in presets if p in PLACEMENT_PRESETS]
    effort = [p for p in presets if p in EFFORT_PRESETS]
    if len(placement) > 1 or len(effort) > 1:
        twice = placement if len(placement) > 1 else effort
        raise click.UsageError(f"--preset {' and --preset '.join(twice)}: choose one")
    if effort and method != "ptq4vm":
        raise click.UsageError(f"--preset {effort[0]} says how long PTQ4VM learns: add --method ptq4vm")
    return (placement[0] if placement else None,
            (effort[0] if effort else "fast") if method == "ptq4vm" else None)


def check_quantization_flags(precision: str, quant_options: dict) -> None:
    """Check the flags together and read the gates file (merging the gate flags) before an
    export or a quantization starts: otherwise a bad combination or file is found only after
    the FP32 export's minutes of work."""
    method = quant_options["method"]
    if method == "ptq4vm" and precision != "int8":
        raise click.UsageError("--method ptq4vm learns INT8 quantization: use it with --int8")
    if method == "ptq4vm" and quant_options["weight_rounding"] == "gptq":
        raise click.UsageError("--method ptq4vm learns the weights' rounding itself: drop --weight-rounding gptq")
    given = [flag for key, flag in PTQ4VM_FLAGS.items() if quant_options[key] is not None]
    if given and method != "ptq4vm":
        raise click.UsageError(f"{given[0]} tunes PTQ4VM: add --method ptq4vm")
    op_types = quant_options.get("op_types")
    if (op_types or quant_options.get("quantize_attention")) and precision != "int8":
        raise click.UsageError("--op-types and --quantize-attention choose what INT8 quantizes: use them with --int8")
    if quant_options.get("keep_outgrown_int8") and precision != "int8":
        raise click.UsageError("--keep-outgrown-int8 keeps INT8 layers INT8: use it with --int8")
    if quant_options.get("check_backend") and precision != "int8":
        raise click.UsageError("--check-backend chooses whose integer kernels check INT8: use it with --int8")
    if op_types is not None:
        from mtc.quant.config import QUANTIZABLE_OPS

        unknown = [t.strip() for t in op_types.split(",") if t.strip() not in QUANTIZABLE_OPS]
        if unknown or not op_types.strip():
            raise click.UsageError(f"--op-types {op_types!r}: {', '.join(unknown) or 'empty'} is not one of "
                                   f"{', '.join(QUANTIZABLE_OPS)}")
    if precision == "bf16":
        from mtc.quant.pipeline import require_bf16_machine

        require_bf16_machine()  # before an export's minutes of work
    split_presets(quant_options["preset"], method)
    build_gates(precision, quant_options["max_mad"], quant_options["max_dtssd"], quant_options["gates_file"])


SIMULATED_MODES = ("w4a8", "w4a4")  # mtc.quant.lowbit.SIMULATED_MODES, without importing it here
# Flags that mean nothing in simulation: it quantizes every layer at the bits asked, measures
# and gates nothing, and writes no model. Each is refused rather than silently ignored.
SIMULATION_REFUSED = {"float_budget": "--float-budget", "float_budget_probes": "--float-budget-probes",
                      "max_mad": "--max-mad", "max_dtssd": "--max-dtssd", "gates_file": "--gates",
                      "check_backend": "--check-backend"}


def check_simulation_flags(precision: str | None, quant_options: dict) -> None:
    """`--simulate` is INT8's low-bit sibling: refuse --fp16/--bf16 and the flags it cannot
    honour, then check the rest as `--int8` would be checked."""
    if precision in ("fp16", "bf16"):
        raise click.UsageError(f"--simulate quantizes weights and activations to integers: drop --{precision}")
    if quant_options["weight_bits"] != "auto":
        raise click.UsageError("--simulate sets the weight bits itself (w4a8, w4a4): drop --weight-bits")
    if quant_options["weight_rounding"] == "gptq":
        raise click.UsageError("--simulate rounds weights to nearest, or learns the rounding with --method ptq4vm: "
                               "drop --weight-rounding gptq")
    given = [flag for key, flag in SIMULATION_REFUSED.items() if quant_options[key] is not None]
    given += [flag for key, flag in (("no_fallback", "--no-fallback"), ("keep_outgrown_int8", "--keep-outgrown-int8"))
              if quant_options[key]]
    if given:
        raise click.UsageError(f"{given[0]} does not apply to --simulate: it quantizes every layer, has no gates "
                               "or fallback, and writes no model")
    check_quantization_flags("int8", quant_options)


def quantization_options(command):
    """Options shared by `mtc quantize` and `mtc export --int8/--fp16`."""
    decorators = [
        click.option("--preset", type=click.Choice([*PLACEMENT_PRESETS, *EFFORT_PRESETS]), multiple=True,
                     help="INT8 Q/DQ placement: speed (integer kernels end to end on CPU backends), "
                          "openvino (also the smaller convs: faster on OpenVINO, more error), "
                          "dense (every conv, no float budget: for --method ptq4vm) or "
                          "tensorrt (conv inputs and weights only; the backend fuses the rest) "
                          "[default: the model's recipe in its manifest, speed unless the family says otherwise]. "
                          "With --method ptq4vm, also how long it learns: fast or thorough [default: fast]; "
                          "repeat to give both, e.g. --preset openvino --preset thorough."),
        click.option("--method", type=click.Choice(["mse", "minmax", "percentile", "entropy", "ptq4vm"]),
                     default=None,
                     help="Activation range calibration [default: mse]; ptq4vm: mse ranges, then the rounding, "
                          "step sizes and per-layer affines learned against FP32 (slow: minutes; resumable)."),
        click.option("--ptq4vm-iterations", type=click.IntRange(1, None), default=None, metavar="N",
                     help="PTQ4VM: optimizer steps per block [default: fast 100, thorough 300]."),
        click.option("--ptq4vm-batch", type=click.IntRange(1, None), default=None, metavar="N",
                     help="PTQ4VM: calibration samples per step [default: fast 1, thorough 2]."),
        click.option("--ptq4vm-samples", type=click.IntRange(1, None), default=None, metavar="N",
                     help="PTQ4VM: learn from N calibration samples, the smallest frames first, spread over "
                          "every --calib source [default: 24]."),
        click.option("--ptq4vm-qdrop", type=FiniteFloat(0, 1), default=None, metavar="P",
                     help="PTQ4VM: probability of keeping an activation float while a block learns [default: 0.5]."),
        click.option("--ptq4vm-threads", type=THREADS, default=None, metavar="N",
                     help="PTQ4VM: torch threads while learning [default: torch's default]."),
        click.option("--weight-rounding", type=click.Choice(["gptq", "nearest"]), default=None,
                     help="INT8 conv weights: nearest, or gptq (Hessian-aware on the calibration frames, same "
                          "speed; use with --calib on footage like yours) [default: nearest]."),
        click.option("--weight-bits", type=click.Choice(["auto", "8", "7"]), default="auto", show_default=True,
                     help="INT8 conv weights on 8 bits, or 7 (what CPUs without VNNI compute exactly); auto: 8, "
                          "and 7 too where this CPU's integer kernels measure unfaithful, keeping the better."),
        click.option("--calib", multiple=True, default=["builtin"], show_default=True, callback=_frame_sources,
                     help="Calibration frames: a video, a folder of images, or `builtin`; repeat to calibrate on "
                          "several, e.g. --calib builtin --calib my_clip.mp4."),
        click.option("--calib-frames", type=click.IntRange(1, 10000), default=24, show_default=True,
                     help="Calibration frames per source and resolution setting."),
        click.option("--check", "check_source", multiple=True, callback=_frame_sources,
                     help="Held-out frames for the gates (video or folder); repeat for several "
                          "[default: the built-in clip, other motion]."),
        click.option("--max-mad", type=THRESHOLD, help="Gate: MAD vs FP32 (x1e3) on every check clip [int8 2.0, fp16 0.1]."),
        click.option("--max-dtssd", type=THRESHOLD, help="Gate: dtSSD vs FP32 (x1e2) on every check clip [int8 2.0, fp16 0.1]."),
        click.option("--gates", "gates_file", type=click.Path(exists=True, dir_okay=False),
                     help="TOML file with max_mad / max_dtssd (top level or under [gates])."),
        click.option("--no-fallback", is_flag=True, help="Do not move sensitive layers back to float."),
        click.option("--keep-outgrown-int8", is_flag=True,
                     help="Keep layers INT8 even where the check frames drive their input past its calibrated "
                          "range (by default they stay in float, up to a quarter of the layers; the report lists "
                          "them either way)."),
        click.option("--check-backend", type=click.Choice(["onnxruntime", "openvino"]), default=None,
                     help="Whose integer kernels INT8's checks, gates, fallback and choices run on [default: the "
                          "placement's backend: openvino for openvino and dense, else onnxruntime]."),
        click.option("--keep-float", default=None, metavar="LAYER[,LAYER...]",
                     help="Layers (ONNX node names) kept in float from the start, e.g. the most sensitive ones "
                          "in report.html."),
        click.option("--float-budget", type=FiniteFloat(0, 100), default=None, metavar="PERCENT",
                     help="Share of the model's MACs that may stay in float where returning a layer to float "
                          "removes the most error per MAC (measured one layer at a time; 0 turns it off) "
                          "[default: speed 4, openvino 4, tensorrt 0]."),
        click.option("--float-budget-probes", type=click.IntRange(1, None), default=None, metavar="N",
                     help="Probe at most N layers for the float budget (one check each); when more fit it, "
                          "the ones with the largest isolated INT8 error per MAC [default: 24]."),
        click.option("--op-types", default=None, metavar="OP[,OP...]",
                     help="ONNX op types INT8 quantizes (Conv, ConvTranspose, Gemm, MatMul) [default: the "
                          "artifact's recipe: Conv; with MatMul and Gemm for transformer families]."),
        click.option("--quantize-attention", is_flag=True,
                     help="Also quantize attention's own MatMuls (scores and their weighted sum; float by default)."),
        click.option("--no-equalize", is_flag=True,
                     help="Do not rescale what quantized convs read: the inputs of their channel Concats (on by "
                          "default) and, in the dense preset, depthwise convs' input channels (same function in "
                          "float, lower INT8 error; see docs/quantization.md)."),
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
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if key not in values or not number or not math.isfinite(value) or value < 0:
                raise MtcError(f"{gates_file}: unexpected gate {key!r} = {value!r}",
                               hint="use non-negative numbers for max_mad and max_dtssd")
            values[key] = float(value)
    if max_mad is not None:
        values["max_mad"] = max_mad
    if max_dtssd is not None:
        values["max_dtssd"] = max_dtssd
    return Gates(**values)


def int8_config(source, *, preset, method, weight_rounding, keep_float, no_equalize, ptq4vm_iterations, ptq4vm_batch,
                ptq4vm_samples, ptq4vm_qdrop, ptq4vm_threads, op_types, quantize_attention, **overrides):
    """The INT8 settings the command line asks for: the placement (--preset, else the artifact's
    recipe), PTQ4VM's effort, and the flags; `overrides` go to the preset unchanged."""
    from mtc.artifact.manifest import read_manifest
    from mtc.quant.config import preset as make_preset  # "preset" is this function's CLI argument
    from mtc.quant.config import ptq4vm_preset

    keep = tuple(name.strip() for name in keep_float.split(",") if name.strip()) if keep_float else None
    placement, effort = split_presets(preset, method)
    placement = placement or read_manifest(source, verify_files=False).quantization.int8_preset
    learning = None
    if effort is not None:
        learning = ptq4vm_preset(effort, iterations=ptq4vm_iterations, batch=ptq4vm_batch, samples=ptq4vm_samples,
                                 drop=ptq4vm_qdrop, threads=ptq4vm_threads)
    return make_preset(placement, method=None if method == "ptq4vm" else method, weight_rounding=weight_rounding,
                       exclude_nodes=keep, equalize_concats=False if no_equalize else None,
                       equalize_depthwise=False if no_equalize else None, learning=learning,
                       op_types=tuple(t.strip() for t in op_types.split(",") if t.strip()) if op_types else None,
                       activation_matmuls=True if quantize_attention else None, **overrides)


def run_quantization(source, output, *, precision, preset, method, weight_rounding, weight_bits, calib, calib_frames,
                     check_source, check_backend,
                     max_mad, max_dtssd, gates_file, no_fallback, no_equalize, keep_float, float_budget,
                     float_budget_probes, force, ptq4vm_iterations, ptq4vm_batch, ptq4vm_samples, ptq4vm_qdrop,
                     ptq4vm_threads, op_types=None, quantize_attention=False, keep_outgrown_int8=False):
    """Call the library and turn a gate failure into a one-line error after the report is written."""
    from pathlib import Path

    from mtc.errors import MtcError
    from mtc.quant.config import Fallback
    from mtc.quant.data_plan import DataPlan
    from mtc.quant.pipeline import quantize_artifact

    config = int8_config(source, preset=preset, method=method, weight_rounding=weight_rounding, keep_float=keep_float,
                         no_equalize=no_equalize, ptq4vm_iterations=ptq4vm_iterations, ptq4vm_batch=ptq4vm_batch,
                         ptq4vm_samples=ptq4vm_samples, ptq4vm_qdrop=ptq4vm_qdrop, ptq4vm_threads=ptq4vm_threads,
                         op_types=op_types, quantize_attention=quantize_attention,
                         float_budget=None if float_budget is None else float_budget / 100,
                         float_budget_probes=float_budget_probes, check_backend=check_backend,
                         float_outgrown=not keep_outgrown_int8)
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
                       hint="BF16 has no fallback: keep the FP32 artifact, try --int8 or --fp16, or relax "
                            "--max-mad/--max-dtssd" if precision == "bf16" else
                       "relax --max-mad/--max-dtssd, allow fallback, or calibrate on frames like yours (--calib)")
    click.echo(f"artifact: {output} ({precision}, worst clip MAD {worst.mad:.3f}, dtSSD {worst.dtssd:.3f}; "
               f"report {output}/report.html)")
    if outcome.report.get("speed"):
        from mtc.quant.report import speed_line, speed_warning

        click.echo(speed_line(outcome.report))
        warning = speed_warning(outcome.report)
        if warning:
            click.echo(f"warning: {warning}", err=True)


def run_simulation(source, output, *, mode, force, preset, method, weight_rounding, calib, calib_frames, check_source,
                   no_equalize, keep_float, ptq4vm_iterations, ptq4vm_batch, ptq4vm_samples, ptq4vm_qdrop,
                   ptq4vm_threads, op_types=None, quantize_attention=False, **_refused):
    """Call the simulated low-bit evaluation (mtc.quant.lowbit) and print its figures."""
    from pathlib import Path

    from mtc.quant.data_plan import DataPlan
    from mtc.quant.lowbit import NOTICE, simulate_artifact

    config = int8_config(source, preset=preset, method=method, weight_rounding=weight_rounding, keep_float=keep_float,
                         no_equalize=no_equalize, ptq4vm_iterations=ptq4vm_iterations, ptq4vm_batch=ptq4vm_batch,
                         ptq4vm_samples=ptq4vm_samples, ptq4vm_qdrop=ptq4vm_qdrop, ptq4vm_threads=ptq4vm_threads,
                         op_types=op_types, quantize_attention=quantize_attention)
    data = DataPlan(calib=calib, calib_frames=calib_frames, check=check_source)
    report = simulate_artifact(Path(source), Path(output), mode=mode, config=config, data=data, overwrite=force)
    worst = max(report["metrics_vs_fp32"], key=lambda c: c["mad_x1e3"] + c["dtssd_x1e2"])
    kept = report["kept_8bit"]
    click.echo(f"simulated {mode.upper()} ({report['method']}; {len(set(kept['first']) | set(kept['last']))} of "
               f"{report['quantized_layers']} layers kept at 8 bits): worst clip MAD {worst['mad_x1e3']:.3f}, "
               f"dtSSD {worst['dtssd_x1e2']:.3f} vs FP32; report {output}/report.html")
    click.echo(NOTICE)
