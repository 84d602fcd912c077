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
resized back to the image. The two-pass pyramid blend of the original repository (a
low-resolution pass and a full-resolution pass above a size threshold) is not exported.

The exported graph: `src` (N x 3 x H x W, ImageNet-normalised RGB at the variant's size) ->
`alpha` (N x 1 x H x W). Static in H and W (Swin's windows and the SICA pooling sizes depend on
them), batch dynamic; sides must be multiples of 32.

Weights: transparent-background's `base`, `fast` and `base-nightly` checkpoints (Swin-B) from its
GitHub release (it publishes md5 sums, recorded below, but no sha256: the files are used
unverified and the artifact records their sha256), and the paper's Res2Net50 checkpoint
(DUTS-TR, 384x384) from Google Drive. All are plain state dicts.

This package holds the spec as data and must not import torch (the registry imports it to list
models); the blocks live in ``modules``, the network and export in ``net`` and the backbones in
:mod:`mtc.models.nn.swin` and :mod:`mtc.models.nn.res2net` (imported on use).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mtc.artifact.manifest import ModelIO
from mtc.models.contracts import SwinConfig, fixed_size_image_io
from mtc.models.registry import ModelSpec, VariantSpec, register
from mtc.weights import UrlSource, WeightFile

if TYPE_CHECKING:
    from types import ModuleType

    import onnx

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

def model_io(size: tuple[int, int]) -> ModelIO:
    """The contract of a graph exported at `size` (height, width)."""
    return fixed_size_image_io(size, multiple_of=MULTIPLE_OF)


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


# Every frame is resized to the base size, so one graph input size is all there is to check;
# a 16:9 frame takes the resize path too. One frame: a Swin-B pass at 1024x1024 takes seconds.
PARITY_CASES = ((1280, 720, 1, None),)
# Max |diff| PyTorch vs ONNX Runtime allowed on alpha in [0, 1] (1/40 of an 8-bit step); the
# min-max stretch amplifies differences (tests/models/test_inspyrenet.py states the measured ones).
PARITY_TOLERANCE = 1e-4


def _variant(name: str, release: Release) -> VariantSpec:
    return VariantSpec(name=name, weights=release.weights, io=model_io(release.arch.base_size),
                       build_onnx=functools.partial(build_onnx, release.arch),
                       build_reference=functools.partial(build_reference, release.arch),
                       exporter="torch", parity_cases=PARITY_CASES, parity_tolerance=PARITY_TOLERANCE)


register(
    ModelSpec(
        name="inspyrenet",
        task="image_matting",
        summary="InSPyReNet: background removal for any object, as transparent-background runs it (Swin-B; Res2Net50)",
        license="MIT",
        paper="arXiv:2209.09475",
        input_description="RGB image, any size (resized to 1024x1024 for base, 384x384 for fast and res2net50)",
        variants={name: _variant(name, release) for name, release in RELEASES.items()},
        default_variant="base",
        purpose="objects",
    )
)
