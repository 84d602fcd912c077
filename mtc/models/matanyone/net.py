"""MatAnyone's network in the official key layout, and its four static-shape export graphs (imports torch).

:class:`MatAnyone` holds the official submodules under the official names (`pixel_encoder`,
`pix_feat_proj`, `key_proj`, `mask_encoder`, `mask_decoder`, `pixel_fuser`, `object_transformer`,
`object_summarizer`, `aux_computer`, `temp_sparity`), so `state_dict()` equals the checkpoint's
layout of the single-object build the official inference script loads. Its methods are the
per-frame inference steps; memory bookkeeping lives in :mod:`mtc.models.matanyone.reference`.

The export graphs (batch 1, one object, H and W multiples of 16, h = H/16, w = W/16) share one
:class:`MatAnyone`:

- :class:`ImageEncoderGraph`: image -> pix_feat, key, shrinkage, selection, f8, f4, f2;
- :class:`MaskEncoderGraph`: image, pix_feat, sensory, mask -> value, sensory_out, obj_summary;
- :class:`MemoryReadoutGraph`: this frame's features, last frame's state, object memory and the memory
  ring (K slots of key / shrinkage / value with a validity input) -> readout;
- :class:`SegmenterGraph`: image, f8, f4, f2, readout, sensory -> alpha, sensory_out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from mtc.errors import MtcError
from mtc.models.birefnet.checkpoint import load_into, read_checkpoint
from mtc.models.matanyone.modules import (
    GConv2d,
    GroupFusion,
    GroupResBlock,
    ObjectSummarizer,
    QueryTransformer,
    area_down,
    gru_update,
    up2,
)
from mtc.models.nn.resnet import BasicBlock, Bottleneck, stage

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STRIDE = 16  # of keys, values, sensory and readout; the input size must be a multiple of it
# The similarity an empty ring slot's tokens get: their softmax weight underflows to exactly 0
# next to any real token. (A select, not an added bias, so that a float16 build, where the
# constant becomes -inf, cannot turn valid tokens into NaN; the flow keeps the permanent slot
# valid from the mask step on, so some token is always real.)
EMPTY_SLOT_SIMILARITY = -1e9


@dataclass(frozen=True)
class MatAnyoneConfig:
    """Network sizes; the defaults are the official `config/model/base.yaml` (single object).

    The ResNet widths are fixed by the layout (ResNet-50 stages give 256/512/1024 channels at
    strides 4/8/16, ResNet-18 stages 64/128/256); the block counts may shrink for tests.
    """

    pixel_blocks: tuple[int, int, int] = (3, 4, 6)  # ResNet-50 layer1 (`res2`), layer2, layer3
    mask_blocks: tuple[int, int, int] = (2, 2, 2)  # ResNet-18 layer1..3
    pixel_dim: int = 256
    key_dim: int = 64
    value_dim: int = 256
    sensory_dim: int = 256
    embed_dim: int = 256  # object transformer width; must equal up_dims[0], a multiple of 4
    num_heads: int = 8
    num_queries: int = 16  # also the number of object summaries; even
    num_blocks: int = 3
    ff_dim: int = 2048
    up_dims: tuple[int, int, int, int, int] = (256, 128, 128, 64, 16)  # decoder at strides 16..1
    pe_scale: float = 32.0
    pe_temperature: float = 128.0


F16, F8, F4, F2 = 1024, 512, 256, 64  # ResNet-50 trunk channels at strides 16, 8, 4, 2
MASK_FINAL = 256  # ResNet-18 layer3 channels


class PixelEncoder(nn.Module):
    """ResNet-50 stem and first three stages (the first one named `res2`): f16, f8, f4, f2."""

    def __init__(self, blocks: tuple[int, int, int]):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.res2 = stage(Bottleneck, 64, 64, blocks[0], stride=1)
        self.layer2 = stage(Bottleneck, 256, 128, blocks[1], stride=2)
        self.layer3 = stage(Bottleneck, 512, 256, blocks[2], stride=2)

    def forward(self, x):
        f2 = self.relu(self.bn1(self.conv1(x)))
        f4 = self.res2(self.maxpool(f2))
        f8 = self.layer2(f4)
        return self.layer3(f8), f8, f4, f2


class KeyProjection(nn.Module):
    """Keys for the memory attention from f16: key, shrinkage (>= 1, scales a memory token's
    similarities) and selection (in (0, 1), weights the query's key channels)."""

    def __init__(self, cin: int, mid: int, key_dim: int):
        super().__init__()
        self.pix_feat_proj = nn.Conv2d(cin, mid, 1)
        self.key_proj = nn.Conv2d(mid, key_dim, 3, padding=1)
        self.d_proj = nn.Conv2d(mid, 1, 3, padding=1)
        self.e_proj = nn.Conv2d(mid, key_dim, 3, padding=1)

    def forward(self, f16):
        x = self.pix_feat_proj(f16)
        return self.key_proj(x), self.d_proj(x) ** 2 + 1, torch.sigmoid(self.e_proj(x))


class SensoryDeepUpdater(nn.Module):
    """The mask encoder's gated update of the sensory memory from the new mask value."""

    def __init__(self, value_dim: int, sensory_dim: int):
        super().__init__()
        self.transform = GConv2d(value_dim + sensory_dim, 3 * sensory_dim, 3, padding=1)

    def forward(self, value, sensory):
        return gru_update(sensory, self.transform(torch.cat([value, sensory], 2)))


class MaskEncoder(nn.Module):
    """ResNet-18 stem and three stages on [normalised image, mask], fused with pix_feat into the
    mask value; also the deep sensory update."""

    def __init__(self, cfg: MatAnyoneConfig):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = stage(BasicBlock, 64, 64, cfg.mask_blocks[0], stride=1)
        self.layer2 = stage(BasicBlock, 64, 128, cfg.mask_blocks[1], stride=2)
        self.layer3 = stage(BasicBlock, 128, 256, cfg.mask_blocks[2], stride=2)
        self.fuser = GroupFusion(cfg.pixel_dim, MASK_FINAL, cfg.value_dim)
        self.sensory_update = SensoryDeepUpdater(cfg.value_dim, cfg.sensory_dim)

    def forward(self, image, pix_feat, sensory, mask):
        """image normalised (B, 3, H, W); mask (B, N, H, W) -> value (B, N, C, h, w), new sensory."""
        b, n = mask.shape[:2]
        g = torch.cat([image.unsqueeze(1).expand(-1, n, -1, -1, -1), mask.unsqueeze(2)], 2).flatten(0, 1)
        g = self.relu(self.maxpool(self.bn1(self.conv1(g))))
        g = self.layer3(self.layer2(self.layer1(g)))
        value = self.fuser(pix_feat, g.view(b, n, *g.shape[1:]))
        return value, self.sensory_update(value, sensory)


class PixelFeatureFuser(nn.Module):
    """Adds the compressed sensory memory and last mask to the visual readout, then fuses it
    with pix_feat."""

    def __init__(self, cfg: MatAnyoneConfig):
        super().__init__()
        self.fuser = GroupFusion(cfg.pixel_dim, cfg.value_dim, cfg.embed_dim)
        self.sensory_compress = GConv2d(cfg.sensory_dim + 1, cfg.value_dim, 1)

    def forward(self, pix_feat, visual, sensory, last_mask):
        """last_mask (B, N, h, w), already at the feature stride."""
        p16 = visual + self.sensory_compress(torch.cat([sensory, last_mask.unsqueeze(2)], 2))
        return self.fuser(pix_feat, p16)


class DecoderFeatureProcessor(nn.Module):
    """1x1 projections of the skip features f8, f4, f2 and f1 (the normalised image)."""

    def __init__(self, cins, couts):
        super().__init__()
        self.transforms = nn.ModuleList(nn.Conv2d(cin, cout, 1) for cin, cout in zip(cins, couts))

    def forward(self, feats):
        return [t(f) for t, f in zip(self.transforms, feats)]


class MaskUpsampleBlock(nn.Module):
    """Bilinear x2, plus the projected skip feature, then a GroupResBlock."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.out_conv = GroupResBlock(cin, cout)

    def forward(self, g, skip):
        return self.out_conv(up2(g) + skip.unsqueeze(1))


class SensoryUpdater(nn.Module):
    """The decoder's gated update of the sensory memory from all five decoder levels (each
    area-resized to stride 16; the finest level carries the raw alpha logits as an extra channel)."""

    def __init__(self, dims, mid: int, sensory_dim: int):
        super().__init__()
        self.g16_conv = GConv2d(dims[0], mid, 1)
        self.g8_conv = GConv2d(dims[1], mid, 1)
        self.g4_conv = GConv2d(dims[2], mid, 1)
        self.g2_conv = GConv2d(dims[3], mid, 1)
        self.g1_conv = GConv2d(dims[4], mid, 1)
        self.transform = GConv2d(mid + sensory_dim, 3 * sensory_dim, 3, padding=1)

    def forward(self, levels, sensory):
        p16, p8, p4, p2, p1 = levels
        g = (self.g16_conv(p16) + self.g8_conv(area_down(p8, 2)) + self.g4_conv(area_down(p4, 4))
             + self.g2_conv(area_down(p2, 8)) + self.g1_conv(area_down(p1, 16)))
        return gru_update(sensory, self.transform(torch.cat([g, sensory], 2)))


class MaskDecoder(nn.Module):
    """Upsamples the readout from stride 16 to full size with the image skips; the alpha head is
    `pred_mat` (`pred_seg` is the segmentation head of the training mix, unused here)."""

    def __init__(self, cfg: MatAnyoneConfig):
        super().__init__()
        up = cfg.up_dims
        self.sensory_update = SensoryUpdater((up[0], up[1], up[2], up[3], up[4] + 1), cfg.sensory_dim, cfg.sensory_dim)
        self.decoder_feat_proc = DecoderFeatureProcessor((F8, F4, F2, 3), up[:-1])
        self.up_16_8 = MaskUpsampleBlock(up[0], up[1])
        self.up_8_4 = MaskUpsampleBlock(up[1], up[2])
        self.up_4_2 = MaskUpsampleBlock(up[2], up[3])
        self.up_2_1 = MaskUpsampleBlock(up[3], up[4])
        self.pred_seg = nn.Conv2d(up[4], 1, 3, padding=1)
        self.pred_mat = nn.Conv2d(up[4], 1, 3, padding=1)

    def forward(self, skips, readout, sensory):
        """skips (f8, f4, f2, f1); readout (B, N, C, h, w) -> alpha logits (B, N, H, W), new sensory."""
        s8, s4, s2, s1 = self.decoder_feat_proc(skips)
        p8 = self.up_16_8(readout, s8)
        p4 = self.up_8_4(p8, s4)
        p2 = self.up_4_2(p4, s2)
        p1 = self.up_2_1(p2, s1)
        logits = self.pred_mat(F.relu(p1.flatten(0, 1)))  # (BN, 1, H, W)
        p1 = torch.cat([p1, logits.view(*p1.shape[:2], 1, *logits.shape[-2:])], 2)
        sensory = self.sensory_update([readout, p8, p4, p2, p1], sensory)
        return logits.view(*p1.shape[:2], *logits.shape[-2:]), sensory


class UncertPred(nn.Module):
    """MatAnyone's uncertainty head (`temp_sparity`): from last and current pix_feat, the last
    mask and the change of the memory readout, a per-pixel logit of how much to trust the
    memory readout over the last frame's mask value."""

    def __init__(self, cfg: MatAnyoneConfig):
        super().__init__()
        self.conv1x1_v2 = nn.Conv2d(2 * cfg.pixel_dim + 1 + cfg.value_dim, 64, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.conv3x3 = nn.Conv2d(64, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.conv3x3_out = nn.Conv2d(32, 1, 3, padding=1, bias=False)

    def forward(self, last_pix_feat, pix_feat, last_mask, value_change):
        """last_mask (B, 1, h, w) at the feature stride; value_change (B, C, h, w)."""
        x = torch.cat([last_pix_feat, pix_feat, last_mask, value_change], 1)
        x = self.relu(self.bn1(self.conv1x1_v2(x)))
        x = self.relu(self.bn2(self.conv3x3(x)))
        return self.conv3x3_out(x)


class _SensoryAux(nn.Module):
    def __init__(self, sensory_dim: int, embed_dim: int):
        super().__init__()
        self.projection = GConv2d(sensory_dim, embed_dim + 1, 1)


class AuxComputer(nn.Module):
    """Training-only auxiliary head; kept because the checkpoints hold its weights."""

    def __init__(self, cfg: MatAnyoneConfig):
        super().__init__()
        self.sensory_aux = _SensoryAux(cfg.sensory_dim, cfg.embed_dim)


def similarity(mem_key, mem_shrinkage, query_key, query_selection):
    """Anisotropic L2 similarity (XMem): -sum_c e_qc (k_nc - q_qc)^2 * s_n / sqrt(C_k).

    mem_key (B, C_k, N), mem_shrinkage (B, 1, N), query_key / query_selection (B, C_k, P)
    -> (B, N, P), N memory tokens, P query pixels.
    """
    mk = mem_key.transpose(1, 2)
    a_sq = mk.pow(2) @ query_selection
    two_ab = 2 * (mk @ (query_key * query_selection))
    b_sq = (query_selection * query_key.pow(2)).sum(1, keepdim=True)
    return (-a_sq + two_ab - b_sq) * mem_shrinkage.transpose(1, 2) / math.sqrt(mem_key.shape[1])


def topk_affinity(sim: torch.Tensor, top_k: int) -> torch.Tensor:
    """The official readout weights: softmax over each query pixel's `top_k` most similar memory
    tokens, zero elsewhere (k capped at the number of tokens). The official code exponentiates
    without subtracting the maximum; subtracting it is the same softmax without underflow."""
    values, indices = torch.topk(sim, k=min(top_k, sim.shape[1]), dim=1)
    return torch.zeros_like(sim).scatter(1, indices, torch.softmax(values, 1))


def affinity(sim: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """Readout weights over the memory axis: the official top-k softmax, or (None) a plain one."""
    return torch.softmax(sim, 1) if top_k is None else topk_affinity(sim, top_k)


def exclude_empty(sim: torch.Tensor, token_valid: torch.Tensor) -> torch.Tensor:
    """`sim` with the tokens of empty ring slots (token_valid (B, N) = 0) pushed to zero weight,
    in the top-k softmax too: they rank last and their exponential underflows to 0."""
    return torch.where(token_valid.unsqueeze(-1) > 0.5, sim, EMPTY_SLOT_SIMILARITY)


def slot_tokens(x: torch.Tensor) -> torch.Tensor:
    """Memory frames (B, K, C, h, w) as tokens (B, C, K*h*w), frame-major as the official store
    concatenates them."""
    return x.transpose(1, 2).flatten(2)


class MatAnyone(nn.Module):
    """The whole network, official attribute names (single-object build)."""

    def __init__(self, cfg: MatAnyoneConfig = MatAnyoneConfig()):
        super().__init__()
        if cfg.embed_dim != cfg.up_dims[0]:
            raise ValueError("embed_dim must equal up_dims[0]")
        self.cfg = cfg
        self.pixel_encoder = PixelEncoder(cfg.pixel_blocks)
        self.pix_feat_proj = nn.Conv2d(F16, cfg.pixel_dim, 1)
        self.key_proj = KeyProjection(F16, cfg.pixel_dim, cfg.key_dim)
        self.mask_encoder = MaskEncoder(cfg)
        self.mask_decoder = MaskDecoder(cfg)
        self.pixel_fuser = PixelFeatureFuser(cfg)
        self.object_transformer = QueryTransformer(cfg.embed_dim, cfg.num_heads, cfg.num_queries, cfg.num_blocks,
                                                   cfg.ff_dim, pe_scale=cfg.pe_scale,
                                                   pe_temperature=cfg.pe_temperature)
        self.object_summarizer = ObjectSummarizer(cfg.value_dim, cfg.embed_dim, cfg.num_queries,
                                                  pe_scale=cfg.pe_scale, pe_temperature=cfg.pe_temperature)
        self.aux_computer = AuxComputer(cfg)
        self.temp_sparity = UncertPred(cfg)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def normalize(self, image):
        """RGB in [0, 1] -> ImageNet-normalised."""
        return (image - self.pixel_mean) / self.pixel_std

    def encode_image(self, image):
        """image (B, 3, H, W) in [0, 1] -> (f16, f8, f4, f2, f1 = normalised image), pix_feat."""
        x = self.normalize(image)
        f16, f8, f4, f2 = self.pixel_encoder(x)
        return (f16, f8, f4, f2, x), self.pix_feat_proj(f16)

    def transform_key(self, f16):
        """-> key (B, C_k, h, w), shrinkage (B, 1, h, w), selection (B, C_k, h, w)."""
        return self.key_proj(f16)

    def encode_mask(self, image, pix_feat, sensory, mask):
        """image in [0, 1]; mask (B, N, H, W) -> value (B, N, C, h, w), deep-updated sensory,
        object summary (B, N, Q, C + 1)."""
        value, new_sensory = self.mask_encoder(self.normalize(image), pix_feat, sensory, mask)
        return value, new_sensory, self.object_summarizer(mask, value)

    def pixel_fusion(self, pix_feat, visual, sensory, last_mask):
        """last_mask (B, N, H, W) at full size."""
        return self.pixel_fuser(pix_feat, visual, sensory, area_down(last_mask, STRIDE))

    def readout_query(self, pixel, obj_memory):
        return self.object_transformer(pixel, obj_memory)

    def read_first_frame_memory(self, pix_feat, last_value, sensory, last_mask, obj_memory):
        """The readout of a first-frame (warm-up) step: no attention; the last mask value stands
        in for the memory readout."""
        return self.readout_query(self.pixel_fusion(pix_feat, last_value, sensory, last_mask), obj_memory)

    def visual_readout(self, affinity, mem_value, pix_feat, last_pix_feat, last_mask, last_value):
        """Memory values weighted by `affinity` (B, N_tok, hw), then blended per pixel with the last
        frame's mask value by the uncertainty head's confidence. mem_value (B, C, N_tok)."""
        b, _, h, w = pix_feat.shape
        visual = (mem_value @ affinity).view(b, 1, -1, h, w)
        trust = torch.sigmoid(self.temp_sparity(last_pix_feat, pix_feat, area_down(last_mask, STRIDE),
                                                visual[:, 0] - last_value[:, 0])).unsqueeze(1)
        return visual * trust + last_value * (1 - trust)

    def read_memory(self, pix_feat, key, selection, last_pix_feat, last_mask, last_value, sensory, obj_memory,
                    mem_key, mem_shrinkage, mem_value, *, top_k: int | None):
        """The readout of an ordinary step. Memory as tokens: mem_key (B, C_k, N_tok), mem_shrinkage
        (B, 1, N_tok), mem_value (B, C, N_tok); `top_k` as in :func:`affinity`."""
        sim = similarity(mem_key, mem_shrinkage, key.flatten(2), selection.flatten(2))
        visual = self.visual_readout(affinity(sim, top_k), mem_value, pix_feat, last_pix_feat, last_mask, last_value)
        return self.readout_query(self.pixel_fusion(pix_feat, visual, sensory, last_mask), obj_memory)

    def segment(self, skips, readout, sensory):
        """skips (f8, f4, f2, f1) -> alpha (B, N, H, W) clamped to [0, 1], decoder-updated sensory."""
        logits, sensory = self.mask_decoder(skips, readout, sensory)
        return logits.clamp(0.0, 1.0), sensory


class ImageEncoderGraph(nn.Module):
    """Graph 1: image (1, 3, H, W) RGB in [0, 1] -> pix_feat (1, P, h, w), key (1, C_k, h, w),
    shrinkage (1, 1, h, w), selection (1, C_k, h, w), f8 (1, 512, H/8, W/8), f4 (1, 256, H/4, W/4),
    f2 (1, 64, H/2, W/2). The decoder's f1 skip is recomputed from the image by the SegmenterGraph."""

    input_names = ("image",)
    output_names = ("pix_feat", "key", "shrinkage", "selection", "f8", "f4", "f2")

    def __init__(self, net: MatAnyone):
        super().__init__()
        self.net = net

    def forward(self, image):
        (f16, f8, f4, f2, _), pix_feat = self.net.encode_image(image)
        key, shrinkage, selection = self.net.transform_key(f16)
        return pix_feat, key, shrinkage, selection, f8, f4, f2


class MaskEncoderGraph(nn.Module):
    """Graph 2: image (1, 3, H, W), pix_feat (1, P, h, w), sensory (1, 1, S, h, w), mask (1, 1, H, W)
    in [0, 1] -> value (1, 1, V, h, w), sensory_out (1, 1, S, h, w), obj_summary (1, 1, Q, E + 1).

    Runs every frame (the value is the next frame's `last_value`); `sensory_out` and
    `obj_summary` are used only on the mask step, warm-up steps and memory frames.
    """

    input_names = ("image", "pix_feat", "sensory", "mask")
    output_names = ("value", "sensory_out", "obj_summary")

    def __init__(self, net: MatAnyone):
        super().__init__()
        self.net = net

    def forward(self, image, pix_feat, sensory, mask):
        return self.net.encode_mask(image, pix_feat, sensory, mask)


class MemoryReadoutGraph(nn.Module):
    """Graph 3: the readout over a fixed ring of K memory frames.

    Inputs: pix_feat (1, P, h, w), key (1, C_k, h, w), selection (1, C_k, h, w) of this frame;
    last_pix_feat (1, P, h, w), last_mask (1, 1, H, W), last_value (1, 1, V, h, w) of the last
    frame; sensory (1, 1, S, h, w); obj_memory (1, 1, Q, E + 1); mem_key (1, K, C_k, h, w),
    mem_shrinkage (1, K, 1, h, w), mem_value (1, K, V, h, w), mem_valid (1, K) (1 = slot holds a
    frame); first_frame (1,) (1 = warm-up step: the last value replaces the memory readout,
    the ring is ignored). Output: readout (1, 1, E, h, w).

    `top_k` None reads with a plain softmax over all valid slots' tokens; an int with the
    official top-k softmax (ONNX TopK + ScatterElements). Empty slots get
    :data:`EMPTY_SLOT_SIMILARITY`, which removes them in both modes.
    """

    input_names = ("pix_feat", "key", "selection", "last_pix_feat", "last_mask", "last_value", "sensory",
                   "obj_memory", "mem_key", "mem_shrinkage", "mem_value", "mem_valid", "first_frame")
    output_names = ("readout",)

    def __init__(self, net: MatAnyone, *, top_k: int | None = None):
        super().__init__()
        self.net = net
        self.top_k = top_k

    def forward(self, pix_feat, key, selection, last_pix_feat, last_mask, last_value, sensory, obj_memory,
                mem_key, mem_shrinkage, mem_value, mem_valid, first_frame):
        h, w = mem_key.shape[-2:]
        token_valid = mem_valid.unsqueeze(-1).expand(-1, -1, h * w).flatten(1)
        sim = similarity(slot_tokens(mem_key), slot_tokens(mem_shrinkage), key.flatten(2), selection.flatten(2))
        weights = affinity(exclude_empty(sim, token_valid), self.top_k)
        visual = self.net.visual_readout(weights, slot_tokens(mem_value), pix_feat,
                                         last_pix_feat, last_mask, last_value)
        ff = first_frame.view(1, 1, 1, 1, 1)
        visual = ff * last_value + (1 - ff) * visual
        return self.net.readout_query(self.net.pixel_fusion(pix_feat, visual, sensory, last_mask), obj_memory)


class SegmenterGraph(nn.Module):
    """Graph 4: image (1, 3, H, W), f8, f4, f2 (from the ImageEncoder), readout (1, 1, E, h, w),
    sensory (1, 1, S, h, w) -> alpha (1, 1, H, W) in [0, 1], sensory_out (1, 1, S, h, w) (always
    committed)."""

    input_names = ("image", "f8", "f4", "f2", "readout", "sensory")
    output_names = ("alpha", "sensory_out")

    def __init__(self, net: MatAnyone):
        super().__init__()
        self.net = net

    def forward(self, image, f8, f4, f2, readout, sensory):
        return self.net.segment((f8, f4, f2, self.net.normalize(image)), readout, sensory)


def single_object_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A multi-object build's state dict as the single-object layout, as the official
    `load_weights` converts it: the mask encoder's and sensory compressor's last input channel
    reads the "other objects" mask, which is all zeros with one object, so dropping it is exact."""
    state = dict(state)
    conv1 = state.get("mask_encoder.conv1.weight")
    if conv1 is not None and conv1.shape[1] == 5:
        state["mask_encoder.conv1.weight"] = conv1[:, :4]
        compress = state["pixel_fuser.sensory_compress.weight"]
        state["pixel_fuser.sensory_compress.weight"] = compress[:, :-1]
    return state


def load_weights(net: MatAnyone, path: Path) -> None:
    """Load `matanyone.pth` (GitHub release) or `model.safetensors` (Hugging Face) strictly;
    `module.` / `_orig_mod.` prefixes are stripped, a multi-object build is converted."""
    try:
        load_into(net, single_object_state(read_checkpoint(Path(path))), source=str(path))
    except MtcError as exc:
        raise MtcError(exc.message, hint="pass the official MatAnyone weights (matanyone.pth or "
                                         "PeiqingYang/MatAnyone model.safetensors)") from None
