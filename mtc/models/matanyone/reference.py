"""Clip-level MatAnyone inference in PyTorch: the official flow, and the same flow on the four
export graphs with a fixed memory ring (imports torch).

Both take frames (T, 3, H, W) RGB in [0, 1] with H and W multiples of 16 (the official code pads
to that; padding is the caller's job) and the first frame's mask (H, W) in [0, 1] as the official
script feeds it (after its dilate / erode and the division by 255), and return the alphas
(T, 1, H, W): frame 0's from the last warm-up step, then one per later frame.

The flow (official `InferenceCore.step` as `inference_matanyone.py` drives it):

1. mask step on frame 0: encode the mask with a zero sensory memory; the frame becomes the
   permanent memory, its summary the object memory;
2. ``n_warmup + 1`` first-frame steps on frame 0: read without attention (the last mask value
   stands in for the memory readout), segment, then reset the working memory and object memory
   and store this frame as the new permanent memory;
3. one ordinary step per later frame: attention readout over the permanent frame and the
   working frames, uncertainty blend, segment; every ``mem_every``-th step stores the frame
   (FIFO of ``max_mem_frames - 1`` working frames, object memory summed), otherwise only the
   mask value is kept for the next step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from mtc.models.matanyone import MAX_MEM_FRAMES, MEM_EVERY, N_WARMUP, TOP_K
from mtc.models.matanyone.net import (
    STRIDE,
    ImageEncoderGraph,
    MaskEncoderGraph,
    MatAnyone,
    MemoryReadoutGraph,
    SegmenterGraph,
)


def _check_inputs(frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be (T, 3, H, W), got {tuple(frames.shape)}")
    h, w = frames.shape[-2:]
    if h % STRIDE or w % STRIDE:
        raise ValueError(f"H and W must be multiples of {STRIDE}, got {h}x{w}")
    if tuple(mask.shape[-2:]) != (h, w):
        raise ValueError(f"mask {tuple(mask.shape)} does not match frames {h}x{w}")
    return mask.reshape(1, 1, h, w).to(frames.dtype)


class MatAnyoneReference:
    """The official per-frame flow on the monolithic :class:`MatAnyone`, with the official
    memory: a token list (the permanent frame, then up to ``max_mem_frames - 1`` working frames,
    FIFO) read with the top-k softmax; ``top_k=None`` reads with a plain softmax instead."""

    def __init__(self, net: MatAnyone, *, mem_every: int = MEM_EVERY, max_mem_frames: int = MAX_MEM_FRAMES,
                 top_k: int | None = TOP_K, n_warmup: int = N_WARMUP):
        self.net = net.eval()
        self.mem_every = mem_every
        self.max_work_frames = max_mem_frames - 1  # the permanent frame counts towards max_mem_frames
        self.top_k = top_k
        self.n_warmup = n_warmup

    def _encode(self, image):
        (f16, f8, f4, f2, f1), pix_feat = self.net.encode_image(image)
        key, shrinkage, selection = self.net.transform_key(f16)
        return dict(skips=(f8, f4, f2, f1), pix_feat=pix_feat, key=key, shrinkage=shrinkage, selection=selection)

    def _memorize(self, image, feats, *, reset: bool):
        """Encode the current last mask with a deep update and store the frame (`reset`: as the
        new permanent frame, working and object memory cleared)."""
        value, self.sensory, summary = self.net.encode_mask(image, feats["pix_feat"], self.sensory, self.last_mask)
        entry = (feats["key"], feats["shrinkage"], value)
        if reset:
            self.permanent, self.work, self.obj_memory = entry, [], summary
        else:
            self.work = (self.work + [entry])[-self.max_work_frames:]
            self.obj_memory = self.obj_memory + summary
        self.last_value = value

    def _read(self, feats):
        frames = [self.permanent, *self.work]
        mem_key = torch.cat([k.flatten(2) for k, _, _ in frames], -1)
        mem_shrinkage = torch.cat([s.flatten(2) for _, s, _ in frames], -1)
        mem_value = torch.cat([v[:, 0].flatten(2) for _, _, v in frames], -1)
        return self.net.read_memory(feats["pix_feat"], feats["key"], feats["selection"], self.last_pix_feat,
                                    self.last_mask, self.last_value, self.sensory, self.obj_memory,
                                    mem_key, mem_shrinkage, mem_value, top_k=self.top_k)

    @torch.no_grad()
    def __call__(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = _check_inputs(frames, mask)
        image = frames[:1]
        feats = self._encode(image)
        # mask step
        self.sensory = frames.new_zeros(1, 1, self.net.cfg.sensory_dim, *feats["key"].shape[-2:])
        self.last_mask, self.last_pix_feat = mask, feats["pix_feat"]
        self._memorize(image, feats, reset=True)
        # first-frame (warm-up) steps
        for _ in range(self.n_warmup + 1):
            readout = self.net.read_first_frame_memory(feats["pix_feat"], self.last_value, self.sensory,
                                                       self.last_mask, self.obj_memory)
            alpha, self.sensory = self.net.segment(feats["skips"], readout, self.sensory)
            self.last_mask, self.last_pix_feat = alpha, feats["pix_feat"]
            self._memorize(image, feats, reset=True)
        alphas = [alpha]
        # ordinary steps
        since_memory = 0
        for t in range(1, frames.shape[0]):
            image = frames[t:t + 1]
            feats = self._encode(image)
            since_memory += 1
            readout = self._read(feats)
            alpha, self.sensory = self.net.segment(feats["skips"], readout, self.sensory)
            self.last_mask, self.last_pix_feat = alpha, feats["pix_feat"]
            if since_memory >= self.mem_every:
                self._memorize(image, feats, reset=False)
                since_memory = 0
            else:
                self.last_value = self.net.encode_mask(image, feats["pix_feat"], self.sensory, alpha)[0]
            alphas.append(alpha)
        return torch.cat(alphas)


@dataclass(frozen=True)
class Graphs:
    """The four graphs as callables on tensors (the torch modules, or wrappers of exported ones)."""

    image_encoder: Callable
    mask_encoder: Callable
    memory_readout: Callable
    segmenter: Callable

    @classmethod
    def from_net(cls, net: MatAnyone, *, top_k: int | None = None) -> Graphs:
        """The torch graphs; `top_k` selects the readout's softmax (see :class:`MemoryReadoutGraph`)."""
        net = net.eval()
        return cls(ImageEncoderGraph(net), MaskEncoderGraph(net), MemoryReadoutGraph(net, top_k=top_k),
                   SegmenterGraph(net))


