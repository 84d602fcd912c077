"""Channel-split graph outputs merged into one output (the OpenVINO backend's rewrite)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from mtc.passes.openvino.split_outputs import merge_split_outputs


def _tail(*, bounds=((0.0, 1.0), (0.0, 1.0)), axis=1, clip=True, extra_reader=False):
    """x (1x4x5x6) -> Mul by 2 -> Split [3, 1] -> Clip each -> outputs fgr, pha (RVM's ending)."""
    inits = [numpy_helper.from_array(np.array([3, 1], np.int64), "sizes"),
             numpy_helper.from_array(np.float32(2.0), "two")]
    nodes = [helper.make_node("Mul", ["x", "two"], ["y"], name="mul"),
             helper.make_node("Split", ["y", "sizes"], ["f", "p"] if clip else ["fgr", "pha"], name="split", axis=axis)]
    outputs = ["fgr", "pha"]
    if clip:
        for part, out, (lo, hi) in zip(("f", "p"), outputs, bounds):
            inits += [numpy_helper.from_array(np.float32(lo), f"{out}_lo"), numpy_helper.from_array(np.float32(hi), f"{out}_hi")]
            nodes.append(helper.make_node("Clip", [part, f"{out}_lo", f"{out}_hi"], [out], name=f"clip_{out}"))
        if bounds[0] == bounds[1]:  # both clips read the same bound tensors, like the real graph
            nodes[-1].input[1:] = nodes[-2].input[1:]
    if extra_reader:
        nodes.append(helper.make_node("Neg", ["p" if clip else "pha"], ["aux"], name="neg"))
        outputs.append("aux")
    graph = helper.make_graph(nodes, "tail", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 6])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["n", "c", "h", "w"]) for o in outputs],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x})))


X = np.random.default_rng(0).uniform(-0.5, 1.0, (1, 4, 5, 6)).astype(np.float32)


def test_clipped_split_outputs_become_one_output_with_the_same_values():
    model = _tail()
    merged_model, merged = merge_split_outputs(model)
    onnx.checker.check_model(merged_model)
    assert [m.parts for m in merged] == [(("fgr", 0, 3), ("pha", 3, 4))]
    assert [o.name for o in merged_model.graph.output] == [merged[0].name]
    assert not any(n.op_type == "Split" for n in merged_model.graph.node)
    assert sum(n.op_type == "Clip" for n in merged_model.graph.node) == 1
    expected = _run(model, X)
    parts = merged[0].split(_run(merged_model, X)[merged[0].name])
    assert parts.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(parts[name], expected[name])
    assert parts["pha"].min() >= 0 and parts["fgr"].max() <= 1  # still clipped
    assert len(model.graph.output) == 2  # the input model is not modified


def test_unclipped_split_outputs_merge_too():
    model = _tail(clip=False)
    merged_model, merged = merge_split_outputs(model)
    assert len(merged) == 1 and not any(n.op_type == "Split" for n in merged_model.graph.node)
    parts, expected = merged[0].split(_run(merged_model, X)[merged[0].name]), _run(model, X)
    for name in expected:
        np.testing.assert_array_equal(parts[name], expected[name])


def test_graphs_that_need_their_split_are_left_alone():
    for model in (_tail(bounds=((0.0, 1.0), (0.0, 0.5))),  # the parts are clipped differently
                  _tail(extra_reader=True),  # a part is read inside the graph too
                  _tail(clip=False, extra_reader=True),
                  _tail(axis=2)):  # not the channel axis
        same, merged = merge_split_outputs(model)
        assert merged == () and same is model
