"""Res2Net v1b (Gao et al., TPAMI 2021) in the official layout of `res2net50_v1b_26w_4s`.

v1b differs from the original Res2Net in two places, both kept here because checkpoints store
their weights: a deep stem (three 3x3 convs, `conv1.0/1/3/4/6`, then `bn1`) instead of one 7x7,
and a downsampling shortcut that average-pools before its 1x1 conv (`downsample.1/2`; index 0 is
the pooling, which holds no weights).

Each bottleneck splits its 1x1-conv output into `scale` groups of `width` channels; every group
but the last goes through its own 3x3 conv (`convs.i`, `bns.i`), a "normal" block adding the
previous group's output first; the last group passes through unchanged ("normal") or average-
pooled ("stage", the first block of a stage, which also carries the stride).

These modules import torch at the top: only the families' ``net`` modules import them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

BLOCKS = {"res2net50_v1b_26w_4s": (3, 4, 6, 3)}
PLANES = (64, 128, 256, 512)  # inner widths of the four stages; each outputs planes * 4 channels


class Bottle2neck(nn.Module):
    """The Res2Net bottleneck, with the official key names.

    Args:
        cin: Input channels.
        planes: The stage's inner width; the block outputs ``planes * expansion`` channels.
        stride: Stride of the 3x3 convs (and of the last group's pooling in a "stage" block).
        dilation: Dilation (and padding) of the 3x3 convs.
        downsample: Projection of the identity path when the shape changes, else None.
        first: The first block of a stage ("stage" type): groups are not chained and the last
            one is average-pooled.
        base_width: Channels per group at planes = 64.
        scale: Number of groups.
    """

    expansion = 4

    def __init__(self, cin: int, planes: int, *, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None, first: bool = False, base_width: int = 26, scale: int = 4):
        super().__init__()
        width = int(math.floor(planes * (base_width / 64.0)))
        self.width = width
        self.first = first
        self.conv1 = nn.Conv2d(cin, width * scale, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width * scale)
        branches = max(1, scale - 1)
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, stride, padding=dilation, dilation=dilation, bias=False)
                                   for _ in range(branches))
        self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(branches))
        # count_include_pad stays True, as in the official block.
        self.pool = nn.AvgPool2d(3, stride, padding=1) if first and scale > 1 else None
        self.conv3 = nn.Conv2d(width * scale, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = torch.split(self.relu(self.bn1(self.conv1(x))), self.width, 1)
        outputs, y = [], None
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            y = groups[i] if y is None or self.first else y + groups[i]
            y = self.relu(bn(conv(y)))
            outputs.append(y)
        if len(groups) > len(self.convs):
            rest = groups[len(self.convs)]
            outputs.append(self.pool(rest) if self.pool is not None else rest)
        out = self.bn3(self.conv3(torch.cat(outputs, 1)))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Res2Net(nn.Module):
    """The Res2Net v1b trunk without classifier; ``forward`` returns five features: the stem
    after max-pooling (64 channels, 1/4) and the outputs of ``layer1..4``.

    Args:
        blocks: Bottlenecks per stage, e.g. ``BLOCKS["res2net50_v1b_26w_4s"]``.
        strides: Stride of each stage's first block.
        dilations: Dilation of each stage's 3x3 convs.
        last_stage_grid: Multipliers of the last stage's dilation, one per block (multi-grid);
            None: 1 for every block.
        planes: Inner width of each stage (reduced only in tests).
        base_width: Channels per group at planes = 64.
        scale: Groups per bottleneck.
    """

    def __init__(self, blocks: Sequence[int], *, strides: Sequence[int] = (1, 2, 2, 2),
                 dilations: Sequence[int] = (1, 1, 1, 1), last_stage_grid: Sequence[int] | None = None,
                 planes: Sequence[int] = PLANES, base_width: int = 26, scale: int = 4):
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, 1, 1, bias=False),
        )
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        channels = 64
        grids = [[1] * n for n in blocks]
        if last_stage_grid is not None:
            if len(last_stage_grid) != blocks[-1]:
                raise ValueError(f"last_stage_grid needs {blocks[-1]} entries, got {len(last_stage_grid)}")
            grids[-1] = list(last_stage_grid)
        for index, (count, width, stride, dilation, grid) in enumerate(
                zip(blocks, planes, strides, dilations, grids), start=1):
            cout = width * Bottle2neck.expansion
            downsample = None
            if stride != 1 or channels != cout:
                downsample = nn.Sequential(
                    nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False),
                    nn.Conv2d(channels, cout, 1, bias=False),
                    nn.BatchNorm2d(cout),
                )
            # The first block takes the stage's dilation as is; multi-grid applies from the second on.
            layers = [Bottle2neck(channels, width, stride=stride, dilation=dilation, downsample=downsample,
                                  first=True, base_width=base_width, scale=scale)]
            layers += [Bottle2neck(cout, width, dilation=dilation * grid[i], base_width=base_width, scale=scale)
                       for i in range(1, count)]
            self.add_module(f"layer{index}", nn.Sequential(*layers))
            channels = cout
        self.channels = (64, *(p * Bottle2neck.expansion for p in planes))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features = [x]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            features.append(x)
        return features
