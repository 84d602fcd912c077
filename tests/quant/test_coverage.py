"""Range coverage: how much the check frames lose to clipping at the calibrated INT8 ranges."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from tiny_artifacts import write_logit_artifact

from mtc.quant.checks import spread
from mtc.quant.config import Fallback, Gates, Int8Config
from mtc.quant.coverage import coverage_report, range_coverage, representable
from mtc.quant.pipeline import DataPlan, quantize_artifact
from mtc.quant.ranges import TensorStats, clipping_error


def _relu_model():
    """x -> Relu -> y: the range under test is x's."""
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, "n", "m"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_representable_values_are_the_lowest_and_highest_level():
    low, high = representable((-1.0, 3.0), "uint8")
    assert high - low == pytest.approx(4.0) and low == pytest.approx(-1.0, abs=4 / 255)
    assert representable((0.0, 2.55), "uint8") == pytest.approx((0.0, 2.55))
    assert representable((-0.5, 1.27), "int8") == pytest.approx((-1.28, 1.27))


def _stats(values):
    stats = TensorStats()
    stats.update(values)
    return stats


def test_clipping_is_measured_against_the_rounding_error_on_both_data():
    # x = 0, 0.01, ..., 1.99 against the range [0, 1]: half the values clip, by 0.01 .. 0.99
    values = (np.arange(200, dtype=np.float32) / 100).reshape(1, 1, 10, 20)
    inside = np.clip(values, 0, 1)
    rounding = (1 / 255) ** 2 / 12
    expected = float(np.square(values - inside, dtype=np.float64).sum()) / 400 / rounding
    calibrated_inside = {"x": _stats(inside)}
    [coverage] = range_coverage(_relu_model(), {"x": (0.0, 1.0)}, [{"x": values}, {"x": inside}],
                                stats=calibrated_inside, activation_type="uint8")
    assert coverage.tensor == "x"
    assert coverage.clipped_share == pytest.approx(99 / 400)  # 1.01 .. 1.99 of 400 values
    assert coverage.clip_to_round == pytest.approx(expected, rel=1e-5)
    assert coverage.calibration_clip_to_round == 0 and coverage.outgrown
    # calibrated on the same wide values, the clipping is the range's own choice, not outgrown
    [same] = range_coverage(_relu_model(), {"x": (0.0, 1.0)}, [{"x": values}, {"x": inside}],
                            stats={"x": _stats(np.concatenate([values, inside]))}, activation_type="uint8")
    assert same.calibration_clip_to_round == pytest.approx(expected, rel=0.01) and not same.outgrown
    [quiet] = range_coverage(_relu_model(), {"x": (0.0, 1.0)}, [{"x": inside}], stats=calibrated_inside,
                             activation_type="uint8")
    assert quiet.clipped_share == 0 and quiet.clip_to_round == 0 and not quiet.outgrown
    report = coverage_report([coverage, same, quiet], {"x": "relu"}, frames=2)
    assert report["tensors"] == 3 and report["frames"] == 2
    assert [c["read_by"] for c in report["outgrown"]] == ["relu"]


def test_the_calibration_clipping_error_comes_from_the_histograms():
    values = np.linspace(-2, 4, 6001, dtype=np.float32)
    exact = float(np.square(values - np.clip(values, -1, 3), dtype=np.float64).sum())
    assert clipping_error(_stats(values), -1.0, 3.0) == pytest.approx(exact, rel=0.01)
    assert clipping_error(_stats(values), -2.0, 4.0) == pytest.approx(0.0, abs=exact * 1e-3)
    assert clipping_error(TensorStats(), -1.0, 1.0) == 0.0


def test_spread_keeps_the_ends_and_at_most_the_count():
    assert spread(list(range(10)), 12) == list(range(10))
    assert spread(list(range(10)), 3) == [0, 4, 9]
    assert spread(list(range(10)), 1) == [0]


def _conv_model():
    """src -> 3x3 conv -> relu -> 1x1 conv -> logit."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "c1_w"),
             numpy_helper.from_array(rng.standard_normal((1, 8, 1, 1)).astype(np.float32) * 0.3, "c2_w")]
    nodes = [helper.make_node("Conv", ["src", "c1_w"], ["a1"], name="c1", pads=[1] * 4),
             helper.make_node("Relu", ["a1"], ["r1"], name="relu"),
             helper.make_node("Conv", ["r1", "c2_w"], ["logit"], name="c2")]
    graph = helper.make_graph(nodes, "convs",
                              [helper.make_tensor_value_info("src", TensorProto.FLOAT, [1, 3, "h", "w"])],
                              [helper.make_tensor_value_info("logit", TensorProto.FLOAT, None)], inits)
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _photos(folder, low, high, seed):
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(4):
        Image.fromarray(rng.integers(low, high, (48, 64, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_check_footage_brighter_than_the_calibration_is_reported(tmp_path):
    source = write_logit_artifact(tmp_path / "toy", _conv_model())
    dark = _photos(tmp_path / "dark", 0, 60, seed=1)
    bright = _photos(tmp_path / "bright", 150, 256, seed=2)
    config = Int8Config(activation_type="uint8", quantize_outputs=False)
    reports = {}
    for name, check in (("same", dark), ("brighter", bright)):
        out = tmp_path / name
        data = DataPlan(calib=dark, calib_frames=4, check=check, check_frames=4, settings=((64, 48, None),))
        outcome = quantize_artifact(source, out, precision="int8", config=config, gates=Gates(None, None),
                                    fallback=Fallback(enabled=False), data=data)
        reports[name] = outcome.report["int8"]["range_coverage"], (out / "report.html").read_text()
    same, same_html = reports["same"]
    brighter, brighter_html = reports["brighter"]
    assert same["tensors"] == brighter["tensors"] == 2 and same["frames"] == 4
    assert same["outgrown"] == [] and "no INT8 input outgrows its calibrated range" in same_html
    worst = brighter["outgrown"][0]
    assert worst["tensor"] == "src" and worst["read_by"] == "c1" and worst["clipped_share"] > 0.5
    assert "lose more than twice as much to clipping" in brighter_html and "c1" in brighter_html
