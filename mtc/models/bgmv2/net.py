"""BGMv2's PyTorch modules (MattingRefine with a dense refiner), loading and ONNX export (imports torch).

Module and attribute names follow the official release, because its checkpoints store the
weights under those names; the backbones are the shared ones of :mod:`mtc.models.nn` in
torchvision's layout.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch
from torch import nn
from torch.nn import functional as F

from mtc.export.torch_export import export_onnx, load_checkpoint
from mtc.models.bgmv2 import BACKBONE_DOWNSAMPLE, INPUT_NAMES, OUTPUT_NAMES, REFINE_MODES, REFINE_THRESHOLD
from mtc.models.nn.mobilenetv2 import MobileNetV2
from mtc.models.nn.resnet import BLOCKS as RESNET_BLOCKS
from mtc.models.nn.resnet import ResNet

_DECODER_CHANNELS = (256, 128, 64, 48, 1 + 3 + 1 + 32)  # ASPP out ... pha, fgr residual, err, hidden
_SKIP_CHANNELS = {"mobilenetv2": (32, 24, 16, 6), "resnet": (512, 256, 64, 6)}  # 1/8, 1/4, 1/2, 1/1


def _resize(x, size, mode="bilinear"):
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


# --------------------------------------------------------------------------- ASPP (torchvision's DeepLabV3 layout)


def _conv_bn_relu(inp, oup, kernel, dilation=1):
    return nn.Sequential(nn.Conv2d(inp, oup, kernel, padding=dilation if kernel == 3 else 0, dilation=dilation,
                                   bias=False), nn.BatchNorm2d(oup), nn.ReLU())


class ASPPPooling(nn.Sequential):
    """The image-pooling branch: global pool, 1x1 conv, BN, ReLU, broadcast back."""

    def __init__(self, inp, oup):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(inp, oup, 1, bias=False), nn.BatchNorm2d(oup), nn.ReLU())

    def forward(self, x):
        pooled = super().forward(x)
        # Bilinear upsampling of a 1x1 map is a broadcast; expand says so without a Resize.
        return pooled.expand(-1, -1, x.shape[2], x.shape[3])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3 and the pooling branch, projected."""

    def __init__(self, inp, rates=(3, 6, 9), oup=256):
        super().__init__()
        self.convs = nn.ModuleList([_conv_bn_relu(inp, oup, 1), *(_conv_bn_relu(inp, oup, 3, r) for r in rates),
                                    ASPPPooling(inp, oup)])
        self.project = nn.Sequential(nn.Conv2d(oup * len(self.convs), oup, 1, bias=False), nn.BatchNorm2d(oup),
                                     nn.ReLU(), nn.Dropout(0.5))

    def forward(self, x):
        return self.project(torch.cat([conv(x) for conv in self.convs], 1))


# --------------------------------------------------------------------------- decoder and refiner


class Decoder(nn.Module):
    """Upsamples through the encoder's skips (1/8, 1/4, 1/2, the input) to 37 channels."""

    def __init__(self, channels, skips):
        super().__init__()
        self.conv1 = nn.Conv2d(skips[0] + channels[0], channels[1], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[1])
        self.conv2 = nn.Conv2d(skips[1] + channels[1], channels[2], 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels[2])
        self.conv3 = nn.Conv2d(skips[2] + channels[2], channels[3], 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels[3])
        self.conv4 = nn.Conv2d(skips[3] + channels[3], channels[4], 3, padding=1, bias=True)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x4, x3, x2, x1, x0):
        x = self.relu(self.bn1(self.conv1(torch.cat([_resize(x4, x3.shape[2:]), x3], 1))))
        x = self.relu(self.bn2(self.conv2(torch.cat([_resize(x, x2.shape[2:]), x2], 1))))
        x = self.relu(self.bn3(self.conv3(torch.cat([_resize(x, x1.shape[2:]), x1], 1))))
        return self.conv4(torch.cat([_resize(x, x0.shape[2:]), x0], 1))


