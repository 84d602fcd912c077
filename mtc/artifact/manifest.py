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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtc.errors import MtcError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
REPORT_NAME = "report.json"

INPUT_ROLES = ("image", "background", "state", "downsample_ratio")
OUTPUT_ROLES = ("alpha", "foreground", "state", "aux")
DTYPES = ("float32", "float16", "int64", "int32", "uint8")
RESIZE_MODES = ("none", "fixed", "reference")
RESIZE_FILTERS = ("bilinear", "lanczos")
PRECISIONS = ("fp32", "fp16", "int8")


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

    def ratio_for(self, height: int, width: int) -> float:
        ratio = min(self.target_side / max(height, width), self.max_ratio)
        fractions = [1 / k for k in {max(1, math.floor(1 / ratio)), math.ceil(1 / ratio)} if 1 / k <= self.max_ratio]
        near = [f for f in fractions if abs(f - ratio) <= self.snap * ratio]
        return min(near, key=lambda f: abs(f - ratio)) if near else ratio


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
class Precision:
    mode: str = "fp32"
    calibration: str | None = None
    samples: int = 0
    excluded_nodes: tuple[str, ...] = ()
    # INT8 only: "int8" or "uint8" (zero point 128) activations; backends differ on which they run faithfully.
    activation_type: str | None = None
    # The CPU class (mtc.backends.cpu) the checks ran on: integer kernels differ between classes.
    checked_cpu: str | None = None


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
    schema_version: int = SCHEMA_VERSION

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
            f"{self.source}: {self.path or 'top level'} {what}",
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
            return float(node.data)
        if not isinstance(node.data, kinds) or (isinstance(node.data, bool) and bool not in kinds):
            names = "/".join(k.__name__ for k in kinds)
            raise node.fail(f"must be {names}, got {type(node.data).__name__}")
        return node.data

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
    if not all(isinstance(d, (int, str)) and not isinstance(d, bool) for d in shape):
        raise r.child("shape").fail("must hold ints and dim names only")
    value_range = r.get("value_range", list, None)
    return TensorSpec(
        name=r.get("name", str),
        role=r.choice("role", roles),
        dtype=r.choice("dtype", DTYPES, "float32"),
        shape=tuple(shape),
        layout=r.get("layout", str, ""),
        value_range=tuple(value_range) if value_range is not None else None,
    )


def _floats3(r: _Reader, key: str, default: tuple[float, ...]) -> tuple[float, float, float]:
    values = r.get(key, list, list(default))
    if len(values) != 3 or not all(isinstance(v, (int, float)) for v in values):
        raise r.child(key).fail("must be 3 numbers")
    return tuple(float(v) for v in values)


def _model_io(r: _Reader) -> ModelIO:
    inputs = tuple(_tensor(t, INPUT_ROLES) for t in r.items("inputs"))
    outputs = tuple(_tensor(t, OUTPUT_ROLES) for t in r.items("outputs"))
    states = tuple(
        StatePair(
            input=s.get("input", str),
            output=s.get("output", str),
            initial_shape=tuple(s.get("initial_shape", list, [1, 1, 1, 1])),
            initial_value=s.get("initial_value", float, 0.0),
            stride=s.get("stride", int, None),
            scale=s.get("scale", float, None),
        )
        for s in r.items("states")
    )
    p = r.child("preprocess")
    fixed = p.get("fixed_size", list, None)
    preprocess = Preprocess(
        color_order=p.choice("color_order", ("RGB", "BGR"), "RGB"),
        scale=p.get("scale", float, 1.0 / 255.0),
        mean=_floats3(p, "mean", (0.0, 0.0, 0.0)),
        std=_floats3(p, "std", (1.0, 1.0, 1.0)),
        resize=p.choice("resize", RESIZE_MODES, "none"),
        fixed_size=tuple(fixed) if fixed is not None else None,
        reference_side=p.get("reference_side", int, None),
        multiple_of=p.get("multiple_of", int, 1),
        resize_filter=p.choice("resize_filter", RESIZE_FILTERS, "bilinear"),
    )
    if preprocess.resize == "fixed" and preprocess.fixed_size is None:
        raise p.fail("has resize 'fixed' but no fixed_size")
    if preprocess.resize == "reference" and not preprocess.reference_side:
        raise p.fail("has resize 'reference' but no reference_side")
    downsample = None
    if isinstance(r.data, dict) and r.data.get("downsample") is not None:
        d = r.child("downsample")
        downsample = DownsampleRule(
            input=d.get("input", str),
            target_side=d.get("target_side", int, 512),
            max_ratio=d.get("max_ratio", float, 1.0),
            snap=d.get("snap", float, 0.0),
        )
    io = ModelIO(inputs, outputs, states, preprocess, downsample)
    _check_io_consistency(io, r)
    return io


