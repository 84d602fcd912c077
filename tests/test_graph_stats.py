"""Tests for mtc.graph_stats: static summaries and run-based per-frame cost."""


import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mtc.errors import MtcError
from mtc.graph_stats import frame_cost, mac_shares, summarize_graph, tensor_elements, zero_feeds

OPSET = 17


def _model(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def _weight(name, shape, dtype=np.float32):
    return numpy_helper.from_array(np.ones(shape, dtype=dtype), name)


def _float_input(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _conv_model(x_shape, w_shape, **attrs):
    conv = helper.make_node("Conv", ["x", "w"], ["y"], **attrs)
    return _model([conv], [_float_input("x", x_shape)], [_float_input("y", None)],
                  [_weight("w", w_shape)])


def _cost_of(model, **arrays):
    return frame_cost(model, {k: np.asarray(v) for k, v in arrays.items()})


# --- frame_cost: compute ops -------------------------------------------------------------


def test_conv_macs_match_hand_count():
    model = _conv_model([1, 3, 8, 8], [4, 3, 3, 3], pads=[1, 1, 1, 1])
    cost = _cost_of(model, x=np.zeros((1, 3, 8, 8), np.float32))
    macs = 4 * 8 * 8 * 3 * 3 * 3  # output elements * C_in * kh * kw
    assert macs == 6912
    assert cost.conv_gmacs == pytest.approx(macs / 1e9)
    assert cost.gflops == pytest.approx(2 * macs / 1e9)
    assert cost.elementwise_gflops == 0
    assert cost.per_op_type_gflops == pytest.approx({"Conv": 2 * macs / 1e9})


def test_depthwise_conv_uses_channels_per_group():
    # 8 channels, one filter each, stride 2: output 1x8x5x5.
    model = _conv_model([1, 8, 10, 10], [8, 1, 3, 3], group=8, strides=[2, 2],
                        pads=[1, 1, 1, 1])
    cost = _cost_of(model, x=np.zeros((1, 8, 10, 10), np.float32))
    assert cost.conv_gmacs * 1e9 == pytest.approx(8 * 5 * 5 * 1 * 3 * 3)


def test_grouped_conv_uses_channels_per_group():
    # 8 input channels in 2 groups of 4, no padding: output 1x4x4x4.
    model = _conv_model([1, 8, 6, 6], [4, 4, 3, 3], group=2)
    cost = _cost_of(model, x=np.zeros((1, 8, 6, 6), np.float32))
    assert cost.conv_gmacs * 1e9 == pytest.approx(4 * 4 * 4 * 4 * 3 * 3)


def test_conv_transpose_macs_scale_with_input():
    # Each input element is multiplied into C_out/group * kh * kw outputs.
    conv_t = helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2])
    model = _model([conv_t], [_float_input("x", [1, 4, 5, 5])], [_float_input("y", None)],
                   [_weight("w", [4, 2, 3, 3])])
    cost = _cost_of(model, x=np.zeros((1, 4, 5, 5), np.float32))
    assert cost.conv_gmacs * 1e9 == pytest.approx(4 * 5 * 5 * 2 * 3 * 3)


@pytest.mark.parametrize("trans_a", [0, 1])
def test_gemm_macs(trans_a):
    a_shape = [5, 2] if trans_a else [2, 5]  # M=2, K=5
    gemm = helper.make_node("Gemm", ["a", "b", "c"], ["y"], transA=trans_a)
    model = _model([gemm], [_float_input("a", a_shape)], [_float_input("y", None)],
                   [_weight("b", [5, 3]), _weight("c", [3])])
    cost = _cost_of(model, a=np.zeros(a_shape, np.float32))
    assert cost.conv_gmacs * 1e9 == pytest.approx(2 * 3 * 5)
    assert cost.per_op_type_gflops == pytest.approx({"Gemm": 2 * 30 / 1e9})


