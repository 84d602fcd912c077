"""InSPyReNet's network, checkpoint loading and ONNX export (imports torch).

Module names follow the official `InSPyReNet` (`backbone`, `context1..5`, `decoder`,
`attention0..2`), because its checkpoints store the weights under them. The inference path is
built: the pyramid of saliency logits d3 (1/8) -> d2 -> d1 -> d0 (full size), each finer level
the coarser one expanded plus the Laplacian its SICA predicts. `InSPyReNet.pyramid` returns the
whole pyramid, which the two-pass blend (:mod:`.blend`) reads; the single pass uses only d0.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import onnx
import torch
from torch import nn

from mtc.errors import MtcError
from mtc.export.torch_export import export_onnx, load_checkpoint
from mtc.models.inspyrenet import INPUT_NAMES, MULTIPLE_OF, OUTPUT_NAMES, Architecture, Res2NetConfig
from mtc.models.inspyrenet.modules import PAAD, PAAE, SICA, ImagePyramid, resize
from mtc.models.nn.res2net import Res2Net
from mtc.models.nn.swin import SwinTransformer

_EPS = 1e-8  # the official min-max normalisation's denominator term


class Pyramid(NamedTuple):
    """One pass's saliency pyramid: logits d3 (1/8) to d0 (full size), Laplacians p2 (1/4) to p0 (full)."""

    d3: torch.Tensor
    d2: torch.Tensor
    d1: torch.Tensor
    d0: torch.Tensor
    p2: torch.Tensor
    p1: torch.Tensor
    p0: torch.Tensor


class SwinWithEmbedding(SwinTransformer):
    """The shared Swin v1 whose `forward` also returns the patch embedding first, as the
    official InSPyReNet Swin does: five maps (embedding, stages 1-4; strides 4, 4, 8, 16, 32)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        embedded = self.patch_embed(x)
        return (embedded, *self.stages(embedded))


def _backbone(arch: Architecture) -> nn.Module:
    config = arch.backbone
    if isinstance(config, Res2NetConfig):
        return Res2Net(config.blocks, dilations=config.dilations, last_stage_grid=config.last_stage_grid,
                       planes=config.planes, base_width=config.base_width, scale=config.scale)
    return SwinWithEmbedding(embed_dim=config.embed_dim, depths=config.depths, num_heads=config.num_heads,
                             window_size=config.window_size)


class InSPyReNet(nn.Module):
    """The network; `forward` returns the finest saliency logits d0 (N, 1, H, W).

    Args:
        arch: Backbone, inner width and the base size (the size the model was trained at,
            which fixes where each SICA pools its context).
    """

    def __init__(self, arch: Architecture):
        super().__init__()
        self.backbone = _backbone(arch)
        depth = arch.depth
        base_h, base_w = arch.base_size
        for i, channels in enumerate(arch.backbone.levels, start=1):
            self.add_module(f"context{i}", PAAE(channels, depth))
        self.decoder = PAAD(3 * depth, depth)
        self.attention0 = SICA(depth, depth, (base_h, base_w), lmap_in=True)
        self.attention1 = SICA(2 * depth, depth, (base_h // 2, base_w // 2), lmap_in=True)
        self.attention2 = SICA(2 * depth, depth, (base_h // 4, base_w // 4))
        self.image_pyramid = ImagePyramid(7, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pyramid(x).d0

    def pyramid(self, x: torch.Tensor) -> Pyramid:
        """The saliency logits d3 (1/8) to d0 (full size) and the Laplacians p2, p1, p0 between them."""
        height, width = int(x.shape[2]), int(x.shape[3])
        x1, x2, x3, x4, x5 = self.backbone(x)
        x1, x2, x3 = self.context1(x1), self.context2(x2), self.context3(x3)
        f3, d3 = self.decoder([x3, self.context4(x4), self.context5(x5)])  # 1/8

        f3 = resize(f3, (height // 4, width // 4))
        f2, p2 = self.attention2(torch.cat([x2, f3], dim=1), d3)
        d2 = self.image_pyramid.reconstruct(d3, p2)  # 1/4

        half = (height // 2, width // 2)
        f1, p1 = self.attention1(torch.cat([resize(x1, half), resize(f2, half)], dim=1), d2, p2)
        d1 = self.image_pyramid.reconstruct(d2, p1)  # 1/2

        _, p0 = self.attention0(resize(f1, (height, width)), d1, p1)
        return Pyramid(d3, d2, d1, self.image_pyramid.reconstruct(d1, p0), p2, p1, p0)


def saliency(logits: torch.Tensor) -> torch.Tensor:
    """The sigmoid of d0's logits, min-max normalised as the official inference does,
    (p - min) / (max - min + 1e-8), per image (the official code takes min and max over the
    whole batch; transparent-background runs batches of one)."""
    pred = torch.sigmoid(logits)
    low = torch.amin(pred, dim=(1, 2, 3), keepdim=True)
    high = torch.amax(pred, dim=(1, 2, 3), keepdim=True)
    return (pred - low) / (high - low + _EPS)


class InSPyReNetMatte(nn.Module):
    """`src` (ImageNet-normalised RGB) -> `alpha`, the saliency of one pass."""

    def __init__(self, net: InSPyReNet):
        super().__init__()
        self.net = net

    def forward(self, src: torch.Tensor) -> torch.Tensor:
        return saliency(self.net(src))


def build_network(arch: Architecture) -> InSPyReNet:
    """A randomly initialised InSPyReNet in the official key layout, in eval mode."""
    return InSPyReNet(arch).eval()


def load_network(arch: Architecture, weights: Path) -> InSPyReNet:
    """The network with an official checkpoint (a plain state dict) loaded strictly."""
    net = build_network(arch)
    load_checkpoint(net, weights)
    return net


def matte_module(arch: Architecture, weights: Path) -> InSPyReNetMatte:
    return InSPyReNetMatte(load_network(arch, weights)).eval()


def export_network(module: InSPyReNetMatte, *, size: tuple[int, int]) -> onnx.ModelProto:
    """The matte module as ONNX (opset 17) at `size` (height, width), batch dynamic.

    Static in height and width: Swin's windows and every SICA's pooling size are fixed by them.
    """
    height, width = size
    if height % MULTIPLE_OF or width % MULTIPLE_OF:
        raise MtcError(f"InSPyReNet needs sides that are multiples of {MULTIPLE_OF}, not {width}x{height}",
                       hint=f"round the size to a multiple of {MULTIPLE_OF}")
    batch = {0: "batch"}
    return export_onnx(module, (torch.zeros(1, 3, height, width),), input_names=INPUT_NAMES,
                       output_names=OUTPUT_NAMES, dynamic_axes={"src": batch, "alpha": batch}, opset=17)
