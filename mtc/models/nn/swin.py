"""Swin Transformer v1 (Liu et al., ICCV 2021) as a dense-prediction backbone (imports torch).

The layout is the detection/segmentation form of the official code (the form BiRefNet and other
matting models embed): attribute names give the checkpoint keys

    patch_embed.proj.*, patch_embed.norm.*
    layers.{i}.blocks.{j}.norm1.*, .attn.relative_position_bias_table, .attn.relative_position_index,
    .attn.qkv.*, .attn.proj.*, .norm2.*, .mlp.fc1.*, .mlp.fc2.*
    layers.{i}.downsample.reduction.weight, layers.{i}.downsample.norm.*   (all stages but the last)
    norm{i}.*                                                                (one LayerNorm per output)

and `forward` returns the four stage outputs (strides 4, 8, 16, 32) as NCHW tensors.

What the ONNX graph inherits from it:

- Feature maps are padded (zeros, after `norm1`) up to a multiple of the window size and the
  padded tokens take part in attention unmasked, as in the official code; odd stage sizes are
  padded before patch merging. Any input size therefore works, but every size is its own graph:
  the window count and the shift mask are fixed by it. Sizes are read as Python ints, so an
  export is static in height and width; only the batch stays dynamic (every reshape keeps it as -1).
- Attention is written out as MatMul, Add and Softmax (no fused scaled-dot-product op), so a
  quantizer sees the two MatMuls it may want to quantize and the Softmax it must not.
- The shifted-window mask is factored: a token pair is masked when its rows lie in different
  bands of the shift or its columns do, so the graph adds a (row windows, 1, 1, N, N) mask and a
  (1, column windows, 1, N, N) mask to the logits viewed as (B, row windows, column windows,
  heads, N, N), instead of one (windows, N, N) constant: 3.6 MB instead of 40 MB for Swin-L's
  first stage at 1024², 7 MB instead of 153 MB at 2048². (A finer, rank-8 factoring over the
  rows and columns inside the window is smaller still, but OpenVINO 2026.4 computes it wrongly.)
  Each masks with -100, the official code's value for its one mask (-200 where both apply:
  exp(-100) is already nothing next to an unmasked weight in float32). Small finite constants
  keep range calibration free of infinities, and the masked logits far inside FP16's range, so
  FP16's overflow guard need not keep every shifted block's mask Adds in FP32. The masks
  are added after the relative position bias and one after the other, so constant folding
  cannot merge them into a full-size constant again.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mtc.models.nn.layers import Mlp

MASKED = -100.0  # the official value (see the module docstring)


def _window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) with H, W multiples of `window` -> (B * windows, window * window, C), windows row-major."""
    height, width, channels = (int(d) for d in x.shape[1:])
    x = x.view(-1, height // window, window, width // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, channels)


def _window_merge(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """The inverse of :func:`_window_partition`: (B * windows, window * window, C) -> (B, H, W, C)."""
    channels = int(windows.shape[-1])
    x = windows.view(-1, height // window, width // window, window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


@functools.lru_cache(maxsize=32)
def _band_mask(size: int, window: int, shift: int, axis: int) -> np.ndarray:
    """(size // window, N, N) additive mask for one axis of the padded, shifted map: MASKED
    between two tokens of a window whose rows (axis 0) or columns (axis 1) come from different
    bands of the cyclic shift (the bands the official code numbers: [0, size - window),
    [size - window, size - shift), [size - shift, size))."""
    bands = np.zeros(size, np.int64)
    bands[size - window:size - shift] = 1
    bands[size - shift:] = 2
    bands = bands.reshape(-1, window)
    differ = bands[:, :, None] != bands[:, None, :]  # (windows along the axis, query, key)
    # Tokens are row-major in a window: spread the axis' (query, key) over (qr, qc, kr, kc).
    spread = differ[:, :, None, :, None] if axis == 0 else differ[:, None, :, None, :]
    tokens = window * window
    spread = np.broadcast_to(spread, (len(bands), window, window, window, window)).reshape(-1, tokens, tokens)
    return np.where(spread, MASKED, 0.0).astype(np.float32)


def _shift_masks(height: int, width: int, window: int, shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The row and column masks of a padded `height` x `width` map, shaped to broadcast over
    attention logits viewed as (B, row windows, column windows, heads, N, N).

    numpy-built: under the ONNX tracer they must be constants, not recorded tensor ops.
    """
    tokens = window * window
    rows = torch.from_numpy(_band_mask(height, window, shift, 0)).view(-1, 1, 1, tokens, tokens)
    cols = torch.from_numpy(_band_mask(width, window, shift, 1)).view(1, -1, 1, tokens, tokens)
    return rows, cols


def _relative_position_index(window: int) -> torch.Tensor:
    """(N, N) index into the (2w-1)^2 bias table for every query/key pair of a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    delta = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return delta[..., 0] * (2 * window - 1) + delta[..., 1]


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a learned relative position bias."""

    def __init__(self, dim: int, window: int, heads: int):
        super().__init__()
        self.window = window
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        # Persistent: the official checkpoints carry it, although it is derived from the window size.
        self.register_buffer("relative_position_index", _relative_position_index(window))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, masks: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        tokens, channels = int(x.shape[1]), int(x.shape[2])
        qkv = self.qkv(x).reshape(-1, tokens, 3, self.heads, channels // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = (q * self.scale) @ k.transpose(-2, -1) + bias.view(tokens, tokens, -1).permute(2, 0, 1)
        if masks is not None:
            rows, cols = masks
            attn = attn.view(-1, int(rows.shape[0]), int(cols.shape[1]), self.heads, tokens, tokens) + rows
            attn = (attn + cols).view(-1, self.heads, tokens, tokens)
        out = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(-1, tokens, channels)
        return self.proj(out)


class SwinBlock(nn.Module):
    """(Shifted-)window attention and an MLP, each pre-normed and residual, on (B, H*W, C) tokens."""

    def __init__(self, dim: int, heads: int, window: int, shift: int, mlp_ratio: float):
        super().__init__()
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, height: int, width: int,
                masks: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        channels = int(x.shape[-1])
        window, shift = self.window, self.shift
        y = self.norm1(x).view(-1, height, width, channels)
        pad_h, pad_w = -height % window, -width % window
        y = F.pad(y, (0, 0, 0, pad_w, 0, pad_h))
        padded_h, padded_w = height + pad_h, width + pad_w
        if shift:
            y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
        y = self.attn(_window_partition(y, window), masks if shift else None)
        y = _window_merge(y, window, padded_h, padded_w)
        if shift:
            y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
        y = y[:, :height, :width, :].reshape(-1, height * width, channels)
        x = x + y
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x2 neighbouring tokens concatenated (odd sides zero-padded), normed, projected to 2C."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        channels = int(x.shape[-1])
        x = x.view(-1, height, width, channels)
        x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        merged = ((height + 1) // 2) * ((width + 1) // 2)
        # The official order of the four phases: (0,0), (1,0), (0,1), (1,1) as (row, column).
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.reshape(-1, merged, 4 * channels)))


class SwinStage(nn.Module):
    """Blocks alternating plain and shifted windows, then (but for the last stage) patch merging."""

    def __init__(self, dim: int, depth: int, heads: int, window: int, mlp_ratio: float, downsample: bool):
        super().__init__()
        self.window = window
        self.blocks = nn.ModuleList(
            SwinBlock(dim, heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio) for i in range(depth))
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The stage output (B, H*W, C) and the merged tokens for the next stage (None after the last)."""
        window = self.window
        masks = tuple(m.to(x.dtype) for m in _shift_masks(height + -height % window, width + -width % window,
                                                           window, window // 2))
        for block in self.blocks:
            x = block(x, height, width, masks)
        return x, self.downsample(x, height, width) if self.downsample is not None else None


class PatchEmbed(nn.Module):
    """Non-overlapping patch x patch conv (input zero-padded to a multiple of the patch), then LayerNorm."""

    def __init__(self, patch: int, in_channels: int, dim: int):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, ceil(H / patch), ceil(W / patch))."""
        x = F.pad(x, (0, -int(x.shape[3]) % self.patch, 0, -int(x.shape[2]) % self.patch))
        x = self.proj(x)
        channels, height, width = (int(d) for d in x.shape[1:])
        x = self.norm(x.flatten(2).transpose(1, 2))
        return x.transpose(1, 2).reshape(-1, channels, height, width)


class SwinTransformer(nn.Module):
    """The four-stage Swin v1 backbone, returning the normed output of every stage as NCHW.

    Args:
        embed_dim: Channels of the first stage (doubled at every stage).
        depths: Blocks per stage.
        num_heads: Attention heads per stage.
        window_size: Side of the square attention windows.
        patch_size: Side of the patch embedding.
        mlp_ratio: Hidden width of the MLPs relative to the stage's channels.
    """

    def __init__(self, *, embed_dim: int, depths: Sequence[int], num_heads: Sequence[int], window_size: int,
                 patch_size: int = 4, mlp_ratio: float = 4.0):
        super().__init__()
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        self.channels = tuple(embed_dim * 2 ** i for i in range(len(depths)))
        self.layers = nn.ModuleList(
            SwinStage(dim, depth, heads, window_size, mlp_ratio, downsample=i < len(depths) - 1)
            for i, (dim, depth, heads) in enumerate(zip(self.channels, depths, num_heads)))
        for i, dim in enumerate(self.channels):
            self.add_module(f"norm{i}", nn.LayerNorm(dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.stages(self.patch_embed(x))

    def stages(self, embedded: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The four stages' normed outputs (NCHW) from the patch embedding (some decoders also
        read the embedding itself)."""
        # Python ints: the traced graph is static in height and width (see the module docstring).
        height, width = int(embedded.shape[2]), int(embedded.shape[3])
        tokens = embedded.flatten(2).transpose(1, 2)
        outputs = []
        for i, stage in enumerate(self.layers):
            out, tokens = stage(tokens, height, width)
            out = getattr(self, f"norm{i}")(out)
            outputs.append(out.view(-1, height, width, self.channels[i]).permute(0, 3, 1, 2))
            height, width = (height + 1) // 2, (width + 1) // 2
        return tuple(outputs)
