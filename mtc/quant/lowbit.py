"""Simulated low-bit quantization (W4A8, W4A4) for evaluation: figures, never an artifact.

No CPU backend runs 4-bit kernels, and a Q/DQ INT8 graph cannot carry 4-bit activations, so
this mode quantizes the model in the torch executor (`mtc.quant.torch_graph.GraphModule` with
`mtc.quant.fake_quant`), optionally learns it with PTQ4VM's stage 1 (block reconstruction) at
those bits, and measures the simulated model against FP32 frame by frame. Everything it
reports is simulated.

As in PTQ4VM (and BRECQ before it), the first and last quantized layers stay at 8 bits
(W8A8): the first reads raw pixels, the last writes the output directly, and both are small.
They are found from the graph (`boundary_layers`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto

from mtc.errors import MtcError
from mtc.graph_edit import producers, readers_by_tensor
from mtc.quant.config import Gates, Int8Config
from mtc.quant.qdq import ActivationRange, QdqPlan, plan_qdq

if TYPE_CHECKING:
    from mtc.quant.fake_quant import FakeQuant
    from mtc.quant.pipeline import Rewrites
    from mtc.quant.reconstruct import Reconstruction, ReconstructionConfig
    from mtc.quant.torch_graph import GraphModule

log = logging.getLogger("mtc")

# mode name -> (weight bits, activation bits); w8a8 is the simulated 8-bit baseline.
SIMULATED_MODES: dict[str, tuple[int, int]] = {"w8a8": (8, 8), "w4a8": (4, 8), "w4a4": (4, 4)}
NOTICE = "no artifact: no backend runs 4-bit kernels; simulated figures only"
REPORT_FILE, HTML_FILE = "report.json", "report.html"
# Block reconstruction's checkpoints live beside the output, as `mtc quantize --method ptq4vm`'s do.
WORK_SUFFIX = ".lowbit-work"
NO_GATES = Gates(max_mad=None, max_dtssd=None)


def mode_bits(mode: str) -> tuple[int, int]:
    """(weight bits, activation bits) of a mode name such as "w4a8"."""
    if mode not in SIMULATED_MODES:
        raise MtcError(f"unknown simulated mode {mode!r}", hint=f"choose one of: {', '.join(SIMULATED_MODES)}")
    return SIMULATED_MODES[mode]


def boundary_layers(model: onnx.ModelProto, plan: QdqPlan, *, inputs: Sequence[str] | None = None,
                    outputs: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """(first, last): the quantized layers at the two ends of the graph, in node order.

    "First" are the quantized layers that read a primary input (`inputs`; None: every float
    graph input) with no quantized layer in between: following the data forward from the
    input through unquantized ops (resizes, pools, concats, arithmetic), the quantized layers
    where that stops. "Last" are the quantized layers from which a primary output (`outputs`;
    None: every float graph output) is reached without passing through another quantized
    layer: following the data backward from the output, where that stops. Only float data is
    followed: a shape, an index or a constant is not an activation path.
    """
    graph = model.graph
    quantized = set(plan.node_names)
    constants = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant"
                                                       for o in n.output}
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.value_info, *graph.output]}

    def flows(name: str) -> bool:  # unknown types are followed: better one layer too many at 8 bits
        return bool(name) and name not in constants and types.get(name, TensorProto.FLOAT) == TensorProto.FLOAT

    starts = list(inputs) if inputs is not None else [i.name for i in graph.input if flows(i.name)]
    ends = list(outputs) if outputs is not None else [o.name for o in graph.output if flows(o.name)]
    readers, writers = readers_by_tensor(graph), producers(graph)
    first, last = set(), set()
    seen, pending = set(), list(starts)
    while pending:
        tensor = pending.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        for node in readers[tensor]:
            if node.name in quantized:
                first.add(node.name)
            else:
                pending.extend(o for o in node.output if flows(o))
    seen, pending = set(), list(ends)
    while pending:
        tensor = pending.pop()
        if tensor in seen or tensor not in writers:
            continue
        seen.add(tensor)
        node = writers[tensor]
        if node.name in quantized:
            last.add(node.name)
        else:
            pending.extend(i for i in node.input if flows(i))
    order = [n.name for n in graph.node]
    return [n for n in order if n in first], [n for n in order if n in last]


@dataclass
class Simulated:
    """A fake-quantized executor at low bits, ready to run frame by frame (`SimulatedBackend`).

    Attributes:
        module: the torch executor with its quantizers attached (learned or not).
        quant: its quantizers.
        weight_bits, activation_bits: the bits of every layer but the first and last.
        first, last: the layers kept at 8 bits (W8A8), by `boundary_layers`.
        bits: (weight bits, activation bits) per quantized layer.
        reconstruction: what block reconstruction learned (None: nearest rounding, calibrated steps).
    """

    module: GraphModule
    quant: FakeQuant
    weight_bits: int
    activation_bits: int
    first: list[str]
    last: list[str]
    bits: dict[str, tuple[int, int]]
    reconstruction: Reconstruction | None = None

    @property
    def mode(self) -> str:
        return f"w{self.weight_bits}a{self.activation_bits}"

    @property
    def kept_8bit(self) -> list[str]:
        return list(dict.fromkeys([*self.first, *self.last]))


def simulate(model: onnx.ModelProto, plan: QdqPlan, ranges: Mapping[str, ActivationRange],
             calib_feeds: Sequence[Mapping[str, np.ndarray]], *, weight_bits: int, activation_bits: int,
             activation_type: str = "int8", learn: ReconstructionConfig | None = None, inputs: Sequence[str] | None = None,
             outputs: Sequence[str] | None = None, keep_8bit: Iterable[str] | None = None,
             fixed_steps: Iterable[str] = (), checkpoint: Path | None = None, block_display=None) -> Simulated:
    """`model` quantized as `plan` and `ranges` say, at `weight_bits`/`activation_bits` except
    the first and last layers (`boundary_layers` of `inputs` and `outputs`; or the layers of
    `keep_8bit` when given), which stay W8A8.

    With `learn` (a `mtc.quant.reconstruct.ReconstructionConfig`), block reconstruction learns
    the rounding and step sizes at those bits on `calib_feeds` (model inputs, recurrent state
    as the FP32 model produced it); `fixed_steps`, `checkpoint` and `block_display` are
    `reconstruct`'s.
    Without, weights round to nearest and activations use the calibrated ranges.
    """
    from mtc.quant.fake_quant import attach_fake_quant, layer_bits
    from mtc.quant.reconstruct import reconstruct
    from mtc.quant.torch_graph import GraphModule

    first, last = boundary_layers(model, plan, inputs=inputs, outputs=outputs)
    kept = list(dict.fromkeys([*first, *last])) if keep_8bit is None else list(keep_8bit)
    bits = layer_bits(plan, weight_bits=weight_bits, activation_bits=activation_bits, keep_8bit=kept)
    reconstruction = None
    if learn is not None:
        reconstruction = reconstruct(model, plan, ranges, calib_feeds, activation_type=activation_type,
                                     weight_bits=weight_bits, activation_bits=activation_bits, keep_8bit=kept,
                                     config=learn, fixed_steps=fixed_steps, checkpoint=checkpoint, restart_stale=True,
                                     block_display=block_display)
        module, quant = reconstruction.module, reconstruction.quant
    else:
        module = GraphModule(model)
        module.requires_grad_(False)
        quant = attach_fake_quant(module, model, plan, ranges, activation_type=activation_type,
                                  weight_bits=weight_bits, activation_bits=activation_bits, keep_8bit=kept)
    module.eval()
    if keep_8bit is not None:
        first, last = [n for n in first if n in kept], [n for n in last if n in kept]
    return Simulated(module, quant, weight_bits, activation_bits, first, last, bits, reconstruction)


class SimulatedBackend:
    """A fake-quantized executor behind the runtime's Backend protocol, so a `MattingSession`
    runs it frame by frame (preprocessing, recurrent state, downsample ratio) exactly as it
    runs the FP32 model: `mtc.quant.checks` then measures it like any candidate.
    `advance()`, if given, is called after each run (a progress bar)."""

    name = "torch-simulated"
    fresh_outputs = True
    compiles_per_shape = False

    def __init__(self, module, *, advance: Callable[[], None] | None = None):
        self.module, self.advance = module, advance
        self.input_names = tuple(module.input_names)
        self.output_names = tuple(module.output_names)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from mtc.quant.torch_graph import to_torch_feeds, torch

        with torch.no_grad():
            outputs = self.module(to_torch_feeds({k: np.asarray(v) for k, v in feeds.items()}))
        if self.advance is not None:
            self.advance()
        return {name: value.numpy() for name, value in outputs.items()}


@dataclass
class CalibratedPlan:
    """The model as quantized (after the rewrites of `mtc.quant.pipeline.rewrite_for_int8`),
    its plan and calibrated ranges."""

    model: onnx.ModelProto
    plan: QdqPlan
    ranges: dict[str, ActivationRange]
    rewrites: Rewrites
    exact: tuple[str, ...] = ()  # tensors on their exact grid (a folded image input): steps not learned


def dense_config(config: Int8Config) -> Int8Config:
    """The dense placement of `config`: every layer of its op types (no MAC threshold, no float
    budget), keeping its activation type, output quantization and equalization. Channel
    alignment is left out: it only shapes tensors for CPU integer kernels (exact in float)."""
    return dataclasses.replace(config, min_mac_share=0.0, float_budget=0.0, align_channels=False,
                               affine_correction=False)


def calibrated_plan(model: onnx.ModelProto, feeds: Sequence[Mapping[str, np.ndarray]], config: Int8Config, *,
                    stages=None) -> CalibratedPlan:
    """Plan `config`'s placement on `model` (op types resolved: see `with_recipe`), rewrite the
    graph around it as `config` says and calibrate its activation ranges on `feeds`, as
    `mtc quantize` does before its INT8 steps."""
    from mtc.quant.pipeline import activation_ranges, rewrite_for_int8
    from mtc.quant.ranges import collect_stats
    from mtc.runtime.progress import Stages

    stages = stages if stages is not None else Stages()

    def plan_of(graph, excluded=()):
        return plan_qdq(graph, op_types=config.op_types, exclude_nodes={*config.exclude_nodes, *excluded},
                        quantize_outputs=config.quantize_outputs, activation_matmuls=bool(config.activation_matmuls))

    plan = plan_of(model)
    if not plan.nodes:
        raise MtcError("nothing to quantize: the model has no eligible layers",
                       hint="name the op types its layers have with --op-types (e.g. Conv,MatMul)")
    model, rewrites = rewrite_for_int8(model, plan.node_names, feeds, config, stages)
    if rewrites:
        plan = plan_of(model, rewrites.float_convs())
    with stages.stage("calibration: activation ranges", total=len(feeds)) as advance:
        stats = collect_stats(model, plan.activation_tensors(), feeds, progress=advance)
    ranges, exact = activation_ranges(model, stats, config, rewrites)
    return CalibratedPlan(model, plan, ranges, rewrites, exact)


def reconstruction_config(config: Int8Config) -> ReconstructionConfig | None:
    """PTQ4VM's stage-1 settings of `config.learning` as block reconstruction takes them (None:
    no learning)."""
    from mtc.quant.reconstruct import ReconstructionConfig

    learning = config.learning
    if learning is None:
        return None
    return ReconstructionConfig(iterations=learning.iterations, batch=learning.batch,
                                max_block_layers=learning.max_block_layers, drop=learning.drop)


def learning_samples(feeds: Sequence[Mapping[str, np.ndarray]], count: int) -> list:
    """`count` of `feeds`, the smallest first, as PTQ4VM learns from them (a sample holds its
    block-boundary tensors: HD frames would take gigabytes)."""
    return sorted(feeds, key=lambda feed: sum(np.asarray(v).size for v in feed.values()))[:count]


def simulate_artifact(source: Path, output: Path, *, mode: str, config: Int8Config | None = None, data=None,
                      overwrite: bool = False, stages=None) -> dict:
    """Simulate the FP32 artifact at `source` at `mode` ("w4a8", "w4a4", or "w8a8") and write
    `output`/report.json and report.html: the simulated model against FP32 on the check clips
    `mtc quantize` uses. No model and no manifest are written (`NOTICE`).

    `config` gives the placement (made dense: `dense_config`), the range method, and with
    `learning` PTQ4VM's stage-1 settings (its stage 2 is not run here); None: the preset the
    artifact's recipe names. Returns the report.
    """
    from mtc.artifact.manifest import read_manifest
    from mtc.backends import OrtBackend
    from mtc.backends.cpu import cpu_class
    from mtc.quant.calibration import record_feeds
    from mtc.quant.checks import Counted, ReferenceAlphas
    from mtc.quant.config import preset, with_recipe
    from mtc.quant.data_plan import DataPlan, calibration_clips, check_clips, warn_checked_on_calibration
    from mtc.runtime.progress import Stages, counted

    weight_bits, activation_bits = mode_bits(mode)
    manifest = read_manifest(source)
    if manifest.precision.mode != "fp32":
        raise MtcError(f"{source} is already {manifest.precision.mode}", hint="simulate the FP32 artifact it came from")
    if manifest.program is not None:
        raise MtcError("simulated low-bit quantization works on single-graph artifacts only",
                       hint="use a single-graph FP32 artifact")
    output = Path(output)
    if output.exists() and output.samefile(source):
        raise MtcError(f"output {output} is the artifact being simulated", hint="choose another -o")
    if output.exists() and not overwrite:
        raise MtcError(f"{output} already exists", hint="pass --force to replace it, or choose another -o")
    from mtc.quant import torch_graph  # noqa: F401  (torch missing: fail before minutes of calibration)

    stages = stages if stages is not None else Stages()
    data = data if data is not None else DataPlan()
    warn_checked_on_calibration(data)
    recipe = manifest.quantization
    config = config if config is not None else preset(recipe.int8_preset)
    config = dense_config(with_recipe(config, recipe.int8_op_types, recipe.int8_activation_matmuls))
    io = manifest.io
    if data.settings is None:
        data = dataclasses.replace(data, settings=tuple((c.width, c.height, c.downsample_ratio)
                                                        for c in manifest.checks()))
    fp32_path = Path(source) / manifest.model_file
    timings = {}
    started = time.perf_counter()
    with stages.stage("loading calibration and check frames", counts=False):
        photos = recipe.builtin_photos
        calib, checks = calibration_clips(io, data, photos=photos), check_clips(io, data, photos=photos)
    with stages.stage("calibration: recording FP32 inputs", total=sum(len(c.frames) for c in calib)) as advance:
        feeds = record_feeds(io, fp32_path, [dataclasses.replace(c, frames=counted(c.frames, advance)) for c in calib])
    with stages.stage("FP32 reference on the check frames", total=sum(len(c.frames) for c in checks)) as advance:
        reference = ReferenceAlphas(io, Counted(OrtBackend(fp32_path), advance), checks)
    timings["data_s"] = time.perf_counter() - started

    started = time.perf_counter()
    model = onnx.shape_inference.infer_shapes(onnx.load(str(fp32_path)))
    calibrated = calibrated_plan(model, feeds, config, stages=stages)
    timings["calibrate_s"] = time.perf_counter() - started
    image, alpha = io.input_with_role("image"), io.output_with_role("alpha")
    learn = reconstruction_config(config)
    work = output.with_name(output.name + WORK_SUFFIX) if learn is not None else None
    started = time.perf_counter()
    simulated = _simulate_with_threads(calibrated, feeds, config, weight_bits, activation_bits, learn,
                                       inputs=[image.name] if image is not None else None,
                                       outputs=[alpha.name] if alpha is not None else None, work=work,
                                       mode=mode, stages=stages)
    timings["simulate_s"] = time.perf_counter() - started
    started = time.perf_counter()
    with stages.stage(f"checking simulated {mode.upper()} against FP32",
                      total=sum(len(c.frames) for c in checks)) as advance:
        check = reference.check(SimulatedBackend(simulated.module, advance=advance), NO_GATES)
    timings["check_s"] = time.perf_counter() - started

    report = simulation_report(manifest, simulated, calibrated, config, check, mode=mode, cpu=cpu_class(),
                               calib_frames=len(feeds), timings=timings)
    from mtc.fsutil import atomic_dir, atomic_write_text

    with stages.stage("writing the report", counts=False), atomic_dir(output, overwrite=overwrite) as folder:
        atomic_write_text(folder / REPORT_FILE, json.dumps(report, indent=2) + "\n")
        atomic_write_text(folder / HTML_FILE, render_simulation_html(report, check))
    if work is not None:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _simulate_with_threads(calibrated: CalibratedPlan, feeds, config: Int8Config, weight_bits: int,
                           activation_bits: int, learn, *, inputs, outputs, work: Path | None, mode: str,
                           stages) -> Simulated:
    """`simulate`, learning (if asked) on PTQ4VM's samples and torch threads, with a bar per block."""
    from mtc.quant.ptq4vm import BlockBars
    from mtc.quant.torch_graph import torch

    learning = config.learning
    threads = torch.get_num_threads()
    checkpoint, samples, display = None, feeds, None
    if learn is not None:
        samples = learning_samples(feeds, learning.samples)
        display = BlockBars(stages, learn.iterations, calibrated.model, samples[0])
        if work is not None:
            work.mkdir(parents=True, exist_ok=True)
            checkpoint = work / f"blocks-{mode}.pt"
        if learning.threads is not None:
            torch.set_num_threads(learning.threads)
    try:
        with (stages.stage(f"quantizing at {mode.upper()} in simulation", counts=False) if learn is None
              else contextlib.nullcontext()):
            return simulate(calibrated.model, calibrated.plan, calibrated.ranges, samples, weight_bits=weight_bits,
                            activation_bits=activation_bits, activation_type=config.activation_type, learn=learn,
                            inputs=inputs, outputs=outputs, fixed_steps=calibrated.exact, checkpoint=checkpoint,
                            block_display=display)
    finally:
        torch.set_num_threads(threads)


