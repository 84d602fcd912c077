"""MODNet's PyTorch modules, checkpoint loading and ONNX export (imports torch).

Module and attribute names follow the official release, because its checkpoints store the
weights under those names.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch
from torch import nn
from torch.nn import functional as F

from mtc.export.torch_export import export_onnx, load_checkpoint
from mtc.models.modnet import INPUT_NAMES, OUTPUT_NAMES
from mtc.models.nn.mobilenetv2 import MobileNetV2

HR_CHANNELS = 32
ENC_CHANNELS = (16, 24, 32, 96, 1280)  # MobileNetV2 features at 1/2, 1/4, 1/8, 1/16, 1/32


def _upsample2x(x):
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class Backbone(nn.Module):
    """The MobileNetV2 encoder under ``model.`` (the checkpoint's path), features at 1/2 .. 1/32."""

    def __init__(self):
        super().__init__()
        self.model = MobileNetV2(layout="flat", last_channels=ENC_CHANNELS[-1])

    def forward(self, x):
        return self.model(x)


class IBNorm(nn.Module):
    """BatchNorm on the first half of the channels, InstanceNorm without affine on the rest."""

    def __init__(self, channels: int):
        super().__init__()
        self.bnorm_channels = channels // 2
        self.bnorm = nn.BatchNorm2d(self.bnorm_channels, affine=True)
        self.inorm = nn.InstanceNorm2d(channels - self.bnorm_channels, affine=False)

    def forward(self, x):
        b = self.bnorm_channels
        return torch.cat((self.bnorm(x[:, :b]), self.inorm(x[:, b:])), 1)


class ConvIBNormReLU(nn.Module):
    """Conv (with bias), then optionally IBNorm and ReLU, under ``layers``."""

    def __init__(self, inp: int, oup: int, kernel: int, stride: int = 1, padding: int = 0, *,
                 ibn: bool = True, relu: bool = True):
        super().__init__()
        layers = [nn.Conv2d(inp, oup, kernel, stride=stride, padding=padding, bias=True)]
        if ibn:
            layers.append(IBNorm(oup))
        if relu:
            layers.append(nn.ReLU(inplace=True))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


class SEBlock(nn.Module):
    """Squeeze-and-excitation with fully connected layers (no biases)."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(channels, channels // reduction, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(channels // reduction, channels, bias=False), nn.Sigmoid())

    def forward(self, x):
        w = self.fc(self.pool(x).flatten(1))
        return x * w[:, :, None, None]


class LRBranch(nn.Module):
    """Low-resolution branch: SE on the 1/32 features, two 5x5 convs back up to 1/8."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        e = ENC_CHANNELS
        self.backbone = backbone
        self.se_block = SEBlock(e[4], reduction=4)
        self.conv_lr16x = ConvIBNormReLU(e[4], e[3], 5, padding=2)
        self.conv_lr8x = ConvIBNormReLU(e[3], e[2], 5, padding=2)
        self.conv_lr = ConvIBNormReLU(e[2], 1, 3, stride=2, padding=1, ibn=False, relu=False)  # training only

    def forward(self, img):
        enc2x, enc4x, _, _, enc32x = self.backbone(img)
        lr16x = self.conv_lr16x(_upsample2x(self.se_block(enc32x)))
        lr8x = self.conv_lr8x(_upsample2x(lr16x))
        return lr8x, enc2x, enc4x


class HRBranch(nn.Module):
    """High-resolution branch at 1/4 and 1/2, fed with the image at 1/2 and 1/4."""

    def __init__(self, hr: int):
        super().__init__()
        e = ENC_CHANNELS
        self.tohr_enc2x = ConvIBNormReLU(e[0], hr, 1)
        self.conv_enc2x = ConvIBNormReLU(hr + 3, hr, 3, stride=2, padding=1)
        self.tohr_enc4x = ConvIBNormReLU(e[1], hr, 1)
        self.conv_enc4x = ConvIBNormReLU(2 * hr, 2 * hr, 3, padding=1)
        self.conv_hr4x = nn.Sequential(ConvIBNormReLU(3 * hr + 3, 2 * hr, 3, padding=1),
                                       ConvIBNormReLU(2 * hr, 2 * hr, 3, padding=1),
                                       ConvIBNormReLU(2 * hr, hr, 3, padding=1))
        self.conv_hr2x = nn.Sequential(ConvIBNormReLU(2 * hr, 2 * hr, 3, padding=1),
                                       ConvIBNormReLU(2 * hr, hr, 3, padding=1),
                                       ConvIBNormReLU(hr, hr, 3, padding=1),
                                       ConvIBNormReLU(hr, hr, 3, padding=1))
        self.conv_hr = nn.Sequential(ConvIBNormReLU(hr + 3, hr, 3, padding=1),  # training only
                                     ConvIBNormReLU(hr, 1, 1, ibn=False, relu=False))

    def forward(self, img, enc2x, enc4x, lr8x):
        img2x = F.interpolate(img, scale_factor=0.5, mode="bilinear", align_corners=False)
        img4x = F.interpolate(img, scale_factor=0.25, mode="bilinear", align_corners=False)
        enc2x = self.tohr_enc2x(enc2x)
        hr4x = self.conv_enc2x(torch.cat((img2x, enc2x), 1))
        hr4x = self.conv_enc4x(torch.cat((hr4x, self.tohr_enc4x(enc4x)), 1))
        hr4x = self.conv_hr4x(torch.cat((hr4x, _upsample2x(lr8x), img4x), 1))
        return self.conv_hr2x(torch.cat((_upsample2x(hr4x), enc2x), 1))


class FusionBranch(nn.Module):
    """Fusion branch: upsamples to full size and ends in a sigmoid."""

    def __init__(self, hr: int):
        super().__init__()
        self.conv_lr4x = ConvIBNormReLU(ENC_CHANNELS[2], hr, 5, padding=2)
        self.conv_f2x = ConvIBNormReLU(2 * hr, hr, 3, padding=1)
        self.conv_f = nn.Sequential(ConvIBNormReLU(hr + 3, hr // 2, 3, padding=1),
                                    ConvIBNormReLU(hr // 2, 1, 1, ibn=False, relu=False))

    def forward(self, img, lr8x, hr2x):
        lr2x = _upsample2x(self.conv_lr4x(_upsample2x(lr8x)))
        f2x = self.conv_f2x(torch.cat((lr2x, hr2x), 1))
        return torch.sigmoid(self.conv_f(torch.cat((_upsample2x(f2x), img), 1)))


class MODNet(nn.Module):
    """Inference path: normalised RGB (N x 3 x H x W, H and W multiples of 32) -> matte in [0, 1]."""

    def __init__(self, hr_channels: int = HR_CHANNELS):
        super().__init__()
        self.backbone = Backbone()
        self.lr_branch = LRBranch(self.backbone)  # the same module again, as in the checkpoint
        self.hr_branch = HRBranch(hr_channels)
        self.f_branch = FusionBranch(hr_channels)

    def forward(self, img):
        lr8x, enc2x, enc4x = self.lr_branch(img)
        hr2x = self.hr_branch(img, enc2x, enc4x, lr8x)
        return self.f_branch(img, lr8x, hr2x)


def build_network() -> MODNet:
    """A randomly initialised MODNet whose state_dict has the official key layout (minus `module.`)."""
    return MODNet().eval()


def load_network(weights: Path) -> MODNet:
    """MODNet with an official checkpoint loaded (DataParallel's `module.` prefix is stripped)."""
    net = build_network()
    load_checkpoint(net, weights, strip_prefixes=("module.",))
    return net


def export_network(net: MODNet) -> onnx.ModelProto:
    """The inference path as ONNX (opset 17), batch, height and width dynamic."""
    dims = {0: "batch", 2: "height", 3: "width"}
    return export_onnx(net, (torch.zeros(1, 3, 288, 512),), input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                       dynamic_axes={"src": dims, "alpha": dims}, opset=17)
