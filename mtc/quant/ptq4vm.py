"""Learned INT8 (PTQ4VM): the two learning stages, run on one Q/DQ plan for `mtc quantize`.

Stage 1 (`mtc.quant.reconstruct`) learns each block's weight rounding and activation step
sizes against the FP32 graph; stage 2 (`mtc.quant.gac`) trains a scalar gamma and beta per
quantized conv end to end against the FP32 outputs. What they learn leaves here as plain Q/DQ
parameters (activation ranges, INT8 weights, per-layer corrections), so the pipeline builds,
checks, falls back and reports exactly as it does for a calibrated plan.

This is the longest step of a quantization, so each block shows a bar with an ETA and the
finished blocks are checkpointed: a run interrupted between blocks resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from mtc.errors import MtcError
from mtc.graph_stats import tensor_elements
from mtc.quant.affine import LayerFit
from mtc.quant.config import Ptq4vmConfig
from mtc.quant.fake_quant import learned_parameters
from mtc.quant.flow import frame_pair
from mtc.quant.gac import affine_corrections, attach_affine, objective, train_affine
from mtc.quant.qdq import ActivationRange, QdqPlan
from mtc.quant.reconstruct import Block, ReconstructionConfig, reconstruct
from mtc.quant.torch_graph import GraphModule, to_torch_feeds, torch
from mtc.runtime.progress import Stages, format_duration

log = logging.getLogger("mtc")

# Loss curves in the report are averaged down to at most this many points per block.
CURVE_POINTS = 50
# A pair of consecutive frames joins the temporal loss when at least this share of its pixels
# can be followed from one frame to the next.
MIN_VALID = 0.5
# Where more frames of a size are on offer than are learned from, they are taken in runs of
# this many consecutive frames spread over all of them: every clip and source gets a share, and
# the temporal loss keeps pairs of consecutive frames.
SAMPLE_RUN = 4


@dataclass
class Learned:
    """What PTQ4VM learned, as `insert_qdq` and `apply_corrections` take it, with the trained
    fake-quant module (its kept affines attached) and the report's record."""

    ranges: dict[str, ActivationRange]
    rounded: dict[str, tuple[np.ndarray, np.ndarray]]
    corrections: dict[str, LayerFit]
    module: GraphModule
    report: dict


def learn(model: onnx.ModelProto, plan: QdqPlan, ranges: Mapping[str, ActivationRange],
          feeds: Sequence[Mapping[str, np.ndarray]], *, config: Ptq4vmConfig, activation_type: str,
          weight_bits: int, outputs: Sequence[str] | None = None, image: str | None = None,
          fixed_steps: Sequence[str] = (), checkpoint: Path | None = None, stages: Stages | None = None) -> Learned:
    """Learn `plan`'s quantization of `model`, starting from the calibrated `ranges`, on
    `config.samples` of `feeds`, the smallest first. Stage 2 fits `outputs` (None: every float
    output); for a recurrent model, `image` names the frame input that stage 2's temporal loss
    takes the motion from (None: no temporal loss). The tensors of `fixed_steps` keep their
    calibrated step sizes.

    `checkpoint` is a scratch file this run owns: a checkpoint of another run found there is
    replaced, one of this run is resumed from.
    """
    stages = stages if stages is not None else Stages()
    chosen = choose_samples(feeds, config.samples)
    samples = [feeds[i] for i in chosen]
    # stage 2's temporal loss pairs frames recorded one after the other, not two runs' ends
    successive = [second == first + 1 for first, second in zip(chosen, chosen[1:])]
    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        started = time.perf_counter()
        reconstruction = reconstruct(
            model, plan, ranges, samples, activation_type=activation_type, weight_bits=weight_bits,
            fixed_steps=fixed_steps,
            config=ReconstructionConfig(iterations=config.iterations, batch=config.batch,
                                        max_block_layers=config.max_block_layers, drop=config.drop),
            checkpoint=checkpoint, restart_stale=True, block_display=BlockBars(stages, config.iterations, model, samples[0]))
        stage1 = time.perf_counter() - started
        module, quant = reconstruction.module, reconstruction.quant
        started = time.perf_counter()
        gac = _global_affine(model, plan, module, samples, successive, config, outputs, image, stages)
        stage2 = time.perf_counter() - started
    finally:
        torch.set_num_threads(threads)
    learned_ranges, rounded = learned_parameters(module, model, quant)
    blocks = [{"layers": list(block.layers), "iterations": len(losses), "curve": _curve(losses), **(outcome or {})}
              for block, losses, outcome in zip(reconstruction.blocks, reconstruction.losses, reconstruction.outcomes)]
    report = {"method": "ptq4vm", "samples": len(samples), "iterations": config.iterations, "batch": config.batch,
              "drop": config.drop, "threads": config.threads or threads, "max_block_layers": config.max_block_layers,
              "blocks": blocks, "gac": gac.pop("report"),
              "timings": {"reconstruction_s": round(stage1, 2), "gac_s": round(stage2, 2)}}
    return Learned(dict(learned_ranges), rounded, gac["corrections"], module, report)


