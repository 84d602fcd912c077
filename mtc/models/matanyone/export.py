"""The four MatAnyone graphs as ONNX, with their PyTorch references and the program (imports torch)."""

from __future__ import annotations

from pathlib import Path

import torch

from mtc.export.program import ProgramBuild
from mtc.export.torch_export import TorchBackend, export_onnx
from mtc.models.matanyone import MAX_MEM_FRAMES, TOP_K, program
from mtc.models.matanyone.net import (
    ImageEncoderGraph,
    MaskEncoderGraph,
    MatAnyone,
    MatAnyoneConfig,
    MemoryReadoutGraph,
    SegmenterGraph,
    load_weights,
)

OPSET = 19
EXAMPLE_SIZE = (64, 64)  # traced at this size; every spatial dim is dynamic

# Dynamic dims of each graph tensor: full resolution (H, W), and strides 2, 4, 8 and 16.
_FULL, _S2, _S4, _S8, _S16 = {2: "H", 3: "W"}, {2: "H2", 3: "W2"}, {2: "H4", 3: "W4"}, {2: "H8", 3: "W8"}, {2: "h", 3: "w"}
_S16_5D = {3: "h", 4: "w"}
DYNAMIC = {
    "image": _FULL, "mask": _FULL, "last_mask": _FULL, "alpha": _FULL, "f2": _S2, "f4": _S4, "f8": _S8,
    **dict.fromkeys(("pix_feat", "key", "shrinkage", "selection", "last_pix_feat"), _S16),
    **dict.fromkeys(("sensory", "sensory_out", "value", "last_value", "readout", "mem_key", "mem_shrinkage",
                     "mem_value"), _S16_5D),
}


def graph_modules(net: MatAnyone) -> dict[str, torch.nn.Module]:
    net = net.eval()
    return {"image_encoder": ImageEncoderGraph(net), "mask_encoder": MaskEncoderGraph(net),
            "memory_readout": MemoryReadoutGraph(net, top_k=TOP_K), "segmenter": SegmenterGraph(net)}


@torch.no_grad()
def _examples(net: MatAnyone, modules: dict) -> dict[str, tuple]:
    """One input per graph at EXAMPLE_SIZE, each made by the graphs before it."""
    cfg = net.cfg
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, *EXAMPLE_SIZE, generator=generator)
    mask = (torch.rand(1, 1, *EXAMPLE_SIZE, generator=generator) > 0.5).float()
    pix_feat, key, shrinkage, selection, f8, f4, f2 = modules["image_encoder"](image)
    h, w = key.shape[-2:]
    sensory = torch.zeros(1, 1, cfg.sensory_dim, h, w)
    value, sensory_out, summary = modules["mask_encoder"](image, pix_feat, sensory, mask)
    ring = lambda channels: torch.zeros(1, MAX_MEM_FRAMES, channels, h, w)  # noqa: E731
    valid = torch.zeros(1, MAX_MEM_FRAMES)
    valid[0, 0] = 1
    readout_inputs = (pix_feat, key, selection, pix_feat, mask, value, sensory_out, summary, ring(cfg.key_dim),
                      ring(1), ring(cfg.value_dim), valid, torch.zeros(1))
    readout = modules["memory_readout"](*readout_inputs)
    return {"image_encoder": (image,), "mask_encoder": (image, pix_feat, sensory, mask),
            "memory_readout": readout_inputs, "segmenter": (image, f8, f4, f2, readout, sensory_out)}


def build(weights: Path, *, config: MatAnyoneConfig | None = None) -> ProgramBuild:
    """The exported graphs of the checkpoint at `weights`, their references and the program."""
    net = MatAnyone(config or MatAnyoneConfig())
    load_weights(net, weights)
    modules = graph_modules(net)
    examples = _examples(net, modules)
    graphs, references = {}, {}
    for name, module in modules.items():
        names = dict(input_names=module.input_names, output_names=module.output_names)
        axes = {n: DYNAMIC[n] for n in (*module.input_names, *module.output_names) if n in DYNAMIC}
        graphs[name] = export_onnx(module, examples[name], dynamic_axes=axes, opset=OPSET, **names)
        references[name] = TorchBackend(module, **names)
    cfg = net.cfg
    return ProgramBuild(graphs=graphs, references=references,
                        program=program(key_dim=cfg.key_dim, value_dim=cfg.value_dim, sensory_dim=cfg.sensory_dim,
                                        pixel_dim=cfg.pixel_dim, summaries=cfg.num_queries, embed_dim=cfg.embed_dim))
