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

Bit widths can be below 8 for evaluation only (mtc.quant.lowbit): weights on fewer bits still
export as INT8 values, but activations below 8 bits have no Q/DQ INT8 form, so `export_qdq`
refuses them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx

from mtc.errors import MtcError
from mtc.quant.qdq import (
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


# Bit widths the fake quantizers simulate: 8 is what Q/DQ INT8 carries; fewer bits are for
# simulated low-bit evaluation (no CPU backend runs 4-bit kernels).
MIN_BITS, MAX_BITS = 2, 8


def _check_bits(bits: int, what: str) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise MtcError(f"{what} bits {bits!r} is not a whole number from {MIN_BITS} to {MAX_BITS}",
                       hint="use 8 for INT8, or 4 for simulated low-bit evaluation")
    return bits


def activation_levels(activation_type: str, bits: int = 8) -> tuple[float, float]:
    """The integer range of an activation of `bits` bits: unsigned [0, 2^b - 1] for uint8-style
    activations, signed [-2^(b-1), 2^(b-1) - 1] for int8-style ones."""
    _check_bits(bits, "activation")
    if activation_type == "uint8":
        return 0.0, float(2 ** bits - 1)
    return float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)


def activation_quant_bits(value_range: ActivationRange, activation_type: str, bits: int = 8
                          ) -> tuple[float, np.ndarray]:
    """(scale, zero point) of one activation tensor clipped to `value_range` on `bits` bits:
    `activation_quant`'s rule with 2^b levels instead of 256 (symmetric with zero point 0 for
    int8-style, [lo, hi] with a zero point where 0.0 lands for uint8-style). At 8 bits it is
    `activation_quant` itself, so the untrained module stays the Q/DQ graph's simulation."""
    if _check_bits(bits, "activation") == 8:
        return activation_quant(value_range, activation_type)
    lo, hi = min(float(value_range[0]), 0.0), max(float(value_range[1]), 0.0)
    low, high = activation_levels(activation_type, bits)
    if activation_type != "uint8":
        return max(-lo, hi, 1e-8) / high, np.array(0, np.int8)
    scale = max(hi - lo, 1e-8) / high
    return scale, np.array(np.clip(round(-lo / scale), 0, high), np.uint8)


class ActivationQuantizer(nn.Module):
    """Per-tensor quantize-dequantize with a learnable step size, on `bits` bits (8: INT8).

    The step is stored as start * exp(log_gain): learning in log space gives every tensor the
    same relative step whatever its range, and the untrained quantizer computes with exactly
    the float32 scale `activation_quant` gives (exp(0) == 1), so it matches the Q/DQ graph.
    """

    def __init__(self, value_range: ActivationRange, activation_type: str, bits: int = 8):
        super().__init__()
        scale, zero = activation_quant_bits(value_range, activation_type, bits)
        self.register_buffer("start", torch.tensor(np.float32(scale)))
        self.register_buffer("zero", torch.tensor(float(zero)))
        self.log_gain = nn.Parameter(torch.zeros(()))
        self.low, self.high = activation_levels(activation_type, bits)
        self.activation_type, self.bits = activation_type, bits
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
            return -zero * scale, (self.high - zero) * scale
        return -self.high * scale, self.high * scale


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


def layer_bits(plan: QdqPlan, *, weight_bits: int = 8, activation_bits: int = 8,
               per_layer: Mapping[str, tuple[int, int]] | None = None, keep_8bit: Iterable[str] = ()
               ) -> dict[str, tuple[int, int]]:
    """(weight bits, activation bits) of every layer of `plan`: `per_layer`'s where it names the
    layer, (8, 8) for the layers in `keep_8bit`, the defaults otherwise."""
    per_layer, kept = dict(per_layer or {}), set(keep_8bit)
    unknown = sorted((set(per_layer) | kept) - set(plan.node_names))
    if unknown:
        raise MtcError(f"bit widths given for layers the plan does not quantize: {', '.join(unknown)}",
                       hint="name quantized layers (ONNX node names of the plan)")
    bits = {}
    for name in plan.node_names:
        weights, activations = per_layer.get(name, (8, 8) if name in kept else (weight_bits, activation_bits))
        bits[name] = (_check_bits(weights, "weight"), _check_bits(activations, "activation"))
    return bits