class Refiner(nn.Module):
    """Dense form of the patch refiner (kernel size 3); see the package docstring."""

    def __init__(self, mode, threshold):
        super().__init__()
        self.mode = mode
        self.threshold = threshold
        self.conv1 = nn.Conv2d(32 + 6 + 4, 24, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.conv2 = nn.Conv2d(24, 16, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.conv3 = nn.Conv2d(16 + 6, 12, 3, bias=False)
        self.bn3 = nn.BatchNorm2d(12)
        self.conv4 = nn.Conv2d(12, 4, 3, bias=True)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, src, bgr, pha, fgr, err, hid):
        full = src.shape[2:]
        half = (full[0] // 2, full[1] // 2)
        src_bgr = torch.cat([src, bgr], 1)
        # Unpadded 3x3 convs: pad 3 px at 1/2 resolution and 2 px at full resolution, the
        # context each official patch crop carries.
        x = F.pad(_resize(torch.cat([hid, pha, fgr], 1), half), (3, 3, 3, 3))
        y = F.pad(_resize(src_bgr, half), (3, 3, 3, 3))
        x = self.relu(self.bn1(self.conv1(torch.cat([x, y], 1))))
        x = self.relu(self.bn2(self.conv2(x)))
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")  # (H/2 + 2) * 2 == H + 4
        x = self.relu(self.bn3(self.conv3(torch.cat([x, F.pad(src_bgr, (2, 2, 2, 2))], 1))))
        refined = self.conv4(x)
        if self.mode == "full":
            return refined[:, :1], refined[:, 1:]
        quarter = (full[0] // 4, full[1] // 4)
        selected = _resize(err, quarter) > self.threshold
        selected = _resize(selected.to(src.dtype), full, mode="nearest") > 0.5  # one flag per 4x4 patch
        coarse = _resize(torch.cat([pha, fgr], 1), full)
        out = torch.where(selected, refined, coarse)
        return out[:, :1], out[:, 1:]


class MattingRefine(nn.Module):
    """src, bgr (N x 3 x H x W in [0, 1], H and W divisible by 4) -> pha, fgr at full size.

    Args:
        backbone: "mobilenetv2", "resnet50" or "resnet101".
        refine_mode: "full" or "thresholding" (see the package docstring).
        refine_threshold: Coarse error above which a patch is refined ("thresholding").
        backbone_downsample: The base network runs at 1/k of the input.

    Raises:
        ValueError: For a refine mode that is not exportable ("sampling").
    """

    def __init__(self, backbone, *, refine_mode="full", refine_threshold=REFINE_THRESHOLD,
                 backbone_downsample=BACKBONE_DOWNSAMPLE):
        super().__init__()
        if refine_mode not in REFINE_MODES:
            raise ValueError(f"refine mode {refine_mode!r} is not exportable; use one of {REFINE_MODES}")
        self.backbone_downsample = backbone_downsample
        # Both encoders take frame and plate together (6 channels) and stop at 1/16 through
        # dilation, as DeepLabV3; they return the features at 1/2, 1/4, 1/8 and 1/16.
        if backbone == "mobilenetv2":
            self.backbone = MobileNetV2(6, layout="torchvision", output_stride=16, last_channels=None)
            self.aspp = ASPP(320)
            self.decoder = Decoder(_DECODER_CHANNELS, _SKIP_CHANNELS["mobilenetv2"])
        else:
            self.backbone = ResNet(RESNET_BLOCKS[backbone], in_channels=6)
            self.aspp = ASPP(2048)
            self.decoder = Decoder(_DECODER_CHANNELS, _SKIP_CHANNELS["resnet"])
        self.refiner = Refiner(refine_mode, refine_threshold)

    def coarse(self, src, bgr):
        """The base network at 1/k: alpha, foreground residual, error, hidden features."""
        k = self.backbone_downsample
        small = (src.shape[2] // k, src.shape[3] // k)
        x = torch.cat([_resize(src, small), _resize(bgr, small)], 1)
        x1, x2, x3, x4 = self.backbone(x)
        x = self.decoder(self.aspp(x4), x3, x2, x1, x)
        return x[:, 0:1].clamp(0.0, 1.0), x[:, 1:4], x[:, 4:5].clamp(0.0, 1.0), x[:, 5:].relu()

    def forward(self, src, bgr):
        pha, fgr = self.refiner(src, bgr, *self.coarse(src, bgr))
        return pha.clamp(0.0, 1.0), (fgr + src).clamp(0.0, 1.0)


def build_network(backbone: str, refine_mode: str = "full", *,
                  refine_threshold: float = REFINE_THRESHOLD) -> MattingRefine:
    """A randomly initialised MattingRefine in the official key layout."""
    return MattingRefine(backbone, refine_mode=refine_mode, refine_threshold=refine_threshold).eval()


def load_network(backbone: str, weights: Path, refine_mode: str = "full") -> MattingRefine:
    """MattingRefine with an official checkpoint loaded strictly (a `module.` prefix is stripped)."""
    net = build_network(backbone, refine_mode)
    load_checkpoint(net, weights, strip_prefixes=("module.",))
    return net


def export_network(net: MattingRefine) -> onnx.ModelProto:
    """The network as ONNX (opset 17), batch, height and width dynamic on every input and output."""
    dims = {0: "batch", 2: "height", 3: "width"}
    example = (torch.rand(1, 3, 288, 512), torch.rand(1, 3, 288, 512))
    return export_onnx(net, example, input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                       dynamic_axes={name: dims for name in INPUT_NAMES + OUTPUT_NAMES}, opset=17)
