"""Tiny artifacts for the serving tests, built in milliseconds.

The recurrent one: c = Conv(image) (3 -> 1 channels), mixed = c + 0.5 * state,
alpha = Sigmoid(mixed), next state = mixed. Its zero state of 1x1x1x1 broadcasts to the frame,
as real recurrent mattes' states do, so every frame's alpha depends on the whole stream so far:
streams that share or lose state give other alphas.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mtc.artifact.manifest import (
    MANIFEST_NAME,
    Manifest,
    ModelIO,
    Precision,
    Preprocess,
    StatePair,
    TensorSpec,
    file_entry,
)


def recurrent_model() -> onnx.ModelProto:
    rng = np.random.default_rng(11)
    weight = numpy_helper.from_array(rng.normal(0, 0.5, (1, 3, 3, 3)).astype(np.float32), "w")
    half = numpy_helper.from_array(np.array(0.5, np.float32), "half")
    nodes = [helper.make_node("Conv", ["img", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["s_in", "half"], ["carried"]),
             helper.make_node("Add", ["c", "carried"], ["s_out"]),
             helper.make_node("Sigmoid", ["s_out"], ["alpha"])]
    graph = helper.make_graph(
        nodes, "tiny_recurrent",
        [helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 3, "h", "w"]),
         helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [1, 1, "sh", "sw"])],
        [helper.make_tensor_value_info("alpha", TensorProto.FLOAT, [1, 1, "h", "w"]),
         helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [1, 1, "h", "w"])],
        initializer=[weight, half])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def recurrent_io(preprocess: Preprocess = Preprocess()) -> ModelIO:
    return ModelIO(
        inputs=(TensorSpec("img", "image", shape=(1, 3, "h", "w"), layout="NCHW"),
                TensorSpec("s_in", "state", shape=(1, 1, "sh", "sw"), layout="NCHW")),
        outputs=(TensorSpec("alpha", "alpha", shape=(1, 1, "h", "w"), layout="NCHW", value_range=(0.0, 1.0)),
                 TensorSpec("s_out", "state", shape=(1, 1, "h", "w"), layout="NCHW")),
        states=(StatePair("s_in", "s_out", initial_shape=(1, 1, 1, 1), stride=1),), preprocess=preprocess)


def write_artifact(folder: Path, model: onnx.ModelProto, io: ModelIO, *, task: str) -> Path:
    """An artifact folder as `mtc export` writes it (manifest last, files hashed)."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    manifest = Manifest(model="tiny", variant="serve-test", task=task, license="MIT", model_file="model.onnx",
                        io=io, precision=Precision(), files={"model.onnx": file_entry(folder / "model.onnx")})
    (folder / MANIFEST_NAME).write_text(manifest.to_json())
    return folder


def write_recurrent_artifact(folder: Path, preprocess: Preprocess = Preprocess()) -> Path:
    return write_artifact(folder, recurrent_model(), recurrent_io(preprocess), task="video_matting")


def stream(count: int, seed: int, height: int = 24, width: int = 32) -> list[np.ndarray]:
    """A steady shot: one picture with small changes per frame (below the scene-cut threshold,
    so the state carries through every frame)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 216, (height, width, 3)).astype(np.int16)
    return [np.clip(base + rng.integers(-6, 7, base.shape), 0, 255).astype(np.uint8) for _ in range(count)]
