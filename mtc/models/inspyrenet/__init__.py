"""InSPyReNet (Kim et al., ACCV 2022, MIT): salient object masks, as transparent-background runs it.

Re-implemented from the facts of the official code (github.com/plemeri/InSPyReNet: `lib/`,
`configs/`) and of transparent-background (github.com/plemeri/transparent-background:
`Remover.py`, `config.yaml`), so the official checkpoints load strictly:

- backbone: Swin-B (embed 128, depths 2/2/18/2, heads 4/8/16/32, window 12), whose patch
  embedding is returned as a fifth, first level (channels 128, 128, 256, 512, 1024), or Res2Net50
  v1b 26w4s (64, 256, 512, 1024, 2048) with the official `output_stride=32` setting: strides
  1/2/2/2 with dilations 1/1/2/4 and multi-grid 1/2/4 on the last stage;
- a `PAA_e` context module per level (depth 64), a `PAA_d` decoder on the three coarsest giving
  saliency logits d3 at 1/8, and three `SICA` attention modules predicting Laplacians p2, p1, p0
  at 1/4, 1/2 and full size; the image pyramid reconstructs d2, d1, d0 from them (expand: zero
  insertion, reflect padding, a 7x7 Gaussian with sigma 1, times 4);
- each SICA pools its context at the level's size at the *base size* (the size the model was
  trained at), so the base size is part of the architecture.

Inference as transparent-background runs it: one pass (`threshold=None`) on the image resized
to the mode's base size (1024x1024 for `base`, 384x384 for `fast`; bilinear), ImageNet
mean/std; the output is sigmoid(d0) min-max normalised, (p - min) / (max - min + 1e-8), and
resized back to the image. That is every variant named after a release.

The two-pass pyramid blend of the original repository (`lib/InSPyReNet.py`, `threshold` set) is
the `-blend` variants: a pass at the base size and a pass at a full-resolution size, their
saliency pyramids blended (:mod:`.blend` states the facts). It is an artifact of four graphs
chained by the manifest's program (`lr`, `hr`, `blend`, `single`), so no Python runs between
them: the runtime resizes the image to the full size, `lr` downscales it to the base size inside
the graph. The official code blends only when both sides of the (dynamically resized) image
exceed the threshold and otherwise runs the single pass; so does the program: its small-frame
phase (`mtc.artifact.program.SmallFrames`) runs `lr` then `single` for a frame with a side at or
below the threshold as it arrives, the frame phase `lr`, `hr` and `blend` for the others. The
full size itself must exceed the threshold on both sides (checked).

The exported single-pass graph: `src` (N x 3 x H x W, ImageNet-normalised RGB at the variant's
size) -> `alpha` (N x 1 x H x W). Static in H and W (Swin's windows and the SICA pooling sizes
depend on them), batch dynamic; sides must be multiples of 32. The blend's graphs are static,
batch 1.

Weights: transparent-background's `base`, `fast` and `base-nightly` checkpoints (Swin-B) from its
GitHub release (it publishes md5 sums, recorded below, but no sha256: the files are used
unverified and the artifact records their sha256), and the paper's Res2Net50 checkpoint
(DUTS-TR, 384x384) from Google Drive. All are plain state dicts.

This package holds the spec as data and must not import torch (the registry imports it to list
models); the blocks live in ``modules``, the network and export in ``net`` and the backbones in
:mod:`mtc.models.nn.swin` and :mod:`mtc.models.nn.res2net` (imported on use).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mtc.artifact.manifest import ModelIO, QuantRecipe, TensorSpec
from mtc.artifact.program import GraphSpec, Phase, Program, SmallFrames, Step
from mtc.errors import MtcError
from mtc.models.contracts import TRANSFORMER_IMAGE_RECIPE, SwinConfig, fixed_size_image_io
from mtc.models.registry import ModelSpec, VariantSpec, register
from mtc.weights import UrlSource, WeightFile

if TYPE_CHECKING:
    from types import ModuleType

    import onnx

    from mtc.export.program import ProgramBuild
    from mtc.export.torch_export import TorchBackend

MULTIPLE_OF = 32  # the backbones' output stride

INPUT_NAMES = ("src",)
OUTPUT_NAMES = ("alpha",)


@dataclass(frozen=True)
class Res2NetConfig:
    """A Res2Net v1b backbone (see :class:`mtc.models.nn.res2net.Res2Net`)."""

    blocks: tuple[int, int, int, int]
    dilations: tuple[int, int, int, int]
    last_stage_grid: tuple[int, ...] | None
    planes: tuple[int, int, int, int] = (64, 128, 256, 512)
    base_width: int = 26
    scale: int = 4

    @property
    def levels(self) -> tuple[int, ...]:
        """Channels of the five levels: the stem, then the four stages."""
        return (64, *(4 * p for p in self.planes))


@dataclass(frozen=True)
class Architecture:
    """An InSPyReNet: its backbone, inner width and base size (height, width)."""

    backbone: SwinConfig | Res2NetConfig
    base_size: tuple[int, int]
    depth: int = 64


SWIN_B = SwinConfig(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12)
# `res2net50_v1b_26w_4s` with the official Res2Net's output_stride=32 setting.
RES2NET50 = Res2NetConfig(blocks=(3, 4, 6, 3), dilations=(1, 1, 2, 4), last_stage_grid=(1, 2, 4))


@dataclass(frozen=True)
class Release:
    """One released model: its architecture (the size it runs at is its base size) and weights."""

    arch: Architecture
    weights: WeightFile


_TB_RELEASE = "https://github.com/plemeri/transparent-background/releases/download/1.2.12"
# md5 sums from transparent-background's config.yaml (the downloader checks sha256 only).
OFFICIAL_MD5 = {"ckpt_base.pth": "d692e3dd5fa1b9658949d452bebf1cda", "ckpt_fast.pth": "9efdbfbcc49b79ef0f7891c83d2fd52f"}


def _transparent_background(ckpt_name: str) -> WeightFile:
    return WeightFile(filename=f"inspyrenet_{ckpt_name}", sha256=None, size=None, license="MIT",
                      sources=(UrlSource(f"{_TB_RELEASE}/{ckpt_name}"),),
                      download_page="https://github.com/plemeri/transparent-background/releases/tag/1.2.12")


_RES2NET50_DRIVE_ID = "12moRuU8F0-xRvE16bVg6mkGWDuqYHJor"  # docs/model_zoo.md, "InSPyReNet_Res2Net50"
RELEASES = {
    # transparent-background's modes; base-nightly is its newer base checkpoint, better on small images.
    "base": Release(Architecture(SWIN_B, (1024, 1024)), _transparent_background("ckpt_base.pth")),
    "fast": Release(Architecture(SWIN_B, (384, 384)), _transparent_background("ckpt_fast.pth")),
    "base-nightly": Release(Architecture(SWIN_B, (1024, 1024)), _transparent_background("ckpt_base_nightly.pth")),
    # The paper's Res2Net50 model (trained on DUTS-TR at 384x384, run single-pass at that size).
    "res2net50": Release(
        Architecture(RES2NET50, (384, 384)),
        WeightFile(filename="inspyrenet_res2net50_latest.pth", sha256=None, size=None, license="MIT",
                   sources=(UrlSource(f"https://drive.google.com/uc?export=download&id={_RES2NET50_DRIVE_ID}"),),
                   download_page=f"https://drive.google.com/file/d/{_RES2NET50_DRIVE_ID}/view")),
}


@dataclass(frozen=True)
class Blend:
    """The two-pass pyramid blend's resolution rule: the full-resolution pass runs at `full_size`
    (height, width), the other at the base size, and the official code blends only images both
    of whose sides exceed `threshold`."""

    full_size: tuple[int, int]
    threshold: int

    def check(self, base_size: tuple[int, int]) -> None:
        """MtcError (one line) unless the official code would blend at this full size."""
        height, width = self.full_size
        if height % MULTIPLE_OF or width % MULTIPLE_OF:
            raise MtcError(f"InSPyReNet needs sides that are multiples of {MULTIPLE_OF}, not {width}x{height}",
                           hint=f"round the size to a multiple of {MULTIPLE_OF}")
        if min(height, width) <= self.threshold or height < base_size[0] or width < base_size[1]:
            raise MtcError(f"the pyramid blend needs both sides above {self.threshold} and at least the base size "
                           f"{base_size[1]}x{base_size[0]}, not {width}x{height} (the official code runs the "
                           f"single pass there)", hint="export the variant without -blend for small images")

    def parity_cases(self) -> tuple[tuple[int, int, int, None], ...]:
        """One 16:9 frame of each phase (width, height, frames, ratio): one the blend runs on (both
        sides above the threshold), one the single pass runs on (the shorter side at it)."""
        height, width = self.full_size
        large = max(height * 9 // 16, self.threshold + 1)
        return ((width, large, 1, None), (self.threshold * 16 // 9, self.threshold, 1, None))


# Where the blend runs. The official configurations blend with the Swin-B models trained at
# 384x384 (`InSPyReNet_SwinB.yaml`, `Plus_Ultra_LR.yaml`: `threshold: 512`, test images resized
# to at most 1280 on the shorter side by `dynamic_resize`, L=1280); a fixed graph size squares
# that to 1280x1280. The Res2Net50 model (also 384x384) gets the same rule, though its config
# runs the single pass only (`threshold: NULL`), as do the 1024x1024 models'; for those the rule
# at twice the base size is ours.
BLENDS = {
    "base": Blend((2048, 2048), 1024),
    "fast": Blend((1280, 1280), 512),
    "base-nightly": Blend((2048, 2048), 1024),
    "res2net50": Blend((1280, 1280), 512),
}
BLEND_SUFFIX = "-blend"


def blend_program(threshold: int) -> Program:
    """The low-resolution pass, the full-resolution pass, then the blend of their pyramids; for
    frames with a side at or below `threshold`, the low-resolution pass alone."""
    return Program(
        graphs=(GraphSpec("lr", "lr.onnx", ("image",), ("lr_d0",)),
                GraphSpec("hr", "hr.onnx", ("image",), ("hr_p2", "hr_p1", "hr_p0")),
                GraphSpec("blend", "blend.onnx", ("lr_d0", "hr_p2", "hr_p1", "hr_p0"), ("alpha",)),
                GraphSpec("single", "single.onnx", ("lr_d0",), ("alpha",))),
        frame=Phase((Step(op="run", graph="lr"), Step(op="run", graph="hr"), Step(op="run", graph="blend"))),
        small=SmallFrames(side=threshold, phase=Phase((Step(op="run", graph="lr"), Step(op="run", graph="single")))))


def model_io(size: tuple[int, int]) -> ModelIO:
    """The contract of a graph exported at `size` (height, width)."""
    return fixed_size_image_io(size, multiple_of=MULTIPLE_OF)


def blend_io(full_size: tuple[int, int]) -> ModelIO:
    """The blend artifact's contract: the image at the full size, and the frame's size as it
    arrives, which chooses between the blend and the single pass."""
    io = model_io(full_size)
    frame_size = TensorSpec("frame_size", "frame_size", shape=(2,), value_range=(1.0, float(1 << 16)))
    return dataclasses.replace(io, inputs=(*io.inputs, frame_size))


def _net() -> ModuleType:
    """mtc.models.inspyrenet.net, imported on first use (a missing torch is reported with the extra to install)."""
    from mtc.export.torch_export import require_torch

    require_torch()
    from mtc.models.inspyrenet import net

    return net


def build_onnx(arch: Architecture, weights: Path) -> onnx.ModelProto:
    """The FP32 ONNX of an official checkpoint at the architecture's base size (imports torch)."""
    net = _net()
    return net.export_network(net.matte_module(arch, weights), size=arch.base_size)


