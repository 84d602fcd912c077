"""Graph edits engines need: turn an input into a constant and fold what it feeds.

TensorRT needs a recurrent model's downsample ratio fixed per engine: as an input it reaches Resize through a
Concat, and TensorRT refuses float shape tensors. Freezing it and folding the small constant
chain it feeds (Concat -> Resize scales) leaves Resize with constant scales. Only nodes
downstream of the frozen inputs are folded, so Q/DQ pairs on weights (the INT8 precision plan
TensorRT must see) are never touched.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from mtc.errors import MtcError

# Folding evaluates these ops on constants with onnx's reference evaluator; anything else
# downstream of a frozen input is left for TensorRT's own constant folding.
_FOLDABLE = {"Concat", "Cast", "Mul", "Div", "Add", "Sub", "Reshape", "Unsqueeze", "Squeeze", "Identity",
             "Gather", "Slice", "Floor", "Ceil", "Round", "Shape", "Constant"}


def freeze_inputs(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """Return a copy of `model` where each named input is a constant initializer, folded downstream."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inputs = {i.name: i for i in graph.input}
    for name, value in values.items():
        if name not in inputs:
            raise MtcError(f"the model has no input {name!r} to freeze", hint="the manifest and model disagree; re-export")
        elem = inputs[name].type.tensor_type.elem_type
        array = np.asarray(value, dtype=onnx.helper.tensor_dtype_to_np_dtype(elem))
        graph.input.remove(inputs[name])
        graph.initializer.append(numpy_helper.from_array(array, name))
    _fold_from(model, set(values))
    return model


def _fold_from(model: onnx.ModelProto, roots: set[str]) -> None:
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:  # Constant nodes are constants too (PyTorch exports emit many)
        if node.op_type == "Constant" and len(node.output) == 1:
            attr = next((a for a in node.attribute if a.name == "value"), None)
            if attr is not None:
                constants[node.output[0]] = numpy_helper.to_array(attr.t)
    tainted = set(roots)  # tensors computed from a frozen input
    changed = True
    while changed:
        changed = False
        for node in list(graph.node):
            if node.op_type not in _FOLDABLE or not any(i in tainted for i in node.input):
                continue
            if not all((i in constants) or i == "" for i in node.input):
                continue
            feeds = [numpy_helper.from_array(np.asarray(constants[i]), i) for i in dict.fromkeys(node.input) if i]
            outputs = [onnx.helper.make_empty_tensor_value_info(o) for o in node.output]
            single = onnx.helper.make_model(onnx.helper.make_graph([node], "fold", [], outputs, initializer=feeds),
                                            opset_imports=model.opset_import)
            try:
                results = ReferenceEvaluator(single).run(None, {})
            except Exception:  # leave it to TensorRT if the reference evaluator cannot
                continue
            graph.node.remove(node)
            for name, value in zip(node.output, results):
                value = np.asarray(value)
                constants[name] = value
                tainted.add(name)
                graph.initializer.append(numpy_helper.from_array(value, name))
            changed = True
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for node in list(graph.node):  # constants that only fed folded nodes
        if node.op_type == "Constant" and not any(o in used for o in node.output):
            graph.node.remove(node)
    for init in list(graph.initializer):
        if init.name in tainted and init.name not in used:
            graph.initializer.remove(init)
