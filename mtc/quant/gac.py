"""Stage 2 of learned quantization: global affine calibration (PTQ4VM).

After block reconstruction every block matches its FP32 outputs on its own, but the errors
that remain still add up along the graph. A scalar gamma and beta per quantized conv,
y = gamma * conv_q(x) + beta, trained end to end against the FP32 graph's outputs, corrects
what the blocks could not see. Both fold into the Q/DQ graph at no run-time cost: gamma
multiplies the conv's per-channel weight scales, and the bias becomes gamma * b + beta
(`fold_affine`, through the same fold as `mtc.quant.affine`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx

from mtc.quant.affine import LayerFit, apply_corrections
from mtc.quant.flow import FramePair, temporal_error
from mtc.quant.qdq import QdqPlan
from mtc.quant.torch_graph import GraphModule, nn, to_torch_feeds, torch


class LayerAffine(nn.Module):
    """y -> gamma * y + beta on one layer's output (identity until trained)."""

    def __init__(self):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(()))
        self.beta = nn.Parameter(torch.zeros(()))

    def forward(self, y):
        return y * self.gamma + self.beta


def attach_affine(module: GraphModule, plan: QdqPlan) -> dict[str, LayerAffine]:
    """A LayerAffine on the output of every planned Conv of `module` (other layer types have
    no per-channel weight scale to fold gamma into)."""
    convs = {n.name for n in module.nodes if n.op_type == "Conv"}
    affines = {}
    for name in plan.node_names:
        if name in convs:
            affines[name] = LayerAffine()
            module.set_output_transform(name, affines[name])
    return affines


def train_affine(student: GraphModule, affines: Mapping[str, LayerAffine], teacher: GraphModule,
                 feeds: Sequence[Mapping[str, np.ndarray]], *, outputs: Sequence[str] | None = None,
                 iterations: int = 100, batch: int = 1, learning_rate: float = 1e-3, seed: int = 0,
                 pairs: Sequence[tuple[int, int, FramePair]] = (), temporal_weight: float = 1.0,
                 progress: Callable[[], None] | None = None) -> list[float]:
    """Train only the affines, end to end: the squared error of the student's `outputs` (None:
    every float graph output; a matting model's alpha is what the paper fits) against the
    teacher's, averaged over elements. With `pairs` (consecutive feeds i, j and the motion
    between them), each step takes max(1, batch // 2) pairs instead of single feeds and adds
    `temporal_weight` times the flow-compensated temporal error of both frames (PTQ4VM's
    temporal loss). Returns the loss per step; `progress()` is called after each."""
    with torch.no_grad():
        samples = [to_torch_feeds(f) for f in feeds]
        targets = [teacher(s) for s in samples]
    names = list(outputs) if outputs is not None else [n for n in student.output_names
                                                       if targets[0][n].is_floating_point()]
    parameters = [p for a in affines.values() for p in (a.gamma, a.beta)]
    optimizer = torch.optim.Adam(parameters, lr=learning_rate)
    rng = random.Random(seed)
    losses = []
    for _ in range(iterations):
        if pairs:
            chosen = [pairs[rng.randrange(len(pairs))] for _ in range(max(1, batch // 2))]
            loss = sum(objective(student, samples, targets, names, pair, temporal_weight) for pair in chosen)
        else:
            chosen = [rng.randrange(len(samples)) for _ in range(batch)]
            loss = sum(objective(student, samples, targets, names, (i,), temporal_weight) for i in chosen)
        loss = loss / len(chosen)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if progress:
            progress()
    return losses


def objective(student: GraphModule, samples, targets, names: Sequence[str], item: tuple, temporal_weight: float):
    """What stage 2 minimises on one item: a feed index (i,), or a pair (i, j, FramePair) of
    consecutive feeds, whose frames' errors count with the temporal error between them."""
    got = [student(samples[i]) for i in item[:2]]
    loss = sum(((g[n] - targets[i][n]) ** 2).mean() for g, i in zip(got, item[:2]) for n in names)
    if len(item) == 3:
        i, j, pair = item
        loss = loss + temporal_weight * sum(temporal_error(got[0][n], got[1][n], targets[i][n], targets[j][n], pair)
                                            for n in names)
    return loss


def affine_corrections(model: onnx.ModelProto, affines: Mapping[str, LayerAffine]) -> dict[str, LayerFit]:
    """The trained affines as per-channel corrections for `mtc.quant.affine.apply_corrections`."""
    initializers = {i.name: i for i in model.graph.initializer}
    corrections = {}
    for node in model.graph.node:
        if node.name not in affines:
            continue
        channels = initializers[node.input[1]].dims[0]
        gamma, beta = affines[node.name].gamma.item(), affines[node.name].beta.item()
        corrections[node.name] = LayerFit(np.full(channels, gamma, np.float32), np.full(channels, beta, np.float32),
                                          error=float("nan"), uncorrected_error=float("nan"))
    return corrections


def fold_affine(qdq_model: onnx.ModelProto, model: onnx.ModelProto, affines: Mapping[str, LayerAffine]
                ) -> onnx.ModelProto:
    """`qdq_model` (the Q/DQ graph of `model`) with the trained affines folded into its weight
    scales and biases."""
    return apply_corrections(qdq_model, affine_corrections(model, affines))
