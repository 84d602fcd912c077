"""FP16 conversion that keeps graph I/O in FP32 and keeps overflow-prone ops in FP32.

Which ops stay FP32 is measured, not guessed: any op whose output magnitude on the calibration
data exceeds FP16's range (with headroom) stays FP32, as does any normalization whose input
magnitude squared would overflow the variance it computes (an InstanceNorm).

When the result still misses its gates, the ops to keep in FP32 are found by sensitivity, not
by position: a model's FP16 error usually comes from a handful of ops (a conv reading a
large-valued skip tensor, say), anywhere in the graph. `sensitive_units` splits the graph into
runs of ops and measures each run alone in FP16, bisecting only the runs that cost a visible
share of the gate, so a few sensitive ops among hundreds take tens of checks, not hundreds.
The runs are then kept in FP32 worst first, as few as pass (`shortest_passing_prefix`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mtc.graph_edit import topological_order
from mtc.quant.qdq import float_tensors

FP16_MAX = 65504.0
HEADROOM = 4.0  # an op whose calibration peak is above FP16_MAX / HEADROOM stays FP32
VARIANCE_OPS = ("InstanceNormalization", "LayerNormalization", "GroupNormalization", "BatchNormalization")
# Inputs the ONNX spec types independently of the data (they stay FP32 whatever the data is).
FP32_INPUTS = {"Resize": (1, 2), "Upsample": (1,)}
# Constants stay FP32 and are cast where FP16 ops read them (folded at load): an empty Constant
# (e.g. Resize's unused `scales`) must stay recognisably constant.
NEVER_FP16 = ("Constant", "Cast", "Shape", "Size", "NonZero", "TopK", "Range", "ScatterElements", "RandomNormalLike", "RandomUniformLike")


def computed_floats(model: onnx.ModelProto) -> list[str]:
    """The float tensors the graph computes (needs inferred shapes)."""
    # Constants are not activations (some hold +-inf as clip bounds); they are cast, not computed.
    names = sorted({o for n in model.graph.node if n.op_type != "Constant" for o in n.output if o})
    floats = {v.name for v in model.graph.value_info if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    floats |= {o.name for o in model.graph.output if o.type.tensor_type.elem_type == TensorProto.FLOAT}
    return [n for n in names if n in floats]


def activation_magnitudes(model: onnx.ModelProto, feeds: Iterable[dict[str, np.ndarray]], *,
                          progress=None) -> dict[str, float]:
    """Peak |value| of every float tensor the graph computes, over `feeds` (needs inferred
    shapes), one run per feed (`ranges.tensor_peaks`). `progress` is called once per feed."""
    from mtc.quant.ranges import tensor_peaks

    return tensor_peaks(model, computed_floats(model), feeds, progress=progress)


def overflow_prone_nodes(model: onnx.ModelProto, magnitudes: Mapping[str, float]) -> list[str]:
    """Nodes whose measured outputs (or squared inputs, for normalizations) leave FP16's range."""
    limit = FP16_MAX / HEADROOM
    risky = []
    for node in model.graph.node:
        peak_out = max((magnitudes.get(o, 0.0) for o in node.output), default=0.0)
        peak_in = max((magnitudes.get(i, 0.0) for i in node.input[:1]), default=0.0)
        if peak_out > limit or (node.op_type in VARIANCE_OPS and peak_in * peak_in > limit):
            risky.append(node.name)
    return risky


def fp16_compute_nodes(model: onnx.ModelProto, keep_fp32: Iterable[str] = ()) -> list[str]:
    """The nodes the conversion runs in FP16, in graph (topological) order."""
    keep = set(keep_fp32)
    return [n.name for n in model.graph.node if n.name not in keep and n.op_type not in NEVER_FP16]


