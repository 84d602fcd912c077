"""Multi-graph artifacts: several static graphs and, as data, how values flow between them.

Some models are not one graph run once per frame: a model may chain two networks (a depth
estimator feeding a segmenter), or keep a memory of past frames that an attention graph reads.
A `Program` says what the runtime does per frame, in steps it executes without knowing the
model:

- **values**: named arrays of the current frame: the preprocessed image (`image`), the first
  frame's prompt mask (`prompt`), and whatever graph runs produce;
- **slots**: arrays kept from frame to frame (a recurrent state, the last mask), set or summed
  from values, reset to a constant;
- **rings**: fixed-size memories of past frames. A ring has `permanent` entries (written by
  `keep`, never evicted) and `slots` working entries written first in, first out (`push`). A
  graph reads a ring field as one array of all entries, (1, entries, *field shape), and the
  ring's validity as (1, entries) with 1 where an entry holds a frame, so shapes never change
  while the memory fills;
- **phases**: the steps of the first frame (`start`, each phase repeated `repeat` times on the
  same frame) and of every later frame (`frame`). A step with `every: N` runs only on the
  frames whose count (1 for the first frame after `start`) is a multiple of N;
- **small frames** (optional): frames whose shorter side, as they arrive (before the runtime
  resizes them to the model's input), is at most `side` run the `small` phase instead of the
  frame phase: a model that adds work only for large pictures. Such a program's artifact has a
  `frame_size` input, which the runtime feeds with the frame's (height, width).

Shapes of slots and ring fields are ints, or "H"/"W" (the model input's height and width) and
"H/k"/"W/k" (rounded up). The program's alpha is a value named by `alpha` (1, 1, H, W).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mtc.artifact.manifest import _Reader

STEP_OPS = ("run", "set", "add", "clear", "keep", "push")
MAX_REPEAT = 1000
MAX_ENTRIES = 256
MAX_EVERY = 1 << 20
MAX_SIDE = 1 << 16
_DIM = re.compile(r"(H|W)(?:/([1-9][0-9]*))?")


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX file of the artifact and the names of its inputs and outputs."""

    name: str
    file: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class Slot:
    """An array kept between frames (or one field of a ring entry)."""

    name: str
    shape: tuple[int | str, ...]
    init: float = 0.0

    def concrete_shape(self, height: int, width: int) -> tuple[int, ...]:
        return concrete_shape(self.shape, height, width)


@dataclass(frozen=True)
class Ring:
    """A bounded memory of past frames: `permanent` + `slots` entries of `fields`."""

    name: str
    fields: tuple[Slot, ...]
    slots: int
    permanent: int = 0

    @property
    def entries(self) -> int:
        return self.permanent + self.slots


@dataclass(frozen=True)
class Step:
    """One thing the runtime does.

    - run: run `graph`, its inputs bound to values (`inputs`: graph input -> value name, or a
      number to fill it with); its outputs become values (`outputs`: graph output -> value
      name; unnamed outputs keep their own names).
    - set / add: slot `target` becomes / grows by value `source`.
    - clear: slot or ring `target` returns to its initial content (a ring to no entries).
    - keep / push: ring `target` gets an entry of values (`sources`: field -> value name), as
      its next permanent entry (`keep`, after a clear) or as its newest working entry (`push`,
      evicting the oldest when full).
    """

    op: str
    graph: str | None = None
    inputs: dict[str, str | float] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    source: str | None = None
    sources: dict[str, str] = field(default_factory=dict)
    every: int = 0


@dataclass(frozen=True)
class Phase:
    steps: tuple[Step, ...]
    repeat: int = 1


@dataclass(frozen=True)
class Prompt:
    """The first frame's mask, which a prompted program needs: thresholded at `threshold`, then
    closed (dilated, then eroded) by a disk `closing` pixels across at model resolution."""

    threshold: float = 0.5
    closing: int = 0


@dataclass(frozen=True)
class SmallFrames:
    """Frames whose shorter side as they arrive is at most `side` run `phase` instead of the
    frame phase."""

    side: int
    phase: Phase


