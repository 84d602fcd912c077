"""Learned quantization on the torch executor: blocks found from the graph, block
reconstruction (AdaRound + LSQ + QDrop) against min-max rounding, and GAC's exact fold."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")

from mtc.quant.fake_quant import attach_fake_quant, export_qdq  # noqa: E402
from mtc.quant.gac import attach_affine, fold_affine, train_affine  # noqa: E402
from mtc.quant.qdq import plan_qdq  # noqa: E402
from mtc.quant.ranges import asymmetric_range, collect_stats  # noqa: E402
from mtc.quant.reconstruct import ReconstructionConfig, find_blocks, reconstruct  # noqa: E402
from mtc.quant.torch_graph import GraphModule, to_torch_feeds  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _conv(rng, name, cin, cout, k):
    weight = rng.normal(0, np.sqrt(2 / (cin * k * k)), (cout, cin, k, k)).astype(np.float32)
    return [numpy_helper.from_array(weight, f"{name}_w"),
            numpy_helper.from_array(rng.normal(0, 0.1, cout).astype(np.float32), f"{name}_b")]


def _residual_net() -> onnx.ModelProto:
    """conv, a residual unit (conv, relu, conv, add), maxpool, conv, 1x1 conv: random He weights."""
    rng = np.random.default_rng(0)
    n = helper.make_node
    nodes = [n("Conv", ["x", "c1_w", "c1_b"], ["a1"], name="c1", pads=[1] * 4), n("Relu", ["a1"], ["r1"], name="relu1"),
             n("Conv", ["r1", "c2_w", "c2_b"], ["a2"], name="c2", pads=[1] * 4), n("Relu", ["a2"], ["r2"], name="relu2"),
             n("Conv", ["r2", "c3_w", "c3_b"], ["a3"], name="c3", pads=[1] * 4), n("Add", ["a3", "r1"], ["s3"], name="add"),
             n("Relu", ["s3"], ["r3"], name="relu3"),
             n("MaxPool", ["r3"], ["p3"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             n("Conv", ["p3", "c4_w", "c4_b"], ["a4"], name="c4", pads=[1] * 4), n("Relu", ["a4"], ["r4"], name="relu4"),
             n("Conv", ["r4", "c5_w", "c5_b"], ["y"], name="c5")]
    initializers = (_conv(rng, "c1", 3, 16, 3) + _conv(rng, "c2", 16, 16, 3) + _conv(rng, "c3", 16, 16, 3)
                    + _conv(rng, "c4", 16, 16, 3) + _conv(rng, "c5", 16, 2, 1))
    graph = helper.make_graph(nodes, "residual", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 16, 16])],
                              initializer=initializers)
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _images(seed: int, count: int) -> list[dict]:
    """Piecewise-smooth images (coarse blocks plus noise): structure a conv net responds to."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        coarse = np.kron(rng.normal(0, 1, (1, 3, 8, 8)), np.ones((1, 1, 4, 4)))
        images.append({"x": (coarse + 0.3 * rng.normal(0, 1, (1, 3, 32, 32))).astype(np.float32)})
    return images


def _quantized(model, feeds):
    plan = plan_qdq(model, quantize_outputs=True)
    stats = collect_stats(model, plan.activation_tensors(), feeds)
    return plan, {k: asymmetric_range(s, "mse") for k, s in stats.items()}


def _output_error(module: GraphModule, reference: GraphModule, feeds) -> float:
    with torch.no_grad():
        return float(np.mean([((module(to_torch_feeds(f))["y"] - reference(to_torch_feeds(f))["y"]) ** 2).mean()
                              for f in feeds]))


