"""OpenVINO's graph passes: what its CPU plugin runs slowly (or cannot read), rewritten to what
it runs fast.

Each pass module says why and what it measured; here each is registered with its stage and
its exactness (checked against ONNX Runtime in tests/passes/test_ov_rewrites.py and
tests/passes/test_split_outputs.py).
"""

from __future__ import annotations

from mtc.passes import GraphPass, PassContext, register_pass
from mtc.passes.openvino.deform_conv import deform_conv_as_openvino_op, zero_padded_sampling
from mtc.passes.openvino.guide import channel_sum_as_conv, guide_as_conv
from mtc.passes.openvino.hsigmoid import hard_sigmoid_as_hsigmoid
from mtc.passes.openvino.pool import small_pools_as_convs
from mtc.passes.openvino.split_outputs import merge_split_outputs
from mtc.passes.openvino.upsample import drop_identity_resizes, upsample_as_transposed_conv


def _static(context: PassContext) -> bool:
    return bool(context.frame_sizes)


register_pass(GraphPass(
    name="deform_conv_as_openvino_op", backend="openvino", stage="onnx",
    exactness="within 1e-5 of the peak, with zero_padded_sampling (tests/passes/test_deform_conv.py::test_openvinos_deform_conv_matches_onnxruntimes_op)",
    run=lambda model, context: deform_conv_as_openvino_op(model), describe="{} DeformConv(s) as DeformableConv2D"))
register_pass(GraphPass(
    name="merge_split_outputs", backend="openvino", stage="onnx", exactness="bit-exact",
    run=lambda model, context: merge_split_outputs(model), describe="{} split output(s) merged"))
register_pass(GraphPass(
    name="zero_padded_sampling", backend="openvino", stage="read",
    exactness="within 1e-5 of the peak (tests/passes/test_deform_conv.py::test_openvinos_deform_conv_matches_onnxruntimes_op)",
    run=lambda model, context: zero_padded_sampling(model), describe="{} DeformableConvolution(s) zero-padded"))
register_pass(GraphPass(
    name="hard_sigmoid_as_hsigmoid", backend="openvino", stage="read",
    exactness="within 1e-6 on FP32 (tests/passes/test_ov_rewrites.py::test_pytorch_hard_sigmoid_becomes_hsigmoid_with_onnxruntimes_values)",
    run=lambda model, context: hard_sigmoid_as_hsigmoid(model), describe="{} HardSigmoid(s) as HSigmoid"))
register_pass(GraphPass(
    name="drop_identity_resizes", backend="openvino", stage="static", exactness="bit-exact",
    run=lambda model, context: drop_identity_resizes(model), describe="{} identity resize(s) dropped",
    applies=_static))
register_pass(GraphPass(
    name="upsample_as_transposed_conv", backend="openvino", stage="static",
    exactness="within 1e-5 (tests/passes/test_ov_rewrites.py::test_openvino_upsample_equals_onnxruntime_resize)",
    run=lambda model, context: upsample_as_transposed_conv(model, set(context.frame_sizes)),
    describe="{} full-resolution upsample(s) as transposed convolutions", applies=_static))
register_pass(GraphPass(
    name="guide_as_conv", backend="openvino", stage="static",
    exactness="within 1e-6 (tests/passes/test_ov_rewrites.py::test_guides_and_channel_sums_are_convs_with_onnxruntimes_values)",
    run=lambda model, context: guide_as_conv(model, set(context.frame_sizes)), describe="{} guide(s) as 1x1 convolutions",
    applies=_static))
register_pass(GraphPass(
    name="channel_sum_as_conv", backend="openvino", stage="static",
    exactness="within 1e-6 (tests/passes/test_ov_rewrites.py::test_guides_and_channel_sums_are_convs_with_onnxruntimes_values)",
    run=lambda model, context: channel_sum_as_conv(model, set(context.frame_sizes)),
    describe="{} channel sum(s) as 1x1 convolutions", applies=_static))
register_pass(GraphPass(
    name="small_pools_as_convs", backend="openvino", stage="static",
    exactness="within 1e-6 (tests/passes/test_ov_rewrites.py::test_small_pools_are_depthwise_convs_with_onnxruntimes_values)",
    run=lambda model, context: small_pools_as_convs(model), describe="{} pool(s) as depthwise convolutions",
    applies=_static))
