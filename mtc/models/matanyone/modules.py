"""MatAnyone's building blocks, under the official attribute names (imports torch).

Tensors that carry an object axis ("group" tensors) are laid out (B, N, C, H, W), N objects; the
others are (B, C, H, W). Every resize between strides is exact (sizes are multiples of 16), so
the official area resizes are average pools and the official bilinear x2 upsamplings keep
``align_corners=False``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def area_down(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Area resize by an integer factor, on (B, C, H, W) or (B, N, C, H, W): an average pool."""
    if factor == 1:
        return x
    lead = x.shape[:-3]
    y = F.avg_pool2d(x.flatten(0, len(lead) - 1) if len(lead) > 1 else x, factor)
    return y.view(*lead, *y.shape[-3:])


def up2(g: torch.Tensor) -> torch.Tensor:
    """Bilinear x2 upsampling (align_corners=False) of a group tensor."""
    y = F.interpolate(g.flatten(0, 1), scale_factor=2.0, mode="bilinear", align_corners=False)
    return y.view(*g.shape[:2], *y.shape[1:])


def gru_update(h: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The sensory memory's gated update: `values` holds forget, update and candidate thirds."""
    dim = values.shape[2] // 3
    forget = torch.sigmoid(values[:, :, :dim])
    update = torch.sigmoid(values[:, :, dim:2 * dim])
    candidate = torch.tanh(values[:, :, 2 * dim:])
    return forget * h * (1 - update) + update * candidate


class GConv2d(nn.Conv2d):
    """A conv applied to every object of a group tensor (objects folded into the batch)."""

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        y = super().forward(g.flatten(0, 1))
        return y.view(*g.shape[:2], *y.shape[1:])


class CAResBlock(nn.Module):
    """Residual block of two 3x3 convs whose output is scaled by ECA channel attention (global
    pooling, a 1-D conv across channels whose width grows with log2 of the channels, sigmoid)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        t = int((abs(math.log2(cout)) + 1) // 2)
        k = t if t % 2 else t + 1
        self.conv = nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)
        self.downsample = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(F.relu(x))))
        w = self.conv(y.mean((2, 3)).unsqueeze(1))  # (B, 1, C)
        return y * torch.sigmoid(w).transpose(1, 2).unsqueeze(-1) + self.downsample(x)


class GroupResBlock(nn.Module):
    """Pre-activation residual block of two 3x3 convs on a group tensor."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = GConv2d(cin, cout, 3, padding=1)
        self.conv2 = GConv2d(cout, cout, 3, padding=1)
        self.downsample = nn.Identity() if cin == cout else GConv2d(cin, cout, 1)

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(F.relu(g)))) + self.downsample(g)


class _Projections(nn.Module):
    """Holds the two 1x1 projections that the official code nests under `distributor`."""

    def __init__(self, x_in: int, g_in: int, cout: int):
        super().__init__()
        self.x_transform = nn.Conv2d(x_in, cout, 1)
        self.g_transform = GConv2d(g_in, cout, 1)


class GroupFusion(nn.Module):
    """Official `GroupFeatureFusionBlock`: a shared (B, C, H, W) feature and a group tensor, each
    projected to `cout` and added, then two CAResBlocks per object."""

    def __init__(self, x_in: int, g_in: int, cout: int):
        super().__init__()
        self.distributor = _Projections(x_in, g_in, cout)
        self.block1 = CAResBlock(cout, cout)
        self.block2 = CAResBlock(cout, cout)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        g = self.distributor.x_transform(x).unsqueeze(1) + self.distributor.g_transform(g)
        y = self.block2(self.block1(g.flatten(0, 1)))
        return y.view(*g.shape[:2], *y.shape[1:])