def test_batched_matmul_macs():
    matmul = helper.make_node("MatMul", ["a", "b"], ["y"])
    model = _model([matmul], [_float_input("a", [2, 4, 5])], [_float_input("y", None)],
                   [_weight("b", [5, 6])])
    cost = _cost_of(model, a=np.zeros((2, 4, 5), np.float32))
    assert cost.conv_gmacs * 1e9 == pytest.approx(2 * 4 * 6 * 5)


# --- frame_cost: data-dependent shapes ---------------------------------------------------


def _resize_by_input_value_model():
    """x [1,1,4,4] -> Resize by scale s (a runtime input) -> Relu -> 1x1 Conv to 2 channels."""
    nodes = [
        helper.make_node("Constant", [], ["ones"],
                         value=numpy_helper.from_array(np.ones(2, np.float32))),
        helper.make_node("Concat", ["ones", "s", "s"], ["scales"], axis=0),
        helper.make_node("Resize", ["x", "", "scales"], ["up"], mode="nearest"),
        helper.make_node("Relu", ["up"], ["act"]),
        helper.make_node("Conv", ["act", "w"], ["y"]),
    ]
    return _model(nodes, [_float_input("x", [1, 1, 4, 4]), _float_input("s", [1])],
                  [_float_input("y", None)], [_weight("w", [2, 1, 1, 1])])


def test_resize_cost_follows_the_input_value():
    model = _resize_by_input_value_model()
    # Static shape inference cannot know the resized size: it depends on s's value.
    inferred = onnx.shape_inference.infer_shapes(model)
    up = [vi for vi in inferred.graph.value_info if vi.name == "up"]
    assert not up or not all(d.HasField("dim_value") for d in up[0].type.tensor_type.shape.dim)

    x = np.zeros((1, 1, 4, 4), np.float32)
    for scale in (2.0, 4.0):
        cost = _cost_of(model, x=x, s=np.array([scale], np.float32))
        side = int(4 * scale)
        numel = side * side  # Resize and Relu output elements
        assert cost.per_op_type_gflops["Resize"] * 1e9 == pytest.approx(numel)
        assert cost.per_op_type_gflops["Relu"] * 1e9 == pytest.approx(numel)
        assert cost.elementwise_gflops * 1e9 == pytest.approx(2 * numel)
        assert cost.conv_gmacs * 1e9 == pytest.approx(2 * numel)
        assert cost.gflops == pytest.approx(2 * cost.conv_gmacs + cost.elementwise_gflops)
        assert cost.gflops == pytest.approx(sum(cost.per_op_type_gflops.values()))

    small = _cost_of(model, x=x, s=np.array([2.0], np.float32))
    large = _cost_of(model, x=x, s=np.array([4.0], np.float32))
    assert large.gflops == pytest.approx(4 * small.gflops)


def test_weight_from_a_constant_node_is_measured():
    nodes = [
        helper.make_node("Constant", [], ["b"],
                         value=numpy_helper.from_array(np.ones((5, 6), np.float32))),
        helper.make_node("MatMul", ["a", "b"], ["y"]),
    ]
    model = _model(nodes, [_float_input("a", [4, 5])], [_float_input("y", None)])
    cost = _cost_of(model, a=np.zeros((4, 5), np.float32))
    assert cost.conv_gmacs * 1e9 == pytest.approx(4 * 6 * 5)
    assert summarize_graph(model).param_count == 30


def test_intermediate_that_is_already_a_graph_output_is_not_duplicated():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Sigmoid", ["r"], ["y"])]
    model = _model(nodes, [_float_input("x", [2, 3])],
                   [_float_input("r", [2, 3]), _float_input("y", [2, 3])])
    cost = _cost_of(model, x=np.zeros((2, 3), np.float32))
    assert cost.per_op_type_gflops == pytest.approx({"Relu": 6e-9, "Sigmoid": 6e-9})
    assert [o.name for o in model.graph.output] == ["r", "y"]  # caller's model untouched


def test_frame_cost_names_a_missing_feed():
    model = _resize_by_input_value_model()
    with pytest.raises(MtcError) as excinfo:
        _cost_of(model, x=np.zeros((1, 1, 4, 4), np.float32))
    assert excinfo.value.message == "no feed given for model input(s) s"
    assert excinfo.value.hint


