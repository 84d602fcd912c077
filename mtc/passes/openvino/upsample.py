"""Interpolate rewrites for OpenVINO: resizes that change nothing are dropped, and full-resolution
bilinear upsamples become depthwise transposed convolutions.

Identity resizes: a recurrent model's graph resizes the input by the downsample ratio and the refiner's
coefficients back to the frame size, so at ratio 1 three Interpolates map a tensor to its own
size. OpenVINO still runs them (about 1 ms each at 512x288); at scale 1 with these coordinate
modes every output samples exactly its own input pixel, so dropping them changes no value.
Measured at 512x288, ratio 1 (interleaved, outputs bit-identical): INT8 45.4 -> 43.6 ms (45.9 ->
42.8 in another run), alpha-only INT8 44.7 -> 43.8, FP32 71.2 -> 70.8.

Upsamples: OpenVINO's CPU Interpolate is slow for the large upsample at the end of a recurrent model's refiner
(A and b of the guided filter, from 1/4 to full resolution). With static shapes the factor is
known, and a bilinear upsample by an integer factor s with `pytorch_half_pixel` coordinates is
exactly a transposed convolution: pad one edge pixel on each side (coordinates are clamped at
the border), then scatter every input pixel through a separable triangle kernel with stride s.
Measured at 1920x1080 (INT8, FP32 float parts, interleaved): the full export 75.5 -> 55.0 ms,
alpha-only 60.9 -> 48.8 ms, the FP32 artifact 96.2 -> 75.4 ms; outputs equal within 3e-7.

Only upsamples of a few channels to the frame size are rewritten: that is where Interpolate's
per-pixel cost dominates. a recurrent model's decoder upsamples (32-128 channels, the last one to the frame
size at ratio 1) measured no faster as transposed convolutions (512x288: INT8 57.1 vs 56.9 ms,
FP32 83.8 vs 85.3 ms), and in INT8 graphs they feed quantized convolutions, where a 1e-7
difference can move a value across a rounding step.
"""

from __future__ import annotations

import numpy as np

from mtc.passes.openvino.ops import FEW_CHANNELS, constant_like, openvino_ops, replace_openvino_ops, static_nchw

LINEAR_MODES = ("linear", "linear_onnx")
# Coordinate modes that map output pixel x to input x exactly when the scale is 1 (not
# tf_half_pixel_for_nn, whose half-pixel shift rounds up under round_prefer_ceil).
IDENTITY_COORDINATES = ("half_pixel", "pytorch_half_pixel", "asymmetric", "align_corners")
MAX_FOLD_DEPTH = 8


def triangle_kernel(factor: int) -> np.ndarray:
    """1-D weights of a bilinear upsample by `factor` (pytorch_half_pixel), as a transposed-conv kernel.

    Even factors sample between input pixels (kernel of 2s taps); odd ones hit every input
    pixel once (2s - 1 taps).
    """
    centre = factor - 0.5 if factor % 2 == 0 else factor - 1
    taps = 2 * factor if factor % 2 == 0 else 2 * factor - 1
    return (1 - np.abs(np.arange(taps) - centre) / factor).astype(np.float32)


def _crop(factor: int) -> int:
    """Output pixels the transposed conv adds on each side, relative to the upsampled image."""
    return (3 * factor) // 2


