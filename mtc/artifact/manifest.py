"""The artifact contract: `manifest.json`, written at compile time and trusted by the runtime.

The runtime reads nothing but the artifact folder, so everything it needs to feed the model
(tensor roles, recurrent state pairs, preprocessing, resolution rules) lives here as data.
Loading validates the schema and names the first bad field; hashes are checked before any
model file is handed to a backend.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import posixpath
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtc.artifact.program import Program, program_from_reader
from mtc.errors import MtcError
from mtc.safe_text import printable

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
REPORT_NAME = "report.json"

INPUT_ROLES = ("image", "background", "state", "downsample_ratio", "prompt", "frame_size")
OUTPUT_ROLES = ("alpha", "foreground", "state", "aux")
DTYPES = ("float32", "float16", "int64", "int32", "uint8")
RESIZE_MODES = ("none", "fixed", "reference")
RESIZE_FILTERS = ("bilinear", "lanczos")
PRECISIONS = ("fp32", "fp16", "int8", "bf16")  # bf16: the FP32 graph, checked on OpenVINO's CPU BF16

# Bounds on what a manifest may declare: generous for any real model, small enough that nothing
# derived from them (tensors, loops, files to hash) can cost gigabytes or hours.
MAX_DIM = 1 << 16  # one tensor dimension
MAX_RANK = 8
MAX_SIDE = 16384  # a frame or model-input side
MAX_STRIDE = 1024
MAX_FILE_BYTES = 1 << 36  # 64 GiB: one file inside an artifact
MAX_MANIFEST_BYTES = 16 << 20
MAX_NESTING = 32  # JSON depth (the manifest itself needs 5)
MAX_NAME = 1024  # characters in a tensor, file or node name
# The downsample ratio's valid range when a manifest declares none: 1/16 already brings an 8K
# frame down to 480 pixels, around the working size such models are trained at; far below it
# (0.001) the working resolution rounds to a pixel or none, and backends fail or return garbage.
DEFAULT_RATIO_RANGE = (1.0 / 16.0, 1.0)


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. `shape` holds ints for fixed dims, names for dynamic ones."""

    name: str
    role: str
    dtype: str = "float32"
    shape: tuple[int | str, ...] = ()
    layout: str = ""
    value_range: tuple[float, float] | None = None


@dataclass(frozen=True)
class StatePair:
    """A recurrent state: `output` of frame t is fed to `input` at frame t+1.

    `stride` is the state's spatial stride relative to the model's working resolution: the
    image input scaled by `scale` when the graph bakes one in, else by the downsample ratio
    input where the model has one (floor, as ONNX Resize computes it). Its height is
    ceil(working height / stride). Declared, so engines can be sized without running the model;
    None (older artifacts) means engines cannot be prepared ahead of time.
    """

    input: str
    output: str
    initial_shape: tuple[int, ...] = (1, 1, 1, 1)
    initial_value: float = 0.0
    stride: int | None = None
    scale: float | None = None


