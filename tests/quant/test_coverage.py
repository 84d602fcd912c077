"""Range coverage: how much the check frames lose to clipping at the calibrated INT8 ranges."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from tiny_artifacts import write_logit_artifact

from mtc.quant.checks import spread
from mtc.quant.config import Fallback, Gates, Int8Config
from mtc.quant.coverage import Coverage, coverage_report, layers_to_keep_float, range_coverage, representable
from mtc.quant.data_plan import DataPlan
from mtc.quant.pipeline import quantize_artifact
from mtc.quant.qdq import NodeQuant, QdqPlan
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


def test_the_reference_records_only_the_check_inputs_it_keeps(tmp_path, monkeypatch):
    from mtc.artifact.manifest import read_manifest
    from mtc.backends import OrtBackend
    from mtc.quant import calibration, checks
    from mtc.quant.calibration import Clip
    from mtc.quant.checks import ReferenceAlphas

    source = write_logit_artifact(tmp_path / "toy", _conv_model())
    io = read_manifest(source).io
    rng = np.random.default_rng(0)
    clips = [Clip(name, rng.integers(0, 256, (count, 24, 32, 3), dtype=np.uint8)) for name, count in
             (("a", 4), ("b", 6))]
    held = []

    class Watched(calibration.RecordingBackend):
        def run(self, feeds):
            outputs = super().run(feeds)
            held.append(len(self.feeds))
            return outputs

    monkeypatch.setattr(checks, "RecordingBackend", Watched)
    reference = ReferenceAlphas(io, OrtBackend(source / "model.onnx"), clips, record_inputs=3)
    frames = np.concatenate([c.frames for c in clips])
    # runs 0, 4 and 9 of the ten (the first, the middle and the last frame), never more held
    assert len(held) == 10 and max(held) == 3 and len(reference.feeds) == 3
    for feeds, frame in zip(reference.feeds, frames[[0, 4, 9]]):
        np.testing.assert_allclose(feeds["src"][0].transpose(1, 2, 0), frame / 255, atol=1e-6)


def _photos(folder, low, high, seed):
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(4):
        Image.fromarray(rng.integers(low, high, (48, 64, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _coverage(tensor, clip_to_round):
    return Coverage(tensor, clipped_share=0.1, clip_to_round=clip_to_round, calibration_clip_to_round=0.0)


def _plan(*nodes):
    """NodeQuant per (name, input tensors, quantized output or None)."""
    return QdqPlan(tuple(NodeQuant(name, tuple((t, 0) for t in inputs), ((1, 0),), output)
                         for name, inputs, output in nodes))


def test_the_layers_kept_in_float_are_the_worst_tensors_and_at_most_a_quarter():
    plan = _plan(*[(f"c{i}", [f"t{i}"], None) for i in range(8)], ("shared_a", ["s"], None),
                 ("shared_b", ["s"], None), ("producer", ["p_in"], "s"))
    assert plan.nodes_on("s") == ["shared_a", "shared_b", "producer"]
    coverage = [_coverage("t3", 50.0), _coverage("t5", 1.0), _coverage("t1", 40.0), _coverage("s", 30.0),
                _coverage("t2", 20.0)]
    # a quarter of 11 layers is 2: t3's and t1's readers; "s" would take three more; t5 is not outgrown
    assert layers_to_keep_float(coverage, plan) == ["c3", "c1"]
    # a tensor read by more layers than fit stays INT8 (its readers are all or nothing)
    assert layers_to_keep_float([_coverage("s", 9.0)], _plan(*[(f"c{i}", ["s"], None) for i in range(12)])) == []
    # every layer reading the one outgrown tensor fits: all of them go, never the whole plan
    many = _plan(*[(f"c{i}", ["s" if i < 3 else f"t{i}"], None) for i in range(12)])
    assert layers_to_keep_float([_coverage("s", 9.0)], many) == ["c0", "c1", "c2"]
    assert layers_to_keep_float([_coverage("t0", 9.0)], _plan(("c0", ["t0"], None))) == []
    assert layers_to_keep_float([_coverage("t0", 9.0)], _plan(("c0", ["t0"], None), ("c1", ["t1"], None))) == ["c0"]


def _reads_through_qdq(model_path, node_name):
    model = onnx.load(str(model_path))
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    [node] = [n for n in model.graph.node if n.name == node_name]
    return producers.get(node.input[0]) == "DequantizeLinear"


def test_check_footage_brighter_than_the_calibration_is_reported_and_its_layer_kept_float(tmp_path):
    source = write_logit_artifact(tmp_path / "toy", _conv_model())
    dark = _photos(tmp_path / "dark", 0, 60, seed=1)
    bright = _photos(tmp_path / "bright", 150, 256, seed=2)
    reports = {}
    for name, check, float_outgrown in (("same", dark, True), ("brighter", bright, True),
                                        ("brighter-int8", bright, False)):
        out = tmp_path / name
        # GPTQ rounds only what stays INT8: coverage decides first
        config = Int8Config(activation_type="uint8", quantize_outputs=False, float_outgrown=float_outgrown,
                            weight_rounding="gptq")
        data = DataPlan(calib=dark, calib_frames=4, check=check, check_frames=4, settings=((64, 48, None),))
        outcome = quantize_artifact(source, out, precision="int8", config=config, gates=Gates(None, None),
                                    fallback=Fallback(enabled=False), data=data)
        reports[name] = outcome.report["int8"], (out / "report.html").read_text(), out / "model.onnx"
    same, same_html, same_model = reports["same"]
    brighter, brighter_html, brighter_model = reports["brighter"]
    assert same["range_coverage"]["tensors"] == brighter["range_coverage"]["tensors"] == 2
    assert same["range_coverage"]["frames"] == 4
    assert same["range_coverage"]["outgrown"] == [] and same["range_coverage"]["kept_float"] == []
    assert "no INT8 input outgrows its calibrated range" in same_html
    assert same["int8_layers"] == 2 and _reads_through_qdq(same_model, "c1")
    worst = brighter["range_coverage"]["outgrown"][0]
    assert worst["tensor"] == "src" and worst["read_by"] == "c1" and worst["clipped_share"] > 0.5
    assert "lose more than twice as much to clipping" in brighter_html and "c1" in brighter_html
    # the layer reading the outgrown input stays float; the other stays INT8
    assert brighter["range_coverage"]["kept_float"] == ["c1"] and "c1" in brighter["fallback_layers"]
    assert brighter["quantized_layers"] == 2 and brighter["int8_layers"] == 1
    assert set(brighter["gptq_error_ratio"]) == {"c2"} and set(same["gptq_error_ratio"]) == {"c1", "c2"}
    assert not _reads_through_qdq(brighter_model, "c1") and _reads_through_qdq(brighter_model, "c2")
    assert "stay in float (c1;" in brighter_html
    assert json.loads((brighter_model.parent / "manifest.json").read_text())["precision"]["excluded_nodes"] == ["c1"]
    kept_int8, kept_int8_html, kept_int8_model = reports["brighter-int8"]
    assert kept_int8["range_coverage"]["outgrown"] and kept_int8["range_coverage"]["kept_float"] == []
    assert kept_int8["int8_layers"] == 2 and _reads_through_qdq(kept_int8_model, "c1")
    assert "stay in float" not in kept_int8_html


def _quantize_call(tmp_path, monkeypatch, flags) -> dict:
    """What `mtc quantize TOY -o OUT --int8 FLAGS` hands quantize_artifact (which then stops)."""
    import mtc.quant.pipeline
    from mtc.cli.main import main

    seen = {}

    def capture(source, output, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(mtc.quant.pipeline, "quantize_artifact", capture)
    source = tmp_path / "toy"
    if not source.exists():
        write_logit_artifact(source, _conv_model())
    with pytest.raises(SystemExit):
        main(["quantize", str(source), "-o", str(tmp_path / "out"), "--int8", *flags])
    return seen


@pytest.mark.parametrize("flags", [[], ["--keep-outgrown-int8"]])
def test_the_command_line_keeps_outgrown_layers_float_unless_told(tmp_path, monkeypatch, flags):
    assert _quantize_call(tmp_path, monkeypatch, flags)["config"].float_outgrown is not bool(flags)


def test_the_command_line_takes_several_calibration_and_check_sources(tmp_path, monkeypatch):
    folder = tmp_path / "mine"
    folder.mkdir()
    assert _quantize_call(tmp_path, monkeypatch, [])["data"].calib == ("builtin",)
    data = _quantize_call(tmp_path, monkeypatch, ["--calib", "builtin", "--calib", str(folder), "--check", str(folder)])["data"]
    assert data.calib == ("builtin", str(folder)) and data.check == (str(folder),)
    assert _quantize_call(tmp_path, monkeypatch, [])["data"].check is None


def test_keep_outgrown_int8_without_int8_is_refused(tmp_path, capsys):
    from mtc.cli.main import main

    source = write_logit_artifact(tmp_path / "toy", _conv_model())
    with pytest.raises(SystemExit) as exit_info:
        main(["quantize", str(source), "-o", str(tmp_path / "out"), "--fp16", "--keep-outgrown-int8"])
    assert exit_info.value.code == 2 and "--keep-outgrown-int8 keeps INT8 layers INT8" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
