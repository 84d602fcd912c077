"""Rewrite ONNX `DeformConv` nodes into ordinary ops, on the graph itself (onnx and numpy only).

An artifact holds the native form (one DeformConv per deformable layer). ONNX Runtime runs it
from 1.31, TensorRT from 10.1, OpenVINO as its own DeformableConvolution
(:mod:`mtc.passes.openvino.deform_conv`); a backend without the op gets this decomposition,
computed from the ONNX node alone (no PyTorch at build time). It handles any DeformConv with
stride 1, dilation 1, one group and one offset group, whose input height and width are static
(the batch may be dynamic).

Per node: the offsets become sampling rows and columns (N, H_out*W_out, taps); the four bilinear
corners are gathered from the image as an (N*H*W, C) table with flat int64 indices (clamped,
their weight zeroed outside the image), weighted by the bilinear factors and the mask, summed,
and contracted with the kernel, reshaped to (taps*C, O), in one MatMul; the bias is added last.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mtc.errors import MtcError


def _static_dims(shapes: dict[str, list[int | None]], name: str, node: onnx.NodeProto) -> list[int | None]:
    dims = shapes.get(name)
    if dims is None or len(dims) != 4 or any(d is None for d in dims[1:]):
        raise MtcError(f"DeformConv {node.name or node.output[0]!r}: the shape of {name!r} is not static (N, C, H, W)",
                       hint="export the model at a fixed height and width")
    return dims


def _tensor_shapes(model: onnx.ModelProto) -> tuple[dict[str, list[int | None]], dict[str, int]]:
    """Each tensor's shape and element type (TensorProto enum), as far as inference tells."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes, types = {}, {}
    for info in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        types[info.name] = info.type.tensor_type.elem_type
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
        types[init.name] = init.data_type
    return shapes, types


