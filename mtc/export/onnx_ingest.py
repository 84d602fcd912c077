"""ONNX ingest: load a model distributed as ONNX and make it safe for every later step.

Official matting ONNX files carry export-era defects that silently break quantization, FP16
conversion and memory planning (DESIGN.md, "graph hygiene"). Each step here fixes one of them
and records what it did; `check_parity` then proves the result computes the same thing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx import version_converter

from mtc.errors import MtcError, exception_summary

log = logging.getLogger("mtc")

TARGET_OPSET = 17


@dataclass
class SanitizeLog:
    """What the sanitize pass changed, for the artifact's report."""

    source_opset: int = 0
    opset: int = 0
    renamed_dims: dict[str, list[str]] = field(default_factory=dict)
    identity_routed_outputs: list[str] = field(default_factory=list)
    shape_inference: str = "skipped"
    simplifier: str = "skipped"
    nodes_before: int = 0
    nodes_after: int = 0


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Load and structurally check an ONNX file, turning every failure into one clear line."""
    path = Path(path)
    if not path.is_file():
        raise MtcError(f"ONNX file not found: {path}", hint="check the path")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf raises several unrelated types for damaged bytes
        raise MtcError(
            f"{path} is not a valid ONNX file ({type(exc).__name__})",
            hint="the file is corrupt or not ONNX; download it again",
        ) from None
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = exception_summary(exc)
        raise MtcError(f"{path} fails the ONNX checker: {first}", hint="the file is corrupt or malformed") from None
    except Exception as exc:  # the checker itself trips on damaged fields (e.g. names that are not UTF-8)
        raise MtcError(f"{path} fails the ONNX checker ({type(exc).__name__})",
                       hint="the file is corrupt or malformed") from None
    return model


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def upgrade_opset(model: onnx.ModelProto, target: int = TARGET_OPSET) -> onnx.ModelProto:
    """Per-channel DequantizeLinear needs `axis`, which only exists from opset 13."""
    if opset_of(model) >= target:
        return model
    try:
        return version_converter.convert_version(model, target)
    except Exception as exc:
        raise MtcError(
            f"cannot convert the model from opset {opset_of(model)} to {target}: {exc}",
            hint="re-export the model at opset 17 or newer",
        ) from None


def give_unique_dim_names(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Rename every symbolic dim of every graph input/output to `<tensor>_<dim>`.

    Shared names assert equal sizes. a recurrent model's states share `height`/`width` with `src` although
    their sizes differ, and ONNX Runtime then reuses buffers across them.
    """
    renamed: dict[str, list[str]] = {}
    for value in [*model.graph.input, *model.graph.output]:
        names = []
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") or not dim.HasField("dim_value"):
                base = dim.dim_param or f"d{len(names)}"
                dim.dim_param = base if base.startswith(f"{value.name}_") else f"{value.name}_{base}"
                names.append(dim.dim_param)
        if names:
            renamed[value.name] = names
    # Inferred shapes still carry the old shared names; they are recomputed afterwards.
    del model.graph.value_info[:]
    return renamed


def route_consumed_outputs(model: onnx.ModelProto) -> list[str]:
    """Give graph outputs that are also consumed inside the graph their own Identity node.

    FP16 conversion that keeps I/O types inserts a Cast on each graph output; without the
    Identity, internal consumers would then read the cast tensor and mix types.
    """
    graph = model.graph
    output_names = {o.name for o in graph.output}
    consumed = {name for node in graph.node for name in node.input if name in output_names}
    routed = []
    for name in sorted(consumed):
        inner = f"{name}__inner"
        for node in graph.node:
            node.output[:] = [inner if o == name else o for o in node.output]
            node.input[:] = [inner if i == name else i for i in node.input]
        graph.node.append(onnx.helper.make_node("Identity", [inner], [name], name=f"{name}__graph_output"))
        routed.append(name)
    return routed


def infer_shapes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False), "onnx"
    except Exception as exc:  # inference is an aid, not a requirement: keep the model
        log.warning("shape inference failed (%s); continuing without inferred shapes", exc)
        return model, f"failed: {type(exc).__name__}"


def simplify(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """Constant folding and dead-node removal via onnxsim; parity is checked by the caller."""
    try:
        import onnxsim
    except ImportError:
        log.warning("onnxsim is not installed; skipping simplification (pip install 'mtc[compile]')")
        return model, "skipped: onnxsim not installed"
    try:
        # onnxsim's own random-input check cannot build a recurrent model's state inputs; we check parity
        # on real frames instead.
        simplified, ok = onnxsim.simplify(model, check_n=0)
    except Exception as exc:
        log.warning("onnxsim failed (%s); keeping the unsimplified graph", exc)
        return model, f"failed: {type(exc).__name__}"
    if not ok:
        return model, "failed: onnxsim reported an invalid result"
    return simplified, f"onnxsim {getattr(onnxsim, '__version__', '?')}"


def sanitize(model: onnx.ModelProto, *, opset: int = TARGET_OPSET, run_simplifier: bool = True) -> tuple[onnx.ModelProto, SanitizeLog]:
    """Apply every hygiene step in order; the input model is not modified."""
    report = SanitizeLog(source_opset=opset_of(model), nodes_before=len(model.graph.node))
    model = upgrade_opset(model, opset)
    try:
        model = onnx.ModelProto.FromString(model.SerializeToString())
        # Simplify first: onnxsim would fold away the Identity nodes routed below.
        if run_simplifier:
            model, report.simplifier = simplify(model)
        report.renamed_dims = give_unique_dim_names(model)
        report.identity_routed_outputs = route_consumed_outputs(model)
        model, report.shape_inference = infer_shapes(model)
        onnx.checker.check_model(model)
    except MtcError:
        raise
    except Exception as exc:  # a damaged file the checker let through (e.g. a name that is not UTF-8)
        raise MtcError(f"the model cannot be sanitized ({type(exc).__name__}: {exception_summary(exc, 200)})",
                       hint="the file is corrupt or malformed; -v shows where it failed") from exc
    report.opset = opset_of(model)
    report.nodes_after = len(model.graph.node)
    return model, report
