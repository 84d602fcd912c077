"""DINOv2 vision transformer (Oquab et al., 2023) as a dense-prediction backbone (imports torch).

The layout is the one DINOv2's own code gives (and Depth Anything embeds under ``pretrained.``):

    cls_token (1, 1, C), pos_embed (1, 1 + G*G, C), mask_token (1, C)
    patch_embed.proj.*                                      (a patch x patch conv, stride patch)
    blocks.{i}.norm1.*, .attn.qkv.*, .attn.proj.*, .ls1.gamma, .norm2.*, .mlp.fc1.*, .mlp.fc2.*, .ls2.gamma
    norm.*

with pre-norm blocks `x + ls1(attn(norm1(x)))`, `x + ls2(mlp(norm2(x)))`, LayerNorm eps 1e-6,
LayerScale, exact GELU, no register tokens. `mask_token` is a training-time parameter kept for the
layout only.

The position embedding is learned for a G x G grid (37 x 37 for the 518-pixel, patch-14 models).
Any other grid gets it resized as the official code does: bicubic (no antialias) with the scale
factor `(grid + offset) / G` (offset 0.1) rather than the plain size ratio, which shifts the
sampling positions slightly; the grid given exactly is used as is. The grid is read as Python
ints, so an export is static in height and width.

Attention is written out as MatMul and Softmax, like :mod:`mtc.models.nn.swin`, so a quantizer
sees the two MatMuls and the Softmax.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from mtc.models.nn.layers import Mlp


@dataclass(frozen=True)
class ViTConfig:
    """A DINOv2 ViT: widths and the grid its position embedding was learned for."""

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int = 14
    image_size: int = 518
    mlp_ratio: float = 4.0
    interpolate_offset: float = 0.1


VIT_S14 = ViTConfig(embed_dim=384, depth=12, num_heads=6)
VIT_B14 = ViTConfig(embed_dim=768, depth=12, num_heads=12)
VIT_L14 = ViTConfig(embed_dim=1024, depth=24, num_heads=16)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, channels = int(x.shape[1]), int(x.shape[2])
        qkv = self.qkv(x).reshape(-1, tokens, 3, self.heads, channels // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(-1, tokens, channels))


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, in_channels: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, H/p * W/p, C) tokens, row-major."""
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoVisionTransformer(nn.Module):
    """The DINOv2 ViT; :meth:`intermediate_layers` gives the normed patch tokens of chosen blocks."""

    def __init__(self, config: ViTConfig, in_channels: int = 3):
        super().__init__()
        self.config = config
        dim = config.embed_dim
        grid = config.image_size // config.patch_size
        self.patch_embed = PatchEmbed(config.patch_size, in_channels, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))
        self.blocks = nn.ModuleList(Block(dim, config.num_heads, config.mlp_ratio) for _ in range(config.depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mask_token = nn.Parameter(torch.zeros(1, dim))  # training only; in the layout

    def position_embedding(self, rows: int, cols: int) -> torch.Tensor:
        """(1, 1 + rows*cols, C): the learned embedding, resized to a rows x cols grid as the official code does."""
        pos = self.pos_embed
        learned = int(pos.shape[1]) - 1
        if rows * cols == learned and rows == cols:
            return pos
        side = int(math.sqrt(learned))
        dim = int(pos.shape[2])
        offset = self.config.interpolate_offset
        patch = pos[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2).float()
        patch = F.interpolate(patch, scale_factor=((rows + offset) / side, (cols + offset) / side), mode="bicubic",
                              align_corners=False)
        if tuple(patch.shape[2:]) != (rows, cols):  # the offset keeps the floor of the scaled size exact
            raise ValueError(f"position embedding resized to {tuple(patch.shape[2:])}, not {(rows, cols)}")
        patch = patch.to(pos.dtype).permute(0, 2, 3, 1).reshape(1, rows * cols, dim)
        return torch.cat([pos[:, :1], patch], dim=1)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W), H and W multiples of the patch -> (B, 1 + N, C): class token, then patches."""
        patch = self.config.patch_size
        height, width = int(x.shape[2]), int(x.shape[3])
        if height % patch or width % patch:
            raise ValueError(f"input {height}x{width} is not a multiple of the patch size {patch}")
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.position_embedding(height // patch, width // patch)

    def intermediate_layers(self, x: torch.Tensor, indices: Sequence[int]) -> list[torch.Tensor]:
        """The outputs of blocks `indices`, each normed by the final norm, class token dropped: (B, N, C) each."""
        wanted = set(indices)
        x = self.tokens(x)
        outputs = []
        for i, block in enumerate(self.blocks[:max(indices) + 1]):
            x = block(x)
            if i in wanted:
                outputs.append(self.norm(x)[:, 1:])
        return outputs
