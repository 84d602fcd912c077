"""Small ONNX graph edits shared by the exporters and the quantizer."""

from __future__ import annotations

import onnx


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


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def remove_dead_nodes(graph: onnx.GraphProto) -> None:
    """Delete nodes no graph output depends on, and the initializers only they read."""
    producers = {out: n for n in graph.node for out in n.output}
    needed, stack = set(), [o.name for o in graph.output]
    while stack:
        node = producers.get(stack.pop())
        if node is not None and id(node) not in needed:
            needed.add(id(node))
            stack.extend(i for i in node.input if i)
    live = [n for n in graph.node if id(n) in needed]
    del graph.node[:]
    graph.node.extend(live)
    drop_unused_initializers(graph)
