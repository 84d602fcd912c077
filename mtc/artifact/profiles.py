"""Resolution profiles: the concrete input shapes an engine is built for, from the manifest.

A TensorRT engine is specialised to ranges of input shapes (optimization profiles), and RVM's
graph only has static shapes once the downsample ratio is fixed (it feeds a Resize, which
TensorRT refuses as a float shape tensor). So an mtc profile is a frame size (with optional
min/max sizes around it) plus the downsample ratio frozen into that engine. Every other
input's shape follows from the manifest:

- image-like inputs (role image/background): N=1, channels from the manifest, H/W = frame size;
- recurrent state inputs: channels from the paired output's manifest shape (RVM: 16/20/40/64),
  spatial size from the downsampled frame size (floor(side * ratio), as ONNX Resize computes
  it) halved once per level with ceil (stride-2 convolutions with padding), one level deeper
  per state: RVM's r1..r4 sit at 1/2, 1/4, 1/8 and 1/16 of the downsampled size;
- the downsample ratio input: removed from the engine (a constant).

The state rule is checked against the real graph when an engine is built
(`probe_state_shapes` runs ONNX Runtime once at the profile size).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mtc.errors import MtcError
from mtc.artifact.manifest import ModelIO, TensorSpec


@dataclass(frozen=True)
class ResolutionProfile:
    """One engine's frame size range and frozen downsample ratio.

    Attributes:
        name: file-safe name ("hd", "4k", "1280x720@0.375").
        width, height: the size the engine is tuned for (TensorRT's "opt").
        downsample_ratio: frozen ratio for models with a downsample input (None: the model has none).
        min_size, max_size: (width, height) bounds the engine also accepts; default: exactly opt.
    """

    name: str
    width: int
    height: int
    downsample_ratio: float | None = None
    min_size: tuple[int, int] | None = None
    max_size: tuple[int, int] | None = None

    def __post_init__(self):
        # (w, h) bounds equal to the size mean "exactly the size": store one spelling of it
        for attr in ("min_size", "max_size"):
            value = getattr(self, attr)
            if value is not None:
                value = (int(value[0]), int(value[1]))
                object.__setattr__(self, attr, None if value == (self.width, self.height) else value)
        if not re.fullmatch(r"[A-Za-z0-9_.@x-]+", self.name):
            raise MtcError(f"profile name {self.name!r} must be letters, digits, '_', '-', '.', '@', 'x'",
                           hint="e.g. hd, 4k or 1280x720@0.375")
        for label, (w, h) in (("size", (self.width, self.height)), ("min_size", self.min_size or (1, 1)),
                              ("max_size", self.max_size or (1, 1))):
            if w < 1 or h < 1:
                raise MtcError(f"profile {self.name}: {label} {w}x{h} is not positive", hint="use WIDTHxHEIGHT")
        lo, hi = self.sizes[0], self.sizes[2]
        if not (lo[0] <= self.width <= hi[0] and lo[1] <= self.height <= hi[1]):
            raise MtcError(f"profile {self.name}: {self.width}x{self.height} is outside min {lo} / max {hi}",
                           hint="min <= size <= max in both width and height")
        if self.downsample_ratio is not None and not 0 < self.downsample_ratio <= 1:
            raise MtcError(f"profile {self.name}: downsample ratio {self.downsample_ratio} is not in (0, 1]",
                           hint="RVM recommends 0.25 for HD and 0.125 for 4K")

    @property
    def sizes(self) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """(min, opt, max) as (width, height)."""
        opt = (self.width, self.height)
        return (self.min_size or opt, opt, self.max_size or opt)

    @property
    def is_static(self) -> bool:
        return self.sizes[0] == self.sizes[2]

    def accepts(self, width: int, height: int) -> bool:
        (w0, h0), _, (w1, h1) = self.sizes
        return w0 <= width <= w1 and h0 <= height <= h1

    def for_model(self, io: ModelIO) -> ResolutionProfile:
        """Drop the ratio for models without a downsample input."""
        if io.downsample is None and self.downsample_ratio is not None:
            return ResolutionProfile(self.name, self.width, self.height, None, self.min_size, self.max_size)
        if io.downsample is not None and self.downsample_ratio is None:
            raise MtcError(f"profile {self.name} has no downsample ratio, which this model needs",
                           hint="name it as WIDTHxHEIGHT@RATIO, e.g. 1920x1080@0.25")
        return self

    def to_dict(self) -> dict:
        return {"name": self.name, "width": self.width, "height": self.height,
                "downsample_ratio": self.downsample_ratio,
                "min_size": list(self.sizes[0]), "max_size": list(self.sizes[2])}

    @classmethod
    def from_dict(cls, data: dict) -> ResolutionProfile:
        return cls(data["name"], int(data["width"]), int(data["height"]), data.get("downsample_ratio"),
                   tuple(data["min_size"]) if data.get("min_size") else None,
                   tuple(data["max_size"]) if data.get("max_size") else None)


# RVM's recommended ratios (its README: HD 0.25, 4K 0.125; 720p 0.375; <= 512 px: 1.0).
NAMED_PROFILES = {
    "512": ResolutionProfile("512", 512, 288, 1.0),
    "720p": ResolutionProfile("720p", 1280, 720, 0.375),
    "hd": ResolutionProfile("hd", 1920, 1080, 0.25),
    "4k": ResolutionProfile("4k", 3840, 2160, 0.125),
}

_CUSTOM = re.compile(r"(\d+)x(\d+)(?:@([0-9.]+))?")


def parse_profile(text: str) -> ResolutionProfile:
    """"hd", "4k", "720p", "512" or "WIDTHxHEIGHT[@RATIO]" (e.g. "1080x1920@0.25" for portrait)."""
    key = text.strip().lower()
    if key in NAMED_PROFILES:
        return NAMED_PROFILES[key]
    match = _CUSTOM.fullmatch(key)
    if not match:
        raise MtcError(f"unknown profile {text!r}",
                       hint=f"use one of {', '.join(NAMED_PROFILES)} or WIDTHxHEIGHT[@RATIO], e.g. 1280x720@0.375")
    ratio = float(match[3]) if match[3] else None
    return ResolutionProfile(key, int(match[1]), int(match[2]), ratio)


def parse_profiles(text: str | tuple | list) -> tuple[ResolutionProfile, ...]:
    items = text.split(",") if isinstance(text, str) else list(text)
    profiles = tuple(p if isinstance(p, ResolutionProfile) else parse_profile(p) for p in items if str(p).strip())
    names = [p.name for p in profiles]
    if len(set(names)) != len(names):
        raise MtcError(f"profile names repeat: {', '.join(names)}", hint="give each profile once")
    return profiles


def profile_for_frame(width: int, height: int, ratio: float | None) -> ResolutionProfile:
    """The exact profile for one frame size (used when no listed profile accepts a frame)."""
    name = f"{width}x{height}" + (f"@{ratio:g}" if ratio is not None else "")
    return ResolutionProfile(name, width, height, ratio)


# ---- shapes ---------------------------------------------------------------------------------


def downsampled_size(height: int, width: int, ratio: float | None) -> tuple[int, int]:
    """ONNX Resize's output size for scale `ratio`: floor(side * scale), computed in float32."""
    if ratio is None or ratio >= 1.0:
        return height, width
    scale = np.float32(ratio)
    return int(np.floor(np.float32(height) * scale)), int(np.floor(np.float32(width) * scale))


def _halve(side: int, times: int) -> int:
    for _ in range(times):
        side = math.ceil(side / 2)
    return side


def _spatial_axes(spec: TensorSpec) -> tuple[int, int, int]:
    """(channel, height, width) axis indices from the layout (NCHW when unspecified)."""
    layout = spec.layout or "NCHW"
    if len(layout) != len(spec.shape) and spec.shape:
        raise MtcError(f"tensor {spec.name}: layout {layout} does not match shape {spec.shape}",
                       hint="the manifest is inconsistent; re-export the artifact")
    try:
        return layout.index("C"), layout.index("H"), layout.index("W")
    except ValueError:
        raise MtcError(f"tensor {spec.name}: layout {layout!r} has no C/H/W", hint="profiles need NCHW or NHWC tensors") from None


def _concrete(spec: TensorSpec, height: int, width: int, channels: int | None = None) -> tuple[int, ...]:
    c_axis, h_axis, w_axis = _spatial_axes(spec)
    shape = []
    for axis, dim in enumerate(spec.shape or (1, channels or 3, height, width)):
        if axis == h_axis:
            shape.append(height)
        elif axis == w_axis:
            shape.append(width)
        elif axis == c_axis:
            if isinstance(dim, int):
                shape.append(dim)
            elif channels is not None:
                shape.append(channels)
            else:
                raise MtcError(f"tensor {spec.name}: channel count is not fixed in the manifest ({dim!r})",
                               hint="engines need fixed channel counts; re-export with a static channel dim")
        else:  # batch and any other leading dim: one frame at a time
            shape.append(dim if isinstance(dim, int) else 1)
    return tuple(shape)


def state_shapes(io: ModelIO, height: int, width: int, ratio: float | None) -> dict[str, tuple[int, ...]]:
    """Shapes of each state input (and its paired output) for one frame size, by the rule above."""
    dh, dw = downsampled_size(height, width, ratio)
    outputs = {t.name: t for t in io.outputs}
    inputs = {t.name: t for t in io.inputs}
    shapes = {}
    for level, pair in enumerate(io.states, start=1):
        out_spec = outputs[pair.output]
        c_axis, _, _ = _spatial_axes(out_spec)
        channels = out_spec.shape[c_axis] if out_spec.shape else None
        if not isinstance(channels, int):
            raise MtcError(f"state {pair.output}: channel count is not fixed in the manifest ({channels!r})",
                           hint="re-export the artifact (mtc writes state channels into the manifest)")
        shapes[pair.input] = _concrete(inputs[pair.input], _halve(dh, level), _halve(dw, level), channels)
    return shapes


@dataclass(frozen=True)
class ShapeRange:
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


def profile_shapes(io: ModelIO, profile: ResolutionProfile) -> dict[str, ShapeRange]:
    """min/opt/max shape of every engine input (the downsample ratio input is frozen, so absent)."""
    profile = profile.for_model(io)
    per_size = []
    for width, height in profile.sizes:
        shapes = {t.name: _concrete(t, height, width) for t in io.inputs if t.role in ("image", "background")}
        shapes.update(state_shapes(io, height, width, profile.downsample_ratio))
        per_size.append(shapes)
    return {name: ShapeRange(per_size[0][name], per_size[1][name], per_size[2][name]) for name in per_size[1]}


def frozen_inputs(io: ModelIO, profile: ResolutionProfile) -> dict[str, np.ndarray]:
    """Inputs turned into constants for this profile's engine (RVM: the downsample ratio)."""
    profile = profile.for_model(io)
    if io.downsample is None:
        return {}
    return {io.downsample.input: np.array([profile.downsample_ratio], np.float32)}


def output_shapes(io: ModelIO, height: int, width: int, ratio: float | None) -> dict[str, tuple[int, ...]]:
    """Output shapes for one frame size: image-like outputs at the frame size, states by the rule."""
    states = state_shapes(io, height, width, ratio)
    by_output = {pair.output: states[pair.input] for pair in io.states}
    shapes = {}
    for spec in io.outputs:
        if spec.name in by_output:
            shapes[spec.name] = by_output[spec.name]
        elif spec.role in ("alpha", "foreground"):
            shapes[spec.name] = _concrete(spec, height, width)
        # "aux" outputs have no rule; the engine reports their shapes
    return shapes


# ---- device buffer plan ---------------------------------------------------------------------


@dataclass(frozen=True)
class BufferSpec:
    """One engine tensor's buffers for a profile, sized for its largest shape.

    `host` says whether a pinned host buffer is needed: yes for tensors that cross to or from
    the host every frame (image in, alpha/foreground out); no for recurrent state, which stays
    on the device between frames (`device_copy_to` names the input its output is copied into).
    """

    name: str
    direction: str  # "input" | "output"
    role: str
    dtype: str
    shape: tuple[int, ...]  # the profile's max shape
    host: bool
    device_copy_to: str | None = None

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class BufferPlan:
    profile: ResolutionProfile
    buffers: tuple[BufferSpec, ...] = field(default_factory=tuple)

    def __getitem__(self, name: str) -> BufferSpec:
        return next(b for b in self.buffers if b.name == name)

    @property
    def device_bytes(self) -> int:
        return sum(b.nbytes for b in self.buffers)

    @property
    def host_bytes(self) -> int:
        return sum(b.nbytes for b in self.buffers if b.host)


def buffer_plan(io: ModelIO, profile: ResolutionProfile) -> BufferPlan:
    """Device (and pinned host) buffers for one engine: allocated once, at the max shapes."""
    profile = profile.for_model(io)
    inputs = profile_shapes(io, profile)
    (max_w, max_h) = profile.sizes[2]
    outputs = output_shapes(io, max_h, max_w, profile.downsample_ratio)
    state_in = {p.input: p for p in io.states}
    state_out = {p.output: p.input for p in io.states}
    frozen = set(frozen_inputs(io, profile))
    buffers = []
    for spec in io.inputs:
        if spec.name in frozen:
            continue
        buffers.append(BufferSpec(spec.name, "input", spec.role, spec.dtype, inputs[spec.name].max,
                                  host=spec.name not in state_in))
    for spec in io.outputs:
        if spec.name not in outputs:
            continue
        buffers.append(BufferSpec(spec.name, "output", spec.role, spec.dtype, outputs[spec.name],
                                  host=spec.name not in state_out, device_copy_to=state_out.get(spec.name)))
    return BufferPlan(profile, tuple(buffers))


# ---- checking the rule against the real graph ------------------------------------------------


def probe_state_shapes(model_path: Path | str, io: ModelIO, height: int, width: int,
                       ratio: float | None) -> dict[str, tuple[int, ...]]:
    """Run the graph once on the CPU (ONNX Runtime) and return the state shapes it produces."""
    from mtc.backends import OrtBackend

    backend = OrtBackend(model_path, optimization="basic")
    feeds = io.example_feeds(height, width, downsample_ratio=ratio)
    outputs = backend.run(feeds)
    return {pair.input: tuple(outputs[pair.output].shape) for pair in io.states}
