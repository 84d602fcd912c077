"""Resolution profiles: the concrete input shapes an engine is built for, from the manifest.

An engine (a TensorRT plan, a static OpenVINO model) is specialised to input shapes, so a
profile names frame sizes ("hd", "4k", "1280x720") and, for models with a downsample input,
the ratio frozen into that engine (a float ratio feeding Resize is refused by TensorRT as a
shape tensor). `for_model` turns a profile into the model's input space, the shapes the
session really feeds: the manifest's resize rule maps each frame size to the image input size
(a fixed 320x320 model gets 320x320 whatever the frame), and a missing ratio is taken from the
model's own rule at that size. Every other input's shape follows from the manifest:

- image-like inputs (role image/background): N=1, channels from the manifest, H/W = input size;
- recurrent state inputs: channels from the paired output's manifest shape, spatial size
  ceil(working size / stride) with the stride each state pair declares, where the working size
  is the input size scaled by the downsample ratio as ONNX Resize computes it (floor);
- the downsample ratio input: removed from the engine (a constant).

Engine builders check the declared strides against the real graph once per build.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from mtc.artifact.manifest import ModelIO, TensorSpec
from mtc.errors import MtcError


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
                           hint="use a ratio in (0, 1], e.g. 0.25 for HD")

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
        """This profile in the model's input space: sizes through the manifest's resize rule,
        the ratio from the model's rule where none is given, and none for models without a
        downsample input."""
        def to_input(size: tuple[int, int]) -> tuple[int, int]:
            height, width = io.preprocess.model_size(size[1], size[0])
            return width, height

        lo, opt, hi = (to_input(size) for size in self.sizes)
        ratio = None
        if io.downsample is not None:
            ratio = (io.downsample.check(self.downsample_ratio) if self.downsample_ratio is not None
                     else io.downsample.ratio_for(opt[1], opt[0]))
        return ResolutionProfile(self.name, opt[0], opt[1], ratio, lo, hi)

    def to_dict(self) -> dict:
        return {"name": self.name, "width": self.width, "height": self.height,
                "downsample_ratio": self.downsample_ratio,
                "min_size": list(self.sizes[0]), "max_size": list(self.sizes[2])}

    @classmethod
    def from_dict(cls, data: dict) -> ResolutionProfile:
        return cls(data["name"], int(data["width"]), int(data["height"]), data.get("downsample_ratio"),
                   tuple(data["min_size"]) if data.get("min_size") else None,
                   tuple(data["max_size"]) if data.get("max_size") else None)


# Frame sizes by name; a model with a downsample input gets the ratio its own rule gives.
NAMED_PROFILES = {
    "512": ResolutionProfile("512", 512, 288),
    "720p": ResolutionProfile("720p", 1280, 720),
    "hd": ResolutionProfile("hd", 1920, 1080),
    "4k": ResolutionProfile("4k", 3840, 2160),
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
    """Shapes of each state input (and its paired output) for one input size, by the declared strides."""
    outputs = {t.name: t for t in io.outputs}
    inputs = {t.name: t for t in io.inputs}
    shapes = {}
    for pair in io.states:
        if pair.stride is None:
            raise MtcError(f"state {pair.input}: the manifest declares no stride, so its shape cannot be derived",
                           hint="re-export the artifact with this version of mtc")
        dh, dw = downsampled_size(height, width, pair.scale if pair.scale is not None else ratio)
        out_spec = outputs[pair.output]
        c_axis, _, _ = _spatial_axes(out_spec)
        channels = out_spec.shape[c_axis] if out_spec.shape else None
        if not isinstance(channels, int):
            raise MtcError(f"state {pair.output}: channel count is not fixed in the manifest ({channels!r})",
                           hint="re-export the artifact (mtc writes state channels into the manifest)")
        shapes[pair.input] = _concrete(inputs[pair.input], math.ceil(dh / pair.stride), math.ceil(dw / pair.stride),
                                       channels)
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
    """Inputs turned into constants for this profile's engine (the downsample ratio input)."""
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