def sensitive_units(order: Sequence[str], isolated_error: Callable[[list[str]], float], *, visible: float,
                    first_split: int = 16) -> list[tuple[list[str], float]]:
    """Runs of `order` with their isolated error, worst first.

    `isolated_error(run)` is the error (as a share of the gate: 1.0 uses all of it) with only
    `run` in FP16 and the rest in FP32. The order is first cut into `first_split` runs; a run
    whose error reaches `visible` is halved until single ops, the others stay whole. Every op
    of `order` is in exactly one run.
    """
    units: list[tuple[list[str], float]] = []
    parts = min(first_split, len(order))
    pending = [list(order[i * len(order) // parts:(i + 1) * len(order) // parts]) for i in range(parts)]
    while pending:
        run = pending.pop()
        error = isolated_error(run)
        if error >= visible and len(run) > 1:
            pending += [run[: len(run) // 2], run[len(run) // 2:]]
        else:
            units.append((run, error))
    return sorted(units, key=lambda unit: -unit[1])


def shortest_passing_prefix(order: Sequence, passes: Callable[[list], bool], *, limit: int) -> list | None:
    """The shortest prefix of `order` (at most `limit` long) for which `passes` holds, or None.

    Doubling finds a passing length, then bisection between it and the last failing one: about
    2 log2(n) trials. Assumes a longer prefix is never worse, which holds when `order` is worst
    first (checked by the caller's final gate check, not trusted).
    """
    failing, length = 0, 1
    while True:
        length = min(length, limit, len(order))
        if passes(list(order[:length])):
            break
        failing = length
        if length >= min(limit, len(order)):
            return None
        length *= 2
    while length - failing > 1:
        middle = (failing + length) // 2
        if passes(list(order[:middle])):
            length = middle
        else:
            failing = middle
    return list(order[:length])


def convert_to_fp16(model: onnx.ModelProto, *, keep_fp32: Iterable[str] = ()) -> onnx.ModelProto:
    """Return an FP16 copy of `model`; graph inputs and outputs keep their FP32 types."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    keep = set(keep_fp32)
    floats = float_tensors(out)
    initializers = {i.name: i for i in graph.initializer}
    graph_inputs = {i.name for i in graph.input}
    graph_outputs = {o.name for o in graph.output}

    def runs_fp16(node: onnx.NodeProto) -> bool:
        return node.name not in keep and node.op_type not in NEVER_FP16

    dtype: dict[str, int] = {name: TensorProto.FLOAT for name in floats}  # current element type of each float tensor
    new_nodes: list[onnx.NodeProto] = []
    casts: dict[tuple[str, int], str] = {}
    fp16_initializers: dict[str, str] = {}

    def as_type(tensor: str, target: int) -> str:
        if dtype.get(tensor) == target:
            return tensor
        if tensor in initializers and target == TensorProto.FLOAT16:
            if tensor not in fp16_initializers:
                values = numpy_helper.to_array(initializers[tensor])
                name = f"{tensor}__fp16"
                graph.initializer.append(numpy_helper.from_array(np.clip(values, -FP16_MAX, FP16_MAX).astype(np.float16), name))
                fp16_initializers[tensor] = name
                dtype[name] = TensorProto.FLOAT16
            return fp16_initializers[tensor]
        key = (tensor, target)
        if key not in casts:
            casts[key] = f"{tensor}__as{'16' if target == TensorProto.FLOAT16 else '32'}"
            new_nodes.append(helper.make_node("Cast", [tensor], [casts[key]], to=target, name=f"{casts[key]}__Cast"))
            dtype[casts[key]] = target
        return casts[key]

    for node in list(graph.node):
        half = runs_fp16(node)
        fp32_slots = FP32_INPUTS.get(node.op_type, ())
        for index, name in enumerate(node.input):
            if name and name in floats:
                want = TensorProto.FLOAT16 if half and index not in fp32_slots else TensorProto.FLOAT
                node.input[index] = as_type(name, want)
        if half:
            for name in node.output:
                if name in floats:
                    dtype[name] = TensorProto.FLOAT16
        new_nodes.append(node)

    for output in graph.output:
        if dtype.get(output.name) == TensorProto.FLOAT16:
            inner = f"{output.name}__fp16"
            for node in new_nodes:
                node.output[:] = [inner if o == output.name else o for o in node.output]
                node.input[:] = [inner if i == output.name else i for i in node.input]
            new_nodes.append(helper.make_node("Cast", [inner], [output.name], to=TensorProto.FLOAT,
                                              name=f"{output.name}__to_fp32"))
    del graph.node[:]
    graph.node.extend(topological_order(new_nodes, graph_inputs | {i.name for i in graph.initializer}))
    del graph.value_info[:]
    used = {i for n in graph.node for i in n.input} | graph_outputs
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return onnx.shape_inference.infer_shapes(out)