def simulation_report(manifest, simulated: Simulated, calibrated: CalibratedPlan, config: Int8Config, check, *,
                      mode: str, cpu: str, calib_frames: int, timings: Mapping[str, float]) -> dict:
    """report.json of a simulated run: what was simulated, how, and what it measured."""
    reconstruction = simulated.reconstruction
    blocks = None
    if reconstruction is not None:
        blocks = [{"layers": list(block.layers), "iterations": len(losses), **(outcome or {})}
                  for block, losses, outcome in zip(reconstruction.blocks, reconstruction.losses,
                                                    reconstruction.outcomes)]
    learning = config.learning
    return {
        "title": f"Simulated {mode.upper()} (fake quantization in the torch executor; not an artifact)",
        "simulated": True, "artifact_written": False, "notice": NOTICE,
        "model": manifest.model, "variant": manifest.variant, "mode": mode,
        "weight_bits": simulated.weight_bits, "activation_bits": simulated.activation_bits,
        "kept_8bit": {"rule": "first and last quantized layers stay W8A8", "first": simulated.first,
                      "last": simulated.last},
        "method": "ptq4vm" if learning is not None else config.method,
        "ranges": config.method,
        "learning": None if learning is None else {
            "stage": "block reconstruction (PTQ4VM stage 1; stage 2 not run in simulation)",
            "iterations": learning.iterations, "batch": learning.batch, "samples": min(learning.samples, calib_frames),
            "drop": learning.drop, "max_block_layers": learning.max_block_layers, "blocks": blocks},
        "placement": {"dense": True, "op_types": list(config.op_types), "activation_type": config.activation_type,
                      "quantize_outputs": config.quantize_outputs,
                      "equalized_concat_inputs": len(calibrated.rewrites.equalized),
                      "split_outlier_channels": len(calibrated.rewrites.splits),
                      "equalized_depthwise_inputs": len(calibrated.rewrites.depthwise),
                      "exact_image_inputs": len(calibrated.rewrites.image_inputs),
                      "excluded": list(config.exclude_nodes)},
        "quantized_layers": len(calibrated.plan.nodes),
        "low_bit_layers": sum(1 for b in simulated.bits.values() if b != (8, 8)),
        "simulated_cpu": cpu, "calibration_frames": calib_frames,
        "metrics_vs_fp32": [{"clip": c.name, "resolution": c.resolution, "downsample_ratio": c.downsample_ratio,
                             "mad_x1e3": c.mad, "dtssd_x1e2": c.dtssd, "nonfinite_frames": c.nonfinite_frames}
                            for c in check.clips],
        "check": check.to_dict(),
        "timings": {k: round(v, 2) for k, v in timings.items()},
    }


