"""Stage 1 of learned quantization: block reconstruction (BRECQ, Li et al. 2021).

The graph is cut into blocks, and each block, in order, learns its weights' rounding
(AdaRound) and its activations' step sizes (LSQ) so that its outputs match the FP32 graph's.
It reads what the already-reconstructed quantized graph before it produces, so later blocks
learn to absorb earlier blocks' remaining error; QDrop keeps half of the activations in float
while learning, which generalises better from the calibration data.

Blocks come from the graph alone: walking the nodes in order, the number of live activation
tensors (made so far, read later) drops back to its level at a block's start where a residual
unit, a squeeze-excitation branch, a decoder stage or a recurrent cell closes. A block is cut
at such a point once it holds a quantized layer, and at the least busy point after
`max_block_layers` layers otherwise.
"""

from __future__ import annotations

import contextlib
import io
import logging
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from mtc.errors import MtcError
from mtc.fsutil import atomic_write_bytes
from mtc.graph_edit import last_reader_positions
from mtc.quant.fake_quant import FakeQuant, attach_fake_quant, layer_bits
from mtc.quant.qdq import ActivationRange, QdqPlan, float_tensors
from mtc.quant.torch_graph import GraphModule, nn, to_torch_feeds, torch

log = logging.getLogger("mtc")


@dataclass(frozen=True)
class ReconstructionConfig:
    """How long and how hard each block learns.

    Attributes:
        iterations: optimizer steps per block.
        batch: calibration samples per step.
        samples: calibration samples used (None: all the feeds given).
        max_block_layers: a block is cut after this many quantized layers even inside a unit.
        rounding_lr, step_lr: Adam learning rates of the rounding parameters and of the
            activation step sizes (in log space, so a relative rate).
        rounding_weight: weight of AdaRound's regulariser against the reconstruction error.
            With a schedule of a hundred steps (AdaRound's own runs take ten thousand), the
            rounding rate and this weight must be large enough for the roundings to reach 0 or
            1 while they learn: left undecided, they are forced at the end, away from what the
            step sizes learned against (measured: docs/ptq4vm-findings.md, "First runs").
        warmup: share of the iterations before the regulariser starts.
        exponents: the regulariser's exponent, annealed from the first to the second value
            (a high exponent lets roundings move freely, a low one pushes them to 0 or 1).
        drop: QDrop's probability of keeping an activation float while learning.
        seed: for the sample order and QDrop's masks.
    """

    iterations: int = 200
    batch: int = 2
    samples: int | None = None
    max_block_layers: int = 4
    rounding_lr: float = 1e-1
    step_lr: float = 1e-3
    rounding_weight: float = 1.0
    warmup: float = 0.2
    exponents: tuple[float, float] = (20.0, 2.0)
    drop: float = 0.5
    seed: int = 0

    def __post_init__(self):
        if self.iterations < 1 or self.batch < 1 or self.max_block_layers < 1:
            raise MtcError("reconstruction needs at least one iteration, one sample per step and one layer per block",
                           hint="check the reconstruction options")

    def exponent(self, iteration: int) -> float:
        start = self.warmup * self.iterations
        progress = max(0.0, (iteration - start) / max(self.iterations - start, 1))
        high, low = self.exponents
        return low + (high - low) * max(0.0, 1.0 - progress)


@dataclass(frozen=True)
class Block:
    """nodes[start:stop] of the graph; `layers` the quantized nodes among them, `exits` the
    float tensors made inside and read after it (or graph outputs): what it reconstructs."""

    start: int
    stop: int
    layers: tuple[str, ...]
    exits: tuple[str, ...]


# (block number, all blocks) -> a context yielding a callable to step once per iteration.
BlockDisplay = Callable[[int, Sequence[Block]], contextlib.AbstractContextManager[Callable[[], None]]]


def _live_counts(model: onnx.ModelProto) -> tuple[list[int], dict[str, int]]:
    """For each cut position p (before node p): how many float activations made before p are
    read at or after p; and each tensor's last reader (a tensor is needed after a cut at p
    when its last reader is at p or later)."""
    nodes = list(model.graph.node)
    floats = float_tensors(model)
    constants = {i.name for i in model.graph.initializer} | {o for n in nodes if n.op_type == "Constant"
                                                              for o in n.output}
    last_read = last_reader_positions(nodes)
    made = {i.name: -1 for i in model.graph.input}
    for position, node in enumerate(nodes):
        for name in node.output:
            made[name] = position
    counts = [0] * (len(nodes) + 1)
    for name, position in made.items():
        if name in floats and name not in constants and name in last_read:
            for p in range(position + 1, last_read[name] + 1):
                counts[p] += 1
    return counts, last_read