def build_reference(arch: Architecture, weights: Path) -> TorchBackend:
    """The PyTorch matte module of an official checkpoint, for the parity check (imports torch)."""
    from mtc.export.torch_export import TorchBackend

    return TorchBackend(_net().matte_module(arch, weights), input_names=INPUT_NAMES, output_names=OUTPUT_NAMES)


def build_program(arch: Architecture, blend: Blend, weights: Path) -> ProgramBuild:
    """The blend's three graphs, their PyTorch references and the program (imports torch)."""
    _net()
    from mtc.models.inspyrenet import export

    return export.build(arch, blend, weights)


# Every frame is resized to the base size, so one graph input size is all there is to check;
# a 16:9 frame takes the resize path too. One frame: a Swin-B pass at 1024x1024 takes seconds.
PARITY_CASES = ((1280, 720, 1, None),)
# Max |diff| PyTorch vs ONNX Runtime allowed on alpha in [0, 1]: a quarter of an 8-bit step,
# invisible in any matte, while a broken export differs by far more. The min-max stretch
# amplifies float32 differences, and how much PyTorch's and ONNX Runtime's kernels differ
# depends on the CPU class: the real-size `fast` model measured 2e-5 on AVX-512 CPUs and 5.3e-4
# on an AVX2-only EPYC, where ONNX Runtime differed from itself (optimizations on and off) by 1.2e-5.
PARITY_TOLERANCE = 1e-3


