"""MobileNetV3-Large (Howard et al. 2019) in torchvision's layout, configured as RVM's encoder."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mtc.models.contracts import IMAGENET_MEAN, IMAGENET_STD
from mtc.models.nn.layers import conv_norm_act

# torchvision's table with the last stage dilated instead of strided, so the encoder stops at
# 1/16: per inverted residual block (kernel, expanded channels, out channels, squeeze-excite,
# activation, stride, dilation).
BLOCKS = (
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
# Indices into `features` after which the 1/2, 1/4, 1/8 and 1/16 features are taken.
TAPS = (1, 3, 6, 16)
EPS = 1e-3  # torchvision's MobileNetV3 batch norm


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round to a multiple of `divisor`, never more than 10 % down (MobileNet's channel rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class SqueezeExcitation(nn.Module):
    """Channel gate: global pool, 1x1 down to a quarter, ReLU, 1x1 up, hard sigmoid."""

    def __init__(self, channels: int):
        super().__init__()
        squeezed = make_divisible(channels // 4)
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x):
        weight = F.adaptive_avg_pool2d(x, 1)
        weight = F.hardsigmoid(self.fc2(self.relu(self.fc1(weight))))
        return weight * x


class InvertedResidual(nn.Module):
    """Expansion (if any), depthwise conv, squeeze-excite (if any), linear projection, in ``block``.

    Args:
        cin: Input channels.
        kernel: Depthwise kernel size.
        expanded: Hidden channels (no expansion conv when equal to `cin`).
        cout: Output channels.
        se: Whether to gate with :class:`SqueezeExcitation`.
        act: "relu" or "hardswish".
        stride: Depthwise stride (1 when dilated).
        dilation: Depthwise dilation.
        folded: Batch norms folded into the convs (see :func:`mtc.models.nn.layers.norm`).
    """

    def __init__(self, cin: int, kernel: int, expanded: int, cout: int, se: bool, act: str, stride: int,
                 dilation: int, *, folded: bool):
        super().__init__()
        act_cls = nn.Hardswish if act == "hardswish" else nn.ReLU
        layers = []
        if expanded != cin:
            layers.append(conv_norm_act(cin, expanded, 1, act=act_cls, folded=folded, eps=EPS))
        layers.append(conv_norm_act(expanded, expanded, kernel, stride=1 if dilation > 1 else stride,
                                    dilation=dilation, groups=expanded, act=act_cls, folded=folded, eps=EPS))
        if se:
            layers.append(SqueezeExcitation(expanded))
        layers.append(conv_norm_act(expanded, cout, 1, act=None, folded=folded, eps=EPS))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.block(x)
        return x + y if self.use_residual else y


class MobileNetV3LargeEncoder(nn.Module):
    """MobileNetV3-Large features (keys ``features.N.*`` as torchvision) at output stride 16.

    Args:
        folded: Batch norms folded into the convs (see :func:`mtc.models.nn.layers.norm`).

    ``forward`` takes RGB in 0..1 and returns the features at 1/2, 1/4, 1/8 and 1/16.
    """

    def __init__(self, *, folded: bool = False):
        super().__init__()
        layers = [conv_norm_act(3, 16, 3, stride=2, act=nn.Hardswish, folded=folded, eps=EPS)]
        channels = 16
        for kernel, expanded, cout, se, act, stride, dilation in BLOCKS:
            layers.append(InvertedResidual(channels, kernel, expanded, cout, se, act, stride, dilation, folded=folded))
            channels = cout
        layers.append(conv_norm_act(channels, 6 * channels, 1, act=nn.Hardswish, folded=folded, eps=EPS))
        self.features = nn.Sequential(*layers)
        # ImageNet normalisation happens inside the encoder (RVM's decoder sees raw 0..1 RGB);
        # not persistent, so the checkpoint keys stay torchvision's.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x):
        x = (x - self.mean) / self.std
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in TAPS:
                taps.append(x)
        return taps