def find_blocks(model: onnx.ModelProto, plan: QdqPlan, *, max_block_layers: int = 4) -> list[Block]:
    """Cut the graph (in node order) into blocks, each holding at least one quantized layer
    (the last one may also hold the nodes after the last layer)."""
    nodes = list(model.graph.node)
    position = {n.name: i for i, n in enumerate(nodes)}
    layers = sorted(position[name] for name in plan.node_names if name in position)
    if not layers:
        return []
    counts, last_read = _live_counts(model)
    cuts, start, held = [], 0, 0
    for this, following in zip(layers, [*layers[1:], len(nodes)]):
        held += 1
        if following == len(nodes):
            break
        gap = range(this + 1, following + 1)
        best = min(gap, key=lambda p: counts[p])
        if counts[best] <= counts[start] or held >= max_block_layers:
            cuts.append(best)
            start, held = best, 0
    bounds = [0, *cuts, len(nodes)]
    outputs = {o.name for o in model.graph.output}
    floats = float_tensors(model)
    blocks = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        made = [o for n in nodes[a:b] if n.op_type != "Constant" for o in n.output if o]
        exits = tuple(t for t in made if t in floats and (last_read.get(t, -1) >= b or t in outputs))
        blocks.append(Block(a, b, tuple(nodes[i].name for i in layers if a <= i < b), exits))
    return blocks


@dataclass
class Reconstruction:
    """The reconstructed quantized executor, with what each block learned and how."""

    module: GraphModule
    quant: FakeQuant
    blocks: list[Block]
    losses: list[list[float]] = field(default_factory=list)  # per block: the reconstruction loss per step
    # Per block: its error over all samples with nearest rounding and with what it learned, and
    # which it kept ("learned" or "nearest"); None for a block with nothing to learn.
    outcomes: list[dict | None] = field(default_factory=list)


def _squared_error(got: Mapping, want: Mapping, names: Sequence[str]):
    """Squared error summed over each sample's elements (as AdaRound and BRECQ weigh it
    against the rounding regulariser)."""
    return sum(((got[n] - want[n]) ** 2).sum() for n in names)


