"""RVM graph checks and edits that work on any RVM ONNX, official or ours (imports onnx, not torch)."""

from __future__ import annotations

import functools

import numpy as np
import onnx
from onnx import numpy_helper

from mtc.errors import MtcError


def data_dependent_resize_inputs(model: onnx.ModelProto) -> list[str]:
    """Resize roi/scales/sizes inputs whose values depend on a graph input's values.

    Shapes of tensors (``Shape`` nodes) are not data dependencies: TensorRT computes those as
    int shape tensors. What it rejects is a Resize geometry computed from a (float) input's
    values, e.g. RVM's ``downsample_ratio``.

    Returns:
        One "node: input <- graph inputs" line per offending Resize input (empty list:
        TensorRT-friendly).
    """
    graph = model.graph
    graph_inputs = {i.name for i in graph.input} - {t.name for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}

    @functools.cache
    def sources(tensor: str) -> frozenset[str]:
        if tensor in graph_inputs:
            return frozenset({tensor})
        node = producers.get(tensor)
        if node is None or node.op_type == "Shape":  # initializer, or a shape (not values)
            return frozenset()
        found: set[str] = set()
        for name in node.input:
            if name:
                found |= sources(name)
        return frozenset(found)

    problems = []
    for node in graph.node:
        if node.op_type != "Resize":
            continue
        for position, name in enumerate(node.input[1:4], start=1):
            if name and (found := sources(name)):
                role = ("roi", "scales", "sizes")[position - 1]
                problems.append(f"{node.name or node.output[0]}: {role} {name} <- {', '.join(sorted(found))}")
    return problems


def bake_downsample_ratio(model: onnx.ModelProto, ratio: float) -> onnx.ModelProto:
    """Turn the ``downsample_ratio`` input of an RVM graph into a constant (for TensorRT).

    Works on the official ONNX too; constant folding (onnxsim in ``sanitize``) then turns the
    ratio's Concat into constant Resize scales.

    Raises:
        MtcError: if the graph has no ``downsample_ratio`` input.
    """
    baked = onnx.ModelProto.FromString(model.SerializeToString())
    inputs = [i for i in baked.graph.input if i.name == "downsample_ratio"]
    if not inputs:
        raise MtcError("the graph has no downsample_ratio input to bake", hint="is this an RVM model?")
    baked.graph.input.remove(inputs[0])
    baked.graph.initializer.append(numpy_helper.from_array(np.array([ratio], np.float32), "downsample_ratio"))
    return baked
