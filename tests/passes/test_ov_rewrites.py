"""OpenVINO's exact graph rewrites, each against ONNX Runtime running the original graph:
identity resizes are dropped and full-resolution bilinear upsamples become depthwise transposed
convolutions (mtc.passes.openvino.upsample); a guided filter's channel-mean guides and
channel sums become 1x1 convolutions (mtc.passes.openvino.guide); 2x2 average pools of a few channels become
depthwise convolutions (mtc.passes.openvino.pool); PyTorch's HardSigmoid becomes HSigmoid
(mtc.passes.openvino.hsigmoid)."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'mtc[openvino]')")

import mtc.runtime  # noqa: E402
from mtc.backends import OrtBackend  # noqa: E402
from mtc.backends.openvino.session import OpenVinoBackend  # noqa: E402
from mtc.passes.openvino.guide import channel_sum_as_conv, guide_as_conv  # noqa: E402
from mtc.passes.openvino.hsigmoid import hard_sigmoid_as_hsigmoid  # noqa: E402
from mtc.passes.openvino.pool import small_pools_as_convs  # noqa: E402
from mtc.passes.openvino.upsample import (  # noqa: E402
    drop_identity_resizes,
    triangle_kernel,
    upsample_as_transposed_conv,
)


def _openvino_and_onnxruntime(path, feeds, caplog) -> tuple[np.ndarray, np.ndarray]:
    """`out` of the graph at `path` on OpenVINO (rewrites on, logged to caplog) and ONNX Runtime."""
    caplog.set_level(logging.DEBUG, logger="mtc")
    return OpenVinoBackend(path, cache=False).run(dict(feeds))["out"], OrtBackend(path).run(dict(feeds))["out"]


@pytest.mark.parametrize("factor, expected", [(2, [1, 3, 3, 1]), (4, [1, 3, 5, 7, 7, 5, 3, 1]), (3, [2, 4, 6, 4, 2])])
def test_triangle_kernels_are_bilinear_weights(factor, expected):
    kernel = triangle_kernel(factor)
    np.testing.assert_allclose(kernel, np.array(expected) / (2 * factor if factor % 2 == 0 else 2 * factor), atol=1e-7)
    assert kernel.sum() == pytest.approx(factor)  # every output pixel's weights sum to 1


def _tail_model(path, low, frame, channels=3):
    """coeffs (1xCxlow) -> bilinear Resize to the frame size -> * src (1xCxframe): RVM's tail shape."""
    resize = helper.make_node("Resize", ["coeffs", "", "", "sizes"], ["up"], mode="linear",
                              coordinate_transformation_mode="pytorch_half_pixel")
    graph = helper.make_graph(
        [resize, helper.make_node("Mul", ["up", "src"], ["out"])], "tail",
        [helper.make_tensor_value_info("src", TensorProto.FLOAT, [1, channels, "h", "w"]),
         helper.make_tensor_value_info("coeffs", TensorProto.FLOAT, [1, channels, "lh", "lw"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.array([1, channels, *frame], np.int64), "sizes")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    rng = np.random.default_rng(sum(frame))
    return path, {"src": rng.random((1, channels, *frame), dtype=np.float32),
                  "coeffs": rng.standard_normal((1, channels, *low)).astype(np.float32)}


@pytest.mark.parametrize("low, frame, rewritten", [
    ((5, 7), (20, 28), 1),   # x4, RVM at ratio 0.25
    ((5, 7), (10, 14), 1),   # x2
    ((5, 7), (15, 21), 1),   # x3: odd factors hit every input pixel
    ((5, 7), (10, 28), 1),   # x2 down, x4 across
    ((5, 7), (11, 28), 0),   # not an integer factor: Interpolate stays
])
def test_openvino_upsample_equals_onnxruntime_resize(tmp_path, caplog, low, frame, rewritten):
    got, expected = _openvino_and_onnxruntime(*_tail_model(tmp_path / "tail.onnx", low, frame), caplog)
    assert f"dropped, {rewritten} full-resolution upsample(s)" in caplog.text
    assert got.shape == expected.shape == (1, 3, *frame)
    assert np.abs(got - expected).max() < 1e-5


def _resize_chain_model(path, size):
    """src -> four Resizes that keep `size`: x1 by scales, by sizes, nearest x1, and x1.05 (whose
    floor keeps the size; kept, since by the letter of the spec its samples shift) -> out."""
    h, w = size
    nodes = [
        helper.make_node("Resize", ["src", "", "ones"], ["a"], mode="linear",
                         coordinate_transformation_mode="pytorch_half_pixel"),
        helper.make_node("Resize", ["a", "", "", "sizes"], ["b"], mode="linear",
                         coordinate_transformation_mode="half_pixel"),
        helper.make_node("Resize", ["b", "", "ones"], ["c"], mode="nearest",
                         coordinate_transformation_mode="asymmetric", nearest_mode="round_prefer_ceil"),
        helper.make_node("Resize", ["c", "", "almost_ones"], ["out"], mode="linear",
                         coordinate_transformation_mode="pytorch_half_pixel"),
    ]
    graph = helper.make_graph(
        nodes, "resizes", [helper.make_tensor_value_info("src", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.ones(4, np.float32), "ones"),
                     numpy_helper.from_array(np.array([1, 1, 1.05, 1.05], np.float32), "almost_ones"),
                     numpy_helper.from_array(np.array([1, 3, h, w], np.int64), "sizes")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path, {"src": np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)}


def test_identity_resizes_are_dropped_and_other_scales_kept(tmp_path, caplog):
    import openvino as ov

    path, feeds = _resize_chain_model(tmp_path / "resizes.onnx", (10, 12))  # floor(10 * 1.05) = 10
    got, expected = _openvino_and_onnxruntime(path, feeds, caplog)
    assert "openvino: 3 identity resize(s) dropped" in caplog.text
    assert got.shape == expected.shape == (1, 3, 10, 12)
    assert np.abs(got - expected).max() < 1e-6
    model = ov.Core().read_model(path)
    model.reshape({"src": [1, 3, 10, 12]})
    assert drop_identity_resizes(model) == 3
    assert [op.get_type_name() for op in model.get_ordered_ops()].count("Interpolate") == 1


def test_only_upsamples_to_the_frame_size_are_rewritten(tmp_path):
    import openvino as ov

    path, _ = _tail_model(tmp_path / "tail.onnx", (5, 7), (20, 28))
    model = ov.Core().read_model(path)
    model.reshape({"src": [1, 3, 20, 28], "coeffs": [1, 3, 5, 7]})

    assert upsample_as_transposed_conv(model, {(40, 56)}) == 0  # the Resize targets another size
    wide = ov.Core().read_model(_tail_model(tmp_path / "wide.onnx", (5, 7), (20, 28), channels=16)[0])
    wide.reshape({"src": [1, 16, 20, 28], "coeffs": [1, 16, 5, 7]})
    assert upsample_as_transposed_conv(wide, {(20, 28)}) == 0  # a decoder-style upsample of many channels
    assert upsample_as_transposed_conv(model, {(20, 28)}) == 1
    assert "Interpolate" not in {op.get_type_name() for op in model.get_ordered_ops()}
    assert "GroupConvolutionBackpropData" in {op.get_type_name() for op in model.get_ordered_ops()}


@pytest.mark.parametrize("artifact, ratio, identities, upsamples, guides, sums, pools",
                         [("rvm_artifact", 0.25, 0, 2, 1, 0, 2), ("rvm_alpha_artifact", 0.25, 0, 1, 1, 1, 2),
                          ("rvm_artifact", 1.0, 3, 0, 2, 0, 3), ("rvm_alpha_artifact", 1.0, 2, 0, 2, 1, 3)])
def test_rvm_refiner_is_rewritten_for_the_ratio(request, caplog, artifact, ratio, identities, upsamples, guides,
                                                sums, pools):
    # The full export upsamples A and b, the alpha-only one their 2-channel alpha pair. At ratio 1
    # the input's downsample and the refiner's resizes are x1 and are dropped; the decoder's last
    # upsample (32 channels, to the frame size) stays an Interpolate. The full-resolution guide is
    # at the frame size, and at ratio 1 the low-resolution one too; the alpha-only tail's guide is
    # the channel mean padded with a channel of 1s, and alpha the channel sum of its products. The input's three 2x2 pools are rewritten where their sizes
    # are even (pooling 256x144, 128x72, 64x36; at ratio 0.25, 64x36, 32x18 but not 16x9).
    # All 28 of the encoder's HardSigmoids carry PyTorch's constants. Values: test_openvino's clip parity runs at ratio 0.25.
    from mtc.data.builtin_clip import ClipSpec, builtin_clip

    frames = builtin_clip(ClipSpec(width=256, height=144, frames=3))
    caplog.set_level(logging.DEBUG, logger="mtc")
    alphas = {}
    for backend in ("openvino", "onnxruntime"):
        session = mtc.runtime.load(request.getfixturevalue(artifact), backend=backend, downsample_ratio=ratio)
        alphas[backend] = np.stack([session.process(frame).alpha.copy() for frame in frames])
    assert (f"{identities} identity resize(s) dropped, {upsamples} full-resolution upsample(s) as "
            f"transposed convolutions, {guides} guide(s) as 1x1 convolutions, {sums} channel sum(s) as 1x1 "
            f"convolutions, {pools} pool(s) as depthwise convolutions") in caplog.text
    assert "28 HardSigmoid(s) as HSigmoid" in caplog.text
    assert np.abs(alphas["openvino"] - alphas["onnxruntime"]).max() < 1e-4


def _guide_model(path, reduce_axis=1):
    """src (1x3xHxW) -> Concat(src, ReduceMean(src, reduce_axis)) -> * coeffs: RVM's refiner tail."""
    nodes = [helper.make_node("ReduceMean", ["src", "axes"], ["mean"], keepdims=1),
             helper.make_node("Concat", ["src", "mean"], ["guide"], axis=1 if reduce_axis == 1 else 3),
             helper.make_node("Mul", ["guide", "coeffs"], ["out"])]
    graph = helper.make_graph(
        nodes, "guide",
        [helper.make_tensor_value_info("src", TensorProto.FLOAT, [1, 3, "h", "w"]),
         helper.make_tensor_value_info("coeffs", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.array([reduce_axis], np.int64), "axes")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def test_only_channel_mean_guides_at_the_frame_size_are_rewritten(tmp_path):
    import openvino as ov

    def static(path):
        model = ov.Core().read_model(path)
        model.reshape({"src": [1, 3, 20, 28], "coeffs": [1, 4, 20, 28]} if "spatial" not in path.name
                      else {"src": [1, 3, 20, 28], "coeffs": [1, 3, 20, 29]})
        return model

    model = static(_guide_model(tmp_path / "guide.onnx"))
    assert guide_as_conv(model, {(40, 56)}) == 0  # another frame size
    assert guide_as_conv(static(_guide_model(tmp_path / "spatial.onnx", reduce_axis=3)), {(20, 28)}) == 0
    assert guide_as_conv(model, {(20, 28)}) == 1
    types = [op.get_type_name() for op in model.get_ordered_ops()]
    assert "ReduceMean" not in types and "Concat" not in types and "Convolution" in types


def _alpha_tail_model(path, pad_axis=1, sum_axis=1):
    """alpha = ReduceSum(coeffs * Pad(ReduceMean(src), one channel of 1s)): the alpha-only tail."""
    pads = [0] * 8
    pads[4 + pad_axis] = 1
    nodes = [helper.make_node("ReduceMean", ["src", "one"], ["mean"], keepdims=1),
             helper.make_node("Pad", ["mean", "pads", "ones"], ["guide"]),
             helper.make_node("Mul", ["coeffs", "guide"], ["terms"]),
             helper.make_node("ReduceSum", ["terms", "sum_axes"], ["out"], keepdims=1)]
    graph = helper.make_graph(
        nodes, "alpha_tail",
        [helper.make_tensor_value_info("src", TensorProto.FLOAT, [1, 3, "h", "w"]),
         helper.make_tensor_value_info("coeffs", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.array([1], np.int64), "one"),
                     numpy_helper.from_array(np.array([sum_axis], np.int64), "sum_axes"),
                     numpy_helper.from_array(np.array(pads, np.int64), "pads"),
                     numpy_helper.from_array(np.array(1.0, np.float32), "ones")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


@pytest.mark.parametrize("model, coeff_channels, out_channels, sums", [
    (_guide_model, 4, 4, 0),       # Concat(src, mean): the full export's guide
    (_alpha_tail_model, 2, 1, 1),  # Pad(mean, 1s) and the channel sum: the alpha-only tail
])
def test_guides_and_channel_sums_are_convs_with_onnxruntimes_values(tmp_path, caplog, model, coeff_channels,
                                                                    out_channels, sums):
    path = model(tmp_path / "tail.onnx")
    rng = np.random.default_rng(0)
    feeds = {"src": rng.random((1, 3, 20, 28), dtype=np.float32),
             "coeffs": rng.standard_normal((1, coeff_channels, 20, 28)).astype(np.float32)}
    got, expected = _openvino_and_onnxruntime(path, feeds, caplog)
    assert f"1 guide(s) as 1x1 convolutions, {sums} channel sum(s) as 1x1 convolutions" in caplog.text
    assert got.shape == expected.shape == (1, out_channels, 20, 28)
    assert np.abs(got - expected).max() < 1e-6


def test_only_channel_pads_and_sums_at_the_frame_size_are_rewritten(tmp_path):
    import openvino as ov

    def static(path, coeffs):
        model = ov.Core().read_model(path)
        model.reshape({"src": [1, 3, 20, 28], "coeffs": coeffs})
        return model

    model = static(_alpha_tail_model(tmp_path / "alpha_tail.onnx"), [1, 2, 20, 28])
    assert guide_as_conv(model, {(40, 56)}) == 0 and channel_sum_as_conv(model, {(40, 56)}) == 0
    spatial = static(_alpha_tail_model(tmp_path / "spatial.onnx", pad_axis=3, sum_axis=3), [1, 1, 20, 29])
    assert guide_as_conv(spatial, {(20, 28)}) == 0  # the Pad appends a column, not a channel
    assert channel_sum_as_conv(spatial, {(20, 28)}) == 0  # the sum runs over the width
    assert guide_as_conv(model, {(20, 28)}) == 1 and channel_sum_as_conv(model, {(20, 28)}) == 1
    types = [op.get_type_name() for op in model.get_ordered_ops()]
    assert not {"ReduceMean", "Pad", "ReduceSum"} & set(types) and types.count("Convolution") == 2


def test_graph_rewrites_can_be_turned_off(rvm_artifact, caplog):
    caplog.set_level(logging.DEBUG, logger="mtc")
    io = mtc.runtime.load(rvm_artifact, backend="onnxruntime").io
    backend = OpenVinoBackend(rvm_artifact / "model.onnx", io=io, cache=False, rewrite_graph=False)
    backend.run(io.example_feeds(144, 256, downsample_ratio=0.25))
    backend.run(io.example_feeds(144, 256, downsample_ratio=1.0))
    assert "openvino: graph passes off" in caplog.text
    assert "identity resize(s) dropped" not in caplog.text and "HSigmoid" not in caplog.text
    assert not backend._merged and backend.output_names[:2] == ("fgr", "pha")


def _hardswish_model(path):
    """out = x * HardSigmoid(x, PyTorch's alpha 1/6) + HardSigmoid(x, ONNX's default alpha 0.2)."""
    nodes = [helper.make_node("HardSigmoid", ["x"], ["gate"], alpha=1.0 / 6.0),
             helper.make_node("Mul", ["x", "gate"], ["swish"]),
             helper.make_node("HardSigmoid", ["x"], ["other"]),
             helper.make_node("Add", ["swish", "other"], ["out"])]
    graph = helper.make_graph(nodes, "hardswish", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 7])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def test_pytorch_hard_sigmoid_becomes_hsigmoid_with_onnxruntimes_values(tmp_path, caplog):
    import openvino as ov

    path = _hardswish_model(tmp_path / "hardswish.onnx")
    x = np.linspace(-5, 5, 8 * 6 * 7, dtype=np.float32).reshape(1, 8, 6, 7)  # both clamps and the ramp
    got, expected = _openvino_and_onnxruntime(path, {"x": x}, caplog)
    assert "1 HardSigmoid(s) as HSigmoid" in caplog.text
    assert np.abs(got - expected).max() < 1e-6
    model = ov.Core().read_model(path)
    assert hard_sigmoid_as_hsigmoid(model) == 1  # the alpha 0.2 one is another function
    types = [op.get_type_name() for op in model.get_ordered_ops()]
    assert types.count("HSigmoid") == 1 and types.count("HardSigmoid") == 1


def _pool_model(path, channels, ceil_mode):
    """x -> AveragePool 2x2/2 (PyTorch's ceil mode, pads excluded, as RVM's input pools) -> out."""
    pool = helper.make_node("AveragePool", ["x"], ["out"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=ceil_mode)
    graph = helper.make_graph([pool], "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, "h", "w"])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("channels, size, rewritten", [
    (3, (10, 14), 1),   # RVM's input pools
    (3, (10, 15), 0),   # odd width: ceil mode averages a partial window at the edge
    (16, (10, 14), 0),  # a wide pool runs well in the blocked layout: stays a pool
])
def test_small_pools_are_depthwise_convs_with_onnxruntimes_values(tmp_path, caplog, channels, size, rewritten):
    import openvino as ov

    path = _pool_model(tmp_path / "pool.onnx", channels, ceil_mode=1)
    feeds = {"x": np.random.default_rng(0).random((1, channels, *size), dtype=np.float32)}
    got, expected = _openvino_and_onnxruntime(path, feeds, caplog)
    assert f"{rewritten} pool(s) as depthwise convolutions" in caplog.text
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-6
    model = ov.Core().read_model(path)
    model.reshape({"x": [1, channels, *size]})
    assert small_pools_as_convs(model) == rewritten
    assert ("GroupConvolution" in {op.get_type_name() for op in model.get_ordered_ops()}) == bool(rewritten)


def _fp16_copy(path):
    """The graph at `path` as `mtc quantize --fp16` writes it: FP16 inside, FP32 I/O."""
    from mtc.quant.fp16 import convert_to_fp16

    fp16 = path.with_name(f"{path.stem}-fp16.onnx")
    onnx.save(convert_to_fp16(onnx.load(path)), fp16)
    return fp16


@pytest.mark.parametrize("build, feeds, rewrite", [
    (lambda p: _tail_model(p, (5, 7), (20, 28))[0], {"src": (1, 3, 20, 28), "coeffs": (1, 3, 5, 7)},
     "1 full-resolution upsample(s)"),
    (_guide_model, {"src": (1, 3, 20, 28), "coeffs": (1, 4, 20, 28)}, "1 guide(s) as 1x1 convolutions, 0 channel sum(s)"),
    (_alpha_tail_model, {"src": (1, 3, 20, 28), "coeffs": (1, 2, 20, 28)}, "1 guide(s) as 1x1 convolutions, 1 channel sum(s)"),
    (lambda p: _pool_model(p, 3, ceil_mode=1), {"x": (1, 3, 10, 14)}, "1 pool(s) as depthwise convolutions"),
])
def test_rewrites_keep_an_fp16_graphs_types(tmp_path, caplog, build, feeds, rewrite):
    """The rewrites' weights take the data's element type: FP32 weights on FP16 data made OpenVINO
    refuse every FP16 artifact of RVM ("element::Type::merge" in Convolution)."""
    path = _fp16_copy(build(tmp_path / "model.onnx"))
    rng = np.random.default_rng(1)
    values = {name: rng.random(shape, dtype=np.float32) for name, shape in feeds.items()}
    got, expected = _openvino_and_onnxruntime(path, values, caplog)
    assert rewrite in caplog.text
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 2e-2 * max(1.0, np.abs(expected).max())  # FP16 rounding
