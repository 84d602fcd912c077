"""BackgroundMattingV2 (Lin et al., CVPR 2021, MIT): matting with a captured background plate.

Re-implemented from the paper and the facts of the official release (layer shapes and
checkpoint key names), so the official `pytorch_<backbone>.pth` files load strictly. Inputs are
the frame `src` and the clean background plate `bgr`, both RGB in [0, 1] with H and W
divisible by 4; outputs are `pha` (alpha) and `fgr` (foreground), both at full resolution.

- Base network at 1/4 of the input (the official default `backbone_scale`): a DeepLabV3-style
  encoder on the 6-channel concatenation, MobileNetV2 or ResNet-50/101 in torchvision's layout
  (first conv widened to 6 channels, output stride 16 through dilation in the last stage), ASPP
  with rates (3, 6, 9), and a decoder that upsamples through the encoder's skips to 37 channels:
  coarse alpha, foreground residual, error map and 32 hidden channels.
- Refiner: two 3x3 convs at 1/2 resolution on hidden features + coarse outputs + both images,
  2x nearest upsampling, two 3x3 convs at full resolution with the images again.

Refinement modes and ONNX. The official refiner picks 4x4 patches ("sampling": the k patches
with the largest predicted error; "thresholding": those whose error exceeds a threshold) and
crops/scatters them with data-dependent gather/scatter. Those graphs have a dynamic patch count
(NonZero/TopK + ScatterND), which TensorRT profiles, INT8 calibration and FP16 checks handle
badly. Here:

- "full" (exported): refine every patch with ordinary convolutions over the padded image. Each
  refined pixel equals what the patch refiner computes for that patch (the patch crops carry
  exactly the receptive field: 3 px at 1/2 resolution, 2 px at full resolution).
- "thresholding" (exported): the same dense refinement, then a per-4x4-patch select between the
  refined result and the bilinearly upsampled coarse result where the coarse error (at 1/4)
  exceeds the threshold. Same output as the official thresholding mode, at full-mode cost.
  A patch whose error sits exactly at the threshold can flip between backends.
- "sampling" is not exported: its top-k selection has no dense equivalent that is cheaper
  than "full", and ties in the error map make it backend-dependent.

The official checkpoints are in a Google Drive folder without direct links and with no
published checksum: they are used unverified (the artifact records their sha256).

This package holds the spec as data and must not import torch (the registry imports it to list
models); the modules live in ``net`` (imported by the build functions), the encoders are the
shared :mod:`mtc.models.nn` MobileNetV2 and ResNet in torchvision's layout.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from mtc.artifact.manifest import ModelIO, Preprocess, TensorSpec
from mtc.models.registry import ModelSpec, VariantSpec, register
from mtc.weights import WeightFile

if TYPE_CHECKING:
    from types import ModuleType

    import onnx

    from mtc.export.torch_export import TorchBackend

DRIVE_FOLDER = "https://drive.google.com/drive/folders/1cbetlrKREitIgjnIikG1HdM4x72FtgBh"
BACKBONES = ("mobilenetv2", "resnet50", "resnet101")
REFINE_MODES = ("full", "thresholding")
BACKBONE_DOWNSAMPLE = 4  # the official backbone_scale 1/4 (HD); 8 is the official choice for 4K
REFINE_THRESHOLD = 0.1  # the official default for "thresholding"
MULTIPLE_OF = 4

INPUT_NAMES = ("src", "bgr")
OUTPUT_NAMES = ("pha", "fgr")

BGMV2_IO = ModelIO(
    inputs=(
        TensorSpec("src", "image", layout="NCHW", value_range=(0.0, 1.0)),
        TensorSpec("bgr", "background", layout="NCHW", value_range=(0.0, 1.0)),
    ),
    outputs=(
        TensorSpec("pha", "alpha", layout="NCHW", value_range=(0.0, 1.0)),
        TensorSpec("fgr", "foreground", layout="NCHW", value_range=(0.0, 1.0)),
    ),
    # Full resolution in; sides must be multiples of 4 (the runtime crops by resizing).
    preprocess=Preprocess(scale=1.0 / 255.0, resize="none", multiple_of=MULTIPLE_OF),
)


def _official_file(backbone: str) -> WeightFile:
    return WeightFile(filename=f"pytorch_{backbone}.pth", sha256=None, size=None, license="MIT", sources=(),
                      download_page=DRIVE_FOLDER)


def _net() -> ModuleType:
    """mtc.models.bgmv2.net, imported on first use (a missing torch is reported with the extra to install)."""
    from mtc.export.torch_export import require_torch

    require_torch()
    from mtc.models.bgmv2 import net

    return net


def _build_onnx(backbone: str, refine_mode: str, weights: Path) -> onnx.ModelProto:
    net = _net()
    return net.export_network(net.load_network(backbone, weights, refine_mode))


def _build_reference(backbone: str, refine_mode: str, weights: Path) -> TorchBackend:
    from mtc.export.torch_export import TorchBackend

    return TorchBackend(_net().load_network(backbone, weights, refine_mode), input_names=INPUT_NAMES,
                        output_names=OUTPUT_NAMES)


# Small frames keep the check quick: 256x144 and 200x116 (multiples of 4, not of 32).
PARITY_CASES = ((256, 144, 2, None), (200, 116, 1, None))
# Max |diff| PyTorch vs ONNX Runtime allowed on pha/fgr in [0, 1] (1/40 of an 8-bit step);
# measured up to 2e-7 on random weights.
PARITY_TOLERANCE = 1e-4


def _variant(backbone: str, refine_mode: str) -> VariantSpec:
    name = backbone if refine_mode == "full" else f"{backbone}-{refine_mode}"
    return VariantSpec(name=name, weights=_official_file(backbone), io=BGMV2_IO,
                       build_onnx=functools.partial(_build_onnx, backbone, refine_mode),
                       build_reference=functools.partial(_build_reference, backbone, refine_mode),
                       exporter="torch", parity_cases=PARITY_CASES,
                       parity_tolerance=PARITY_TOLERANCE)


register(
    ModelSpec(
        name="bgmv2",
        task="image_matting",
        summary="BackgroundMattingV2: high-resolution matting given a clean background plate",
        license="MIT",
        paper="arXiv:2012.07810",
        input_description="RGB frame + background plate of the same size (sides multiples of 4)",
        purpose="people",
        variants={v.name: v for v in (_variant(b, m) for m in REFINE_MODES for b in BACKBONES)},
        default_variant="mobilenetv2",
        aliases=("backgroundmattingv2",),
    )
)
