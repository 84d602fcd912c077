"""Model registry: one `ModelSpec` per model family, registered by its file in `mtc/exporters/`.

Configuration is data: weight sources, I/O contract, preprocessing and resolution rules live
in the spec, so the exporter, the manifest and the runtime all read the same facts.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mtc.artifact.manifest import CheckSize, ModelIO, QuantRecipe
from mtc.errors import MtcError
from mtc.weights import WeightFile

if TYPE_CHECKING:
    import onnx

    from mtc.backends import Backend
    from mtc.export.program import ProgramBuild

# Families register themselves on import; the built-ins are listed here (they import no torch),
# other packages add theirs through the entry point group below.
_FAMILY_MODULES = ("mtc.models.rvm", "mtc.models.modnet", "mtc.models.u2net", "mtc.models.bgmv2",
                   "mtc.models.birefnet", "mtc.models.inspyrenet", "mtc.models.matanyone", "mtc.models.pdfnet")


@dataclass(frozen=True)
class VariantSpec:
    """One downloadable model: its weights and how to turn them into an ONNX graph."""

    name: str
    weights: WeightFile
    io: ModelIO
    # Builds the FP32 ONNX from the verified weight file. Models that ship as ONNX use the
    # ingest path; PyTorch ones build the module and export it.
    build_onnx: Callable[[Path], onnx.ModelProto] | None = None
    # Multi-graph models build their graphs, references and program instead (mtc.export.program).
    build_program: Callable[[Path], ProgramBuild] | None = None
    # The reference the exported graph is checked against. None: the graph built by
    # build_onnx itself, before sanitizing (ONNX ingest). PyTorch exporters return a
    # TorchBackend around the module, so the check is PyTorch vs ONNX Runtime.
    build_reference: Callable[[Path], Backend] | None = None
    exporter: str = "onnx_ingest"
    # Resolutions (width, height, frames, fixed downsample ratio) the export is checked at;
    # empty: the model's default check sizes (artifact.manifest.default_check_sizes), 4 frames each.
    parity_cases: tuple[tuple[int, int, int, float | None], ...] = ()
    # Where the quantizer checks compiled artifacts against FP32; written into the manifest.
    # Empty: the defaults for the model's input rule.
    check_sizes: tuple[CheckSize, ...] = ()
    # The default INT8 preset and built-in calibration data; None: the defaults for the task
    # (artifact.manifest.default_quant_recipe). Written into the manifest.
    quantization: QuantRecipe | None = None
    # Max |difference| allowed against the reference (PyTorch vs ONNX Runtime differs by ~1e-5
    # in recurrent states; ONNX-vs-ONNX ingest is bit-exact).
    parity_tolerance: float = 1e-5
    # Multi-graph programs with a hard threshold inside: the share of alpha pixels allowed past
    # parity_tolerance (export.compile.CompileJob.outliers); 0 for everything else.
    parity_outliers: float = 0.0
    # Exact graph rewrites run after sanitizing, each returning (model, applied); the parity
    # check covers them like every other export step.
    rewrites: tuple[Callable[[onnx.ModelProto], tuple[onnx.ModelProto, bool]], ...] = ()
    # A variant trained on many input sizes: the same variant exported at another (height,
    # width) (`mtc export --input-size`); None: its size is fixed.
    at_size: Callable[[tuple[int, int]], VariantSpec] | None = None
    # The rewrites that give the alpha-only form (no foreground output, less full-resolution
    # work); None: the model has no such form.
    alpha_only_rewrites: tuple[Callable[[onnx.ModelProto], tuple[onnx.ModelProto, bool]], ...] | None = None

    def sized(self, height: int, width: int) -> VariantSpec:
        """This variant exported at height x width, where it was trained for many sizes."""
        if self.at_size is None:
            raise MtcError(f"variant {self.name!r} has a fixed input size",
                           hint="drop --input-size (it is for ONNX files and for variants trained on many sizes)")
        return self.at_size((height, width))

    def alpha_only(self) -> VariantSpec:
        """This variant without its foreground output (the runtime composites the source frame)."""
        if self.io.output_with_role("foreground") is None:
            raise MtcError(f"variant {self.name!r} has no foreground output: it is alpha-only already",
                           hint="drop --alpha-only")
        if self.alpha_only_rewrites is None:
            raise MtcError(f"variant {self.name!r} has no alpha-only form", hint="drop --alpha-only (it exists for rvm)")
        outputs = tuple(t for t in self.io.outputs if t.role != "foreground")
        return dataclasses.replace(self, name=f"{self.name}-alpha", io=dataclasses.replace(self.io, outputs=outputs),
                                   rewrites=self.alpha_only_rewrites, alpha_only_rewrites=None)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    task: str  # "video_matting" (recurrent) or "image_matting"
    summary: str
    license: str
    paper: str
    variants: dict[str, VariantSpec]
    default_variant: str
    input_description: str = "RGB frame, any size"
    aliases: tuple[str, ...] = field(default=())
    # What it mattes, in a word or two ("people", "objects", "anime"): `mtc models` shows it, and
    # `mtc run` names it when a matte comes out almost empty or full.
    purpose: str = ""

    def variant(self, name: str | None) -> VariantSpec:
        name = name or self.default_variant
        if name not in self.variants:
            raise MtcError(
                f"model {self.name!r} has no variant {name!r}",
                hint=f"choose one of: {', '.join(self.variants)}",
            )
        return self.variants[name]


log = logging.getLogger("mtc")

_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    for key in (spec.name, *spec.aliases):
        if key in _REGISTRY and _REGISTRY[key] is not spec:
            raise ValueError(f"model name {key!r} registered twice")
        _REGISTRY[key] = spec
    return spec


ENTRY_POINT_GROUP = "mtc.models"


def _load_families() -> None:
    """Import the built-in families and every package registered under the `mtc.models` entry
    point group (each registers its ModelSpec on import, as the built-ins do)."""
    for module in _FAMILY_MODULES:
        importlib.import_module(module)
    from importlib.metadata import entry_points

    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.value in _FAMILY_MODULES:
            continue
        try:
            entry.load()
        except Exception as exc:  # one broken plug-in must not hide the other models
            log.warning("model family %r (%s) failed to load: %s", entry.name, entry.value, exc)


def list_models() -> list[ModelSpec]:
    _load_families()
    unique = {id(s): s for s in _REGISTRY.values()}
    return sorted(unique.values(), key=lambda s: s.name)


def get_model(name: str) -> ModelSpec:
    _load_families()
    key = name.lower()
    if key in _REGISTRY:
        return _REGISTRY[key]
    close = difflib.get_close_matches(key, _REGISTRY, n=1)
    suggestion = f"did you mean {close[0]!r}? " if close else ""
    raise MtcError(f"unknown model {name!r}", hint=f"{suggestion}`mtc models` lists the available ones")
