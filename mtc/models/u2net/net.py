"""U²-Net's PyTorch modules, checkpoint loading and ONNX export (imports torch).

Module and attribute names follow the official release (`model/u2net.py`), because its
checkpoints store the weights under those names: `stage1..6`, `stage5d..1d`, `side1..6` and
`outconv`, each RSU block's `rebnconvin`, `rebnconv1..L`, `rebnconv(L-1)d..1d`, and each
REBNCONV's `conv_s1`, `bn_s1`. That is also why REBNCONV is not the shared
:func:`mtc.models.nn.layers.conv_norm_act`: its keys are `0.*`/`1.*` and its conv has no bias,
where REBNCONV's conv has one in front of the BatchNorm.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch
from torch import nn
from torch.nn import functional as F

from mtc.export.torch_export import export_onnx, load_checkpoint
from mtc.models.contracts import IMAGENET_MEAN, IMAGENET_STD
from mtc.models.u2net import _EPS, ARCHITECTURES, INPUT_NAMES, MODEL_SIZE, OUTPUT_NAMES


def _upsample_like(x, ref):
    """`x` resized bilinearly to the height and width of `ref` (the official `_upsample_like`)."""
    return F.interpolate(x, size=ref.shape[2:], mode="bilinear", align_corners=False)


class REBNCONV(nn.Module):
    """3x3 conv (dilated) + BatchNorm + ReLU; attribute names are the checkpoint's."""

    def __init__(self, inp: int, oup: int, dilation: int = 1):
        super().__init__()
        self.conv_s1 = nn.Conv2d(inp, oup, 3, padding=dilation, dilation=dilation)
        self.bn_s1 = nn.BatchNorm2d(oup)
        self.relu_s1 = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu_s1(self.bn_s1(self.conv_s1(x)))


class RSU(nn.Module):
    """Residual U-block of height L: L-1 convs with 2x max-pooling between them, a dilated
    bottom conv, and a decoder that upsamples back, each level concatenating its skip."""

    def __init__(self, height: int, inp: int, mid: int, oup: int):
        super().__init__()
        self.height = height
        self.rebnconvin = REBNCONV(inp, oup)
        self.rebnconv1 = REBNCONV(oup, mid)
        for i in range(2, height):
            setattr(self, f"rebnconv{i}", REBNCONV(mid, mid))
        setattr(self, f"rebnconv{height}", REBNCONV(mid, mid, dilation=2))
        for i in range(height - 1, 1, -1):
            setattr(self, f"rebnconv{i}d", REBNCONV(2 * mid, mid))
        self.rebnconv1d = REBNCONV(2 * mid, oup)

    def forward(self, x):
        hxin = self.rebnconvin(x)
        skips, hx = [], hxin
        for i in range(1, self.height):
            hx = getattr(self, f"rebnconv{i}")(hx)
            skips.append(hx)
            if i < self.height - 1:
                hx = F.max_pool2d(hx, 2, stride=2, ceil_mode=True)
        hx = getattr(self, f"rebnconv{self.height}")(hx)
        for i in range(self.height - 1, 0, -1):
            hx = getattr(self, f"rebnconv{i}d")(torch.cat((hx, skips[i - 1]), 1))
            if i > 1:
                hx = _upsample_like(hx, skips[i - 2])
        return hx + hxin


class RSU4F(nn.Module):
    """RSU-4 with dilations (1, 2, 4, 8) instead of pooling, for the low-resolution stages."""

    def __init__(self, inp: int, mid: int, oup: int):
        super().__init__()
        self.rebnconvin = REBNCONV(inp, oup)
        self.rebnconv1 = REBNCONV(oup, mid, 1)
        self.rebnconv2 = REBNCONV(mid, mid, 2)
        self.rebnconv3 = REBNCONV(mid, mid, 4)
        self.rebnconv4 = REBNCONV(mid, mid, 8)
        self.rebnconv3d = REBNCONV(2 * mid, mid, 4)
        self.rebnconv2d = REBNCONV(2 * mid, mid, 2)
        self.rebnconv1d = REBNCONV(2 * mid, oup, 1)

    def forward(self, x):
        hxin = self.rebnconvin(x)
        hx1 = self.rebnconv1(hxin)
        hx2 = self.rebnconv2(hx1)
        hx3 = self.rebnconv3(hx2)
        hx4 = self.rebnconv4(hx3)
        hx3d = self.rebnconv3d(torch.cat((hx4, hx3), 1))
        hx2d = self.rebnconv2d(torch.cat((hx3d, hx2), 1))
        return self.rebnconv1d(torch.cat((hx2d, hx1), 1)) + hxin


