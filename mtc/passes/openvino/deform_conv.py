"""ONNX `DeformConv` as OpenVINO's own DeformableConvolution (opset 8).

OpenVINO's ONNX reader has no conversion for the standard op, but it reads the custom
`org.openvinotoolkit::DeformableConv2D` as a DeformableConvolution. Two steps, because that
reader leaves one attribute at its default:
- on the ONNX graph, each DeformConv becomes DeformableConv2D (inputs reordered: data, offsets,
  kernel, mask), with its bias as an Add after it; the node's name carries a marker;
- on the graph as read, each marked node gets `bilinear_interpolation_pad`: taps up to one pixel
  outside the image blend with zeros, as ONNX's DeformConv (and torchvision) sample. Without it
  the results differ near the borders.

Why not the decomposition (:mod:`mtc.passes.deform_conv`) OpenVINO used to get: in BF16 the
plugin computed its sampling positions (row or column plus a fractional offset) with 8 mantissa
bits, far from FP32; the native node samples in FP32 and runs faster in both precisions (measured
in docs/models.md). Exactness: tests/passes/test_deform_conv.py.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from mtc.passes.deform_conv import deform_conv_inputs, rewrite_deform_convs
from mtc.passes.openvino.ops import openvino_ops, replace_openvino_ops

OPENVINO_DOMAIN = "org.openvinotoolkit"
OPENVINO_OP = "DeformableConv2D"
# Ends the name of every node written here, so the read-stage step touches only those.
MARKER = "/mtc_deform_conv"


def deform_conv_as_openvino_op(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """`model` with every ONNX DeformConv written as OpenVINO's DeformableConv2D (its bias as an
    Add after it), and how many there were. :func:`zero_padded_sampling` must then run on the
    graph OpenVINO reads."""
    rewritten, count = rewrite_deform_convs(model, _rewrite)
    if count and not any(o.domain == OPENVINO_DOMAIN for o in rewritten.opset_import):
        rewritten.opset_import.append(helper.make_opsetid(OPENVINO_DOMAIN, 1))
    return rewritten, count


def _rewrite(node: onnx.NodeProto, graph: onnx.GraphProto) -> None:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    x, weight, offset, bias, mask = deform_conv_inputs(node)
    name = (node.name or node.output[0]) + MARKER
    unbiased = f"{name}/unbiased" if bias else node.output[0]
    graph.node.append(helper.make_node(
        OPENVINO_OP, [x, offset, weight] + ([mask] if mask else []), [unbiased], name=name, domain=OPENVINO_DOMAIN,
        strides=attrs.get("strides", [1, 1]), dilations=attrs.get("dilations", [1, 1]), pads=attrs.get("pads", [0] * 4),
        group=attrs.get("group", 1), deformable_groups=attrs.get("offset_group", 1)))
    if bias:
        shape = f"{name}/bias_shape"
        graph.initializer.append(numpy_helper.from_array(np.array([1, -1, 1, 1], np.int64), shape))
        graph.node.append(helper.make_node("Reshape", [bias, shape], [f"{name}/bias"], name=f"{name}/bias"))
        graph.node.append(helper.make_node("Add", [unbiased, f"{name}/bias"], [node.output[0]], name=f"{name}/add_bias"))


def zero_padded_sampling(model) -> int:
    """Turn on, in place, the zero padding of the DeformableConvolutions that
    :func:`deform_conv_as_openvino_op` wrote, in `model` (an openvino.Model); returns how many."""
    return replace_openvino_ops(model, _zero_padded)


def _zero_padded(op):
    if op.get_type_name() != "DeformableConvolution" or not op.get_friendly_name().endswith(MARKER):
        return None
    attrs = op.get_attributes()
    if attrs["bilinear_interpolation_pad"]:
        return None
    inputs = [op.input_value(i) for i in range(op.get_input_size())]
    padded = openvino_ops().deformable_convolution(
        inputs[0], inputs[1], inputs[2], attrs["strides"], attrs["pads_begin"], attrs["pads_end"], attrs["dilations"],
        inputs[3] if len(inputs) > 3 else None, attrs["auto_pad"], attrs["group"], attrs["deformable_group"],
        bilinear_interpolation_pad=True)
    padded.set_friendly_name(op.get_friendly_name())
    return padded.output(0)
