"""Affine correction: a training-free take on PTQ4VM's Global Affine Calibration.

PTQ4VM learns a scalar y = gamma * conv_q(x) + beta per layer and folds it into the weights. We
fit one (gamma, beta) per output channel in closed form instead: least squares of the FP32
conv output on the output of a quantized copy of the same conv fed the same FP32 input, over
the calibration frames. Fitting each layer in isolation (rather than with all layers quantized)
keeps every correction valid for any subset of layers, which the fallback search needs. With
per-channel symmetric weights the fold is exact: gamma scales that channel's dequantization
scale, and the bias becomes gamma * b + beta. Inference cost: zero.

The same pass measures each layer's output error in isolation (relative to its FP32 output's
variance), a cheap ranking of where INT8 hurts that the float budget uses to choose its probes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from mtc.backends import OrtBackend
from mtc.graph_edit import drop_unused_initializers
from mtc.quant.qdq import ActivationRange, NodeQuant, QdqPlan, insert_qdq, weight_scale_name
from mtc.quant.ranges import expose_tensors

GAMMA_LIMITS = (0.5, 2.0)  # a correction outside this range means the fit is not to be trusted


# Where a layer's output channels lie in its output: NCHW for convs, the last axis for linear layers.
CHANNEL_AXIS = {"Conv": 1, "Gemm": -1, "MatMul": -1}
# Layers whose correction folds exactly: a bias input takes beta (a MatMul has none; its bias is a
# separate Add that other layers may share), and gamma scales the per-channel weight scale.
CORRECTABLE = ("Conv", "Gemm")


class _ChannelFit:
    """Streaming sufficient statistics for y_fp ~ gamma * y_q + beta, per channel."""

    def __init__(self, channels: int, axis: int = 1):
        self.axis = axis
        self.n = 0
        self.sq = np.zeros(channels)
        self.sqq = np.zeros(channels)
        self.sf = np.zeros(channels)
        self.sff = np.zeros(channels)
        self.sqf = np.zeros(channels)

    def update(self, quantized: np.ndarray, reference: np.ndarray) -> None:
        q = np.moveaxis(quantized, self.axis, 0).reshape(quantized.shape[self.axis], -1).astype(np.float64)
        f = np.moveaxis(reference, self.axis, 0).reshape(reference.shape[self.axis], -1).astype(np.float64)
        self.n += q.shape[1]
        self.sq += q.sum(1)
        self.sqq += (q * q).sum(1)
        self.sf += f.sum(1)
        self.sff += (f * f).sum(1)
        self.sqf += (q * f).sum(1)

    def solve(self) -> tuple[np.ndarray, np.ndarray]:
        mean_q, mean_f = self.sq / self.n, self.sf / self.n
        var_q = self.sqq / self.n - mean_q ** 2
        cov = self.sqf / self.n - mean_q * mean_f
        gamma = np.where(var_q > 1e-12, cov / np.maximum(var_q, 1e-12), 1.0)
        gamma = np.where((gamma >= GAMMA_LIMITS[0]) & (gamma <= GAMMA_LIMITS[1]), gamma, 1.0)
        beta = mean_f - gamma * mean_q
        return gamma.astype(np.float32), beta.astype(np.float32)

    def relative_error(self, gamma: np.ndarray | float = 1.0, beta: np.ndarray | float = 0.0) -> float:
        """Mean squared error of gamma * y_q + beta against y_fp, over the FP32 output's variance."""
        squared = (self.sff - 2 * gamma * self.sqf - 2 * beta * self.sf + gamma ** 2 * self.sqq
                   + 2 * gamma * beta * self.sq + self.n * beta ** 2)
        variance = self.sff - self.sf ** 2 / self.n
        return float(max(squared.sum(), 0.0) / max(variance.sum(), 1e-12))


@dataclass(frozen=True)
class LayerFit:
    """One quantized conv fitted in isolation: its per-channel correction, and its output error
    relative to the FP32 output's variance with the correction (`error`) and without it."""

    gamma: np.ndarray
    beta: np.ndarray
    error: float
    uncorrected_error: float


PROBE = "__probe"