class _Builder:
    """Emits the nodes and constants of one decomposition under a unique name prefix."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.constants: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}/{hint}_{self._count}"

    def const(self, value: np.ndarray, hint: str) -> str:
        name = self.name(hint)
        self.constants.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, **attrs) -> str:
        out = self.name(hint)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


def _decompose(node: onnx.NodeProto, shapes: dict[str, list[int | None]], types: dict[str, int]) -> _Builder:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    unsupported = {k: v for k, v in (("strides", [1, 1]), ("dilations", [1, 1])) if attrs.get(k, v) != v}
    unsupported.update({k: attrs[k] for k in ("group", "offset_group") if attrs.get(k, 1) != 1})
    if unsupported:
        raise MtcError(f"DeformConv {node.name or node.output[0]!r} has {unsupported}: only stride 1, dilation 1 "
                       "and one (offset) group are decomposed", hint="run the model on a backend with DeformConv")
    x, weight, offset, bias, mask = deform_conv_inputs(node)
    _, channels, height, width = _static_dims(shapes, x, node)
    _, _, out_h, out_w = _static_dims(shapes, offset, node)
    out_channels = shapes[weight][0]
    kernel = attrs.get("kernel_shape", shapes[weight][2:])
    pads = attrs.get("pads", [0, 0, 0, 0])
    taps, positions = kernel[0] * kernel[1], out_h * out_w

    b = _Builder(node.name or node.output[0])
    i64 = np.int64
    # A DeformConv of another float type (an FP16 graph) is computed in float32: its sampling
    # positions need float32's precision anyway, and the result is cast back.
    element = types.get(x, TensorProto.FLOAT)
    if element != TensorProto.FLOAT:
        x, weight, offset, bias, mask = (b.op("Cast", [name], "as_float", to=TensorProto.FLOAT) if name else None
                                         for name in (x, weight, offset, bias, mask))
    # Undeformed tap positions, (positions, taps), position-major and taps row-major.
    grid_r = (np.arange(out_h)[:, None, None, None] - pads[0] + np.arange(kernel[0])[None, None, :, None])
    grid_c = (np.arange(out_w)[None, :, None, None] - pads[1] + np.arange(kernel[1])[None, None, None, :])
    shape = (out_h, out_w, kernel[0], kernel[1])
    base_r = b.const(np.broadcast_to(grid_r, shape).reshape(positions, taps).astype(np.float32), "base_rows")
    base_c = b.const(np.broadcast_to(grid_c, shape).reshape(positions, taps).astype(np.float32), "base_cols")

    off = b.op("Reshape", [offset, b.const(np.array([-1, taps, 2, positions], i64), "shape")], "offset")
    off = b.op("Transpose", [off], "offset_npk2", perm=[0, 3, 1, 2])
    dy = b.op("Gather", [off, b.const(np.array(0, i64), "zero")], "dy", axis=3)
    dx = b.op("Gather", [off, b.const(np.array(1, i64), "one")], "dx", axis=3)
    rows = b.op("Add", [base_r, dy], "rows")
    cols = b.op("Add", [base_c, dx], "cols")
    if mask is not None:
        modulation = b.op("Reshape", [mask, b.const(np.array([-1, taps, positions], i64), "shape")], "mask")
        modulation = b.op("Transpose", [modulation], "mask_npk", perm=[0, 2, 1])
    row0 = b.op("Floor", [rows], "row0")
    col0 = b.op("Floor", [cols], "col0")
    frac_r = b.op("Sub", [rows, row0], "frac_r")
    frac_c = b.op("Sub", [cols, col0], "frac_c")
    one = b.const(np.array(1.0, np.float32), "one_f")
    keep_r = b.op("Sub", [one, frac_r], "keep_r")
    keep_c = b.op("Sub", [one, frac_c], "keep_c")

    image = b.op("Transpose", [x], "nhwc", perm=[0, 2, 3, 1])
    image = b.op("Reshape", [image, b.const(np.array([-1, channels], i64), "shape")], "pixels")
    batch = b.op("Gather", [b.op("Shape", [x], "shape_x"), b.const(np.array(0, i64), "zero")], "batch")
    first = b.op("Range", [b.const(np.array(0, i64), "zero"), batch, b.const(np.array(1, i64), "one")], "batches")
    first = b.op("Mul", [first, b.const(np.array(height * width, i64), "pixels_per_image")], "first_pixel")
    first = b.op("Reshape", [first, b.const(np.array([-1, 1, 1], i64), "shape")], "first_pixel_n11")

    zero_f = b.const(np.array(0.0, np.float32), "zero_f")
    last_r = b.const(np.array(height - 1, np.float32), "last_row")
    last_c = b.const(np.array(width - 1, np.float32), "last_col")
    width_f = b.const(np.array(width, np.float32), "width")
    sampled = None
    for d_row, d_col, (weight_r, weight_c) in ((0, 0, (keep_r, keep_c)), (0, 1, (keep_r, frac_c)),
                                               (1, 0, (frac_r, keep_c)), (1, 1, (frac_r, frac_c))):
        r = b.op("Add", [row0, one], "r") if d_row else row0
        c = b.op("Add", [col0, one], "c") if d_col else col0
        inside = b.op("And", [b.op("GreaterOrEqual", [r, zero_f], "r_ge"), b.op("LessOrEqual", [r, last_r], "r_le")],
                      "r_in")
        inside = b.op("And", [inside, b.op("GreaterOrEqual", [c, zero_f], "c_ge")], "rc_in")
        inside = b.op("And", [inside, b.op("LessOrEqual", [c, last_c], "c_le")], "inside")
        flat = b.op("Add", [b.op("Mul", [b.op("Clip", [r, zero_f, last_r], "r_clip"), width_f], "r_off"),
                            b.op("Clip", [c, zero_f, last_c], "c_clip")], "flat")
        index = b.op("Add", [b.op("Cast", [flat], "flat_i64", to=TensorProto.INT64), first], "index")
        values = b.op("Gather", [image, index], "values", axis=0)  # (N, P, taps, C)
        factor = b.op("Mul", [b.op("Mul", [weight_r, weight_c], "bilinear"),
                              b.op("Cast", [inside], "inside_f", to=TensorProto.FLOAT)], "factor")
        if mask is not None:
            factor = b.op("Mul", [factor, modulation], "modulated")
        factor = b.op("Unsqueeze", [factor, b.const(np.array([-1], i64), "last_axis")], "factor_c")
        term = b.op("Mul", [values, factor], "term")
        sampled = term if sampled is None else b.op("Add", [sampled, term], "sampled")

    kernel_matrix = b.op("Transpose", [weight], "kernel_ohwc", perm=[0, 2, 3, 1])
    kernel_matrix = b.op("Reshape", [kernel_matrix, b.const(np.array([out_channels, taps * channels], i64), "shape")],
                         "kernel_o_kc")
    kernel_matrix = b.op("Transpose", [kernel_matrix], "kernel_kc_o", perm=[1, 0])
    columns = b.op("Reshape", [sampled, b.const(np.array([-1, positions, taps * channels], i64), "shape")], "columns")
    out = b.op("MatMul", [columns, kernel_matrix], "conv")  # (N, P, O)
    out = b.op("Transpose", [out], "conv_nop", perm=[0, 2, 1])
    out = b.op("Reshape", [out, b.const(np.array([-1, out_channels, out_h, out_w], i64), "shape")], "conv_nchw")
    if bias is not None:
        out = b.op("Add", [out, b.op("Reshape", [bias, b.const(np.array([1, -1, 1, 1], i64), "shape")], "bias")],
                   "biased")
    if element != TensorProto.FLOAT:
        b.nodes.append(helper.make_node("Cast", [out], [node.output[0]], name=f"{b.prefix}/output", to=element))
    else:
        b.nodes.append(helper.make_node("Identity", [out], [node.output[0]], name=f"{b.prefix}/output"))
    return b


def deform_conv_inputs(node: onnx.NodeProto) -> tuple[str, str, str, str | None, str | None]:
    """A DeformConv's (X, W, offset, B, mask) tensor names; None for an optional input left out."""
    optional = [node.input[i] if len(node.input) > i and node.input[i] else None for i in (3, 4)]
    return node.input[0], node.input[1], node.input[2], optional[0], optional[1]