class MultiheadAttention(nn.Module):
    """Batch-first multi-head attention with `nn.MultiheadAttention`'s parameters
    (`in_proj_weight`, `in_proj_bias`, `out_proj`), written out as matmuls so that it exports as
    plain ONNX ops; `blocked` (True = may not attend) broadcasts over heads."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def _split(self, x: torch.Tensor, index: int) -> torch.Tensor:
        dim = self.in_proj_bias.shape[0] // 3
        w = self.in_proj_weight[index * dim:(index + 1) * dim]
        b = self.in_proj_bias[index * dim:(index + 1) * dim]
        y = F.linear(x, w, b)
        return y.view(y.shape[0], y.shape[1], self.heads, dim // self.heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                blocked: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self._split(q, 0), self._split(k, 1), self._split(v, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if blocked is not None:
            scores = torch.where(blocked.unsqueeze(1), float("-inf"), scores)
        y = torch.softmax(scores, -1) @ v
        return self.out_proj(y.transpose(1, 2).flatten(2))


class CrossAttention(nn.Module):
    """Pre-norm cross attention with positional encodings added to queries and keys (not values);
    the residual is the normalised input, as in the official layer. `norm=False` drops the norm
    (and its keys), as the official `read_from_query` does."""

    def __init__(self, dim: int, heads: int, *, norm: bool = True):
        super().__init__()
        self.cross_attn = MultiheadAttention(dim, heads)
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()

    def forward(self, x, mem, x_pe, mem_pe, blocked=None):
        x = self.norm(x)
        return x + self.cross_attn(x + x_pe, mem + mem_pe, mem, blocked)


class SelfAttention(nn.Module):
    """Pre-norm self attention, positional encoding on queries and keys, normalised residual."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.self_attn = MultiheadAttention(dim, heads)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x, pe):
        x = self.norm(x)
        return x + self.self_attn(x + pe, x + pe, x)


