"""Run a multi-graph artifact's program (mtc.artifact.program) as if it were one graph.

`ProgramEngine` has a backend's face (`run(feeds) -> outputs`, input and output names), so the
session's preprocessing, resizing, output checks and rendering serve multi-graph models
unchanged. Inside, it runs each step of the program on the graphs' own backends, and owns the
slots and rings that carry values from frame to frame. It knows no model: everything it does is
in the manifest.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from mtc.artifact.manifest import Manifest, ModelIO, member_path
from mtc.artifact.program import PROMPT_VALUE, Program, Ring, Step
from mtc.errors import MtcError

log = logging.getLogger(__name__)

PROMPT_HINT = "pass the first frame's mask: `mtc run ART VIDEO --mask MASK.png`, or session.set_prompt(mask)"


class _RingState:
    """A ring's arrays: each field as (1, entries, *field shape), validity as (1, entries)."""

    def __init__(self, ring: Ring, height: int, width: int):
        self.ring = ring
        self.fields = {f.name: np.empty((1, ring.entries, *f.concrete_shape(height, width)), np.float32)
                       for f in ring.fields}
        self.valid = np.zeros((1, ring.entries), np.float32)
        self.clear()

    def clear(self) -> None:
        for spec in self.ring.fields:
            self.fields[spec.name].fill(spec.init)
        self.valid.fill(0.0)
        self.kept = self.pushed = 0

    def write(self, index: int, values: dict[str, np.ndarray], where: str) -> None:
        for name, value in values.items():
            target = self.fields[name][0, index]
            np.copyto(target, _fit(value, target.shape, f"{where}: ring field {self.ring.name}.{name}"))
        self.valid[0, index] = 1.0

    def keep(self, values: dict[str, np.ndarray], where: str) -> None:
        self.write(self.kept % self.ring.permanent, values, where)
        self.kept += 1

    def push(self, values: dict[str, np.ndarray], where: str) -> None:
        self.write(self.ring.permanent + self.pushed % self.ring.slots, values, where)  # oldest first out
        self.pushed += 1


def _fit(value: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    value = np.asarray(value, dtype=np.float32)
    if value.size != int(np.prod(shape)):
        raise MtcError(f"{what} holds {shape} but is given {value.shape}",
                       hint="the artifact's program does not match its graphs; re-export it")
    return value.reshape(shape)


def close_mask(mask: np.ndarray, diameter: int) -> np.ndarray:
    """Binary closing (dilation, then erosion) of a 2-D boolean mask by a disk `diameter` pixels
    across: small holes and gaps in a hand-drawn or predicted mask close up."""
    if diameter <= 1:
        return mask
    radius = diameter / 2.0
    reach = int(np.floor(radius))
    offsets = [(dy, dx) for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1)
               if dy * dy + dx * dx <= radius * radius]

    def sweep(source: np.ndarray, combine, edge: bool) -> np.ndarray:
        padded = np.pad(source, reach, constant_values=edge)
        out = np.full_like(source, edge)
        h, w = source.shape
        for dy, dx in offsets:
            combine(out, padded[reach + dy:reach + dy + h, reach + dx:reach + dx + w], out=out)
        return out

    dilated = sweep(mask, np.logical_or, False)
    return sweep(dilated, np.logical_and, True)


