"""MatAnyone (Yang et al., CVPR 2025, NTU S-Lab License 1.0, non-commercial): video matting
guided by a first-frame mask, built on Cutie's memory design.

Re-implemented from the facts of the official code (github.com/pq-yang/MatAnyone:
`matanyone/model/*`, `matanyone/inference/*`, `config/model/base.yaml`,
`config/eval_matanyone_config.yaml`, `inference_matanyone.py`) in the key layout of the
single-object build the official script loads (`matanyone.pth`): a ResNet-50 pixel / key encoder,
a ResNet-18 mask / value encoder, a sensory memory (gated recurrent state), an object memory
of summaries read by a 3-block object transformer with 16 queries, an uncertainty head that
blends the memory readout with the last frame's mask value, and a decoder to full resolution.

The artifact is four graphs run by a program (mtc.artifact.program), which holds the memory as
data the runtime executes: the sensory state, the last frame's mask, features and mask value,
the object memory (a running sum of summaries), and a ring of ``MAX_MEM_FRAMES`` memory frames
(the permanent first frame + 4 working frames, first in first out, one every ``MEM_EVERY``
frames). The readout is the official top-30 softmax with a static k (the plain softmax was
measured too far from it: max |d alpha| 0.026 on the full network with random weights). The
first frame follows the official script: the user's mask, closed by ``MASK_KERNEL`` pixels,
is encoded as the permanent memory, then ``N_WARMUP + 1`` first-frame steps run on frame 0.

Importing this package must not import torch. The torch parts:

* ``net``: the network (:class:`~mtc.models.matanyone.net.MatAnyone`) and the four export
  graphs (image encoder, mask encoder, memory readout over a fixed ring, segmenter);
* ``modules``: its building blocks;
* ``reference``: clip-level inference, the official way and through the four graphs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mtc.artifact.manifest import ModelIO, Preprocess, QuantRecipe, TensorSpec
from mtc.artifact.program import GraphSpec, Phase, Program, Prompt, Ring, Slot, Step
from mtc.models.registry import ModelSpec, VariantSpec, register
from mtc.weights import UrlSource, WeightFile

if TYPE_CHECKING:
    from mtc.export.program import ProgramBuild

MEM_EVERY = 5  # a frame is stored every 5 ordinary steps
MAX_MEM_FRAMES = 5  # memory frames read: the permanent first frame + 4 working frames (FIFO)
TOP_K = 30  # the official readout's softmax keeps each pixel's 30 most similar memory tokens
N_WARMUP = 10  # the official script repeats frame 0 this many times before the clip
MASK_KERNEL = 10  # the first-frame mask is dilated, then eroded, with a 10x10 ellipse
KEY_DIM = 64
VALUE_DIM = 256
SENSORY_DIM = 256


# ---- the registered family (data; torch only inside the build functions) --------------------

LICENSE = "NTU S-Lab License 1.0 (non-commercial use only)"
STRIDE = 16
H16, W16 = f"H/{STRIDE}", f"W/{STRIDE}"

# The graphs' inputs and outputs, in the order net.py's graph modules take and give them.
GRAPHS = (
    GraphSpec("image_encoder", "image_encoder.onnx", ("image",),
              ("pix_feat", "key", "shrinkage", "selection", "f8", "f4", "f2")),
    GraphSpec("mask_encoder", "mask_encoder.onnx", ("image", "pix_feat", "sensory", "mask"),
              ("value", "sensory_out", "obj_summary")),
    GraphSpec("memory_readout", "memory_readout.onnx",
              ("pix_feat", "key", "selection", "last_pix_feat", "last_mask", "last_value", "sensory", "obj_memory",
               "mem_key", "mem_shrinkage", "mem_value", "mem_valid", "first_frame"), ("readout",)),
    GraphSpec("segmenter", "segmenter.onnx", ("image", "f8", "f4", "f2", "readout", "sensory"),
              ("alpha", "sensory_out")),
)


def _run(graph: str, *, inputs: dict | None = None, outputs: dict | None = None, every: int = 0) -> Step:
    return Step(op="run", graph=graph, inputs=inputs or {}, outputs=outputs or {}, every=every)


def _set(target: str, source: str, *, op: str = "set", every: int = 0) -> Step:
    return Step(op=op, target=target, source=source, every=every)


_RING_INPUTS = {"mem_key": "memory.key", "mem_shrinkage": "memory.shrinkage", "mem_value": "memory.value",
                "mem_valid": "memory.valid"}
_ENTRY = {"key": "key", "shrinkage": "shrinkage", "value": "value"}


def program(*, key_dim: int = KEY_DIM, value_dim: int = VALUE_DIM, sensory_dim: int = SENSORY_DIM,
            pixel_dim: int = 256, summaries: int = 16, embed_dim: int = 256) -> Program:
    """The official inference as a program (sizes as parameters, for reduced test networks)."""
    # Every step reads `image`, `pix_feat`, ... of this frame, and the slots of the same names
    # (`sensory`, `last_mask`, ...) where a graph input is called so.
    segment_and_remember = (
        _run("segmenter", outputs={"sensory_out": "segmenter_sensory"}),
        _set("sensory", "segmenter_sensory"), _set("last_mask", "alpha"), _set("last_pix_feat", "pix_feat"),
        _run("mask_encoder", inputs={"mask": "alpha"}, outputs={"sensory_out": "deep_sensory"}),
        _set("last_value", "value"),
    )
    mask_step = Phase((
        _run("image_encoder"), Step(op="clear", target="sensory"),
        _set("last_mask", "prompt"), _set("last_pix_feat", "pix_feat"),
        _run("mask_encoder", inputs={"mask": "prompt"}, outputs={"sensory_out": "deep_sensory"}),
        Step(op="clear", target="memory"), Step(op="keep", target="memory", sources=_ENTRY),
        _set("last_value", "value"), _set("sensory", "deep_sensory"), _set("obj_memory", "obj_summary"),
    ))
    first_frame_steps = Phase((
        _run("memory_readout", inputs={**_RING_INPUTS, "first_frame": 1.0}), *segment_and_remember,
        _set("sensory", "deep_sensory"), _set("obj_memory", "obj_summary"),
        Step(op="clear", target="memory"), Step(op="keep", target="memory", sources=_ENTRY),
    ), repeat=N_WARMUP + 1)
    frame = Phase((
        _run("image_encoder"), _run("memory_readout", inputs={**_RING_INPUTS, "first_frame": 0.0}),
        *segment_and_remember,
        Step(op="push", target="memory", sources=_ENTRY, every=MEM_EVERY),
        _set("sensory", "deep_sensory", every=MEM_EVERY), _set("obj_memory", "obj_summary", op="add", every=MEM_EVERY),
    ))
    return Program(
        graphs=GRAPHS,
        slots=(Slot("sensory", (1, 1, sensory_dim, H16, W16)), Slot("last_mask", (1, 1, "H", "W")),
               Slot("last_pix_feat", (1, pixel_dim, H16, W16)), Slot("last_value", (1, 1, value_dim, H16, W16)),
               Slot("obj_memory", (1, 1, summaries, embed_dim + 1))),
        rings=(Ring("memory", (Slot("key", (key_dim, H16, W16)), Slot("shrinkage", (1, H16, W16)),
                               Slot("value", (value_dim, H16, W16))), slots=MAX_MEM_FRAMES - 1, permanent=1),),
        prompt=Prompt(threshold=0.5, closing=MASK_KERNEL),
        start=(mask_step, first_frame_steps), frame=frame)


IO = ModelIO(
    inputs=(TensorSpec("image", "image", shape=(1, 3, "H", "W"), layout="NCHW", value_range=(0.0, 1.0)),
            TensorSpec("prompt", "prompt", shape=(1, 1, "H", "W"), layout="NCHW", value_range=(0.0, 1.0))),
    outputs=(TensorSpec("alpha", "alpha", shape=(1, 1, "H", "W"), layout="NCHW", value_range=(0.0, 1.0)),),
    # The graphs normalise the image themselves; frames are resized to a multiple of the stride
    # (the official script zero-pads to it instead).
    preprocess=Preprocess(scale=1.0 / 255.0, multiple_of=STRIDE),
)

WEIGHTS = WeightFile(
    filename="matanyone.pth", sha256=None, size=None, license=LICENSE,
    sources=(UrlSource("https://github.com/pq-yang/MatAnyone/releases/download/v1.0.0/matanyone.pth"),
             UrlSource("https://huggingface.co/PeiqingYang/MatAnyone/resolve/main/model.safetensors")),
    download_page="https://github.com/pq-yang/MatAnyone")

# (width, height, frames): the clip holds memory commits (every 5th frame) and a full ring.
PARITY_CASES = ((128, 96, 12, None), (96, 64, 8, None))
# Max |d alpha| PyTorch vs ONNX Runtime over a clip, memory and all: 1/40 of an 8-bit step.
# The reduced network measures 5e-6 on ONNX Runtime and OpenVINO over 30 frames
# (tests/models/test_matanyone_artifact.py); the top-k selection could pick another 30th token
# where two similarities tie within float error, which is what the margin is for.
PARITY_TOLERANCE = 1e-4
# INT8 on the two encoders, which carry most of the compute; the readout's attention and the
# decoder stay float (FP16 converts all four).
QUANTIZATION = QuantRecipe(int8_graphs=("image_encoder", "mask_encoder"))


def build_program(weights: Path, *, config=None) -> ProgramBuild:
    """The four graphs of an official checkpoint (or of `config`'s network, for tests) with
    their PyTorch references and the program; imports torch."""
    from mtc.export.torch_export import require_torch

    require_torch()
    from mtc.models.matanyone import export

    return export.build(weights, config=config)


register(
    ModelSpec(
        name="matanyone",
        task="video_matting",
        summary="MatAnyone: video matting of any object from a first-frame mask, with a memory of past frames",
        license=LICENSE,
        paper="arXiv:2501.14677",
        input_description="RGB video, any size (resized to a multiple of 16), and the first frame's mask "
                          "(--mask, or --mask-from another artifact)",
        variants={"base": VariantSpec(name="base", weights=WEIGHTS, io=IO, build_program=build_program,
                                      exporter="torch", parity_cases=PARITY_CASES,
                                      parity_tolerance=PARITY_TOLERANCE, quantization=QUANTIZATION)},
        default_variant="base",
        purpose="any object",
    )
)
