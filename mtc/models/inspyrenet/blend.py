"""The two-pass pyramid blend of the official inference, as three graphs (imports torch).

Facts from the official `InSPyReNet.forward_inference` (github.com/plemeri/InSPyReNet,
`lib/InSPyReNet.py`, `lib/modules/layers.py`): when both sides of the image exceed `threshold`,
the network runs twice, on the image resized to the base size (`image_resized`, PIL bilinear)
and on the image itself at full resolution, and the two saliency pyramids are blended:

- d3 = the low-resolution pass's finest logits d0, resized (bilinear, align_corners=False) to
  the size of the full-resolution pass's d3 (1/8);
- for each finer level (p2 at 1/4, p1 at 1/2, p0 at full size) a transition mask of the current
  logits: sigmoid, then dilation minus erosion by an OpenCV ellipse (5, 9, 17 pixels across for
  p2, p1, p0; kornia's morphology, which ignores the map's border), then > 0.5; the mask is
  resized bilinearly to the Laplacian's size, multiplies the full-resolution pass's Laplacian,
  and the image pyramid reconstructs the next level from both;
- the output is sigmoid(d0) min-max normalised, (p - min) / (max - min + 1e-8).

So the low-resolution pass contributes the whole coarse map and the full-resolution pass only
the Laplacians, and only near edges (where the transition mask is 1).

The graphs, each static in height and width:

- :class:`LowResolutionPass` (`lr`): `image` at the full size -> `lr_d0`, the logits at the base
  size. The downscale is inside the graph: an antialiased bilinear resize (PIL's triangle filter,
  as `F.interpolate(..., antialias=True)`), written as two matrix products so that every backend
  runs the same arithmetic;
- :class:`HighResolutionPass` (`hr`): `image` -> `hr_p2`, `hr_p1`, `hr_p0`, the Laplacians;
- :class:`PyramidBlend` (`blend`): `lr_d0`, `hr_p2`, `hr_p1`, `hr_p0` -> `alpha`;
- :class:`SinglePass` (`single`): `lr_d0` -> `alpha`, for the frames the official code does not
  blend (a side at or below the threshold): the low-resolution pass's saliency, as the
  single-pass model gives it, resized to the full size the runtime expects.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mtc.models.inspyrenet.modules import ImagePyramid, resize
from mtc.models.inspyrenet.net import InSPyReNet, saliency

# Ellipse sizes of the official Transition(k) for the blend into p2, p1 and p0.
TRANSITION_SIZES = {"p2": 5, "p1": 9, "p0": 17}

LR_INPUTS, LR_OUTPUTS = ("image",), ("lr_d0",)
HR_INPUTS, HR_OUTPUTS = ("image",), ("hr_p2", "hr_p1", "hr_p0")
BLEND_INPUTS, BLEND_OUTPUTS = ("lr_d0", "hr_p2", "hr_p1", "hr_p0"), ("alpha",)
SINGLE_INPUTS, SINGLE_OUTPUTS = ("lr_d0",), ("alpha",)


def ellipse(size: int) -> np.ndarray:
    """(size, size) uint8 structuring element, OpenCV's `getStructuringElement(MORPH_ELLIPSE,
    (size, size))`: row i spans columns c - dx .. c + dx, dx = round(c * sqrt(1 - (i - r)^2 / r^2)),
    r = c = size // 2 (never halfway between integers for a square element, so rounding agrees)."""
    radius = size // 2
    element = np.zeros((size, size), np.uint8)
    for row in range(size):
        dy = row - radius
        half = int(round(radius * np.sqrt((radius * radius - dy * dy) / (radius * radius)))) if radius else 0
        element[row, max(radius - half, 0):min(radius + half + 1, size)] = 1
    return element


def ellipse_rectangles(size: int) -> tuple[tuple[int, int], ...]:
    """The ellipse as a union of centred rectangles, (half height, half width) each: for every
    distinct row half-width, the rows at least that wide are contiguous. A maximum over the
    ellipse is then the maximum of a few rectangular max-pools, which every backend runs."""
    element = ellipse(size)
    radius = size // 2
    widths = element.sum(axis=1) // 2  # half-width of each row (rows are centred and odd)
    rectangles = []
    for half_width in sorted(set(widths.tolist()), reverse=True):
        half_height = int(np.max(np.abs(np.nonzero(widths >= half_width)[0] - radius)))
        rectangles.append((half_height, int(half_width)))
    return tuple(rectangles)


class Transition(nn.Module):
    """The official `Transition(size)`: where the morphological gradient of sigmoid(logits) by the
    ellipse exceeds 0.5, i.e. near edges of the map (1 there, 0 elsewhere).

    Dilation and erosion consider only pixels inside the map (kornia's "geodesic" border); the
    max-pools' implicit padding never wins a maximum, which is the same."""

    def __init__(self, size: int):
        super().__init__()
        self.rectangles = ellipse_rectangles(size)

    def dilate(self, x: torch.Tensor) -> torch.Tensor:
        out = None
        for half_h, half_w in self.rectangles:
            pooled = F.max_pool2d(x, (2 * half_h + 1, 2 * half_w + 1), stride=1, padding=(half_h, half_w))
            out = pooled if out is None else torch.maximum(out, pooled)
        return out

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        x = torch.sigmoid(logits)
        gradient = self.dilate(x) + self.dilate(-x)  # dilation - erosion; erosion(x) = -dilation(-x)
        return (gradient > 0.5).to(x.dtype)


def antialiased_bilinear_weights(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) float32 matrix of a bilinear resize with antialiasing (PIL's triangle
    filter widened by the downscale factor, each row normalised), as `F.interpolate(...,
    mode="bilinear", antialias=True)` computes it; plain bilinear when upscaling."""
    scale = size_in / size_out
    support = max(scale, 1.0)
    weights = np.zeros((size_out, size_in), np.float64)
    for i in range(size_out):
        center = (i + 0.5) * scale
        low, high = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), size_in)
        taps = np.arange(low, high)
        tri = np.clip(1.0 - np.abs((taps - center + 0.5) / support), 0.0, None)
        weights[i, low:high] = tri / tri.sum()
    return weights.astype(np.float32)


class LowResolutionPass(nn.Module):
    """`image` (N, 3, H, W) at the full size -> `lr_d0` (N, 1, h, w): the network on the image
    downscaled to the base size h x w inside the graph."""

    def __init__(self, net: InSPyReNet, full_size: tuple[int, int], base_size: tuple[int, int]):
        super().__init__()
        self.net = net
        rows = antialiased_bilinear_weights(full_size[0], base_size[0])
        columns = antialiased_bilinear_weights(full_size[1], base_size[1]).T
        self.register_buffer("rows", torch.from_numpy(np.ascontiguousarray(rows)), persistent=False)
        self.register_buffer("columns", torch.from_numpy(np.ascontiguousarray(columns)), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(torch.matmul(torch.matmul(self.rows, image), self.columns))


class HighResolutionPass(nn.Module):
    """`image` (N, 3, H, W) -> the Laplacians `hr_p2` (1/4), `hr_p1` (1/2), `hr_p0` (full size)."""

    def __init__(self, net: InSPyReNet):
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pyramid = self.net.pyramid(image)
        return pyramid.p2, pyramid.p1, pyramid.p0


class PyramidBlend(nn.Module):
    """`lr_d0`, `hr_p2`, `hr_p1`, `hr_p0` -> `alpha` (N, 1, H, W): the blend and the official
    min-max normalisation (per image, where the official code takes the whole batch's min and
    max; the runtime runs batches of one)."""

    def __init__(self):
        super().__init__()
        self.image_pyramid = ImagePyramid(7, 1.0)
        self.transitions = nn.ModuleList(Transition(TRANSITION_SIZES[level]) for level in ("p2", "p1", "p0"))

    def forward(self, lr_d0: torch.Tensor, p2: torch.Tensor, p1: torch.Tensor, p0: torch.Tensor) -> torch.Tensor:
        # d3 has half the size of p2, the first Laplacian it is expanded to meet.
        logits = resize(lr_d0, (int(p2.shape[2]) // 2, int(p2.shape[3]) // 2))
        for transition, laplacian in zip(self.transitions, (p2, p1, p0)):
            mask = resize(transition(logits), (int(laplacian.shape[2]), int(laplacian.shape[3])))
            logits = self.image_pyramid.reconstruct(logits, mask * laplacian)
        return saliency(logits)


class SinglePass(nn.Module):
    """`lr_d0` (N, 1, h, w) -> `alpha` (N, 1, H, W): the saliency at the base size, then resized
    bilinearly to the full size (no weights)."""

    def __init__(self, full_size: tuple[int, int]):
        super().__init__()
        self.full_size = full_size

    def forward(self, lr_d0: torch.Tensor) -> torch.Tensor:
        return resize(saliency(lr_d0), self.full_size)


class TwoPassMatte(nn.Module):
    """The three graphs chained in PyTorch, `image` -> `alpha`, as the program runs them."""

    def __init__(self, net: InSPyReNet, full_size: tuple[int, int], base_size: tuple[int, int]):
        super().__init__()
        self.lr = LowResolutionPass(net, full_size, base_size)
        self.hr = HighResolutionPass(net)
        self.blend = PyramidBlend()
        self.single = SinglePass(full_size)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.blend(self.lr(image), *self.hr(image))