class FFN(nn.Module):
    """Pre-norm two-layer ReLU MLP with an un-normalised residual."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return x + self.linear2(F.relu(self.linear1(self.norm(x))))


class PixelFFN(nn.Module):
    """The pixel tokens back on their grid through a CAResBlock."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = CAResBlock(dim, dim)

    def forward(self, pixel_flat: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        bn, _, dim = pixel_flat.shape
        grid = pixel_flat.transpose(1, 2).reshape(bn, dim, *size)
        return self.conv(grid)


class QueryBlock(nn.Module):
    """One object-transformer block: queries read the (masked) pixels, attend to each other and
    pass an FFN; then the pixels read the queries and pass a PixelFFN."""

    def __init__(self, dim: int, heads: int, ff_dim: int):
        super().__init__()
        self.read_from_pixel = CrossAttention(dim, heads)
        self.self_attn = SelfAttention(dim, heads)
        self.ffn = FFN(dim, ff_dim)
        self.read_from_query = CrossAttention(dim, heads, norm=False)
        self.pixel_ffn = PixelFFN(dim)

    def forward(self, query, pixel, query_pe, pixel_pe, blocked):
        """query (BN, Q, C), pixel (BN, C, h, w), pixel_pe (BN, hw, C), blocked (BN, Q, hw)."""
        pixel_flat = pixel.flatten(2).transpose(1, 2)
        query = self.read_from_pixel(query, pixel_flat, query_pe, pixel_pe, blocked)
        query = self.ffn(self.self_attn(query, query_pe))
        pixel_flat = self.read_from_query(pixel_flat, query, pixel_pe, query_pe)
        return query, self.pixel_ffn(pixel_flat, pixel.shape[-2:])


class SinePE(nn.Module):
    """2-D sine positional encoding over a grid (coordinates normalised to [0, scale]); channels
    are x's interleaved sin/cos pairs, then y's. `inv_freq` is a buffer in the checkpoints."""

    def __init__(self, dim: int, *, scale: float, temperature: float):
        super().__init__()
        half = int(math.ceil(dim / 4) * 2)
        self.register_buffer("inv_freq", 1.0 / temperature ** (torch.arange(0, half, 2).float() / half))
        self.scale = scale

    def _axis(self, n: int) -> torch.Tensor:
        pos = torch.arange(n, dtype=self.inv_freq.dtype, device=self.inv_freq.device)
        pos = pos / (pos[-1] + 1e-6) * self.scale
        angles = pos[:, None] * self.inv_freq[None]
        return torch.stack((angles.sin(), angles.cos()), -1).flatten(1)

    def forward(self, h: int, w: int) -> torch.Tensor:
        """(h, w, C) encoding."""
        ex, ey = self._axis(w), self._axis(h)
        return torch.cat([ex[None].expand(h, -1, -1), ey[:, None].expand(-1, w, -1)], -1)


def object_attention_mask(logits: torch.Tensor, num_queries: int) -> torch.Tensor:
    """Which pixels each object query may not attend, from the auxiliary mask logits (B, N, h, w).

    A pixel is foreground for an object when the object wins Cutie's aggregation (its logit of
    the clamped probabilities is the largest, background included); the first half of the
    queries is blocked from background pixels, the second half from foreground ones, and a query
    that would be blocked everywhere is let see everything. Returns (B*N, Q, h*w) bool.
    """
    prob = torch.sigmoid(logits)
    agg = torch.cat([torch.prod(1 - prob, 1, keepdim=True), prob], 1).clamp(1e-7, 1 - 1e-7)
    agg = torch.log(agg / (1 - agg))
    fg = (agg[:, 1:] >= agg.max(1, keepdim=True)[0]).flatten(2).float()  # (B, N, hw)
    half = num_queries // 2
    blocked = torch.cat([(1 - fg).unsqueeze(2).expand(-1, -1, half, -1),
                         fg.unsqueeze(2).expand(-1, -1, half, -1)], 2)
    sees_some = (1 - blocked).amax(-1, keepdim=True)
    return (blocked * sees_some).flatten(0, 1) > 0.5


class QueryTransformer(nn.Module):
    """The object transformer: object queries initialised from the object memory refine the
    fused pixel readout (B, N, C, h, w) through `num_blocks` blocks; returns the refined pixels."""

    def __init__(self, dim: int, heads: int, num_queries: int, num_blocks: int, ff_dim: int, *,
                 pe_scale: float, pe_temperature: float):
        super().__init__()
        self.num_queries = num_queries
        self.query_init = nn.Embedding(num_queries, dim)
        self.query_emb = nn.Embedding(num_queries, dim)
        self.summary_to_query_init = nn.Linear(dim, dim)
        self.summary_to_query_emb = nn.Linear(dim, dim)
        self.pixel_init_proj = GConv2d(dim, dim, 1)
        self.pixel_emb_proj = GConv2d(dim, dim, 1)
        self.spatial_pe = SinePE(dim, scale=pe_scale, temperature=pe_temperature)
        self.blocks = nn.ModuleList(QueryBlock(dim, heads, ff_dim) for _ in range(num_blocks))
        # One mask head per block input, plus one after the last block whose output inference never uses.
        self.mask_pred = nn.ModuleList(nn.Sequential(nn.ReLU(), GConv2d(dim, 1, 1)) for _ in range(num_blocks + 1))

    def forward(self, pixel: torch.Tensor, obj_memory: torch.Tensor) -> torch.Tensor:
        """pixel (B, N, C, h, w); obj_memory (B, N, Q, C + 1): summed summaries, last channel the area."""
        b, n, c, h, w = pixel.shape
        summary = obj_memory.flatten(0, 1)
        summary = summary[..., :-1] / (summary[..., -1:] + 1e-4)
        query = self.query_init.weight + self.summary_to_query_init(summary)
        query_pe = self.query_emb.weight + self.summary_to_query_emb(summary)
        pixel_pe = self.spatial_pe(h, w).flatten(0, 1) + self.pixel_emb_proj(pixel).flatten(0, 1).flatten(2).transpose(1, 2)
        grid = self.pixel_init_proj(pixel).flatten(0, 1)
        for i, block in enumerate(self.blocks):
            blocked = object_attention_mask(self.mask_pred[i](grid.view(b, n, c, h, w)).squeeze(2), self.num_queries)
            query, grid = block(query, grid, query_pe, pixel_pe, blocked)
        return grid.view(b, n, c, h, w)


class ObjectSummarizer(nn.Module):
    """Per-object summaries of a frame's mask value: `num_summaries` sigmoid-weighted sums of
    projected features (first half over the object, second half over the rest) plus each
    weight map's total; (B, N, Q, C + 1). The object memory is the running sum of these."""

    def __init__(self, value_dim: int, dim: int, num_summaries: int, *, pe_scale: float, pe_temperature: float):
        super().__init__()
        self.num_summaries = num_summaries
        self.pos_enc = SinePE(dim, scale=pe_scale, temperature=pe_temperature)
        self.input_proj = nn.Linear(value_dim, dim)
        self.feature_pred = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))
        self.weights_pred = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, num_summaries))

    def forward(self, mask: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """mask (B, N, H, W) at full size; value (B, N, C, h, w)."""
        h, w = value.shape[-2:]
        mask = area_down(mask, mask.shape[-1] // w).unsqueeze(-1)  # (B, N, h, w, 1)
        half = self.num_summaries // 2
        allowed = torch.cat([mask.expand(-1, -1, -1, -1, half), (1 - mask).expand(-1, -1, -1, -1, half)], -1)
        x = self.input_proj(value.permute(0, 1, 3, 4, 2)) + self.pos_enc(h, w)
        weights = torch.sigmoid(self.weights_pred(x)) * allowed  # (B, N, h, w, Q)
        sums = torch.einsum("bnhwq,bnhwc->bnqc", weights, self.feature_pred(x))
        return torch.cat([sums, weights.sum((2, 3)).unsqueeze(-1)], -1)