def _integer_factors(source: tuple[int, ...], target: tuple[int, ...]) -> tuple[int, ...] | None:
    if source[:2] != target[:2]:
        return None
    factors = []
    for small, large in zip(source[2:], target[2:]):
        if large % small:
            return None
        factors.append(large // small)
    return tuple(factors) if min(factors) >= 2 else None


def _eligible(op, frame_sizes: set[tuple[int, int]]) -> tuple[int, int, int] | None:
    """(channels, factor_y, factor_x) for an Interpolate this module rewrites, else None."""
    if op.get_type_name() != "Interpolate":
        return None
    attributes = op.get_attributes()
    if (attributes.get("mode") not in LINEAR_MODES
            or attributes.get("coordinate_transformation_mode") != "pytorch_half_pixel"
            or attributes.get("antialias") or any(attributes.get("pads_begin", ())) or any(attributes.get("pads_end", ()))):
        return None
    source, target = static_nchw(op.input_value(0)), static_nchw(op.output(0))
    if source is None or target is None:
        return None
    if target[2:] not in frame_sizes or source[1] > FEW_CHANNELS:
        return None
    factors = _integer_factors(source, target)
    return None if factors is None else (source[1], *factors)


def upsample_as_transposed_conv(model, frame_sizes: set[tuple[int, int]]) -> int:
    """Rewrite, in place, every static bilinear Interpolate of `model` (an openvino.Model) that
    upsamples at most FEW_CHANNELS channels by integer factors to one of `frame_sizes`
    (height, width). Returns how many."""
    return replace_openvino_ops(model, lambda op: _transposed_conv(op, frame_sizes))


def _transposed_conv(op, frame_sizes: set[tuple[int, int]]):
    eligible = _eligible(op, frame_sizes)
    if eligible is None:
        return None
    ops = openvino_ops()
    channels, fy, fx = eligible
    edge = np.array([0, 0, 1, 1], np.int64)
    padded = ops.pad(op.input_value(0), edge, edge, "edge")
    kernel = np.outer(triangle_kernel(fy), triangle_kernel(fx))
    weights = constant_like(np.ascontiguousarray(np.broadcast_to(kernel, (channels, 1, 1, *kernel.shape))),
                            op.input_value(0))
    upsampled = ops.group_convolution_backprop_data(
        padded, weights, strides=[fy, fx], pads_begin=[_crop(fy), _crop(fx)], pads_end=[_crop(fy), _crop(fx)],
        dilations=[1, 1])
    upsampled.set_friendly_name(op.get_friendly_name())
    return upsampled.output(0)


def _constant_value(output, depth: int = 0) -> np.ndarray | None:
    """The value of `output` (an openvino Output) when a few ops compute it from constants alone,
    else None. The ratio frozen into the recurrent video model reaches its resize as Concat(constants), not yet folded."""
    from openvino import Tensor

    node = output.get_node()
    if node.get_type_name() == "Constant":
        return node.get_data()
    if node.get_type_name() == "Parameter" or depth >= MAX_FOLD_DEPTH:
        return None
    inputs = []
    for index in range(node.get_input_size()):
        value = _constant_value(node.input_value(index), depth + 1)
        if value is None:
            return None
        inputs.append(Tensor(np.ascontiguousarray(value)))
    shapes = [node.get_output_partial_shape(k) for k in range(node.get_output_size())]
    if not all(shape.is_static for shape in shapes):
        return None
    outputs = [Tensor(node.get_output_element_type(k), shape.to_shape()) for k, shape in enumerate(shapes)]
    try:
        if not node.evaluate(outputs, inputs):
            return None
    except RuntimeError:  # an op without a reference evaluation
        return None
    return outputs[output.get_index()].data.copy()


def _is_identity(op) -> bool:
    """Whether `op` is an Interpolate that returns its input unchanged (static shapes, scale 1)."""
    if op.get_type_name() != "Interpolate" or op.get_type_info().version_id != "opset11":
        return False
    attributes = op.get_attributes()
    if (attributes.get("mode") not in (*LINEAR_MODES, "nearest")
            or attributes.get("coordinate_transformation_mode") not in IDENTITY_COORDINATES
            or attributes.get("antialias") or any(attributes.get("pads_begin", ())) or any(attributes.get("pads_end", ()))):
        return False
    source, target = op.input(0).get_partial_shape(), op.output(0).get_partial_shape()
    if not (source.is_static and target.is_static) or source.to_shape() != target.to_shape():
        return False
    if attributes.get("shape_calculation_mode") == "sizes":
        return True  # the scale is output size / input size: exactly 1
    # A scale just above 1 can keep the size (floor(288 * 1.001) = 288) yet shift every sample.
    scales = _constant_value(op.input_value(1))
    return scales is not None and bool(np.all(scales == 1))


def drop_identity_resizes(model) -> int:
    """Remove, in place, every Interpolate of `model` (an openvino.Model, made static) that
    returns its input unchanged. Returns how many."""
    return replace_openvino_ops(model, lambda op: op.input_value(0) if _is_identity(op) else None)
