"""Quantization: placement structure on small graphs, ranges, FP16, gates and fallback."""

import dataclasses
import json
import logging
import re
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from tiny_artifacts import write_model_artifact

from mtc.artifact.manifest import MANIFEST_NAME, ModelIO, TensorSpec
from mtc.errors import MtcError
from mtc.quant.config import Fallback, Gates, Int8Config
from mtc.quant.data_plan import DataPlan
from mtc.quant.fp16 import convert_to_fp16, overflow_prone_nodes
from mtc.quant.pipeline import quantize_artifact
from mtc.quant.qdq import activation_quant, insert_qdq, plan_qdq
from mtc.quant.ranges import TensorStats, asymmetric_range, threshold

RNG = np.random.default_rng(0)


def _conv(name, x, y, cin, cout, k=3, group=1, scale=0.3, weights=None):
    w = weights if weights is not None else (RNG.standard_normal((cout, cin // group, k, k)) * scale).astype(np.float32)
    init = numpy_helper.from_array(w, f"{name}_w")
    bias = numpy_helper.from_array(np.zeros(cout, np.float32), f"{name}_b")
    node = helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [y], name=name, pads=[k // 2] * 4, group=group)
    return node, [init, bias]


def _model(nodes, inits, inputs, outputs):
    graph = helper.make_graph(nodes, "toy", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model)


def _toy_chain():
    """x -> conv1 -> relu -> depthwise conv2 -> conv3 -> y; plus a Resize whose scales are computed."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    n1, i1 = _conv("conv1", "x", "a", 3, 8)
    relu = helper.make_node("Relu", ["a"], ["a_relu"], name="relu1")
    n2, i2 = _conv("conv2", "a_relu", "b", 8, 8, group=8)
    n3, i3 = _conv("conv3", "b", "c", 8, 4, k=1)
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    resize = helper.make_node("Resize", ["c", "", "scales"], ["y"], name="up", mode="linear")
    return _model([n1, relu, n2, n3, resize], i1 + i2 + i3 + [scales], [x], [y])


def _run(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _ops(model):
    return [n.op_type for n in model.graph.node]


# ---- placement structure -------------------------------------------------------------------


def test_tensorrt_placement_quantizes_conv_inputs_and_weights_only():
    model = _toy_chain()
    plan = plan_qdq(model, quantize_outputs=False)
    assert plan.node_names == ["conv1", "conv2", "conv3"]
    q = insert_qdq(model, plan, {t: (-4.0, 4.0) for t in plan.activation_tensors()})
    producers = {o: n for n in q.graph.node for o in n.output}
    for conv in (n for n in q.graph.node if n.op_type == "Conv"):
        assert producers[conv.input[0]].op_type == "DequantizeLinear"  # activation via Q/DQ
        weight_dq = producers[conv.input[1]]
        assert weight_dq.op_type == "DequantizeLinear" and helper.get_attribute_value(weight_dq.attribute[0]) == 0
        weight = next(i for i in q.graph.initializer if i.name == weight_dq.input[0])
        assert weight.data_type == TensorProto.INT8
        scales = next(i for i in q.graph.initializer if i.name == weight_dq.input[1])
        assert list(scales.dims) == [numpy_helper.to_array(weight).shape[0]]  # per output channel
    assert _ops(q).count("QuantizeLinear") == 3
    # The Resize and its scales stay float: nothing but convs was touched.
    resize = next(n for n in q.graph.node if n.op_type == "Resize")
    assert producers[resize.input[0]].op_type == "Conv"
    assert all(z.data_type == TensorProto.INT8 for z in q.graph.initializer if z.name.endswith("__zero"))


def test_speed_placement_puts_output_qdq_after_the_fused_relu():
    model = _toy_chain()
    plan = plan_qdq(model, quantize_outputs=True)
    conv1 = next(n for n in plan.nodes if n.node == "conv1")
    assert conv1.output == "a_relu"  # after the Relu, so Conv+Relu fuses to one integer kernel
    q = insert_qdq(model, plan, {t: (-4.0, 4.0) for t in plan.activation_tensors()})
    producers = {o: n for n in q.graph.node for o in n.output}
    relu = next(n for n in q.graph.node if n.op_type == "Relu")
    assert producers[relu.input[0]].op_type == "Conv"  # no Q/DQ between conv and relu
    # conv3 feeds the Resize: its output is quantized too, the Resize reads the dequantized copy.
    resize = next(n for n in q.graph.node if n.op_type == "Resize")
    assert producers[resize.input[0]].op_type == "DequantizeLinear"


def test_qdq_model_stays_close_to_float_and_excluded_nodes_stay_float():
    model = _toy_chain()
    x = RNG.random((1, 3, 16, 16), dtype=np.float32)
    reference = _run(model, {"x": x})
    plan = plan_qdq(model, quantize_outputs=True, exclude_nodes=["conv2"])
    assert "conv2" not in plan.node_names
    ranges = {t: _symmetric(float(np.abs(_tensor(model, t, x)).max())) for t in plan.activation_tensors()}
    quantized = _run(insert_qdq(model, plan, ranges), {"x": x})
    assert np.abs(quantized - reference).max() < 0.05 * np.abs(reference).max()
    assert np.abs(quantized - reference).max() > 0  # it really is quantized


def _symmetric(amax):
    return -amax, amax


def _tensor(model, name, x):
    from mtc.quant.ranges import expose_tensors

    augmented = expose_tensors(model, [name])
    session = ort.InferenceSession(augmented.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x})))[name]


# ---- ranges --------------------------------------------------------------------------------


def test_range_methods_on_data_with_an_outlier():
    stats = TensorStats()
    data = RNG.standard_normal(200_000).astype(np.float32)
    stats.update(data[:1000])
    stats.update(data[1000:])  # histogram grows as larger values arrive
    stats.update(np.array([40.0], np.float32))
    assert stats.hist.sum() == stats.count == 200_001
    assert threshold(stats, "minmax") == pytest.approx(40.0)
    p = threshold(stats, "percentile", percentile=99.99)
    assert 3.0 < p < 6.0
    for method in ("entropy", "mse"):
        value = threshold(stats, method)
        assert 1.0 < value < 40.0, method


# ---- FP16 ----------------------------------------------------------------------------------


def _norm_model():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    n1, i1 = _conv("conv", "x", "a", 4, 4, scale=1.0)
    gamma = numpy_helper.from_array(np.ones(4, np.float32), "g")
    beta = numpy_helper.from_array(np.zeros(4, np.float32), "b")
    norm = helper.make_node("InstanceNormalization", ["a", "g", "b"], ["n"], name="norm")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    resize = helper.make_node("Resize", ["n", "", "scales"], ["y"], name="up", mode="linear")
    return _model([n1, norm, resize], i1 + [gamma, beta, scales], [x], [y])


def test_fp16_keeps_io_types_and_the_measured_overflow_risk_in_fp32():
    model = _norm_model()
    big = {"a": 500.0, "n": 3.0, "y": 3.0}  # 500^2 overflows an FP16 variance
    keep = overflow_prone_nodes(model, big)
    assert keep == ["norm"]
    half = convert_to_fp16(model, keep_fp32=keep)
    assert half.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert half.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    conv_weight = next(i for i in half.graph.initializer if i.name == "conv_w__fp16")
    assert conv_weight.data_type == TensorProto.FLOAT16
    resize = next(n for n in half.graph.node if n.op_type == "Resize")
    assert resize.input[2] == "scales"  # Resize scales stay float32, as the spec requires
    x = (RNG.random((1, 4, 8, 8), dtype=np.float32) * 100).astype(np.float32)
    np.testing.assert_allclose(_run(half, {"x": x}), _run(model, {"x": x}), atol=2e-2, rtol=1e-2)
    assert overflow_prone_nodes(model, {"a": 5.0, "n": 3.0}) == []


# ---- gates and fallback on a toy matting artifact ------------------------------------------


def _toy_artifact(folder):
    """A matting model where one layer's input has a huge, useless channel: per-tensor INT8 on
    that input wipes out the useful channels, so exactly that layer must fall back."""
    src = helper.make_tensor_value_info("src", TensorProto.FLOAT, [1, 3, "h", "w"])
    alpha = helper.make_tensor_value_info("pha", TensorProto.FLOAT, [1, 1, "h", "w"])
    rng = np.random.default_rng(7)  # its own generator: the same model whichever tests ran before
    w1 = (rng.standard_normal((8, 3, 3, 3)) * 0.5).astype(np.float32)
    w1[7] *= 400.0  # channel 7: enormous activations
    w2 = (rng.standard_normal((8, 8, 3, 3)) * 0.3).astype(np.float32)
    w2[:, 7] = 0.0  # ... that nothing downstream uses
    n1, i1 = _conv("conv1", "src", "a", 3, 8, weights=w1)
    relu = helper.make_node("Relu", ["a"], ["a_relu"], name="relu1")
    n2, i2 = _conv("conv2", "a_relu", "b", 8, 8, weights=w2)
    n3, i3 = _conv("conv3", "b", "c", 8, 1, k=1, weights=(rng.standard_normal((1, 8, 1, 1)) * 0.3).astype(np.float32))
    sig = helper.make_node("Sigmoid", ["c"], ["pha"], name="sig")
    return write_model_artifact(folder, _model([n1, relu, n2, n3, sig], i1 + i2 + i3, [src], [alpha]))


SMALL = DataPlan(calib_frames=6, check_frames=6, settings=((64, 48, None),))


def test_fallback_moves_exactly_the_layer_that_needs_it(tmp_path):
    source = _toy_artifact(tmp_path / "toy")
    gates = Gates(max_mad=5.0, max_dtssd=5.0)
    # Inputs-and-weights placement: the huge channel then hurts conv2's input quantization
    # alone (quantizing conv1's output too would put the same tensor on the grid there).
    outcome = quantize_artifact(source, tmp_path / "int8", precision="int8",
                                config=Int8Config(method="minmax", quantize_outputs=False, weight_rounding="gptq"),
                                gates=gates, data=SMALL)
    all_int8 = outcome.report["int8"]["all_int8_check"]
    assert not all_int8["passed"]  # the case is built to need fallback
    assert outcome.passed
    assert outcome.report["int8"]["fallback_layers"] == ["conv2"]
    # the cheapest layer per error (conv3, at most one of the three) cannot pass; by error alone
    # conv2 does, and its share of the MACs is recorded
    steps = outcome.report["fallback_steps"]
    assert [(s["order"], s["float_layers"], s["passed"]) for s in steps] == [
        ("", 0, False), ("error per MAC", 1, False), ("error", 1, True)]
    assert outcome.report["int8"]["fallback_order"] == "error"
    assert steps[1]["mac_share"] < 0.1 < steps[2]["mac_share"] == outcome.report["int8"]["fallback_mac_share"] < 1
    assert "<th>ranked by</th>" in (tmp_path / "int8" / "report.html").read_text()
    assert max(c.mad for c in outcome.check.clips) < min(c["mad"] for c in all_int8["clips"])
    manifest = json.loads((tmp_path / "int8" / MANIFEST_NAME).read_text())
    assert manifest["precision"]["mode"] == "int8" and manifest["precision"]["excluded_nodes"] == ["conv2"]
    from mtc.backends.cpu import cpu_class

    # the checks ran on this CPU class, and both records say so
    assert manifest["precision"]["checked_cpu"] == outcome.report["checked_cpu"] == cpu_class()
    html = (tmp_path / "int8" / "report.html").read_text()
    assert f"class {cpu_class()}" in html
    assert "<svg" in html and "conv2" in html and "data:image/png;base64" in html
    assert "GPTQ weight rounding" in html and outcome.report["int8"]["gptq_error_ratio"]
    calibration = outcome.report["calibration"]
    assert calibration["sources"] == ["builtin"]
    assert f"Calibrated on builtin: {calibration['frames']} frames in {len(calibration['clips'])} clips" in html

    import mtc.runtime

    session = mtc.runtime.load(tmp_path / "int8")
    assert session.process(np.zeros((48, 64, 3), np.uint8)).alpha.shape == (48, 64)


def test_gate_failure_exits_nonzero_writes_report_and_no_artifact(tmp_path):
    source = _toy_artifact(tmp_path / "toy")
    out = tmp_path / "int8"
    result = subprocess.run([sys.executable, "-m", "mtc", "quantize", str(source), "-o", str(out), "--int8",
                             "--no-fallback", "--max-mad", "0.0001", "--calib-frames", "4"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    assert "fails its gates" in result.stderr and "Traceback" not in result.stderr
    assert (out / "report.json").exists() and (out / "report.html").exists() and (out / "rejected.onnx").exists()
    assert not (out / MANIFEST_NAME).exists()
    assert json.loads((out / "report.json").read_text())["passed"] is False


def test_quantizing_a_quantized_artifact_is_refused(tmp_path):
    source = _toy_artifact(tmp_path / "toy")
    quantize_artifact(source, tmp_path / "fp16", precision="fp16", data=SMALL, gates=Gates(None, None))
    with pytest.raises(MtcError, match="already fp16"):
        quantize_artifact(tmp_path / "fp16", tmp_path / "again", precision="int8", data=SMALL)


def test_affine_correction_reduces_quantization_error_at_zero_cost():
    from mtc.quant.affine import apply_corrections, fit_layers

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 12, 12])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node, inits = _conv("conv", "x", "y", 4, 6)
    model = _model([node], inits, [x], [y])
    plan = plan_qdq(model)
    feeds = [{"x": (RNG.random((1, 4, 12, 12), dtype=np.float32) * 2.0)} for _ in range(8)]
    ranges = {"x": (-1.2, 1.2)}  # clips the top of the [0, 2) inputs: a systematic, per-channel bias
    plain = insert_qdq(model, plan, ranges)
    fits = fit_layers(model, plan, ranges, feeds)
    corrected = apply_corrections(plain, fits)
    assert _ops(corrected) == _ops(plain)  # folded into scales and bias: no extra nodes
    test = {"x": RNG.random((1, 4, 12, 12), dtype=np.float32) * 2.0}
    reference = _run(model, test)
    error_plain = np.abs(_run(plain, test) - reference).mean()
    error_corrected = np.abs(_run(corrected, test) - reference).mean()
    assert error_corrected < 0.8 * error_plain
    # the fit's own error measure agrees: the correction lowers it, and both are relative errors
    assert 0 < fits["conv"].error < 0.8 * fits["conv"].uncorrected_error < 1


def test_min_mac_share_leaves_small_layers_in_float(tmp_path):
    source = _toy_artifact(tmp_path / "toy")
    outcome = quantize_artifact(source, tmp_path / "int8", precision="int8", gates=Gates(None, None), data=SMALL,
                                config=Int8Config(min_mac_share=0.05), fallback=Fallback(enabled=False))
    # conv3 (1x1, 8 -> 1) holds under 2% of the MACs; the two 3x3 convs hold the rest.
    assert outcome.report["int8"]["quantized_layers"] == 2
    model = onnx.load(str(tmp_path / "int8" / "model.onnx"))
    conv3 = next(n for n in model.graph.node if n.name == "conv3")
    weight = next(i for i in model.graph.initializer if i.name == conv3.input[1])
    assert weight.data_type == TensorProto.FLOAT  # read straight from the float initializer


def test_openvino_preset_also_quantizes_the_smaller_convs(tmp_path):
    source = _toy_artifact(tmp_path / "toy")
    base = [sys.executable, "-m", "mtc", "quantize", str(source), "--int8", "--no-fallback", "--float-budget", "0",
            "--max-mad", "1000", "--max-dtssd", "1000", "--calib-frames", "4"]
    layers = {}
    for name in ("speed", "openvino", "dense"):
        result = subprocess.run([*base, "--preset", name, "-o", str(tmp_path / name)], capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, result.stderr
        layers[name] = json.loads((tmp_path / name / "report.json").read_text())["int8"]["quantized_layers"]
        manifest = json.loads((tmp_path / name / "manifest.json").read_text())
        assert manifest["precision"]["activation_type"] == "uint8"  # what OpenVINO runs faithfully
    # conv3 holds 1% of the MACs: under speed's 1.5% threshold, over openvino's 0.5%; dense takes every conv.
    assert layers == {"speed": 2, "openvino": 3, "dense": 3}


def test_every_placement_preset_is_offered_on_the_command_line():
    from mtc.cli.options import PLACEMENT_PRESETS
    from mtc.quant.config import PRESETS

    assert set(PLACEMENT_PRESETS) == set(PRESETS)
    dense = PRESETS["dense"]
    assert dense.min_mac_share == 0 and dense.float_budget == 0 and dense.activation_type == "uint8"
    assert not dense.quantize_outputs  # inputs and weights only: see the preset's comment


def test_activation_quant_int8_is_symmetric_and_uint8_spans_the_range():
    assert activation_quant((-0.5, 3.0), "int8") == (pytest.approx(3.0 / 127), 0)
    scale, zero = activation_quant((-0.5, 3.0), "uint8")
    assert scale == pytest.approx(3.5 / 255) and zero.dtype == np.uint8 and zero == 36  # 0.5 / scale, rounded
    assert activation_quant((0.0, 3.0), "uint8") == (pytest.approx(3.0 / 255), 0)
    assert activation_quant((-3.0, 3.0), "uint8")[1] == 128


def test_uint8_activations_on_their_measured_range_beat_symmetric_int8():
    model = _toy_chain()
    plan = plan_qdq(model, quantize_outputs=True)
    x = RNG.random((1, 3, 16, 16), dtype=np.float32)
    values = {t: _tensor(model, t, x) for t in plan.activation_tensors()}
    ranges = {t: (float(v.min()), float(v.max())) for t, v in values.items()}
    assert any(lo < 0 < hi < -3 * lo or 0 < -lo < hi / 3 for lo, hi in ranges.values())  # lopsided somewhere
    signed = insert_qdq(model, plan, ranges, activation_type="int8")
    shifted = insert_qdq(model, plan, ranges, activation_type="uint8")
    zeros = [numpy_helper.to_array(i) for i in shifted.graph.initializer if i.name.endswith("__zero")]
    assert zeros and all(z.dtype == np.uint8 for z in zeros) and any(0 < z < 128 for z in zeros)
    exact = _run(model, {"x": x})
    assert np.abs(_run(shifted, {"x": x}) - exact).mean() < np.abs(_run(signed, {"x": x}) - exact).mean()


def _ort_fused_ops(model, tmp_path):
    """Op types of the graph ONNX Runtime actually runs (after its QDQ fusions)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]


def test_one_sided_uint8_range_lets_onnxruntime_fuse_conv_relu_into_an_integer_kernel(tmp_path):
    model = _toy_chain()
    plan = plan_qdq(model, quantize_outputs=True).only(["conv1"])
    ranges = {t: (-3.0, 3.0) for t in plan.activation_tensors()}
    symmetric = insert_qdq(model, plan, ranges, activation_type="uint8")
    one_sided = insert_qdq(model, plan, {**ranges, "a_relu": (0.0, 3.0)}, activation_type="uint8")
    zero = next(i for i in one_sided.graph.initializer if i.name == "a_relu__zero")
    scale = next(i for i in one_sided.graph.initializer if i.name == "a_relu__scale")
    assert numpy_helper.to_array(zero) == 0 and numpy_helper.to_array(scale) == pytest.approx(3.0 / 255)
    # Zero point 128 keeps the Relu between Conv and Q, so the conv runs in float.
    assert "QLinearConv" not in _ort_fused_ops(symmetric, tmp_path)
    fused = _ort_fused_ops(one_sided, tmp_path)
    assert "QLinearConv" in fused and "Relu" not in fused
    # Same values as the float Relu path, at twice the resolution of the symmetric range.
    x = RNG.random((1, 3, 16, 16), dtype=np.float32)
    exact = _run(model, {"x": x})
    assert np.abs(_run(one_sided, {"x": x}) - exact).mean() < np.abs(_run(symmetric, {"x": x}) - exact).mean()


def test_int8_activations_stay_symmetric_on_one_sided_ranges():
    model = _toy_chain()
    plan = plan_qdq(model, quantize_outputs=True)
    q = insert_qdq(model, plan, {t: (0.0, 3.0) for t in plan.activation_tensors()}, activation_type="int8")
    zero = next(i for i in q.graph.initializer if i.name == "a_relu__zero")
    assert zero.data_type == TensorProto.INT8 and numpy_helper.to_array(zero) == 0  # TensorRT needs symmetric


def _stats(values):
    stats = TensorStats()
    stats.update(np.asarray(values, np.float32))
    return stats


def _fake_quant_error(values, lo, hi, levels=255):
    scale = (hi - lo) / levels
    zero = np.round(-lo / scale)
    q = np.clip(np.round(values / scale) + zero, 0, levels)
    return float(np.mean(((q - zero) * scale - values) ** 2))


def test_asymmetric_ranges_follow_the_sides_the_values_are_on():
    normal = RNG.standard_normal(100_000).astype(np.float32)
    one_sided = _stats(np.abs(normal))
    assert asymmetric_range(one_sided, "mse")[0] == 0.0  # zero point 0
    assert threshold(one_sided, "mse", levels=255) > threshold(one_sided, "mse", levels=127)  # finer: clip later
    lo, hi = asymmetric_range(_stats(normal), "mse")
    assert lo == pytest.approx(-hi, rel=0.1)
    hardswish = np.maximum(normal * 2, -3) * np.clip(normal * 2 + 3, 0, 6) / 6  # in [-0.375, ...)
    stats = _stats(hardswish)
    lo, hi = asymmetric_range(stats, "mse")
    assert stats.minimum <= lo <= -0.3 and 1.0 < hi <= stats.maximum
    assert asymmetric_range(stats, "minmax") == (stats.minimum, stats.maximum)
    amax = threshold(stats, "mse")
    assert _fake_quant_error(hardswish, lo, hi) < 0.5 * _fake_quant_error(hardswish, -amax, amax)
    assert asymmetric_range(TensorStats(), "mse") == (0.0, 0.0)


def _concat_slice_model():
    """x -> conv1 -> relu -> Slice -> Concat(with x) -> conv2 -> y: the RVM decoder's shape."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    n1, i1 = _conv("conv1", "x", "a", 3, 8)
    relu = helper.make_node("Relu", ["a"], ["a_relu"], name="relu1")
    bounds = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
              (("starts", [0, 0]), ("ends", [16, 16]), ("axes", [2, 3]))]
    crop = helper.make_node("Slice", ["a_relu", "starts", "ends", "axes"], ["cropped"], name="crop")
    cat = helper.make_node("Concat", ["cropped", "x"], ["joined"], name="cat", axis=1)
    n2, i2 = _conv("conv2", "joined", "y", 11, 4)
    return _model([n1, relu, crop, cat, n2], i1 + i2 + bounds, [x], [y])


def test_quantization_is_hoisted_through_slice_and_concat_exactly(tmp_path):
    model = _concat_slice_model()
    plan = plan_qdq(model, quantize_outputs=True).only(["conv2"])
    assert plan.activation_tensors() == ["joined"]
    ranges = {"joined": (0.0, 2.5)}
    q = insert_qdq(model, plan, ranges, activation_type="uint8")
    producers = {o: n for n in q.graph.node for o in n.output}
    cat, crop = (next(n for n in q.graph.node if n.name == name) for name in ("cat", "crop"))
    # Concat and Slice now read dequantized inputs that share the output's scale and zero point.
    for node in (cat, crop):
        dq = producers[node.input[0]]
        assert dq.op_type == "DequantizeLinear" and dq.input[1:] == ["joined__scale", "joined__zero"]
    assert producers[cat.input[1]].op_type == "DequantizeLinear"
    # conv1's float output keeps no Q of its own; ONNX Runtime runs the movers on uint8.
    fused = _ort_fused_ops(q, tmp_path)
    assert "QLinearConcat" in fused and "Concat" not in fused
    # Same integers as quantizing the Concat's output alone: the result is identical.
    x = RNG.random((1, 3, 16, 16), dtype=np.float32)
    session = ort.SessionOptions()
    session.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    run = lambda m: ort.InferenceSession(m.SerializeToString(), session, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    output_only = plan_qdq(model, quantize_outputs=True).only(["conv2"])
    reference = insert_qdq(_with_extra_reader(model), output_only, ranges, activation_type="uint8")
    np.testing.assert_allclose(run(q), run(reference), atol=1e-6)


def _with_extra_reader(model):
    """The same model with a second, float reader of `joined`, which blocks hoisting."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.node.append(helper.make_node("Identity", ["joined"], ["joined_copy"], name="float_reader"))
    copy.graph.output.append(helper.make_tensor_value_info("joined_copy", TensorProto.FLOAT, None))
    return copy


def test_no_hoisting_when_the_mover_output_has_float_readers():
    model = _with_extra_reader(_concat_slice_model())
    plan = plan_qdq(model, quantize_outputs=True).only(["conv2"])
    q = insert_qdq(model, plan, {"joined": (-2.5, 2.5)}, activation_type="uint8")
    producers = {o: n for n in q.graph.node for o in n.output}
    cat = next(n for n in q.graph.node if n.name == "cat")
    assert producers[cat.input[0]].op_type == "Slice" and cat.input[1] == "x"


def _image_concat_model(cin_image=3, features=8):
    """x -> conv1 -> relu -> Concat(relu, x) -> conv2 -> y, with 8 + 3 = 11 channels into conv2."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin_image, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    n1, i1 = _conv("conv1", "x", "a", cin_image, features)
    relu = helper.make_node("Relu", ["a"], ["a_relu"], name="relu1")
    cat = helper.make_node("Concat", ["a_relu", "x"], ["joined"], name="cat", axis=1)
    n2, i2 = _conv("conv2", "joined", "y", features + cin_image, 4)
    return _model([n1, relu, cat, n2], i1 + i2, [x], [y])


def test_channel_alignment_pads_the_concats_small_input_and_computes_the_same():
    from mtc.quant.align import align_conv_inputs

    model = _image_concat_model()
    aligned, padded = align_conv_inputs(model, ["conv1", "conv2"])
    assert padded == ["conv1", "conv2"]  # 3 -> 4 and 11 -> 12 input channels
    nodes = {n.name: n for n in aligned.graph.node}
    producers = {o: n for n in aligned.graph.node for o in n.output}
    assert producers[nodes["cat"].input[1]].op_type == "Pad"  # the 3-channel image, not the 12-channel concat
    assert producers[nodes["conv1"].input[0]].op_type == "Pad"  # no concat: the conv input itself
    weight = next(i for i in aligned.graph.initializer if i.name == nodes["conv2"].input[1])
    assert list(weight.dims)[1] == 12 and not numpy_helper.to_array(weight)[:, 11].any()
    x = RNG.random((1, 3, 16, 16), dtype=np.float32)
    np.testing.assert_allclose(_run(aligned, {"x": x}), _run(model, {"x": x}), rtol=1e-5, atol=1e-6)
    # Already aligned or grouped convs are left alone.
    assert align_conv_inputs(_image_concat_model(cin_image=4), ["conv1", "conv2"])[1] == []
    assert align_conv_inputs(_toy_chain(), ["conv2"])[1] == []  # depthwise


def test_aligned_pad_runs_on_integers_and_compiles_on_openvino(tmp_path):
    from mtc.backends.cpu import cpu_class, int8_saturates
    from mtc.quant.align import align_conv_inputs

    # Where integer kernels saturate on full-range weights (AVX2 without VNNI), OpenVINO is
    # compared on the 7-bit weights such CPUs compute exactly.
    bits = 7 if int8_saturates(cpu_class()) else 8
    model = _image_concat_model()
    aligned, _ = align_conv_inputs(model, ["conv2"])
    plan = plan_qdq(aligned, quantize_outputs=True).only(["conv2"])
    q = insert_qdq(aligned, plan, {t: (0.0, 2.0) for t in plan.activation_tensors()}, activation_type="uint8",
                   weight_bits=bits)
    producers = {o: n for n in q.graph.node for o in n.output}
    pad = next(n for n in q.graph.node if n.op_type == "Pad")
    # Pad reads the quantized image and pads with the zero point; no float round trip around it.
    assert producers[pad.input[0]].op_type == "QuantizeLinear" and pad.input[2].endswith("__zero")
    x = RNG.random((1, 3, 16, 16), dtype=np.float32)
    unaligned_plan = plan_qdq(model, quantize_outputs=True).only(["conv2"])
    unaligned = insert_qdq(model, unaligned_plan, {t: (0.0, 2.0) for t in unaligned_plan.activation_tensors()},
                           activation_type="uint8", weight_bits=bits)
    np.testing.assert_allclose(_run(q, {"x": x}), _run(unaligned, {"x": x}), atol=1e-5)
    ov = pytest.importorskip("openvino")
    # OpenVINO takes the integer Pad (on the real RVM, the float form made its low-precision
    # Concat pass throw; tests/quant/test_quant_rvm.py runs that artifact on OpenVINO).
    compiled = ov.Core().compile_model(ov.Core().read_model(q.SerializeToString(), b""), "CPU")
    got = compiled.create_infer_request().infer({"x": x})
    np.testing.assert_allclose(next(iter(got.values())), _run(unaligned, {"x": x}), atol=0.05)


# ---- GPTQ weight rounding -------------------------------------------------------------------

@pytest.mark.parametrize("stride,dilation,group,pads", [(1, 1, 1, [1, 1, 1, 1]), (2, 1, 2, [0, 1, 1, 0]),
                                                          (1, 2, 6, [2, 2, 2, 2])])
def test_gptq_patches_are_the_convs_own_im2col(stride, dilation, group, pads):
    from mtc.quant.gptq import _ConvGeometry

    w = RNG.standard_normal((6, 6 // group, 3, 3)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="c", strides=[stride] * 2, dilations=[dilation] * 2,
                            group=group, pads=pads)
    x = RNG.standard_normal((1, 6, 11, 13)).astype(np.float32)
    model = _model([node], [numpy_helper.from_array(w, "w")],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 11, 13])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    expected = _run(model, {"x": x})[0]  # C_out, H', W'
    rows = _ConvGeometry.of(node, w.shape).patches(x[0], np.random.default_rng(0), limit=10 ** 6)
    assert rows.shape[0] == expected.shape[1] * expected.shape[2]  # every output position, once
    per_group = 6 // group
    got = np.concatenate([rows[:, g] @ w[g * per_group:(g + 1) * per_group].reshape(per_group, -1).T
                          for g in range(group)], axis=1)
    # Rows come in a random order: compare the sorted values of each output channel.
    np.testing.assert_allclose(np.sort(got, axis=0), np.sort(expected.reshape(6, -1).T, axis=0), atol=1e-4)


def test_gptq_rounding_lowers_the_layer_output_error_with_the_same_scales():
    from mtc.quant.gptq import output_error, round_weights
    from mtc.quant.qdq import quantize_weight

    # Strongly correlated inputs (as neighbouring pixels and channels are) with a padding
    # channel that is always zero, as channel alignment adds.
    base = RNG.standard_normal((4000, 1))
    inputs = np.concatenate([base + 0.1 * RNG.standard_normal((4000, 8)), np.zeros((4000, 1))], axis=1)
    hessian = (inputs.T @ inputs)[None]
    weight = (RNG.standard_normal((5, 9, 1, 1)) * 0.2).astype(np.float64)
    nearest, scale = quantize_weight(weight, 0)
    values = round_weights(weight, hessian, scale)
    assert values.dtype == np.int8 and np.abs(values.astype(int)).max() <= 127
    assert np.all(values[:, 8] == 0)  # the dead input gets zero, not NaN
    assert output_error(weight, values, scale, hessian) < 0.5 * output_error(weight, nearest, scale, hessian)


def test_gptq_weights_flow_into_the_qdq_graph_and_the_affine_fit(tmp_path):
    from mtc.quant.affine import fit_layers
    from mtc.quant.gptq import conv_hessians, gptq_weights
    from mtc.quant.qdq import quantize_weight

    model = _toy_chain()
    feeds = [{"x": RNG.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(6)]
    plan = plan_qdq(model)
    hessians = conv_hessians(model, plan.node_names, feeds)
    assert hessians["conv2"].shape == (8, 9, 9)  # depthwise: one 3x3 problem per channel
    rounded, gains = gptq_weights(model, hessians)
    assert rounded
    assert set(gains) == {"conv1", "conv2", "conv3"} and all(g >= 1.0 for g in gains.values())
    ranges = {t: (-4.0, 4.0) for t in plan.activation_tensors()}
    quantized = insert_qdq(model, plan, ranges, rounded=rounded)
    inits = {i.name: numpy_helper.to_array(i) for i in quantized.graph.initializer}
    original = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for weight_name, (values, scale) in rounded.items():
        stored = next(v for k, v in inits.items() if k.endswith(f"{weight_name}__int8"))
        np.testing.assert_array_equal(stored, values)
        np.testing.assert_array_equal(scale, quantize_weight(original[weight_name], 0)[1])  # nearest's scales
    assert fit_layers(model, plan, ranges, feeds, rounded=rounded).keys() == {"conv1", "conv2", "conv3"}


def test_unknown_weight_rounding_is_refused_wherever_the_config_is_made():
    from mtc.quant.config import preset

    for make in (lambda: Int8Config(weight_rounding="stochastic"), lambda: preset("speed", weight_rounding="x")):
        with pytest.raises(MtcError, match="unknown weight rounding"):
            make()


# ---- concat-input equalization --------------------------------------------------------------


def _concat_conv_model(extra_reader=False):
    """image (3 ch, range 1) and skip (8 ch, range ~50) -> Concat -> conv -> y, where the output
    leans on the image (as a matting decoder's last convs do)."""
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 12, 12])
    skip = helper.make_tensor_value_info("skip", TensorProto.FLOAT, [1, 8, 12, 12])
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    concat = helper.make_node("Concat", ["image", "skip"], ["cat"], name="cat", axis=1)
    weights = np.random.default_rng(11).standard_normal((6, 11, 3, 3)).astype(np.float32)
    weights[:, 3:] *= 0.02
    conv, inits = _conv("conv", "cat", "y", 11, 6, weights=weights)
    nodes = [concat, conv]
    if extra_reader:
        nodes.append(helper.make_node("Relu", ["cat"], ["cat_relu"], name="other"))
        outputs.append(helper.make_tensor_value_info("cat_relu", TensorProto.FLOAT, None))
    return _model(nodes, inits, [image, skip], outputs)


def _concat_feeds(count, seed=0):
    rng = np.random.default_rng(seed)
    return [{"image": rng.random((1, 3, 12, 12), dtype=np.float32),
             "skip": (rng.standard_normal((1, 8, 12, 12)) * 15).astype(np.float32)} for _ in range(count)]


def test_equalizing_concat_inputs_keeps_the_float_function_and_lowers_int8_error():
    from mtc.quant.equalize import equalize_concat_inputs
    from mtc.quant.ranges import collect_stats

    model = _concat_conv_model()
    calibration = _concat_feeds(6)
    equalized, scales = equalize_concat_inputs(model, ["conv"], calibration)
    # the widest group (skip, 8 channels) stays; the image is scaled up by sqrt(w/a) relative to it
    assert [(g.conv, g.tensor) for g in scales] == [("conv", "image")]
    stats = collect_stats(model, ["image", "skip"], calibration)
    weight = numpy_helper.to_array(model.graph.initializer[0])
    balance = [np.sqrt(np.abs(weight[:, a:b]).max() / stats[t].amax) for (a, b), t in (((0, 3), "image"),
                                                                                       ((3, 11), "skip"))]
    assert scales[0].scale == pytest.approx(balance[0] / balance[1], rel=1e-5) and scales[0].scale > 2
    test = _concat_feeds(4, seed=1)
    for feed in test:
        np.testing.assert_allclose(_run(equalized, feed), _run(model, feed), rtol=1e-5, atol=1e-4)

    def int8_error(candidate):
        plan = plan_qdq(candidate)
        tensors = plan.activation_tensors()
        ranges = {t: _symmetric(s.amax) for t, s in collect_stats(candidate, tensors, calibration).items()}
        quantized = insert_qdq(candidate, plan, ranges)
        return np.mean([np.abs(_run(quantized, f) - _run(model, f)).mean() for f in test])

    assert int8_error(equalized) < 0.5 * int8_error(model)


def test_a_concat_with_other_readers_is_not_equalized():
    from mtc.quant.equalize import equalize_concat_inputs

    model = _concat_conv_model(extra_reader=True)
    unchanged, scales = equalize_concat_inputs(model, ["conv"], _concat_feeds(2))
    assert scales == [] and unchanged is model


def _decoder_concat_artifact(folder):
    """src -> conv (large activations) = skip; Concat(src, skip) -> conv that leans on src."""
    src = helper.make_tensor_value_info("src", TensorProto.FLOAT, [1, 3, "h", "w"])
    alpha = helper.make_tensor_value_info("pha", TensorProto.FLOAT, [1, 1, "h", "w"])
    rng = np.random.default_rng(5)
    n1, i1 = _conv("encoder", "src", "skip", 3, 8, weights=(rng.standard_normal((8, 3, 3, 3)) * 8).astype(np.float32))
    concat = helper.make_node("Concat", ["src", "skip"], ["cat"], name="cat", axis=1)
    w2 = rng.standard_normal((1, 11, 3, 3)).astype(np.float32)
    w2[:, 3:] *= 0.01
    n2, i2 = _conv("decoder", "cat", "logit", 11, 1, weights=w2)
    sig = helper.make_node("Sigmoid", ["logit"], ["pha"], name="sig")
    return write_model_artifact(folder, _model([n1, concat, n2, sig], i1 + i2, [src], [alpha]))


def test_quantize_artifact_equalizes_a_decoder_style_concat_and_reports_it(tmp_path):
    source = _decoder_concat_artifact(tmp_path / "toy")
    mads = {}
    for equalize in (True, False):
        out = tmp_path / f"int8-{equalize}"
        outcome = quantize_artifact(source, out, precision="int8", gates=Gates(None, None), data=SMALL,
                                    config=Int8Config(equalize_concats=equalize),
                                    fallback=Fallback(enabled=False))
        mads[equalize] = max(c.mad for c in outcome.check.clips)
        groups = outcome.report["int8"]["equalized_concat_inputs"]
        assert [(g["conv"], g["input"]) for g in groups] == ([("decoder", "src")] if equalize else [])
        assert ("concat-input equalization" in (out / "report.html").read_text()) == equalize
    assert mads[True] < 0.5 * mads[False]


def test_no_equalize_flag_turns_equalization_off(tmp_path):
    source = _decoder_concat_artifact(tmp_path / "toy")
    for flags, expected in (([], [["decoder", "src"]]), (["--no-equalize"], [])):
        out = tmp_path / f"int8{len(flags)}"
        result = subprocess.run([sys.executable, "-m", "mtc", "quantize", str(source), "-o", str(out), "--int8",
                                 "--no-fallback", "--max-mad", "1000", "--max-dtssd", "1000", "--calib-frames", "4",
                                 *flags], capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        groups = json.loads((out / "report.json").read_text())["int8"]["equalized_concat_inputs"]
        assert [[g["conv"], g["input"]] for g in groups] == expected


def test_quantize_never_replaces_the_artifact_it_reads(tmp_path):
    source = _decoder_concat_artifact(tmp_path / "toy")
    before = {p.name: p.read_bytes() for p in source.iterdir()}
    result = subprocess.run([sys.executable, "-m", "mtc", "quantize", str(source), "-o", str(tmp_path / "." / "toy"),
                             "--int8", "--force"], capture_output=True, text=True, timeout=600)
    assert result.returncode != 0 and "is the artifact being quantized" in result.stderr
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before


def test_keep_float_flag_keeps_the_named_layer_float_and_refuses_unknown_names(tmp_path):
    source = _decoder_concat_artifact(tmp_path / "toy")
    base = [sys.executable, "-m", "mtc", "quantize", str(source), "--int8", "--no-fallback", "--max-mad", "1000",
            "--max-dtssd", "1000", "--calib-frames", "4"]
    result = subprocess.run([*base, "-o", str(tmp_path / "kept"), "--keep-float", "decoder"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    model = onnx.load(str(tmp_path / "kept" / "model.onnx"))
    decoder = next(n for n in model.graph.node if n.name == "decoder")
    assert any(i.name == decoder.input[1] and i.data_type == TensorProto.FLOAT for i in model.graph.initializer)
    report = json.loads((tmp_path / "kept" / "report.json").read_text())["int8"]
    assert "decoder" not in [g["conv"] for g in report["equalized_concat_inputs"]]

    result = subprocess.run([*base, "-o", str(tmp_path / "bad"), "--keep-float", "decoder,Conv_999"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode != 0 and "no layer named Conv_999" in result.stderr
    assert not (tmp_path / "bad").exists()


def test_calibration_sees_every_builtin_scene_and_checks_use_the_demo_clip(tmp_path):
    from mtc.artifact.manifest import read_manifest
    from mtc.data.builtin_clip import CALIBRATION_SHOTS, DEMO_SHOTS, ClipSpec, builtin_clip
    from mtc.quant.data_plan import calibration_clips, check_clips

    io = read_manifest(_toy_artifact(tmp_path / "toy")).io
    plan = DataPlan(calib_frames=12, check_frames=12, settings=((64, 48, None),))
    (calib,), (check,) = calibration_clips(io, plan), check_clips(io, plan)
    np.testing.assert_array_equal(
        calib.frames, builtin_clip(ClipSpec(width=64, height=48, frames=12, shots=CALIBRATION_SHOTS)))
    np.testing.assert_array_equal(
        check.frames, builtin_clip(ClipSpec(width=64, height=48, frames=12, seed=1, shots=DEMO_SHOTS)))


def test_image_models_also_calibrate_and_check_on_disjoint_builtin_photos(tmp_path):
    from mtc.artifact.manifest import default_quant_recipe, read_manifest
    from mtc.data.builtin_photos import CALIBRATION_PHOTOS, CHECK_PHOTOS
    from mtc.quant.data_plan import calibration_clips, check_clips

    io = read_manifest(_toy_artifact(tmp_path / "toy")).io
    plan = DataPlan(calib_frames=4, check_frames=4, settings=((64, 48, None),))
    calib, check = calibration_clips(io, plan, photos=True), check_clips(io, plan, photos=True)
    assert len(calib) == 1 + len(CALIBRATION_PHOTOS) and len(check) == 1 + len(CHECK_PHOTOS)
    assert {c.name for c in calib[1:]}.isdisjoint(c.name for c in check[1:])
    assert all(c.frames.shape == (1, 48, 64, 3) for c in calib[1:] + check[1:])
    # Footage given by the user replaces the built-in photos too.
    assert len(check_clips(io, dataclasses.replace(plan, check="builtin"), photos=True)) == 1
    # Which models get them by default: image models fed one image alone.
    assert default_quant_recipe("image_matting", io).builtin_photos
    assert not default_quant_recipe("video_matting", io).builtin_photos
    with_background = ModelIO(inputs=io.inputs + (TensorSpec("bgr", "background"),), outputs=io.outputs)
    assert not default_quant_recipe("image_matting", with_background).builtin_photos


def test_footage_keeps_its_aspect_unless_the_model_stretches_frames_to_a_fixed_size(tmp_path):
    from PIL import Image

    from mtc.artifact.manifest import Preprocess, read_manifest
    from mtc.quant.data_plan import calibration_clips, check_clips

    # A 4:3 photo whose top eighth is green, and a portrait one.
    landscape = np.zeros((300, 400, 3), np.uint8)
    landscape[:, :, 2] = 255
    landscape[:37, :, 1], landscape[:37, :, 2] = 255, 0
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(landscape).save(folder / "a_landscape.png")
    Image.fromarray(np.zeros((400, 300, 3), np.uint8)).save(folder / "b_portrait.png")
    io = read_manifest(_toy_artifact(tmp_path / "toy")).io
    assert io.preprocess.resize != "fixed"
    plan = DataPlan(calib=folder, check=folder, settings=((64, 36, None),))
    for clips in (calibration_clips(io, plan), check_clips(io, plan)):
        wide, tall = (c.frames[0] for c in clips)
        # cropped to 16:9 (the green band cut off), and the portrait photo checked upright
        assert wide.shape == (36, 64, 3) and wide[0, :, 1].max() < 40 and tall.shape == (64, 36, 3)
    fixed = dataclasses.replace(io, preprocess=Preprocess(resize="fixed", fixed_size=(36, 64)))
    wide, tall = (c.frames[0] for c in calibration_clips(fixed, plan))
    # a fixed-size model sees what its runtime gives it: the whole photo, stretched
    assert wide.shape == tall.shape == (36, 64, 3) and wide[0, :, 1].min() > 200


def test_several_sources_each_give_their_frames_for_calibration_and_checks(tmp_path, caplog):
    from PIL import Image

    from mtc.artifact.manifest import read_manifest
    from mtc.data.builtin_photos import CALIBRATION_PHOTOS
    from mtc.quant.data_plan import calibration_clips, check_clips

    folder = tmp_path / "photos"
    folder.mkdir()
    for name, level in (("a.png", 40), ("b.png", 200)):
        Image.fromarray(np.full((36, 64, 3), level, np.uint8)).save(folder / name)
    toy = _toy_artifact(tmp_path / "toy")
    io = read_manifest(toy).io
    plan = DataPlan(calib=("builtin", folder, "builtin"), calib_frames=4, check=(folder, "builtin"), check_frames=4,
                    settings=((64, 36, None),))
    assert plan.calib == ("builtin", folder)  # a repeat is dropped, the order kept
    calib, check = calibration_clips(io, plan, photos=True), check_clips(io, plan, photos=True)
    # the built-in clip with its photos (`builtin` asked for), then the folder's two images
    assert [c.frames.shape[0] for c in calib] == [4] + [1] * len(CALIBRATION_PHOTOS) + [1, 1]
    assert [c.name for c in calib[-2:]] == ["a.png", "b.png"] and calib[-1].frames.min() == 200
    # checks: the folder's images, then the built-in clip; the user's sources replace the photos
    assert [c.name for c in check[:2]] == ["a.png", "b.png"] and len(check) == 3 and check[2].frames.shape[0] == 4
    assert DataPlan(calib=folder).calib == (folder,) and DataPlan().check is None
    # the folder both calibrates and checks: said, as the same frames; the built-in clips differ
    assert plan.checked_on_calibration == (folder,)
    assert DataPlan(calib=("builtin", str(folder / ".")), check=("builtin", folder)).checked_on_calibration == (folder,)
    assert DataPlan(calib="builtin", check=("builtin", folder)).checked_on_calibration == ()
    with caplog.at_level(logging.WARNING, logger="mtc"):
        quantize_artifact(toy, tmp_path / "fp16", precision="fp16", data=plan, gates=Gates(None, None))
    assert f"{folder} is both a calibration and a check source" in caplog.text
    with pytest.raises(MtcError, match="no calibration or check source"):
        DataPlan(check=())


@pytest.mark.parametrize(("recipe_preset", "activation_type", "quantize_outputs"),
                         [("tensorrt", "int8", False), ("speed", "uint8", True)])
def test_without_a_config_the_manifests_recipe_names_the_preset(tmp_path, recipe_preset, activation_type,
                                                                 quantize_outputs):
    source = _toy_artifact(tmp_path / "toy")
    manifest = json.loads((source / MANIFEST_NAME).read_text())
    manifest["quantization"] = {"int8_preset": recipe_preset, "builtin_photos": False}
    (source / MANIFEST_NAME).write_text(json.dumps(manifest))
    outcome = quantize_artifact(source, tmp_path / "int8", precision="int8", data=SMALL,
                                gates=Gates(max_mad=None, max_dtssd=None), fallback=Fallback(enabled=False))
    assert outcome.report["int8"]["activation_type"] == activation_type
    assert outcome.report["int8"]["quantize_outputs"] is quantize_outputs


def test_float_budget_spends_the_macs_on_the_most_error_removed_per_mac():
    from mtc.quant.sensitivity import spend_float_budget

    baseline = {"mad": 1.0, "dtssd": 1.0}  # all-INT8 error 2.0
    removal = {"big": {"mad": 0.4, "dtssd": 0.4},     # removes 1.2 for 10% of the MACs
               "small": {"mad": 0.8, "dtssd": 0.8},   # removes 0.4 for 1%: the best per MAC
               "tiny": {"mad": 0.97, "dtssd": 0.98},  # removes 0.05 (2.5%): below the 5% floor
               "worse": {"mad": 1.1, "dtssd": 1.0}}   # float here makes it worse
    shares = {"big": 0.10, "small": 0.01, "tiny": 0.001, "worse": 0.001}
    assert spend_float_budget(baseline, removal, shares, 0.02) == ["small"]
    assert spend_float_budget(baseline, removal, shares, 0.11) == ["small", "big"]
    assert spend_float_budget(baseline, removal, shares, 0.105) == ["small"]  # "big" no longer fits
    assert spend_float_budget(baseline, removal, shares, 0.005) == []
    assert spend_float_budget(baseline, removal, shares, 1.0, min_gain=0.0) == ["tiny", "small", "big"]  # 50, 40, 12 per MAC


def test_float_budget_keeps_the_layer_whose_return_to_float_pays_and_reports_its_cost(tmp_path):
    source = _toy_artifact(tmp_path / "toy")
    lenient = Gates(max_mad=1000.0, max_dtssd=1000.0)  # the budget acts even when the gates pass
    config = Int8Config(method="minmax", quantize_outputs=False, float_budget=0.8)  # conv2 holds 72% of the MACs
    outcome = quantize_artifact(source, tmp_path / "int8", precision="int8", config=config, gates=lenient, data=SMALL)
    int8 = outcome.report["int8"]
    assert int8["float_budget"]["layers"] == ["conv2"] and int8["fallback_layers"] == ["conv2"]
    assert int8["float_budget"]["mac_share"] == pytest.approx(0.72)
    removal = outcome.report["removal_sensitivity"]
    assert set(removal["layers"]) == {"conv1", "conv2", "conv3"}
    assert removal["layers"]["conv2"]["mad"] < removal["all_int8"]["mad"]
    assert max(c.mad for c in outcome.check.clips) < min(c["mad"] for c in int8["all_int8_check"]["clips"])
    assert "sensitivity" not in outcome.report  # the gates passed: no fallback search
    speed = outcome.report["speed"]
    assert speed["fps_all_int8"] > 0 and speed["float_layers_cost"] == pytest.approx(1 - speed["fps"] / speed["fps_all_int8"])
    html = (tmp_path / "int8" / "report.html").read_text()
    assert "float budget" in html and "All-INT8 ran" in html
    assert "probed 3 of the 3 layers" in html and "isolated INT8 error" in html

    small = quantize_artifact(source, tmp_path / "small", precision="int8",
                              config=Int8Config(method="minmax", quantize_outputs=False, float_budget=0.3),
                              gates=lenient, data=SMALL)
    assert "conv2" not in small.report["int8"]["float_budget"]["layers"]


def test_speed_is_also_timed_on_openvino_where_auto_would_run_the_artifact_there(tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    from mtc.backends import registry as select

    monkeypatch.setattr(select, "probe_availability", lambda: select.Availability(openvino=True))
    source = _toy_artifact(tmp_path / "toy")
    lenient = Gates(max_mad=1000.0, max_dtssd=1000.0)
    # the float budget keeps conv2 (72% of the MACs) in float, so there is an all-INT8 model to time
    config = Int8Config(method="minmax", activation_type="uint8", quantize_outputs=False, float_budget=0.8)
    unsigned = quantize_artifact(source, tmp_path / "u8", precision="int8", config=config, gates=lenient, data=SMALL)
    assert unsigned.report["int8"]["fallback_layers"] == ["conv2"]
    speed = unsigned.report["speed"]
    assert speed["auto_backend"] == "openvino"
    openvino = speed["openvino"]
    assert openvino["fps"] > 0 and openvino["speedup"] == pytest.approx(openvino["fps"] / openvino["fps_fp32"])
    assert openvino["vs_onnxruntime_fp32"] == pytest.approx(openvino["fps"] / speed["fps_fp32"])
    # what the float layer costs where auto runs the artifact, beside ONNX Runtime's figure
    assert openvino["float_layers_cost"] == pytest.approx(1 - openvino["fps"] / openvino["fps_all_int8"])
    page = (tmp_path / "u8" / "report.html").read_text()
    assert "OpenVINO, which" in page and page.count("All-INT8 ran") == 2

    # signed activations stay on ONNX Runtime under auto, so OpenVINO's speed would mislead
    signed = quantize_artifact(source, tmp_path / "s8", precision="int8",
                               config=Int8Config(method="minmax", activation_type="int8"), gates=lenient, data=SMALL)
    assert signed.report["speed"]["auto_backend"] == "onnxruntime" and "openvino" not in signed.report["speed"]
    assert "OpenVINO, which" not in (tmp_path / "s8" / "report.html").read_text()


def test_float_budget_outside_zero_to_one_is_refused():


    with pytest.raises(MtcError, match="float budget"):
        Int8Config(float_budget=2.0)
    with pytest.raises(MtcError, match="float budget probes"):
        Int8Config(float_budget_probes=0)


def test_float_budget_probes_are_capped_to_the_layers_with_most_error_per_mac(tmp_path):
    from mtc.graph_stats import node_macs

    source = _toy_artifact(tmp_path / "toy")
    # every layer fits 80% of the MACs; one probe allowed. Without the affine correction the
    # per-layer fit runs only to rank the probes.
    config = Int8Config(method="minmax", quantize_outputs=False, float_budget=0.8, float_budget_probes=1,
                        affine_correction=False)
    outcome = quantize_artifact(source, tmp_path / "int8", precision="int8", config=config,
                                gates=Gates(max_mad=1000.0, max_dtssd=1000.0), data=SMALL)

    int8 = outcome.report["int8"]
    assert int8["float_budget"]["fitting_layers"] == 3 and int8["float_budget"]["probed_layers"] == 1
    errors = int8["isolated_layer_error"]
    assert set(errors) == {"conv1", "conv2", "conv3"} and all(e > 0 for e in errors.values())
    macs = node_macs(onnx.load(str(source / "model.onnx")), {"src": np.zeros((1, 3, 48, 64), np.float32)})
    expected = max(errors, key=lambda n: errors[n] / macs[n])
    assert list(outcome.report["removal_sensitivity"]["layers"]) == [expected]


def test_layers_are_probed_in_order_of_error_per_mac_and_unmeasured_ones_last():
    from mtc.quant.sensitivity import most_error_per_mac

    shares = {"a": 0.01, "b": 0.02, "c": 0.04, "d": 0.01}
    errors = {"a": 0.02, "b": 0.1, "c": 0.1}  # per MAC: 2, 5, 2.5; "d" was not measured
    assert most_error_per_mac(["d", "a", "b", "c"], errors, shares) == ["b", "c", "a", "d"]


def test_layer_fit_relative_error_matches_a_direct_computation():
    from mtc.quant.affine import _ChannelFit

    rng = np.random.default_rng(3)
    reference = rng.standard_normal((2, 3, 5, 7)) * np.array([1.0, 4.0, 0.5])[None, :, None, None]
    quantized = 0.9 * reference + 0.1 + rng.standard_normal(reference.shape) * 0.05
    fit = _ChannelFit(3)
    fit.update(quantized[:1], reference[:1])
    fit.update(quantized[1:], reference[1:])
    gamma, beta = fit.solve()

    def direct(g, b):
        predicted = g[None, :, None, None] * quantized + b[None, :, None, None]
        centred = reference - reference.mean(axis=(0, 2, 3), keepdims=True)
        return ((predicted - reference) ** 2).sum() / (centred ** 2).sum()

    assert fit.relative_error(gamma, beta) == pytest.approx(direct(gamma, beta), rel=1e-4)
    assert fit.relative_error() == pytest.approx(direct(np.ones(3), np.zeros(3)), rel=1e-4)
    assert fit.relative_error(gamma, beta) < fit.relative_error()


def test_shortest_passing_prefix_doubles_then_bisects():
    from mtc.quant.fp16 import shortest_passing_prefix

    order = [f"op{i}" for i in range(100)]
    trials = []

    def needs_nine(prefix):
        trials.append(len(prefix))
        return len(prefix) >= 9

    assert shortest_passing_prefix(order, needs_nine, limit=50) == order[:9]
    assert trials[:5] == [1, 2, 4, 8, 16] and len(trials) <= 2 * 7
    assert shortest_passing_prefix(order, needs_nine, limit=8) is None  # not within the limit
    assert shortest_passing_prefix(order, lambda prefix: True, limit=50) == order[:1]
    assert shortest_passing_prefix(order[:3], lambda prefix: len(prefix) == 3, limit=50) == order[:3]


def test_sensitive_units_bisects_only_runs_with_visible_error():
    from mtc.quant.fp16 import sensitive_units

    order = [f"op{i}" for i in range(200)]
    cost = {"op37": 0.9, "op150": 0.4, "op151": 0.3}  # share of the gate each op uses alone in FP16
    calls = []

    def isolated_error(run):
        calls.append(len(run))
        return sum(cost.get(op, 0.001) for op in run)

    units = sensitive_units(order, isolated_error, visible=0.25)
    assert sorted(op for run, _ in units for op in run) == sorted(order)  # a partition of the graph
    assert [run for run, _ in units[:3]] == [["op37"], ["op150"], ["op151"]]  # worst first, down to single ops
    assert units[0][1] == pytest.approx(0.9)
    assert len(calls) < 60  # group testing, not one check per op
    assert all(len(run) > 1 for run, _ in units[3:6])  # quiet runs stay whole


def _fp16_sensitive_stem_artifact(folder):
    """A stem whose weights FP16 cannot hold (1000.3 becomes 1000.5) feeding a scaled sigmoid."""
    src = helper.make_tensor_value_info("src", TensorProto.FLOAT, [1, 3, "h", "w"])
    alpha = helper.make_tensor_value_info("pha", TensorProto.FLOAT, [1, 1, "h", "w"])
    stem, inits = _conv("stem", "src", "a", 3, 1, k=1,
                        weights=np.array([1000.3, -1000.1, 0.0], np.float32).reshape(1, 3, 1, 1))
    nodes = [stem, helper.make_node("Mul", ["a", "k"], ["b"], name="scale"),
             helper.make_node("Relu", ["b"], ["c"], name="relu"), helper.make_node("Sigmoid", ["c"], ["pha"], name="sig")]
    scale = numpy_helper.from_array(np.array(0.01, np.float32), "k")
    return write_model_artifact(folder, _model(nodes, inits + [scale], [src], [alpha]))


def test_fp16_fallback_keeps_the_most_sensitive_ops_in_fp32(tmp_path):
    source = _fp16_sensitive_stem_artifact(tmp_path / "toy")
    gates = Gates(max_mad=0.1, max_dtssd=0.1)
    outcome = quantize_artifact(source, tmp_path / "fp16", precision="fp16", gates=gates, data=SMALL)
    fp16 = outcome.report["fp16"]
    all_fp16 = max(c["mad"] for c in fp16["all_fp16_check"]["clips"])
    assert all_fp16 > 0.1  # the case is built to need fallback
    assert outcome.passed and fp16["sensitive_fp32"] == ["stem"] and fp16["kept_fp32"] == ["stem"]
    assert fp16["sensitivity"][0]["ops"] == ["stem"]
    assert max(c.mad for c in outcome.check.clips) < all_fp16 / 4
    assert [s["float_layers"] for s in outcome.report["fallback_steps"]] == [1]
    model = onnx.load(str(tmp_path / "fp16" / "model.onnx"))
    stem = next(n for n in model.graph.node if n.name == "stem")
    assert next(i for i in model.graph.initializer if i.name == stem.input[1]).data_type == TensorProto.FLOAT
    page = (tmp_path / "fp16" / "report.html").read_text()
    assert "most FP16-sensitive ops that pass the gates: stem" in page
    assert "<h2>Fallback search</h2>" in page and "ranked by" not in page  # INT8's rankings are not FP16's

    refused = quantize_artifact(source, tmp_path / "strict", precision="fp16", gates=gates, data=SMALL,
                                fallback=Fallback(enabled=False))
    assert not refused.passed and refused.report["fp16"]["sensitive_fp32"] == []


def test_float_budget_flag_sets_the_share_in_percent_and_zero_turns_it_off(tmp_path):
    source = _toy_artifact(tmp_path / "toy")
    base = [sys.executable, "-m", "mtc", "quantize", str(source), "--int8", "--preset", "tensorrt", "--method", "minmax",
            "--no-fallback", "--max-mad", "1000", "--max-dtssd", "1000", "--calib-frames", "4"]
    for budget, folder in (("80", "spent"), ("0", "off")):
        result = subprocess.run([*base, "--float-budget", budget, "-o", str(tmp_path / folder)],
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
    spent = json.loads((tmp_path / "spent" / "report.json").read_text())
    assert spent["int8"]["float_budget"]["budget_mac_share"] == pytest.approx(0.8)
    assert spent["int8"]["float_budget"]["layers"] == ["conv2"]
    off = json.loads((tmp_path / "off" / "report.json").read_text())
    assert "float_budget" not in off["int8"] and "removal_sensitivity" not in off
    result = subprocess.run([*base, "--float-budget", "150", "-o", str(tmp_path / "bad")], capture_output=True, text=True)
    assert result.returncode != 0 and "150" in result.stderr and not (tmp_path / "bad").exists()
    result = subprocess.run([*base, "--float-budget", "80", "--float-budget-probes", "2", "-o", str(tmp_path / "capped")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    capped = json.loads((tmp_path / "capped" / "report.json").read_text())["int8"]["float_budget"]
    assert capped["fitting_layers"] == 3 and capped["probed_layers"] == 2


# ---- weight bits and the integer kernels' fidelity ----------------------------------------------

def test_seven_bit_weights_stay_within_63_on_their_own_scale():
    from mtc.quant.qdq import quantize_weight

    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    values, scale = quantize_weight(w, 0, bits=7)
    assert np.abs(values).max() == 63
    np.testing.assert_allclose(scale, np.abs(w).reshape(4, -1).max(axis=1) / 63, rtol=1e-6)
    full, full_scale = quantize_weight(w, 0)
    assert np.abs(full).max() == 127 and np.all(full_scale < scale)


def test_auto_weight_bits_tries_seven_bits_only_where_kernels_are_unfaithful(tmp_path, monkeypatch):
    from mtc.quant import pipeline

    source = _toy_artifact(tmp_path / "toy")
    faithful = quantize_artifact(source, tmp_path / "a", precision="int8", config=Int8Config(method="minmax"),
                                 gates=Gates(max_mad=50, max_dtssd=50), data=SMALL)
    fidelity = faithful.report["int8"]["kernels_vs_simulation"]
    assert set(fidelity) >= {"cpu", "mad", "dtssd", "simulation_vs_fp32_mad"}
    assert faithful.report["int8"]["weight_bits"] == 8 and "weight_bits_choice" not in faithful.report["int8"]

    real = pipeline.kernel_fidelity
    monkeypatch.setattr(pipeline, "kernel_fidelity",  # as on a CPU whose kernels saturate
                        lambda *args, **kwargs: {**real(*args, **kwargs), "mad": 5.0, "simulation_vs_fp32_mad": 1.0})
    calibrations, collect_stats = [], pipeline.collect_stats
    monkeypatch.setattr(pipeline, "collect_stats", lambda *a, **k: calibrations.append(1) or collect_stats(*a, **k))
    chosen = quantize_artifact(source, tmp_path / "b", precision="int8", config=Int8Config(method="minmax"),
                               gates=Gates(max_mad=50, max_dtssd=50), data=SMALL)
    choice = chosen.report["int8"]["weight_bits_choice"]
    assert set(choice["candidates"]) == {"8", "7"}
    assert len(calibrations) == 1  # the ranges do not depend on the weight bits: calibrated once for both
    best = min(choice["candidates"].items(), key=lambda kv: (not kv[1]["passed"], kv[1]["score"]))
    assert str(choice["chosen"]) == best[0] == str(chosen.report["int8"]["weight_bits"])
    limit = 63 if choice["chosen"] == 7 else 127
    weights = [numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "b" / "model.onnx")).graph.initializer
               if i.name.endswith("__int8")]
    assert weights and max(np.abs(w.astype(np.int32)).max() for w in weights) <= limit

    fixed = quantize_artifact(source, tmp_path / "c", precision="int8",
                              config=Int8Config(method="minmax", weight_bits=7),
                              gates=Gates(max_mad=50, max_dtssd=50), data=SMALL)
    assert fixed.report["int8"]["weight_bits"] == 7 and "weight_bits_choice" not in fixed.report["int8"]


def test_checks_run_on_the_backend_the_placement_is_for(tmp_path, monkeypatch):
    """With check_backend="openvino" every INT8 check (the all-INT8 check, the kernels' fidelity,
    the fallback search) runs the candidates on OpenVINO, and the report says so; the default
    runs them on ONNX Runtime."""
    pytest.importorskip("openvino")
    from mtc.backends.openvino import session as openvino_session
    from mtc.quant.config import preset

    opened = []

    class Counting(openvino_session.OpenVinoBackend):
        def __init__(self, *args, **kwargs):
            opened.append(args[0])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(openvino_session, "OpenVinoBackend", Counting)
    source = _toy_artifact(tmp_path / "toy")
    on_ort = quantize_artifact(source, tmp_path / "ort", precision="int8", config=Int8Config(method="minmax"),
                               gates=Gates(max_mad=50, max_dtssd=50), data=SMALL)
    assert on_ort.report["int8"]["kernels_vs_simulation"]["backend"] == "onnxruntime"
    after_ort = len(opened)
    strict = Gates(max_mad=1e-6, max_dtssd=1e-6)  # fails: the fallback search runs too
    on_openvino = quantize_artifact(source, tmp_path / "ov", precision="int8",
                                    config=Int8Config(method="minmax", check_backend="openvino"), gates=strict,
                                    data=SMALL)

    assert preset("dense").check_backend == preset("openvino").check_backend == "openvino"
    assert preset("speed").check_backend == "onnxruntime"
    assert on_openvino.report["int8"]["kernels_vs_simulation"]["backend"] == "openvino"
    assert after_ort == 0  # ONNX Runtime's checks opened no OpenVINO session
    steps = len(on_openvino.report["fallback_steps"])
    assert steps >= 1 and len(opened) >= 2 + steps  # the all-INT8 check, the fidelity probe, each fallback step


def test_unknown_check_backends_are_refused():


    with pytest.raises(MtcError, match="unknown check backend 'tensorrt'"):
        Int8Config(check_backend="tensorrt")


def test_weight_bits_must_be_seven_or_eight():


    with pytest.raises(MtcError, match="not 7 or 8"):
        Int8Config(weight_bits=4)


def test_checks_measure_a_candidates_nan_instead_of_refusing_it():
    from mtc.quant.calibration import Clip
    from mtc.quant.checks import compare_clip, run_alphas

    io = ModelIO(inputs=(TensorSpec("src", "image"),), outputs=(TensorSpec("pha", "alpha"),))

    class NanBackend:
        name, compiles_per_shape = "nan", False
        input_names, output_names = ("src",), ("pha",)

        def run(self, feeds):
            return {"pha": np.full((1, 1, *feeds["src"].shape[2:]), np.nan, np.float32)}

    clip = Clip("c", np.zeros((2, 32, 32, 3), np.uint8))
    alphas = run_alphas(io, NanBackend(), clip)  # a session for users would refuse this output
    assert np.isnan(alphas).all()
    assert compare_clip(clip, np.zeros_like(alphas), alphas).nonfinite_frames == [0, 1]


def test_statistics_are_collected_in_passes_that_bound_the_exposed_memory():
    from mtc.quant.ranges import collect_stats, stat_passes

    model = _toy_chain()
    tensors = ["a", "a_relu", "b", "c"]
    feeds = [{"x": np.random.default_rng(i).standard_normal((1, 3, 16, 16)).astype(np.float32)} for i in range(3)]
    one_pass = collect_stats(model, tensors, feeds)
    calls = []
    grouped = collect_stats(model, tensors, feeds, budget=8 * 16 * 16 * 4, progress=lambda steps: calls.append(steps))

    # a, a_relu and b hold 8 channels of 16x16 float32 (8 KiB each), c holds 4: one budget's worth
    # each, and c does not fit beside b.
    assert stat_passes(model, tensors, feeds[0], budget=8 * 16 * 16 * 4) == [["a"], ["a_relu"], ["b"], ["c"]]
    assert len(calls) == len(feeds) * 4  # a run per feed per pass: one step per feed in all, for a bar per feed
    assert sum(calls) == pytest.approx(len(feeds))
    for name in tensors:
        assert grouped[name].amax == one_pass[name].amax and grouped[name].count == one_pass[name].count
        np.testing.assert_array_equal(grouped[name].hist, one_pass[name].hist)
    assert len(stat_passes(model, tensors, feeds[0])) == 1  # small tensors: one pass, as before


def test_a_pass_per_group_of_tensors_fills_a_bar_of_one_step_per_feed():
    # Statistics over 2 feeds whose 4 tensors take 4 exposed passes: 8 runs, each a quarter of
    # a feed, so the bar ends at 2/2 instead of running on to 8/2.
    import io

    from rich.console import Console

    from mtc.quant.ranges import collect_stats
    from mtc.runtime.progress import Stages

    model = _toy_chain()
    feeds = [{"x": np.full((1, 3, 16, 16), i, np.float32)} for i in range(2)]
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=True, width=120, color_system=None)
    with Stages(console).stage("calibration: activation ranges", total=len(feeds)) as advance:
        collect_stats(model, ["a", "a_relu", "b", "c"], feeds, budget=8 * 16 * 16 * 4, progress=advance)
    shown = [int(done) for done in re.findall(r"\b(\d+)/2\b", stream.getvalue())]
    assert shown and max(shown) == 2, stream.getvalue()


def test_pass_sizes_follow_shapes_computed_inside_the_graph():
    """A reshape whose target is computed from Shape (as a transformer's window and head
    reshapes are) has a size only once the shape arithmetic is folded: the sizing must know it,
    not assume an unknown tensor is large."""
    from onnx import TensorProto, helper

    from mtc.quant.ranges import _tensor_bytes

    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Concat", ["batch", "minus_one"], ["target"], axis=0),
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Reshape", ["r", "target"], ["flat"]),
        helper.make_node("Sigmoid", ["flat"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "reshape", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("zero", TensorProto.INT64, [1], [0]), helper.make_tensor("minus_one", TensorProto.INT64, [1], [-1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sizes = _tensor_bytes(model, {"x": np.zeros((2, 3, 8, 4), np.float32)})
    assert sizes["flat"] == sizes["r"] == 2 * 3 * 8 * 4 * 4
    assert sizes["y"] == 2 * 3 * 8 * 4 * 4


def test_peaks_measured_inside_the_graph_equal_the_exposed_tensors_peaks():
    """FP16's magnitudes in one run per feed (each tensor's max |x| computed by the graph, only
    scalars out) are the peaks of the tensors themselves; a scalar tensor is measured too, and
    a tensor empty for the feed has peak 0."""
    from onnx import TensorProto, helper

    from mtc.quant.ranges import collect_stats, tensor_peaks, with_peaks

    model = _toy_chain()
    tensors = ["a", "a_relu", "b", "c"]
    feeds = [{"x": (10 * np.random.default_rng(i).standard_normal((1, 3, 16, 16))).astype(np.float32)} for i in range(3)]
    calls = []
    peaks = tensor_peaks(model, tensors, feeds, progress=lambda: calls.append(1))
    exposed = collect_stats(model, tensors, feeds)

    assert len(calls) == len(feeds)
    assert all(peaks[name] == pytest.approx(exposed[name].amax, rel=1e-6) and peaks[name] > 0 for name in tensors)
    peaked = with_peaks(model, tensors)
    assert len(peaked.graph.output) == len(model.graph.output) + len(tensors)
    # each tensor's reduction follows the node that makes it, so the tensor need not outlive its readers
    order = [n.name for n in peaked.graph.node]
    for node in model.graph.node:
        for name in node.output:
            if name in tensors:
                assert order[order.index(node.name) + 1:order.index(node.name) + 3] == [
                    f"{name}__mtc_peak_abs", f"{name}__mtc_peak"]

    nodes = [helper.make_node("ReduceMean", ["x"], ["mean"], keepdims=0),  # a scalar
             helper.make_node("Slice", ["x", "zero", "zero", "axis"], ["nothing"]),  # empty
             helper.make_node("Neg", ["nothing"], ["still_nothing"]),
             helper.make_node("Mul", ["x", "mean"], ["y"])]
    graph = helper.make_graph(
        nodes, "odd", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2]),
         helper.make_tensor_value_info("still_nothing", TensorProto.FLOAT, None)],
        [helper.make_tensor("zero", TensorProto.INT64, [1], [0]), helper.make_tensor("axis", TensorProto.INT64, [1], [1])])
    odd = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    peaks = tensor_peaks(odd, ["mean", "still_nothing", "y"], [{"x": np.array([[-3.0, 1.0]], np.float32)}])
    assert peaks == {"mean": pytest.approx(1.0), "still_nothing": 0.0, "y": pytest.approx(3.0)}