def _tensor_bits(plan: QdqPlan, readers: Mapping[str, list[tuple[str, int]]], bits: Mapping[str, tuple[int, int]]
                 ) -> dict[str, int]:
    """Activation bits of each quantized tensor. One tensor has one quantizer (one Q/DQ pair in
    the graph), so a tensor that several layers read takes the widest of their activation bits;
    an output quantized only for float ops (an Add, a Sigmoid) takes its producing layer's."""
    producer = {n.output: n.node for n in plan.nodes if n.output}
    chosen = {}
    for tensor, consumers in readers.items():
        layers = [node for node, _ in consumers if node in bits]
        if not layers and tensor in producer:
            layers = [producer[tensor]]
        chosen[tensor] = max((bits[node][1] for node in layers), default=8)
    return chosen


def attach_fake_quant(module: GraphModule, model: onnx.ModelProto, plan: QdqPlan,
                      ranges: Mapping[str, ActivationRange], *, activation_type: str = "int8",
                      weight_bits: int = 8, activation_bits: int = 8,
                      per_layer: Mapping[str, tuple[int, int]] | None = None,
                      keep_8bit: Iterable[str] = ()) -> FakeQuant:
    """Put fake quantization into `module` (the executor of `model`) wherever `insert_qdq`
    would put Q/DQ nodes for `plan` and `ranges`.

    Bits per layer (see `layer_bits`): `weight_bits` and `activation_bits` by default,
    `per_layer` maps a layer to its own (weight bits, activation bits), `keep_8bit` names
    layers kept at 8 bits. A layer's activation bits apply to the tensors it reads through
    Q/DQ (and to its quantized output where only float ops read it)."""
    bits = layer_bits(plan, weight_bits=weight_bits, activation_bits=activation_bits, per_layer=per_layer,
                      keep_8bit=keep_8bit)
    readers = plan.activation_readers()
    tensor_bits = _tensor_bits(plan, readers, bits)  # before hoisting adds the movers' inputs
    shared = hoist_through_movers(model.graph, readers)
    quant = FakeQuant()
    for tensor in readers:
        root = shared.get(tensor, tensor)
        if root not in quant.activations:
            quant.activations[root] = ActivationQuantizer(ranges[root], activation_type, tensor_bits[root])
    for tensor, consumers in readers.items():
        for node, index in consumers:
            module.set_input_transform(node, index, quant.activations[shared.get(tensor, tensor)])
    nodes = {n.name: n for n in model.graph.node}
    for planned in plan.nodes:
        for index, axis in planned.weights:
            weight = module.parameter(nodes[planned.node].input[index]).detach().numpy()
            quantizer = WeightQuantizer(weight, axis, bits[planned.node][0])
            quant.weights[(planned.node, index)] = quantizer
            module.set_input_transform(planned.node, index, quantizer)
    return quant


def learned_parameters(module: GraphModule, model: onnx.ModelProto, quant: FakeQuant
                       ) -> tuple[dict[str, ActivationRange], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(ranges, rounded) for `insert_qdq`: activation ranges that reproduce the learned step
    sizes, and each planned weight's INT8 values with its scale.

    Activations below 8 bits are refused: an INT8 Q/DQ pair clamps to 256 levels, not 2^b, so
    no Q/DQ graph computes them (weights below 8 bits are INT8 values within a smaller range)."""
    narrow = sorted(t for t, q in quant.activations.items() if q.bits < 8)
    if narrow:
        raise MtcError(f"{len(narrow)} activations are quantized below 8 bits (e.g. {narrow[0]}): Q/DQ INT8 "
                       "cannot carry them", hint="low-bit activations are for simulated evaluation only "
                       "(mtc quantize --simulate); export at 8 bits")
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