@dataclass(frozen=True)
class Program:
    graphs: tuple[GraphSpec, ...]
    frame: Phase
    start: tuple[Phase, ...] = ()
    slots: tuple[Slot, ...] = ()
    rings: tuple[Ring, ...] = ()
    prompt: Prompt | None = None
    image: str = "image"
    alpha: str = "alpha"
    small: SmallFrames | None = None

    def graph(self, name: str) -> GraphSpec:
        return next(g for g in self.graphs if g.name == name)

    def phase_for(self, height: int, width: int) -> Phase:
        """The per-frame phase for a frame of height x width as it arrives."""
        if self.small is not None and min(height, width) <= self.small.side:
            return self.small.phase
        return self.frame

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(g.file for g in self.graphs)


PROMPT_VALUE = "prompt"  # the value the first frame's mask is bound to


def concrete_shape(shape: tuple[int | str, ...], height: int, width: int) -> tuple[int, ...]:
    """`shape` with "H", "W", "H/k", "W/k" replaced for a model input of height x width."""
    out = []
    for dim in shape:
        if isinstance(dim, int):
            out.append(dim)
            continue
        match = _DIM.fullmatch(dim)
        side = height if match[1] == "H" else width
        divisor = int(match[2] or 1)
        out.append(-(-side // divisor))
    return tuple(out)


# ---- parsing ---------------------------------------------------------------------------------


def _shape(r: _Reader, key: str) -> tuple[int | str, ...]:
    from mtc.artifact.manifest import MAX_DIM, MAX_RANK

    dims = r.get(key, list)
    if not 0 < len(dims) <= MAX_RANK:
        raise r.child(key).fail(f"must have 1 to {MAX_RANK} dims")
    node = r.child(key)
    for i, dim in enumerate(dims):
        if isinstance(dim, str):
            if not _DIM.fullmatch(dim):
                raise node.child(i).fail(f"is {dim!r}; expected an int, H, W, H/k or W/k")
        else:
            node.number(i, int, 1, MAX_DIM)
    return tuple(dims)


def _slot(r: _Reader) -> Slot:
    return Slot(name=r.name("name"), shape=_shape(r, "shape"), init=r.number("init", float, -1e9, 1e9, 0.0))


def _names(r: _Reader, key: str) -> tuple[str, ...]:
    return tuple(r.child(key).name(i) for i in range(len(r.get(key, list))))


def _mapping(r: _Reader, key: str, *, numbers: bool = False) -> dict:
    data = r.get(key, dict, {})
    out = {}
    for name in data:
        if numbers and isinstance(data[name], (int, float)) and not isinstance(data[name], bool):
            out[name] = r.child(key).number(name, float, -1e9, 1e9)
        else:
            out[name] = r.child(key).name(name)
    return out


def _step(r: _Reader) -> Step:
    return Step(op=r.choice("op", STEP_OPS), graph=r.name("graph", None), inputs=_mapping(r, "inputs", numbers=True),
                outputs=_mapping(r, "outputs"), target=r.name("target", None), source=r.name("source", None),
                sources=_mapping(r, "sources"), every=r.number("every", int, 0, MAX_EVERY, 0))


def _phase(r: _Reader) -> Phase:
    return Phase(steps=tuple(_step(s) for s in r.items("steps")), repeat=r.number("repeat", int, 1, MAX_REPEAT, 1))


def program_from_reader(r: _Reader) -> Program:
    """A Program from its manifest JSON, checked (names resolve, every value read is made first)."""
    from mtc.artifact.manifest import check_member_name

    graphs = []
    for g in r.items("graphs"):
        spec = GraphSpec(name=g.name("name"), file=g.name("file"), inputs=_names(g, "inputs"),
                         outputs=_names(g, "outputs"))
        problem = check_member_name(spec.file)
        if problem is not None:
            raise g.child("file").fail(problem)
        graphs.append(spec)
    rings = tuple(Ring(name=q.name("name"), fields=tuple(_slot(f) for f in q.items("fields")),
                       slots=q.number("slots", int, 1, MAX_ENTRIES), permanent=q.number("permanent", int, 0, MAX_ENTRIES, 0))
                  for q in r.items("rings")) if "rings" in r.data else ()
    prompt = None
    if r.data.get("prompt") is not None:
        p = r.child("prompt")
        prompt = Prompt(threshold=p.number("threshold", float, 0.0, 1.0, 0.5), closing=p.number("closing", int, 0, 255, 0))
    small = None
    if r.data.get("small") is not None:
        node = r.child("small")
        small = SmallFrames(side=node.number("side", int, 1, MAX_SIDE), phase=_phase(node.child("phase")))
    program = Program(
        graphs=tuple(graphs),
        frame=_phase(r.child("frame")),
        start=tuple(_phase(p) for p in r.items("start")) if "start" in r.data else (),
        slots=tuple(_slot(s) for s in r.items("slots")) if "slots" in r.data else (),
        rings=rings, prompt=prompt, image=r.name("image", "image"), alpha=r.name("alpha", "alpha"), small=small)
    _check(program, r)
    return program


def _check(program: Program, r: _Reader) -> None:
    """Every name a step uses exists, and every value is made before it is read, in the order
    the runtime runs the phases: the start phases on the first frame (the prompt readable
    there), then the frame phase on each later frame (values do not outlive their frame)."""
    graphs = {g.name: g for g in program.graphs}
    slots = {s.name: s for s in program.slots}
    rings = {q.name: q for q in program.rings}
    if len(graphs) != len(program.graphs) or len(slots) != len(program.slots) or len(rings) != len(program.rings):
        raise r.fail("names a graph, slot or ring twice")
    if set(slots) & set(rings):
        raise r.fail(f"uses {sorted(set(slots) & set(rings))[0]!r} for a slot and a ring")
    if program.prompt is not None and not program.start:
        raise r.fail("has a prompt but no start phase to read it")
    kept = set(slots) | {f"{q}.{f.name}" for q, ring in rings.items() for f in ring.fields} | {f"{q}.valid" for q in rings}
    first = {program.image, PROMPT_VALUE} if program.prompt is not None else {program.image}
    groups = [("start", [(f"start[{i}]", p) for i, p in enumerate(program.start)], first),
              ("frame", [("frame", program.frame)], {program.image}),
              ("small", [("small.phase", program.small.phase)] if program.small else [], {program.image})]
    if program.small is not None and program.start:
        raise r.fail("has both start phases and a small-frame phase (a first frame would need both)")
    for group, phases, made in groups:
        if not phases:  # no start phases: the first frame runs the frame phase
            continue
        made = made | kept
        for label, phase in phases:
            for n, step in enumerate(phase.steps):
                made |= _check_step(step, f"{label}.steps[{n}]", made, graphs, slots, rings, r)
        if program.alpha not in made:
            raise r.fail(f"names alpha {program.alpha!r}, which the {group} phases do not make")


def _check_step(step: Step, node: str, made: set[str], graphs: dict, slots: dict, rings: dict, r: _Reader) -> set[str]:
    """The values `step` makes; MtcError (naming `node`) for a name that does not resolve."""
    def readable(value: str, what: str) -> None:
        if value not in made:
            raise r.fail(f"{node} {what} {value!r}, which nothing made before it")

    if step.op == "run":
        spec = graphs.get(step.graph)
        if spec is None:
            raise r.fail(f"{node} runs graph {step.graph!r}, which the program does not list")
        unknown = (set(step.inputs) - set(spec.inputs)) | (set(step.outputs) - set(spec.outputs))
        if unknown:
            raise r.fail(f"{node} binds {sorted(unknown)[0]!r}, which graph {step.graph} does not have")
        for name in spec.inputs:
            bound = step.inputs.get(name, name)
            if isinstance(bound, str):
                readable(bound, f"feeds {step.graph}.{name} from")
        return {step.outputs.get(name, name) for name in spec.outputs}
    if step.op in ("set", "add"):
        if step.target not in slots:
            raise r.fail(f"{node} {step.op}s {step.target!r}, which is not a slot")
        readable(step.source, "reads")
    elif step.op == "clear":
        if step.target not in slots and step.target not in rings:
            raise r.fail(f"{node} clears {step.target!r}, which is neither a slot nor a ring")
    else:  # keep, push
        ring = rings.get(step.target)
        if ring is None:
            raise r.fail(f"{node} {step.op}s into {step.target!r}, which is not a ring")
        if set(step.sources) != {f.name for f in ring.fields}:
            raise r.fail(f"{node} must give every field of ring {ring.name}: {[f.name for f in ring.fields]}")
        if step.op == "keep" and ring.permanent == 0:
            raise r.fail(f"{node} keeps into ring {ring.name}, which has no permanent entries")
        for value in step.sources.values():
            readable(value, "reads")
    return set()
