"""Compile an ONNX graph into a checked FP32 artifact folder: the steps every export shares.

Whether the graph comes from a registered family (mtc.models.export) or from a user's file
(mtc.export.byo), it goes through the same steps: sanitize, exact graph rewrites, the I/O
contract filled from the graph, parity against its reference on real frames, the declared
state strides proven on the graph, then an atomic write (the manifest last, so a folder
without it is never mistaken for an artifact).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import onnx

import mtc
from mtc.artifact.manifest import (
    MANIFEST_NAME,
    REPORT_NAME,
    CheckSize,
    Manifest,
    ModelIO,
    Precision,
    QuantRecipe,
    TensorSpec,
    default_check_sizes,
    default_quant_recipe,
    file_entry,
)
from mtc.backends import Backend, OrtBackend
from mtc.backends.onnxruntime.session import check_state_shapes
from mtc.errors import MtcError
from mtc.export.onnx_ingest import sanitize
from mtc.export.parity import FLOOR_FACTOR, ParityResult, compare_on_frames
from mtc.fsutil import atomic_dir, atomic_write_text
from mtc.runtime.progress import Stages

log = logging.getLogger("mtc")

MODEL_FILE = "model.onnx"


@dataclass(frozen=True)
class ParityCase:
    """A resolution (and fixed ratio, for downsample models) that the export is checked at."""

    width: int
    height: int
    frames: int
    downsample_ratio: float | None = None


@dataclass(frozen=True)
class CompileJob:
    """Everything one export needs besides the graph itself.

    Attributes:
        model, variant, task, license: what the manifest says the artifact is.
        io: the I/O contract (dtypes and shapes are filled from the graph).
        reference: what the exported graph is checked against; None: the graph as given, run
            by ONNX Runtime (bit-exact ingest).
        cases: where parity is checked; empty: the model's default check sizes, 4 frames each.
        tolerance: max |difference| allowed against the reference.
        outliers: multi-graph programs: the share of alpha pixels (0..1) allowed past
            `tolerance`, for models that cut a value at a hard threshold, where any two
            implementations can flip the pixels lying within float noise of the cut; 0: none
            (single graphs are held to the max |difference| alone).
        rewrites: exact graph rewrites after sanitizing, each returning (model, applied).
        check_sizes: where the quantizer will check compiled artifacts (written to the manifest).
        quantization: the family's quantization recipe; None: the defaults for the task.
        provenance: extra provenance fields (exporter, source file and hash).
    """

    model: str
    variant: str
    task: str
    license: str
    io: ModelIO
    reference: Backend | None = None
    cases: tuple[ParityCase, ...] = ()
    tolerance: float = 1e-5
    outliers: float = 0.0
    rewrites: tuple[Callable[[onnx.ModelProto], tuple[onnx.ModelProto, bool]], ...] = ()
    check_sizes: tuple[CheckSize, ...] = ()
    quantization: QuantRecipe | None = None
    provenance: dict = field(default_factory=dict)


def compile_artifact(original: onnx.ModelProto, job: CompileJob, *, output: Path, overwrite: bool = False,
                     simplify: bool = True, timings: dict[str, float] | None = None,
                     stages: Stages | None = None) -> Path:
    """Sanitize, rewrite, check and write `original` as an FP32 artifact folder at `output`."""
    if job.outliers > 0:
        raise MtcError("a single-graph export is held to its max |difference| alone: it allows no outlier pixels",
                       hint="report this as a bug of the family's variant (parity_outliers is for programs)")
    stages = stages or Stages()
    timings = dict(timings or {})
    started = time.perf_counter()
    with stages.stage("sanitizing the graph" + (" (with onnxsim)" if simplify else ""), counts=False):
        sanitized, sanitize_log = sanitize(original, run_simplifier=simplify)
        rewrites = []
        for rewrite in job.rewrites:
            sanitized, applied = rewrite(sanitized)
            if applied:
                rewrites.append(rewrite.__name__)
    timings["sanitize_s"] = time.perf_counter() - started
    io = io_from_graph(job.io, sanitized)
    model_bytes = sanitized.SerializeToString()

    started = time.perf_counter()
    reference = job.reference or OrtBackend(original.SerializeToString())
    cases = job.cases or tuple(ParityCase(c.width, c.height, 4, c.downsample_ratio) for c in default_check_sizes(io))
    sizes = ", ".join(f"{c.width}x{c.height}" for c in cases)
    with stages.stage(f"checking the export against its reference at {sizes}", total=len(cases)) as advance:
        # No spinning: ORT's idle threads would steal the cores a PyTorch reference runs on in between.
        parity = check_export_parity(io, reference, OrtBackend(model_bytes, allow_spinning=False), cases,
                                     tolerance=job.tolerance, advance=advance,
                                     floor=OrtBackend(model_bytes, allow_spinning=False, optimization="none"))
        check_state_strides(io, model_bytes, cases[0])
    timings["parity_s"] = time.perf_counter() - started

    with atomic_dir(output, overwrite=overwrite) as folder:
        (folder / MODEL_FILE).write_bytes(model_bytes)
        manifest = Manifest(
            model=job.model, variant=job.variant, task=job.task, license=job.license, model_file=MODEL_FILE, io=io,
            precision=Precision(mode="fp32"),
            files={MODEL_FILE: file_entry(folder / MODEL_FILE)},
            check_sizes=job.check_sizes,
            quantization=job.quantization or default_quant_recipe(job.task, io),
            provenance={**job.provenance, "opset": sanitize_log.opset, "tools": tool_versions(),
                        "created": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        )
        report = {
            "model": job.model,
            "variant": job.variant,
            "precision": "fp32",
            "sanitize": dataclasses.asdict(sanitize_log),
            "parity": [p.to_dict() for p in parity],
            "timings": {k: round(v, 3) for k, v in timings.items()},
            "rewrites": rewrites,
        }
        atomic_write_text(folder / REPORT_NAME, json.dumps(report, indent=2) + "\n")
        atomic_write_text(folder / MANIFEST_NAME, manifest.to_json())
    log.info("wrote %s", output)
    return output


def _dtype_name(elem_type: int) -> str:
    return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name


def io_from_graph(io: ModelIO, model: onnx.ModelProto) -> ModelIO:
    """Fill dtypes and shapes (named dims) of the spec's tensors from the sanitized graph.

    Raises:
        MtcError: a declared tensor is missing, or the graph has outputs the contract does not
            declare (nobody reads them, yet every frame would compute them; for example the
            foreground when an --alpha-only rewrite did not match the graph).
    """
    graph_values = {v.name: v for v in [*model.graph.input, *model.graph.output]}
    declared = {spec.name for spec in io.outputs}
    undeclared = [o.name for o in model.graph.output if o.name not in declared]
    if undeclared:
        raise MtcError(f"the model graph has outputs its I/O contract does not declare: {undeclared}",
                       hint="the graph rewrite that removes them did not match this model file "
                            "(e.g. --alpha-only): export without it, or report the model file as a bug")

    def fill(spec: TensorSpec) -> TensorSpec:
        value = graph_values.get(spec.name)
        if value is None:
            raise MtcError(f"the model graph has no tensor named {spec.name!r}",
                           hint="the weight file is not the model this spec describes")
        tensor = value.type.tensor_type
        shape = tuple(d.dim_param if d.dim_param else d.dim_value for d in tensor.shape.dim)
        return dataclasses.replace(spec, dtype=_dtype_name(tensor.elem_type), shape=shape)

    return dataclasses.replace(io, inputs=tuple(map(fill, io.inputs)), outputs=tuple(map(fill, io.outputs)))


def check_export_parity(io: ModelIO, ref_backend: Backend, cand_backend: Backend, cases: tuple[ParityCase, ...], *,
                        tolerance: float = 1e-5, advance: Callable[[], None] = lambda: None,
                        floor: Backend | None = None) -> list[ParityResult]:
    """Compare two backends on the built-in clip at each case; raise if any output drifts.
    `floor` runs the candidate's graph by a second implementation (`compare_on_frames`)."""
    from mtc.data.builtin_clip import ClipSpec, builtin_clip

    results = []
    for case in cases:
        frames = builtin_clip(ClipSpec(width=case.width, height=case.height, frames=case.frames))
        # Background-plate models: any scene-like picture of the frame size will do for a
        # parity check; the mirrored first frame differs from every frame where the subject is.
        background = frames[0][:, ::-1].copy() if io.input_with_role("background") is not None else None
        result = compare_on_frames(io, ref_backend, cand_backend, list(frames),
                                   downsample_ratio=case.downsample_ratio, tolerance=tolerance,
                                   background=background, floor=floor)
        log.info("parity %dx%d ratio %s: max |diff| %.2e (allowed %.1e)", case.width, case.height,
                 result.downsample_ratio, result.worst, result.allowed)
        if not result.passed:
            raise MtcError(
                f"exported model differs from its reference by {result.worst:.2e} at {case.width}x{case.height} "
                f"(allowed {result.allowed:.1e}: tolerance {tolerance:.0e}"
                + (f", or {FLOOR_FACTOR:g}x what ONNX Runtime differs from itself by" if floor is not None else "") + ")",
                hint="report this as a bug with the model file; export with --no-simplify to skip simplification",
            )
        results.append(result)
        advance()
    return results


def tool_versions() -> dict[str, str]:
    import numpy
    import onnxruntime

    versions = {"mtc": mtc.__version__, "python": platform.python_version(), "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__}
    try:
        import onnxsim

        versions["onnxsim"] = getattr(onnxsim, "__version__", "?")
    except ImportError:
        pass
    return versions


def check_state_strides(io: ModelIO, model: bytes | Path, case: ParityCase) -> None:
    """Prove the declared state strides on the exported graph, so engines sized from the
    manifest alone fit the states the model really produces."""
    if not io.states or any(pair.stride is None for pair in io.states):
        return
    ratio = case.downsample_ratio
    if io.downsample is not None and ratio is None:
        ratio = io.downsample.ratio_for(case.height, case.width)
    check_state_shapes(model, io, case.height, case.width, ratio, hint="fix the stride in the model's StatePair")
