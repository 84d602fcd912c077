"""A guided filter's full-resolution channel mixing as 1x1 convolutions, for OpenVINO.

A recurrent model's refiner builds its full-resolution guide as Concat(src, ReduceMean(src, channels)). On
OpenVINO's CPU plugin that is a ReduceMean, a Concat in planar layout and a reorder of the
4-channel full-resolution result to channels-last for the elementwise tail. A 1x1 convolution
with weights [identity; 1/C ...] computes the same tensor and writes the tail's layout directly.
Measured at 1920x1080, ratio 0.25 (interleaved): INT8 56.4 -> 53.1 ms, the openvino preset's
INT8 53.4 -> 50.1 ms, FP32 78.1 -> 77.6 ms; at 512x288 no change (41.1 vs 41.4 ms). Values
differ by float rounding at most (a mean of three vs a sum of thirds: max |diff| <= 2e-6).

The alpha-only export (the family's alpha-only rewrite) computes alpha as ReduceSum(up([A, b]) * guide)
over channels, with the guide Pad(ReduceMean(src), one channel of 1s): [mean, 1]. OpenVINO runs
that Pad with a reference kernel in planar layout, reorders its result, and reduces the 2
channels of a channels-last tensor slowly. The padded guide is the same 1x1 convolution with a
bias for the constant channel, and a channel sum is a 1x1 convolution with weights 1 (exact for
two channels: a + b in any order). Measured on the alpha-only artifacts at 1920x1080, ratio 0.25
(interleaved, outputs bit-identical): INT8 60.9 -> 53.9 ms, INT8 with BF16 float parts 52.5 ->
45.9 ms, FP32 72.1 -> 69.1 ms, FP32 in BF16 57.7 -> 49.6 ms.
"""

from __future__ import annotations

import numpy as np

from mtc.passes.openvino.ops import FEW_CHANNELS, constant_like, openvino_ops, replace_openvino_ops, static_nchw


def _few_channels(output) -> bool:
    shape = static_nchw(output)
    return shape is not None and shape[1] <= FEW_CHANNELS


def _at_frame_size(output, frame_sizes: set[tuple[int, int]]) -> bool:
    return static_nchw(output)[2:] in frame_sizes


def _reduced_over_channels(op, type_name: str):
    """The input of a `type_name` reduction (ReduceMean, ReduceSum) over axis 1 with kept dims,
    of at most FEW_CHANNELS channels, else None."""
    if op.get_type_name() != type_name or not op.get_attributes().get("keep_dims"):
        return None
    axes = op.input_value(1).get_node()
    if axes.get_type_name() != "Constant" or [int(a) % 4 for a in np.ravel(axes.get_data())] != [1]:
        return None
    return op.input_value(0) if _few_channels(op.input_value(0)) else None


def _mean_guide_input(concat):
    """The image X of a Concat(X, ReduceMean(X, axis 1, keep dims)) over channels, else None."""
    if concat.get_type_name() != "Concat" or concat.get_input_size() != 2 or concat.get_attributes().get("axis") not in (1, -3):
        return None
    image = concat.input_value(0)
    return image if _reduced_over_channels(concat.input_value(1).get_node(), "ReduceMean") == image else None


def _padded_mean_input(pad):
    """(X, appended channels, their value) of a Pad(ReduceMean(X, axis 1, keep dims)) that only
    appends constant channels, else None."""
    if pad.get_type_name() != "Pad" or pad.get_attributes().get("pad_mode") != "constant" or pad.get_input_size() < 4:
        return None
    begins, ends, value = (pad.input_value(k).get_node() for k in (1, 2, 3))
    if any(node.get_type_name() != "Constant" for node in (begins, ends, value)):
        return None
    begins, ends = np.ravel(begins.get_data()), np.ravel(ends.get_data())
    if len(ends) != 4 or any(begins) or ends[1] < 1 or any(ends[[0, 2, 3]]):
        return None
    image = _reduced_over_channels(pad.input_value(0).get_node(), "ReduceMean")
    return None if image is None else (image, int(ends[1]), float(np.ravel(value.get_data())[0]))


def _conv1x1(image, weights: np.ndarray):
    return openvino_ops().convolution(image, constant_like(weights, image), [1, 1], [0, 0], [0, 0], [1, 1])


def guide_as_conv(model, frame_sizes: set[tuple[int, int]]) -> int:
    """Rewrite, in place, every channel-mean guide of `model` (an openvino.Model, made static) at
    one of `frame_sizes` (height, width), Concat(X, mean) or the mean padded with constant
    channels, as a 1x1 convolution. Returns how many."""
    return replace_openvino_ops(model, lambda op: _guide_conv(op, frame_sizes))


def _guide_conv(op, frame_sizes: set[tuple[int, int]]):
    image, padded = _mean_guide_input(op), _padded_mean_input(op)
    if padded is not None:
        image = padded[0]
    if image is None or not _at_frame_size(image, frame_sizes):
        return None
    channels = static_nchw(image)[1]
    if padded is None:  # [X; mean]
        weights = np.zeros((channels + 1, channels, 1, 1), np.float32)
        weights[np.arange(channels), np.arange(channels)] = 1.0
        weights[channels] = 1.0 / channels
        guide = _conv1x1(image, weights)
    else:  # [mean; value ...]
        _, appended, value = padded
        weights = np.zeros((1 + appended, channels, 1, 1), np.float32)
        weights[0] = 1.0 / channels
        bias = np.full((1, 1 + appended, 1, 1), value, np.float32)
        bias[0, 0] = 0.0
        guide = openvino_ops().add(_conv1x1(image, weights), constant_like(bias, image))
    guide.set_friendly_name(op.get_friendly_name())
    return guide.output(0)


def channel_sum_as_conv(model, frame_sizes: set[tuple[int, int]]) -> int:
    """Rewrite, in place, every ReduceSum over the channels (kept) of a tensor of at most
    FEW_CHANNELS channels at one of `frame_sizes` as a 1x1 convolution with weights 1. Returns
    how many."""
    return replace_openvino_ops(model, lambda op: _sum_conv(op, frame_sizes))


def _sum_conv(op, frame_sizes: set[tuple[int, int]]):
    terms = _reduced_over_channels(op, "ReduceSum")
    if terms is None or not _at_frame_size(terms, frame_sizes):
        return None
    conv = _conv1x1(terms, np.ones((1, static_nchw(terms)[1], 1, 1), np.float32))
    conv.set_friendly_name(op.get_friendly_name())
    return conv.output(0)
