"""PDFNet (Liu, Fu and Zhao, 2025, MIT): the network, re-implemented in the official key layout (imports torch).

From the facts of github.com/Tennine2077/PDFNet (`models/PDFNet.py`, `models/swin_transformer.py`,
`models/utils.py`, `args.py`): `PDFNet_process` with `emb = 128` and the Swin-B encoder, so
`PDFNet_Best.pth` loads strictly (559 keys; the checkpoint's two `IntegrityPriorLoss.*` Sobel
kernels belong to a training loss and are dropped, as would be `depth_decoder.*`, a training-only
head the released code no longer registers).

What the network computes (`PDFNet_process.inference`), for a square image of side S:

- image (ImageNet mean/std) and depth (min-max normalised, repeated to 3 channels, not
  mean/std-normalised) resized to S/2 and encoded together by one Swin-B (embed 128, depths
  2/2/18/2, heads 4/8/16/32, window 12, with a learned absolute position embedding for a 56x56
  grid, bicubically resized to the patch grid and added after the patch embedding);
- the full-size image cut into an 8x8 grid of S/8 patches, each encoded by the same Swin-B, the
  features put back together into maps;
- every encoding: each stage through a 3x3 conv, RMSNorm and SiLU to 128 channels (`crs`), and a
  global map from all four resized onto the coarsest;
- a decoder of four `FSE` levels, each gating its inputs with the previous prediction, doubling
  the patch features of grid cells on the predicted boundary, enhancing the depth with an
  "integrity" map, and mixing image, depth and patch tokens by single-head cross-attention
  (`CoA`: attention, RMSNorm, residual; SwiGLU, RMSNorm, residual); then a shallow path from
  the image and depth upsampled 4x and a 4x4 stride-4 conv, and the final 3x3 conv to one logit.

Every resize is bilinear with align_corners=True (the official `_upsample_`), except the
position embedding's bicubic one. The inputs must be square with a side that is a multiple of
256 (the 8x8 patch grid is cut at every level, down to the coarsest at S/32); the official
inference size is 1024.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from mtc.errors import MtcError
from mtc.models.contracts import SwinConfig
from mtc.models.nn.swin import SwinTransformer


@dataclass(frozen=True)
class PDFNetConfig:
    """The widths PDFNet is built with (the official `args.py` defaults and `SwinB`)."""

    swin: SwinConfig
    emb: int = 128
    ape_grid: int = 56  # the absolute position embedding's grid: Swin's 224-pixel pretraining / patch 4
    patch_ratio: int = 8  # the image (and every FSE level) is cut into patch_ratio x patch_ratio cells

    @property
    def multiple(self) -> int:
        """Sides must be multiples of this: the patch grid at the coarsest level (stride 32)."""
        return 32 * self.patch_ratio


PDFNET_SWINB = PDFNetConfig(SwinConfig(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12))

# Keys of the official checkpoint that are no part of the network.
IGNORED_PREFIXES = ("IntegrityPriorLoss.", "depth_decoder.")


def _size(x: torch.Tensor) -> tuple[int, int]:
    return int(x.shape[-2]), int(x.shape[-1])


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The official `_upsample_` (bilinear, align_corners=True); the identity at the same size, as it is there."""
    if _size(x) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def _like(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return _resize(x, _size(target))


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C)."""
    return x.flatten(2).transpose(1, 2)


def _map(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H*W, C) -> (B, C, H, W)."""
    return x.transpose(1, 2).reshape(-1, int(x.shape[2]), *size)


