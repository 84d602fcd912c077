"""Graph summaries and per-frame compute cost for `mtc inspect`.

`summarize_graph` reads an ONNX model statically: opset, op histogram, parameter count and
the input/output signature. `frame_cost` measures the arithmetic cost of one inference at a
concrete resolution. Matting models often have data-dependent shapes (RVM's Resize sizes
depend on the *value* of its `downsample_ratio` input), which static shape inference cannot
resolve, so `frame_cost` runs the model once in onnxruntime with the intermediate tensors it
needs exposed as graph outputs and reads their actual shapes.

Cost model (deliberately simple):

* Conv / ConvTranspose / Gemm / MatMul (and their integer/QLinear variants) cost 2 flops
  per multiply-accumulate. Bias adds are not counted.
* Elementwise, activation, normalization, resize, pool and reduce ops cost 1 flop per
  output element (a pool's window size is ignored).
* Data-movement ops (Concat, Slice, Reshape, Shape, Constant, ...) cost nothing.

Only the top-level graph is analysed; nodes inside If/Loop/Scan bodies are not counted.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx

from mtc.errors import MtcError, exception_summary

# Ops whose cost is multiply-accumulates -> indices of the inputs whose shapes that cost
# reads: the weight for the Conv family (C_out, C_in/group, k...), data and weight for
# ConvTranspose (weight is C_in, C_out/group, k...), operand A for Gemm and the MatMul family.
_MAC_OPS = {
    "Conv": (1,),
    "ConvInteger": (1,),
    "QLinearConv": (3,),
    "ConvTranspose": (0, 1),
    "Gemm": (0,),
    "MatMul": (0,),
    "MatMulInteger": (0,),
    "QLinearMatMul": (0,),
}
# Consumers whose Constant-node inputs count as parameters.
_MAC_CONSUMERS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}

# Ops costed at one flop per output element.
_ELEMENTWISE_OPS = frozenset(
    {
        # arithmetic
        "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Neg", "Abs", "Reciprocal", "Sqrt",
        "Exp", "Log", "Erf", "Floor", "Ceil", "Round", "Sign", "Max", "Min", "Mean", "Sum",
        "Where", "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Not",
        "And", "Or", "Xor",
        # activations
        "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Gelu", "Sigmoid",
        "HardSigmoid", "HardSwish", "Tanh", "Softplus", "Softsign", "Mish", "Clip",
        "ThresholdedRelu", "Softmax", "LogSoftmax",
        # normalization
        "BatchNormalization", "InstanceNormalization", "LayerNormalization",
        "GroupNormalization", "LpNormalization",
        # resize / pool / reduce
        "Resize", "Upsample", "AveragePool", "MaxPool", "GlobalAveragePool",
        "GlobalMaxPool", "LpPool", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin",
        "ReduceProd", "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp",
        # quantization
        "QuantizeLinear", "DequantizeLinear",
    }
)

_FLOAT_TYPES = frozenset(
    {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.BFLOAT16,
        onnx.TensorProto.DOUBLE,
    }
)

_MAX_PROTO_BYTES = 2**31 - 1


@dataclass(frozen=True)
class GraphSummary:
    """Static facts about an ONNX graph.

    Attributes:
        opset: Version of the default ("ai.onnx") opset.
        node_count: Number of nodes in the top-level graph.
        op_counts: op_type -> number of nodes, sorted by count (descending), then name.
        param_count: Elements in floating-point initializers, plus floating-point
            Constant-node tensors consumed by Conv/ConvTranspose/Gemm/MatMul.
        param_bytes: Storage size of those parameters.
        inputs: (name, dtype name, shape) per real graph input (initializers excluded).
            Shape entries are ints, dim names, or "?" for an unknown dim; a tensor of
            unknown rank has shape ["..."].
        outputs: Same as `inputs`, for graph outputs.
    """

    opset: int
    node_count: int
    op_counts: dict[str, int]
    param_count: int
    param_bytes: int
    inputs: list[tuple[str, str, list]]
    outputs: list[tuple[str, str, list]]


@dataclass(frozen=True)
class FrameCost:
    """Arithmetic cost of one inference.

    Attributes:
        gflops: Total cost in GFLOPs: 2 * conv_gmacs + elementwise_gflops. Equals the sum
            of `per_op_type_gflops`.
        conv_gmacs: Multiply-accumulates (in billions) of Conv/ConvTranspose/Gemm/MatMul.
        elementwise_gflops: One flop per output element of elementwise, activation,
            normalization, resize, pool and reduce ops, in billions.
        per_op_type_gflops: op_type -> GFLOPs, for op types with nonzero cost, sorted by
            cost (descending).
    """

    gflops: float
    conv_gmacs: float
    elementwise_gflops: float
    per_op_type_gflops: dict[str, float]


def _default_opset(model: onnx.ModelProto) -> int:
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            return opset.version
    raise MtcError(
        "the ONNX model declares no default-domain opset",
        hint="re-export the model; every standard ONNX model imports the ai.onnx opset",
    )


def _dtype_name(elem_type: int) -> str:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
    except (KeyError, TypeError, ValueError):
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def _describe(value_info: onnx.ValueInfoProto) -> tuple[str, str, list]:
    type_proto = value_info.type
    if not type_proto.HasField("tensor_type"):
        return value_info.name, type_proto.WhichOneof("value") or "unknown", ["..."]
    tensor_type = type_proto.tensor_type
    dtype = _dtype_name(tensor_type.elem_type)
    if not tensor_type.HasField("shape"):
        return value_info.name, dtype, ["..."]
    shape: list = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            shape.append(dim.dim_value)
        elif dim.HasField("dim_param"):
            shape.append(dim.dim_param)
        else:
            shape.append("?")
    return value_info.name, dtype, shape


def _itemsize(elem_type: int) -> int:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize


def _real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def summarize_graph(model: onnx.ModelProto) -> GraphSummary:
    """Summarizes an ONNX model without running it.

    Args:
        model: The model to describe. Only the top-level graph is counted.

    Returns:
        A `GraphSummary`.

    Raises:
        MtcError: If the model imports no default-domain opset.
    """
    graph = model.graph
    counts = Counter(node.op_type for node in graph.node)
    op_counts = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    param_count = 0
    param_bytes = 0
    for tensor in graph.initializer:
        if tensor.data_type in _FLOAT_TYPES:
            n = math.prod(tensor.dims)
            param_count += n
            param_bytes += n * _itemsize(tensor.data_type)

    # Constant nodes feeding compute ops are weights stored inline rather than as
    # initializers (some exporters do this). Count each such tensor once.
    consumed_by_mac_ops = {
        name for node in graph.node if node.op_type in _MAC_CONSUMERS for name in node.input
    }
    for node in graph.node:
        if node.op_type != "Constant" or node.output[0] not in consumed_by_mac_ops:
            continue
        for attr in node.attribute:
            if attr.name == "value" and attr.t.data_type in _FLOAT_TYPES:
                n = math.prod(attr.t.dims)
                param_count += n
                param_bytes += n * _itemsize(attr.t.data_type)

    return GraphSummary(
        opset=_default_opset(model),
        node_count=len(graph.node),
        op_counts=op_counts,
        param_count=param_count,
        param_bytes=param_bytes,
        inputs=[_describe(i) for i in _real_inputs(model)],
        outputs=[_describe(o) for o in graph.output],
    )


def zero_feeds(
    model: onnx.ModelProto,
    shapes: dict[str, tuple[int, ...]],
    values: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Builds an all-zeros feed for every graph input.

    Args:
        model: The model whose inputs to feed.
        shapes: Concrete shapes by input name. Required for inputs with symbolic or unknown
            dims; for fully static inputs it is optional and must match the model.
        values: Arrays by input name used as-is instead of zeros (e.g. a downsample ratio).

    Returns:
        Input name -> array, with each array in the input's declared dtype.

    Raises:
        MtcError: If an input with a symbolic dim has no shape given, a given shape
            contradicts the model, an input is not a tensor, or `shapes`/`values` name an
            input the model does not have.
    """
    values = values or {}
    unknown = set(shapes) | set(values)
    feeds: dict[str, np.ndarray] = {}
    for value_info in _real_inputs(model):
        name = value_info.name
        unknown.discard(name)
        if name in values:
            feeds[name] = np.asarray(values[name])
            continue
        if not value_info.type.HasField("tensor_type"):
            raise MtcError(
                f"model input '{name}' is not a tensor",
                hint=f"pass a value for '{name}' in `values`",
            )
        _, _, declared = _describe(value_info)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value_info.type.tensor_type.elem_type)
        if name in shapes:
            shape = tuple(int(d) for d in shapes[name])
            if declared != ["..."] and (
                len(shape) != len(declared)
                or any(isinstance(d, int) and d != s for d, s in zip(declared, shape))
            ):
                raise MtcError(
                    f"shape {list(shape)} for input '{name}' does not match the model's "
                    f"{declared}",
                    hint=f"give '{name}' a shape with the model's fixed dims",
                )
        elif declared != ["..."] and all(isinstance(d, int) for d in declared):
            shape = tuple(declared)
        else:
            raise MtcError(
                f"input '{name}' has symbolic shape {declared} and no concrete shape was given",
                hint=f"pass shapes={{'{name}': (...)}} with one int per dim",
            )
        feeds[name] = np.zeros(shape, dtype=dtype)
    if unknown:
        names = ", ".join(sorted(unknown))
        raise MtcError(
            f"the model has no input named {names}",
            hint="inputs are: " + ", ".join(i.name for i in _real_inputs(model)),
        )
    return feeds


