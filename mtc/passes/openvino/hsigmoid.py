"""PyTorch's hardsigmoid, exported as ONNX HardSigmoid, as OpenVINO's HSigmoid.

ONNX had no HardSwish before opset 14, so MobileNetV3's hardswish reaches ONNX as
Mul(x, HardSigmoid(x, alpha=1/6, beta=0.5)), and its squeeze-excite gates as HardSigmoid too
(A recurrent model's encoder: 28, 20 of them hardswish). OpenVINO's CPU plugin runs each HardSigmoid as a node
of its own in planar layout, with a reorder from and back to the channels-last layout of the
convolutions around it. HSigmoid, relu6(x + 3) / 6, is the same function; the plugin fuses it
into the neighbouring convolutions and elementwise subgraphs, and x * HSigmoid(x) becomes HSwish.
Measured (interleaved, 2 threads): 512x288 INT8 44.8 -> 41.4 ms, FP32 75.8 -> 71.2 ms;
1920x1080 ratio 0.25 INT8 53.5 -> 52.0 ms, alpha-only INT8 50.8 -> 48.2 ms. Values differ by
float rounding (FP32 alpha max |diff| 5e-6); in an INT8 graph such a difference can move a value
across a rounding step. On real footage (bench_peers) the speed preset's error against FP32 did
not change (MAD / dtSSD 0.65 / 0.49 at 512x288, 0.69 / 0.56 at HD); the openvino preset's at HD
went from 1.05 / 0.75 to 1.16 / 0.81.
"""

from __future__ import annotations

import numpy as np

from mtc.passes.openvino.ops import openvino_ops, replace_openvino_ops

PYTORCH_ALPHA, PYTORCH_BETA = 1.0 / 6.0, 0.5


def _scalar(output) -> float | None:
    node = output.get_node()
    if node.get_type_name() != "Constant" or node.get_output_partial_shape(0).to_shape() not in ([], [1]):
        return None
    return float(np.ravel(node.get_data())[0])


def _is_pytorch_hardsigmoid(op) -> bool:
    if op.get_type_name() != "HardSigmoid":
        return False
    alpha, beta = _scalar(op.input_value(1)), _scalar(op.input_value(2))
    return alpha is not None and abs(alpha - PYTORCH_ALPHA) < 1e-7 and beta == PYTORCH_BETA


def hard_sigmoid_as_hsigmoid(model) -> int:
    """Rewrite, in place, every HardSigmoid of `model` (an openvino.Model) with PyTorch's constants
    (alpha 1/6, beta 0.5) as HSigmoid. Returns how many."""
    return replace_openvino_ops(model, _hsigmoid)


def _hsigmoid(op):
    if not _is_pytorch_hardsigmoid(op):
        return None
    hsigmoid = openvino_ops().hsigmoid(op.input_value(0))
    hsigmoid.set_friendly_name(op.get_friendly_name())
    return hsigmoid.output(0)
