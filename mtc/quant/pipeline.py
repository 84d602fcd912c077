"""`mtc quantize`: an FP32 artifact in, a checked INT8 or FP16 artifact out.

calibrate (state-aware) -> ranges -> Q/DQ plan -> check against FP32 on held-out clips ->
float budget (remove-one-at-a-time sensitivity) -> per-layer sensitivity and fallback until the
gates pass -> artifact + report. A model that cannot pass its gates is not written as an
artifact: the folder gets the report and the rejected model, no manifest, and the command fails.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx

from mtc import metrics
from mtc.artifact.manifest import (
    MANIFEST_NAME,
    REPORT_NAME,
    Manifest,
    Precision,
    file_entry,
    read_manifest,
    sha256_file,
)
from mtc.backends import OrtBackend
from mtc.backends.cpu import cpu_class
from mtc.errors import MtcError
from mtc.fsutil import atomic_dir, atomic_write_text
from mtc.graph_stats import mac_shares
from mtc.quant.affine import apply_corrections, fit_layers
from mtc.quant.align import align_conv_inputs
from mtc.quant.calibration import calibration_record, record_feeds
from mtc.quant.checks import CheckResult, Counted, ReferenceAlphas, check_runner
from mtc.quant.config import Fallback, Gates, Int8Config, preset, with_recipe
from mtc.quant.coverage import COVERAGE_FRAMES, coverage_report, layers_to_keep_float, range_coverage
from mtc.quant.data_plan import DataPlan, calibration_clips, check_clips, warn_checked_on_calibration
from mtc.quant.equalize import depthwise_candidate_inputs, equalize_concat_inputs, equalize_depthwise_inputs
from mtc.quant.fp16 import (
    activation_magnitudes,
    convert_to_fp16,
    fp16_compute_nodes,
    overflow_prone_nodes,
    sensitive_units,
    shortest_passing_prefix,
)
from mtc.quant.gptq import conv_hessians, gptq_weights
from mtc.quant.image_input import exact_range, fold_input_normalization
from mtc.quant.outliers import outlier_conv_name, split_candidate_inputs, split_outlier_channels
from mtc.quant.qdq import INT8_MAX, UINT8_MAX, ActivationRange, QdqPlan, insert_qdq, plan_qdq
from mtc.quant.ranges import TensorStats, asymmetric_range, channel_ranges, collect_stats, threshold
from mtc.quant.sensitivity import (
    fallback_until_gates_pass,
    layer_sensitivity,
    most_error_per_mac,
    removal_sensitivity,
    spend_float_budget,
    worst_clip_errors,
)
from mtc.quant.speed import measure_speed
from mtc.runtime.progress import Stages, counted

log = logging.getLogger("mtc")

MODEL_FILE = "model.onnx"
REJECTED_FILE = "rejected.onnx"
HTML_REPORT = "report.html"
# PTQ4VM's checkpoints live in a folder beside the output, named after it with this suffix, so
# a run of the same command finds them; it is removed once the artifact is written.
WORK_SUFFIX = ".ptq4vm-work"
# The FP16 fallback screens ops on this many frames of each check clip, and bisects a run of
# ops whose error alone uses this share of a gate (smaller runs cost a check each).
FP16_PROBE_FRAMES = 4
FP16_VISIBLE_SHARE = 0.25
# BF16 keeps 8 significant bits, so it rounds like an 8-bit grid: INT8's gates.
DEFAULT_GATES = {"int8": Gates(max_mad=2.0, max_dtssd=2.0), "fp16": Gates(max_mad=0.1, max_dtssd=0.1),
                 "bf16": Gates(max_mad=2.0, max_dtssd=2.0)}


@dataclass
class Outcome:
    folder: Path
    passed: bool
    check: CheckResult
    report: dict


def quantize_artifact(source: Path, output: Path, *, precision: str, config: Int8Config | None = None,
                      gates: Gates | None = None, fallback: Fallback = Fallback(), data: DataPlan = DataPlan(),
                      overwrite: bool = False, stages: Stages | None = None) -> Outcome:
    """Quantize the FP32 artifact at `source` into `output` (INT8 Q/DQ or FP16; `config` is for
    INT8 only; None: the preset the artifact's quantization recipe names).

    `stages` reports each step (its name, a bar with ETA, its duration) on stderr; by default
    a `Stages()`, which writes one line per step when stderr is not a terminal.
    """
    if precision not in DEFAULT_GATES:
        raise MtcError(f"unknown precision {precision!r}", hint="use --int8, --fp16 or --bf16")
    manifest = read_manifest(source)
    if manifest.precision.mode != "fp32":
        raise MtcError(f"{source} is already {manifest.precision.mode}", hint="quantize the FP32 artifact it came from")
    if output.exists() and output.samefile(source):
        raise MtcError(f"output {output} is the artifact being quantized",
                       hint="choose another -o: --force never replaces the FP32 reference")
    if output.exists() and not overwrite:
        raise MtcError(f"{output} already exists", hint="pass --force to replace it, or choose another -o")
    warn_checked_on_calibration(data)
    gates = gates or DEFAULT_GATES[precision]
    config = config if config is not None else preset(manifest.quantization.int8_preset)
    recipe = manifest.quantization
    config = with_recipe(config, recipe.int8_op_types, recipe.int8_activation_matmuls)
    io = manifest.io
    if data.settings is None:
        data = dataclasses.replace(data, settings=tuple((c.width, c.height, c.downsample_ratio)
                                                        for c in manifest.checks()))
    if precision == "bf16":
        _require_bf16(manifest)
    if manifest.program is not None:
        return _quantize_program(source, output, manifest, precision=precision, config=config, gates=gates,
                                 fallback=fallback, data=data, overwrite=overwrite,
                                 stages=stages if stages is not None else Stages())
    fp32_path = Path(source) / manifest.model_file
    model = onnx.shape_inference.infer_shapes(onnx.load(str(fp32_path)))
    unknown = sorted(set(config.exclude_nodes) - {n.name for n in model.graph.node}) if precision == "int8" else []
    if unknown:  # before minutes of calibration
        raise MtcError(f"no layer named {', '.join(unknown)} in {fp32_path}",
                       hint="use ONNX node names as report.json lists them (e.g. its sensitivity section)")
    timings: dict[str, float] = {}
    stages = stages if stages is not None else Stages()
    learning = precision == "int8" and config.learning is not None
    work = work_folder(output) if learning else None
    if learning:
        from mtc.quant import torch_graph  # noqa: F401  (torch missing: fail before minutes of calibration)

    started = time.perf_counter()
    with stages.stage("loading calibration and check frames", counts=False):
        photos = manifest.quantization.builtin_photos
        calib = calibration_clips(io, data, photos=photos) if precision != "bf16" else []  # BF16 has nothing to fit
        checks = check_clips(io, data, photos=photos)
    with stages.stage("calibration: recording FP32 inputs", total=sum(len(c.frames) for c in calib)) as advance:
        # The frames are counted as the recorder steps through them (it takes no callback).
        feeds = record_feeds(io, fp32_path, [dataclasses.replace(c, frames=counted(c.frames, advance)) for c in calib])
    with stages.stage("FP32 reference on the check frames", total=sum(len(c.frames) for c in checks)) as advance:
        # INT8 also measures how its ranges cover the check frames (mtc.quant.coverage).
        reference = ReferenceAlphas(io, Counted(OrtBackend(fp32_path), advance), checks,
                                    record_inputs=COVERAGE_FRAMES if precision == "int8" else 0)
    timings["data_s"] = time.perf_counter() - started

    all_int8 = None
    if precision == "int8":
        candidate, all_int8, check, details = choose_weight_bits(model, feeds, reference, config, gates, fallback,
                                                                 timings, stages, work=work)
    elif precision == "bf16":
        candidate, check, details = _bf16(fp32_path, io, reference, gates, timings, stages)
    else:
        candidate, check, details = _fp16(model, feeds, reference, gates, fallback, timings, stages)

    report = {
        "model": manifest.model, "variant": manifest.variant, "precision": precision,
        "passed": check.passed, "check": check.to_dict(), "timings": {k: round(v, 2) for k, v in timings.items()},
        # Integer kernels differ between CPU classes: the checks hold for this one.
        "checked_cpu": cpu_class(),
        "calibration": calibration_record(data.calib, calib),
        **details,
    }
    report["speed"] = measure_speed(io, fp32_path, candidate, reference.clips[0], precision=precision,
                                    activation_type=config.activation_type if precision == "int8" else None,
                                    all_int8=all_int8, stages=stages)
    with stages.stage("writing the report" + (" and artifact" if check.passed else ""), counts=False):
        _write(output, source, manifest, candidate, check, report, precision, config, len(feeds), overwrite)
    if work is not None and check.passed:
        shutil.rmtree(work, ignore_errors=True)
    elif work is not None:
        log.info("PTQ4VM's checkpoints stay in %s: the same command (e.g. with other gates) resumes from them", work)
    return Outcome(output, check.passed, check, report)


def _quantize_program(source: Path, output: Path, manifest: Manifest, *, precision: str, config: Int8Config, gates,
                      fallback: Fallback, data: DataPlan, overwrite: bool, stages: Stages) -> Outcome:
    """A multi-graph artifact, graph by graph through the steps below (mtc.quant.program)."""
    from mtc.quant.program import quantize_program

    if precision == "int8" and config.learning is not None:
        raise MtcError("learned INT8 (--method ptq4vm) works on single-graph artifacts only",
                       hint="drop --method ptq4vm: multi-graph artifacts use the calibrated presets")
    with stages.stage("loading calibration and check frames", counts=False):
        photos = manifest.quantization.builtin_photos
        calib, checks = calibration_clips(manifest.io, data, photos=photos), check_clips(manifest.io, data, photos=photos)

    def graph_step(model, feeds, reference, timings):
        if precision == "fp16":
            return _fp16(model, feeds, reference, gates, fallback, timings, stages)
        candidate, _, check, details = choose_weight_bits(model, feeds, reference, config, gates, fallback, timings,
                                                          stages)
        return candidate, check, details

    passed, check, report = quantize_program(source, output, manifest, precision=precision, gates=gates,
                                             fallback=fallback, calib=calib, checks=checks, overwrite=overwrite,
                                             stages=stages, graph_step=graph_step, sources=data.calib)
    return Outcome(output, passed, check, report)


def work_folder(output: Path) -> Path:
    """Where learned quantization into `output` keeps its checkpoints (see WORK_SUFFIX)."""
    output = Path(output)
    return output.with_name(output.name + WORK_SUFFIX)


def _checking(stages: Stages, name: str, reference: ReferenceAlphas, candidate, gates: Gates) -> CheckResult:
    """`reference.check(candidate, gates)` as a stage with a bar over the check frames."""
    with stages.stage(name, total=sum(len(c.frames) for c in reference.clips)) as advance:
        return reference.check(Counted(candidate, advance), gates)


# Integer kernels that differ from their own float simulation by more than this share of what
# quantization itself costs are not computing the Q/DQ graph faithfully. Exact kernels still
# differ, by up to about that much: they sum in another order than the simulation, and a deep
# INT8 graph carries the few roundings that flips into another draw of its rounding noise
# (benchmarks/bench_rounding_noise.py). Saturating kernels (AVX2 without VNNI) differ by several
# times it (docs/quantization.md).
KERNEL_ERROR_SHARE = 1.0


def kernel_fidelity(candidate: onnx.ModelProto, reference: ReferenceAlphas, stages: Stages, *,
                    backend: str = "onnxruntime") -> dict:
    """How `backend`'s integer kernels on this CPU compare with an exact float simulation of the
    same Q/DQ graph (ONNX Runtime with graph optimizations off runs DequantizeLinear into float
    convs), on the first check clip; with the simulation's own error against FP32 for scale.
    Tells a CPU class (or backend) problem from a quantization problem."""
    probe = reference.head(clips=1, frames=12)
    clip, fp32 = probe.clips[0], probe.alphas[0]
    with stages.stage(f"integer kernels vs their float simulation ({backend})", total=2 * len(clip.frames)) as advance:
        kernels = probe.run(Counted(check_runner(backend, reference.io)(candidate), advance), clip)
        simulated = probe.run(Counted(OrtBackend(candidate.SerializeToString(), optimization="none"), advance), clip)
    return {"cpu": cpu_class(), "backend": backend, "clip": clip.name,
            "mad": round(metrics.mad(kernels, simulated), 4), "dtssd": round(metrics.dtssd(kernels, simulated), 4),
            "simulation_vs_fp32_mad": round(metrics.mad(simulated, fp32), 4),
            "simulation_vs_fp32_dtssd": round(metrics.dtssd(simulated, fp32), 4)}


def kernels_unfaithful(fidelity: dict) -> bool:
    return fidelity["mad"] > KERNEL_ERROR_SHARE * max(fidelity["simulation_vs_fp32_mad"], 1e-3)


def choose_weight_bits(model, feeds, reference, config: Int8Config, gates: Gates, fallback: Fallback, timings,
                       stages: Stages, *, work: Path | None = None):
    """The INT8 model on `config.weight_bits`; with None, on 8 bits, unless this CPU's integer
    kernels measure unfaithful to the graph (see `kernel_fidelity`): then on 7 bits too, keeping
    whichever checks better against FP32 on this CPU. `work`: the folder for learned
    quantization's checkpoints."""
    calibrated = calibrate_int8(model, feeds, reference, config, timings, stages)
    if config.learning is not None and config.weight_bits is None:
        return _learned_weight_bits(calibrated, feeds, reference, config, gates, fallback, timings, stages, work=work)
    bits = config.weight_bits or 8
    result = _int8(calibrated, feeds, reference, dataclasses.replace(config, weight_bits=bits), gates, fallback,
                   timings, stages, work=work)
    fidelity = kernel_fidelity(result[0], reference, stages, backend=config.check_backend)
    result[3]["int8"]["kernels_vs_simulation"] = fidelity
    if config.weight_bits is not None or not kernels_unfaithful(fidelity):
        return result
    log.warning("%s's integer kernels on this CPU differ from the graph's float simulation by MAD %.2f (the "
                "quantization itself costs %.2f): trying 7-bit weights, which such kernels compute exactly",
                config.check_backend, fidelity["mad"], fidelity["simulation_vs_fp32_mad"])
    seven = _int8(calibrated, feeds, reference, dataclasses.replace(config, weight_bits=7), gates, fallback,
                  timings, stages, work=work)
    seven[3]["int8"]["kernels_vs_simulation"] = kernel_fidelity(seven[0], reference, stages,
                                                                backend=config.check_backend)
    ranked = sorted((result, seven), key=lambda r: (not r[2].passed, r[2].score))
    chosen = ranked[0]
    chosen[3]["int8"]["weight_bits_choice"] = {
        "reason": "integer kernels unfaithful to the float simulation on this CPU",
        "candidates": {str(r[3]["int8"]["weight_bits"]): {"passed": r[2].passed, "score": round(r[2].score, 4)}
                       for r in (result, seven)},
        "chosen": chosen[3]["int8"]["weight_bits"]}
    return chosen


def _learned_weight_bits(calibrated: Calibrated, feeds, reference, config: Int8Config, gates: Gates,
                         fallback: Fallback, timings, stages: Stages, *, work: Path | None):
    """Learned INT8 with its weight bits decided before it learns, so it learns once: learning
    is the longest step, and learning on both widths to keep the better would double it. The
    kernels are probed on the calibrated plan with 8-bit nearest-rounded weights; where they
    measure unfaithful to its float simulation, the weights take 7 bits."""
    probe: dict = {}

    def bits_for(quantized: onnx.ModelProto) -> int:
        probe.update(kernel_fidelity(quantized, reference, stages, backend=config.check_backend))
        return 7 if kernels_unfaithful(probe) else 8

    result = _int8(calibrated, feeds, reference, config, gates, fallback, timings, stages, work=work,
                   bits_for=bits_for)
    details = result[3]["int8"]
    details["kernels_vs_simulation"] = kernel_fidelity(result[0], reference, stages, backend=config.check_backend)
    if details["weight_bits"] == 7:
        log.warning("%s's integer kernels on this CPU differ from the graph's float simulation by MAD %.2f (the "
                    "quantization itself costs %.2f): learning on 7-bit weights, which such kernels compute exactly",
                    config.check_backend, probe["mad"], probe["simulation_vs_fp32_mad"])
    details["weight_bits_choice"] = {
        "reason": "integer kernels unfaithful to the float simulation on this CPU, probed before learning"
        if details["weight_bits"] == 7 else "integer kernels faithful to the float simulation, probed before learning",
        "probe": probe, "chosen": details["weight_bits"]}
    return result


@dataclass
class Rewrites:
    """What `rewrite_for_int8` changed (each list empty where it changed nothing)."""

    equalized: list = field(default_factory=list)  # concat-input scales
    splits: list = field(default_factory=list)  # outlier-channel splits
    depthwise: list = field(default_factory=list)  # depthwise-input channel scales
    image_inputs: list = field(default_factory=list)  # normalizations folded into the convs reading them

    def __bool__(self) -> bool:
        return bool(self.equalized or self.splits or self.depthwise or self.image_inputs)

    def float_convs(self) -> set[str]:
        """The convs the rewrites added that stay float (the outliers' convs)."""
        return {outlier_conv_name(split.conv) for split in self.splits}


def rewrite_for_int8(model: onnx.ModelProto, layer_names: Sequence[str], feeds, config: Int8Config, stages: Stages,
                     timings: dict | None = None) -> tuple[onnx.ModelProto, Rewrites]:
    """The rewrites `config` asks for around the planned `layer_names` before their ranges are
    calibrated, each the same float function: the normalization folded into the convs that read
    an image, then, measured on the calibration `feeds`, concat-input equalization, the
    outlier-channel split and depthwise-input equalization. The last two read disjoint tensors
    that neither changes, so one pass measures the per-channel ranges of both; concat
    equalization rescales concat outputs the split may read, so it runs before that pass.
    Seconds per pass go into `timings`."""
    timings = timings if timings is not None else {}
    done = Rewrites()
    if config.exact_image_input:
        model, done.image_inputs = fold_input_normalization(model, layer_names)
    if config.equalize_concats:
        started = time.perf_counter()
        with stages.stage("equalizing concat inputs", total=len(feeds)) as advance:
            model, done.equalized = equalize_concat_inputs(model, layer_names, feeds, progress=advance)
        timings["equalize_s"] = time.perf_counter() - started
    measured = set()
    if config.split_outlier_channels:
        measured.update(split_candidate_inputs(model, layer_names))
    if config.equalize_depthwise:
        measured.update(depthwise_candidate_inputs(model, layer_names))
    if not measured:
        return model, done
    started = time.perf_counter()
    with stages.stage("per-channel ranges of conv inputs", total=len(feeds)) as advance:
        ranges = channel_ranges(model, sorted(measured), feeds, progress=advance)
    if config.split_outlier_channels:
        model, done.splits = split_outlier_channels(model, layer_names, ranges)
    if config.equalize_depthwise:
        model, done.depthwise = equalize_depthwise_inputs(model, layer_names, ranges)
    timings["channel_rewrites_s"] = time.perf_counter() - started
    return model, done


def _coverage(model, plan, ranges, stats, reference, config: Int8Config, timings, stages: Stages) -> dict | None:
    """report.json's `range_coverage` (mtc.quant.coverage) on the check frames the reference
    recorded, with the layers to keep in float for it (`kept_float`); None where it recorded none."""
    if not reference.feeds:
        return None
    started = time.perf_counter()
    with stages.stage("range coverage: clipping on the check frames", total=len(reference.feeds)) as advance:
        measured = range_coverage(model, ranges, reference.feeds, stats=stats, activation_type=config.activation_type,
                                  progress=advance)
    readers = {c.tensor: ", ".join(plan.nodes_on(c.tensor)) for c in measured if c.outgrown}
    kept = layers_to_keep_float(measured, plan) if config.float_outgrown else []
    coverage = coverage_report(measured, readers, len(reference.feeds), kept)
    timings["coverage_s"] = time.perf_counter() - started
    outgrown = coverage["outgrown"]
    if outgrown:
        worst = outgrown[0]
        remedy = (f"{len(kept)} layers reading them stay in float (--keep-outgrown-int8: keep them INT8)" if kept
                  else "they stay INT8")
        log.warning("%d of %d INT8 inputs lose more than twice as much to clipping as to rounding on the check frames, "
                    "and as they lost to clipping on the calibration data (worst: %s's input, %.3g times its rounding "
                    "error); %s. The calibration data do not cover this footage: calibrate on footage like it too "
                    "(--calib builtin --calib CLIP)",
                    len(outgrown), coverage["tensors"], worst["read_by"] or worst["tensor"], worst["clip_to_round"],
                    remedy)
    return coverage


@dataclass(frozen=True)
class Calibrated:
    """What INT8 settles before any weight is rounded; none of it depends on the weight bits, so
    trying two widths calibrates once."""

    model: onnx.ModelProto  # rewritten for INT8 (equalized, split, aligned, folded)
    planned: QdqPlan  # every layer the placement quantizes
    ranges: dict[str, ActivationRange]
    exact: tuple[str, ...]  # tensors on an exact grid, whose step nothing learns
    coverage: dict | None  # None: not measured (mtc.quant.coverage)
    rewrites: Rewrites
    aligned: list[str]
    mac_share: dict[str, float]

    @property
    def kept_float(self) -> list[str]:
        """The planned layers kept in float because the check frames outgrow their ranges."""
        return self.coverage["kept_float"] if self.coverage else []

    @property
    def plan(self) -> QdqPlan:
        """The planned layers that stay INT8."""
        return self.planned.without(self.kept_float) if self.kept_float else self.planned


def calibrate_int8(model, feeds, reference, config: Int8Config, timings, stages: Stages) -> Calibrated:
    """Plan the Q/DQ placement, rewrite the graph for it, calibrate the activation ranges and
    measure how they cover the check frames (the layers they outgrow leave the plan)."""
    excluded = set(config.exclude_nodes)
    mac_share = {}
    if config.min_mac_share > 0 or config.float_budget > 0:
        mac_share = mac_shares(model, feeds[0])
        excluded |= {name for name, share in mac_share.items() if share < config.min_mac_share}
    plan = plan_qdq(model, op_types=config.op_types, exclude_nodes=excluded, quantize_outputs=config.quantize_outputs,
                    activation_matmuls=bool(config.activation_matmuls))
    if not plan.nodes:
        raise MtcError("nothing to quantize: the model has no eligible layers", hint="name the op types its layers have with --op-types (e.g. Conv,MatMul)")
    model, rewrites = rewrite_for_int8(model, plan.node_names, feeds, config, stages, timings)
    excluded |= rewrites.float_convs()
    aligned = []
    if config.align_channels:
        model, aligned = align_conv_inputs(model, plan.node_names)
    if rewrites or aligned:  # the graph around the planned convs changed: plan it again
        plan = plan_qdq(model, op_types=config.op_types, exclude_nodes=excluded,
                        quantize_outputs=config.quantize_outputs, activation_matmuls=bool(config.activation_matmuls))
    started = time.perf_counter()
    with stages.stage("calibration: activation ranges", total=len(feeds)) as advance:
        stats = collect_stats(model, plan.activation_tensors(), feeds, progress=advance)
    ranges, exact = activation_ranges(model, stats, config, rewrites)
    timings["calibrate_s"] = time.perf_counter() - started

    # Before any rounding is chosen or learned: what the check footage outgrows stays float, so
    # GPTQ and PTQ4VM fit the rest around it.
    coverage = _coverage(model, plan, ranges, stats, reference, config, timings, stages)
    return Calibrated(model=model, planned=plan, ranges=ranges, exact=exact, coverage=coverage, rewrites=rewrites,
                      aligned=aligned, mac_share=mac_share)


def _int8(calibrated: Calibrated, feeds, reference, config: Int8Config, gates: Gates, fallback: Fallback, timings,
          stages: Stages, *, work: Path | None = None, bits_for: Callable[[onnx.ModelProto], int] | None = None):
    """INT8 on `calibrated` as `config` says. `bits_for`, for learned quantization with its
    weight bits left open: given the calibrated plan with 8-bit nearest-rounded weights, the bits
    to learn on."""
    bits = config.weight_bits or 8
    model, planned, plan, ranges = calibrated.model, calibrated.planned, calibrated.plan, calibrated.ranges
    exact, mac_share, outgrown_layers = calibrated.exact, calibrated.mac_share, calibrated.kept_float
    rounded, rounding_gains = {}, {}
    if config.weight_rounding == "gptq":
        started = time.perf_counter()
        with stages.stage("weight rounding (GPTQ)", total=len(feeds)) as advance:
            hessians = conv_hessians(model, plan.node_names, feeds, progress=advance)
            rounded, rounding_gains = gptq_weights(model, hessians, bits=bits)
        timings["gptq_s"] = time.perf_counter() - started

    learned = None
    if config.learning is not None:
        from mtc.quant.ptq4vm import learn

        if bits_for is not None:
            bits = bits_for(insert_qdq(model, plan, ranges, activation_type=config.activation_type, weight_bits=8))
        started = time.perf_counter()
        alpha = reference.io.output_with_role("alpha")
        # The temporal loss is for video models: their alpha at t+1 depends on frame t's.
        image = reference.io.input_with_role("image") if reference.io.states else None
        checkpoint = None
        if work is not None:
            Path(work).mkdir(parents=True, exist_ok=True)
            checkpoint = Path(work) / f"blocks-w{bits}.pt"
        learned = learn(model, plan, ranges, feeds, config=config.learning, activation_type=config.activation_type,
                        weight_bits=bits, outputs=[alpha.name] if alpha is not None else None,
                        image=image.name if image is not None else None, fixed_steps=exact, checkpoint=checkpoint,
                        stages=stages)
        # the calibrated ranges stay for the layers kept float (the speed check builds them in INT8)
        ranges, rounded = {**ranges, **learned.ranges}, learned.rounded
        timings["ptq4vm_s"] = time.perf_counter() - started

    closed_form = config.affine_correction
    affordable = [n for n in plan.node_names if 0 < mac_share.get(n, 0.0) <= config.float_budget]
    fits = {}
    if closed_form or len(affordable) > config.float_budget_probes:
        started = time.perf_counter()
        with stages.stage("range fitting: per-layer INT8 error", total=len(feeds)) as advance:
            fits = fit_layers(model, plan, ranges, counted(feeds, advance), activation_type=config.activation_type,
                              weight_bits=bits,
                              rounded=rounded)
        timings["affine_s"] = time.perf_counter() - started
    corrections = fits if closed_form else {}

    run_on = check_runner(config.check_backend, reference.io)

    def run_plan(subplan):
        return run_on(build(subplan))

    def build(subplan):
        chosen = set(subplan.node_names)
        quantized = insert_qdq(model, subplan, ranges, activation_type=config.activation_type, rounded=rounded,
                               weight_bits=bits)
        return apply_corrections(quantized, {k: v for k, v in corrections.items() if k in chosen})

    started = time.perf_counter()
    all_int8 = build(plan)
    first = _checking(stages, "checking all-INT8 against FP32", reference, run_on(all_int8), gates)
    affine_choice = None
    if learned is not None and learned.corrections:
        # PTQ4VM's trained affine and the closed-form fit (or none) compete on the check clips.
        other, corrections = corrections, learned.corrections
        trained = build(plan)
        trained_check = _checking(stages, "checking all-INT8 with the trained affine against FP32", reference,
                                  run_on(trained), gates)
        baseline = "closed_form" if closed_form else "none"
        affine_choice = {name: {"passed": c.passed, "score": round(c.score, 4), **worst_clip_errors(c)}
                         for name, c in ((baseline, first), ("gac", trained_check))}
        gac_wins = (not trained_check.passed, trained_check.score) < (not first.passed, first.score)
        if gac_wins:
            all_int8, first, closed_form = trained, trained_check, False
        else:
            corrections = other
        affine_choice["chosen"] = "gac" if gac_wins else baseline
    timings["check_s"] = time.perf_counter() - started
    # each layer's output error with only it in INT8 (and its correction, if any), over its variance
    errors = {n: fit.error if closed_form else fit.uncorrected_error for n, fit in fits.items()}
    details = {"int8": _int8_record(calibrated, config, ranges, bits=bits, closed_form=closed_form, learned=learned,
                                    affine_choice=affine_choice, rounding_gains=rounding_gains, errors=errors,
                                    all_int8_check=first)}
    final_plan, final_model, check, budget_layers = plan, all_int8, first, []
    if affordable and len(plan.nodes) > 1:
        started = time.perf_counter()
        budget_layers = _float_budget_layers(run_plan, plan, affordable, errors, mac_share, config, reference, stages,
                                             details)
        if budget_layers:
            final_plan = plan.without(budget_layers)
            final_model = build(final_plan)
            check = _checking(stages, "checking the float-budget model", reference, run_on(final_model), gates)
        timings["float_budget_s"] = time.perf_counter() - started
    fallback_layers = []
    if not check.passed and fallback.enabled:
        final_plan, check, fallback_layers = _fall_back(run_plan, final_plan, check, reference, gates, fallback,
                                                        stages, timings, details, cost=(model, feeds[0]))
        final_model = build(final_plan)
    details["int8"]["fallback_layers"] = outgrown_layers + budget_layers + fallback_layers
    details["int8"]["int8_layers"] = len(final_plan.nodes)
    # what the float layers cost in speed is measured against every planned layer in INT8
    every_layer = build(planned) if outgrown_layers else all_int8
    return final_model, (None if final_model is every_layer else every_layer), check, details


def _int8_record(calibrated: Calibrated, config: Int8Config, ranges, *, bits: int, closed_form: bool, learned,
                 affine_choice: dict | None, rounding_gains: dict, errors: dict, all_int8_check: CheckResult) -> dict:
    """report.json's `int8` section: how the INT8 model was made, up to its all-INT8 check."""
    model, planned, rewrites = calibrated.model, calibrated.planned, calibrated.rewrites
    exact_convs = {node.name for node in model.graph.node if node.input and node.input[0] in calibrated.exact}
    planned_names = set(planned.node_names)
    return {"method": config.method, "quantize_outputs": config.quantize_outputs,
            "affine_correction": closed_form, "weight_rounding": config.weight_rounding,
            "learning": learned.report if learned is not None else None, "affine_choice": affine_choice,
            "weight_bits": bits,
            # per conv: layer-output error of round-to-nearest over GPTQ's (>= 1)
            "gptq_error_ratio": {k: round(v, 2) for k, v in rounding_gains.items()},
            "min_mac_share": config.min_mac_share, "activation_type": config.activation_type,
            "op_types": list(config.op_types), "activation_matmuls": bool(config.activation_matmuls),
            "quantized_layers": len(planned.nodes),
            "quantized_by_op": dict(Counter(n.op_type for n in model.graph.node if n.name in planned_names)),
            "one_sided_tensors": sum(lo == 0 for lo, _ in ranges.values()),
            "channel_aligned_layers": calibrated.aligned,
            "isolated_layer_error": {n: round(e, 6) for n, e in errors.items()},
            "equalized_concat_inputs": [{"conv": g.conv, "input": g.tensor, "scale": round(g.scale, 4)}
                                        for g in rewrites.equalized],
            "split_outlier_channels": [{"conv": c.conv, "channels": list(c.channels),
                                        "range_before": round(c.range_before, 4),
                                        "range_after": round(c.range_after, 4)} for c in rewrites.splits],
            "equalized_depthwise_inputs": [{"conv": c.conv, "channels": c.channels, "largest_scale": round(c.largest, 4)}
                                           for c in rewrites.depthwise],
            "exact_image_inputs": [{"conv": f.conv, "image": f.image, "padded": f.padded,
                                    "exact_grid": f.conv in exact_convs} for f in rewrites.image_inputs],
            "range_coverage": calibrated.coverage,
            "all_int8_check": all_int8_check.to_dict()}


def _float_budget_layers(run_plan, plan: QdqPlan, affordable: list[str], errors: dict, mac_share: dict,
                         config: Int8Config, reference, stages: Stages, details: dict) -> list[str]:
    """The layers that the float budget returns to float: of those it can afford, the ones with
    the most INT8 error per MAC are probed (each returned to float alone) and spent on. Records
    the probe in `details`."""
    probed = most_error_per_mac(affordable, errors, mac_share)[:config.float_budget_probes]
    if len(probed) < len(affordable):
        log.info("float budget: %d layers fit it; probing the %d with the most INT8 error per MAC",
                 len(affordable), len(probed))
    probe = reference.head(clips=len(reference.clips), frames=12)  # every setting: HD has its own weak spots
    with stages.stage("float budget: probing layers", total=len(probed) + 1) as advance:
        baseline, removal = removal_sensitivity(run_plan, plan, probe, probed, progress=advance)
    budget_layers = spend_float_budget(baseline, removal, mac_share, config.float_budget)
    details["removal_sensitivity"] = {"all_int8": baseline, "layers": removal}
    details["int8"]["float_budget"] = {
        "budget_mac_share": config.float_budget, "layers": budget_layers, "fitting_layers": len(affordable),
        "probed_layers": len(probed), "mac_share": round(sum(mac_share.get(n, 0.0) for n in budget_layers), 4)}
    return budget_layers


def _fall_back(run_plan, plan: QdqPlan, check: CheckResult, reference, gates: Gates, fallback: Fallback,
               stages: Stages, timings, details: dict, *, cost: tuple[onnx.ModelProto, dict]
               ) -> tuple[QdqPlan, CheckResult, list[str]]:
    """`plan` with layers returned to float, the most sensitive per MAC first, else the most
    sensitive, until the gates pass (or the fallback's share runs out): the plan, its check and
    the layers. `cost`: the float graph the plan quantizes and a feed, to weigh its layers by
    MACs. Records the search in `details`."""
    log.info("INT8 misses the gates (%s): measuring per-layer sensitivity", "; ".join(check.failures))
    started = time.perf_counter()
    probe = reference.head(clips=1, frames=12)  # one layer at a time: keep the probe short
    with stages.stage("layer sensitivity, one at a time", total=len(plan.nodes)) as advance:
        sensitivity = layer_sensitivity(run_plan, plan, probe, progress=advance)
    timings["sensitivity_s"] = time.perf_counter() - started
    try:
        mac_share = mac_shares(*cost)
    except MtcError as exc:  # ONNX Runtime cannot size the graph: rank by error alone
        log.debug("fallback ranks by error alone: %s", exc)
        mac_share = None
    started = time.perf_counter()
    # The search builds one candidate per attempt; how many it needs is not known up front.
    with stages.stage("fallback search until gates pass") as advance:
        result = fallback_until_gates_pass(lambda subplan: _then(run_plan(subplan), advance), plan, reference,
                                           gates, sensitivity, mac_share=mac_share, max_fraction=fallback.max_fraction)
    timings["fallback_s"] = time.perf_counter() - started
    details["sensitivity"] = sensitivity
    details["fallback_steps"] = result.steps
    details["int8"]["fallback_order"] = result.order
    if result.mac_share is not None:
        details["int8"]["fallback_mac_share"] = result.mac_share
    return result.plan, result.check, result.fallback_nodes


def _then(value, advance):
    """`value`, after calling `advance()`."""
    advance()
    return value


def activation_ranges(model: onnx.ModelProto, stats: dict[str, TensorStats], config: Int8Config,
                      rewrites: Rewrites) -> tuple[dict[str, ActivationRange], tuple[str, ...]]:
    """Each tensor's INT8 range from its calibration `stats` (`activation_range`), except a
    folded image input (`rewrites.image_inputs`) whose values are those of a [0, 1] image: that
    one gets the 8-bit grid itself (`exact_range`). Returns the ranges and the tensors on that
    grid, whose step sizes learning must leave alone."""
    ranges = {name: activation_range(s, config) for name, s in stats.items()}
    folded = {fold.conv for fold in rewrites.image_inputs}
    exact = []
    for node in model.graph.node:  # the conv's input now: channel alignment may have padded it
        if node.name in folded and node.input[0] in stats:
            value_range = exact_range(stats[node.input[0]].minimum, stats[node.input[0]].maximum)
            if value_range is not None:
                ranges[node.input[0]] = value_range
                exact.append(node.input[0])
    return ranges, tuple(exact)


def activation_range(stats: TensorStats, config: Int8Config) -> ActivationRange:
    """int8 (TensorRT): symmetric; uint8 (CPU backends): [lo, hi] with a zero point, which on the recurrent video model
    took the speed preset's HD MAD/dtSSD vs FP32 on real footage from 1.06/0.81 to 0.86/0.64
    (same speed)."""
    if config.activation_type == "uint8":
        return asymmetric_range(stats, config.method, percentile=config.percentile, levels=UINT8_MAX)
    amax = threshold(stats, config.method, percentile=config.percentile, levels=INT8_MAX)
    return -amax, amax


def _require_bf16(manifest: Manifest) -> None:
    """Refuse a BF16 artifact that cannot be made or checked here, before any work."""
    if manifest.program is not None:
        raise MtcError("BF16 artifacts are single-graph for now", hint="use --fp16 or --int8 for this artifact")
    require_bf16_machine()


def require_bf16_machine() -> None:
    """Refuse BF16 where this machine cannot check it: OpenVINO missing, or a CPU without BF16."""
    from mtc.backends.cpu import has_bf16
    from mtc.backends.registry import has_module

    if not has_module("openvino"):
        raise MtcError("a BF16 artifact is checked on OpenVINO, which is not installed",
                       hint="pip install 'mtc[openvino]', or use --fp16 / --int8")
    if not has_bf16():
        raise MtcError("this CPU has no BF16 (AVX-512 BF16 or AMX), so a BF16 artifact cannot be checked here",
                       hint="quantize on a CPU with BF16, or use --int8 / --fp16")


def _bf16(fp32_path: Path, io, reference, gates: Gates, timings, stages: Stages):
    """The FP32 graph itself, checked as OpenVINO runs it in BF16 on this CPU. Nothing is
    rewritten: OpenVINO's CPU plugin chooses which ops compute in BF16 (matrix products and
    convolutions; it keeps normalizations' statistics in FP32), so there is no per-op fallback."""
    from mtc.backends.openvino.session import OpenVinoBackend

    started = time.perf_counter()
    backend = OpenVinoBackend(fp32_path, io=io, precision="bf16", cache=False)
    check = _checking(stages, "checking OpenVINO BF16 against FP32", reference, backend, gates)
    timings["check_s"] = time.perf_counter() - started
    return onnx.load(str(fp32_path)), check, {"bf16": {"backend": backend.describe(),
                                                       "inference_precision": backend.precision}}


def _fp16(model, feeds, reference, gates: Gates, fallback: Fallback, timings, stages: Stages):
    started = time.perf_counter()
    with stages.stage("calibration: activation magnitudes", total=len(feeds)) as advance:
        magnitudes = activation_magnitudes(model, feeds, progress=advance)
    overflow = overflow_prone_nodes(model, magnitudes)
    candidate = convert_to_fp16(model, keep_fp32=overflow)
    timings["convert_s"] = time.perf_counter() - started
    started = time.perf_counter()
    check = _checking(stages, "checking FP16 against FP32", reference, OrtBackend(candidate.SerializeToString()), gates)
    timings["check_s"] = time.perf_counter() - started
    peak = max((m for m in magnitudes.values() if np.isfinite(m)), default=0.0)
    details = {"fp16": {"kept_fp32": overflow, "overflow_prone": overflow, "sensitive_fp32": [],
                        "all_fp16_check": None, "peak_activation": peak}}
    if check.passed or not fallback.enabled:
        return candidate, check, details

    log.info("FP16 misses the gates (%s): searching the ops to keep in FP32 by sensitivity", "; ".join(check.failures))
    started = time.perf_counter()
    order = fp16_compute_nodes(model, overflow)
    probe = reference.head(clips=len(reference.clips), frames=FP16_PROBE_FRAMES)

    def isolated_error(run: list[str]) -> float:
        advance()
        only = set(run)
        trial = convert_to_fp16(model, keep_fp32=overflow + [n for n in order if n not in only])
        return gate_share(probe.check(OrtBackend(trial.SerializeToString()), gates, with_grad=False))

    with stages.stage("fallback: FP16 sensitivity of the graph's ops") as advance:
        units = sensitive_units(order, isolated_error, visible=FP16_VISIBLE_SHARE)
    steps, passing = [], {}  # passing: units kept -> (model, its check), so the winner is not redone

    def passes(kept: list[tuple[list[str], float]]) -> bool:
        advance()
        ops = [op for run, _ in kept for op in run]
        trial = convert_to_fp16(model, keep_fp32=overflow + ops)
        result = reference.check(OrtBackend(trial.SerializeToString()), gates)
        if result.passed:
            passing[len(kept)] = trial, result, ops
        steps.append({"float_layers": len(ops), **worst_clip_errors(result), "passed": result.passed})
        log.info("FP16 fallback: %d most sensitive ops in FP32 -> worst MAD %.3f (%s)", len(ops), steps[-1]["mad"],
                 "pass" if result.passed else "fail")
        return result.passed

    limit = max(1, int(len(order) * fallback.max_fraction))
    with stages.stage("fallback search: fewest sensitive ops in FP32") as advance:
        # Bounded by units, then by ops below: a few whole runs may hold more ops than allowed.
        kept = shortest_passing_prefix(units, passes, limit=len(units))
    timings["fallback_s"] = time.perf_counter() - started
    details["fallback_steps"] = steps
    details["fp16"]["all_fp16_check"] = check.to_dict()
    details["fp16"]["sensitivity"] = [{"ops": run, "gate_share": round(error, 4)} for run, error in units
                                      if error >= FP16_VISIBLE_SHARE]
    if kept is None or len(passing[len(kept)][2]) > limit:
        return candidate, check, details
    final, final_check, ops = passing[len(kept)]
    details["fp16"]["sensitive_fp32"] = ops
    details["fp16"]["kept_fp32"] = overflow + ops
    return final, final_check, details


def gate_share(result: CheckResult) -> float:
    """How much of its gates the worst clip uses (1.0: exactly at a gate; NaN/Inf: infinite)."""
    if any(c.nonfinite_frames for c in result.clips):
        return float("inf")
    shares = [0.0]
    for clip in result.clips:
        if result.gates.max_mad:
            shares.append(clip.mad / result.gates.max_mad)
        if result.gates.max_dtssd:
            shares.append(clip.dtssd / result.gates.max_dtssd)
    return max(shares)


def _write(output: Path, source: Path, manifest: Manifest, candidate: onnx.ModelProto, check: CheckResult, report: dict,
           precision: str, config: Int8Config, samples: int, overwrite: bool) -> None:
    from mtc.quant.report import render_html

    with atomic_dir(output, overwrite=overwrite) as folder:
        atomic_write_text(folder / REPORT_NAME, json.dumps(report, indent=2) + "\n")
        atomic_write_text(folder / HTML_REPORT, render_html(report, check))
        if not check.passed:
            onnx.save(candidate, str(folder / REJECTED_FILE))
            return
        onnx.save(candidate, str(folder / MODEL_FILE))
        excluded = tuple(report.get("int8", {}).get("fallback_layers", ())) + tuple(
            report.get("fp16", {}).get("kept_fp32", ()))
        quantized = dataclasses.replace(
            manifest, model_file=MODEL_FILE,
            precision=Precision(mode=precision, calibration=config.method if precision == "int8" else None,
                                samples=samples, excluded_nodes=excluded,
                                activation_type=config.activation_type if precision == "int8" else None,
                                checked_cpu=cpu_class(),
                                learning="ptq4vm" if precision == "int8" and config.learning is not None else None),
            files={MODEL_FILE: file_entry(folder / MODEL_FILE)},
            provenance={**manifest.provenance, "quantized_from": str(Path(source).resolve()),
                        "reference_artifact": str(Path(source).resolve()),
                        "reference_sha256": sha256_file(Path(source) / manifest.model_file),
                        "gates": {"max_mad": check.gates.max_mad, "max_dtssd": check.gates.max_dtssd, "passed": True},
                        "created": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        )
        atomic_write_text(folder / MANIFEST_NAME, quantized.to_json())
