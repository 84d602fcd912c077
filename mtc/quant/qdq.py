"""Q/DQ placement and insertion.

Placement is data: `RULES` says, per op type, which inputs are activations to quantize
per-tensor, which are weights to quantize per-channel, and whether the output gets a Q/DQ pair
so that a CPU backend can keep the next op in integer arithmetic. Everything without a rule
stays float: shape paths, Resize scales and recurrent-state outputs never get Q/DQ here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mtc.graph_edit import drop_unused_initializers, producers, readers_by_tensor, sort_nodes

INT8_MAX = 127

# Activations a backend fuses into the preceding op: an output Q/DQ goes after them so the
# fused kernel can emit INT8 directly (ReLU then only sets the range's lower end).
FUSED_ACTIVATIONS = ("Relu",)


LAST_AXIS = -1  # a weight's channel axis counted from the end (resolved per node: its rank varies)


@dataclass(frozen=True)
class OpRule:
    """Which inputs of one op form are quantized, and whether its output may be.

    `weights` are (input index, output-channel axis) of initializer inputs; `output` says whether
    the op's output may get a Q/DQ pair (when the config asks for outputs): a Conv's output
    feeds the next integer conv, while a linear layer's output feeds float ops (its bias Add,
    a LayerNorm, a GELU, a residual Add), where a Q/DQ pair would only add a rounding.
    """

    activations: tuple[int, ...] = (0,)
    weights: tuple[tuple[int, int], ...] = ()
    output: bool = True


# Per op type, its forms in order of preference: the first whose weights are all initializers
# and whose activations are all float tensors applies. A MatMul with a constant right operand is
# a linear layer (a transformer's attention projections and MLP); a MatMul of two activations is
# attention itself (scores and their weighted sum), quantized only when asked
# (`plan_qdq(activation_matmuls=True)`): its softmax probabilities are mostly below one 8-bit step.
RULES: dict[str, tuple[OpRule, ...]] = {
    "Conv": (OpRule(activations=(0,), weights=((1, 0),)),),
    "ConvTranspose": (OpRule(activations=(0,), weights=((1, 1),)),),
    "Gemm": (OpRule(activations=(0,), weights=((1, 0),), output=False),),  # axis 1 when transB=0 (see _weight_axis)
    "MatMul": (OpRule(activations=(0,), weights=((1, LAST_AXIS),), output=False),
               OpRule(activations=(0, 1), output=False)),
}

@dataclass(frozen=True)
class NodeQuant:
    """What quantizing one node means: its activation inputs, weights and (optionally) output."""

    node: str
    inputs: tuple[tuple[str, int], ...]  # (tensor, input index) read through Q/DQ
    weights: tuple[tuple[int, int], ...]  # (input index, channel axis)
    output: str | None = None  # tensor whose readers all get the dequantized copy
    output_readers: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class QdqPlan:
    """Per-node quantization decisions; any subset of nodes is itself a valid plan."""

    nodes: tuple[NodeQuant, ...] = ()

    @property
    def node_names(self) -> list[str]:
        return [n.node for n in self.nodes]

    def activation_tensors(self) -> list[str]:
        tensors = {t for n in self.nodes for t, _ in n.inputs} | {n.output for n in self.nodes if n.output}
        return sorted(tensors)

    def only(self, names) -> QdqPlan:
        keep = set(names)
        return QdqPlan(tuple(n for n in self.nodes if n.node in keep))

    def without(self, names) -> QdqPlan:
        """Drop these nodes, and stop quantizing upstream outputs on their way into them."""
        drop = set(names)
        kept = []
        for n in self.nodes:
            if n.node in drop:
                continue
            readers = tuple(r for r in n.output_readers if r[0] not in drop)
            kept.append(replace(n, output=n.output if readers else None, output_readers=readers))
        return QdqPlan(tuple(kept))

    def nodes_on(self, tensor: str) -> list[str]:
        """The nodes whose Q/DQ sit on `tensor`: those reading it, and the one quantizing it as its output."""
        return [n.node for n in self.nodes if n.output == tensor or any(t == tensor for t, _ in n.inputs)]

    def activation_readers(self) -> dict[str, list[tuple[str, int]]]:
        readers: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for n in self.nodes:
            for tensor, index in n.inputs:
                readers[tensor].append((n.node, index))
            for reader in n.output_readers:
                readers[n.output].append(reader)
        return {t: list(dict.fromkeys(r)) for t, r in readers.items()}


def float_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of tensors known to be float32 (graph inputs, value_info, initializers)."""
    return float_tensors_of(model.graph)


