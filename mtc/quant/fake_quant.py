"""Fake quantization on the torch executor, exactly where a Q/DQ plan puts Q/DQ nodes.

`attach_fake_quant` mirrors `mtc.quant.qdq.insert_qdq`: one activation quantizer per quantized
tensor, shared by the consumers the plan names (and, where Q/DQ is hoisted through
data-movement ops, by the mover inputs that share its scale), and one per-channel symmetric
weight quantizer per planned weight. With the parameters they start from, the executor then
computes what ONNX Runtime computes on the Q/DQ graph with graph optimizations off (the
exact float simulation); `export_qdq` writes learned parameters back through `insert_qdq`.

Learning happens in two places: activation step sizes (LSQ, Esser et al. 2020: the rounding's
straight-through gradient reaches the step size) and weight rounding (AdaRound, Nagel et al.
2020: each weight learns whether it rounds up or down through a rectified sigmoid pushed to 0
or 1 by a regulariser). QDrop (Wei et al. 2022) randomly keeps activations in float while
training, so the learned parameters also fit inputs that are not yet fully quantized.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx

from mtc.quant.qdq import (
    UINT8_MAX,
    ActivationRange,
    QdqPlan,
    activation_quant,
    hoist_through_movers,
    insert_qdq,
    quantize_weight,
    weight_limit,
)
from mtc.quant.torch_graph import GraphModule, nn, torch

# AdaRound's rectified sigmoid stretches sigmoid to (GAMMA, ZETA) and clips it to [0, 1], so
# that rounding decisions can reach exactly 0 or 1 with a finite parameter.
ZETA, GAMMA = 1.1, -0.1


def _round_ste(x):
    """Round half to even (as QuantizeLinear does) with the identity as gradient."""
    return x + (torch.round(x) - x).detach()


class ActivationQuantizer(nn.Module):
    """Per-tensor quantize-dequantize with a learnable step size.

    The step is stored as start * exp(log_gain): learning in log space gives every tensor the
    same relative step whatever its range, and the untrained quantizer computes with exactly
    the float32 scale `activation_quant` gives (exp(0) == 1), so it matches the Q/DQ graph.
    """

    def __init__(self, value_range: ActivationRange, activation_type: str):
        super().__init__()
        scale, zero = activation_quant(value_range, activation_type)
        self.register_buffer("start", torch.tensor(np.float32(scale)))
        self.register_buffer("zero", torch.tensor(float(zero)))
        self.log_gain = nn.Parameter(torch.zeros(()))
        self.low, self.high = (0.0, float(UINT8_MAX)) if activation_type == "uint8" else (-128.0, 127.0)
        self.activation_type = activation_type
        self.drop = 0.0  # QDrop: probability, per element and only while training, of staying float
        self.enabled = True

    def scale(self):
        return self.start * torch.exp(self.log_gain)

    def forward(self, x):
        if not self.enabled:
            return x
        scale = self.scale()
        q = torch.clamp(_round_ste(x / scale) + self.zero, self.low, self.high)
        y = (q - self.zero) * scale
        if self.training and self.drop > 0:
            y = torch.where(torch.rand_like(x) < self.drop, x, y)
        return y

    def value_range(self) -> ActivationRange:
        """The range whose `activation_quant` gives back this quantizer's scale and zero point."""
        scale, zero = float(np.float32(self.scale().item())), float(self.zero)
        if self.activation_type == "uint8":
            return -zero * scale, (UINT8_MAX - zero) * scale
        return -127 * scale, 127 * scale


