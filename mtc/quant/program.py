"""FP16 and INT8 for multi-graph artifacts: each graph is quantized by the single-graph steps,
checked as part of the whole program.

Graph by graph, in the program's order: the graph's calibration inputs are what the FP32
program feeds it on the calibration clips; its candidates (the FP16 conversion with its
overflow guard and sensitivity fallback, or the INT8 placements and their fallback) are
checked by running the whole program, the graph's candidate in place of the FP32 graph and the
graphs already done in their new precision, against the FP32 program's alphas. A graph that
cannot meet the gates stays FP32 and the report says so; the report names the precision of
each graph.
"""

from __future__ import annotations

import dataclasses
import html
import json
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from mtc.artifact.manifest import MANIFEST_NAME, REPORT_NAME, Manifest, Precision, file_entry, member_path
from mtc.artifact.program import Program
from mtc.backends import Backend, OrtBackend
from mtc.backends.cpu import cpu_class
from mtc.errors import MtcError
from mtc.fsutil import atomic_dir, atomic_write_text
from mtc.quant.calibration import Clip, RecordingBackend, calibration_record
from mtc.quant.checks import CheckResult, ReferenceAlphas, run_alphas
from mtc.quant.pipeline import HTML_REPORT
from mtc.quant.report import render_html
from mtc.runtime.program import ProgramEngine
from mtc.runtime.progress import Stages

log = logging.getLogger("mtc")


class GraphInProgram(ReferenceAlphas):
    """The FP32 program's alphas, checking a candidate for one graph inside the whole program:
    what the single-graph quantizer's `reference.check(candidate)` needs, for a program."""

    def __init__(self, reference: ReferenceAlphas, program: Program, graphs: dict[str, Backend], name: str):
        super().__init__(reference.io, None, reference.clips, reference.alphas)
        self.program, self.graphs, self.name = program, graphs, name

    def run(self, candidate: Backend, clip: Clip) -> np.ndarray:
        return super().run(ProgramEngine(self.program, self.io, {**self.graphs, self.name: candidate}), clip)

    def head(self, *, clips: int, frames: int) -> GraphInProgram:
        return GraphInProgram(super().head(clips=clips, frames=frames), self.program, self.graphs, self.name)


def _load_graphs(source: Path, program: Program) -> dict[str, onnx.ModelProto]:
    return {spec.name: onnx.shape_inference.infer_shapes(onnx.load(str(member_path(source, spec.file))))
            for spec in program.graphs}


