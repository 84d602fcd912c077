"""`mtc export` of a registered model: weights -> checked FP32 ONNX -> artifact folder.

Each stage is a plain function; `export_model` chains them and writes the folder atomically,
so an interrupted or failed export never leaves something that looks like an artifact.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import onnx

import mtc
from mtc.errors import MtcError
from mtc.export.onnx_ingest import SanitizeLog, sanitize
from mtc.export.parity import ParityResult, compare_on_frames
from mtc.fsutil import atomic_dir, atomic_write_text
from mtc.artifact.manifest import (
    MANIFEST_NAME,
    REPORT_NAME,
    Manifest,
    ModelIO,
    Precision,
    TensorSpec,
    default_check_sizes,
    file_entry,
    sha256_file,
)
from mtc.artifact.profiles import state_shapes
from mtc.backends import Backend, OrtBackend
from mtc.backends.onnxruntime.session import probe_state_shapes
from mtc.models.registry import ModelSpec, VariantSpec, get_model
from mtc.weights import fetch_weights

log = logging.getLogger("mtc")

MODEL_FILE = "model.onnx"


@dataclass(frozen=True)
class ParityCase:
    """A resolution (and fixed ratio, for downsample models) that the export is checked at."""

    width: int
    height: int
    frames: int
    downsample_ratio: float | None = None


def default_output_dir(spec: ModelSpec, variant: VariantSpec, precision: str = "fp32") -> Path:
    return Path("artifacts") / f"{spec.name}-{variant.name}-{precision}"


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
                        tolerance: float = 1e-5) -> list[ParityResult]:
    """Compare two backends on the built-in clip at each case; raise if any output drifts."""
    from calib_data.builtin_clip import ClipSpec, builtin_clip

    results = []
    for case in cases:
        frames = builtin_clip(ClipSpec(width=case.width, height=case.height, frames=case.frames))
        # Background-plate models: any scene-like picture of the frame size will do for a
        # parity check; the mirrored first frame differs from every frame where the subject is.
        background = frames[0][:, ::-1].copy() if io.input_with_role("background") is not None else None
        result = compare_on_frames(io, ref_backend, cand_backend, list(frames),
                                   downsample_ratio=case.downsample_ratio, tolerance=tolerance,
                                   background=background)
        log.info("parity %dx%d ratio %s: max |diff| %.2e", case.width, case.height, result.downsample_ratio, result.worst)
        if not result.passed:
            raise MtcError(
                f"exported model differs from its reference by {result.worst:.2e} at {case.width}x{case.height} "
                f"(tolerance {tolerance:.0e})",
                hint="report this as a bug with the model file; export with --no-simplify to skip simplification",
            )
        results.append(result)
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


def export_model(name: str, *, variant: str | None = None, output: Path | None = None,
                 weights_path: Path | None = None, offline: bool | None = None, overwrite: bool = False,
                 simplify: bool = True, tolerance: float | None = None, alpha_only: bool = False) -> Path:
    """Export a registered model to an FP32 artifact folder and return its path.

    alpha_only: drop the foreground output (VariantSpec.alpha_only) where the model has one.
    """
    spec = get_model(name)
    var = spec.variant(variant)
    if alpha_only:
        var = var.alpha_only()
    output = Path(output) if output else default_output_dir(spec, var)
    if output.exists() and not overwrite:
        raise MtcError(f"{output} already exists", hint="pass --force to replace it, or choose another -o")
    timings: dict[str, float] = {}

    started = time.perf_counter()
    weights = fetch_weights(var.weights, weights_path=weights_path, offline=offline)
    timings["fetch_s"] = time.perf_counter() - started

    started = time.perf_counter()
    original = var.build_onnx(weights)
    sanitized, sanitize_log = sanitize(original, run_simplifier=simplify)
    rewrites = []
    for rewrite in var.rewrites:
        sanitized, applied = rewrite(sanitized)
        if applied:
            rewrites.append(rewrite.__name__)
    timings["sanitize_s"] = time.perf_counter() - started
    io = io_from_graph(var.io, sanitized)
    model_bytes = sanitized.SerializeToString()

    started = time.perf_counter()
    reference = var.build_reference(weights) if var.build_reference else OrtBackend(original.SerializeToString())
    cases = tuple(ParityCase(*case) for case in var.parity_cases) or tuple(
        ParityCase(c.width, c.height, 4, c.downsample_ratio) for c in default_check_sizes(io))
    tolerance = var.parity_tolerance if tolerance is None else tolerance
    # No spinning: ORT's idle threads would steal the cores a PyTorch reference runs on in between.
    parity = check_export_parity(io, reference, OrtBackend(model_bytes, allow_spinning=False), cases, tolerance=tolerance)
    timings["parity_s"] = time.perf_counter() - started
    check_state_strides(io, model_bytes, cases[0])

    with atomic_dir(output, overwrite=overwrite) as folder:
        (folder / MODEL_FILE).write_bytes(model_bytes)
        manifest = Manifest(
            model=spec.name, variant=var.name, task=spec.task, license=spec.license, model_file=MODEL_FILE, io=io,
            precision=Precision(mode="fp32"),
            files={MODEL_FILE: file_entry(folder / MODEL_FILE)},
            check_sizes=var.check_sizes,
            provenance={
                "exporter": var.exporter,
                "opset": sanitize_log.opset,
                "source_file": var.weights.filename,
                "source_sha256": sha256_file(weights),
                "tools": tool_versions(),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            },
        )
        report = export_report(spec, var, sanitize_log, parity, timings)
        report["rewrites"] = rewrites
        atomic_write_text(folder / REPORT_NAME, json.dumps(report, indent=2) + "\n")
        # The manifest goes last: a folder without it is never mistaken for an artifact.
        atomic_write_text(folder / MANIFEST_NAME, manifest.to_json())
    log.info("wrote %s", output)
    return output


def check_state_strides(io: ModelIO, model: bytes | Path, case: ParityCase) -> None:
    """Prove the declared state strides on the exported graph, so engines sized from the
    manifest alone fit the states the model really produces."""
    if not io.states or any(pair.stride is None for pair in io.states):
        return
    ratio = case.downsample_ratio
    if io.downsample is not None and ratio is None:
        ratio = io.downsample.ratio_for(case.height, case.width)
    probed = probe_state_shapes(model, io, case.height, case.width, ratio)
    declared = state_shapes(io, case.height, case.width, ratio)
    for name, shape in probed.items():
        if tuple(shape) != declared[name]:
            raise MtcError(f"state {name} is {tuple(shape)} in the exported graph at {case.width}x{case.height}, "
                           f"but its declared stride gives {declared[name]}",
                           hint="fix the stride in the model's StatePair")


def export_report(spec: ModelSpec, var: VariantSpec, sanitize_log: SanitizeLog, parity: list[ParityResult],
                  timings: dict[str, float]) -> dict:
    return {
        "model": spec.name,
        "variant": var.name,
        "precision": "fp32",
        "sanitize": dataclasses.asdict(sanitize_log),
        "parity": [p.to_dict() for p in parity],
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
