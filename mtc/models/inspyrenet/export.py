"""The two-pass blend's three graphs as ONNX, with their PyTorch references (imports torch)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import torch

from mtc.errors import MtcError
from mtc.export.program import ProgramBuild
from mtc.export.torch_export import TorchBackend, export_onnx
from mtc.models.contracts import IMAGENET_MEAN, IMAGENET_STD
from mtc.models.inspyrenet import PARITY_TOLERANCE, Architecture, Blend, blend_program
from mtc.models.inspyrenet.blend import (
    BLEND_INPUTS,
    BLEND_OUTPUTS,
    HR_INPUTS,
    HR_OUTPUTS,
    LR_INPUTS,
    LR_OUTPUTS,
    SINGLE_INPUTS,
    SINGLE_OUTPUTS,
    TwoPassMatte,
)
from mtc.models.inspyrenet.net import load_network

log = logging.getLogger("mtc")

OPSET = 17  # as the single-pass graph


def two_pass_matte(arch: Architecture, blend: Blend, weights: Path) -> TwoPassMatte:
    """The network with an official checkpoint, wrapped as the blend's three modules."""
    return TwoPassMatte(load_network(arch, weights), blend.full_size, arch.base_size).eval()


def example_image(size: tuple[int, int]) -> np.ndarray:
    """The built-in clip's first frame as the runtime feeds it at `size`: PIL bilinear, ImageNet
    mean/std. A frame with a subject: on noise the map can hold no object, and the min-max
    stretch of a nearly flat sigmoid magnifies float noise beyond any tolerance."""
    from PIL import Image

    from mtc.data.builtin_clip import ClipSpec, builtin_clip

    frame = builtin_clip(ClipSpec(width=size[1], height=size[0], frames=1))[0]
    rgb = np.asarray(Image.fromarray(frame).resize(size[::-1], Image.BILINEAR), np.float32) / 255
    normalised = (rgb - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(normalised.transpose(2, 0, 1)[None])


def check_graphs(graphs: dict[str, onnx.ModelProto], values: dict[str, np.ndarray],
                 expected: dict[str, dict[str, np.ndarray]]) -> dict[str, float]:
    """Each graph on ONNX Runtime against PyTorch on the *same* inputs: `values` holds the PyTorch
    chain's image and the values the graphs read, `expected` each graph's PyTorch outputs.
    MtcError past PARITY_TOLERANCE times the output's scale (the passes give logits in the tens).

    The program check of `mtc export` compares the two chains end to end, where a transition
    mask may legitimately differ (see `BLEND_CHAIN_TOLERANCE`); this is the check that holds.
    """
    from mtc.backends import OrtBackend

    worst = {}
    for name, model in graphs.items():
        session = OrtBackend(model.SerializeToString(), allow_spinning=False)
        actual = session.run({k: values[k] for k in session.input_names})
        for output, reference in expected[name].items():
            reference = reference.astype(np.float64)
            diff = float(np.max(np.abs(actual[output] - reference)))
            scale = max(1.0, float(np.max(np.abs(reference))))
            worst[f"{name}.{output}"] = diff
            if not diff <= PARITY_TOLERANCE * scale:  # NaN fails too
                raise MtcError(f"graph {name} differs from PyTorch by {diff:.2e} on {output} (at most "
                               f"{PARITY_TOLERANCE * scale:.1e} allowed, outputs up to {scale:.3g})",
                               hint="report this as a bug of the InSPyReNet blend export")
    log.info("blend graphs vs PyTorch on the same inputs: %s", {k: f"{v:.1e}" for k, v in worst.items()})
    return worst


def build(arch: Architecture, blend: Blend, weights: Path) -> ProgramBuild:
    """The `lr`, `hr`, `blend` and `single` graphs, static at the blend's full size and batch 1,
    each checked against PyTorch on the same inputs."""
    blend.check(arch.base_size)
    matte = two_pass_matte(arch, blend, weights)
    modules = {"lr": (matte.lr, LR_INPUTS, LR_OUTPUTS), "hr": (matte.hr, HR_INPUTS, HR_OUTPUTS),
               "blend": (matte.blend, BLEND_INPUTS, BLEND_OUTPUTS),
               "single": (matte.single, SINGLE_INPUTS, SINGLE_OUTPUTS)}
    references = {name: TorchBackend(module, input_names=inputs, output_names=outputs)
                  for name, (module, inputs, outputs) in modules.items()}
    values = {"image": example_image(blend.full_size)}
    graphs, expected = {}, {}
    for name, (module, inputs, outputs) in modules.items():
        feeds = {k: values[k] for k in inputs}
        graphs[name] = export_onnx(module, tuple(torch.from_numpy(feeds[k]) for k in inputs), input_names=inputs,
                                   output_names=outputs, opset=OPSET)
        expected[name] = references[name].run(feeds)
        values.update({k: v for k, v in expected[name].items() if k != "alpha"})  # two graphs make an alpha
    check_graphs(graphs, values, expected)
    return ProgramBuild(graphs=graphs, references=references, program=blend_program(blend.threshold))