@dataclass(frozen=True)
class Preprocess:
    """How an HxWx3 uint8 RGB frame becomes the image tensor: x * scale, then (x - mean) / std."""

    color_order: str = "RGB"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    resize: str = "none"
    fixed_size: tuple[int, int] | None = None  # (height, width) for resize == "fixed"
    reference_side: int | None = None  # for resize == "reference"
    multiple_of: int = 1
    # How frames are resized to the model size and the matte back to the frame.
    resize_filter: str = "bilinear"

    def model_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) of the image input for a frame of `height` x `width`.

        "fixed" always gives `fixed_size`. "reference" scales the frame so that its shorter side
        becomes `reference_side` when both sides are below it or both above it, and otherwise
        keeps the size. Every mode then floors to `multiple_of` ("none" keeps the frame size).
        """
        if self.resize == "fixed":
            return tuple(self.fixed_size)
        if self.resize == "reference":
            ref = self.reference_side
            if max(height, width) < ref or min(height, width) > ref:
                if width >= height:
                    height, width = ref, int(width / height * ref)
                else:
                    height, width = int(height / width * ref), ref
        m = self.multiple_of
        return max(m, height // m * m), max(m, width // m * m)


@dataclass(frozen=True)
class DownsampleRule:
    """Internal resolution of models with a downsample input: ratio = min(target_side / max(h, w), max_ratio), replaced
    by the nearest unit fraction 1/k when one lies within `snap` (relative) of it.

    Why snap: with ratio 1/k the refiner upsamples by the integer factor k, which backends can
    run as a transposed convolution (OpenVINO: an INT8 video model at 1920x1080 68 vs 94 ms at the plain
    rule's 0.267), and 1/4 at HD and 1/8 at 4K are the ratios such models are usually run at.
    """

    input: str
    target_side: int = 512
    max_ratio: float = 1.0
    snap: float = 0.0
    # The values the control accepts, [low, high]; the automatic rule stays inside it too.
    valid_range: tuple[float, float] = DEFAULT_RATIO_RANGE

    def ratio_for(self, height: int, width: int) -> float:
        ratio = min(self.target_side / max(height, width), self.max_ratio)
        fractions = [1 / k for k in {max(1, math.floor(1 / ratio)), math.ceil(1 / ratio)} if 1 / k <= self.max_ratio]
        near = [f for f in fractions if abs(f - ratio) <= self.snap * ratio]
        ratio = min(near, key=lambda f: abs(f - ratio)) if near else ratio
        low, high = self.valid_range
        return min(max(ratio, low), high)

    def check(self, ratio: Any) -> float:
        """`ratio` as a float when it lies in the valid range; MtcError (one line) otherwise."""
        low, high = self.valid_range
        try:
            value = float(ratio)
        except (TypeError, ValueError):
            value = math.nan
        if not low <= value <= high:  # NaN fails every comparison
            raise MtcError(f"downsample ratio {ratio!r} is outside this model's valid range [{low:g}, {high:g}]",
                           hint=f"pass a ratio between {low:g} and {high:g}, or none for the model's automatic rule")
        return value


@dataclass(frozen=True)
class CheckSize:
    """A frame size (with a fixed downsample ratio, for models that take one) at which the
    compiled model is checked against its reference. Family knowledge, written at export so
    that the quantizer needs nothing but the artifact."""

    width: int
    height: int
    downsample_ratio: float | None = None


def default_check_sizes(io: ModelIO) -> tuple[CheckSize, ...]:
    """Where a model with no declared check sizes is checked: its fixed input size, else a
    small 16:9 video frame (the downsample ratio, if any, by the model's own rule)."""
    if io.preprocess.resize == "fixed":
        height, width = io.preprocess.fixed_size
        return (CheckSize(width, height),)
    return (CheckSize(512, 288),)


@dataclass(frozen=True)
class QuantRecipe:
    """How the model is best quantized where the command line leaves it open: family knowledge
    (or, for a model brought as ONNX, the defaults for its task), written at export so that the
    quantizer needs nothing but the artifact.

    Attributes:
        int8_preset: the INT8 preset `mtc quantize` and `mtc export --int8` use without --preset.
        builtin_photos: whether the built-in calibration and check data include still photos
            (for models that matte one image alone) besides the built-in clip.
        int8_graphs: multi-graph artifacts: the graphs INT8 applies to (empty: all of them);
            FP16 converts every graph.
        int8_op_types: the ONNX op types INT8 quantizes: Conv for conv nets; transformers add
            their linear layers (MatMul with a constant operand, Gemm).
        int8_activation_matmuls: whether attention's own MatMuls (two activations) are
            quantized too.
    """

    int8_preset: str = "speed"
    builtin_photos: bool = False
    int8_graphs: tuple[str, ...] = ()
    int8_op_types: tuple[str, ...] = ("Conv",)
    int8_activation_matmuls: bool = False


def default_quant_recipe(task: str, io: ModelIO) -> QuantRecipe:
    """The recipe of a model that declares none: still photos for image models fed one image
    alone (a model that also takes a background frame has no such photo pair)."""
    return QuantRecipe(builtin_photos=task == "image_matting" and io.input_with_role("background") is None)


@dataclass(frozen=True)
class Precision:
    mode: str = "fp32"
    calibration: str | None = None
    samples: int = 0
    excluded_nodes: tuple[str, ...] = ()
    # INT8 only: "int8" or "uint8" (zero point 128) activations; backends differ on which they run faithfully.
    activation_type: str | None = None
    # The CPU class (mtc.backends.cpu) the checks ran on: integer kernels differ between classes.
    checked_cpu: str | None = None
    # INT8 whose roundings and step sizes were learned ("ptq4vm"); None: calibrated only.
    learning: str | None = None


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int
    role: str = "model"


@dataclass(frozen=True)
class ModelIO:
    """Everything about feeding the model that does not depend on how it was compiled."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    states: tuple[StatePair, ...] = ()
    preprocess: Preprocess = field(default_factory=Preprocess)
    downsample: DownsampleRule | None = None

    def input_with_role(self, role: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.role == role), None)

    def output_with_role(self, role: str) -> TensorSpec | None:
        return next((t for t in self.outputs if t.role == role), None)

    def example_feeds(self, height: int, width: int, *, downsample_ratio: float | None = None) -> dict:
        """Zero inputs for one frame of `height` x `width`, as the runtime would feed them."""
        import numpy as np

        feeds = {}
        for tensor in self.inputs:
            if tensor.role in ("image", "background"):
                feeds[tensor.name] = np.zeros((1, 3, height, width), np.float32)
        for pair in self.states:
            feeds[pair.input] = np.full(pair.initial_shape, pair.initial_value, np.float32)
        if self.downsample is not None:
            ratio = downsample_ratio if downsample_ratio is not None else self.downsample.ratio_for(height, width)
            feeds[self.downsample.input] = np.array([ratio], np.float32)
        frame_size = self.input_with_role("frame_size")
        if frame_size is not None:
            feeds[frame_size.name] = np.array([height, width], np.float32)
        return feeds


@dataclass(frozen=True)
class Manifest:
    model: str
    variant: str
    task: str
    license: str
    model_file: str
    io: ModelIO
    precision: Precision = field(default_factory=Precision)
    files: dict[str, FileEntry] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    check_sizes: tuple[CheckSize, ...] = ()
    quantization: QuantRecipe = field(default_factory=QuantRecipe)
    # Several graphs and how values flow between them (mtc.artifact.program); None: the one
    # graph in model_file is the model, fed per `io`.
    program: Program | None = None
    schema_version: int = SCHEMA_VERSION

    def require_single_graph(self, what: str) -> None:
        """MtcError unless the model is one graph: `what` (a command) does not handle programs yet."""
        if self.program is not None:
            raise MtcError(f"{what} works on single-graph artifacts; {self.model} ({self.variant}) is "
                           f"{len(self.program.graphs)} graphs run by a program",
                           hint="run it with `mtc run` or mtc.runtime.load(); see docs/architecture.md")

    def checks(self) -> tuple[CheckSize, ...]:
        """The declared check sizes, else the defaults for this model's input rule."""
        return self.check_sizes or default_check_sizes(self.io)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


# ---- parsing with field-precise errors ------------------------------------------------------


class _Reader:
    """Walks a JSON object, raising MtcError that names the exact field path on any mismatch."""

    def __init__(self, data: Any, path: str, source: str):
        self.data, self.path, self.source = data, path, source

    def fail(self, what: str) -> MtcError:
        return MtcError(
            # The path holds the manifest's own keys: untrusted text, shown escaped on one line.
            f"{self.source}: {printable(self.path) if self.path else 'top level'} {what}",
            hint="the artifact is damaged or from another mtc version; re-export it",
        )

    def child(self, key: str | int) -> _Reader:
        if isinstance(key, int):
            return _Reader(self.data[key], f"{self.path}[{key}]", self.source)
        if not isinstance(self.data, dict):
            raise self.fail("must be an object")
        if key not in self.data:
            raise _Reader(None, f"{self.path}.{key}".lstrip("."), self.source).fail("is missing")
        return _Reader(self.data[key], f"{self.path}.{key}".lstrip("."), self.source)

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = dataclasses.MISSING) -> Any:
        if isinstance(self.data, dict) and key not in self.data and default is not dataclasses.MISSING:
            return default
        node = self.child(key)
        if node.data is None and default is None:
            return None
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(node.data, int) and not isinstance(node.data, bool):
            if abs(node.data) > 1e300:
                raise node.fail("must be a finite number")
            return float(node.data)
        if not isinstance(node.data, kinds) or (isinstance(node.data, bool) and bool not in kinds):
            names = "/".join(k.__name__ for k in kinds)
            raise node.fail(f"must be {names}, got {type(node.data).__name__}")
        if isinstance(node.data, float) and not math.isfinite(node.data):
            raise node.fail(f"must be a finite number, got {node.data}")
        return node.data

    def number(self, key: str, kind: type, low: float, high: float, default: Any = dataclasses.MISSING, *,
               low_open: bool = False) -> Any:
        """An int or float field within [low, high] (or (low, high] with `low_open`)."""
        value = self.get(key, kind, default)
        if value is None:
            return None
        if value > high or value < low or (low_open and value == low):
            bracket = "(" if low_open else "["
            raise self.child(key).fail(f"is {value!r}; expected a value in {bracket}{low:g}, {high:g}]")
        return value

    def name(self, key: str, default: Any = dataclasses.MISSING) -> str:
        value = self.get(key, str, default)
        if value is not None and not 0 < len(value) <= MAX_NAME:
            raise self.child(key).fail(f"must be a non-empty name of at most {MAX_NAME} characters")
        return value

    def numbers(self, key: str, count: int, kind: type, low: float, high: float, default: Any = dataclasses.MISSING, *,
                low_open: bool = False) -> tuple | None:
        """A list of exactly `count` numbers, each within [low, high] (or (low, high])."""
        values = self.get(key, list, default)
        if values is None:
            return None
        node = self.child(key) if isinstance(self.data, dict) and key in self.data else _Reader(values, key, self.source)
        if len(values) != count:
            raise node.fail(f"must be {count} numbers, got {len(values)}")
        return tuple(node.number(i, kind, low, high, low_open=low_open) for i in range(count))

    def choice(self, key: str, options: tuple[str, ...], default: Any = dataclasses.MISSING) -> str:
        value = self.get(key, str, default)
        if value not in options:
            raise self.child(key).fail(f"is {value!r}; expected one of {', '.join(options)}")
        return value

    def items(self, key: str) -> list[_Reader]:
        node = self.child(key)
        if not isinstance(node.data, list):
            raise node.fail("must be a list")
        return [node.child(i) for i in range(len(node.data))]


def _tensor(r: _Reader, roles: tuple[str, ...]) -> TensorSpec:
    shape = r.get("shape", list, [])
    if len(shape) > MAX_RANK:
        raise r.child("shape").fail(f"has {len(shape)} dims; at most {MAX_RANK} are supported")
    for i, dim in enumerate(shape):
        if isinstance(dim, str):
            r.child("shape").name(i)
        elif isinstance(dim, int) and not isinstance(dim, bool):
            r.child("shape").number(i, int, 1, MAX_DIM)
        else:
            raise r.child("shape").fail("must hold ints and dim names only")
    value_range = r.numbers("value_range", 2, float, -1e9, 1e9, None)
    if value_range is not None and not value_range[0] < value_range[1]:
        raise r.child("value_range").fail(f"is {list(value_range)}; the low end must be below the high end")
    return TensorSpec(
        name=r.name("name"),
        role=r.choice("role", roles),
        dtype=r.choice("dtype", DTYPES, "float32"),
        shape=tuple(shape),
        layout=r.get("layout", str, ""),
        value_range=value_range,
    )


def _state(s: _Reader) -> StatePair:
    initial_shape = s.get("initial_shape", list, [1, 1, 1, 1])
    if not 0 < len(initial_shape) <= MAX_RANK:
        raise s.child("initial_shape").fail(f"must have 1 to {MAX_RANK} dims")
    return StatePair(
        input=s.name("input"),
        output=s.name("output"),
        initial_shape=s.numbers("initial_shape", len(initial_shape), int, 1, MAX_DIM, [1, 1, 1, 1]),
        initial_value=s.number("initial_value", float, -1e9, 1e9, 0.0),
        stride=s.number("stride", int, 1, MAX_STRIDE, None),
        scale=s.number("scale", float, 0.0, 64.0, None, low_open=True),
    )


def _preprocess(p: _Reader) -> Preprocess:
    preprocess = Preprocess(
        color_order=p.choice("color_order", ("RGB", "BGR"), "RGB"),
        scale=p.number("scale", float, 0.0, 1e6, 1.0 / 255.0, low_open=True),
        mean=p.numbers("mean", 3, float, -1e6, 1e6, [0.0, 0.0, 0.0]),
        # A zero std divides by zero: every pixel becomes inf or NaN and the matte is empty.
        std=p.numbers("std", 3, float, 0.0, 1e6, [1.0, 1.0, 1.0], low_open=True),
        resize=p.choice("resize", RESIZE_MODES, "none"),
        fixed_size=p.numbers("fixed_size", 2, int, 1, MAX_SIDE, None),
        reference_side=p.number("reference_side", int, 1, MAX_SIDE, None),
        multiple_of=p.number("multiple_of", int, 1, MAX_STRIDE, 1),
        resize_filter=p.choice("resize_filter", RESIZE_FILTERS, "bilinear"),
    )
    if preprocess.resize == "fixed" and preprocess.fixed_size is None:
        raise p.fail("has resize 'fixed' but no fixed_size")
    if preprocess.resize == "reference" and not preprocess.reference_side:
        raise p.fail("has resize 'reference' but no reference_side")
    return preprocess


def _downsample(d: _Reader) -> DownsampleRule:
    valid_range = d.numbers("valid_range", 2, float, 0.0, 1.0, list(DEFAULT_RATIO_RANGE), low_open=True)
    if valid_range[0] > valid_range[1]:
        raise d.child("valid_range").fail(f"is {list(valid_range)}; the low end must not exceed the high end")
    return DownsampleRule(
        input=d.name("input"),
        target_side=d.number("target_side", int, 1, MAX_SIDE, 512),
        max_ratio=d.number("max_ratio", float, 0.0, 1.0, 1.0, low_open=True),
        snap=d.number("snap", float, 0.0, 0.5, 0.0),
        valid_range=valid_range,
    )


def _model_io(r: _Reader) -> ModelIO:
    inputs = tuple(_tensor(t, INPUT_ROLES) for t in r.items("inputs"))
    outputs = tuple(_tensor(t, OUTPUT_ROLES) for t in r.items("outputs"))
    states = tuple(_state(s) for s in r.items("states"))
    preprocess = _preprocess(r.child("preprocess"))
    downsample = None
    if isinstance(r.data, dict) and r.data.get("downsample") is not None:
        downsample = _downsample(r.child("downsample"))
    io = ModelIO(inputs, outputs, states, preprocess, downsample)
    _check_io_consistency(io, r)
    return io


def _check_io_consistency(io: ModelIO, r: _Reader) -> None:
    input_names = {t.name for t in io.inputs}
    output_names = {t.name for t in io.outputs}
    if len(input_names) != len(io.inputs) or len(output_names) != len(io.outputs):
        raise r.fail("declares a tensor name twice")
    if io.input_with_role("image") is None:
        raise r.child("inputs").fail("has no tensor with role 'image'")
    if io.output_with_role("alpha") is None:
        raise r.child("outputs").fail("has no tensor with role 'alpha'")
    for pair in io.states:
        if pair.input not in input_names or pair.output not in output_names:
            raise r.child("states").fail(f"pairs {pair.input}->{pair.output}, which are not model inputs/outputs")
    if io.downsample is not None and io.downsample.input not in input_names:
        raise r.child("downsample").fail(f"names input {io.downsample.input!r}, which the model does not have")


def check_member_name(name: str) -> str | None:
    """Why `name` cannot name a file inside an artifact folder (None when it can).

    Only plain relative paths are allowed: no absolute path, drive or backslash, no `.`, `..` or
    empty component, no NUL. Symlinks are checked when the file is opened (`member_path`).
    """
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
        return "is not a non-empty file name"
    if "\0" in name or "\\" in name or re.match(r"^[A-Za-z]:", name):
        return f"names {name!r}, which is not a plain relative path"
    if name.startswith("/"):
        return f"names {name!r}, an absolute path; files must be inside the artifact folder"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return f"names {name!r}, which leaves or is not a plain path inside the artifact folder"
    return None


def _files(r: _Reader) -> dict[str, FileEntry]:
    listing = r.get("files", dict)
    files = {}
    for name in listing:
        problem = check_member_name(name)
        if problem is not None:
            raise r.child("files").fail(problem)
        entry = r.child("files").child(name)
        sha256 = entry.get("sha256", str)
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise entry.child("sha256").fail("must be 64 lowercase hex digits")
        files[name] = FileEntry(sha256=sha256, size=entry.number("size", int, 0, MAX_FILE_BYTES),
                                role=entry.get("role", str, "model"))
    return files


def _check_sizes(r: _Reader, data: dict) -> tuple[CheckSize, ...]:
    if "check_sizes" not in data:
        return ()
    return tuple(CheckSize(width=c.number("width", int, 16, MAX_SIDE), height=c.number("height", int, 16, MAX_SIDE),
                           downsample_ratio=c.number("downsample_ratio", float, 0.0, 1.0, None, low_open=True))
                 for c in r.items("check_sizes"))


def _quant_recipe(q: _Reader) -> QuantRecipe:
    def names(key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        values = q.get(key, list, None)
        return default if values is None else tuple(q.child(key).name(i) for i in range(len(values)))

    defaults = QuantRecipe()
    return QuantRecipe(int8_preset=q.name("int8_preset", "speed"), builtin_photos=q.get("builtin_photos", bool, False),
                       int8_graphs=names("int8_graphs", ()), int8_op_types=names("int8_op_types", defaults.int8_op_types),
                       int8_activation_matmuls=q.get("int8_activation_matmuls", bool, False))


def _plain_json_problem(data: Any) -> tuple[str, str] | None:
    """(path, problem) for the first node nested deeper than MAX_NESTING or holding a number
    standard JSON cannot (NaN, Infinity); walked iteratively, so a hostile document cannot
    exhaust the interpreter's stack here."""
    stack = [(data, "", 1)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            return path, f"must be a finite number, got {node}"
        if isinstance(node, (dict, list)):
            if depth > MAX_NESTING:
                return path, f"nests deeper than {MAX_NESTING} levels"
            items = node.items() if isinstance(node, dict) else enumerate(node)
            stack.extend((child, f"{path}.{key}".lstrip(".") if isinstance(node, dict) else f"{path}[{key}]", depth + 1)
                         for key, child in items)
    return None


def manifest_from_dict(data: Any, *, source: str = MANIFEST_NAME) -> Manifest:
    """Parse and validate a manifest; raises MtcError naming the first bad field."""
    r = _Reader(data, "", source)
    if not isinstance(data, dict):
        raise r.fail("must be a JSON object")
    problem = _plain_json_problem(data)
    if problem is not None:
        raise _Reader(None, problem[0], source).fail(problem[1])
    version = r.get("schema_version", int)
    if version != SCHEMA_VERSION:
        raise MtcError(
            f"{source}: schema_version {version} is not supported (this mtc reads {SCHEMA_VERSION})",
            hint="re-export the artifact with this version of mtc",
        )
    pr = r.child("precision")
    excluded = pr.get("excluded_nodes", list, [])
    if not all(isinstance(n, str) for n in excluded):
        raise pr.child("excluded_nodes").fail("must hold node names only")
    files = _files(r)
    manifest = Manifest(
        model=r.get("model", str),
        variant=r.get("variant", str),
        task=r.get("task", str),
        license=r.get("license", str),
        model_file=r.get("model_file", str),
        io=_model_io(r.child("io")),
        precision=Precision(
            mode=pr.choice("mode", PRECISIONS),
            calibration=pr.get("calibration", str, None),
            samples=pr.number("samples", int, 0, 1 << 40, 0),
            excluded_nodes=tuple(excluded),
            activation_type=pr.choice("activation_type", ("int8", "uint8"), None)
            if pr.get("activation_type", str, None) is not None else None,
            checked_cpu=pr.get("checked_cpu", str, None),
            learning=pr.get("learning", str, None),
        ),
        files=files,
        provenance=r.get("provenance", dict, {}),
        check_sizes=_check_sizes(r, data),
        quantization=_quant_recipe(r.child("quantization")) if "quantization" in data else QuantRecipe(),
        program=program_from_reader(r.child("program")) if data.get("program") is not None else None,
        schema_version=version,
    )
    problem = check_member_name(manifest.model_file)
    if problem is not None:
        raise r.child("model_file").fail(problem)
    if manifest.model_file not in manifest.files:
        raise r.child("model_file").fail(f"names {manifest.model_file!r}, which is not listed in files")
    for name in manifest.program.files if manifest.program else ():
        if name not in manifest.files:
            raise r.child("program").fail(f"names graph file {name!r}, which is not listed in files")
    _check_prompt(manifest, r)
    _check_frame_size(manifest, r)
    return manifest


def _check_prompt(manifest: Manifest, r: _Reader) -> None:
    """A prompt input is what a prompted program reads on its first frame: one implies the other."""
    _check_paired_input(manifest, r, "prompt", manifest.program is not None and manifest.program.prompt is not None,
                        without="a prompted program", lacks="its program reads")


def _check_frame_size(manifest: Manifest, r: _Reader) -> None:
    """A frame_size input is what a program with a small-frame phase chooses by: one implies the other."""
    _check_paired_input(manifest, r, "frame_size", manifest.program is not None and manifest.program.small is not None,
                        without="a program that chooses by it", lacks="its program chooses its phase by")


def _check_paired_input(manifest: Manifest, r: _Reader, role: str, wanted: bool, *, without: str, lacks: str) -> None:
    """An input with `role` exactly where the program wants one."""
    if (manifest.io.input_with_role(role) is not None) != wanted:
        raise r.child("io").fail(f"has a {role!r} input without {without}" if not wanted
                                 else f"lacks the {role!r} input {lacks}")


# ---- files and hashes -----------------------------------------------------------------------

# Every reference to an ONNX external-data file is a StringStringEntryProto whose key is this
# literal, so a model file without these bytes has no external data (and need not be parsed).
_EXTERNAL_DATA_KEY = b"location"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_entry(path: Path, role: str = "model") -> FileEntry:
    return FileEntry(sha256=sha256_file(path), size=path.stat().st_size, role=role)


def read_manifest(folder: str | Path, *, verify_files: bool = True) -> Manifest:
    """Read `folder/manifest.json`, validate it, and (by default) check every listed file's hash."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise MtcError(f"artifact folder not found: {folder}", hint="run `mtc export MODEL -o FOLDER` first")
    if not path.is_file():
        raise MtcError(f"{folder} is not an mtc artifact (no {MANIFEST_NAME})", hint="pass the folder written by `mtc export`")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise MtcError(f"{path} is larger than {MAX_MANIFEST_BYTES >> 20} MB; no manifest is",
                       hint="the artifact is damaged; re-export it")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MtcError(f"{path} is not valid JSON ({exc})", hint="the artifact is damaged; re-export it") from None
    except RecursionError:
        raise MtcError(f"{path} nests deeper than {MAX_NESTING} levels", hint="the artifact is damaged; re-export it") from None
    manifest = manifest_from_dict(data, source=str(path))
    if verify_files:
        verify_artifact_files(folder, manifest)
    return manifest


def member_path(folder: Path, name: str) -> Path:
    """The regular file `name` inside `folder`, symlinks resolved; MtcError if it is missing,
    not a regular file (a FIFO, a device, a folder) or resolves outside the folder."""
    problem = check_member_name(name)
    if problem is not None:
        raise MtcError(f"artifact file {problem}", hint="the manifest is damaged or hostile; re-export the artifact")
    file = Path(folder) / name
    try:
        resolved = file.resolve(strict=True)
        root = Path(folder).resolve(strict=True)
        mode = os.stat(resolved).st_mode
    except (OSError, RuntimeError):  # missing, or a symlink loop
        raise MtcError(f"artifact file missing: {file}", hint="the artifact is incomplete; re-export it") from None
    if not resolved.is_relative_to(root):
        raise MtcError(f"artifact file {file} is a link to {resolved}, outside the artifact folder",
                       hint="copy the artifact with its files, not links to files elsewhere")
    if not stat.S_ISREG(mode):
        raise MtcError(f"artifact file {file} is not a regular file", hint="the artifact is damaged; re-export it")
    return resolved


def _hash_bounded(path: Path, size: int, *, scan_external: bool) -> tuple[str, bool]:
    """sha256 of the first `size` bytes (reading one more shows the file grew) and, when asked,
    whether the bytes hold the external-data marker."""
    digest = hashlib.sha256()
    found, tail, remaining = False, b"", size + 1
    with open(path, "rb") as handle:
        while remaining > 0:
            chunk = handle.read(min(1 << 20, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            digest.update(chunk)
            if scan_external and not found:
                found = _EXTERNAL_DATA_KEY in tail + chunk
                tail = chunk[-(len(_EXTERNAL_DATA_KEY) - 1):]
    return (digest.hexdigest() if remaining == 1 else ""), found


def external_data_files(model_path: Path) -> set[str]:
    """The external-data locations an ONNX file's tensors refer to, normalized."""
    import onnx

    try:
        model = onnx.load_model(str(model_path), load_external_data=False)
    except Exception:  # protobuf raises several unrelated types for damaged bytes
        raise MtcError(f"{model_path} is not a valid ONNX file", hint="the artifact is damaged; re-export it") from None
    tensors, graphs, node_lists = [], [model.graph], [list(f.node) for f in model.functions]
    while graphs or node_lists:
        if graphs:
            graph = graphs.pop()
            tensors.extend(graph.initializer)
            for sparse in graph.sparse_initializer:
                tensors.extend([sparse.values, sparse.indices])
            node_lists.append(list(graph.node))
            continue
        for node in node_lists.pop():
            for attribute in node.attribute:
                tensors.extend([attribute.t, *attribute.tensors, attribute.sparse_tensor.values,
                                attribute.sparse_tensor.indices])
                graphs.extend([attribute.g, *attribute.graphs] if attribute.HasField("g") else attribute.graphs)
    locations = set()
    for tensor in tensors:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            locations.add(posixpath.normpath(location) if location else "")
    return locations


def verify_artifact_files(folder: Path, manifest: Manifest) -> None:
    """Check every listed file: inside the folder, regular, its recorded size (checked before
    reading a byte), its sha256; and every external-data file an ONNX file reads is listed."""
    for name, entry in manifest.files.items():
        file = member_path(folder, name)
        if file.stat().st_size != entry.size:
            raise MtcError(f"artifact file {folder / name} does not match its manifest hash ({file.stat().st_size} bytes, "
                           f"the manifest records {entry.size}: modified or corrupt)",
                           hint="re-export the artifact; never edit files inside it")
        digest, has_external = _hash_bounded(file, entry.size, scan_external=name.endswith(".onnx"))
        if digest != entry.sha256:
            raise MtcError(
                f"artifact file {folder / name} does not match its manifest hash (modified or corrupt)",
                hint="re-export the artifact; never edit files inside it",
            )
        if has_external:
            for location in sorted(external_data_files(file)):
                if check_member_name(location) is not None or location not in manifest.files:
                    raise MtcError(f"artifact file {name} reads external data {location!r}, which the manifest does "
                                   "not list and hash", hint="re-export the artifact; its weights must be listed in files")