def quantize_program(source: Path, output: Path, manifest: Manifest, *, precision: str, gates, fallback,
                     calib: list[Clip], checks: list[Clip], overwrite: bool, stages: Stages,
                     graph_step, sources: Sequence[str | Path]) -> tuple[bool, CheckResult, dict]:
    """Quantize each graph of the program artifact at `source` (see the module docstring) and write
    `output` (or only its report, when the whole misses the gates). `sources` names what the
    calibration clips came from, for the report.

    `graph_step(model, feeds, reference, timings) -> (candidate, check, details)` is the
    single-graph quantizer (FP16 conversion, or INT8 placement) for one graph.
    Returns (passed, the whole program's check, the report).
    """
    program = manifest.program
    models = _load_graphs(source, program)
    wanted = manifest.quantization.int8_graphs if precision == "int8" else ()
    unknown = sorted(set(wanted) - set(models))
    if unknown:
        raise MtcError(f"the quantization recipe names graphs the program lacks: {unknown}",
                       hint="the artifact is inconsistent; re-export it")
    targets = [spec.name for spec in program.graphs if not wanted or spec.name in wanted]
    fp32 = {name: OrtBackend(model.SerializeToString()) for name, model in models.items()}
    timings: dict[str, float] = {}
    started = time.perf_counter()
    with stages.stage("calibration: recording each graph's FP32 inputs", total=len(calib)) as advance:
        recorders = {name: RecordingBackend(backend) for name, backend in fp32.items()}
        for clip in calib:
            run_alphas(manifest.io, ProgramEngine(program, manifest.io, recorders), clip)
            advance()
    with stages.stage("FP32 reference on the check frames", total=len(checks)) as advance:
        reference = ReferenceAlphas(manifest.io, None, checks,
                                    [_then(run_alphas(manifest.io, ProgramEngine(program, manifest.io, fp32), c), advance)
                                     for c in checks])
    timings["data_s"] = time.perf_counter() - started

    current: dict[str, Backend] = dict(fp32)
    chosen: dict[str, onnx.ModelProto] = {}
    graphs_report = {}
    for name in targets:
        log.info("%s: graph %s", precision.upper(), name)
        harness = GraphInProgram(reference, program, {k: v for k, v in current.items() if k != name}, name)
        graph_timings: dict[str, float] = {}
        candidate, check, details = graph_step(models[name], recorders[name].feeds, harness, graph_timings)
        graphs_report[name] = {"precision": precision if check.passed else "fp32", "check": check.to_dict(),
                               "timings": {k: round(v, 2) for k, v in graph_timings.items()}, **details}
        if check.passed:
            chosen[name] = candidate
            current[name] = OrtBackend(candidate.SerializeToString())
        else:
            log.warning("%s: graph %s misses the gates (%s); it stays FP32", precision.upper(), name,
                        "; ".join(check.failures))
    with stages.stage("checking the whole program against FP32", total=len(checks)):
        final = reference.check(ProgramEngine(program, manifest.io, current), gates)
    passed = final.passed and bool(chosen)
    report = {
        "model": manifest.model, "variant": manifest.variant, "precision": precision, "passed": passed,
        "check": final.to_dict(), "checked_cpu": cpu_class(), "timings": {k: round(v, 2) for k, v in timings.items()},
        "graphs": graphs_report,
        "quantized_graphs": sorted(chosen), "fp32_graphs": sorted(set(models) - set(chosen)),
        "calibration": calibration_record(sources, calib),
    }
    _write(output, source, manifest, chosen, report, precision, passed, final, overwrite)
    return passed, final, report


def _then(value, advance):
    advance()
    return value


def render_program_html(report: dict, check: CheckResult) -> str:
    """The single-graph HTML report of the whole program's check, with a table of each graph's
    precision and its own check inside the program."""
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{graph['precision'].upper()}</td>"
        f"<td>{max(c['mad'] for c in graph['check']['clips']):.3f}</td>"
        f"<td>{max(c['dtssd'] for c in graph['check']['clips']):.3f}</td>"
        f"<td>{html.escape('; '.join(graph['check']['failures']) or 'pass')}</td></tr>"
        for name, graph in report["graphs"].items())
    table = ("<h2>Graphs</h2><p>Each graph's candidate checked inside the whole program (the graphs before it "
             "already in their new precision) against the FP32 program; a graph that misses the gates stays FP32."
             "</p><table border=1 cellpadding=4><tr><th>graph</th><th>precision</th><th>worst MAD ×1e3</th>"
             f"<th>worst dtSSD ×1e2</th><th>its check</th></tr>{rows}</table>")
    page = render_html(report, check)
    return page.replace("</body>", table + "</body>", 1)


def _write(output: Path, source: Path, manifest: Manifest, chosen: dict, report: dict, precision: str,
           passed: bool, final: CheckResult, overwrite: bool) -> None:
    with atomic_dir(output, overwrite=overwrite) as folder:
        atomic_write_text(folder / REPORT_NAME, json.dumps(report, indent=2, default=float) + "\n")
        atomic_write_text(folder / HTML_REPORT, render_program_html(report, final))
        if not passed:
            return
        files = {}
        for spec in manifest.program.graphs:
            target = folder / spec.file
            if spec.name in chosen:
                onnx.save(chosen[spec.name], str(target))
            else:
                shutil.copyfile(member_path(source, spec.file), target)
            files[spec.file] = file_entry(target)
        quantized = dataclasses.replace(
            manifest, files=files,
            precision=Precision(mode=precision, checked_cpu=report["checked_cpu"] if precision == "int8" else None),
            provenance={**manifest.provenance, "reference": str(Path(source).resolve()),
                        "quantized_graphs": report["quantized_graphs"]})
        atomic_write_text(folder / MANIFEST_NAME, quantized.to_json())
