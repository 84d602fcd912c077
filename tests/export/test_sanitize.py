import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from mtc.errors import MtcError
from mtc.export.onnx_ingest import (
    give_unique_dim_names,
    load_onnx,
    opset_of,
    route_consumed_outputs,
    sanitize,
    upgrade_opset,
)


def _recurrent_toy(opset: int = 12) -> onnx.ModelProto:
    """x, h -> y = x + h; h_out = relu(y) is a graph output *and* feeds y2 (like RVM's r*o)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, "height", "width"])
    h = helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", 2, "height", "width"])
    h_out = helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["batch", 2, "height", "width"])
    y2 = helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["batch", 2, "height", "width"])
    nodes = [
        helper.make_node("Add", ["x", "h"], ["y"]),
        helper.make_node("Relu", ["y"], ["h_out"]),
        helper.make_node("Mul", ["h_out", "x"], ["y2"]),
    ]
    graph = helper.make_graph(nodes, "toy", [x, h], [h_out, y2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def test_opset_upgrade():
    model = upgrade_opset(_recurrent_toy(12), 17)
    assert opset_of(model) == 17


def test_unique_dim_names_per_tensor():
    model = _recurrent_toy()
    give_unique_dim_names(model)
    dims = {v.name: [d.dim_param for d in v.type.tensor_type.shape.dim if d.dim_param]
            for v in [*model.graph.input, *model.graph.output]}
    assert dims["x"] == ["x_batch", "x_height", "x_width"]
    assert dims["h"] == ["h_batch", "h_height", "h_width"]
    everything = [name for names in dims.values() for name in names]
    assert len(everything) == len(set(everything))


def test_consumed_outputs_get_an_identity():
    model = _recurrent_toy()
    assert route_consumed_outputs(model) == ["h_out"]
    producers = {o: n for n in model.graph.node for o in n.output}
    assert producers["h_out"].op_type == "Identity"
    # Internal consumers no longer read the graph output itself.
    assert all("h_out" not in n.input for n in model.graph.node)
    onnx.checker.check_model(model)


def test_sanitize_keeps_outputs_and_does_not_touch_input():
    original = _recurrent_toy()
    before = original.SerializeToString()
    cleaned, log = sanitize(original)
    assert original.SerializeToString() == before
    assert log.source_opset == 12 and log.opset == 17
    assert log.identity_routed_outputs == ["h_out"]
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((1, 2, 3, 5), np.float32), "h": rng.standard_normal((1, 2, 3, 5), np.float32)}
    a, b = _run(original, feeds), _run(cleaned, feeds)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_corrupt_onnx_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 100)
    with pytest.raises(MtcError, match="not a valid ONNX file|fails the ONNX checker"):
        load_onnx(bad)
    with pytest.raises(MtcError, match="not found"):
        load_onnx(tmp_path / "missing.onnx")


def test_sanitize_real_rvm_matches_original_on_real_clip(rvm_onnx):
    from mtc.backends import OrtBackend
    from mtc.models.export import ParityCase, check_export_parity, io_from_graph
    from mtc.models.rvm import RVM_IO

    original = load_onnx(rvm_onnx)
    cleaned, log = sanitize(original)
    assert log.opset >= 17 and log.nodes_after < log.nodes_before
    assert log.identity_routed_outputs == ["r1o", "r2o", "r3o", "r4o"]
    cases = (ParityCase(512, 288, 12), ParityCase(640, 360, 6, downsample_ratio=0.5))
    results = check_export_parity(io_from_graph(RVM_IO, cleaned), OrtBackend(original.SerializeToString()),
                                  OrtBackend(cleaned.SerializeToString()), cases)
    assert {r.downsample_ratio for r in results} == {1.0, 0.5}  # both the base path and the refiner
    for result in results:
        assert result.worst <= 1e-5, result.max_abs_diff