def float_tensors_of(graph: onnx.GraphProto) -> set[str]:
    known = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.value_info, *graph.output]}
    known.update({i.name: i.data_type for i in graph.initializer})
    return {name for name, elem in known.items() if elem == TensorProto.FLOAT}


def plan_qdq(model: onnx.ModelProto, *, op_types: Iterable[str] = ("Conv",), exclude_nodes: Iterable[str] = (),
             quantize_outputs: bool = False, activation_matmuls: bool = False,
             rules: Mapping[str, tuple[OpRule, ...]] = RULES) -> QdqPlan:
    """Decide Q/DQ positions for every node of `op_types` not in `exclude_nodes`.

    `activation_matmuls` also quantizes MatMuls whose operands are both activations (attention).
    The model needs inferred shapes (value_info) so activation types are known.
    """
    op_types, excluded = set(op_types), set(exclude_nodes)
    initializers = {i.name: i for i in model.graph.initializer}
    floats = float_tensors(model)
    consumers: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            consumers[name].append((node.name, index))
    graph_outputs = {o.name for o in model.graph.output}
    nodes_by_name = {n.name: n for n in model.graph.node}
    planned = []
    for node in model.graph.node:
        if node.op_type not in op_types or node.name in excluded:
            continue
        form = _matching_form(node, rules.get(node.op_type, ()), initializers, floats,
                              activation_matmuls=activation_matmuls)
        if form is None:
            continue
        rule, weights = form
        inputs = tuple((node.input[i], i) for i in rule.activations)
        output, readers = None, ()
        if quantize_outputs and rule.output:
            tensor, tensor_readers = node.output[0], consumers[node.output[0]]
            if len(tensor_readers) == 1 and nodes_by_name[tensor_readers[0][0]].op_type in FUSED_ACTIVATIONS:
                tensor = nodes_by_name[tensor_readers[0][0]].output[0]
                tensor_readers = consumers[tensor]
            if tensor not in graph_outputs and tensor_readers:
                output, readers = tensor, tuple(tensor_readers)
        planned.append(NodeQuant(node.name, inputs, weights, output, readers))
    return QdqPlan(tuple(planned))


def _matching_form(node: onnx.NodeProto, forms: Iterable[OpRule], initializers: Mapping[str, onnx.TensorProto],
                   floats: set[str], *, activation_matmuls: bool) -> tuple[OpRule, tuple[tuple[int, int], ...]] | None:
    """The first form of `node` that applies, with its weights' resolved channel axes."""
    for rule in forms:
        if not rule.weights and node.op_type == "MatMul" and not activation_matmuls:
            continue
        weights = tuple((i, _weight_axis(node, axis, initializers[node.input[i]])) for i, axis in rule.weights
                        if i < len(node.input) and node.input[i] in initializers)
        activations_ok = all(i < len(node.input) and node.input[i] in floats and node.input[i] not in initializers
                             for i in rule.activations)
        if len(weights) == len(rule.weights) and activations_ok:
            return rule, weights
    return None  # weights computed at run time, or integer operands: the node stays float


def _weight_axis(node: onnx.NodeProto, axis: int, weight: onnx.TensorProto) -> int:
    """The output-channel axis of `node`'s weight, non-negative."""
    if node.op_type == "Gemm" and not next((a.i for a in node.attribute if a.name == "transB"), 0):
        return 1  # B is (K, N): its output channels are columns
    return axis % len(weight.dims)


def weight_limit(bits: int) -> int:
    """The largest |integer| a symmetric weight of `bits` bits takes (127 for 8, 63 for 7)."""
    return 2 ** (bits - 1) - 1


