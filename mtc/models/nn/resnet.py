"""ResNet trunks in torchvision's layout.

:class:`ResNet` (ResNet-50/101, last stage dilated) is shared by RVM and BGMv2; :class:`BasicBlock` and
:func:`stage` let a family assemble its own trunk under other attribute names (MatAnyone keeps
only three stages and calls the first one `res2`).
"""

from __future__ import annotations

import functools

from torch import nn

from mtc.models.nn.layers import norm

# Bottleneck blocks per stage.
BLOCKS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}

_relu = functools.partial(nn.ReLU, inplace=True)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (the stride sits on the 3x3 conv), torchvision's key names.

    Args:
        cin: Input channels.
        planes: Inner width; the block outputs ``planes * expansion`` channels.
        stride: Stride of the 3x3 conv.
        dilation: Dilation of the 3x3 conv.
        downsample: Projection of the identity path when the shape changes, else None.
        folded: Batch norms folded into the convs (see :func:`mtc.models.nn.layers.norm`).
    """

    expansion = 4

    def __init__(self, cin: int, planes: int, *, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None, folded: bool = False):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=folded)
        self.bn1 = norm(planes, folded=folded)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=folded)
        self.bn2 = norm(planes, folded=folded)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=folded)
        self.bn3 = norm(cout, folded=folded)
        self.relu = _relu()
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + identity)


class BasicBlock(nn.Module):
    """ResNet-18/34 block: two 3x3 convs (the first one strided), torchvision's key names.

    Args:
        cin: Input channels.
        planes: Output channels (``expansion`` is 1).
        stride: Stride of the first conv.
        downsample: Projection of the identity path when the shape changes, else None.
        folded: Batch norms folded into the convs (see :func:`mtc.models.nn.layers.norm`).
    """

    expansion = 1

    def __init__(self, cin: int, planes: int, *, stride: int = 1, downsample: nn.Module | None = None,
                 folded: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=folded)
        self.bn1 = norm(planes, folded=folded)
        self.relu = _relu()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=folded)
        self.bn2 = norm(planes, folded=folded)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + identity)


def stage(block: type[BasicBlock] | type[Bottleneck], cin: int, planes: int, blocks: int, *, stride: int,
          folded: bool = False) -> nn.Sequential:
    """One undilated ResNet stage (``layerN``): the first block strides and projects the identity
    path when the shape changes (keys ``0.downsample.0/1``), the others keep the shape.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        cin: Input channels.
        planes: The blocks' inner width; the stage outputs ``planes * block.expansion`` channels.
        blocks: Number of blocks.
        stride: Stride of the first block.
        folded: Batch norms folded into the convs (see :func:`mtc.models.nn.layers.norm`).
    """
    cout = planes * block.expansion
    downsample = None
    if stride != 1 or cin != cout:
        downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=folded), norm(cout, folded=folded))
    layers = [block(cin, planes, stride=stride, downsample=downsample, folded=folded)]
    layers += [block(cout, planes, folded=folded) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class ResNet(nn.Module):
    """A ResNet without pooling head; ``layer4`` trades its stride for dilation (output stride 16).

    Args:
        blocks: Bottlenecks per stage, e.g. ``BLOCKS["resnet50"]``.
        in_channels: Input channels (BGMv2 feeds frame and background plate together: 6).
        folded: Batch norms folded into the convs (see :func:`mtc.models.nn.layers.norm`).

    ``forward`` returns the features at 1/2 (the stem, after its ReLU), 1/4, 1/8 and 1/16.
    """

    def __init__(self, blocks: tuple[int, int, int, int], *, in_channels: int = 3, folded: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=folded)
        self.bn1 = norm(64, folded=folded)
        self.relu = _relu()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self._channels, self._dilation = 64, 1
        self.layer1 = self._stage(64, blocks[0], stride=1, dilate=False, folded=folded)
        self.layer2 = self._stage(128, blocks[1], stride=2, dilate=False, folded=folded)
        self.layer3 = self._stage(256, blocks[2], stride=2, dilate=False, folded=folded)
        self.layer4 = self._stage(512, blocks[3], stride=2, dilate=True, folded=folded)

    def _stage(self, planes: int, blocks: int, *, stride: int, dilate: bool, folded: bool) -> nn.Sequential:
        first_dilation = self._dilation
        if dilate:  # the first block keeps the previous dilation, the others take the stride's
            self._dilation *= stride
            stride = 1
        cout = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self._channels != cout:
            downsample = nn.Sequential(nn.Conv2d(self._channels, cout, 1, stride, bias=folded),
                                       norm(cout, folded=folded))
        layers = [Bottleneck(self._channels, planes, stride=stride, dilation=first_dilation,
                             downsample=downsample, folded=folded)]
        self._channels = cout
        layers += [Bottleneck(cout, planes, dilation=self._dilation, folded=folded) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        f1 = self.relu(self.bn1(self.conv1(x)))
        f2 = self.layer1(self.maxpool(f1))
        f3 = self.layer2(f2)
        return [f1, f2, f3, self.layer4(self.layer3(f3))]