def is_onnx_deform_conv(node: onnx.NodeProto) -> bool:
    return node.op_type == "DeformConv" and node.domain in ("", "ai.onnx")


def rewrite_deform_convs(model: onnx.ModelProto, rewrite) -> tuple[onnx.ModelProto, int]:
    """A copy of `model` in which `rewrite(node, graph)` has replaced every ONNX DeformConv (it
    appends the replacement's nodes and initializers to `graph`), and how many there were; the
    model itself when it has none."""
    count = sum(is_onnx_deform_conv(node) for node in model.graph.node)
    if not count:
        return model, 0
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    del rewritten.graph.node[:]
    for node in model.graph.node:
        if is_onnx_deform_conv(node):
            rewrite(node, rewritten.graph)
        else:
            rewritten.graph.node.append(node)
    return rewritten, count


def decompose_deform_conv(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """`model` with every DeformConv replaced by ordinary ops (Floor, Gather, Mul, MatMul, ...),
    and how many there were. Exact up to float rounding: the arithmetic is DeformConv's."""
    if not any(is_onnx_deform_conv(node) for node in model.graph.node):
        return model, 0
    shapes, types = _tensor_shapes(model)

    def decompose(node: onnx.NodeProto, graph: onnx.GraphProto) -> None:
        built = _decompose(node, shapes, types)
        graph.node.extend(built.nodes)
        graph.initializer.extend(built.constants)

    return rewrite_deform_convs(model, decompose)
