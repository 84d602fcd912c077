"""The DPT head (Ranftl et al., ICCV 2021) in Depth Anything's form (imports torch).

It turns four ViT token maps into one dense map. The attribute names give the checkpoint keys
(Depth Anything nests them under ``depth_head.``):

    projects.{0-3}.*                       1x1 convs to out_channels[i]
    resize_layers.{0,1,3}.*                4x and 2x transposed convs, (2: identity), a 3x3 stride-2 conv
    scratch.layer{1-4}_rn.weight           bias-free 3x3 convs to `features`
    scratch.refinenet{1-4}.out_conv.*, .resConfUnit{1,2}.conv{1,2}.*
    scratch.output_conv1.*, scratch.output_conv2.{0,2}.*

Every resize is bilinear with align_corners=True. The deepest fusion block keeps a first
residual unit it never uses (it has no skip input), because the checkpoints carry it. Only the
form without the class-token readout and without BatchNorm is built (`use_clstoken=False`,
`use_bn=False`, as all released Depth Anything V2 models use).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


def _size(x: torch.Tensor) -> tuple[int, int]:
    return int(x.shape[2]), int(x.shape[3])


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class ResidualConvUnit(nn.Module):
    """relu, 3x3 conv, relu, 3x3 conv, plus the input."""

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(F.relu(x)))) + x


class FeatureFusionBlock(nn.Module):
    """(coarser path [+ residual unit of the skip]) -> residual unit -> resize -> 1x1 conv."""

    def __init__(self, features: int):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        return self.out_conv(_resize(self.resConfUnit2(x), size))


class Scratch(nn.Module):
    def __init__(self, in_channels: Sequence[int], features: int):
        super().__init__()
        for i, channels in enumerate(in_channels, start=1):
            self.add_module(f"layer{i}_rn", nn.Conv2d(channels, features, 3, padding=1, bias=False))
        for i in range(1, 5):
            self.add_module(f"refinenet{i}", FeatureFusionBlock(features))
        self.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
        self.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 1, 1), nn.ReLU(), nn.Identity())


class DPTHead(nn.Module):
    """Four (B, N, C) token maps of a patch-`patch` ViT -> (B, 1, rows*patch, cols*patch), ReLU'd.

    Args:
        in_channels: The ViT's width.
        features: Width of the fusion path.
        out_channels: Widths of the four projected maps (finest first).
        patch: The ViT's patch size (the output is upsampled to the input size).
    """

    def __init__(self, in_channels: int, features: int, out_channels: Sequence[int], patch: int = 14):
        super().__init__()
        self.patch = patch
        self.projects = nn.ModuleList(nn.Conv2d(in_channels, c, 1) for c in out_channels)
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(out_channels[0], out_channels[0], 4, stride=4),
            nn.ConvTranspose2d(out_channels[1], out_channels[1], 2, stride=2),
            nn.Identity(),
            nn.Conv2d(out_channels[3], out_channels[3], 3, stride=2, padding=1),
        ])
        self.scratch = Scratch(out_channels, features)

    def forward(self, features: Sequence[torch.Tensor], rows: int, cols: int) -> torch.Tensor:
        maps = []
        for tokens, project, resize in zip(features, self.projects, self.resize_layers):
            x = tokens.transpose(1, 2).reshape(-1, int(tokens.shape[2]), rows, cols)
            maps.append(resize(project(x)))
        s = self.scratch
        l1, l2, l3, l4 = (getattr(s, f"layer{i}_rn")(m) for i, m in enumerate(maps, start=1))
        path = s.refinenet4(l4, None, _size(l3))
        path = s.refinenet3(path, l3, _size(l2))
        path = s.refinenet2(path, l2, _size(l1))
        path = s.refinenet1(path, l1, (2 * _size(l1)[0], 2 * _size(l1)[1]))
        out = _resize(s.output_conv1(path), (rows * self.patch, cols * self.patch))
        return s.output_conv2(out)
