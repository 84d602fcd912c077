"""ONNX Runtime's graph passes: ops an older ONNX Runtime cannot run, rewritten to ones it can.

ONNX Runtime has a DeformConv kernel from 1.31; mtc supports older versions, which get the
exact decomposition instead (tests/passes/test_deform_conv.py).
"""

from __future__ import annotations

from mtc.passes import GraphPass, register_pass
from mtc.passes.deform_conv import decompose_deform_conv

FIRST_WITH_DEFORM_CONV = (1, 31)


def has_deform_conv(version: str) -> bool:
    """Whether ONNX Runtime `version` ("1.32.0", "1.30.1.dev…") has a DeformConv kernel."""
    major, minor = (int(part) for part in version.split(".")[:2])
    return (major, minor) >= FIRST_WITH_DEFORM_CONV


def _lacks_deform_conv(context) -> bool:
    import onnxruntime

    return not has_deform_conv(onnxruntime.__version__)


register_pass(GraphPass(
    name="decompose_deform_conv", backend="onnxruntime", stage="onnx",
    exactness="within 1e-5 (tests/passes/test_deform_conv.py::test_decomposed_deform_conv_matches_onnxruntimes_op)",
    run=lambda model, context: decompose_deform_conv(model), describe="{} DeformConv(s) decomposed",
    applies=_lacks_deform_conv))