def quantize_weight(weight: np.ndarray, axis: int, *, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel symmetric INT8 on `bits` bits: returns (int8 values, float32 scale per channel).

    Seven bits (|w| <= 63) is what CPUs without VNNI compute exactly: their u8 x s8 dot products
    sum pairs in int16, which saturates on full-range weights (docs/quantization.md)."""
    limit = weight_limit(bits)
    moved = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)
    amax = np.abs(moved).max(axis=1)
    scale = np.where(amax > 0, amax / limit, 1.0).astype(np.float32)
    shape = [1] * weight.ndim
    shape[axis] = -1
    values = np.clip(np.round(weight / scale.reshape(shape)), -limit, limit).astype(np.int8)
    return values, scale


UINT8_MAX = 255

ActivationRange = tuple[float, float]  # (lo, hi) with lo <= 0 <= hi


def activation_quant(value_range: ActivationRange, activation_type: str) -> tuple[float, np.ndarray]:
    """(scale, zero point) of one activation tensor clipped to `value_range`.

    int8 (TensorRT) is symmetric: zero point 0, scale max(|lo|, hi) / 127. uint8 (ONNX Runtime's
    fast x86 U8S8 kernels, OpenVINO) spans [lo, hi] with all 256 levels and the zero point where
    0.0 lands, so 0 stays exact (zero padding, ReLU). A never-negative tensor (lo = 0) gets zero
    point 0, and ONNX Runtime then drops a ReLU before its QuantizeLinear (the clamp at 0 is
    the same), which is what lets it fuse Conv+ReLU into QLinearConv.
    """
    lo, hi = min(float(value_range[0]), 0.0), max(float(value_range[1]), 0.0)
    if activation_type == "int8":
        return max(-lo, hi, 1e-8) / INT8_MAX, np.array(0, np.int8)
    scale = max(hi - lo, 1e-8) / UINT8_MAX
    return scale, np.array(np.clip(round(-lo / scale), 0, UINT8_MAX), np.uint8)


def insert_qdq(model: onnx.ModelProto, plan: QdqPlan, ranges: Mapping[str, ActivationRange], *,
               activation_type: str = "int8",
               rounded: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
               weight_bits: int = 8) -> onnx.ModelProto:
    """Return a copy of `model` with 8-bit Q/DQ pairs where `plan` says.

    Activations: one Q/DQ pair per tensor, clipped to its range in `ranges` (see
    `activation_quant`), shared by every planned
    consumer; other consumers keep reading the float tensor. Weights: stored as INT8
    initializers behind a per-channel DequantizeLinear; `rounded` gives (int8 values, scale) by
    weight name where they were chosen elsewhere (mtc.quant.gptq), else round-to-nearest on
    `weight_bits` bits (see `quantize_weight`).
    """
    rounded = rounded or {}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    nodes = {n.name: n for n in graph.node}
    initializers = {i.name: i for i in graph.initializer}
    new_nodes: dict[str, list[onnx.NodeProto]] = defaultdict(list)  # inserted before the named consumer
    new_inits: list[onnx.TensorProto] = []

    readers = plan.activation_readers()
    shared = hoist_through_movers(graph, readers)
    for tensor, consumers in readers.items():
        root = shared.get(tensor, tensor)
        if root == tensor:
            scale, zero = activation_quant(ranges[tensor], activation_type)
            new_inits += [numpy_helper.from_array(np.array(scale, np.float32), f"{_safe(tensor)}__scale"),
                          numpy_helper.from_array(zero, f"{_safe(tensor)}__zero")]
        base, params = _safe(tensor), [f"{_safe(root)}__scale", f"{_safe(root)}__zero"]
        q = helper.make_node("QuantizeLinear", [tensor, *params], [f"{base}__q"], name=f"{base}__Q")
        dq = helper.make_node("DequantizeLinear", [f"{base}__q", *params], [f"{base}__dq"], name=f"{base}__DQ")
        for node_name, index in consumers:
            nodes[node_name].input[index] = f"{base}__dq"
        new_nodes[consumers[0][0]].extend([q, dq])

    weights = [(n.node, index, axis) for n in plan.nodes for index, axis in n.weights]
    for node_name, index, axis in weights:
        node = nodes[node_name]
        weight_name = node.input[index]
        if weight_name in rounded:
            values, scale = rounded[weight_name]
        else:
            values, scale = quantize_weight(numpy_helper.to_array(initializers[weight_name]), axis, bits=weight_bits)
        base = _safe(f"{node_name}_{weight_name}")
        new_inits += [numpy_helper.from_array(values, f"{base}__int8"),
                      numpy_helper.from_array(scale, weight_scale_name(node)),
                      numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{base}__wzero")]
        new_nodes[node_name].append(helper.make_node(
            "DequantizeLinear", [f"{base}__int8", weight_scale_name(node), f"{base}__wzero"], [f"{base}__wdq"],
            name=f"{base}__WDQ", axis=axis))
        node.input[index] = f"{base}__wdq"

    graph.initializer.extend(new_inits)
    _place_nodes(graph, new_nodes)
    _pad_integers(graph)
    drop_unused_initializers(graph)
    return out


def _pad_integers(graph: onnx.GraphProto) -> None:
    """Rewrite DQ -> Pad(0) -> Q with one scale and zero point as Pad(zero point) on the integers.

    The same values, one float round trip fewer, and OpenVINO's low-precision Concat pass (which
    fails on a dequantized Pad feeding a Concat, as channel alignment makes) never sees it.
    """
    writers, readers = producers(graph), readers_by_tensor(graph)
    initializers = {i.name: i for i in graph.initializer}
    dropped, retyped = set(), set()
    for pad in (n for n in graph.node if n.op_type == "Pad"):
        dq = writers.get(pad.input[0])
        after = readers[pad.output[0]]
        if dq is None or dq.op_type != "DequantizeLinear" or len(after) != 1 or after[0].op_type != "QuantizeLinear":
            continue
        q = after[0]
        value = pad.input[2] if len(pad.input) > 2 else ""
        if list(q.input[1:]) != list(dq.input[1:]) or (value and not _is_zero(initializers.get(value))):
            continue
        inputs = list(pad.input) + [""] * (3 - len(pad.input))
        inputs[0], inputs[2] = dq.input[0], dq.input[2]  # a zero in the integer domain is the zero point
        pad.input[:] = inputs  # axes (input 3), if any, stay
        for reader in readers[q.output[0]]:
            reader.input[:] = [pad.output[0] if name == q.output[0] else name for name in reader.input]
        dropped.add(q.name)
        if len(readers[dq.output[0]]) == 1:
            dropped.add(dq.name)
        retyped.add(pad.output[0])
    kept = [n for n in graph.node if n.name not in dropped]
    del graph.node[:]
    graph.node.extend(kept)
    value_info = [v for v in graph.value_info if v.name not in retyped]
    del graph.value_info[:]
    graph.value_info.extend(value_info)


def _is_zero(tensor: onnx.TensorProto | None) -> bool:
    return tensor is not None and not numpy_helper.to_array(tensor).any()


# Data-movement ops and the inputs that carry data. Quantizing those inputs with the output's
# scale and zero point gives exactly the integers that quantizing the output gives (Q is
# elementwise and monotone), and lets ONNX Runtime run the op on uint8 (DQ -> op -> Q) instead
# of moving floats. Resize is not one: interpolating rounded values rounds twice.
MOVERS: dict[str, tuple[int, ...] | None] = {"Concat": None, "Slice": (0,), "Transpose": (0,), "Reshape": (0,),
                                             "MaxPool": (0,), "Pad": (0,)}


def hoist_through_movers(graph: onnx.GraphProto, readers: dict[str, list[tuple[str, int]]]) -> dict[str, str]:
    """Extend `readers` (tensor -> quantized consumers) upward through data-movement ops.

    A quantized tensor made by a mover and read only through its Q/DQ gets its mover's data
    inputs quantized instead, with the same parameters. Returns {hoisted tensor: the tensor
    whose scale and zero point it shares}.
    """
    writers = producers(graph)
    consumers: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for node in graph.node:
        for index, name in enumerate(node.input):
            consumers[name].add((node.name, index))
    constants = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    outputs, floats = {o.name for o in graph.output}, float_tensors_of(graph)
    shared: dict[str, str] = {}
    pending = list(readers)
    while pending:
        tensor = pending.pop()
        mover = writers.get(tensor)
        if mover is None or mover.op_type not in MOVERS or tensor in outputs or consumers[tensor] != set(readers[tensor]):
            continue
        indices = MOVERS[mover.op_type]
        for index in range(len(mover.input)) if indices is None else indices:
            source = mover.input[index]
            if source in readers or source in constants or source not in floats:
                continue  # already quantized on its own terms, or not an activation
            readers[source] = [(mover.name, index)]
            shared[source] = shared.get(tensor, tensor)
            pending.append(source)
    return shared


def weight_scale_name(node: onnx.NodeProto) -> str:
    """Name of the per-channel scale of `node`'s quantized weight (what corrections fold into)."""
    return f"{_safe(node.name)}__wscale"


def _place_nodes(graph: onnx.GraphProto, before: dict) -> None:
    """Insert new nodes right before their anchor, then restore topological order."""
    ordered = []
    for node in graph.node:
        ordered.extend(before.get(node.name, ()))
        ordered.append(node)
    sort_nodes(graph, ordered)


def _safe(name: str) -> str:
    return name.replace("/", "_").replace(":", "_")
