"""Outlier-channel split (mtc.quant.outliers): which channels it picks, that the split graph
computes the same function, and that it lowers the INT8 error it is for, with the outliers' conv
in float."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from tiny_artifacts import write_logit_artifact

from mtc.quant.config import Fallback, Gates, Int8Config
from mtc.quant.data_plan import DataPlan
from mtc.quant.outliers import outlier_channels, outlier_conv_name, split_candidate_inputs, split_outlier_channels
from mtc.quant.pipeline import quantize_artifact
from mtc.quant.ranges import channel_ranges

WIDE = 5  # the encoder channel that sits near a large constant


def test_the_widest_channels_are_split_off_only_where_a_gap_makes_the_rest_much_narrower():
    # One nearly constant channel far above the rest (the image saliency model's decoder conv).
    assert outlier_channels(np.array([12.0, 228.0, 72.0, 54.0, 31.6, 10.0, 9.0, 8.0])) == (1,)
    # Two wide channels before the gap.
    assert outlier_channels(np.array([1.0] * 14 + [40.0, 30.0])) == (14, 15)
    # Evenly spread channels, a long tail without a gap, or a gap smaller than MIN_GAP: nothing.
    assert outlier_channels(np.linspace(1.0, 2.0, 16)) == ()
    assert outlier_channels(8.0 / np.arange(1, 65)) == ()
    assert outlier_channels(np.array([2.9, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])) == ()
    # Never more than an eighth of the channels (at least one), never all of them.
    assert outlier_channels(np.array([50.0, 40.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])) == ()
    assert outlier_channels(np.array([50.0, 1.0])) == (0,)
    assert outlier_channels(np.array([50.0])) == ()


def _wide_channel_model(group=1):
    """image -> encoder conv (one channel's bias 200) -> relu -> decoder conv -> logit; the
    decoder reads the wide channel through small weights, as it would a near-constant."""
    rng = np.random.default_rng(3)
    image = helper.make_tensor_value_info("src", TensorProto.FLOAT, [1, 3, "h", "w"])
    logit = helper.make_tensor_value_info("logit", TensorProto.FLOAT, None)
    encoder_bias = np.zeros(8, np.float32)
    encoder_bias[WIDE] = 200.0
    decoder = (rng.standard_normal((1, 8 // group, 3, 3)) * 0.5).astype(np.float32)
    if group == 1:
        decoder[:, WIDE] *= 0.02
    inits = [numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.5).astype(np.float32), "enc_w"),
             numpy_helper.from_array(encoder_bias, "enc_b"),
             numpy_helper.from_array(decoder if group == 1 else np.repeat(decoder, 8, 0)[:8], "dec_w"),
             numpy_helper.from_array(np.full(1 if group == 1 else 8, -0.5, np.float32), "dec_b")]
    nodes = [helper.make_node("Conv", ["src", "enc_w", "enc_b"], ["enc"], name="encoder", pads=[1] * 4),
             helper.make_node("Relu", ["enc"], ["feat"], name="relu"),
             helper.make_node("Conv", ["feat", "dec_w", "dec_b"], ["logit"], name="decoder", pads=[1] * 4,
                              group=group)]
    graph = helper.make_graph(nodes, "wide", [image], [logit], inits)
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _feeds(count, seed):
    rng = np.random.default_rng(seed)
    return [{"src": rng.random((1, 3, 16, 20), dtype=np.float32)} for _ in range(count)]


def _run(model, feed):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["logit"], feed)[0]


def _split(model, names, feeds):
    return split_outlier_channels(model, names, channel_ranges(model, split_candidate_inputs(model, names), feeds))


def test_splitting_keeps_the_float_function_and_reports_the_ranges():
    model = _wide_channel_model()
    split, splits = _split(model, ["encoder", "decoder"], _feeds(3, seed=0))
    assert [(s.conv, s.channels) for s in splits] == [("decoder", (WIDE,))]
    assert splits[0].range_before > 150 and splits[0].range_after < splits[0].range_before / 10
    convs = {n.name: n for n in split.graph.node if n.op_type == "Conv"}
    assert set(convs) == {"encoder", "decoder", outlier_conv_name("decoder")}
    onnx.checker.check_model(split, full_check=True)
    for feed in _feeds(2, seed=1):
        np.testing.assert_allclose(_run(split, feed), _run(model, feed), rtol=1e-5, atol=1e-4)


def test_grouped_convs_and_convs_not_named_are_left_alone():
    model = _wide_channel_model(group=8)
    assert _split(model, ["decoder"], _feeds(2, seed=0)) == (model, [])
    model = _wide_channel_model()
    assert _split(model, ["encoder"], _feeds(2, seed=0)) == (model, [])


@pytest.mark.parametrize("affine", [False, True])
def test_the_split_lowers_the_dense_int8_error_and_keeps_only_the_outliers_conv_float(tmp_path, affine):
    source = write_logit_artifact(tmp_path / "toy", _wide_channel_model())
    data = DataPlan(calib_frames=6, check_frames=6, settings=((64, 48, None),))
    mads = {}
    for split in (False, True):
        config = Int8Config(activation_type="uint8", quantize_outputs=False, split_outlier_channels=split,
                            affine_correction=affine)
        outcome = quantize_artifact(source, tmp_path / f"int8-{split}-{affine}", precision="int8", config=config,
                                    gates=Gates(None, None), fallback=Fallback(enabled=False), data=data)
        mads[split] = max(c.mad for c in outcome.check.clips)
        report = outcome.report["int8"]
        assert [s["conv"] for s in report["split_outlier_channels"]] == (["decoder"] if split else [])
        html = (tmp_path / f"int8-{split}-{affine}" / "report.html").read_text()
        assert (f"decoder: input channel {WIDE} read by a float conv" in html) == split
        assert report["quantized_layers"] == 2 and report["fallback_layers"] == []
        model = onnx.load(str(tmp_path / f"int8-{split}-{affine}" / "model.onnx"))
        writers = {o: n for n in model.graph.node for o in n.output}
        convs = {n.name: writers[n.input[0]].op_type for n in model.graph.node if n.op_type == "Conv"}
        assert convs == {"encoder": "DequantizeLinear", "decoder": "DequantizeLinear",
                         **({outlier_conv_name("decoder"): "Gather"} if split else {})}
    assert mads[True] < 0.5 * mads[False]


def test_the_split_refuses_quantized_conv_outputs():
    # The split conv's output is a partial sum (it cancels the outliers' part): quantizing it
    # measured alpha MAD 51 on real U²-Netp photos against 6 without.
    from mtc.errors import MtcError

    with pytest.raises(MtcError, match="needs Q/DQ on conv inputs and weights only"):
        Int8Config(split_outlier_channels=True)
    assert Int8Config(split_outlier_channels=True, quantize_outputs=False).split_outlier_channels