def _rsu(height: int | str, inp: int, mid: int, oup: int) -> nn.Module:
    """The block of a stage configuration: RSU-L, or RSU-4F for height "4F"."""
    return RSU4F(inp, mid, oup) if height == "4F" else RSU(height, inp, mid, oup)


class U2Net(nn.Module):
    """The official U2NET / U2NETP graph; forward returns the fused logits-after-sigmoid d0."""

    def __init__(self, arch: str):
        super().__init__()
        stages, sides = ARCHITECTURES[arch]
        self.arch = arch
        for name, config in stages.items():
            setattr(self, name, _rsu(*config))
        for i, channels in enumerate(sides, start=1):
            setattr(self, f"side{i}", nn.Conv2d(channels, 1, 3, padding=1))
        self.outconv = nn.Conv2d(6, 1, 1)

    def forward(self, x):
        encoded = []
        hx = x
        for i in range(1, 6):
            hx = getattr(self, f"stage{i}")(hx)
            encoded.append(hx)
            hx = F.max_pool2d(hx, 2, stride=2, ceil_mode=True)
        hx6 = self.stage6(hx)
        decoded = [hx6]  # hx6, hx5d, hx4d, hx3d, hx2d, hx1d
        hx = hx6
        for i in range(5, 0, -1):
            skip = encoded[i - 1]
            hx = getattr(self, f"stage{i}d")(torch.cat((_upsample_like(hx, skip), skip), 1))
            decoded.append(hx)
        d1 = self.side1(decoded[-1])
        sides = [d1] + [_upsample_like(getattr(self, f"side{i}")(decoded[6 - i]), d1) for i in range(2, 7)]
        return torch.sigmoid(self.outconv(torch.cat(sides, 1)))


class U2NetMatte(nn.Module):
    """Export wrapper: [0, 1] RGB in, min-max normalised fused map out (official pre/post)."""

    def __init__(self, net: U2Net):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, src):
        peak = torch.amax(src, dim=(1, 2, 3), keepdim=True).clamp_min(_EPS)
        d0 = self.net((src / peak - self.mean) / self.std)
        low = torch.amin(d0, dim=(1, 2, 3), keepdim=True)
        high = torch.amax(d0, dim=(1, 2, 3), keepdim=True)
        return (d0 - low) / (high - low).clamp_min(_EPS)


def build_network(arch: str) -> U2Net:
    """A randomly initialised U2NET ("u2net") or U2NETP ("u2netp") in the official key layout."""
    return U2Net(arch).eval()


def load_network(arch: str, weights: Path) -> U2Net:
    """The official network with `weights` loaded strictly (a u2netp file is refused by u2net)."""
    net = build_network(arch)
    load_checkpoint(net, weights)
    return net


def matte_module(arch: str, weights: Path) -> U2NetMatte:
    """The exported computation: preprocessing, the network and the output normalisation."""
    return U2NetMatte(load_network(arch, weights)).eval()


def export_network(module: U2NetMatte) -> onnx.ModelProto:
    """The matte module as ONNX (opset 17), batch, height and width dynamic."""
    dims = {0: "batch", 2: "height", 3: "width"}
    return export_onnx(module, (torch.rand(1, 3, MODEL_SIZE, MODEL_SIZE),), input_names=INPUT_NAMES,
                       output_names=OUTPUT_NAMES, dynamic_axes={"src": dims, "alpha": dims}, opset=17)