def reconstruct(model: onnx.ModelProto, plan: QdqPlan, ranges: Mapping[str, ActivationRange],
                feeds: Sequence[Mapping[str, np.ndarray]], *, activation_type: str = "int8", weight_bits: int = 8,
                activation_bits: int = 8, per_layer: Mapping[str, tuple[int, int]] | None = None,
                keep_8bit: Iterable[str] = (), fixed_steps: Iterable[str] = (),
                config: ReconstructionConfig = ReconstructionConfig(), checkpoint: Path | None = None,
                restart_stale: bool = False, progress: Callable[[int, int], None] | None = None,
                block_display: BlockDisplay | None = None) -> Reconstruction:
    """Reconstruct every block of `model` quantized as `plan` and `ranges` say, on `feeds`
    (model inputs, recurrent state as the FP32 model produced it). `progress(done, total)` is
    called after each block; each block runs inside `block_display(number, blocks)` (the
    one learning is blocks[number]), a context that yields a callable stepped once per
    iteration (a progress bar).
    Bit widths per layer are `attach_fake_quant`'s (`weight_bits`, `activation_bits`,
    `per_layer`, `keep_8bit`). The activations named in `fixed_steps` keep the step size their
    range gives (a tensor already on its exact grid).

    With `checkpoint`, what the finished blocks learned is saved there after each block, and a
    run that finds it resumes after the last saved block with the same result as one that
    was never interrupted. A checkpoint of another reconstruction is refused, or with
    `restart_stale` (the checkpoint is the caller's own scratch file) replaced.
    """
    teacher, student = GraphModule(model), GraphModule(model)
    for module in (teacher, student):
        module.requires_grad_(False)  # the float weights stay; only roundings and step sizes learn
    keep_8bit = tuple(keep_8bit)
    quant = attach_fake_quant(student, model, plan, ranges, activation_type=activation_type, weight_bits=weight_bits,
                              activation_bits=activation_bits, per_layer=per_layer, keep_8bit=keep_8bit)
    blocks = find_blocks(model, plan, max_block_layers=config.max_block_layers)
    _, last_read = _live_counts(model)
    samples = list(feeds[: config.samples] if config.samples else feeds)
    if not samples:
        raise MtcError("block reconstruction got no calibration samples", hint="give it calibration frames")
    teacher_fronts = [to_torch_feeds(s) for s in samples]
    student_fronts = [dict(f) for f in teacher_fronts]
    first_reader = _first_reader_block(student, quant, blocks)
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    result = Reconstruction(student, quant, blocks)
    identity = repr((plan.node_names, sorted(ranges.items()), activation_type, weight_bits, config, len(samples)))
    bits = layer_bits(plan, weight_bits=weight_bits, activation_bits=activation_bits, per_layer=per_layer,
                      keep_8bit=keep_8bit)
    mixed = sorted((name, b) for name, b in bits.items() if b != (weight_bits, 8))
    if mixed:  # only then: checkpoints of uniform 8-bit-activation runs keep the identity they had
        identity += repr(mixed)
    fixed_names = sorted(name for name in fixed_steps if name in quant.activations)
    fixed = {quant.activations[name] for name in fixed_names}
    if fixed_names:
        identity += repr(fixed_names)
    done = 0
    if checkpoint is not None and Path(checkpoint).exists():
        done = _resume(checkpoint, identity, result, rng, restart_stale=restart_stale)
    with torch.no_grad():  # where the finished blocks leave both graphs
        for block in blocks[:done]:
            teacher_fronts = [_prune(teacher.run(f, block.start, block.stop), block.stop, last_read)
                              for f in teacher_fronts]
            student_fronts = [_prune(student.run(f, block.start, block.stop), block.stop, last_read)
                              for f in student_fronts]
    for number, block in enumerate(blocks[done:], start=done):
        with torch.no_grad():
            targets = [teacher.run(dict(front), block.start, block.stop, keep=block.exits) for front in teacher_fronts]
        steps = [q for q, b in first_reader.items() if b == number and q not in fixed]
        display = block_display(number, blocks) if block_display else contextlib.nullcontext(None)
        with display as advance:
            losses, outcome = _train_block(student, quant, block, steps, student_fronts, targets, config, rng, advance)
        result.losses.append(losses)
        result.outcomes.append(outcome)
        with torch.no_grad():
            student_fronts = [_prune(student.run(front, block.start, block.stop), block.stop, last_read)
                              for front in student_fronts]
        teacher_fronts = [_prune(t, block.stop, last_read) for t in targets]
        if checkpoint is not None:
            _save(checkpoint, identity, number + 1, result, rng)
        if progress:
            progress(number + 1, len(blocks))
    return result


def _save(path: Path, identity: str, done: int, result: Reconstruction, rng: random.Random) -> None:
    """What the first `done` blocks learned, and the random states the next block starts from."""
    state = {"identity": identity, "done": done, "losses": result.losses, "outcomes": result.outcomes,
             "python_rng": rng.getstate(), "torch_rng": torch.get_rng_state(),
             "roundings": {key: q.rounding.detach() for key, q in result.quant.weights.items()
                           if q.rounding is not None},
             "steps": {name: q.log_gain.detach() for name, q in result.quant.activations.items()
                       if not q.log_gain.requires_grad}}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())  # an interruption mid-write leaves the last checkpoint


def _resume(path: Path, identity: str, result: Reconstruction, rng: random.Random, *, restart_stale: bool) -> int:
    state = torch.load(path, weights_only=True)
    if state["identity"] != identity and restart_stale:
        log.info("%s is the checkpoint of another reconstruction (other model, plan, data or options): starting over",
                 path)
        return 0
    if state["identity"] != identity:
        raise MtcError(f"{path} is the checkpoint of another reconstruction (other model, plan, data or options)",
                       hint="delete it, or give this run another checkpoint path")
    for key, rounding in state["roundings"].items():
        quantizer = result.quant.weights[key]
        quantizer.rounding = nn.Parameter(rounding.clone())
        quantizer.fix_rounding()
    for name, log_gain in state["steps"].items():
        quantizer = result.quant.activations[name]
        with torch.no_grad():
            quantizer.log_gain.copy_(log_gain)
        quantizer.log_gain.requires_grad_(False)
    result.losses[:] = state["losses"]
    result.outcomes[:] = state.get("outcomes", [None] * state["done"])  # older checkpoints did not record them
    rng.setstate(state["python_rng"])
    torch.set_rng_state(state["torch_rng"])
    log.info("resuming block reconstruction after block %d of %d", state["done"], len(result.blocks))
    return state["done"]


