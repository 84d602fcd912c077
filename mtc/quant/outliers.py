"""Outlier-channel split: a quantized conv whose input has a few channels far wider than all the
others reads those channels through a float conv of its own.

An activation has one INT8 scale for all its channels, so every channel gets the step of the
widest one. Some trained networks carry a channel that is nearly constant and large (a ReLU
after a large folded batch-norm bias): on the image saliency model one decoder conv reads 32
channels of which one sits near 226 on every pixel while the next widest reaches 72 and the
median 13, so most channels keep a handful of levels; and the conv's large weights on the wide
channel cancel an equally large bias, so the conv amplifies what rounding leaves.

The split is exact in float (up to summation order):
    Conv(x, W, b) = Conv(Gather(x, inliers), W[:, inliers], b) + Conv(Gather(x, outliers), W[:, outliers])
The inliers' conv stays planned for INT8 and gets a range that fits them. The outliers' conv
stays float, as LLM.int8() (Dettmers et al., 2022) keeps outlier features in 16 bits: a few
input channels make no fast integer kernel, and a wide one would again get a coarse step.
Only a real gap in the channels' ranges counts as outliers, not a long tail of gradually wider
channels (a MobileNetV3 encoder has those, and splitting them measured no gain). Measured:
docs/quantization.md, "Presets".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from mtc.graph_edit import attribute, drop_unused_initializers, sort_nodes

# Split at a gap of at least this factor between consecutive channel ranges (widest first): the
# INT8 step of the channels left shrinks at least as much.
MIN_GAP = 3.0
# At most this share of a conv's input channels (at least one) is split off: a conv whose
# channels are spread out evenly has no outliers, only a wide distribution.
MAX_OUTLIER_SHARE = 1 / 8


@dataclass(frozen=True)
class ChannelSplit:
    conv: str
    channels: tuple[int, ...]  # input channels read by the outliers' conv
    range_before: float  # peak |x| of the conv's input over the calibration data
    range_after: float  # peak |x| of the channels left to the original conv


def outlier_channels(peaks: np.ndarray) -> tuple[int, ...]:
    """The input channels to split off, given each channel's peak |x|: the widest channels down
    to the first gap of MIN_GAP between consecutive ranges (widest first), if one comes within
    MAX_OUTLIER_SHARE of the channels; () when there is none."""
    peaks = np.asarray(peaks, np.float64)
    order = np.argsort(-peaks, kind="stable")
    limit = min(max(1, int(len(peaks) * MAX_OUTLIER_SHARE)), len(peaks) - 1)
    for count in range(1, limit + 1):
        if peaks[order[count - 1]] >= MIN_GAP * peaks[order[count]]:
            return tuple(sorted(int(c) for c in order[:count]))
    return ()


def split_candidate_inputs(model: onnx.ModelProto, conv_names: Iterable[str]) -> list[str]:
    """The input tensors of the named convs a split may apply to, whose per-channel ranges
    (`mtc.quant.ranges.channel_ranges`) `split_outlier_channels` needs."""
    return sorted({conv.input[0] for conv in _splittable_convs(model, set(conv_names))})


def split_outlier_channels(model: onnx.ModelProto, conv_names: Iterable[str],
                           ranges: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[onnx.ModelProto, list[ChannelSplit]]:
    """A copy of `model` where each named conv with outlier input channels (`outlier_channels`
    on the peaks of its input's per-channel `ranges` on the calibration data) is split as above;
    the outliers' convs are named by `outlier_conv_name`, for the caller to keep in float. Only
    ungrouped convs with initializer weights qualify, and only where `ranges` holds their input.
    Returns the model and the splits made (empty: `model` unchanged)."""
    candidates = [conv for conv in _splittable_convs(model, set(conv_names)) if conv.input[0] in ranges]
    if not candidates:
        return model, []
    peaks = {name: np.maximum(-low, high) for name, (low, high) in ranges.items()}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    initializers = {i.name: i for i in graph.initializer}
    splits = []
    names = {c.name for c in candidates}
    for conv in [n for n in graph.node if n.name in names]:
        channel_peak = peaks[conv.input[0]]
        weight = numpy_helper.to_array(initializers[conv.input[1]])
        if channel_peak.shape != (weight.shape[1],):
            continue
        outliers = outlier_channels(channel_peak)
        if not outliers:
            continue
        inliers = [c for c in range(weight.shape[1]) if c not in outliers]
        _split(graph, conv, weight, inliers, list(outliers))
        splits.append(ChannelSplit(conv.name, outliers, float(channel_peak.max()),
                                   float(channel_peak[inliers].max())))
    if not splits:
        return model, []
    sort_nodes(graph)
    drop_unused_initializers(graph)
    return onnx.shape_inference.infer_shapes(out), splits


def outlier_conv_name(conv: str) -> str:
    """The name of the conv that reads `conv`'s outlier channels after a split."""
    return f"{conv}__outliers"


def _split(graph: onnx.GraphProto, conv: onnx.NodeProto, weight: np.ndarray, inliers: list[int],
           outliers: list[int]) -> None:
    """Rewrite `conv` in place to read its inliers; add the outliers' conv and the sum."""
    name, source, output = conv.name, conv.input[0], conv.output[0]
    outlier_conv = outlier_conv_name(name)
    for part, channels in (("inliers", inliers), ("outliers", outliers)):
        graph.initializer.append(numpy_helper.from_array(np.array(channels, np.int64), f"{name}__{part}_index"))
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight[:, channels]),
                                                         f"{name}__{part}_weight"))
        graph.node.append(helper.make_node("Gather", [source, f"{name}__{part}_index"], [f"{name}__{part}_input"],
                                           axis=1, name=f"{name}__{part}_gather"))
    graph.node.append(helper.make_node("Conv", [f"{name}__outliers_input", f"{name}__outliers_weight"],
                                       [f"{outlier_conv}_output"], name=outlier_conv))
    graph.node[-1].attribute.extend(a for a in conv.attribute)
    graph.node.append(helper.make_node("Add", [f"{name}__inliers_output", f"{outlier_conv}_output"], [output],
                                       name=f"{name}__sum"))
    conv.input[0], conv.input[1] = f"{name}__inliers_input", f"{name}__inliers_weight"
    conv.output[0] = f"{name}__inliers_output"


def _splittable_convs(model: onnx.ModelProto, wanted: set[str]) -> list[onnx.NodeProto]:
    initializers = {i.name for i in model.graph.initializer}
    return [node for node in model.graph.node
            if node.op_type == "Conv" and node.name in wanted and node.input[1] in initializers
            and attribute(node, "group", 1) == 1]