class WeightQuantizer(nn.Module):
    """Per-channel symmetric weight quantize-dequantize: round to nearest, or learned rounding.

    Scales are the min-max ones `quantize_weight` gives; reconstruction learns only which way
    each weight rounds (`learn_rounding`), then fixes it (`fix_rounding`).
    """

    def __init__(self, weight: np.ndarray, axis: int, bits: int):
        super().__init__()
        _, scale = quantize_weight(weight, axis, bits=bits)
        shape = [1] * weight.ndim
        shape[axis] = -1
        self.register_buffer("step", torch.from_numpy(scale.reshape(shape).copy()))
        self.axis, self.limit = axis, weight_limit(bits)
        self.rounding: nn.Parameter | None = None  # AdaRound's per-weight parameter, once learning
        self.soft = False
        self.enabled = True

    def learn_rounding(self, weight) -> None:
        """Start AdaRound from the weights' own fractional parts (the soft rounding then
        reproduces the float weights)."""
        scaled = weight.detach() / self.step
        rest = (scaled - torch.floor(scaled)).clamp(1e-4, 1 - 1e-4)
        self.rounding = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))
        self.soft = True

    def fix_rounding(self) -> None:
        self.soft = False

    def soft_rounding(self):
        return torch.clamp(torch.sigmoid(self.rounding) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)

    def rounding_penalty(self, exponent: float):
        """AdaRound's regulariser: zero once every soft rounding is exactly 0 or 1."""
        h = self.soft_rounding()
        return (1 - torch.abs(2 * h - 1) ** exponent).sum()

    def integers(self, weight):
        scaled = weight / self.step
        if self.rounding is None:
            q = _round_ste(scaled)
        elif self.soft:
            q = torch.floor(scaled.detach()) + self.soft_rounding()
        else:
            q = torch.floor(scaled.detach()) + (self.rounding >= 0).to(weight.dtype)
        return torch.clamp(q, -self.limit, self.limit)

    def forward(self, weight):
        return self.integers(weight) * self.step if self.enabled else weight


@dataclass
class FakeQuant:
    """The quantizers attached to one executor: activations by the tensor whose Q/DQ
    parameters they hold, weights by (node, input index)."""

    activations: dict[str, ActivationQuantizer] = field(default_factory=dict)
    weights: dict[tuple[str, int], WeightQuantizer] = field(default_factory=dict)

    def modules(self) -> list[nn.Module]:
        return [*self.activations.values(), *self.weights.values()]

    def set_drop(self, probability: float) -> None:
        for quantizer in self.activations.values():
            quantizer.drop = probability


def attach_fake_quant(module: GraphModule, model: onnx.ModelProto, plan: QdqPlan,
                      ranges: Mapping[str, ActivationRange], *, activation_type: str = "int8",
                      weight_bits: int = 8) -> FakeQuant:
    """Put fake quantization into `module` (the executor of `model`) wherever `insert_qdq`
    would put Q/DQ nodes for `plan` and `ranges`."""
    readers = plan.activation_readers()
    shared = hoist_through_movers(model.graph, readers)
    quant = FakeQuant()
    for tensor in readers:
        root = shared.get(tensor, tensor)
        if root not in quant.activations:
            quant.activations[root] = ActivationQuantizer(ranges[root], activation_type)
    for tensor, consumers in readers.items():
        for node, index in consumers:
            module.set_input_transform(node, index, quant.activations[shared.get(tensor, tensor)])
    nodes = {n.name: n for n in model.graph.node}
    for planned in plan.nodes:
        for index, axis in planned.weights:
            weight = module.parameter(nodes[planned.node].input[index]).detach().numpy()
            quantizer = WeightQuantizer(weight, axis, weight_bits)
            quant.weights[(planned.node, index)] = quantizer
            module.set_input_transform(planned.node, index, quantizer)
    return quant


def learned_parameters(module: GraphModule, model: onnx.ModelProto, quant: FakeQuant
                       ) -> tuple[dict[str, ActivationRange], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(ranges, rounded) for `insert_qdq`: activation ranges that reproduce the learned step
    sizes, and each planned weight's INT8 values with its scale."""
    ranges = {tensor: q.value_range() for tensor, q in quant.activations.items()}
    nodes = {n.name: n for n in model.graph.node}
    rounded = {}
    with torch.no_grad():
        for (node, index), quantizer in quant.weights.items():
            name = nodes[node].input[index]
            values = quantizer.integers(module.parameter(name)).numpy().astype(np.int8)
            rounded[name] = (values, quantizer.step.reshape(-1).numpy().copy())
    return ranges, rounded


def export_qdq(module: GraphModule, model: onnx.ModelProto, plan: QdqPlan, quant: FakeQuant, *,
               activation_type: str = "int8") -> onnx.ModelProto:
    """The Q/DQ graph of `model` with the quantizers' current (learned) parameters."""
    ranges, rounded = learned_parameters(module, model, quant)
    return insert_qdq(model, plan, ranges, activation_type=activation_type, rounded=rounded)
