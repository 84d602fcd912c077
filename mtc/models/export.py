"""`mtc export` of a registered model: fetch its weights, build its ONNX, compile the artifact."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

from mtc.artifact.manifest import sha256_file
from mtc.errors import MtcError
from mtc.export.byo import ContractHints, describe_contract, infer_contract, measure_state_strides
from mtc.export.compile import (  # noqa: F401  (ParityCase, io_from_graph, check_export_parity: public here too)
    MODEL_FILE,
    CompileJob,
    ParityCase,
    check_export_parity,
    compile_artifact,
    io_from_graph,
)
from mtc.models.registry import ModelSpec, VariantSpec, get_model, list_models
from mtc.runtime.progress import Stages
from mtc.weights import fetch_weights

log = logging.getLogger("mtc")


def default_output_dir(spec: ModelSpec, variant: VariantSpec, precision: str = "fp32") -> Path:
    return Path("artifacts") / f"{spec.name}-{variant.name}-{precision}"


def export_model(name: str, *, variant: str | None = None, output: Path | None = None,
                 weights_path: Path | None = None, offline: bool | None = None, overwrite: bool = False,
                 simplify: bool = True, tolerance: float | None = None, alpha_only: bool = False,
                 size: tuple[int, int] | None = None) -> Path:
    """Export a registered model to an FP32 artifact folder and return its path.

    alpha_only: drop the foreground output (VariantSpec.alpha_only) where the model has one.
    size: (height, width) to export a variant trained on many sizes at (VariantSpec.sized).
    """
    spec = get_model(name)
    var = spec.variant(variant)
    if size is not None:
        var = var.sized(*size)
    if alpha_only:
        var = var.alpha_only()
    output = Path(output) if output else default_output_dir(spec, var)
    if output.exists() and not overwrite:
        raise MtcError(f"{output} already exists", hint="pass --force to replace it, or choose another -o")

    started = time.perf_counter()
    weights = fetch_weights(var.weights, weights_path=weights_path, offline=offline)
    timings = {"fetch_s": time.perf_counter() - started}
    stages = Stages()
    if var.build_program is not None:
        with stages.stage(f"building the ONNX graphs of {spec.name} {var.name} ({var.exporter})", counts=False):
            build = var.build_program(weights)
    else:
        with stages.stage(f"building the ONNX graph of {spec.name} {var.name} ({var.exporter})", counts=False):
            original = var.build_onnx(weights)
    job = CompileJob(
        model=spec.name, variant=var.name, task=spec.task, license=spec.license, io=var.io,
        reference=var.build_reference(weights) if var.build_reference else None,
        cases=tuple(ParityCase(*case) for case in var.parity_cases),
        tolerance=var.parity_tolerance if tolerance is None else tolerance, outliers=var.parity_outliers,
        rewrites=var.rewrites, check_sizes=var.check_sizes, quantization=var.quantization,
        provenance={"exporter": var.exporter, "source_file": var.weights.filename,
                    "source_sha256": sha256_file(weights)})
    if var.build_program is not None:
        from mtc.export.program import compile_program

        return compile_program(build, job, output=output, overwrite=overwrite, simplify=simplify, timings=timings,
                               stages=stages)
    return compile_artifact(original, job, output=output, overwrite=overwrite, simplify=simplify, timings=timings,
                            stages=stages)


def known_onnx(path: Path) -> tuple[ModelSpec, VariantSpec] | None:
    """The registered model whose official ONNX file `path` is (by sha256), else None."""
    digest = sha256_file(path)
    for spec in list_models():
        for var in spec.variants.values():
            if var.exporter == "onnx_ingest" and var.weights.sha256 == digest:
                return spec, var
    return None


def export_onnx_file(path: Path, *, output: Path | None = None, overwrite: bool = False, simplify: bool = True,
                     hints: ContractHints = ContractHints(), name: str | None = None,
                     license: str = "unknown") -> Path:
    """Export any matting ONNX: a registered model's official file goes through its family's
    export; any other file gets its I/O contract inferred from the graph (mtc.export.byo)."""
    from mtc.export.onnx_ingest import load_onnx

    path = Path(path)
    if not path.is_file():
        raise MtcError(f"ONNX file not found: {path}", hint="check the path, or pass a registered model name")
    match = known_onnx(path)
    if match is not None:
        spec, var = match
        log.info("%s is the official %s %s file: exporting it as that model", path.name, spec.name, var.name)
        return export_model(spec.name, variant=var.name, weights_path=path, output=output or default_output_dir(spec, var),
                            overwrite=overwrite, simplify=simplify)
    name = name or re.sub(r"[^A-Za-z0-9_.-]+", "-", path.stem)
    output = Path(output) if output else Path("artifacts") / f"{name}-onnx-fp32"
    if output.exists() and not overwrite:
        raise MtcError(f"{output} already exists", hint="pass --force to replace it, or choose another -o")
    model = load_onnx(path)
    io, task = infer_contract(model, hints)
    io = measure_state_strides(model.SerializeToString(), io)
    log.info("inferred contract of %s:\n%s", path.name, describe_contract(io, task))
    job = CompileJob(model=name, variant="onnx", task=task, license=license, io=io,
                     provenance={"exporter": "onnx_ingest", "source_file": path.name,
                                 "source_sha256": sha256_file(path), "contract": "inferred"})
    return compile_artifact(model, job, output=output, overwrite=overwrite, simplify=simplify)
