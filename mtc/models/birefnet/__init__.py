"""BiRefNet (Zheng et al., CAAI AIR 2024, MIT): high-resolution dichotomous image segmentation.

Re-implemented from the facts of the official code (github.com/ZhengPeng7/BiRefNet: `config.py`,
`models/birefnet.py`, `models/modules/*`, `models/backbones/swin_v1.py`) with the settings every
released model uses, so the official checkpoints load strictly:

- backbone (`bb`): Swin v1, `swin_v1_l` (general, HR, matting, dynamic, ToonOut) or `swin_v1_t`
  (the lite models), run twice: on the image and on the image at half size (`mul_scl_ipt
  = 'cat'`), each stage's two outputs concatenated (lateral channels doubled);
- the three finer stages resized onto the coarsest and concatenated to it (`cxt_num = 3`), then
  one `BasicDecBlk` squeezing them back (`squeeze_block = 'BasicDecBlk_x1'`);
- a decoder of four `BasicDecBlk`s (3x3 conv to 64, BatchNorm, ReLU, `ASPPDeformable`, 3x3 conv,
  BatchNorm), lateral 1x1 convs, and at every level the image cut into patches stacked on the
  channels (`dec_ipt`, `dec_ipt_split`) through two 3x3 convs;
- `ASPPDeformable`: modulated deformable convs with kernels 1 (twice: `aspp1` and the first
  parallel branch), 3 and 7 into 256 channels each, plus global pooling, fused by a 1x1 conv;
- the gradient-attention reference (`out_ref`): levels 4 to 2 multiply their features by a
  sigmoid attention from a 16-channel conv head. The multi-scale supervision heads
  (`conv_ms_spvn_*`) and gradient predictors (`gdt_convs_pred_*`) are training-only, but stay in
  the module because the checkpoints hold their weights. BatchNorm everywhere, as the released
  models were trained with batch size > 1.

The exported graph: `src` (N x 3 x H x W, RGB resized to the variant's size, ImageNet mean/std)
-> `alpha` (N x 1 x H x W), the sigmoid of the last prediction. The official inference takes
`model(x)[-1].sigmoid()` the same way. Swin's window partition fixes the resolution, so each
graph is static in H and W; the batch stays dynamic. H and W must be multiples of 32 (the
decoder cuts the image into a 32 x 32 grid of patches at the coarsest level).

Deformable convs export as the standard ONNX `DeformConv` (opset 19) by default; `build_onnx`
takes `deform_conv="decomposed"` for runtimes that lack the op (see
:mod:`mtc.models.birefnet.deform_conv`). ONNX Runtime and TensorRT run the op itself; OpenVINO's
backend writes it as OpenVINO's own DeformableConvolution (:mod:`mtc.passes.openvino.deform_conv`),
and an ONNX Runtime older than 1.31 gets the decomposition on the ONNX graph
(:mod:`mtc.passes.deform_conv`, no PyTorch needed).

Weights: Hugging Face `model.safetensors` (read with the `safetensors` library, which never
unpickles) or official `.pth` files (GitHub release, Google Drive; `torch.load` with
weights_only=True). Keys may carry `module.` (DataParallel) and `_orig_mod.` (torch.compile)
prefixes, in either order, as ToonOut's do; both are stripped. No checksums are published:
the files are used unverified and the artifact records their sha256.

ToonOut (Muratori & Seytre, 2025, MIT) is BiRefNet with `swin_v1_l` fine-tuned on anime
characters; it is registered as its own model, `toonout`.

This package holds the spec as data and must not import torch (the registry imports it to list
models); the modules live in ``net``, the deformable conv in ``deform_conv``, the checkpoint
readers in ``checkpoint`` and the backbone in :mod:`mtc.models.nn.swin` (imported on use).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mtc.artifact.manifest import ModelIO
from mtc.errors import MtcError
from mtc.models.contracts import TRANSFORMER_IMAGE_RECIPE, SwinConfig, fixed_size_image_io
from mtc.models.registry import ModelSpec, VariantSpec, register
from mtc.weights import UrlSource, WeightFile

if TYPE_CHECKING:
    from types import ModuleType

    import onnx

    from mtc.export.torch_export import TorchBackend

MULTIPLE_OF = 32
DEFORM_CONV_FORMS = ("native", "decomposed")  # how ASPPDeformable exports; see the module docstring

INPUT_NAMES = ("src",)
OUTPUT_NAMES = ("alpha",)


# The official `bb` names and their `swin_v1_*` constructors.
BACKBONES = {
    "swin_v1_l": SwinConfig(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12),
    "swin_v1_t": SwinConfig(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7),
}


@dataclass(frozen=True)
class Release:
    """One released model: its backbone, the size it runs at and where its weights are."""

    backbone: str
    size: tuple[int, int]  # (height, width) the model was trained for and is exported at
    weights: WeightFile
    summary: str


def _hugging_face(repo: str, filename: str, *, file: str = "model.safetensors") -> WeightFile:
    return WeightFile(filename=filename, sha256=None, size=None, license="MIT",
                      sources=(UrlSource(f"https://huggingface.co/{repo}/resolve/main/{file}"),),
                      download_page=f"https://huggingface.co/{repo}")


RELEASES = {
    "general": Release("swin_v1_l", (1024, 1024), _hugging_face("ZhengPeng7/BiRefNet", "birefnet-general.safetensors"),
                       "general use (objects, people, DIS/HRSOD/COD data)"),
    "lite": Release("swin_v1_t", (1024, 1024), _hugging_face("ZhengPeng7/BiRefNet_lite", "birefnet-lite.safetensors"),
                    "general use, Swin-T backbone"),
    "lite-2k": Release("swin_v1_t", (1440, 2560),
                       _hugging_face("ZhengPeng7/BiRefNet_lite-2K", "birefnet-lite-2k.safetensors"),
                       "general use at 2560x1440, Swin-T backbone"),
    "hr": Release("swin_v1_l", (2048, 2048), _hugging_face("ZhengPeng7/BiRefNet_HR", "birefnet-hr.safetensors"),
                  "general use, trained at 2048x2048"),
    "matting": Release("swin_v1_l", (1024, 1024),
                       _hugging_face("ZhengPeng7/BiRefNet-matting", "birefnet-matting.safetensors"),
                       "trimap-free matting (soft edges)"),
    "hr-matting": Release("swin_v1_l", (2048, 2048),
                          _hugging_face("ZhengPeng7/BiRefNet_HR-matting", "birefnet-hr-matting.safetensors"),
                          "trimap-free matting, trained at 2048x2048"),
    # Trained on sizes from 256 to 2304 (multiples of 32); exported at 1024² unless asked otherwise.
    "dynamic": Release("swin_v1_l", (1024, 1024),
                       _hugging_face("ZhengPeng7/BiRefNet_dynamic", "birefnet-dynamic.safetensors"),
                       "general use, trained on sizes 256-2304"),
}
TOONOUT = Release("swin_v1_l", (1024, 1024),
                  _hugging_face("joelseytre/toonout", "birefnet_finetuned_toonout.pth",
                                file="birefnet_finetuned_toonout.pth"),
                  "anime characters and objects")

def model_io(size: tuple[int, int]) -> ModelIO:
    """The contract of a graph exported at `size` (height, width)."""
    return fixed_size_image_io(size, multiple_of=MULTIPLE_OF)


def _net() -> ModuleType:
    """mtc.models.birefnet.net, imported on first use (a missing torch is reported with the extra to install)."""
    from mtc.export.torch_export import require_torch

    require_torch()
    from mtc.models.birefnet import net

    return net


def build_onnx(backbone: str, size: tuple[int, int], weights: Path, *, deform_conv: str = "native") -> onnx.ModelProto:
    """The FP32 ONNX (opset 19) of an official checkpoint at `size`, deformable convs in the form
    `deform_conv` ("native" DeformConv or "decomposed"); imports torch."""
    net = _net()
    return net.export_network(net.matte_module(backbone, weights), size=size, deform_conv=deform_conv)


def build_reference(backbone: str, weights: Path) -> TorchBackend:
    """The PyTorch matte module of an official checkpoint, for the parity check (imports torch)."""
    from mtc.export.torch_export import TorchBackend

    return TorchBackend(_net().matte_module(backbone, weights), input_names=INPUT_NAMES, output_names=OUTPUT_NAMES)


# Every frame is resized to the model size, so one graph input size is all there is to check;
# a 16:9 frame takes the resize path too. One frame: a Swin-L pass takes seconds on a CPU.
PARITY_CASES = ((1280, 720, 1, None),)
# Max |diff| PyTorch vs ONNX Runtime allowed on alpha in [0, 1] (1/40 of an 8-bit step); measured
# 9e-7 to 2e-6 on the reduced model with either deformable-conv form (tests/models/test_birefnet.py).
PARITY_TOLERANCE = 1e-4


# The dynamic model was trained on sizes from 256 to 2304 (multiples of 32).
DYNAMIC_SIDES = (256, 2304)


def _variant(name: str, release: Release, *, sizes: tuple[int, int] | None = None) -> VariantSpec:
    """A released model as a variant; `sizes` (min, max side) where it exports at other sizes too."""
    at_size = functools.partial(_resized, name, release, sizes) if sizes is not None else None
    return VariantSpec(name=name, weights=release.weights, io=model_io(release.size),
                       build_onnx=functools.partial(build_onnx, release.backbone, release.size),
                       build_reference=functools.partial(build_reference, release.backbone),
                       exporter="torch", parity_cases=PARITY_CASES, parity_tolerance=PARITY_TOLERANCE,
                       at_size=at_size, quantization=TRANSFORMER_IMAGE_RECIPE)


def _resized(name: str, release: Release, sides: tuple[int, int], size: tuple[int, int]) -> VariantSpec:
    height, width = size
    if not all(sides[0] <= side <= sides[1] and side % MULTIPLE_OF == 0 for side in size):
        raise MtcError(f"{name} exports at sides from {sides[0]} to {sides[1]} that are multiples of {MULTIPLE_OF}, "
                       f"not {width}x{height}", hint=f"pick e.g. --input-size {1536}x{1536}")
    variant = _variant(f"{name}-{width}x{height}", dataclasses.replace(release, size=size))
    return dataclasses.replace(variant, at_size=None)


register(
    ModelSpec(
        name="birefnet",
        task="image_matting",
        summary="BiRefNet: high-resolution background removal and matting for any object (Swin-L; lite: Swin-T)",
        license="MIT",
        paper="arXiv:2401.03407",
        input_description="RGB image, any size (resized to the variant's size: 1024x1024, 2048x2048 or 2560x1440)",
        variants={name: _variant(name, release, sizes=DYNAMIC_SIDES if name == "dynamic" else None)
                  for name, release in RELEASES.items()},
        default_variant="general",
        purpose="objects",
    )
)

register(
    ModelSpec(
        name="toonout",
        task="image_matting",
        summary="ToonOut: BiRefNet fine-tuned for anime characters and objects",
        license="MIT",
        paper="arXiv:2509.06839",
        input_description="RGB anime image, any size (resized to 1024x1024)",
        variants={"toonout": _variant("toonout", TOONOUT)},
        default_variant="toonout",
        purpose="anime",
    )
)
