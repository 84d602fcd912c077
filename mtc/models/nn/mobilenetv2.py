"""MobileNetV2 (Sandler et al. 2018, expansion 6, width 1.0), shared by MODNet and BGMv2.

Both families' checkpoints hold the same network under different key layouts, so the block
layout is a parameter (see :class:`InvertedResidual`); the computation is the same.
"""

from __future__ import annotations

import functools

from torch import nn

from mtc.models.nn.layers import conv_norm_act

# (expansion t, output channels c, repeats n, first stride s) per stage.
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
LAYOUTS = ("torchvision", "flat")

_relu6 = functools.partial(nn.ReLU6, inplace=True)


class InvertedResidual(nn.Module):
    """1x1 expansion (none at expansion 1), 3x3 depthwise, linear 1x1 projection; residual if shapes allow.

    Args:
        cin: Input channels.
        cout: Output channels.
        stride: Stride of the depthwise conv.
        dilation: Dilation of the depthwise conv.
        expansion: Hidden channels per input channel.
        layout: Where the layers sit in ``conv``. "torchvision" nests each conv-BN-ReLU6 in its
            own Sequential (``conv.0.0.weight``, projection at ``conv.1``/``conv.2`` at expansion 1);
            "flat" lists every layer directly (``conv.0.weight``, ``conv.1.running_mean``, ...), the
            layout of the MobileNetV2 code MODNet's checkpoints were saved from.
    """

    def __init__(self, cin: int, cout: int, *, stride: int, dilation: int, expansion: int, layout: str):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"unknown MobileNetV2 layout {layout!r}; use one of {LAYOUTS}")
        hidden = round(cin * expansion)
        stages = [conv_norm_act(cin, hidden, 1, act=_relu6)] if expansion != 1 else []
        stages.append(conv_norm_act(hidden, hidden, 3, stride=stride, dilation=dilation, groups=hidden, act=_relu6))
        projection = [nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        if layout == "flat":
            stages = [layer for stage in stages for layer in stage]
        self.conv = nn.Sequential(*stages, *projection)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """The MobileNetV2 trunk as ``features`` (keys ``features.N.*``, classifier not included).

    Args:
        in_channels: Input channels (BGMv2 feeds frame and background plate together: 6).
        layout: Block layout, see :class:`InvertedResidual`.
        output_stride: 32, or 16 to trade the last stride for dilation as DeepLabV3 does (the
            first block of the dilated stage keeps the previous dilation).
        last_channels: Width of the final 1x1 conv-BN-ReLU6 (1280), or None to leave it out.

    ``forward`` returns the last feature map at each stride, 1/2 first (the final one includes
    the 1x1 conv when there is one).
    """

    def __init__(self, in_channels: int = 3, *, layout: str, output_stride: int = 32,
                 last_channels: int | None = 1280):
        super().__init__()
        layers = [conv_norm_act(in_channels, 32, 3, stride=2, act=_relu6)]
        strides = [2]  # the total stride after each layer
        channels, dilation = 32, 1
        for expansion, cout, repeats, stride in STAGES:
            first_dilation = dilation
            if strides[-1] * stride > output_stride:
                dilation *= stride
                stride = 1
            for i in range(repeats):
                layers.append(InvertedResidual(channels, cout, stride=stride if i == 0 else 1,
                                               dilation=first_dilation if i == 0 else dilation,
                                               expansion=expansion, layout=layout))
                strides.append(strides[-1] * stride if i == 0 else strides[-1])
                channels = cout
        if last_channels is not None:
            layers.append(conv_norm_act(channels, last_channels, 1, act=_relu6))
            strides.append(strides[-1])
        self.features = nn.Sequential(*layers)
        # Where each stride ends (a plain attribute: no checkpoint key).
        self.taps = tuple(i for i in range(len(strides)) if i + 1 == len(strides) or strides[i + 1] != strides[i])

    def forward(self, x):
        outputs = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                outputs.append(x)
        return outputs
