"""InSPyReNet's blocks: context (PAA_e), decoder (PAA_d), attention (SICA), image pyramid (imports torch).

Attribute names are the official ones (`lib/modules/*.py`), because the checkpoints store the
weights under them. Two of the official reshapes reinterpret memory rather than move axes
(`SelfAttention`'s height mode and SICA's feature view); they are reproduced as they are, since
the released weights were trained with them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def resize(x: torch.Tensor, size: tuple[int, int], *, align_corners: bool = False) -> torch.Tensor:
    """Bilinear resize; skipped when `x` already has `size`, where bilinear is the identity
    (the graph then holds no Resize that does nothing)."""
    if (int(x.shape[2]), int(x.shape[3])) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


class ConvBN(nn.Module):
    """The official `Conv2d`: a bias-free conv with "same" padding, BatchNorm (keys `conv.*`, `bn.*`)
    unless `bn` is False, and an optional ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], *, dilation: int = 1,
                 bn: bool = True, relu: bool = False):
        super().__init__()
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        # Odd kernels only, as in every use: the official padding formula is then (k - 1) // 2 * dilation.
        self.conv = nn.Conv2d(cin, cout, (kh, kw), padding=((kh - 1) // 2 * dilation, (kw - 1) // 2 * dilation),
                              dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(cout) if bn else None
        self.relu = nn.ReLU(inplace=True) if relu else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.relu(x) if self.relu is not None else x


class SelfAttention(nn.Module):
    """Axial self-attention with a learned residual gain (`gamma`, zero-initialised in training).

    The official code views the NCHW map as (N, -1, L) with L the height ("h") or the width
    ("w"). For "w" that is attention along rows; for "h" it reinterprets memory (L consecutive
    elements lie along the width). Both are kept exactly: (N, C·H·W / L, L) reshapes.
    """

    def __init__(self, channels: int, mode: str):
        super().__init__()
        self.mode = mode
        self.query_conv = ConvBN(channels, channels // 8, 1)
        self.key_conv = ConvBN(channels, channels // 8, 1)
        self.value_conv = ConvBN(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels, height, width = (int(d) for d in x.shape[1:])
        axis = height if self.mode == "h" else width

        def rows(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(-1, int(t.shape[1]) * height * width // axis, axis)

        query = rows(self.query_conv(x)).transpose(1, 2)
        attention = torch.softmax(torch.bmm(query, rows(self.key_conv(x))), dim=-1)
        out = torch.bmm(rows(self.value_conv(x)), attention.transpose(1, 2))
        return self.gamma * out.reshape(-1, channels, height, width) + x


class PAAKernel(nn.Module):
    """Official `PAA_kernel`: 1x1, 1xk, kx1 convs, axial attention both ways, a 3x3 conv dilated by k."""

    def __init__(self, cin: int, cout: int, receptive: int):
        super().__init__()
        self.conv0 = ConvBN(cin, cout, 1)
        self.conv1 = ConvBN(cout, cout, (1, receptive))
        self.conv2 = ConvBN(cout, cout, (receptive, 1))
        self.conv3 = ConvBN(cout, cout, 3, dilation=receptive)
        self.Hattn = SelfAttention(cout, "h")
        self.Wattn = SelfAttention(cout, "w")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.conv1(self.conv0(x)))
        return self.conv3(self.Hattn(x) + self.Wattn(x))


class PAAE(nn.Module):
    """Official `PAA_e`, the context module on each backbone level: a 1x1 branch and three
    `PAA_kernel`s (k = 3, 5, 7) fused by a 3x3 conv, plus a 1x1 residual, then ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.relu = nn.ReLU(inplace=True)
        self.branch0 = ConvBN(cin, cout, 1)
        self.branch1 = PAAKernel(cin, cout, 3)
        self.branch2 = PAAKernel(cin, cout, 5)
        self.branch3 = PAAKernel(cin, cout, 7)
        self.conv_cat = ConvBN(4 * cout, cout, 3)
        self.conv_res = ConvBN(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = torch.cat((self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)), 1)
        return self.relu(self.conv_cat(branches) + self.conv_res(x))


class PAAD(nn.Module):
    """Official `PAA_d`, the decoder of the three coarsest levels: they are resized to the finest
    of them (bilinear, align_corners=True), concatenated coarsest first, convolved with axial
    attention in between; returns the features and the one-channel saliency logits."""

    def __init__(self, cin: int, depth: int):
        super().__init__()
        self.conv1 = ConvBN(cin, depth, 3)
        self.conv2 = ConvBN(depth, depth, 3)
        self.conv3 = ConvBN(depth, depth, 3)
        self.conv4 = ConvBN(depth, depth, 3)
        self.conv5 = ConvBN(depth, 1, 3, bn=False)
        self.Hattn = SelfAttention(depth, "h")
        self.Wattn = SelfAttention(depth, "w")

    def forward(self, levels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        size = (int(levels[0].shape[2]), int(levels[0].shape[3]))
        levels = [levels[0]] + [resize(f, size, align_corners=True) for f in levels[1:]]
        x = self.conv1(torch.cat(levels[::-1], dim=1))
        x = self.conv4(self.conv3(self.conv2(self.Hattn(x) + self.Wattn(x))))
        return x, self.conv5(x)


class SICA(nn.Module):
    """Official `SICA` (scale-invariant context attention).

    The coarser saliency logits (and, with `lmap_in`, the coarser Laplacian) become foreground,
    background and confusion probabilities; these pool the features, resized to the stage's
    size at the base resolution (`stage_size`), into a few context vectors that the features
    attend to. Returns the refined features and this level's Laplacian logits.

    Args:
        cin: Feature channels in.
        depth: Inner width.
        stage_size: (height, width) of this level at the base size: the official `base_size //
            2 ** stage`, which fixes where the context is pooled whatever the input size.
        lmap_in: Takes the coarser level's Laplacian too.
    """

    def __init__(self, cin: int, depth: int, stage_size: tuple[int, int], *, lmap_in: bool = False):
        super().__init__()
        self.depth = depth
        self.stage_size = stage_size
        self.conv_query = nn.Sequential(ConvBN(cin, depth, 3, relu=True), ConvBN(depth, depth, 3, relu=True))
        self.conv_key = nn.Sequential(ConvBN(cin, depth, 1, relu=True), ConvBN(depth, depth, 1, relu=True))
        self.conv_value = nn.Sequential(ConvBN(cin, depth, 1, relu=True), ConvBN(depth, depth, 1, relu=True))
        self.conv_out1 = ConvBN(depth, depth, 3, relu=True)
        self.conv_out2 = ConvBN(cin + depth, depth, 3, relu=True)
        self.conv_out3 = ConvBN(depth, depth, 3, relu=True)
        self.conv_out4 = ConvBN(depth, 1, 1)
        self.threshold = nn.Parameter(torch.tensor([0.5]))
        self.lthreshold = nn.Parameter(torch.tensor([0.5])) if lmap_in else None

    def forward(self, x: torch.Tensor, smap: torch.Tensor,
                lmap: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        channels, height, width = (int(d) for d in x.shape[1:])
        p = torch.sigmoid(resize(smap, (height, width))) - self.threshold
        prob = [torch.clip(p, 0, 1), torch.clip(-p, 0, 1), self.threshold - torch.abs(p)]
        if self.lthreshold is not None:
            lp = torch.sigmoid(resize(lmap, (height, width))) - self.lthreshold
            prob += [torch.clip(lp, 0, 1), torch.clip(-lp, 0, 1)]
        prob = torch.cat(prob, dim=1)
        regions = int(prob.shape[1])
        pixels = self.stage_size[0] * self.stage_size[1]
        # The official view of NCHW features as (N, pixels, C) reinterprets memory; kept as is.
        features = resize(x, self.stage_size).reshape(-1, pixels, channels)
        prob = resize(prob, self.stage_size).reshape(-1, regions, pixels)
        context = torch.bmm(prob, features).transpose(1, 2).unsqueeze(3)  # (N, C, regions, 1)

        query = self.conv_query(x).reshape(-1, self.depth, height * width).transpose(1, 2)
        key = self.conv_key(context).reshape(-1, self.depth, regions)
        value = self.conv_value(context).reshape(-1, self.depth, regions).transpose(1, 2)
        similarity = torch.softmax(self.depth ** -0.5 * torch.bmm(query, key), dim=-1)
        context = torch.bmm(similarity, value).transpose(1, 2).reshape(-1, self.depth, height, width)

        x = self.conv_out3(self.conv_out2(torch.cat([x, self.conv_out1(context)], dim=1)))
        return x, self.conv_out4(x)


def gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    """(size, size) float32 Gaussian, the outer product of OpenCV's `getGaussianKernel(size, sigma)`
    (computed in float64 and normalised to sum 1) with itself, as the official pyramid builds it."""
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-offsets ** 2 / (2 * sigma * sigma))
    g /= g.sum()
    return np.outer(g, g).astype(np.float32)


class ImagePyramid(nn.Module):
    """The Laplacian pyramid's expand and reconstruct steps (official `ImagePyramid(7, 1)`), on
    one-channel maps; its kernel is derived, not stored in checkpoints."""

    def __init__(self, size: int = 7, sigma: float = 1.0):
        super().__init__()
        self.pad = size // 2
        self.register_buffer("kernel", torch.from_numpy(gaussian_kernel(size, sigma))[None, None], persistent=False)

    def expand(self, x: torch.Tensor) -> torch.Tensor:
        """2x upsampling: zeros inserted after every pixel (pixel shuffle with three zero
        channels), reflect-padded, blurred with 4 x the kernel."""
        zeros = torch.zeros_like(x)
        x = F.pixel_shuffle(torch.cat([x, zeros, zeros, zeros], dim=1), 2)
        x = F.pad(x, (self.pad,) * 4, mode="reflect")
        return F.conv2d(x, self.kernel * 4)

    def reconstruct(self, coarse: torch.Tensor, laplacian: torch.Tensor) -> torch.Tensor:
        """The finer level: `coarse` expanded plus `laplacian` (resized to it, align_corners=True,
        as the official code always does; the identity when the sizes agree)."""
        expanded = self.expand(coarse)
        return expanded + resize(laplacian, (int(expanded.shape[2]), int(expanded.shape[3])), align_corners=True)