@torch.no_grad()
def run_graphs(graphs: Graphs, frames: torch.Tensor, mask: torch.Tensor, *, mem_every: int = MEM_EVERY,
               max_mem_frames: int = MAX_MEM_FRAMES, n_warmup: int = N_WARMUP,
               sensory_dim: int, value_dim: int) -> torch.Tensor:
    """The official flow on the four graphs, the memory a ring of ``max_mem_frames`` slots:
    slot 0 the permanent frame, slots 1.. the working frames (the oldest overwritten), with a
    validity vector. This is the state handling the compiled runtime implements."""
    mask = _check_inputs(frames, mask)
    image = frames[:1]
    pix_feat, key, shrinkage, selection, f8, f4, f2 = graphs.image_encoder(image)
    h, w = key.shape[-2:]
    mem_key = key.new_zeros(1, max_mem_frames, key.shape[1], h, w)
    mem_shrinkage = key.new_zeros(1, max_mem_frames, 1, h, w)
    mem_value = key.new_zeros(1, max_mem_frames, value_dim, h, w)
    mem_valid = key.new_zeros(1, max_mem_frames)
    next_slot = 1

    def store(slot, value):
        mem_key[:, slot], mem_shrinkage[:, slot], mem_value[:, slot] = key, shrinkage, value[:, 0]
        mem_valid[:, slot] = 1

    # mask step: frame 0 becomes the permanent slot
    sensory = key.new_zeros(1, 1, sensory_dim, h, w)
    last_mask, last_pix_feat = mask, pix_feat
    last_value, sensory, obj_memory = graphs.mask_encoder(image, pix_feat, sensory, last_mask)
    store(0, last_value)
    first_frame, ordinary = key.new_ones(1), key.new_zeros(1)
    for _ in range(n_warmup + 1):
        readout = graphs.memory_readout(pix_feat, key, selection, last_pix_feat, last_mask, last_value, sensory,
                                        obj_memory, mem_key, mem_shrinkage, mem_value, mem_valid, first_frame)
        alpha, sensory = graphs.segmenter(image, f8, f4, f2, readout, sensory)
        last_mask, last_pix_feat = alpha, pix_feat
        last_value, sensory, obj_memory = graphs.mask_encoder(image, pix_feat, sensory, alpha)
        mem_valid.zero_()
        store(0, last_value)
        next_slot = 1
    alphas = [alpha]
    since_memory = 0
    for t in range(1, frames.shape[0]):
        image = frames[t:t + 1]
        pix_feat, key, shrinkage, selection, f8, f4, f2 = graphs.image_encoder(image)
        since_memory += 1
        readout = graphs.memory_readout(pix_feat, key, selection, last_pix_feat, last_mask, last_value, sensory,
                                        obj_memory, mem_key, mem_shrinkage, mem_value, mem_valid, ordinary)
        alpha, sensory = graphs.segmenter(image, f8, f4, f2, readout, sensory)
        last_mask, last_pix_feat = alpha, pix_feat
        last_value, deep_sensory, summary = graphs.mask_encoder(image, pix_feat, sensory, alpha)
        if since_memory >= mem_every:
            store(next_slot, last_value)
            next_slot = next_slot % (max_mem_frames - 1) + 1
            sensory, obj_memory = deep_sensory, obj_memory + summary
            since_memory = 0
        alphas.append(alpha)
    return torch.cat(alphas)
