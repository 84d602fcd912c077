"""Depth Anything V2 (Yang et al., 2024): the depth prior PDFNet is fed (imports torch).

Re-implemented from the facts of github.com/DepthAnything/Depth-Anything-V2 (`depth_anything_v2/
dpt.py`, `dinov2.py`, `util/blocks.py`, `util/transform.py`) so `depth_anything_v2_vits.pth`
(Apache-2.0) loads strictly: 239 keys, `pretrained.*` (a DINOv2 ViT-S/14, 175 keys) and
`depth_head.*` (the DPT head with features 64 and out_channels 48/96/192/384, 64 keys).

The network: blocks 2, 5, 8 and 11 of the ViT (each normed by its final norm) into the DPT head,
then a ReLU; the output is relative inverse depth (larger is nearer), unnormalised, at the input
size. `infer_image` of the official code feeds it the image resized (cv2 bicubic, keeping the
aspect ratio) so that its shorter side is 518 and both sides are multiples of 14, ImageNet
mean/std, and resizes the output back bilinearly with align_corners=True; see
:func:`depth_input_size` and :class:`mtc.models.pdfnet.graphs.DepthGraph`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mtc.models.nn.dinov2 import VIT_S14, DinoVisionTransformer, ViTConfig
from mtc.models.nn.dpt import DPTHead


@dataclass(frozen=True)
class DepthAnythingConfig:
    vit: ViTConfig
    features: int
    out_channels: tuple[int, int, int, int]
    layers: tuple[int, int, int, int]


# The official `model_configs['vits']` and `intermediate_layer_idx['vits']`.
DEPTH_ANYTHING_V2_SMALL = DepthAnythingConfig(VIT_S14, features=64, out_channels=(48, 96, 192, 384),
                                              layers=(2, 5, 8, 11))


def depth_input_size(height: int, width: int, size: int = 518, multiple: int = 14) -> tuple[int, int]:
    """The official `Resize(size, size, keep_aspect_ratio=True, ensure_multiple_of=multiple,
    resize_method='lower_bound')`: scale so the shorter side reaches `size`, round each side to a
    multiple (up, where rounding would fall below `size`)."""
    scale = max(size / height, size / width)

    def fit(x: float) -> int:
        y = round(x / multiple) * multiple
        return math.ceil(x / multiple) * multiple if y < size else y

    return fit(scale * height), fit(scale * width)


class DepthAnythingV2(nn.Module):
    """(B, 3, H, W) ImageNet-normalised RGB, sides multiples of 14 -> (B, 1, H, W) relative inverse depth."""

    def __init__(self, config: DepthAnythingConfig = DEPTH_ANYTHING_V2_SMALL):
        super().__init__()
        self.config = config
        self.pretrained = DinoVisionTransformer(config.vit)
        self.depth_head = DPTHead(config.vit.embed_dim, config.features, config.out_channels, config.vit.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patch = self.config.vit.patch_size
        rows, cols = int(x.shape[2]) // patch, int(x.shape[3]) // patch
        features = self.pretrained.intermediate_layers(x, self.config.layers)
        return torch.relu(self.depth_head(features, rows, cols))


def build_depth_model(config: DepthAnythingConfig = DEPTH_ANYTHING_V2_SMALL) -> DepthAnythingV2:
    return DepthAnythingV2(config).eval()


def load_strict(module: nn.Module, weights: Path, *, ignore: tuple[str, ...] = (), hint: str) -> None:
    """Load `weights` (`.pth` or safetensors, wrapper prefixes stripped) into `module`, refusing any
    missing, unexpected or mis-shaped key; keys starting with one of `ignore` are dropped first."""
    from mtc.errors import MtcError
    from mtc.models.birefnet.checkpoint import load_into, read_checkpoint

    state = {k: v for k, v in read_checkpoint(Path(weights)).items() if not k.startswith(ignore)}
    try:
        load_into(module, state, source=Path(weights).name)
    except MtcError as exc:
        raise MtcError(exc.message, hint=hint) from None


def load_depth_model(weights: Path, config: DepthAnythingConfig = DEPTH_ANYTHING_V2_SMALL) -> DepthAnythingV2:
    """The model with `weights` (`depth_anything_v2_vits.pth` or a safetensors file) loaded strictly."""
    model = DepthAnythingV2(config)
    load_strict(model, weights, hint="pass Depth Anything V2 Small's depth_anything_v2_vits.pth (the base and "
                                     "large models have other widths)")
    return model.eval()
