"""Exact image input: a quantized conv that reads a normalized image reads the image itself.

A network's first conv reads (x - mean_c) / std_c of an image x whose values are 8-bit levels
k / 255. One INT8 scale for that normalized tensor puts its levels off the pixel grid (the
channels' std differ, and the step is the joint range over 255), so quantizing it moves pixels
by up to about a gray level, and some networks' alphas move far for that (an image saliency
model's moved by more than its dense INT8 error; benchmarks/RESULTS.md). Folding the per-channel
affine into the conv's weights and bias makes the conv read the image itself, centred:
x - 128/255, whose levels -128..127 over 255 are exactly uint8's grid with step 1/255 and zero
point 128 (`exact_range`), so quantizing the input costs nothing. The centring keeps what the
weights' rounding costs where it was: a rounding error times an uncentred image would add an
error that follows the image's brightness (which made the recurrent video model flicker more).

The conv padded the normalized tensor with zeros, which is x = mean_c; so a padded conv reads
Pad(x - mean) + mean - 128/255 and runs with no padding of its own (the pixels inside are on
the grid again, up to float rounding far below a step; the padding rounds to the nearest level).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from mtc.graph_edit import attribute, producers, remove_dead_nodes, sort_nodes
from mtc.quant.qdq import ActivationRange

# The per-channel affine ops walked back from a conv's input: y = op(x, constant).
AFFINE_OPS = ("Sub", "Add", "Mul", "Div")
# The folded conv reads the image minus this: 8-bit levels -128..127 over 255.
CENTRE = 128 / 255
# The centred image's range: uint8 with step 1/255 and zero point 128 holds every level exactly.
IMAGE_RANGE: ActivationRange = (-128 / 255, 127 / 255)


@dataclass(frozen=True)
class FoldedNormalization:
    conv: str
    tensor: str  # what the conv reads now (the quantized tensor): the centred image, padded if the conv was
    image: str  # the tensor before the normalization
    padded: bool  # the conv's padding became explicit


def fold_input_normalization(model: onnx.ModelProto, conv_names: Iterable[str]
                             ) -> tuple[onnx.ModelProto, list[FoldedNormalization]]:
    """A copy of `model` where each named conv that reads a per-channel affine (a chain of
    Sub/Add/Mul/Div by constants of one value per channel) of a tensor reads that tensor instead,
    the affine folded into its weights and bias as above. Only ungrouped convs with initializer
    weights and explicit (or no) padding qualify. Returns the model and the folds made (empty:
    `model` unchanged)."""
    found = _foldable(model, set(conv_names))
    if not found:
        return model, []
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    initializers = {i.name: i for i in graph.initializer}
    folds = []
    for conv in [n for n in graph.node if n.name in found]:
        image, gain, offset = found[conv.name]
        weight = numpy_helper.to_array(initializers[conv.input[1]])
        spatial = weight.shape[2:]
        shape = (1, weight.shape[1]) + (1,) * len(spatial)
        folded_weight = weight * gain.reshape(shape)
        bias = (numpy_helper.to_array(initializers[conv.input[2]]) if len(conv.input) > 2 and conv.input[2]
                else np.zeros(weight.shape[0], np.float32))
        # normalized = gain * image + offset = gain * centred + (gain * CENTRE + offset)
        folded_bias = bias + (weight * (gain * CENTRE + offset).reshape(shape)).sum(axis=tuple(range(1, weight.ndim)))
        name = f"{conv.name}__image_input"
        pads = list(attribute(conv, "pads", [0] * 2 * len(spatial)))
        source = _centred_image(graph, name, image, -offset / gain, pads, shape)
        if any(pads):
            for a in conv.attribute:
                if a.name == "pads":
                    a.ints[:] = [0] * len(pads)
        graph.initializer.append(numpy_helper.from_array(folded_weight.astype(np.float32), f"{name}_weight"))
        graph.initializer.append(numpy_helper.from_array(folded_bias.astype(np.float32), f"{name}_bias"))
        conv.input[0], conv.input[1] = source, f"{name}_weight"
        if len(conv.input) > 2:
            conv.input[2] = f"{name}_bias"
        else:
            conv.input.append(f"{name}_bias")
        folds.append(FoldedNormalization(conv.name, source, image, bool(any(pads))))
    sort_nodes(graph)
    remove_dead_nodes(graph)
    return onnx.shape_inference.infer_shapes(out), folds


def _foldable(model: onnx.ModelProto, wanted: set[str]) -> dict[str, tuple[str, np.ndarray, np.ndarray]]:
    """conv name -> (image, gain, offset) for each wanted conv that qualifies (see
    `fold_input_normalization`)."""
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    constant_nodes = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    writers = producers(graph)

    def per_channel(name: str, channels: int) -> np.ndarray | None:
        # only small constants are read: a weight is never one value per channel of an image
        proto = initializers.get(name)
        if proto is None and name in constant_nodes:
            proto = attribute(constant_nodes[name], "value")
        if proto is None or np.prod(proto.dims, dtype=np.int64) > channels:
            return None
        return _per_channel(numpy_helper.to_array(proto), channels)

    found = {}
    for conv in graph.node:
        if conv.op_type != "Conv" or conv.name not in wanted or conv.input[1] not in initializers:
            continue
        if attribute(conv, "group", 1) != 1 or attribute(conv, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        affine = _affine_source(conv.input[0], writers, per_channel, initializers[conv.input[1]].dims[1])
        if affine is None:
            continue
        _, gain, offset = affine
        if np.all(np.isfinite(gain)) and np.all(gain != 0) and np.all(np.isfinite(offset)):
            found[conv.name] = affine
    return found


def exact_range(minimum: float, maximum: float) -> ActivationRange | None:
    """IMAGE_RANGE, the 8-bit image's own grid, for a folded conv input whose values on the
    calibration data lie in it (a [0, 1] image, centred); None otherwise (calibrate it as any
    tensor)."""
    low, high = IMAGE_RANGE
    tolerance = 1e-6  # float32 rounding of image - CENTRE
    return IMAGE_RANGE if low - tolerance <= minimum and maximum <= high + tolerance else None


def _affine_source(tensor: str, writers: dict, per_channel, channels: int):
    """(x, gain, offset) with `tensor` = gain * x + offset per channel, walking back through
    AFFINE_OPS by per-channel constants (`per_channel(name, channels)`: the constant's value per
    channel, or None) as far as they go; None if not even one."""
    gain, offset = np.ones(channels, np.float64), np.zeros(channels, np.float64)
    walked = 0
    while tensor in writers and writers[tensor].op_type in AFFINE_OPS:
        node = writers[tensor]
        operands = [per_channel(name, channels) for name in node.input]
        if len(node.input) != 2 or (operands[0] is None) == (operands[1] is None):
            break
        constant_first = operands[0] is not None
        value = operands[0] if constant_first else operands[1]
        if node.op_type == "Add":
            offset = offset + gain * value
        elif node.op_type == "Sub":
            if constant_first:  # y = c - x
                offset, gain = offset + gain * value, -gain
            else:
                offset = offset - gain * value
        elif node.op_type == "Mul":
            gain = gain * value
        elif constant_first:  # y = c / x is no affine
            break
        else:
            gain = gain / value
        tensor = node.input[1] if constant_first else node.input[0]
        walked += 1
    return (tensor, gain, offset) if walked else None


def _per_channel(value: np.ndarray, channels: int) -> np.ndarray | None:
    """`value` as one number per channel (axis 1 of an NCHW-like tensor), or None if it does
    not broadcast that way."""
    if not np.issubdtype(value.dtype, np.floating):
        return None
    if value.size == 1:
        return np.full(channels, float(value.reshape(())), np.float64)
    squeezed = [d for d in value.shape if d != 1]
    if squeezed != [channels] or value.ndim < 3 or value.shape[-3] != channels:
        return None  # one value per channel must sit on the channel axis (C, 1, 1) / (1, C, 1, 1)
    return value.reshape(channels).astype(np.float64)


def _centred_image(graph: onnx.GraphProto, name: str, image: str, level: np.ndarray, pads: list[int],
                   shape: tuple[int, ...]) -> str:
    """image - CENTRE, or with a conv's `pads`: Pad(image - level) + level - CENTRE, the image
    padded with `level` per channel (where the normalized tensor was 0). Returns its name."""
    if not any(pads):
        graph.initializer.append(numpy_helper.from_array(np.array(CENTRE, np.float32), f"{name}_centre_level"))
        graph.node.append(helper.make_node("Sub", [image, f"{name}_centre_level"], [f"{name}_centred"],
                                           name=f"{name}_centre"))
        return f"{name}_centred"
    half = len(pads) // 2
    graph.initializer.extend([
        numpy_helper.from_array(level.astype(np.float32).reshape(shape), f"{name}_level"),
        numpy_helper.from_array((level - CENTRE).astype(np.float32).reshape(shape), f"{name}_centred_level"),
        numpy_helper.from_array(np.array([0, 0, *pads[:half], 0, 0, *pads[half:]], np.int64), f"{name}_pads")])
    graph.node.extend([
        helper.make_node("Sub", [image, f"{name}_level"], [f"{name}_zeroed"], name=f"{name}_zero"),
        helper.make_node("Pad", [f"{name}_zeroed", f"{name}_pads"], [f"{name}_padded_zeroed"], name=f"{name}_pad",
                         mode="constant"),
        helper.make_node("Add", [f"{name}_padded_zeroed", f"{name}_centred_level"], [f"{name}_padded"],
                         name=f"{name}_centre"),
    ])
    return f"{name}_padded"