def choose_samples(feeds: Sequence[Mapping[str, np.ndarray]], count: int) -> list[int]:
    """The indices of `count` of `feeds`: the smallest first, in recording order among equals.
    Where more of one size are on offer than there is room for (the built-in clip plus one's own
    footage, or more calibration frames than samples), runs of SAMPLE_RUN consecutive frames
    spread evenly over them, so every clip and source is learned from, not the first recorded."""
    def size(index: int) -> int:
        return sum(value.size for value in feeds[index].values())

    chosen: list[int] = []
    for _, same_size in itertools.groupby(sorted(range(len(feeds)), key=size), key=size):
        group, room = list(same_size), count - len(chosen)
        if room <= 0:
            break
        if len(group) <= room:
            chosen += group
            continue
        # as many parts as runs; each gives its first frames (the parts are at least as long as
        # their share of `room`, as both splits put the longer pieces first)
        runs = -(-room // SAMPLE_RUN)
        shares = [len(part) for part in np.array_split(np.arange(room), runs)]
        chosen += [int(i) for part, share in zip(np.array_split(np.array(group), runs), shares) for i in part[:share]]
    return chosen


class BlockBars:
    """One stage per block, named with its place and, once a block has learned, an estimate of
    the time left for all blocks (the per-block bar's own ETA covers only that block).

    Blocks differ widely in cost: a decoder block at full resolution can take thirty times an
    encoder block at a sixteenth. So each block is weighed by the elements its nodes produce on
    one sample (`graph_stats.tensor_elements`), which follows its learning time far better than
    a count of blocks, and the time so far per unit of that weight gives the estimate. Where
    ONNX Runtime cannot run the model for its shapes, every block weighs the same."""

    def __init__(self, stages: Stages, iterations: int, model: onnx.ModelProto, sample: Mapping[str, np.ndarray]):
        self.stages, self.iterations = stages, iterations
        self.nodes = list(model.graph.node)
        try:
            self.elements = tensor_elements(model, dict(sample))
        except MtcError as exc:
            log.debug("block time estimates count blocks: %s", exc)
            self.elements = None
        self.started: float | None = None
        self.learned_weight = 0.0

    def weight(self, block: Block) -> float:
        """How much of the learning time `block` takes, in arbitrary units."""
        if self.elements is None:
            return 1.0
        produced = sum(self.elements.get(name, 0) for node in self.nodes[block.start:block.stop] for name in node.output)
        return float(max(produced, 1))

    @contextlib.contextmanager
    def __call__(self, number: int, blocks: Sequence[Block]):
        now = time.perf_counter()
        if self.started is None:
            self.started = now
        left = ""
        if self.learned_weight:
            remaining = (now - self.started) / self.learned_weight * sum(self.weight(b) for b in blocks[number:])
            left = f"; all blocks: about {format_duration(remaining)} left"
        name = f"PTQ4VM stage 1: block {number + 1}/{len(blocks)} ({_layers(blocks[number].layers)}{left})"
        with self.stages.stage(name, total=self.iterations) as advance:
            yield advance
        self.learned_weight += self.weight(blocks[number])


def _layers(names: Sequence[str], most: int = 3) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" +{len(names) - most}" if len(names) > most else "")


