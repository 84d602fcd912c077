"""PDFNet (Liu, Fu and Zhao, 2025, MIT): dichotomous image segmentation with a depth prior.

The network is re-implemented from the facts of github.com/Tennine2077/PDFNet in the official
key layout (:mod:`.net`); its depth prior, Depth Anything V2 Small (Apache-2.0), from those of
github.com/DepthAnything/Depth-Anything-V2 (:mod:`.depth`, on :mod:`mtc.models.nn.dinov2` and
:mod:`mtc.models.nn.dpt`). An artifact holds two graphs (:mod:`.graphs`): the depth model, then
PDFNet fed the same image and the depth map.

This package must not import torch (the registry imports family packages to list models).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from mtc.artifact.manifest import ModelIO, Preprocess, TensorSpec
from mtc.artifact.program import GraphSpec, Phase, Program, Step
from mtc.models.contracts import TRANSFORMER_IMAGE_RECIPE
from mtc.models.registry import ModelSpec, VariantSpec, register
from mtc.weights import UrlSource, WeightFile

if TYPE_CHECKING:
    from mtc.export.program import ProgramBuild

INPUT_SIZE = 1024  # the official inference size (args.input_size): square
SIZE_MULTIPLE = 256  # sides must be multiples of 32 (Swin) x 8 (the patch grid)
DEPTH_INPUT_SIZE = 518  # Depth Anything V2's shorter side (`infer_image(input_size=518)`)
DEPTH_PATCH = 14

WEIGHT_FILES = {
    "pdfnet": {
        "name": "PDFNet_Best.pth",
        "license": "MIT",
        "url": "https://drive.google.com/drive/folders/1dqkFVR4TElSRFNHhu6er45OQkoHhJsZz",
    },
    "depth": {
        "name": "depth_anything_v2_vits.pth",
        "license": "Apache-2.0",
        "url": "https://huggingface.co/depth-anything/Depth-Anything-V2-Small/resolve/main/depth_anything_v2_vits.pth",
    },
}


# ---- the registered family (data; torch only inside the build functions) --------------------

LICENSE = "MIT (PDFNet); Apache-2.0 (Depth Anything V2 Small, the depth prior)"


def program() -> Program:
    """The depth model, then PDFNet on the image and the depth map."""
    return Program(
        graphs=(GraphSpec("depth", "depth.onnx", ("image",), ("depth",)),
                GraphSpec("pdfnet", "pdfnet.onnx", ("image", "depth"), ("alpha",))),
        frame=Phase((Step(op="run", graph="depth"), Step(op="run", graph="pdfnet"))))


def model_io(size: int = INPUT_SIZE) -> ModelIO:
    """RGB in [0, 1] resized to size x size (the graphs normalise it themselves), alpha out."""
    return ModelIO(
        inputs=(TensorSpec("image", "image", shape=(1, 3, size, size), layout="NCHW", value_range=(0.0, 1.0)),),
        outputs=(TensorSpec("alpha", "alpha", shape=(1, 1, size, size), layout="NCHW", value_range=(0.0, 1.0)),),
        preprocess=Preprocess(scale=1.0 / 255.0, resize="fixed", fixed_size=(size, size), multiple_of=SIZE_MULTIPLE))


def _weight_file(key: str, *, page: str) -> WeightFile:
    entry = WEIGHT_FILES[key]
    # Google Drive folders cannot be fetched by URL: the PDFNet file comes by hand (--weights).
    sources = (UrlSource(entry["url"]),) if "drive.google.com" not in entry["url"] else ()
    return WeightFile(filename=entry["name"], sha256=None, size=None, license=entry["license"], sources=sources,
                      download_page=page)


WEIGHTS = _weight_file("pdfnet", page=WEIGHT_FILES["pdfnet"]["url"])
DEPTH_WEIGHTS = _weight_file("depth", page="https://huggingface.co/depth-anything/Depth-Anything-V2-Small")
# One frame at the official size: a Swin-B pass over the image and its 64 tiles takes minutes on a CPU.
PARITY_CASES = ((INPUT_SIZE, INPUT_SIZE, 1, None),)
PARITY_TOLERANCE = 1e-4  # 1/40 of an 8-bit step; the reduced graphs measure about 1e-5 (tests/models)


def build_program(weights: Path, *, depth_weights: Path | None = None, **sizes) -> ProgramBuild:
    """The two graphs from PDFNet's checkpoint and Depth Anything V2 Small's (fetched, or the file
    given); `sizes` reduce the networks for tests. Imports torch."""
    from mtc.export.torch_export import require_torch
    from mtc.weights import fetch_weights

    require_torch()
    from mtc.models.pdfnet import export

    return export.build(weights, depth_weights or fetch_weights(DEPTH_WEIGHTS), **sizes)


register(
    ModelSpec(
        name="pdfnet",
        task="image_matting",
        summary="PDFNet: high-resolution dichotomous segmentation with a depth prior (Depth Anything V2 Small)",
        license=LICENSE,
        paper="arXiv:2503.06100",
        input_description="RGB image, any size (resized to 1024x1024)",
        variants={"swin-b": VariantSpec(name="swin-b", weights=WEIGHTS, io=model_io(),
                                        build_program=functools.partial(build_program), exporter="torch",
                                        parity_cases=PARITY_CASES, parity_tolerance=PARITY_TOLERANCE,
                                        quantization=TRANSFORMER_IMAGE_RECIPE)},
        default_variant="swin-b",
        purpose="objects",
    )
)
