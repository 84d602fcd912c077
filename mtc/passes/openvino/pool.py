"""2x2 average pools of a few channels as depthwise convolutions, for OpenVINO.

The recurrent video model pools its 3-channel input three times (2x2, stride 2) for the decoder's skip inputs. OpenVINO's
CPU plugin runs AvgPool in a 16-channel blocked layout, so it first reorders the planar image
into blocks, padding 3 channels to 16 (0.8 ms at 512x288, more than the pool itself). A depthwise
2x2 convolution with weights 1/4 and stride 2 computes the same averages where every window is
whole, that is, where the pool has no padding and the input's height and width are even (with
odd sizes, ceil-mode pools average partial windows at the edge, which a convolution cannot).
Measured at 512x288 (interleaved, 2 threads, outputs bit-identical): INT8 35.9 -> 35.0 ms and
41.3 -> 39.8 ms (the openvino and speed presets); at 1920x1080, ratio 0.25, 58.6 -> 57.9 ms
(two of the three pools have even sizes there).
"""

from __future__ import annotations

import numpy as np

from mtc.passes.openvino.ops import FEW_CHANNELS, constant_like, openvino_ops, replace_openvino_ops, static_nchw


def _whole_window_channels(op) -> int | None:
    """Channels of a 2x2, stride-2, unpadded AvgPool over even static sizes, else None."""
    if op.get_type_name() != "AvgPool":
        return None
    attributes = op.get_attributes()
    if (list(attributes.get("kernel", ())) != [2, 2] or list(attributes.get("strides", ())) != [2, 2]
            or any(attributes.get("pads_begin", ())) or any(attributes.get("pads_end", ()))
            or attributes.get("auto_pad") not in ("explicit", "notset", "valid")):
        return None
    shape = static_nchw(op.input_value(0))
    if shape is None:
        return None
    _, channels, height, width = shape
    return channels if channels <= FEW_CHANNELS and height % 2 == 0 and width % 2 == 0 else None


def small_pools_as_convs(model) -> int:
    """Rewrite, in place, every 2x2/2 AvgPool of `model` (an openvino.Model, made static) over at
    most FEW_CHANNELS channels and even sizes as a depthwise convolution. Returns how many."""
    return replace_openvino_ops(model, _depthwise_average)


def _depthwise_average(op):
    channels = _whole_window_channels(op)
    if channels is None:
        return None
    ops = openvino_ops()
    weights = constant_like(np.full((channels, 1, 1, 2, 2), 0.25, np.float32), op.input_value(0))
    conv = ops.group_convolution(op.input_value(0), weights, [2, 2], [0, 0], [0, 0], [1, 1])
    conv.set_friendly_name(op.get_friendly_name())
    return conv.output(0)