def probe_model(fp32: onnx.ModelProto, plan: QdqPlan, ranges: Mapping[str, ActivationRange], *,
                activation_type: str = "int8", rounded: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
                weight_bits: int = 8) -> onnx.ModelProto:
    """The FP32 graph plus, for each planned layer with weights, a quantized copy reading the same
    FP32 input."""
    model = onnx.ModelProto()
    model.CopyFrom(fp32)
    probes, planned = [], {n.node: n for n in plan.nodes}
    for node in _fitted_layers(model, plan):
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name, copy.output[:] = node.name + PROBE, [node.output[0] + PROBE]
        model.graph.node.append(copy)
        quant = planned[node.name]
        probes.append(NodeQuant(copy.name, quant.inputs, quant.weights))
    return insert_qdq(model, QdqPlan(tuple(probes)), ranges, activation_type=activation_type, rounded=rounded,
                      weight_bits=weight_bits)


def fit_layers(fp32: onnx.ModelProto, plan: QdqPlan, ranges: Mapping[str, ActivationRange],
               feeds: Iterable[dict[str, np.ndarray]], *, activation_type: str = "int8",
               rounded: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
               weight_bits: int = 8) -> dict[str, LayerFit]:
    """A LayerFit for every layer with weights in `plan`, each quantized alone (with the INT8
    weights `rounded` gives, where it gives them) and fed FP32 inputs, in one pass over `feeds`.
    Layers without a bias to fold beta into (MatMul) get the identity correction: their fit
    only measures their error."""
    convs = _fitted_layers(fp32, plan)
    outputs = [t for n in convs for t in (n.output[0], n.output[0] + PROBE)]
    probes = probe_model(fp32, plan, ranges, activation_type=activation_type, rounded=rounded, weight_bits=weight_bits)
    runner = OrtBackend(expose_tensors(probes, outputs).SerializeToString(), optimization="basic")
    fits: dict[str, _ChannelFit] = {}
    for feed in feeds:
        got = runner.run({k: v for k, v in feed.items() if k in runner.input_names})
        for node in convs:
            reference, quantized = got[node.output[0]], got[node.output[0] + PROBE]
            axis = CHANNEL_AXIS[node.op_type] % reference.ndim
            fits.setdefault(node.name, _ChannelFit(reference.shape[axis], axis)).update(quantized, reference)
    kinds = {n.name: n.op_type for n in convs}
    layers = {}
    for name, fit in fits.items():
        if kinds[name] in CORRECTABLE:
            gamma, beta = fit.solve()
        else:
            gamma, beta = np.ones(fit.sq.shape, np.float32), np.zeros(fit.sq.shape, np.float32)
        layers[name] = LayerFit(gamma, beta, fit.relative_error(gamma, beta), fit.relative_error())
    return layers


def _fitted_layers(model: onnx.ModelProto, plan: QdqPlan) -> list[onnx.NodeProto]:
    """The planned layers with quantized weights of a kind the fit understands, in graph order."""
    weighted = {n.node for n in plan.nodes if n.weights}
    return [n for n in model.graph.node if n.name in weighted and n.op_type in CHANNEL_AXIS]


def apply_corrections(quantized: onnx.ModelProto, corrections: Mapping[str, LayerFit]) -> onnx.ModelProto:
    """Fold (gamma, beta) into the weight scales and biases of the quantized model (a new copy)."""
    out = onnx.ModelProto()
    out.CopyFrom(quantized)
    graph = out.graph
    inits = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if node.name not in corrections or node.op_type not in CORRECTABLE:
            continue
        gamma, beta = corrections[node.name].gamma, corrections[node.name].beta
        scale_name = weight_scale_name(node)
        if scale_name not in inits:
            continue  # weights not quantized: nothing to fold into
        scale = numpy_helper.to_array(inits[scale_name]) * gamma
        inits[scale_name].CopyFrom(numpy_helper.from_array(scale.astype(np.float32), scale_name))
        if len(node.input) > 2 and node.input[2] in inits:
            bias = numpy_helper.to_array(inits[node.input[2]])
            corrected_name = f"{node.name}__corrected_bias"  # biases may be shared with the FP32 graph elsewhere
        else:
            bias, corrected_name = np.zeros_like(beta), f"{node.name}__corrected_bias"
        graph.initializer.append(numpy_helper.from_array((gamma * bias + beta).astype(np.float32), corrected_name))
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = corrected_name
    drop_unused_initializers(graph)
    return out