def test_frame_cost_wraps_runtime_failures():
    model = _conv_model([1, 3, 8, 8], [4, 3, 3, 3])
    with pytest.raises(MtcError, match="onnxruntime"):
        _cost_of(model, x=np.zeros((1, 5, 8, 8), np.float32))


# --- summarize_graph ---------------------------------------------------------------------


def test_summary_counts_ops_and_params_exactly():
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r1"]),
        helper.make_node("Relu", ["r1"], ["r2"]),
        helper.make_node("Reshape", ["r2", "shape"], ["flat"]),
        # An inline weight: counted because MatMul consumes it.
        helper.make_node("Constant", [], ["mw"],
                         value=numpy_helper.from_array(np.ones((64, 10), np.float32))),
        helper.make_node("MatMul", ["flat", "mw"], ["m"]),
        # An inline float that only feeds Add: not a weight, not counted.
        helper.make_node("Constant", [], ["k"],
                         value=numpy_helper.from_array(np.ones(10, np.float32))),
        helper.make_node("Add", ["m", "k"], ["y"]),
    ]
    initializers = [
        _weight("w", [4, 3, 3, 3]),                    # 108 float32
        _weight("b", [4], np.float16),                 # 4 float16
        numpy_helper.from_array(np.array([1, 64], np.int64), "shape"),  # not a float
    ]
    model = _model(nodes, [_float_input("x", ["batch", 3, 4, 4])],
                   [_float_input("y", ["batch", 10])], initializers)
    # Conv with a float16 bias is not valid to run, but the static summary doesn't care.
    summary = summarize_graph(model)

    assert summary.opset == OPSET
    assert summary.node_count == 8
    assert summary.op_counts == {"Constant": 2, "Relu": 2, "Add": 1, "Conv": 1, "MatMul": 1,
                                 "Reshape": 1}
    assert list(summary.op_counts) == ["Constant", "Relu", "Add", "Conv", "MatMul", "Reshape"]
    assert summary.param_count == 108 + 4 + 640
    assert summary.param_bytes == 108 * 4 + 4 * 2 + 640 * 4
    assert summary.inputs == [("x", "float32", ["batch", 3, 4, 4])]
    assert summary.outputs == [("y", "float32", ["batch", 10])]


def test_summary_skips_initializers_listed_as_inputs():
    # Older exporters (IR < 4) also list every initializer as a graph input.
    model = _conv_model([1, 3, 8, 8], [4, 3, 3, 3])
    model.graph.input.append(_float_input("w", [4, 3, 3, 3]))
    summary = summarize_graph(model)
    assert [name for name, _, _ in summary.inputs] == ["x"]
    assert summary.param_count == 108


# --- zero_feeds --------------------------------------------------------------------------


def _mixed_inputs_model():
    nodes = [helper.make_node("Identity", ["img"], ["out"]),
             helper.make_node("Identity", ["ratio"], ["r"]),
             helper.make_node("Identity", ["ids"], ["i"])]
    inputs = [_float_input("img", ["b", 3, "h", "w"]), _float_input("ratio", [1]),
              helper.make_tensor_value_info("ids", TensorProto.INT64, [2])]
    outputs = [_float_input("out", None), _float_input("r", None),
               helper.make_tensor_value_info("i", TensorProto.INT64, None)]
    return _model(nodes, inputs, outputs)


def test_zero_feeds_builds_typed_zeros_and_applies_overrides():
    ratio = np.array([0.25], np.float32)
    feeds = zero_feeds(_mixed_inputs_model(), {"img": (1, 3, 6, 4)}, {"ratio": ratio})
    assert set(feeds) == {"img", "ratio", "ids"}
    assert feeds["img"].shape == (1, 3, 6, 4) and feeds["img"].dtype == np.float32
    assert not feeds["img"].any()
    assert feeds["ratio"] is ratio or np.array_equal(feeds["ratio"], ratio)
    assert feeds["ids"].shape == (2,) and feeds["ids"].dtype == np.int64