def _prune(env: dict, stop: int, last_read: Mapping[str, int]) -> dict:
    """Only the tensors that nodes from `stop` on still read."""
    return {name: value for name, value in env.items() if last_read.get(name, -1) >= stop}


def _first_reader_block(module: GraphModule, quant: FakeQuant, blocks: list[Block]) -> dict:
    """Each activation quantizer -> the block that first reads through it: it learns there
    and stays fixed after, so earlier blocks' outputs stay what they were trained to be."""
    block_of = {}
    for number, block in enumerate(blocks):
        for node in module.nodes[block.start:block.stop]:
            block_of[node.name] = number
    first = {}
    for (node, _), transform in module.input_transforms.items():
        for quantizer in quant.activations.values():
            if transform is quantizer:
                first[quantizer] = min(first.get(quantizer, len(blocks)), block_of[node])
    return first


def _train_block(student: GraphModule, quant: FakeQuant, block: Block, step_quantizers, fronts, targets,
                 config: ReconstructionConfig, rng: random.Random, advance: Callable[[], None] | None = None
                 ) -> tuple[list[float], dict | None]:
    """The block's loss per step, and its outcome (see `Reconstruction.outcomes`)."""
    if not block.exits:
        return [], None
    weights = {quantizer: student.parameter(student.nodes[student.node_index[node]].input[index])
               for (node, index), quantizer in quant.weights.items() if node in block.layers}
    if not weights and not step_quantizers:
        return [], None
    student.eval()
    before = _block_error(student, block, fronts, targets)  # nearest rounding, calibrated steps
    for quantizer, weight in weights.items():
        quantizer.learn_rounding(weight)
    groups = [{"params": [q.rounding for q in weights], "lr": config.rounding_lr},
              {"params": [q.log_gain for q in step_quantizers], "lr": config.step_lr}]
    optimizer = torch.optim.Adam([g for g in groups if g["params"]])
    student.train()
    quant.set_drop(config.drop)
    losses = []
    for iteration in range(config.iterations):
        chosen = [rng.randrange(len(fronts)) for _ in range(config.batch)]
        error = sum(_squared_error(student.run(dict(fronts[i]), block.start, block.stop), targets[i], block.exits)
                    for i in chosen) / len(chosen)
        loss = error
        if iteration >= config.warmup * config.iterations and weights:
            exponent = config.exponent(iteration)
            loss = loss + config.rounding_weight * sum(q.rounding_penalty(exponent) for q in weights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(error.detach()))
        if advance:
            advance()
    for quantizer in weights:
        quantizer.fix_rounding()
    for quantizer in step_quantizers:
        quantizer.log_gain.requires_grad_(False)
    student.eval()
    quant.set_drop(0.0)
    learned = _block_error(student, block, fronts, targets)
    outcome = {"nearest_error": before, "learned_error": learned, "kept": "learned" if learned <= before else "nearest"}
    if learned > before:
        # The regulariser can force roundings away from what the block needs (a short schedule
        # against a small block error): then the block keeps nearest rounding and its
        # calibrated steps rather than come out worse than it went in.
        log.info("block %s: learned quantization error %.4g above nearest rounding's %.4g: keeping nearest",
                 block.layers[0] if block.layers else block.start, learned, before)
        for quantizer in weights:
            quantizer.rounding = None
        with torch.no_grad():
            for quantizer in step_quantizers:
                quantizer.log_gain.zero_()
    return losses, outcome


def _block_error(student: GraphModule, block: Block, fronts, targets) -> float:
    """The block's mean squared error over all the samples, quantization as it stands (no QDrop)."""
    with torch.no_grad():
        return sum(float(_squared_error(student.run(dict(front), block.start, block.stop), target, block.exits))
                   for front, target in zip(fronts, targets)) / len(fronts)
