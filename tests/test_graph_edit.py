import onnx
from onnx import helper

from mtc.graph_edit import last_reader_positions, producers, reader_counts, readers_by_tensor


def _graph() -> onnx.GraphProto:
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"),
             helper.make_node("Add", ["a", "a"], ["b"], name="twice"),
             helper.make_node("Mul", ["x", "b"], ["y"], name="mul")]
    io = helper.make_tensor_value_info
    return helper.make_graph(nodes, "g", [io("x", onnx.TensorProto.FLOAT, [1])], [io("y", onnx.TensorProto.FLOAT, [1])])


def test_readers_by_tensor_lists_each_reading_node_in_graph_order():
    graph = _graph()
    readers = readers_by_tensor(graph)
    assert [n.name for n in readers["x"]] == ["relu", "mul"]
    assert [n.name for n in readers["a"]] == ["twice", "twice"]  # one entry per input that reads it
    assert readers["y"] == []  # a graph output nobody reads
    assert producers(graph)["b"].name == "twice"


def test_reader_counts_count_every_input_that_reads_a_tensor():
    assert reader_counts(_graph()) == {"x": 2, "a": 2, "b": 1}


def test_last_reader_positions_give_each_tensor_its_last_reading_node():
    graph = _graph()
    assert last_reader_positions(graph.node) == {"x": 2, "a": 1, "b": 2}  # y is read by no node