def _recipe(arch: Architecture) -> QuantRecipe:
    """Swin-B's linear layers join INT8 (the transformer recipe); Res2Net is convs only."""
    if isinstance(arch.backbone, SwinConfig):
        return TRANSFORMER_IMAGE_RECIPE
    return dataclasses.replace(TRANSFORMER_IMAGE_RECIPE, int8_op_types=("Conv",))


def _variant(name: str, release: Release) -> VariantSpec:
    return VariantSpec(name=name, weights=release.weights, io=model_io(release.arch.base_size),
                       build_onnx=functools.partial(build_onnx, release.arch),
                       build_reference=functools.partial(build_reference, release.arch),
                       exporter="torch", parity_cases=PARITY_CASES, parity_tolerance=PARITY_TOLERANCE,
                       quantization=_recipe(release.arch))


# The blend's chained alpha cannot be held to a max |difference| end to end: where a transition
# mask's morphological gradient lies within float noise of 0.5, PyTorch and a backend disagree on
# the mask, and the full-resolution Laplacian enters one alpha and not the other (fast-blend at
# 1280x1280 with random weights: 10 of 1.6 M pixels, by up to 0.61; any two implementations of
# the official code can differ so). So the program check allows that few pixels past the
# tolerance, with a wide margin, and the build checks each graph against PyTorch on the same
# inputs, where PARITY_TOLERANCE holds (export.check_graphs); report.json records both. The
# parity frames are one of each phase (Blend.parity_cases).
BLEND_CHAIN_TOLERANCE = 1e-3
BLEND_CHAIN_OUTLIERS = 1e-4
# INT8 on the two passes only: the blend graph holds no weights, and its transition masks
# threshold at 0.5, where quantization noise would flip whole edge regions.
BLEND_GRAPHS = ("lr", "hr")


