"""Compile several graphs and their program (mtc.artifact.program) into one checked artifact.

The steps of `compile_artifact`, for a model that is several static graphs: each graph is
sanitized and its input and output names checked against the program; then the whole program
runs on the built-in clip twice, once on the reference graphs (PyTorch) and once on the exported
graphs (ONNX Runtime), slots and rings and all, and the alphas must agree. Each graph is also
compared alone, on the inputs the program fed it, so a drift is pinned to its graph.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx

from mtc.artifact.manifest import MANIFEST_NAME, REPORT_NAME, Manifest, Precision, QuantRecipe, file_entry
from mtc.artifact.program import Program
from mtc.backends import Backend, OrtBackend
from mtc.errors import MtcError
from mtc.export.compile import CompileJob, ParityCase, tool_versions
from mtc.export.onnx_ingest import sanitize
from mtc.fsutil import atomic_dir, atomic_write_text
from mtc.runtime.program import ProgramEngine
from mtc.runtime.progress import Stages
from mtc.runtime.session import MattingSession

log = logging.getLogger("mtc")

# Calls per graph whose inputs are kept for the graph-by-graph comparison: the first frame's
# start phases and a few ordinary frames are where every input kind first appears.
RECORDED_CALLS = 4


@dataclass(frozen=True)
class ProgramBuild:
    """What a multi-graph family builds from its weights: the graphs, their references, the program."""

    graphs: dict[str, onnx.ModelProto]
    references: dict[str, Backend]
    program: Program


@dataclass
class _Recorder:
    """A backend that keeps the inputs and outputs of its first calls."""

    backend: Backend
    calls: list = field(default_factory=list)

    def __post_init__(self):
        self.name, self.input_names, self.output_names = self.backend.name, self.backend.input_names, self.backend.output_names
        self.fresh_outputs = True

    def run(self, feeds):
        outputs = self.backend.run(feeds)
        if len(self.calls) < RECORDED_CALLS:
            self.calls.append(({k: np.array(v) for k, v in feeds.items()}, {k: np.array(v) for k, v in outputs.items()}))
        return outputs


def parity_prompt(height: int, width: int) -> np.ndarray:
    """A first-frame mask for parity runs: the middle of the picture, where the clip's subject is."""
    mask = np.zeros((height, width), np.uint8)
    mask[height // 6: height - height // 8, width // 3: width - width // 3] = 255
    return mask


def _check_names(program: Program, name: str, model: onnx.ModelProto) -> None:
    spec = program.graph(name)
    have = ([i.name for i in model.graph.input], [o.name for o in model.graph.output])
    if tuple(have[0]) != spec.inputs or tuple(have[1]) != spec.outputs:
        raise MtcError(f"graph {name} has inputs {have[0]} and outputs {have[1]}; the program declares "
                       f"{list(spec.inputs)} and {list(spec.outputs)}", hint="report this as a bug of the family's export")


def compare_programs(job: CompileJob, program: Program, references: dict[str, Backend],
                     candidates: dict[str, Backend], case: ParityCase) -> dict:
    """Run the program on both sets of graphs over the built-in clip at `case`; return the
    worst |difference| of the alpha and of each graph's outputs on the inputs it was fed."""
    from mtc.data.builtin_clip import ClipSpec, builtin_clip

    frames = builtin_clip(ClipSpec(width=case.width, height=case.height, frames=case.frames))
    recorders = {name: _Recorder(backend) for name, backend in candidates.items()}
    sessions = [MattingSession(job.io, ProgramEngine(program, job.io, graphs), scene_cut_threshold=None)
                for graphs in (references, recorders)]
    for session in sessions:
        if session.prompt_input is not None:
            session.set_prompt(parity_prompt(case.height, case.width))
    alpha, over, pixels = 0.0, 0, 0
    for frame in frames:
        ours, theirs = (s.step(frame)[s.alpha_output.name] for s in sessions)
        diff = np.abs(ours.astype(np.float64) - theirs)
        alpha = max(alpha, float(np.max(diff)))
        over += int(np.count_nonzero(~(diff <= job.tolerance)))  # NaN counts as over
        pixels += diff.size
    graphs = {}
    for name, recorder in recorders.items():
        worst = 0.0
        for feeds, outputs in recorder.calls:
            expected = references[name].run(feeds)
            worst = max(worst, *(float(np.max(np.abs(expected[k].astype(np.float64) - v))) for k, v in outputs.items()))
        graphs[name] = worst
    share = over / pixels
    passed = share <= job.outliers if job.outliers > 0 else alpha <= job.tolerance
    return {"resolution": f"{case.width}x{case.height}", "frames": case.frames, "alpha_max_abs_diff": alpha,
            "alpha_share_over_tolerance": share, "graph_max_abs_diff": graphs, "tolerance": job.tolerance,
            "outliers_allowed": job.outliers, "passed": passed}


def compile_program(build: ProgramBuild, job: CompileJob, *, output: Path, overwrite: bool = False,
                    simplify: bool = True, timings: dict[str, float] | None = None,
                    stages: Stages | None = None) -> Path:
    """Sanitize, check and write a multi-graph model as an FP32 artifact folder at `output`."""
    stages = stages or Stages()
    timings = dict(timings or {})
    program = build.program
    started = time.perf_counter()
    sanitized = {}
    with stages.stage(f"sanitizing {len(build.graphs)} graphs", total=len(build.graphs)) as advance:
        for name, model in build.graphs.items():
            sanitized[name], _ = sanitize(model, run_simplifier=simplify)
            _check_names(program, name, sanitized[name])
            advance()
    timings["sanitize_s"] = time.perf_counter() - started
    blobs = {name: model.SerializeToString() for name, model in sanitized.items()}
    if not job.cases:
        raise MtcError("a multi-graph export needs its parity cases", hint="list them on the family's variant")
    started = time.perf_counter()
    parity = []
    sizes = ", ".join(f"{c.width}x{c.height}" for c in job.cases)
    with stages.stage(f"checking the program against its reference at {sizes}", total=len(job.cases)) as advance:
        candidates = {name: OrtBackend(blob, allow_spinning=False) for name, blob in blobs.items()}
        for case in job.cases:
            result = compare_programs(job, program, build.references, candidates, case)
            log.info("parity %s: alpha max |diff| %.2e; graphs %s", result["resolution"], result["alpha_max_abs_diff"],
                     {k: f"{v:.1e}" for k, v in result["graph_max_abs_diff"].items()})
            if not result["passed"]:
                allowed = (f"{100 * result['alpha_share_over_tolerance']:.3g}% of pixels past tolerance "
                           f"{job.tolerance:.0e}, at most {100 * job.outliers:.3g}% allowed" if job.outliers > 0
                           else f"tolerance {job.tolerance:.0e}")
                raise MtcError(f"the exported graphs differ from their reference by {result['alpha_max_abs_diff']:.2e} "
                               f"on alpha at {result['resolution']} ({allowed}); per graph: "
                               f"{result['graph_max_abs_diff']}",
                               hint="report this as a bug; export with --no-simplify to skip simplification")
            parity.append(result)
            advance()
    timings["parity_s"] = time.perf_counter() - started

    with atomic_dir(output, overwrite=overwrite) as folder:
        for name, blob in blobs.items():
            (folder / program.graph(name).file).write_bytes(blob)
        manifest = Manifest(
            model=job.model, variant=job.variant, task=job.task, license=job.license,
            model_file=program.graphs[0].file, io=job.io, precision=Precision(mode="fp32"),
            files={spec.file: file_entry(folder / spec.file) for spec in program.graphs},
            check_sizes=job.check_sizes, program=program, quantization=job.quantization or QuantRecipe(),
            provenance={**job.provenance, "opset": max(o.version for m in sanitized.values() for o in m.opset_import
                                                       if o.domain in ("", "ai.onnx")),
                        "tools": tool_versions(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        )
        report = {"model": job.model, "variant": job.variant, "precision": "fp32", "parity": parity,
                  "timings": {k: round(v, 3) for k, v in timings.items()}}
        atomic_write_text(folder / REPORT_NAME, json.dumps(report, indent=2) + "\n")
        atomic_write_text(folder / MANIFEST_NAME, manifest.to_json())
    log.info("wrote %s", output)
    return output