def _curve(losses: Sequence[float]) -> list[float]:
    """`losses` averaged over equal windows down to at most CURVE_POINTS points."""
    if not losses:
        return []
    windows = np.array_split(np.asarray(losses, np.float64), min(len(losses), CURVE_POINTS))
    return [float(f"{w.mean():.4g}") for w in windows]


def _global_affine(model, plan, student: GraphModule, samples, successive: Sequence[bool], config: Ptq4vmConfig,
                   outputs, image: str | None, stages: Stages) -> dict:
    """Stage 2 on the reconstructed student. Kept only if it lowers its own objective over all
    the samples: trained on a few samples per step, it can also move away from them.
    `successive[i]`: sample i + 1 was recorded right after sample i (a pair for the temporal loss)."""
    if config.gac_iterations == 0:
        return {"corrections": {}, "report": {"iterations": 0, "kept": False}}
    teacher = GraphModule(model)
    teacher.requires_grad_(False)
    with torch.no_grad():
        torch_samples = [to_torch_feeds(s) for s in samples]
        targets = [teacher(s) for s in torch_samples]
    names = list(outputs) if outputs is not None else [n for n in teacher.output_names
                                                       if targets[0][n].is_floating_point()]
    pairs, temporal = [], {"weight": 0.0}
    if image is not None and config.temporal_weight > 0:
        with stages.stage("PTQ4VM stage 2: optical flow between consecutive frames", total=len(samples) - 1) as advance:
            pairs, temporal = _frame_pairs(samples, successive, targets, image, names, advance)
        temporal["weight"] = config.temporal_weight if pairs else 0.0
    items = pairs or [(i,) for i in range(len(samples))]

    def total_error() -> float:
        with torch.no_grad():
            return float(sum(objective(student, torch_samples, targets, names, item, config.temporal_weight)
                             for item in items)) / len(items)

    before = total_error()
    affines = attach_affine(student, plan)
    with stages.stage("PTQ4VM stage 2: global affine calibration", total=config.gac_iterations) as advance:
        losses = train_affine(student, affines, teacher, samples, outputs=names, iterations=config.gac_iterations,
                              batch=config.batch, learning_rate=config.gac_learning_rate, pairs=pairs,
                              temporal_weight=config.temporal_weight, progress=advance)
    after = total_error()
    kept = after < before
    if not kept:
        with torch.no_grad():
            for affine in affines.values():
                affine.gamma.fill_(1.0)
                affine.beta.fill_(0.0)
    report = {"iterations": config.gac_iterations, "learning_rate": config.gac_learning_rate,
              "error_before": before, "error_after": after, "kept": kept, "temporal": temporal,
              "curve": _curve(losses)}
    return {"corrections": affine_corrections(model, affines) if kept else {}, "report": report}


def _frame_pairs(samples, successive: Sequence[bool], targets, image: str, names: Sequence[str],
                 advance) -> tuple[list, dict]:
    """Samples recorded one after the other (`successive`) whose frames share their size with
    each other and with the outputs, and whose motion can mostly be followed (at least MIN_VALID
    of the pixels pass the forward-backward check: that drops the pairs across a scene cut),
    with their flow."""
    try:
        import cv2  # noqa: F401  (the flow's only dependency)
    except ImportError:
        log.warning("OpenCV is not installed: PTQ4VM's stage 2 runs without its temporal loss "
                    "(pip install opencv-python-headless)")
        return [], {"skipped": "OpenCV not installed"}
    pairs, shares = [], []
    for i in range(len(samples) - 1):
        first, second = samples[i][image], samples[i + 1][image]
        size = first.shape[-2:]
        if successive[i] and second.shape == first.shape and all(targets[i][n].shape[-2:] == size for n in names):
            pair = frame_pair(first[0], second[0])
            shares.append(float(pair.valid.mean()))
            if shares[-1] >= MIN_VALID:
                pairs.append((i, i + 1, pair))
        advance()
    return pairs, {"pairs": len(pairs), "candidates": len(shares),
                   "valid_share": round(float(np.mean([p.valid.mean() for _, _, p in pairs])), 4) if pairs else None}