def _blend_variant(name: str, release: Release, blend: Blend) -> VariantSpec:
    """The release blended at `blend.full_size`; `--input-size` picks another full size."""
    blend.check(release.arch.base_size)
    return VariantSpec(name=name, weights=release.weights, io=blend_io(blend.full_size),
                       build_program=functools.partial(build_program, release.arch, blend),
                       exporter="torch", parity_cases=blend.parity_cases(), parity_tolerance=BLEND_CHAIN_TOLERANCE,
                       parity_outliers=BLEND_CHAIN_OUTLIERS,
                       quantization=dataclasses.replace(_recipe(release.arch), int8_graphs=BLEND_GRAPHS),
                       at_size=functools.partial(_blend_at_size, name, release, blend.threshold))


def _blend_at_size(name: str, release: Release, threshold: int, size: tuple[int, int]) -> VariantSpec:
    height, width = size
    variant = _blend_variant(f"{name}-{width}x{height}", release, Blend((height, width), threshold))
    return dataclasses.replace(variant, at_size=None)


def _variants() -> dict[str, VariantSpec]:
    variants = {name: _variant(name, release) for name, release in RELEASES.items()}
    for name, release in RELEASES.items():
        variants[name + BLEND_SUFFIX] = _blend_variant(name + BLEND_SUFFIX, release, BLENDS[name])
    return variants


register(
    ModelSpec(
        name="inspyrenet",
        task="image_matting",
        summary="InSPyReNet: background removal for any object, as transparent-background runs it (Swin-B; Res2Net50)",
        license="MIT",
        paper="arXiv:2209.09475",
        input_description=("RGB image, any size (resized to 1024x1024 for base, 384x384 for fast and res2net50; "
                           "the -blend variants to 2048x2048 or 1280x1280 for their full-resolution pass)"),
        variants=_variants(),
        default_variant="base",
        purpose="objects",
    )
)
