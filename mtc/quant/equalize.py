"""Concat-input equalization: each input of a quantized conv's channel Concat gets a fair share
of the one INT8 activation range.

A decoder conv reads Concat(upsampled features, encoder skip, the image at that scale) through a
single per-tensor scale, but the groups' ranges differ widely: on the recurrent video model an encoder skip reaches 50
and the image 1, so the image channels keep about five levels. Scaling group i by k_i before the
Concat and the conv's weights for those input channels by 1/k_i computes the same conv (in float,
up to rounding). With k_i = sqrt(w_i / a_i), relative to the widest group (a_i: the group's
activation range on the calibration data, w_i: the range of its weights), the activation and
weight quantization noise of each group are balanced: cross-layer equalization's rule (Nagel et
al., 2019), applied across concat groups instead of across two layers. The cost is one Mul per
rescaled group on the Concat's inputs.

Measured on the recurrent video model (speed preset, built-in calibration; alpha vs FP32, benchmarks/RESULTS.md):
held-out built-in MAD/dtSSD 0.50/0.54 -> 0.42/0.45 at 512x288 and 0.73/0.67 -> 0.67/0.57 at
1920x1080; on real footage (evalset composites) 1.33/0.83 -> 1.22/0.76 and 1.21/0.90 ->
1.12/0.83, at the same speed within noise (12 input groups of 9 convs get a Mul).
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
