"""Activation equalization: rescale what a quantized conv reads so that its parts share the one
INT8 activation range fairly, folding the inverse into the conv's weights (the same float
function, up to rounding).

Concat inputs. A decoder conv reads Concat(upsampled features, encoder skip, the image at that
scale) through a single per-tensor scale, but the groups' ranges differ widely: on the recurrent
video model an encoder skip reaches 50 and the image 1, so the image channels keep about five
levels. Scaling group i by k_i before the Concat and the conv's weights for those input channels
by 1/k_i computes the same conv (in float, up to rounding). With k_i = sqrt(w_i / a_i), relative
to the widest group (a_i: the group's activation range on the calibration data, w_i: the range
of its weights), the activation and weight quantization noise of each group are balanced:
cross-layer equalization's rule (Nagel et al., 2019), applied across concat groups instead of
across two layers. The cost is one Mul per rescaled group on the Concat's inputs.

Measured on the recurrent video model (speed preset, built-in calibration; alpha vs FP32,
benchmarks/RESULTS.md): held-out built-in MAD/dtSSD 0.50/0.54 -> 0.42/0.45 at 512x288 and
0.73/0.67 -> 0.67/0.57 at 1920x1080; on real footage (evalset composites) 1.33/0.83 -> 1.22/0.76
and 1.21/0.90 -> 1.12/0.83, at the same speed within noise (12 input groups of 9 convs get a
Mul).

Depthwise conv inputs. A depthwise conv's output channel reads one input channel, so scaling
input channel c by k_c and its filters by 1/k_c computes the same conv, and costs the weights
nothing: they are quantized per output channel, whose scale follows. Each channel is scaled up
until it meets the edge of the tensor's range (at most MAX_CHANNEL_SCALE), so every channel gets
close to the full INT8 range instead of the widest channel's step, as a per-channel activation
scale would give it. The channels of a MobileNetV3 block spread out widely (after a hardswish
the widest reaches up to 16 times the median channel), and no other layer absorbs the scale: the
hardswish before it is not homogeneous. Its floor of -0.375 is shared by every channel, so
scaling a channel also scales its floor: the short side of the range may grow to
SHORT_SIDE_SHARE of the long side, which costs every channel a little of its step and gives the
narrow ones far more. The cost is one per-channel Mul on the conv's input. Measured:
docs/quantization.md, "Presets".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from mtc.graph_edit import attribute, drop_unused_initializers, producers, reader_counts, sort_nodes
from mtc.quant.ranges import collect_stats

# Groups whose scale would change by less than this are left alone (a Mul for nothing).
MIN_CHANGE = 0.05
# A depthwise input channel is scaled up at most this much: a channel nearly silent on the
# calibration data may not be on other footage, where a larger factor would clip it.
MAX_CHANNEL_SCALE = 16.0
# How far the short side of a depthwise input's range (the negative side, after a ReLU-like
# activation) may grow, as a share of the long side, by scaling channels up. Measured on the
# recurrent video model's check clips: 1/4 beat both 1/16 and no limit (docs/quantization.md).
SHORT_SIDE_SHARE = 1 / 4


@dataclass(frozen=True)
class GroupScale:
    conv: str
    tensor: str  # the Concat input that is scaled
    scale: float


def equalize_concat_inputs(model: onnx.ModelProto, conv_names: Iterable[str], feeds: Sequence[dict],
                           *, progress=None) -> tuple[onnx.ModelProto, list[GroupScale]]:
    """A copy of `model` where the Concat inputs of the named convs are rescaled as above.

    Only ungrouped convs with initializer weights whose input is a channel Concat read by that
    conv alone qualify. Returns the model and the scales applied (empty: `model` unchanged).
    """
    candidates = _concat_convs(model, set(conv_names))
    if not candidates:
        return model, []
    tensors = sorted({t for _, concat in candidates for t in concat.input})
    stats = collect_stats(model, tensors, feeds, progress=progress)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    initializers = {i.name: i for i in graph.initializer}
    nodes = {n.name: n for n in graph.node}
    applied = []
    for conv_name, original_concat in candidates:
        conv, concat = nodes[conv_name], nodes[original_concat.name]
        weight = numpy_helper.to_array(initializers[conv.input[1]]).copy()
        channels = [stats[t].shape[1] if stats[t].shape else 0 for t in concat.input]
        if sum(channels) != weight.shape[1] or any(stats[t].amax <= 0 for t in concat.input):
            continue
        starts = np.cumsum([0, *channels])
        weight_ranges = [float(np.abs(weight[:, a:b]).max()) for a, b in zip(starts[:-1], starts[1:])]
        if min(weight_ranges) <= 0:
            continue
        balance = [np.sqrt(w / stats[t].amax) for t, w in zip(concat.input, weight_ranges)]
        reference = balance[int(np.argmax(channels))]  # the widest group stays as it is
        for index, tensor in enumerate(list(concat.input)):
            scale = float(balance[index] / reference)
            if abs(scale - 1.0) < MIN_CHANGE:
                continue
            name = f"{conv_name}__equalize_{index}"
            graph.initializer.append(numpy_helper.from_array(np.array(scale, np.float32), f"{name}_scale"))
            graph.node.append(helper.make_node("Mul", [tensor, f"{name}_scale"], [name], name=name))
            concat.input[index] = name
            weight[:, starts[index]:starts[index + 1]] /= scale
            applied.append(GroupScale(conv_name, tensor, scale))
        if any(g.conv == conv_name for g in applied):
            equalized = f"{conv_name}__equalized_weight"
            graph.initializer.append(numpy_helper.from_array(weight.astype(np.float32), equalized))
            conv.input[1] = equalized
    if not applied:
        return model, []
    sort_nodes(graph)
    drop_unused_initializers(graph)
    return onnx.shape_inference.infer_shapes(out), applied


@dataclass(frozen=True)
class ChannelScales:
    conv: str
    channels: int  # input channels scaled (by more than MIN_CHANGE)
    largest: float  # the largest factor applied


def depthwise_candidate_inputs(model: onnx.ModelProto, conv_names: Iterable[str]) -> list[str]:
    """The input tensors of the named depthwise convs, whose per-channel ranges
    (`mtc.quant.ranges.channel_ranges`) `equalize_depthwise_inputs` needs."""
    return sorted({conv.input[0] for conv in _depthwise_convs(model, set(conv_names))})


def equalize_depthwise_inputs(model: onnx.ModelProto, conv_names: Iterable[str],
                              ranges: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[onnx.ModelProto, list[ChannelScales]]:
    """A copy of `model` where the input channels of the named depthwise convs are scaled as
    above (`channel_scales` of their input's per-channel `ranges` on the calibration data). Only
    convs with one input channel per group and initializer weights qualify, and only where
    `ranges` holds their input. Returns the model and the convs rescaled (empty: `model`
    unchanged)."""
    candidates = [conv for conv in _depthwise_convs(model, set(conv_names)) if conv.input[0] in ranges]
    if not candidates:
        return model, []
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    initializers = {i.name: i for i in graph.initializer}
    names = {c.name for c in candidates}
    applied = []
    for conv in [n for n in graph.node if n.name in names]:
        if ranges[conv.input[0]][0].shape != (attribute(conv, "group", 1),):
            continue
        scale = channel_scales(*ranges[conv.input[0]])
        if (scale == 1.0).all():
            continue
        weight = numpy_helper.to_array(initializers[conv.input[1]])
        name = f"{conv.name}__equalize_channels"
        shape = (1, len(scale)) + (1,) * (weight.ndim - 2)
        graph.initializer.append(numpy_helper.from_array(scale.astype(np.float32).reshape(shape), f"{name}_scale"))
        graph.node.append(helper.make_node("Mul", [conv.input[0], f"{name}_scale"], [name], name=name))
        # output channel o of a depthwise conv reads input channel o // (outputs per group)
        per_output = np.repeat(scale, weight.shape[0] // len(scale)).reshape((-1,) + (1,) * (weight.ndim - 1))
        graph.initializer.append(numpy_helper.from_array((weight / per_output).astype(np.float32),
                                                         f"{conv.name}__equalized_weight"))
        conv.input[0], conv.input[1] = name, f"{conv.name}__equalized_weight"
        applied.append(ChannelScales(conv.name, int((scale != 1.0).sum()), float(scale.max())))
    if not applied:
        return model, []
    sort_nodes(graph)
    drop_unused_initializers(graph)
    return onnx.shape_inference.infer_shapes(out), applied


def channel_scales(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Per channel with values in [low, high], the factor that brings it to the edge of the
    target range: the channels' joint range with its short side grown to SHORT_SIDE_SHARE of the
    long side; at most MAX_CHANNEL_SCALE, and 1 where the change would be under MIN_CHANGE."""
    low, high = np.minimum(np.asarray(low, np.float64), 0.0), np.maximum(np.asarray(high, np.float64), 0.0)
    top, bottom = high.max(), low.min()
    top, bottom = max(top, -bottom * SHORT_SIDE_SHARE), min(bottom, -top * SHORT_SIDE_SHARE)
    with np.errstate(divide="ignore"):
        fits = np.minimum(np.where(high > 0, top / high, np.inf), np.where(low < 0, bottom / low, np.inf))
    scale = np.minimum(fits, MAX_CHANNEL_SCALE)
    scale[(np.abs(scale - 1.0) < MIN_CHANGE) | ((low == 0) & (high == 0))] = 1.0
    return scale


def _depthwise_convs(model: onnx.ModelProto, wanted: set[str]) -> list[onnx.NodeProto]:
    initializers = {i.name: i for i in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type != "Conv" or node.name not in wanted or node.input[1] not in initializers:
            continue
        group = attribute(node, "group", 1)
        dims = initializers[node.input[1]].dims
        if group > 1 and dims[1] == 1 and dims[0] % group == 0:
            found.append(node)
    return found


def _concat_convs(model: onnx.ModelProto, wanted: set[str]) -> list[tuple[str, onnx.NodeProto]]:
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    writers, reads = producers(graph), reader_counts(graph)
    found = []
    for node in graph.node:
        if node.op_type != "Conv" or node.name not in wanted or node.input[1] not in initializers:
            continue
        if attribute(node, "group", 1) != 1:
            continue
        concat = writers.get(node.input[0])
        if concat is None or concat.op_type != "Concat" or attribute(concat, "axis", 0) not in (1, -3):
            continue
        if reads[node.input[0]] != 1 or any(name in initializers or not name for name in concat.input):
            continue
        found.append((node.name, concat))
    return found
