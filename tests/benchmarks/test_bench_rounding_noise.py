"""benchmarks/bench_rounding_noise.py: the perturbation and the dither it applies, the weights-only
graph, its RESULTS.md section and its refusals. The measurement itself runs real artifacts
(minutes), so it is not run here."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper


@pytest.fixture(scope="module")
def bench(script_module):
    with script_module("bench_rounding_noise") as module:
        yield module


def _qdq_model() -> onnx.ModelProto:
    """y = DQ(Q(x)) * DQ(Q(w)): one activation quantizer (step 1) and one weight quantizer."""
    scale, zero = numpy_helper.from_array(np.array(1.0, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")
    weight = numpy_helper.from_array(np.array([1.0], np.float32), "w")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q_x"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq_x"),
             helper.make_node("QuantizeLinear", ["w", "s", "z"], ["wq"], name="q_w"),
             helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wd"], name="dq_w"),
             helper.make_node("Mul", ["xd", "wd"], ["y"], name="product")]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], [scale, zero, weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]


def test_only_activation_quantizers_read_the_scaled_input_and_only_values_at_a_threshold_flip(bench):
    model = _qdq_model()
    x = np.array([2.4999990, 1.2], np.float32)  # the first a millionth below the threshold between 2 and 3
    perturbed = bench.scaled_quantizer_inputs(model, 1 + 1e-6)
    onnx.checker.check_model(perturbed)
    assert [n.op_type for n in perturbed.graph.node].count("Mul") == 2  # the model's own and the activation's gain
    assert [n.input[0] for n in perturbed.graph.node if n.name == "q_w"] == ["w"]
    assert _run(model, x).tolist() == [2.0, 1.0]
    assert _run(perturbed, x).tolist() == [3.0, 1.0]
    assert _run(bench.scaled_quantizer_inputs(model, 1.0), x).tolist() == [2.0, 1.0]
    assert len(model.graph.node) == 5  # the original is left alone


def _padded_qdq_model() -> onnx.ModelProto:
    """y = DQ(Pad(Q(x))): Q/DQ hoisted over a constant Pad, which pads with the zero point."""
    inits = [numpy_helper.from_array(np.array(1.0, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z"),
             numpy_helper.from_array(np.array([1, 1], np.int64), "pads")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q_x"),
             helper.make_node("Pad", ["xq", "pads", "z"], ["xp"], name="pad"),
             helper.make_node("DequantizeLinear", ["xp", "s", "z"], ["y"], name="dq_x")]
    graph = helper.make_graph(nodes, "padded", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def test_dither_redraws_the_rounding_error_of_values_off_the_grid_and_leaves_exact_and_clipped_ones(bench):
    model = _qdq_model()
    x = np.array([2.3, 1.0], np.float32)  # off the grid (nearest rounding: 2.0), and exactly on it
    draws = []
    for seed in range(1, 201):
        dithered = bench.dithered_quantizer_inputs(model, seed)
        draws.append(_run(dithered, x))
    draws = np.array(draws)
    onnx.checker.check_model(dithered)
    assert _run(model, x).tolist() == [2.0, 1.0]
    assert np.all(draws[:, 1] == 1.0)  # on the grid: its rounding is exact in every draw
    assert np.all(np.abs(draws[:, 0] - 2.3) <= 0.5 + 1e-6)  # one step's spread around x...
    assert len(np.unique(draws[:, 0])) > 20  # ...a new draw per seed...
    assert abs(draws[:, 0].mean() - 2.3) < 0.06  # ...centred on x, where nearest rounding is 0.3 off
    assert _run(bench.dithered_quantizer_inputs(model, 1), np.array([300.0, -0.5], np.float32))[0] == 127.0  # clipped
    assert len(model.graph.node) == 5  # the original is left alone


def test_dither_takes_the_offset_off_through_a_pad_and_pads_it_with_zeros(bench):
    model = _padded_qdq_model()
    x = np.array([0.3, -1.7, 4.0], np.float32)
    got = np.array([_run(bench.dithered_quantizer_inputs(model, seed), x) for seed in range(1, 101)])
    assert np.all(got[:, [0, 4]] == 0.0)  # the padding holds the zero point: 0.0 in every draw
    assert np.all(got[:, 3] == 4.0)
    assert abs(got[:, 1].mean() - 0.3) < 0.08 and abs(got[:, 2].mean() + 1.7) < 0.08


def test_weights_only_leaves_activations_float_and_keeps_the_int8_weights(bench):
    model = _qdq_model()
    model.graph.initializer[2].CopyFrom(numpy_helper.from_array(np.array([1.4], np.float32), "w"))  # INT8: 1.0
    x = np.array([2.3, -0.6], np.float32)
    assert _run(model, x).tolist() == [2.0, -1.0]
    np.testing.assert_array_equal(_run(bench.activations_in_float(model), x), x)
    for node in model.graph.node:  # nodes need no names: they are told apart by their outputs
        node.name = ""
    np.testing.assert_array_equal(_run(bench.activations_in_float(model), x), x)
    np.testing.assert_array_equal(_run(bench.dithered_quantizer_inputs(model, 1), np.array([2.0, -1.0], np.float32)),
                                  np.array([2.0, -1.0], np.float32))  # on the grid: exact in any draw
    padded = bench.activations_in_float(_padded_qdq_model())
    np.testing.assert_array_equal(_run(padded, np.array([0.3, -1.7, 4.0], np.float32)),
                                  np.array([0.0, 0.3, -1.7, 4.0, 0.0], np.float32))


def test_an_activation_quantizer_read_by_anything_but_its_dequantization_is_refused(bench):
    model = _qdq_model()
    model.graph.node.append(helper.make_node("Cast", ["xq"], ["xc"], to=TensorProto.FLOAT, name="cast"))
    with pytest.raises(bench.UnsupportedGraph, match="read by a Cast"):
        bench.dithered_quantizer_inputs(model, 1)


def test_the_results_section_shows_each_change_beside_the_error_it_is_a_share_of(bench, monkeypatch):
    row = {"artifact": "rvm-int8-dense", "clip": "builtin-512x288-seed1", "frames": 16,
           "simulation_vs_fp32": {"mad": 0.6, "dtssd": 0.5},
           "perturbed_vs_simulation": {"1e-06": {"mad": 0.45, "dtssd": 0.4}}}
    result = {"machine": {"date": "2026-12-05", "cpu": "a CPU", "cores": 2, "onnxruntime": "1.32.0", "cpu_class": "avx2"},
              "reference": "/work/rvm-fp32", "eps": [1e-6], "frames": 16, "rows": [row]}
    written = {}
    monkeypatch.setattr(bench, "update_results", lambda section, text: written.update({section: text}))
    bench.render(result)
    text = written["bench_rounding_noise"]
    assert "| artifact | clip | simulation vs FP32 | × (1 + 1e-06) vs simulation | share |" in text
    assert "| rvm-int8-dense | builtin-512x288-seed1 | 0.6 / 0.5 | 0.45 / 0.4 | 75% |" in text
    assert "class avx2" in text and "rvm-fp32" in text
    assert "Split by subtractive dither" not in text  # no --draws: no split table

    row["weights_only_vs_fp32"] = {"mad": 0.3, "dtssd": 0.35}
    row["dithered"] = {"draws": 8, "one_draw_vs_fp32": {"mad": 0.7, "dtssd": 0.72},
                       "mean_of_draws_vs_fp32": {"mad": 0.43, "dtssd": 0.44}}
    bench.render(result)
    text = written["bench_rounding_noise"]
    assert "Split by subtractive dither (8 draws" in text
    assert "| rvm-int8-dense | builtin-512x288-seed1 | 0.6 / 0.5 | 0.3 / 0.35 | 0.7 / 0.72 | 0.43 / 0.44 |" in text


@pytest.mark.parametrize(("argv", "message"), [
    (["--eps", "1e-6,abc"], "--eps takes numbers"),
    (["--eps", "0.5"], "must lie between 0 and 1e-2"),
    (["--draws", "1"], "needs at least 2"),
    ([], "is not an mtc artifact"),
])
def test_bad_arguments_stop_with_a_usage_error_naming_the_problem(bench, monkeypatch, capsys, tmp_path, argv, message):
    reference = tmp_path / "fp32"
    reference.mkdir()
    (reference / "manifest.json").write_text("{}")
    monkeypatch.setattr("sys.argv", ["bench_rounding_noise.py", "--reference", str(reference), *argv,
                                     str(tmp_path / "not-an-artifact")])
    with pytest.raises(SystemExit) as stopped:
        bench.main()
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err