class ProgramEngine:
    """The graphs of a multi-graph artifact, run by its program; see the module docstring.

    Args:
        program: The manifest's program.
        io: The artifact's outer I/O (the image, the prompt if any, the alpha).
        graphs: One backend per graph name.
    """

    compiles_per_shape = True  # the first real frame is the probe: a prompted program needs its mask
    fresh_outputs = True  # the alpha handed out is a copy the next frame does not touch

    def __init__(self, program: Program, io: ModelIO, graphs: dict):
        self.program = program
        self.graphs = graphs
        self._specs = {g.name: g for g in program.graphs}
        self._slot_init = {s.name: s.init for s in program.slots}
        self.image_name = io.input_with_role("image").name
        prompt = io.input_with_role("prompt")
        self.prompt_name = prompt.name if prompt is not None else None
        self.alpha_name = io.output_with_role("alpha").name
        frame_size = io.input_with_role("frame_size")
        self.frame_size_name = frame_size.name if frame_size is not None else None
        self.input_names = (self.image_name, *(name for name in (self.prompt_name, self.frame_size_name) if name))
        self.output_names = (self.alpha_name,)
        inner = sorted({getattr(b, "name", "?") for b in graphs.values()})
        self.name = f"{'+'.join(inner)} ({len(graphs)} graphs)"
        self._size: tuple[int, int] | None = None
        self._slots: dict[str, np.ndarray] = {}
        self._rings: dict[str, _RingState] = {}
        self.frames = 0  # frames run by the frame phase since the start phases

    def reset(self) -> None:
        """Forget every slot and ring; the next frame is a first frame again."""
        self._size = None

    def _start_over(self, height: int, width: int) -> None:
        self._slots = {s.name: np.full(s.concrete_shape(height, width), s.init, np.float32) for s in self.program.slots}
        self._rings = {q.name: _RingState(q, height, width) for q in self.program.rings}
        self.frames = 0

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        image = feeds[self.image_name]
        height, width = image.shape[2:]
        first = self._size != (height, width)
        if first:
            self._start_over(height, width)
        values = {self.program.image: image}
        if first and self.program.start:
            if self.program.prompt is not None:
                values[PROMPT_VALUE] = self._prompt(feeds.get(self.prompt_name) if self.prompt_name else None)
            for number, phase in enumerate(self.program.start):
                for _ in range(phase.repeat):
                    for index, step in enumerate(phase.steps):
                        self._do(step, values, f"start[{number}].steps[{index}]")
            self._size = (height, width)  # only now: a first frame that failed is a first frame again
        else:
            self._size = (height, width)
            self.frames += 1
            phase, label = self.program.frame, "frame"
            if self.frame_size_name is not None:
                arrived = feeds.get(self.frame_size_name)
                if arrived is None:
                    raise MtcError("this model chooses its steps by the frame's size, and was not given it",
                                   hint="run it through mtc.runtime.load(...), which feeds the frame size")
                phase = self.program.phase_for(*(int(side) for side in np.asarray(arrived).reshape(-1)[:2]))
                label = "frame" if phase is self.program.frame else "small.phase"
            for index, step in enumerate(phase.steps):
                if not step.every or self.frames % step.every == 0:
                    self._do(step, values, f"{label}.steps[{index}]")
        return {self.alpha_name: np.array(values[self.program.alpha], dtype=np.float32, copy=True)}

    def _prompt(self, mask: np.ndarray | None) -> np.ndarray:
        if mask is None:
            raise MtcError("this model needs a mask of the object on the first frame", hint=PROMPT_HINT)
        spec = self.program.prompt
        binary = np.asarray(mask)[0, 0] >= spec.threshold
        closed = close_mask(binary, spec.closing)
        if not closed.any():
            raise MtcError("the first-frame mask is empty: it marks no pixel of the object",
                           hint="draw the object in white on black, or let --mask-from find it")
        return closed.astype(np.float32)[None, None]

    def _read(self, name: str, where: str, values: dict[str, np.ndarray]) -> np.ndarray:
        if name in values:
            return values[name]
        if name in self._slots:
            return self._slots[name]
        ring, _, field = name.partition(".")
        if ring in self._rings:
            state = self._rings[ring]
            return state.valid if field == "valid" else state.fields[field]
        raise MtcError(f"{where} reads {name!r}, which this frame has not made",
                       hint="the artifact's program is inconsistent; re-export it")

    def _do(self, step: Step, values: dict[str, np.ndarray], where: str) -> None:
        if step.op == "run":
            spec = self._specs[step.graph]
            feeds = {}
            for name in spec.inputs:
                bound = step.inputs.get(name, name)
                feeds[name] = (np.full((1,), bound, np.float32) if not isinstance(bound, str)
                               else self._read(bound, where, values))
            backend = self.graphs[step.graph]
            outputs = backend.run(feeds)
            for name in spec.outputs:
                # A backend that reuses its output buffers would overwrite them when its graph
                # runs again (a start phase repeats); values must hold until read.
                value = outputs[name] if getattr(backend, "fresh_outputs", False) else np.array(outputs[name])
                values[step.outputs.get(name, name)] = value
        elif step.op == "set":
            slot = self._slots[step.target]
            np.copyto(slot, _fit(self._read(step.source, where, values), slot.shape, f"{where}: slot {step.target}"))
        elif step.op == "add":
            slot = self._slots[step.target]
            slot += _fit(self._read(step.source, where, values), slot.shape, f"{where}: slot {step.target}")
        elif step.op == "clear":
            if step.target in self._rings:
                self._rings[step.target].clear()
            else:
                self._slots[step.target].fill(self._slot_init[step.target])
        else:  # keep, push
            entry = {field: self._read(source, where, values) for field, source in step.sources.items()}
            getattr(self._rings[step.target], step.op)(entry, where)


def open_program(manifest: Manifest, folder: Path, open_graph) -> ProgramEngine:
    """The engine of a multi-graph artifact, each graph opened by `open_graph(path)`."""
    program = manifest.program
    graphs = {spec.name: open_graph(member_path(folder, spec.file)) for spec in program.graphs}
    for spec in program.graphs:
        missing = set(spec.inputs) - set(graphs[spec.name].input_names)
        if missing:
            raise MtcError(f"graph {spec.file} lacks inputs the program feeds: {sorted(missing)}",
                           hint="the artifact is inconsistent; re-export it")
    return ProgramEngine(program, manifest.io, graphs)
