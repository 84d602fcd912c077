"""OpenVINO graph helpers the OpenVINO passes share: node factories, typed constants, shapes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def openvino_ops():
    """OpenVINO's opset13 node factories (under openvino.runtime before OpenVINO 2025)."""
    try:
        from openvino import opset13
    except ImportError:
        from openvino.runtime import opset13
    return opset13


def constant_like(values: np.ndarray, output):
    """An OpenVINO constant holding `values` in the element type of `output` (an Output): the
    rewrites' weights must match their data, which is f16 in an FP16 artifact."""
    return openvino_ops().constant(values.astype(output.get_element_type().to_dtype()))


# The OpenVINO rewrites take tensors of at most this many channels: where OpenVINO's 16-channel
# blocked and channels-last kernels waste most of each vector (full-resolution image-like tensors).
FEW_CHANNELS = 8


def static_nchw(output) -> tuple[int, int, int, int] | None:
    """The static 4-D shape of an OpenVINO Output, else None."""
    shape = output.get_partial_shape()
    if not shape.is_static or len(shape) != 4:
        return None
    return tuple(int(d) for d in shape.to_shape())


def replace_openvino_ops(model, replacement: Callable[[Any], Any]) -> int:
    """Rewrite `model` (an openvino.Model) in place: every op for which `replacement(op)` returns
    an Output gets its output replaced by it. Returns how many ops were replaced."""
    replaced = 0
    for op in list(model.get_ordered_ops()):
        new_output = replacement(op)
        if new_output is not None:
            op.output(0).replace(new_output)
            replaced += 1
    if replaced:
        model.validate_nodes_and_infer_types()
    return replaced
