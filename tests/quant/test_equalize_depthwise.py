"""Depthwise-input equalization (mtc.quant.equalize.equalize_depthwise_inputs): the scales it
picks, that the rescaled graph computes the same function, and that it lowers the INT8 error
of a depthwise conv whose input channels spread widely."""

import io
import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from tiny_artifacts import write_logit_artifact

from mtc.quant.config import Fallback, Gates, Int8Config
from mtc.quant.data_plan import DataPlan
from mtc.quant.equalize import (
    MAX_CHANNEL_SCALE,
    SHORT_SIDE_SHARE,
    channel_scales,
    depthwise_candidate_inputs,
    equalize_depthwise_inputs,
)
from mtc.quant.pipeline import quantize_artifact
from mtc.quant.ranges import channel_ranges

# The expand conv's output channels reach these sizes (|bias| + what the image adds): one wide
# channel, a spread of narrow ones, one nearly silent.
CHANNEL_GAINS = np.array([8.0, 1.0, 0.75, 1.0, 0.5, 1.0, 1e-4, 1.0], np.float32)


def _depthwise_model(multiplier=1):
    """image -> expand conv (channel c scaled by CHANNEL_GAINS[c]) -> hardswish -> depthwise conv
    (`multiplier` outputs per channel) -> project conv -> logit."""
    rng = np.random.default_rng(5)
    channels = len(CHANNEL_GAINS)
    image = helper.make_tensor_value_info("src", TensorProto.FLOAT, [1, 3, "h", "w"])
    logit = helper.make_tensor_value_info("logit", TensorProto.FLOAT, None)
    expand = np.abs(rng.standard_normal((channels, 3, 1, 1))).astype(np.float32) * 2 * CHANNEL_GAINS[:, None, None, None]
    depthwise = rng.standard_normal((channels * multiplier, 1, 3, 3)).astype(np.float32)
    # the narrow channels count as much as the wide one in the logit (not the silent one)
    weigh = np.repeat(np.maximum(CHANNEL_GAINS, 0.5), multiplier)[None, :, None, None]
    project = (rng.standard_normal((1, channels * multiplier, 1, 1)) * 0.3 / weigh).astype(np.float32)
    inits = [numpy_helper.from_array(expand, "exp_w"),
             numpy_helper.from_array(depthwise, "dw_w"),
             numpy_helper.from_array(rng.standard_normal(channels * multiplier).astype(np.float32) * 0.1, "dw_b"),
             numpy_helper.from_array(project, "proj_w")]
    nodes = [helper.make_node("Conv", ["src", "exp_w"], ["exp"], name="expand"),
             helper.make_node("HardSwish", ["exp"], ["act"], name="hardswish"),
             helper.make_node("Conv", ["act", "dw_w", "dw_b"], ["dw"], name="depthwise", pads=[1] * 4,
                              group=channels),
             helper.make_node("Conv", ["dw", "proj_w"], ["logit"], name="project")]
    graph = helper.make_graph(nodes, "dw", [image], [logit], inits)
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _feeds(count, seed):
    rng = np.random.default_rng(seed)
    return [{"src": rng.standard_normal((1, 3, 16, 20)).astype(np.float32)} for _ in range(count)]


def _run(model, feed):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["logit"], feed)[0]


def _equalize(model, names, feeds):
    return equalize_depthwise_inputs(model, names, channel_ranges(model, depthwise_candidate_inputs(model, names), feeds))


def _input_ranges(model, feeds):
    conv = next(n for n in model.graph.node if n.name == "depthwise")
    return channel_ranges(model, [conv.input[0]], feeds)[conv.input[0]]


def test_each_channel_is_scaled_to_the_edge_of_the_range_with_the_short_side_grown_a_little():
    # After a hardswish every channel's floor is -0.375: the floor may grow to a share of the top.
    low, high = np.full(5, -0.375), np.array([40.0, 10.0, 2.5, 0.0, 0.5])
    floor_fit = min(40 * SHORT_SIDE_SHARE / 0.375, MAX_CHANNEL_SCALE)
    np.testing.assert_allclose(channel_scales(low, high), [1.0, 4.0, min(16.0, floor_fit), floor_fit, floor_fit])
    low[2] = -40 * SHORT_SIDE_SHARE / 8  # a floor that allows 8x, less than the top allows
    assert channel_scales(low, high)[2] == 8.0
    # Symmetric channels fill the joint range; no channel grows past the cap; silent ones stay.
    np.testing.assert_allclose(channel_scales(np.array([-8.0, -1.0]), np.array([8.0, 1.0])), [1.0, 8.0])
    np.testing.assert_allclose(channel_scales(np.zeros(3), np.array([100.0, 1.0, 0.0])), [1.0, 16.0, 1.0])
    # Changes under 5% are not worth a Mul.
    np.testing.assert_allclose(channel_scales(np.zeros(2), np.array([1.0, 0.97])), [1.0, 1.0])


