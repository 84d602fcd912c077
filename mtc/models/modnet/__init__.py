"""MODNet (Ke et al., AAAI 2022, Apache-2.0): trimap-free portrait matting from one RGB image.

Re-implemented from the paper and the facts of the official release (layer shapes and
checkpoint key names), so the official `.ckpt` files load strictly:

- a MobileNetV2 encoder (expansion 6, width 1.0, last 1x1 conv to 1280 channels) whose 19
  `features` are stored under both `backbone.model.` and `lr_branch.backbone.` (the same module
  is registered twice, so the checkpoint holds two copies);
- a low-resolution branch: SE block (reduction 4) on the 1/32 features, two 5x5 convs with
  bilinear 2x upsampling down to 1/8;
- a high-resolution branch at 1/4 and 1/2 fed with the image at 1/2 and 1/4;
- a fusion branch that upsamples to full size and ends in a sigmoid;
- IBNorm (BatchNorm on the first half of the channels, InstanceNorm without affine on the
  rest) after every hidden conv. The InstanceNorm half exports as ONNX InstanceNormalization,
  which the FP16 pass must keep an eye on (its variance overflows FP16 on some backends).

The exported graph is the inference path only: `src` (1x3xHxW, RGB normalised with mean 0.5 /
std 0.5, H and W multiples of 32) -> `alpha` (1x1xHxW in [0, 1]). The semantic and detail heads
(`lr_branch.conv_lr`, `hr_branch.conv_hr`) are training-only but stay in the module because the
checkpoints hold their weights.

Resolution rule of the official demos (`ref_size = 512`): if both sides are below 512 or both
above, scale so the *shorter* side becomes 512, otherwise keep the size; then floor each side
to a multiple of 32. The manifest states it as resize "reference" with reference_side 512 and
multiple_of 32; the official demos resize with area interpolation, the runtime bilinearly.

The official checkpoints live in a Google Drive folder without direct links and with no
published checksum: they are used unverified (the artifact records their sha256).

This package holds the spec as data and must not import torch (the registry imports it to list
models); the modules live in ``net`` (imported by the build functions), the encoder is the
shared :mod:`mtc.models.nn.mobilenetv2` in its "flat" layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mtc.artifact.manifest import ModelIO, Preprocess, TensorSpec
from mtc.models.registry import ModelSpec, VariantSpec, register
from mtc.weights import WeightFile

if TYPE_CHECKING:
    from types import ModuleType

    import onnx

    from mtc.export.torch_export import TorchBackend

DRIVE_FOLDER = "https://drive.google.com/drive/folders/1umYmlCulvIFNaqPjwod1SayFmSRHziyR"
REFERENCE_SIDE = 512
MULTIPLE_OF = 32  # the encoder's output stride

INPUT_NAMES = ("src",)
OUTPUT_NAMES = ("alpha",)


def _official_file(filename: str) -> WeightFile:
    return WeightFile(filename=filename, sha256=None, size=None, license="Apache-2.0", sources=(),
                      download_page=DRIVE_FOLDER)


PHOTOGRAPHIC = _official_file("modnet_photographic_portrait_matting.ckpt")
WEBCAM = _official_file("modnet_webcam_portrait_matting.ckpt")

MODNET_IO = ModelIO(
    inputs=(TensorSpec("src", "image", layout="NCHW", value_range=(-1.0, 1.0)),),
    outputs=(TensorSpec("alpha", "alpha", layout="NCHW", value_range=(0.0, 1.0)),),
    preprocess=Preprocess(scale=1.0 / 255.0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize="reference",
                          reference_side=REFERENCE_SIDE, multiple_of=MULTIPLE_OF),
)


def _net() -> ModuleType:
    """mtc.models.modnet.net, imported on first use (a missing torch is reported with the extra to install)."""
    from mtc.export.torch_export import require_torch

    require_torch()
    from mtc.models.modnet import net

    return net


def build_onnx(weights: Path) -> onnx.ModelProto:
    """The FP32 ONNX of an official checkpoint (imports torch)."""
    net = _net()
    return net.export_network(net.load_network(weights))


def build_reference(weights: Path) -> TorchBackend:
    """The PyTorch network of an official checkpoint, for the parity check (imports torch)."""
    from mtc.export.torch_export import TorchBackend

    return TorchBackend(_net().load_network(weights), input_names=INPUT_NAMES, output_names=OUTPUT_NAMES)


# 512x288 runs as is; 520x200 (not a multiple of 32) is floored to 512x192 by the resize rule.
PARITY_CASES = ((512, 288, 2, None), (520, 200, 2, None))
# Max |diff| PyTorch vs ONNX Runtime allowed on alpha in [0, 1] (1/40 of an 8-bit step). The
# InstanceNorm halves differ most: measured up to 1.3e-5 on random weights, above the 1e-5 default.
PARITY_TOLERANCE = 1e-4


def _variant(name: str, weights: WeightFile) -> VariantSpec:
    return VariantSpec(name=name, weights=weights, io=MODNET_IO, build_onnx=build_onnx,
                       build_reference=build_reference, exporter="torch", parity_cases=PARITY_CASES,
                       parity_tolerance=PARITY_TOLERANCE)


register(
    ModelSpec(
        name="modnet",
        task="image_matting",
        summary="MODNet: real-time trimap-free portrait matting (photographic or webcam weights)",
        license="Apache-2.0",
        paper="arXiv:2011.11961",
        input_description="RGB portrait image or video frame, any size (rescaled around 512 px)",
        purpose="people",
        variants={
            "photographic": _variant("photographic", PHOTOGRAPHIC),
            "webcam": _variant("webcam", WEBCAM),
        },
        default_variant="photographic",
    )
)