def test_blocks_keep_a_residual_unit_whole_and_cut_chains_per_layer():
    model = _residual_net()
    plan = plan_qdq(model, quantize_outputs=True)

    blocks = find_blocks(model, plan, max_block_layers=4)

    assert [b.layers for b in blocks] == [("c1",), ("c2", "c3"), ("c4",), ("c5",)]
    assert blocks[1].exits == ("s3",)  # the unit ends at its Add: one tensor leaves it
    assert [b.start for b in blocks[1:]] == [b.stop for b in blocks[:-1]] and blocks[-1].stop == len(model.graph.node)
    assert [b.layers for b in find_blocks(model, plan, max_block_layers=1)] == [("c1",), ("c2",), ("c3",), ("c4",),
                                                                                 ("c5",)]


def test_reconstruction_lowers_the_w4_output_error_vs_min_max_rounding():
    """W4A8 (uint8 activations, every conv): the same plan, ranges and weight scales, only the
    rounding and the activation steps learned. Measured on held-out images: mean squared output
    error 0.373 with min-max round-to-nearest, 0.144 reconstructed (100 iterations per block)."""
    model = _residual_net()
    calib, held_out = _images(1, 32), _images(2, 16)
    plan, ranges = _quantized(model, calib)
    reference, nearest = GraphModule(model), GraphModule(model)
    attach_fake_quant(nearest, model, plan, ranges, activation_type="uint8", weight_bits=4)

    result = reconstruct(model, plan, ranges, calib, activation_type="uint8", weight_bits=4,
                         config=ReconstructionConfig(iterations=100, batch=4))

    before, after = _output_error(nearest, reference, held_out), _output_error(result.module, reference, held_out)
    assert after < 0.6 * before
    assert all(not q.soft for q in result.quant.weights.values())  # every rounding decided
    assert sum(q.rounding is not None for q in result.quant.weights.values()) >= 3  # learned, not only kept
    assert len(result.outcomes) == len(result.blocks)
    assert all((o["learned_error"] <= o["nearest_error"]) == (o["kept"] == "learned") for o in result.outcomes)
    assert any(o["kept"] == "learned" for o in result.outcomes)
    assert any(q.log_gain.item() != 0 for q in result.quant.activations.values())  # step sizes moved too


def test_a_block_that_learns_worse_than_nearest_rounding_keeps_nearest_rounding_and_its_steps():
    """Step sizes flung by e^10 per step and roundings by 100 leave every block far worse than it
    went in: each block then keeps nearest rounding and its calibrated steps, so the result is
    the untrained one."""
    model = _residual_net()
    calib = _images(1, 8)
    plan, ranges = _quantized(model, calib)
    nearest = GraphModule(model)
    attach_fake_quant(nearest, model, plan, ranges, activation_type="uint8", weight_bits=4)

    result = reconstruct(model, plan, ranges, calib, activation_type="uint8", weight_bits=4,
                         config=ReconstructionConfig(iterations=5, batch=2, step_lr=10.0, rounding_lr=100.0))

    assert all(q.rounding is None for q in result.quant.weights.values())
    assert all(q.log_gain.item() == 0 for q in result.quant.activations.values())
    assert all(losses[-1] > 10 * losses[0] for losses in result.losses)  # they did learn, badly
    assert all(o["kept"] == "nearest" and o["learned_error"] > o["nearest_error"] for o in result.outcomes)
    assert _output_error(result.module, nearest, calib) == 0


def test_reconstructed_roundings_are_what_the_exported_qdq_graph_holds():
    model = _residual_net()
    calib = _images(1, 8)
    plan, ranges = _quantized(model, calib)
    result = reconstruct(model, plan, ranges, calib, activation_type="uint8", weight_bits=4,
                         config=ReconstructionConfig(iterations=20, batch=2))

    exported = export_qdq(result.module, model, plan, result.quant, activation_type="uint8")

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(exported.SerializeToString(), options, providers=["CPUExecutionProvider"])
    integers = [numpy_helper.to_array(i) for i in exported.graph.initializer if i.name.endswith("__int8")]
    assert integers and all(np.abs(v).max() <= 7 for v in integers)  # 4-bit weights stored as INT8
    for feeds in _images(3, 2):
        with torch.no_grad():
            got = result.module(to_torch_feeds(feeds))["y"].numpy()
        assert np.abs(got - session.run(None, feeds)[0]).max() < 1e-4


