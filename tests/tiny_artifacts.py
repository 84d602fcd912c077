"""Tiny artifact folders built in a few milliseconds, for tests of the contract and the caches.

The model: image (1x3xHxW) -> Conv 3->8, ReLU -> Conv 8->1 -> Sigmoid -> alpha, with fixed
random weights, so a wrong cache entry or a wrong preprocessing shows in the alpha.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mtc.artifact.manifest import (
    MANIFEST_NAME,
    DownsampleRule,
    Manifest,
    ModelIO,
    Precision,
    Preprocess,
    TensorSpec,
    file_entry,
)


def tiny_model(*, with_ratio: bool = False, alpha_op: str = "Sigmoid") -> onnx.ModelProto:
    """The tiny matting graph; `with_ratio` adds a (1,) float ratio input that scales the image,
    `alpha_op` replaces the final Sigmoid (e.g. "Identity" for an alpha outside [0, 1])."""
    rng = np.random.default_rng(7)
    w1 = numpy_helper.from_array(rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.5, (1, 8, 3, 3)).astype(np.float32), "w2")
    inputs = [helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 3, "h", "w"])]
    nodes = [helper.make_node("Conv", ["img" if not with_ratio else "scaled", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node(alpha_op, ["c2"], ["alpha"])]
    if with_ratio:
        inputs.append(helper.make_tensor_value_info("ratio", TensorProto.FLOAT, [1]))
        nodes.insert(0, helper.make_node("Mul", ["img", "ratio"], ["scaled"]))
    graph = helper.make_graph(nodes, "tiny", inputs,
                              [helper.make_tensor_value_info("alpha", TensorProto.FLOAT, [1, 1, "h", "w"])],
                              initializer=[w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def tiny_io(*, with_ratio: bool = False, preprocess: Preprocess = Preprocess()) -> ModelIO:
    inputs = [TensorSpec("img", "image", shape=(1, 3, "h", "w"))]
    if with_ratio:
        inputs.append(TensorSpec("ratio", "downsample_ratio", shape=(1,)))
    return ModelIO(inputs=tuple(inputs), outputs=(TensorSpec("alpha", "alpha", shape=(1, 1, "h", "w"),
                                                              value_range=(0.0, 1.0)),),
                   preprocess=preprocess, downsample=DownsampleRule("ratio") if with_ratio else None)


def write_tiny_artifact(folder: Path, *, with_ratio: bool = False, alpha_op: str = "Sigmoid",
                        preprocess: Preprocess = Preprocess()) -> Path:
    """An artifact folder as `mtc export` writes it (manifest last, files hashed)."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(tiny_model(with_ratio=with_ratio, alpha_op=alpha_op), str(folder / "model.onnx"))
    manifest = Manifest(model="tiny", variant="test", task="image_matting", license="MIT", model_file="model.onnx",
                        io=tiny_io(with_ratio=with_ratio, preprocess=preprocess), precision=Precision(),
                        files={"model.onnx": file_entry(folder / "model.onnx")})
    (folder / MANIFEST_NAME).write_text(manifest.to_json())
    return folder


def write_model_artifact(folder: Path, model: onnx.ModelProto) -> Path:
    """`model` (image input `src` -> alpha output `pha`, both 1xCxhxw) as an FP32 image-matting
    artifact folder."""
    folder.mkdir()
    onnx.save(model, str(folder / "model.onnx"))
    io = ModelIO(inputs=(TensorSpec("src", "image", shape=(1, 3, "h", "w")),),
                 outputs=(TensorSpec("pha", "alpha", shape=(1, 1, "h", "w")),), preprocess=Preprocess())
    manifest = Manifest(model="toy", variant="v", task="image_matting", license="MIT", model_file="model.onnx", io=io,
                        files={"model.onnx": file_entry(folder / "model.onnx")})
    (folder / MANIFEST_NAME).write_text(manifest.to_json())
    return folder


def write_logit_artifact(folder: Path, model: onnx.ModelProto) -> Path:
    """`model`, whose output `logit` (1x1xhxw) a sigmoid makes the alpha, as an FP32
    image-matting artifact folder (see `write_model_artifact`)."""
    model.graph.node.append(helper.make_node("Sigmoid", ["logit"], ["pha"], name="sigmoid"))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("pha", TensorProto.FLOAT, [1, 1, "h", "w"]))
    return write_model_artifact(folder, model)


def edit_manifest(folder: Path, change) -> None:
    """Apply `change(data)` to the folder's manifest.json (as a hostile or damaged file would)."""
    path = folder / MANIFEST_NAME
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def flip_middle_bytes(path: Path, count: int = 4) -> None:
    """Corrupt a few bytes in the middle of a file, keeping its size (what a bad sector does)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + count):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def frames(count: int, height: int = 48, width: int = 64, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]