def _check_io_consistency(io: ModelIO, r: _Reader) -> None:
    input_names = {t.name for t in io.inputs}
    output_names = {t.name for t in io.outputs}
    if io.input_with_role("image") is None:
        raise r.child("inputs").fail("has no tensor with role 'image'")
    if io.output_with_role("alpha") is None:
        raise r.child("outputs").fail("has no tensor with role 'alpha'")
    for pair in io.states:
        if pair.stride is not None and pair.stride < 1:
            raise r.child("states").fail(f"gives {pair.input} stride {pair.stride}; strides are positive")
        if pair.input not in input_names or pair.output not in output_names:
            raise r.child("states").fail(f"pairs {pair.input}->{pair.output}, which are not model inputs/outputs")
    if io.downsample is not None and io.downsample.input not in input_names:
        raise r.child("downsample").fail(f"names input {io.downsample.input!r}, which the model does not have")


def manifest_from_dict(data: Any, *, source: str = MANIFEST_NAME) -> Manifest:
    """Parse and validate a manifest; raises MtcError naming the first bad field."""
    r = _Reader(data, "", source)
    if not isinstance(data, dict):
        raise r.fail("must be a JSON object")
    version = r.get("schema_version", int)
    if version != SCHEMA_VERSION:
        raise MtcError(
            f"{source}: schema_version {version} is not supported (this mtc reads {SCHEMA_VERSION})",
            hint="re-export the artifact with this version of mtc",
        )
    pr = r.child("precision")
    files = {
        name: FileEntry(
            sha256=r.child("files").child(name).get("sha256", str),
            size=r.child("files").child(name).get("size", int),
            role=r.child("files").child(name).get("role", str, "model"),
        )
        for name in r.get("files", dict)
    }
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
            samples=pr.get("samples", int, 0),
            excluded_nodes=tuple(pr.get("excluded_nodes", list, [])),
            activation_type=pr.choice("activation_type", ("int8", "uint8"), None)
            if pr.get("activation_type", str, None) is not None else None,
            checked_cpu=pr.get("checked_cpu", str, None),
        ),
        files=files,
        provenance=r.get("provenance", dict, {}),
        check_sizes=tuple(CheckSize(width=c.get("width", int), height=c.get("height", int),
                                    downsample_ratio=c.get("downsample_ratio", float, None))
                          for c in (r.items("check_sizes") if "check_sizes" in data else ())),
        schema_version=version,
    )
    if manifest.model_file not in manifest.files:
        raise r.child("model_file").fail(f"names {manifest.model_file!r}, which is not listed in files")
    return manifest


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
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MtcError(f"{path} is not valid JSON ({exc})", hint="the artifact is damaged; re-export it") from None
    manifest = manifest_from_dict(data, source=str(path))
    if verify_files:
        verify_artifact_files(folder, manifest)
    return manifest


def verify_artifact_files(folder: Path, manifest: Manifest) -> None:
    for name, entry in manifest.files.items():
        file = folder / name
        if not file.is_file():
            raise MtcError(f"artifact file missing: {file}", hint="the artifact is incomplete; re-export it")
        if file.stat().st_size != entry.size or sha256_file(file) != entry.sha256:
            raise MtcError(
                f"artifact file {file} does not match its manifest hash (modified or corrupt)",
                hint="re-export the artifact; never edit files inside it",
            )