def _one_conv_net() -> onnx.ModelProto:
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Conv", ["x", "c_w", "c_b"], ["a"], name="c", pads=[1] * 4),
             helper.make_node("Tanh", ["a"], ["y"], name="tanh")]
    graph = helper.make_graph(nodes, "one", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])],
                              initializer=_conv(rng, "c", 3, 4, 3))
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_gac_folds_exactly_into_weight_scales_and_bias():
    model = _one_conv_net()
    feeds = [{"x": np.random.default_rng(i).normal(0, 1, (1, 3, 16, 16)).astype(np.float32)} for i in range(3)]
    plan, ranges = _quantized(model, feeds)
    module = GraphModule(model)
    quant = attach_fake_quant(module, model, plan, ranges, activation_type="uint8")
    affines = attach_affine(module, plan)
    with torch.no_grad():
        affines["c"].gamma.fill_(1.25)
        affines["c"].beta.fill_(-0.3)

    folded = fold_affine(export_qdq(module, model, plan, quant, activation_type="uint8"), model, affines)

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(folded.SerializeToString(), options, providers=["CPUExecutionProvider"])
    for feed in feeds:
        with torch.no_grad():
            got = module(to_torch_feeds(feed))["y"].numpy()
        assert np.abs(got - session.run(None, feed)[0]).max() < 1e-5


def test_gac_training_lowers_the_output_error():
    model = _residual_net()
    calib, held_out = _images(1, 16), _images(2, 8)
    plan, ranges = _quantized(model, calib)
    teacher, student = GraphModule(model), GraphModule(model)
    student.requires_grad_(False)
    attach_fake_quant(student, model, plan, ranges, activation_type="uint8", weight_bits=4)
    before = _output_error(student, teacher, held_out)
    affines = attach_affine(student, plan)

    losses = train_affine(student, affines, teacher, calib, iterations=60, batch=4, learning_rate=1e-2)

    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    assert _output_error(student, teacher, held_out) < before


class _Interrupted(Exception):
    pass


def test_resuming_after_an_interruption_between_blocks_gives_the_same_result(tmp_path):
    model = _residual_net()
    calib = _images(1, 8)
    plan, ranges = _quantized(model, calib)
    config = ReconstructionConfig(iterations=15, batch=2)

    def run(**options):
        result = reconstruct(model, plan, ranges, calib, activation_type="uint8", weight_bits=4, config=config,
                             **options)
        return (export_qdq(result.module, model, plan, result.quant, activation_type="uint8"),
                (result.losses, result.outcomes))

    def stop_after_two(done, total):
        if done == 2:
            raise _Interrupted

    uninterrupted, losses = run()
    with pytest.raises(_Interrupted):
        run(checkpoint=tmp_path / "blocks.pt", progress=stop_after_two)
    resumed, resumed_losses = run(checkpoint=tmp_path / "blocks.pt")

    assert resumed_losses == losses
    want = {i.name: numpy_helper.to_array(i) for i in uninterrupted.graph.initializer}
    got = {i.name: numpy_helper.to_array(i) for i in resumed.graph.initializer}
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)


def test_a_checkpoint_of_another_reconstruction_is_refused(tmp_path):
    from mtc.errors import MtcError

    model = _residual_net()
    calib = _images(1, 4)
    plan, ranges = _quantized(model, calib)
    reconstruct(model, plan, ranges, calib, activation_type="uint8", config=ReconstructionConfig(iterations=2),
                checkpoint=tmp_path / "blocks.pt")

    with pytest.raises(MtcError, match="checkpoint of another reconstruction"):
        reconstruct(model, plan, ranges, calib, activation_type="uint8", weight_bits=4,
                    config=ReconstructionConfig(iterations=2), checkpoint=tmp_path / "blocks.pt")