class RMSNorm(nn.Module):
    """weight * x / sqrt(mean(x^2) + 1e-6) over the channels (dim 1, or the last for tokens)."""

    def __init__(self, dim: int, *, channels_last: bool = False, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.channels_last = channels_last
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axis = -1 if self.channels_last else 1
        x = x * torch.rsqrt(x.pow(2).mean(dim=axis, keepdim=True) + self.eps)
        return x * (self.weight if self.channels_last else self.weight[:, None, None])


def crs(cin: int, cout: int) -> nn.Sequential:
    """The official `make_crs`: 3x3 conv (with bias), RMSNorm, SiLU; keys `0.weight`, `0.bias`, `1.weight`."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), RMSNorm(cout), nn.SiLU())


class CrossAttention(nn.Module):
    """`nn.MultiheadAttention(dim, 1, bias=False, batch_first=True)` at inference, written out as
    MatMul and Softmax (keys `in_proj_weight`, `out_proj.weight`)."""

    def __init__(self, dim: int):
        super().__init__()
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.out_proj = nn.Linear(dim, dim, bias=False)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        wq, wk, wv = self.in_proj_weight.chunk(3, dim=0)
        scale = int(q.shape[-1]) ** -0.5
        attn = (F.linear(q, wq) * scale) @ F.linear(kv, wk).transpose(1, 2)
        return self.out_proj(attn.softmax(dim=-1) @ F.linear(kv, wv))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class CoA(nn.Module):
    """Query tokens attend to key/value tokens: x = RMSNorm(attn(q, kv)) + q; x = RMSNorm(SwiGLU(x)) + x."""

    def __init__(self, dim: int):
        super().__init__()
        self.Att = CrossAttention(dim)
        self.Norm1 = RMSNorm(dim, channels_last=True)
        self.FFN = SwiGLU(dim, dim)
        self.Norm2 = RMSNorm(dim, channels_last=True)

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        x = self.Norm1(self.Att(q, kv)) + q
        return self.Norm2(self.FFN(x)) + x


def _pool(x: torch.Tensor, ratio: int) -> torch.Tensor:
    """The official `adaptive_avg_pool2d` to (H/ratio, W/ratio), sides divisible by `ratio`."""
    return x if ratio == 1 else F.avg_pool2d(x, ratio)


class FSE(nn.Module):
    """One decoder level: image, depth and patch features refined together under the previous prediction."""

    def __init__(self, in_dim: int, emb: int, pool_ratio: tuple[int, int, int], patch_ratio: int):
        super().__init__()
        self.pool_ratio = pool_ratio
        self.patch_ratio = patch_ratio
        self.I_channelswich = crs(in_dim, emb)
        self.P_channelswich = crs(in_dim, emb)
        self.D_channelswich = crs(in_dim, emb)
        self.IP = CoA(emb)
        self.PI = CoA(emb)
        self.ID = CoA(emb)
        self.DI = CoA(emb)

    @staticmethod
    def boundary_and_integrity(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The official `BIS`: s = sigmoid(sigmoid(logits)) (applied twice there too) minus its
        local mean over about an eighth of the side; thresholded at 0.1 when that eighth is even.
        Integrity is relu(sigmoid(logits) - boundary)."""
        height, width = _size(logits)
        kh, kw = height // 8, width // 8
        s = torch.sigmoid(torch.sigmoid(logits))
        even = kh % 2 == 0
        kernel = (kh + 1, kw + 1) if even else (kh, kw)
        boundary = (s - F.avg_pool2d(s, kernel, stride=1, padding=(kh // 2, kw // 2))).abs()
        if even:
            boundary = (boundary > 0.1).to(s.dtype)
        return boundary, F.relu(torch.sigmoid(logits) - boundary)

    def select_patches(self, patch: torch.Tensor, boundary: torch.Tensor) -> torch.Tensor:
        """Cells of the patch_ratio x patch_ratio grid whose boundary mean is positive, doubled."""
        r = self.patch_ratio
        cell_h, cell_w = (s // r for s in _size(boundary))
        score = F.avg_pool2d(boundary, (cell_h, cell_w))  # (B, 1, r, r)
        gate = 1 + (score > 0).to(patch.dtype)
        height, width = _size(patch)
        gate = gate[:, :, :, None, :, None].expand(-1, -1, -1, height // r, -1, width // r)
        return patch * gate.reshape(-1, 1, height, width)

    def forward(self, img: torch.Tensor, depth: torch.Tensor, patch: torch.Tensor, last: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        boundary, integrity = self.boundary_and_integrity(last)
        gate = torch.sigmoid(last)
        img, depth, patch = img * _like(gate, img), depth * _like(gate, depth), patch * _like(gate, patch)
        pi, pd, pp = self.pool_ratio

        img_cs = self.I_channelswich(img)
        pool_img = _tokens(_pool(img_cs, pi))
        enhanced = depth * (torch.sigmoid(_like(last, depth)) + _like(integrity, depth))
        depth_cs = self.D_channelswich(enhanced)
        pool_depth_map = _pool(depth_cs, pd)
        pool_depth = _tokens(pool_depth_map)
        patch_cs = self.P_channelswich(self.select_patches(patch, boundary))
        pool_patch_map = _pool(patch_cs, pp)
        pool_patch = _tokens(pool_patch_map)

        patch_feature = self.PI(pool_patch, torch.cat([pool_img, pool_depth], dim=1))
        img_feature = self.IP(_tokens(img_cs), patch_feature)
        depth_feature = self.DI(pool_depth, torch.cat([pool_img, pool_patch], dim=1))
        img_feature = self.ID(img_feature, depth_feature)

        img_out = _map(img_feature, _size(img_cs)) + img_cs
        depth_out = _like(_map(depth_feature, _size(pool_depth_map)), depth_cs) + depth_cs
        patch_out = _like(_map(patch_feature, _size(pool_patch_map)), patch_cs) + patch_cs
        return img_out, depth_out, patch_out


class PDFDecoder(nn.Module):
    """The official `PDF_decoder`: four FSE levels, coarse to fine, then the shallow full-size path."""

    def __init__(self, emb: int, patch_ratio: int):
        super().__init__()
        pools = ((1, 1, 1), (1, 1, 1), (2, 2, 2), (2, 2, 2))
        self.FSE_mix = nn.ModuleList(FSE(2 * emb, emb, pool, patch_ratio) for pool in pools)
        self.shallow = nn.Sequential(nn.Conv2d(6, emb, 4, stride=4), crs(emb, emb))
        self.upsample1 = nn.Sequential(crs(emb, emb))
        self.upsample2 = nn.Sequential(crs(emb, emb))
        self.channel_mix = nn.ModuleList(crs(3 * emb, emb) for _ in range(4))
        self.Bside = nn.ModuleList(nn.Conv2d(emb, 1, 3, padding=1) for _ in range(6))

    def forward(self, img: torch.Tensor, depth: torch.Tensor, img_f: list[torch.Tensor], depth_f: list[torch.Tensor],
                patch_f: list[torch.Tensor]) -> torch.Tensor:
        """Inputs at full size and the three five-level encodings; the final logits (B, 1, H, W)."""
        height, width = _size(img)
        last = self.Bside[5](_like(img_f[4], patch_f[4]) + _like(depth_f[4], patch_f[4]) + patch_f[4])
        # Level 4 reads the global map and stage 4; levels 3 to 1 the previous level and their stage.
        i_prev, d_prev, p_prev = img_f[4], depth_f[4], patch_f[4]
        for step, level in enumerate((3, 2, 1, 0)):
            i_in = torch.cat([_like(i_prev, img_f[level]), img_f[level]], dim=1)
            d_in = torch.cat([_like(d_prev, depth_f[level]), depth_f[level]], dim=1)
            p_in = torch.cat([_like(p_prev, patch_f[level]), patch_f[level]], dim=1)
            i_prev, d_prev, p_prev = self.FSE_mix[step](i_in, d_in, p_in, last)
            mix = self.channel_mix[level](torch.cat([_like(i_prev, p_prev), _like(d_prev, p_prev), p_prev], dim=1))
            last = self.Bside[level + 1](mix)

        shallow = self.shallow(_resize(torch.cat([img, depth], dim=1), (4 * height, 4 * width)))
        double = (2 * int(mix.shape[2]), 2 * int(mix.shape[3]))
        out = self.upsample1(_resize(mix, double) + _resize(shallow, double))
        out = _resize(out, (2 * int(out.shape[2]), 2 * int(out.shape[3]))) + shallow
        return self.Bside[0](self.upsample2(out))


class SwinWithAbsolutePosition(SwinTransformer):
    """The shared Swin v1 with the official `ape=True`: a learned (1, C, G, G) embedding, resized
    bicubically (align_corners=False) to the patch grid and added to the normed patch embedding."""

    def __init__(self, config: SwinConfig, ape_grid: int):
        super().__init__(embed_dim=config.embed_dim, depths=config.depths, num_heads=config.num_heads,
                         window_size=config.window_size)
        self.absolute_pos_embed = nn.Parameter(torch.zeros(1, config.embed_dim, ape_grid, ape_grid))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        embedded = self.patch_embed(x)
        position = F.interpolate(self.absolute_pos_embed, size=_size(embedded), mode="bicubic", align_corners=False)
        return self.stages(embedded + position)


def split_patches(x: torch.Tensor, ratio: int) -> torch.Tensor:
    """(B, C, H, W) -> (ratio*ratio*B, C, H/ratio, W/ratio), stacked as the official `split`: row, column, batch."""
    channels, (height, width) = int(x.shape[1]), _size(x)
    ph, pw = height // ratio, width // ratio
    x = x.reshape(-1, channels, ratio, ph, ratio, pw).permute(2, 4, 0, 1, 3, 5)
    return x.reshape(-1, channels, ph, pw)


def merge_patches(x: torch.Tensor, ratio: int) -> torch.Tensor:
    """The inverse of :func:`split_patches` (the official `merge` without overlap)."""
    channels, (height, width) = int(x.shape[1]), _size(x)
    x = x.reshape(ratio, ratio, -1, channels, height, width).permute(2, 3, 0, 4, 1, 5)
    return x.reshape(-1, channels, ratio * height, ratio * width)


class PDFNet(nn.Module):
    """(B, 3, S, S) ImageNet-normalised RGB and (B, 1 or 3, S, S) min-max normalised depth -> (B, 1, S, S) logits.

    Attribute names give the official keys (`PDFNet_process`): `Glob`, `decoder`, `channel_mix`,
    `channel_mix4` ... `channel_mix1`, `encoder`.
    """

    def __init__(self, config: PDFNetConfig = PDFNET_SWINB):
        super().__init__()
        self.config = config
        emb = config.emb
        self.Glob = nn.Sequential(crs(emb, emb))
        self.decoder = PDFDecoder(emb, config.patch_ratio)
        self.channel_mix = crs(4 * emb, emb)
        channels = config.swin.channels
        for i in (4, 3, 2, 1):
            self.add_module(f"channel_mix{i}", crs(channels[i - 1], emb))
        self.encoder = SwinWithAbsolutePosition(config.swin, config.ape_grid)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The official `encode`: four stages to `emb` channels, and the global map at stage 4's size."""
        stages = [getattr(self, f"channel_mix{i}")(f) for i, f in enumerate(self.encoder(x), start=1)]
        coarsest = stages[3]
        glob = self.Glob(self.channel_mix(torch.cat([_like(f, coarsest) for f in stages], dim=1)))
        return [*stages, glob]

    def check_size(self, height: int, width: int) -> None:
        multiple = self.config.multiple
        if height != width or height % multiple:
            raise MtcError(f"PDFNet needs a square input with a side that is a multiple of {multiple}, "
                           f"not {height}x{width}", hint=f"export at 1024x1024 (or another multiple of {multiple})")

    def forward(self, image: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        height, width = _size(image)
        self.check_size(height, width)
        if int(depth.shape[1]) == 1:
            depth = depth.expand(-1, 3, -1, -1)
        half = (height // 2, width // 2)
        both = self.encode(torch.cat([_resize(image, half), _resize(depth, half)], dim=0))
        # The official code encodes image and depth as one batch: images first, then depths.
        img_f, depth_f = (list(half) for half in zip(*(f.chunk(2, dim=0) for f in both)))
        ratio = self.config.patch_ratio
        patch_f = [merge_patches(f, ratio) for f in self.encode(split_patches(image, ratio))]
        return self.decoder(image, depth, img_f, depth_f, patch_f)


def build_network(config: PDFNetConfig = PDFNET_SWINB) -> PDFNet:
    return PDFNet(config).eval()


def load_network(weights: Path, config: PDFNetConfig = PDFNET_SWINB) -> PDFNet:
    """The network with `weights` (`PDFNet_Best.pth` or a safetensors file) loaded strictly, the
    checkpoint's training-only keys (:data:`IGNORED_PREFIXES`) dropped."""
    from mtc.models.pdfnet.depth import load_strict

    net = PDFNet(config)
    load_strict(net, weights, ignore=IGNORED_PREFIXES, hint="pass PDFNet's official PDFNet_Best.pth (Swin-B)")
    return net.eval()
