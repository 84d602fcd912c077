"""Small ONNX graph edits shared by the exporters and the quantizer."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import onnx
import onnx.numpy_helper


def topological_order(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    ready, pending, done = set(available) | {""}, list(nodes), []
    while pending:
        remaining = []
        for node in pending:
            if all(i in ready for i in node.input):
                done.append(node)
                ready.update(node.output)
            else:
                remaining.append(node)
        if len(remaining) == len(pending):
            raise ValueError(f"graph has a cycle or a missing input near {remaining[0].name}")
        pending = remaining
    return done


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """The node that writes each tensor."""
    return {out: node for node in graph.node for out in node.output}


def readers_by_tensor(graph: onnx.GraphProto) -> defaultdict[str, list[onnx.NodeProto]]:
    """The nodes that read each tensor, in graph order (an empty list for a tensor none reads)."""
    found: defaultdict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            found[name].append(node)
    return found


def reader_counts(graph: onnx.GraphProto) -> dict[str, int]:
    """How many node inputs read each tensor (a node reading it twice counts twice)."""
    return {name: len(nodes) for name, nodes in readers_by_tensor(graph).items()}


def last_reader_positions(nodes: Sequence[onnx.NodeProto]) -> dict[str, int]:
    """Each tensor's last reader: its position in `nodes` (tensors no node reads are absent)."""
    return {name: position for position, node in enumerate(nodes) for name in node.input}


def attribute(node: onnx.NodeProto, name: str, default=None):
    """The value of `node`'s attribute `name`, or `default` when it is not set."""
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def initializer_value(graph: onnx.GraphProto, name: str):
    """An initializer's value as a (nested) Python list, or None if `name` is not one."""
    init = next((i for i in graph.initializer if i.name == name), None)
    return None if init is None else onnx.numpy_helper.to_array(init).tolist()


def input_or_attribute(graph: onnx.GraphProto, node: onnx.NodeProto, index: int, name: str):
    """A setting that newer opsets pass as constant input `index` and older ones as attribute
    `name` (Split's sizes, ReduceMean's axes); None if neither holds a constant."""
    if len(node.input) > index and node.input[index]:
        return initializer_value(graph, node.input[index])
    return attribute(node, name)


def sort_nodes(graph: onnx.GraphProto, nodes: list[onnx.NodeProto] | None = None) -> None:
    """Make `nodes` (default: the graph's own) the graph's nodes, in topological order."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    ordered = topological_order(list(graph.node) if nodes is None else nodes, available)
    del graph.node[:]
    graph.node.extend(ordered)


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def remove_dead_nodes(graph: onnx.GraphProto) -> None:
    """Delete nodes no graph output depends on, and the initializers only they read."""
    writers = producers(graph)
    needed, stack = set(), [o.name for o in graph.output]
    while stack:
        node = writers.get(stack.pop())
        if node is not None and id(node) not in needed:
            needed.add(id(node))
            stack.extend(i for i in node.input if i)
    live = [n for n in graph.node if id(n) in needed]
    del graph.node[:]
    graph.node.extend(live)
    drop_unused_initializers(graph)