def test_equalizing_keeps_the_float_function_and_brings_the_channels_to_the_edge_of_the_range():
    for multiplier in (1, 2):
        model = _depthwise_model(multiplier)
        feeds = _feeds(3, seed=0)
        equalized, scaled = _equalize(model, ["expand", "depthwise", "project"], feeds)
        assert [s.conv for s in scaled] == ["depthwise"]  # the ungrouped convs are not for this pass
        onnx.checker.check_model(equalized, full_check=True)
        for feed in _feeds(2, seed=1):
            np.testing.assert_allclose(_run(equalized, feed), _run(model, feed), rtol=1e-4, atol=1e-4)
        (low, high), (new_low, new_high) = _input_ranges(model, feeds), _input_ranges(equalized, feeds)
        np.testing.assert_allclose(new_high.max(), high.max(), rtol=1e-5)  # the long side stays
        assert new_low.min() >= -high.max() * SHORT_SIDE_SHARE * (1 + 1e-5)
        np.testing.assert_allclose(new_high / high, channel_scales(low, high), rtol=1e-4)
        assert scaled[0].channels == int((channel_scales(low, high) != 1).sum()) >= len(CHANNEL_GAINS) // 2


def test_convs_not_named_or_evenly_spread_are_left_alone():
    model = _depthwise_model()
    assert _equalize(model, ["expand", "project"], _feeds(2, seed=0)) == (model, [])
    even = _depthwise_model()
    for init in even.graph.initializer:
        if init.name == "exp_w":
            init.CopyFrom(numpy_helper.from_array(np.ones((len(CHANNEL_GAINS), 3, 1, 1), np.float32), "exp_w"))
    assert _equalize(even, ["depthwise"], _feeds(2, seed=0)) == (even, [])


def test_equalizing_lowers_the_dense_int8_error_and_is_reported(tmp_path):
    source = write_logit_artifact(tmp_path / "toy", _depthwise_model())
    data = DataPlan(calib_frames=6, check_frames=6, settings=((64, 48, None),))
    mads = {}
    for equalize in (False, True):
        # only the depthwise conv in INT8: its error is the one this is for
        config = Int8Config(activation_type="uint8", quantize_outputs=False, equalize_depthwise=equalize,
                            affine_correction=False, exclude_nodes=("expand", "project"))
        outcome = quantize_artifact(source, tmp_path / f"int8-{equalize}", precision="int8", config=config,
                                    gates=Gates(None, None), fallback=Fallback(enabled=False), data=data)
        mads[equalize] = max(c.mad for c in outcome.check.clips)
        report = outcome.report["int8"]
        assert [c["conv"] for c in report["equalized_depthwise_inputs"]] == (["depthwise"] if equalize else [])
        assert report["quantized_layers"] == 1 and report["fallback_layers"] == []
        html = (tmp_path / f"int8-{equalize}" / "report.html").read_text()
        assert ("depthwise-input equalization" in html) == equalize
    assert mads[True] < 0.5 * mads[False], mads


def test_the_dense_preset_equalizes_depthwise_inputs_unless_told_not_to(tmp_path):
    source = write_logit_artifact(tmp_path / "toy", _depthwise_model())
    for flags, expected in (([], ["depthwise"]), (["--no-equalize"], [])):
        out = tmp_path / f"int8-{len(flags)}"
        result = subprocess.run([sys.executable, "-m", "mtc", "quantize", str(source), "-o", str(out), "--int8",
                                 "--preset", "dense", "--calib-frames", "4", "--max-mad", "1000", "--max-dtssd", "1000",
                                 *flags], capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        scaled = json.loads((out / "report.json").read_text())["int8"]["equalized_depthwise_inputs"]
        assert [c["conv"] for c in scaled] == expected


def test_the_simulated_low_bit_path_rewrites_the_graph_as_quantize_does():
    from mtc.quant.lowbit import calibrated_plan

    config = Int8Config(activation_type="uint8", quantize_outputs=False, equalize_depthwise=True, op_types=("Conv",),
                        activation_matmuls=False)
    calibrated = calibrated_plan(_depthwise_model(), _feeds(3, seed=0), config)
    assert [c.conv for c in calibrated.rewrites.depthwise] == ["depthwise"]
    assert "depthwise__equalize_channels" in calibrated.plan.activation_tensors()


def test_the_split_and_the_depthwise_equalization_share_one_statistics_pass(monkeypatch):
    from rich.console import Console

    import mtc.quant.pipeline as pipeline
    from mtc.quant.outliers import split_candidate_inputs, split_outlier_channels
    from mtc.runtime.progress import Stages

    measured = []

    def counted_ranges(model, names, feeds, *, progress=None):
        measured.append(list(names))
        return channel_ranges(model, names, feeds, progress=progress)

    monkeypatch.setattr(pipeline, "channel_ranges", counted_ranges)
    model, feeds, names = _depthwise_model(), _feeds(3, seed=0), ["expand", "depthwise", "project"]
    config = Int8Config(activation_type="uint8", quantize_outputs=False, equalize_concats=False,
                        split_outlier_channels=True, equalize_depthwise=True)
    rewritten, done = pipeline.rewrite_for_int8(model, names, feeds, config, Stages(Console(file=io.StringIO())))
    expected = sorted(set(split_candidate_inputs(model, names)) | set(depthwise_candidate_inputs(model, names)))
    assert measured == [expected] and len(expected) == 3
    # the same graph as the two rewrites one after the other, each measuring its own inputs
    split, _ = split_outlier_channels(model, names, channel_ranges(model, split_candidate_inputs(model, names), feeds))
    alone, scaled = _equalize(split, names, feeds)
    assert [s.conv for s in done.depthwise] == [s.conv for s in scaled] == ["depthwise"]
    assert rewritten.SerializeToString() == alone.SerializeToString()
