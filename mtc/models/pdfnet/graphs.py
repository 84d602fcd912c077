"""The two graphs of a PDFNet artifact, chained: `DepthGraph` then `PDFNetGraph` (imports torch).

Both take the same image: `image`, (B, 3, S, S) float RGB in [0, 1], already resized to the
model's size (1024 x 1024 officially; the official demo resizes with cv2 bilinear). Each graph
is static in height and width.

`DepthGraph`: `image` -> `depth` (B, 1, S, S), Depth Anything V2's relative inverse depth min-max
normalised to [0, 1] per image. It does what the official demo's `DAMV2.infer_image` and the
first line of `PDFNet_process.inference` do to the image: resize (bicubic, align_corners=False,
no antialias, as cv2's INTER_CUBIC) to :func:`~mtc.models.pdfnet.depth.depth_input_size` (518 x
518 for a square), ImageNet mean/std, the network, bilinear (align_corners=True) back to S x S,
then (d - min) / (max - min). Differences from the demo, all in the resizing: the demo runs the
depth model on the original image (its aspect ratio kept) and resizes the depth twice (back to
the original size, then cv2-bilinear to 1024); here it sees the S x S image and is resized once.
The demo also hands `infer_image` an RGB image, which converts "BGR to RGB" again, so its depth
model sees BGR; the depth maps PDFNet was trained and evaluated with (`Depth-prepare.ipynb`)
were made from correct RGB, which is what this graph feeds.

`PDFNetGraph`: `image`, `depth` -> `alpha` (B, 1, S, S) in [0, 1], the official
`inference(img, depth)[0]`: sigmoid of the final logits. It applies ImageNet mean/std to the
image and min-max normalises the depth again, as `inference` does (idempotent on `DepthGraph`'s
output; any depth map may be fed). Min and max are taken per image, where the official code
takes them over the whole batch (the same at batch 1).

Min-max divides by max(max - min, 1e-6) (the official code has no floor, so a constant depth
map gives NaN there).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mtc.models.pdfnet.depth import DepthAnythingV2, depth_input_size
from mtc.models.pdfnet.net import PDFNet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANGE_FLOOR = 1e-6

DEPTH_INPUTS = ("image",)
DEPTH_OUTPUTS = ("depth",)
PDFNET_INPUTS = ("image", "depth")
PDFNET_OUTPUTS = ("alpha",)


def imagenet_normalise(image: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype).view(1, 3, 1, 1)
    return (image - mean) / std


def min_max(x: torch.Tensor) -> torch.Tensor:
    """(x - min) / (max - min) per image (over channels, rows and columns)."""
    low = x.amin(dim=(1, 2, 3), keepdim=True)
    high = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x - low) / (high - low).clamp_min(RANGE_FLOOR)


class DepthGraph(nn.Module):
    """`image` (B, 3, H, W) RGB in [0, 1] -> `depth` (B, 1, H, W) in [0, 1]; see the module docstring."""

    def __init__(self, model: DepthAnythingV2, *, input_size: int = 518):
        super().__init__()
        self.model = model.eval()
        self.input_size = input_size

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width = int(image.shape[2]), int(image.shape[3])
        size = depth_input_size(height, width, self.input_size, self.model.config.vit.patch_size)
        x = F.interpolate(image, size=size, mode="bicubic", align_corners=False)
        depth = self.model(imagenet_normalise(x))
        depth = F.interpolate(depth, size=(height, width), mode="bilinear", align_corners=True)
        return min_max(depth)


class PDFNetGraph(nn.Module):
    """`image` (B, 3, S, S) RGB in [0, 1] and `depth` (B, 1, S, S) -> `alpha` (B, 1, S, S); see the module docstring."""

    def __init__(self, net: PDFNet):
        super().__init__()
        self.net = net.eval()

    def forward(self, image: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(imagenet_normalise(image), min_max(depth)))
