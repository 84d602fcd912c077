"""Graph outputs that are channel slices of one tensor, returned as that tensor instead.

The recurrent video model (official graph and our export alike) ends with ``fgr, pha = Split(out, [3, 1])`` followed
by the same ``Clip(0, 1)`` on each part. OpenVINO's CPU plugin keeps full-resolution tensors in
a channels-last layout there, so the channel Split runs a reference kernel and each part gets
its own Clamp and layout reorder. Returning one clipped 4-channel output and slicing it in numpy
(views: free) measured, at 1920x1080 ratio 0.25 with 2 threads, 85 -> 77 ms per frame for the
INT8 artifact and 108 -> 101 ms for FP32 (same run, interleaved). ONNX Runtime gains nothing
from it (74.3 vs 73.7 ms), so only the OpenVINO backend applies it.

Only float rounding could differ, and it does not: Clip is elementwise, so clipping before or
after the Split gives the same values.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import helper

from mtc.graph_edit import attribute, input_or_attribute, reader_counts

PREFIX = "mtc_merged"


@dataclass(frozen=True)
class MergedOutput:
    """One graph output standing for several: `parts` are (output name, first channel, end channel)."""

    name: str
    parts: tuple[tuple[str, int, int], ...]

    def split(self, value):
        """The original outputs, as views of `value` along the channel axis."""
        return {name: value[:, start:stop] for name, start, stop in self.parts}

    def to_dict(self) -> dict:
        return {"name": self.name, "parts": [list(part) for part in self.parts]}

    @classmethod
    def from_dict(cls, data: dict) -> MergedOutput:
        return cls(data["name"], tuple((str(n), int(a), int(b)) for n, a, b in data["parts"]))


def merge_split_outputs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, tuple[MergedOutput, ...]]:
    """Return a copy whose channel-split outputs are merged, and what was merged (empty: unchanged)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    merged = []
    while (match := next((m for n in graph.node if n.op_type == "Split" if (m := _match(graph, n))), None)):
        merged.append(_merge(graph, match))
    return (out, tuple(merged)) if merged else (model, ())


@dataclass(frozen=True)
class _Match:
    split: onnx.NodeProto
    clips: tuple[onnx.NodeProto, ...]  # one per part, or none when the parts are outputs themselves
    parts: tuple[tuple[str, int, int], ...]


def _merge(graph: onnx.GraphProto, match: _Match) -> MergedOutput:
    names = [name for name, _, _ in match.parts]
    merged = f"{PREFIX}/{'+'.join(names)}"
    source = match.split.input[0]
    op = (helper.make_node("Clip", [source, *match.clips[0].input[1:]], [merged], name=merged) if match.clips
          else helper.make_node("Identity", [source], [merged], name=merged))
    doomed = {id(match.split)} | {id(c) for c in match.clips}
    nodes = [n for n in graph.node if id(n) not in doomed] + [op]
    del graph.node[:]
    graph.node.extend(nodes)
    position = next(i for i, o in enumerate(graph.output) if o.name in names)
    value = onnx.ValueInfoProto()
    value.CopyFrom(graph.output[position])
    value.name = merged
    if value.type.tensor_type.HasField("shape") and len(value.type.tensor_type.shape.dim) > 1:
        value.type.tensor_type.shape.dim[1].Clear()  # the sum of the parts' channels
    outputs = [o for o in graph.output if o.name not in names]
    outputs.insert(position, value)
    del graph.output[:]
    graph.output.extend(outputs)
    return MergedOutput(merged, match.parts)


def _match(graph: onnx.GraphProto, split: onnx.NodeProto) -> _Match | None:
    """The Split's parts when each is a graph output, directly or through the same Clip."""
    sizes = input_or_attribute(graph, split, 1, "split")
    if sizes is None or len(sizes) != len(split.output) or attribute(split, "axis", 0) != 1:
        return None
    readers = reader_counts(graph)
    outputs = {o.name for o in graph.output}
    if all(part in outputs and part not in readers for part in split.output):
        ends, clips = list(split.output), ()
    else:
        clips = tuple(next((n for n in graph.node if part in n.input), None) for part in split.output)
        if any(c is None or c.op_type != "Clip" or c.attribute or c.input[0] != part or readers[part] != 1
               or part in outputs or c.output[0] not in outputs or c.output[0] in readers
               for c, part in zip(clips, split.output)):
            return None
        if len({tuple(c.input[1:]) for c in clips}) != 1:
            return None
        ends = [c.output[0] for c in clips]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return _Match(split, clips, tuple((end, start, start + size) for end, start, size in zip(ends, starts, sizes)))