def render_simulation_html(report: dict, check) -> str:
    """A short page: what was simulated, the metrics per clip and per frame. No gates: this is
    an evaluation, not a candidate artifact."""
    from mtc.quant.report import diff_image, line_chart

    kept = report["kept_8bit"]
    rows = "".join(f"<tr><td>{html.escape(c.name)}</td><td>{c.resolution}</td><td>{c.downsample_ratio}</td>"
                   f"<td>{c.mad:.3f}</td><td>{c.dtssd:.3f}</td></tr>" for c in check.clips)
    sections = [
        f"<h1>{html.escape(report['model'])} / {html.escape(report['variant'])}: {html.escape(report['title'])}</h1>",
        f"<p><b>{html.escape(report['notice'])}.</b> Method: {html.escape(report['method'])}; "
        f"{report['low_bit_layers']} of {report['quantized_layers']} quantized layers at "
        f"W{report['weight_bits']}A{report['activation_bits']}; kept at 8 bits (first: "
        f"{html.escape(', '.join(kept['first']) or 'none')}; last: {html.escape(', '.join(kept['last']) or 'none')}).</p>",
        "<table border=1 cellpadding=4><tr><th>clip</th><th>size</th><th>ratio</th><th>MAD ×1e3 vs FP32</th>"
        f"<th>dtSSD ×1e2 vs FP32</th></tr>{rows}</table>",
    ]
    for c in check.clips:
        sections.append(f"<h2>{html.escape(c.name)} ({c.resolution}, ratio {c.downsample_ratio})</h2>")
        sections.append(line_chart({"MAD ×1e3": c.mad_per_frame}, title="per-frame MAD vs FP32 (simulated)",
                                   y_label="MAD"))
        sections.append(line_chart({"dtSSD ×1e2": c.dtssd_per_frame}, title="per-frame dtSSD vs FP32 (simulated)",
                                   y_label="dtSSD"))
        sections.append(f"<p>Worst frame {c.worst_frame}: |alpha − FP32 alpha| ×4</p>{diff_image(c.worst_diff)}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>mtc simulated {html.escape(report['mode'])}"
            f"</title><style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}td,th{{font-size:13px}}"
            f"</style></head><body>{chr(10).join(sections)}</body></html>\n")