def _needed_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of the tensors whose shapes the cost model reads."""
    needed: set[str] = set()
    for node in model.graph.node:
        op = node.op_type
        if op in _ELEMENTWISE_OPS or op in _MAC_OPS:
            needed.add(node.output[0])
        if op in _MAC_OPS:
            needed.update(node.input[i] for i in _MAC_OPS[op])
    return needed


def _expose_outputs(model: onnx.ModelProto, names: set[str]) -> onnx.ModelProto:
    """Returns a copy of `model` where each top-level node output in `names` is a graph output."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    try:
        typed = onnx.shape_inference.infer_shapes(exposed)
    except Exception:  # custom ops or malformed models: fall back to declared info
        typed = exposed
    elem_types = {
        vi.name: vi.type.tensor_type.elem_type
        for vi in list(typed.graph.value_info) + list(typed.graph.output)
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type
    }
    graph = exposed.graph
    already = {o.name for o in graph.output}
    for node in graph.node:
        for name in node.output:
            if not name or name in already or name not in names:
                continue
            already.add(name)
            if name in elem_types:
                graph.output.append(
                    onnx.helper.make_tensor_value_info(name, elem_types[name], None)
                )
            else:  # onnxruntime infers the type itself
                graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return exposed


def _run_for_shapes(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray]
) -> dict[str, tuple[int, ...]]:
    """Runs `model` once; returns actual shapes of the needed tensors, feeds and initializers."""
    import onnxruntime as ort

    missing = [vi.name for vi in _real_inputs(model) if vi.name not in feeds]
    if missing:
        raise MtcError(
            f"no feed given for model input(s) {', '.join(missing)}",
            hint="build feeds with mtc.graph_stats.zero_feeds(model, shapes, values)",
        )
    if model.ByteSize() > _MAX_PROTO_BYTES:
        raise MtcError(
            "the model is larger than 2 GB, which frame_cost does not support",
            hint="measure cost on a smaller variant of the model",
        )
    # Exposing only what the cost model reads keeps memory down at high resolutions: every
    # exposed tensor stays alive until the run returns.
    exposed = _expose_outputs(model, _needed_tensors(model))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3  # shape-mismatch warnings are expected here
    try:
        session = ort.InferenceSession(
            exposed.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        names = [o.name for o in session.get_outputs()]
        results = session.run(names, feeds)
    except Exception as exc:  # onnxruntime raises its own exception types
        first_line = exception_summary(exc)
        raise MtcError(
            f"onnxruntime could not run the model to measure its cost: {first_line}",
            hint="check that the feeds' shapes and dtypes match the model's inputs",
        ) from exc

    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    shapes.update({name: tuple(np.shape(array)) for name, array in feeds.items()})
    shapes.update({name: tuple(np.shape(array)) for name, array in zip(names, results)})
    return shapes


def _node_macs(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> int:
    """Multiply-accumulates of one compute node, from the actual tensor shapes."""
    op = node.op_type
    output = shapes[node.output[0]]
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        weight = shapes[node.input[_MAC_OPS[op][0]]]  # (C_out, C_in/group, k...)
        return math.prod(output) * math.prod(weight[1:])
    if op == "ConvTranspose":
        weight = shapes[node.input[1]]  # (C_in, C_out/group, k...)
        return math.prod(shapes[node.input[0]]) * math.prod(weight[1:])
    a = shapes[node.input[0]]
    if op == "Gemm":
        trans_a = any(attr.name == "transA" and attr.i for attr in node.attribute)
        return math.prod(output) * (a[0] if trans_a else a[1])
    # MatMul family: each output element is a dot product over A's last dim.
    return math.prod(output) * a[-1]


def frame_cost(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> FrameCost:
    """Measures the arithmetic cost of one inference with the given feeds.

    Runs the model once on CPU with the intermediate tensors the cost model reads exposed
    as outputs, so shapes that depend on input values (e.g. Resize sizes computed from a
    downsample ratio) are exact. Graph optimizations are disabled so no node is fused
    away. The model must be under 2 GB; only the top-level graph is costed.

    Args:
        model: The model to measure.
        feeds: Input name -> array, as for an onnxruntime session (see `zero_feeds`).

    Returns:
        A `FrameCost` for one inference at the feeds' shapes.

    Raises:
        MtcError: If an input is not fed, the model is too large, or onnxruntime
            fails to run it with these feeds.
    """
    shapes = _run_for_shapes(model, feeds)
    macs = 0
    elementwise = 0
    per_op: Counter[str] = Counter()
    for node in model.graph.node:
        op = node.op_type
        if op in _MAC_OPS:
            node_macs = _node_macs(node, shapes)
            macs += node_macs
            per_op[op] += 2 * node_macs
        elif op in _ELEMENTWISE_OPS:
            numel = math.prod(shapes[node.output[0]])
            elementwise += numel
            per_op[op] += numel

    per_op_gflops = {
        op: flops / 1e9
        for op, flops in sorted(per_op.items(), key=lambda kv: (-kv[1], kv[0]))
        if flops
    }
    return FrameCost(
        gflops=(2 * macs + elementwise) / 1e9,
        conv_gmacs=macs / 1e9,
        elementwise_gflops=elementwise / 1e9,
        per_op_type_gflops=per_op_gflops,
    )


def tensor_elements(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, int]:
    """Elements of each tensor the cost model reads (the outputs of convolutions, matmuls and
    elementwise ops, and the operands their MAC counts take) for one inference with `feeds`."""
    shapes = _run_for_shapes(model, feeds)
    return {name: math.prod(shapes[name]) for name in _needed_tensors(model) if name in shapes}


def node_macs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, int]:
    """Multiply-accumulates of each Conv/ConvTranspose/Gemm/MatMul node for one inference with `feeds`."""
    shapes = _run_for_shapes(model, feeds)
    return {node.name: _node_macs(node, shapes) for node in model.graph.node if node.op_type in _MAC_OPS}


def mac_shares(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, float]:
    """Each `node_macs` node's share of the model's multiply-accumulates (0 to 1)."""
    macs = node_macs(model, feeds)
    total = sum(macs.values()) or 1
    return {name: value / total for name, value in macs.items()}
