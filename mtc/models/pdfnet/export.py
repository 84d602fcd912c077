"""The two PDFNet graphs as ONNX, with their PyTorch references and the program (imports torch)."""

from __future__ import annotations

from pathlib import Path

import torch

from mtc.export.program import ProgramBuild
from mtc.export.torch_export import TorchBackend, export_onnx
from mtc.models.pdfnet import DEPTH_INPUT_SIZE, INPUT_SIZE, program
from mtc.models.pdfnet.depth import DEPTH_ANYTHING_V2_SMALL, DepthAnythingConfig, load_depth_model
from mtc.models.pdfnet.graphs import DEPTH_INPUTS, DEPTH_OUTPUTS, PDFNET_INPUTS, PDFNET_OUTPUTS, DepthGraph, PDFNetGraph
from mtc.models.pdfnet.net import PDFNET_SWINB, PDFNetConfig, load_network

OPSET = 19


def build(weights: Path, depth_weights: Path, *, size: int = INPUT_SIZE, config: PDFNetConfig = PDFNET_SWINB,
          depth_config: DepthAnythingConfig = DEPTH_ANYTHING_V2_SMALL,
          depth_input: int = DEPTH_INPUT_SIZE) -> ProgramBuild:
    """Both graphs, static at size x size, from PDFNet's and Depth Anything V2 Small's checkpoints."""
    depth = DepthGraph(load_depth_model(depth_weights, depth_config), input_size=depth_input)
    pdfnet = PDFNetGraph(load_network(weights, config))
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        depth_map = depth(image)
    modules = {"depth": (depth, (image,), DEPTH_INPUTS, DEPTH_OUTPUTS),
               "pdfnet": (pdfnet, (image, depth_map), PDFNET_INPUTS, PDFNET_OUTPUTS)}
    graphs, references = {}, {}
    for name, (module, example, inputs, outputs) in modules.items():
        graphs[name] = export_onnx(module, example, input_names=inputs, output_names=outputs, opset=OPSET)
        references[name] = TorchBackend(module, input_names=inputs, output_names=outputs)
    return ProgramBuild(graphs=graphs, references=references, program=program())
