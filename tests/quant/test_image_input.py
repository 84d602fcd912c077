"""Exact image input (mtc.quant.image_input): the normalization folded into the first conv is
the same float function, padded or not; the conv's INT8 input is then the 8-bit grid itself;
learning leaves that step alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from tiny_artifacts import write_logit_artifact

from mtc.errors import MtcError
from mtc.quant.config import Fallback, Gates, Int8Config
from mtc.quant.data_plan import DataPlan
from mtc.quant.image_input import IMAGE_RANGE, exact_range, fold_input_normalization
from mtc.quant.pipeline import quantize_artifact

MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)


def _normalized_model(*, pads=1, group=1, constant_nodes=False, mean_shape=(1, 3, 1, 1)):
    """src -> Sub(mean) -> Div(std) -> conv (3x3, `pads`) -> relu -> 1x1 conv -> logit."""
    rng = np.random.default_rng(3)
    first = rng.standard_normal((8, 3 // group, 3, 3)).astype(np.float32) * 0.3
    inits = [numpy_helper.from_array(first, "c1_w"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "c1_b"),
             numpy_helper.from_array(rng.standard_normal((1, 8, 1, 1)).astype(np.float32) * 0.3, "c2_w")]
    constants = [numpy_helper.from_array(np.broadcast_to(MEAN.reshape(1, 3, 1, 1), mean_shape).copy(), "mean"),
                 numpy_helper.from_array(STD.reshape(1, 3, 1, 1), "std")]
    nodes = [helper.make_node("Constant", [], [c.name], name=f"{c.name}_constant", value=c) for c in constants] \
        if constant_nodes else []
    if not constant_nodes:
        inits += constants
    nodes += [helper.make_node("Sub", ["src", "mean"], ["centred"], name="centre"),
              helper.make_node("Div", ["centred", "std"], ["normalized"], name="normalize"),
              helper.make_node("Conv", ["normalized", "c1_w", "c1_b"], ["a1"], name="c1", pads=[pads] * 4, group=group),
              helper.make_node("Relu", ["a1"], ["r1"], name="relu"),
              helper.make_node("Conv", ["r1", "c2_w"], ["logit"], name="c2")]
    graph = helper.make_graph(nodes, "normalized", [helper.make_tensor_value_info("src", TensorProto.FLOAT,
                                                                                 [1, 3, "h", "w"])],
                              [helper.make_tensor_value_info("logit", TensorProto.FLOAT, None)], inits)
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _images(count, seed):
    rng = np.random.default_rng(seed)
    return [{"src": (rng.integers(0, 256, (1, 3, 12, 16)) / 255).astype(np.float32)} for _ in range(count)]


def _run(model, feed):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(["logit"], feed)[0]


@pytest.mark.parametrize(("pads", "constant_nodes"), [(1, False), (0, False), (1, True)])
def test_folding_keeps_the_float_function(pads, constant_nodes):
    model = _normalized_model(pads=pads, constant_nodes=constant_nodes)
    folded, folds = fold_input_normalization(model, ["c1", "c2"])
    assert [(f.conv, f.image, f.padded) for f in folds] == [("c1", "src", bool(pads))]
    onnx.checker.check_model(folded, full_check=True)
    ops = [n.op_type for n in folded.graph.node]
    assert "Div" not in ops  # the normalization is in the weights now
    assert ops.count("Pad") == (1 if pads else 0)
    c1 = next(n for n in folded.graph.node if n.name == "c1")
    assert c1.input[0] == folds[0].tensor != "src"  # the image, centred (and padded)
    for feed in _images(3, seed=1):  # the border pixels too: the padding is where the normalized tensor was 0
        np.testing.assert_allclose(_run(folded, feed), _run(model, feed), rtol=1e-5, atol=1e-5)


def test_only_ungrouped_convs_reading_a_per_channel_affine_are_folded():
    model = _normalized_model(group=3)
    assert fold_input_normalization(model, ["c1"]) == (model, [])
    model = _normalized_model()
    assert fold_input_normalization(model, ["c2"]) == (model, [])  # reads a relu, not an affine
    # a mean per pixel is no per-channel affine: only the division by std folds
    per_pixel = _normalized_model(mean_shape=(1, 3, 12, 16))
    folded, folds = fold_input_normalization(per_pixel, ["c1"])
    assert [f.image for f in folds] == ["centred"]
    for feed in _images(2, seed=1):
        np.testing.assert_allclose(_run(folded, feed), _run(per_pixel, feed), rtol=1e-5, atol=1e-5)


def test_the_exact_range_is_the_8_bit_grid_only_for_a_unit_image():
    assert IMAGE_RANGE == (-128 / 255, 127 / 255)
    assert exact_range(*IMAGE_RANGE) == IMAGE_RANGE and exact_range(-0.1, 0.2) == IMAGE_RANGE
    assert exact_range(-0.6, 0.4) is None and exact_range(0.0, 1.0) is None


def test_the_exact_image_input_needs_uint8_activations():
    with pytest.raises(MtcError, match="uint8"):
        Int8Config(exact_image_input=True, activation_type="int8")


def test_the_folded_input_is_quantized_on_the_pixel_grid_and_costs_nothing(tmp_path):
    source = write_logit_artifact(tmp_path / "toy", _normalized_model())
    data = DataPlan(calib_frames=6, check_frames=6, settings=((64, 48, None),))
    rounding = {}
    for exact in (False, True):
        config = Int8Config(activation_type="uint8", quantize_outputs=False, exact_image_input=exact)
        out = tmp_path / f"int8-{exact}"
        outcome = quantize_artifact(source, out, precision="int8", config=config, gates=Gates(None, None),
                                    fallback=Fallback(enabled=False), data=data)
        report = outcome.report["int8"]
        assert report["exact_image_inputs"] == ([{"conv": "c1", "image": "src", "padded": True, "exact_grid": True}]
                                                if exact else [])
        assert ("8-bit grid itself" in (out / "report.html").read_text()) == exact
        # what the first conv's input Q/DQ changes, in units of the tensor's own step, on 8-bit images
        model = onnx.load(str(out / "model.onnx"))
        c1 = next(n for n in model.graph.node if n.name == "c1")
        writers = {o: n for n in model.graph.node for o in n.output}
        dequantize = writers[c1.input[0]]
        quantize = writers[dequantize.input[0]]
        step = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == quantize.input[1]))
        model.graph.output.extend([helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
                                   for name in (quantize.input[0], dequantize.output[0])])
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        before, after = session.run([quantize.input[0], dequantize.output[0]], _images(1, seed=4)[0])
        inside = (slice(None), slice(None), slice(1, -1), slice(1, -1))  # the padding sits between levels
        rounding[exact] = float(np.abs(after - before)[inside].max() / step)
        if exact:
            zero_point = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == quantize.input[2]))
            assert step == np.float32(1 / 255) and zero_point == 128
    assert rounding[True] < 1e-3 and rounding[False] > 0.1, rounding


def test_learning_leaves_the_steps_of_fixed_tensors_alone(monkeypatch):
    pytest.importorskip("torch")
    import mtc.quant.reconstruct as reconstruct_module
    from mtc.quant.qdq import plan_qdq
    from mtc.quant.ranges import asymmetric_range, collect_stats

    model, (fold,) = fold_input_normalization(_normalized_model(pads=0), ["c1"])
    feeds = _images(2, seed=0)
    plan = plan_qdq(model, quantize_outputs=False)
    stats = collect_stats(model, plan.activation_tensors(), feeds)
    ranges = {k: asymmetric_range(s, "mse") for k, s in stats.items()}
    learning = []
    real_train_block = reconstruct_module._train_block

    def recorded(student, quant, block, steps, *args):
        names = {id(q): name for name, q in quant.activations.items()}
        learning.extend(names[id(q)] for q in steps)
        return real_train_block(student, quant, block, steps, *args)

    monkeypatch.setattr(reconstruct_module, "_train_block", recorded)
    learned = {}
    for fixed in ((), (fold.tensor,)):
        learning.clear()
        reconstruct_module.reconstruct(model, plan, ranges, feeds, activation_type="uint8", fixed_steps=fixed,
                                       config=reconstruct_module.ReconstructionConfig(iterations=2, batch=1))
        learned[fixed] = sorted(learning)
    assert learned == {(): sorted(["r1", fold.tensor]), (fold.tensor,): ["r1"]}