def test_zero_feeds_names_the_input_missing_a_shape():
    with pytest.raises(MtcError, match="img"):
        zero_feeds(_mixed_inputs_model(), {})


def test_zero_feeds_rejects_a_shape_contradicting_fixed_dims():
    with pytest.raises(MtcError, match="img"):
        zero_feeds(_mixed_inputs_model(), {"img": (1, 4, 6, 4)})


def test_zero_feeds_rejects_unknown_input_names():
    with pytest.raises(MtcError, match="imag"):
        zero_feeds(_mixed_inputs_model(), {"img": (1, 3, 6, 4), "imag": (1,)})


def test_zero_feeds_output_runs_through_frame_cost():
    model = _resize_by_input_value_model()
    feeds = zero_feeds(model, {}, {"s": np.array([2.0], np.float32)})
    assert _cost_of(model, **feeds).conv_gmacs * 1e9 == pytest.approx(2 * 64)


# --- the real Robust Video Matting model -------------------------------------------------

@pytest.fixture(scope="module")
def rvm(rvm_onnx):
    return onnx.load(str(rvm_onnx))


def _rvm_cost(model, height, width, ratio):
    states = {f"r{i}i": (1, 1, 1, 1) for i in range(1, 5)}
    feeds = zero_feeds(model, {"src": (1, 3, height, width), **states},
                       {"downsample_ratio": np.array([ratio], np.float32)})
    return frame_cost(model, feeds)


def test_rvm_summary(rvm):
    summary = summarize_graph(rvm)
    assert 3.5e6 <= summary.param_count <= 4.0e6
    assert summary.param_bytes == 4 * summary.param_count  # all float32
    assert summary.op_counts["Conv"] > 50
    assert [name for name, _, _ in summary.inputs] == [
        "src", "r1i", "r2i", "r3i", "r4i", "downsample_ratio"]
    assert [name for name, _, _ in summary.outputs] == [
        "fgr", "pha", "r1o", "r2o", "r3o", "r4o"]


def test_rvm_cost_orders_sanely_across_resolutions(rvm):
    sd = _rvm_cost(rvm, 288, 512, 1.0)
    hd_quarter = _rvm_cost(rvm, 1080, 1920, 0.25)
    # 4x the pixels of 512x288 at ratio 1.0 (1920x1080 at ratio 1.0 needs ~5 GB here).
    double = _rvm_cost(rvm, 576, 1024, 1.0)
    for cost in (sd, hd_quarter, double):
        assert cost.gflops > 0
        assert cost.gflops == pytest.approx(2 * cost.conv_gmacs + cost.elementwise_gflops)
        assert max(cost.per_op_type_gflops, key=cost.per_op_type_gflops.get) == "Conv"
    assert hd_quarter.gflops > 0.5 * sd.gflops
    assert 3.5 * sd.gflops < double.gflops < 4.5 * sd.gflops


def test_tensor_elements_counts_what_one_inference_produces_at_the_feeds_size():
    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Flatten", ["r"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    elements = tensor_elements(model, {"x": np.zeros((1, 3, 5, 7), np.float32)})
    # the conv's weight (its MAC count's operand), its output and the Relu's; Flatten is data
    # movement, not counted
    assert elements == {"w": 108, "c": 140, "r": 140}


def test_mac_shares_split_the_models_macs_by_layer():
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="wide", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "w2"], ["y"], name="narrow")]
    model = _model(nodes, [_float_input("x", [1, 3, 8, 8])], [_float_input("y", None)],
                   [_weight("w1", [4, 3, 3, 3]), _weight("w2", [1, 4, 1, 1])])
    shares = mac_shares(model, {"x": np.zeros((1, 3, 8, 8), np.float32)})
    wide, narrow = 4 * 8 * 8 * 3 * 3 * 3, 1 * 8 * 8 * 4  # output elements * C_in * kh * kw
    assert shares == pytest.approx({"wide": wide / (wide + narrow), "narrow": narrow / (wide + narrow)})
