"""Multi-graph artifacts: the runtime runs a program of several graphs, with slots, a bounded
ring memory, start phases and a first-frame prompt, exactly as the program says.

The tiny program: `encode` pools the image into a key; `read` compares the key with the mean of
the valid ring entries and adds the last alpha. The first frame keeps its key as the ring's
permanent entry and reads its prompt as the last alpha, twice (a repeated start phase); later
frames push their key every second frame. A numpy re-implementation of those semantics is the
reference.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import mtc.runtime
from mtc.artifact.manifest import (
    MANIFEST_NAME,
    Manifest,
    ModelIO,
    Precision,
    TensorSpec,
    file_entry,
    manifest_from_dict,
    read_manifest,
)
from mtc.artifact.program import GraphSpec, Phase, Program, Prompt, Ring, Slot, Step
from mtc.errors import MtcError
from mtc.runtime.program import close_mask

POOL = 4
ENTRIES = (1, 2)  # permanent, working


def _encode() -> onnx.ModelProto:
    nodes = [helper.make_node("AveragePool", ["image"], ["key"], kernel_shape=[POOL, POOL], strides=[POOL, POOL])]
    graph = helper.make_graph(nodes, "encode", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "H", "W"])],
                              [helper.make_tensor_value_info("key", TensorProto.FLOAT, [1, 3, "h", "w"])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _read() -> onnx.ModelProto:
    consts = [numpy_helper.from_array(np.array([1, -1, 1, 1, 1], np.int64), "five_d"),
              numpy_helper.from_array(np.array([1], np.int64), "axis1"),
              numpy_helper.from_array(np.array([1, 1, 1, 1], np.int64), "four_d"),
              numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
              numpy_helper.from_array(np.array(0.5, np.float32), "half"),
              numpy_helper.from_array(np.array([1, 1, POOL, POOL], np.float32), "scales")]
    nodes = [helper.make_node("Reshape", ["valid", "five_d"], ["valid5"]),
             helper.make_node("Mul", ["memory", "valid5"], ["weighted"]),
             helper.make_node("ReduceSum", ["weighted", "axis1"], ["total"], keepdims=0),
             helper.make_node("ReduceSum", ["valid", "axis1"], ["count"], keepdims=1),
             helper.make_node("Add", ["count", "eps"], ["count_eps"]),
             helper.make_node("Reshape", ["count_eps", "four_d"], ["count4"]),
             helper.make_node("Div", ["total", "count4"], ["mean"]),
             helper.make_node("Sub", ["key", "mean"], ["diff"]),
             helper.make_node("ReduceMean", ["diff"], ["score"], axes=[1], keepdims=1),
             helper.make_node("Resize", ["score", "", "scales"], ["score_up"], mode="nearest"),
             helper.make_node("Add", ["score_up", "last"], ["raised"]),
             helper.make_node("Sub", ["raised", "half"], ["logit"]),
             helper.make_node("Sigmoid", ["logit"], ["alpha"])]
    graph = helper.make_graph(
        nodes, "read",
        [helper.make_tensor_value_info("key", TensorProto.FLOAT, [1, 3, "h", "w"]),
         helper.make_tensor_value_info("memory", TensorProto.FLOAT, [1, "e", 3, "h", "w"]),
         helper.make_tensor_value_info("valid", TensorProto.FLOAT, [1, "e"]),
         helper.make_tensor_value_info("last", TensorProto.FLOAT, [1, 1, "H", "W"])],
        [helper.make_tensor_value_info("alpha", TensorProto.FLOAT, [1, 1, "H", "W"])], initializer=consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _program() -> Program:
    read = Step(op="run", graph="read", inputs={"memory": "mem.key", "valid": "mem.valid"})
    return Program(
        graphs=(GraphSpec("encode", "encode.onnx", ("image",), ("key",)),
                GraphSpec("read", "read.onnx", ("key", "memory", "valid", "last"), ("alpha",))),
        slots=(Slot("last", (1, 1, "H", "W")),),
        rings=(Ring("mem", (Slot("key", (3, f"H/{POOL}", f"W/{POOL}")),), slots=ENTRIES[1], permanent=ENTRIES[0]),),
        prompt=Prompt(threshold=0.5, closing=0),
        start=(Phase((Step(op="set", target="last", source="prompt"),)),
               Phase((Step(op="run", graph="encode"), Step(op="clear", target="mem"),
                      Step(op="keep", target="mem", sources={"key": "key"}), read,
                      Step(op="set", target="last", source="alpha")), repeat=2)),
        frame=Phase((Step(op="run", graph="encode"), read, Step(op="set", target="last", source="alpha"),
                     Step(op="push", target="mem", sources={"key": "key"}, every=2))))


def _io() -> ModelIO:
    return ModelIO(inputs=(TensorSpec("image", "image", shape=(1, 3, "H", "W"), layout="NCHW"),
                           TensorSpec("prompt", "prompt", shape=(1, 1, "H", "W"), layout="NCHW")),
                   outputs=(TensorSpec("alpha", "alpha", shape=(1, 1, "H", "W"), layout="NCHW", value_range=(0.0, 1.0)),))


@pytest.fixture
def artifact(tmp_path):
    folder = tmp_path / "program"
    folder.mkdir()
    onnx.save(_encode(), str(folder / "encode.onnx"))
    onnx.save(_read(), str(folder / "read.onnx"))
    manifest = Manifest(model="tiny", variant="program", task="video_matting", license="MIT", model_file="encode.onnx",
                        io=_io(), precision=Precision(), program=_program(),
                        files={n: file_entry(folder / n) for n in ("encode.onnx", "read.onnx")})
    (folder / MANIFEST_NAME).write_text(manifest.to_json())
    return folder


def _reference(frames: list[np.ndarray], mask: np.ndarray) -> list[np.ndarray]:
    """The program's semantics, written out in numpy."""
    def encode(frame):
        x = frame.astype(np.float32).transpose(2, 0, 1) / 255.0
        c, h, w = x.shape
        return x.reshape(c, h // POOL, POOL, w // POOL, POOL).mean(axis=(2, 4))

    def read(key, entries, last):
        mean = np.mean(entries, axis=0) if entries else np.zeros_like(key)
        score = np.repeat(np.repeat((key - mean).mean(axis=0), POOL, 0), POOL, 1)
        return 1 / (1 + np.exp(-(score + last - 0.5)))

    last = (mask >= 0.5).astype(np.float32)
    for _ in range(2):
        permanent = encode(frames[0])
        last = read(permanent, [permanent], last)
    alphas, working = [last], []
    for count, frame in enumerate(frames[1:], start=1):
        key = encode(frame)
        last = read(key, [permanent, *working], last)
        alphas.append(last)
        if count % 2 == 0:
            working = [*working, key][-ENTRIES[1]:]  # first in, first out
    return alphas


def _clip(count: int = 9) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(count)]


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_the_runtime_runs_the_program_like_its_reference(artifact, backend):
    if backend == "openvino":
        pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'mtc[openvino]')")
    frames = _clip()
    mask = np.zeros((24, 32), np.uint8)
    mask[6:18, 8:24] = 255
    session = mtc.runtime.load(artifact, backend=backend)
    session.set_prompt(mask)
    ours = [session.process(frame).alpha for frame in frames]
    theirs = _reference(frames, mask / 255.0)
    assert max(float(np.abs(a - b).max()) for a, b in zip(ours, theirs)) < 1e-5
    # The ring never grows: its entries are fixed, and after 8 frames all three hold one.
    ring = session.backend._rings["mem"]
    assert ring.fields["key"].shape == (1, sum(ENTRIES), 3, 6, 8) and ring.valid.tolist() == [[1.0, 1.0, 1.0]]
    # A reset starts over: the same frames give the same alphas again.
    session.reset()
    again = [session.process(frame).alpha for frame in frames]
    assert all(np.array_equal(a, b) for a, b in zip(ours, again))


def test_a_prompted_program_refuses_to_start_without_its_mask(artifact):
    session = mtc.runtime.load(artifact, backend="onnxruntime")
    with pytest.raises(MtcError, match="needs a mask of the object on the first frame"):
        session.process(_clip(1)[0])
    session.set_prompt(np.zeros((24, 32), np.uint8))
    with pytest.raises(MtcError, match="mask is empty"):
        session.process(_clip(1)[0])
    session.set_prompt(np.ones((10, 10), np.uint8))
    with pytest.raises(MtcError, match="mask is 10x10 but the frames are 32x24"):
        session.process(_clip(1)[0])


def test_the_program_survives_the_manifest_round_trip(artifact):
    assert read_manifest(artifact).program == _program()


@pytest.mark.parametrize("edit, message", [
    (lambda p: p["frame"]["steps"][0].update(graph="missing"), "runs graph 'missing'"),
    (lambda p: p["frame"]["steps"][1]["inputs"].update(last="nowhere"), "feeds read.last from 'nowhere'"),
    (lambda p: p["frame"]["steps"].insert(0, {"op": "set", "target": "last", "source": "alpha"}),
     "reads 'alpha', which nothing made before it"),
    (lambda p: p["frame"]["steps"][1]["inputs"].update(memory="prompt"), "feeds read.memory from 'prompt'"),
    (lambda p: p["rings"][0].update(permanent=0), "keeps into ring mem, which has no permanent entries"),
    (lambda p: p["rings"][0]["fields"][0].update(shape=[3, "H/0", "W"]), "expected an int, H, W, H/k or W/k"),
    (lambda p: p["frame"]["steps"][3]["sources"].clear(), "must give every field of ring mem"),
    (lambda p: p["graphs"][0].update(file="../encode.onnx"), "leaves or is not a plain path"),
    (lambda p: p.update(prompt=None), "start.0..steps.0. reads 'prompt'"),
])
def test_an_inconsistent_program_is_refused_naming_the_step(artifact, edit, message):
    data = json.loads((artifact / MANIFEST_NAME).read_text())
    edit(data["program"])
    with pytest.raises(MtcError, match=message.replace("(", r"\(").replace(")", r"\)")):
        manifest_from_dict(data, source="manifest.json")


def test_closing_fills_holes_and_gaps_but_not_the_background():
    mask = np.zeros((20, 20), bool)
    mask[4:16, 4:16] = True
    mask[9, 9] = mask[4:16, 10] = False  # a hole and a one-pixel cut
    closed = close_mask(mask, 5)
    assert closed[9, 9] and closed[4:16, 10].all()
    assert not closed[:3].any() and not closed[:, :3].any() and closed.sum() == 144


def test_single_graph_commands_refuse_a_program_artifact_clearly(artifact, tmp_path):
    from click.testing import CliRunner

    from mtc.cli.main import cli

    for args in (["inspect", str(artifact)], ["package", str(artifact), "--triton", str(tmp_path / "repo")]):
        result = CliRunner().invoke(cli, args)
        said = result.output + str(result.exception or "")
        assert result.exit_code != 0 and "works on single-graph artifacts" in said, said


# ---- a program that chooses its steps by the frame's size ------------------------------------


def _constant_alpha(value: float) -> onnx.ModelProto:
    """image -> alpha of the image's height and width, every pixel `value`."""
    consts = [numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
              numpy_helper.from_array(np.array(value, np.float32), "value")]
    nodes = [helper.make_node("ReduceMean", ["image"], ["grey"], axes=[1], keepdims=1),
             helper.make_node("Mul", ["grey", "zero"], ["nothing"]),
             helper.make_node("Add", ["nothing", "value"], ["alpha"])]
    graph = helper.make_graph(nodes, "constant", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "H", "W"])],
                              [helper.make_tensor_value_info("alpha", TensorProto.FLOAT, [1, 1, "H", "W"])],
                              initializer=consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


SMALL_SIDE = 40


def _routed_program() -> Program:
    from mtc.artifact.program import SmallFrames

    return Program(graphs=(GraphSpec("large", "large.onnx", ("image",), ("alpha",)),
                           GraphSpec("small", "small.onnx", ("image",), ("alpha",))),
                   frame=Phase((Step(op="run", graph="large"),)),
                   small=SmallFrames(side=SMALL_SIDE, phase=Phase((Step(op="run", graph="small"),))))


@pytest.fixture
def routed(tmp_path):
    folder = tmp_path / "routed"
    folder.mkdir()
    onnx.save(_constant_alpha(0.75), str(folder / "large.onnx"))
    onnx.save(_constant_alpha(0.25), str(folder / "small.onnx"))
    io = ModelIO(inputs=(TensorSpec("image", "image", shape=(1, 3, "H", "W"), layout="NCHW"),
                         TensorSpec("frame_size", "frame_size", shape=(2,))),
                 outputs=(TensorSpec("alpha", "alpha", shape=(1, 1, "H", "W"), layout="NCHW", value_range=(0.0, 1.0)),))
    manifest = Manifest(model="tiny", variant="routed", task="image_matting", license="MIT", model_file="large.onnx",
                        io=io, precision=Precision(), program=_routed_program(),
                        files={n: file_entry(folder / n) for n in ("large.onnx", "small.onnx")})
    (folder / MANIFEST_NAME).write_text(manifest.to_json())
    return folder


def test_a_program_runs_its_small_frame_phase_by_the_size_frames_arrive_at(routed):
    session = mtc.runtime.load(routed, backend="onnxruntime")

    assert read_manifest(routed).program == _routed_program()
    # the shorter side decides, as the frame arrives: above the side the frame phase, at or below it the small one
    for (height, width), expected in (((48, 64), 0.75), ((64, 41), 0.75), ((40, 64), 0.25), ((64, 16), 0.25),
                                      ((41, 41), 0.75)):
        alpha = session.process(np.full((height, width, 3), 90, np.uint8)).alpha
        assert alpha.shape == (height, width)
        np.testing.assert_allclose(alpha, expected, atol=1e-6)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["io"]["inputs"].pop(), "lacks the 'frame_size' input its program chooses its phase by"),
    (lambda d: d["program"].update(small=None), "has a 'frame_size' input without a program that chooses by it"),
    (lambda d: d["program"]["small"]["phase"]["steps"].clear(), "names alpha 'alpha', which the small phases do not make"),
    (lambda d: d["program"]["small"].update(side=0), "side"),
    (lambda d: d["program"].update(start=[{"steps": [{"op": "run", "graph": "large"}]}]),
     "both start phases and a small-frame phase"),
])
def test_an_inconsistent_size_choice_is_refused(routed, edit, message):
    data = json.loads((routed / MANIFEST_NAME).read_text())
    edit(data)
    with pytest.raises(MtcError, match=message):
        manifest_from_dict(data, source="manifest.json")


class _FlippedPixels:
    """A graph whose alpha is `value` except `count` pixels set to 1 - value: what a backend
    disagreeing with the reference on a few pixels at a hard threshold gives."""

    name, input_names, output_names, fresh_outputs = "flipped", ("image",), ("alpha",), True

    def __init__(self, value: float, count: int):
        self.value, self.count = value, count

    def run(self, feeds):
        alpha = np.full((1, 1, *feeds["image"].shape[2:]), self.value, np.float32)
        alpha.reshape(-1)[: self.count] = 1 - self.value
        return {"alpha": alpha}


@pytest.mark.parametrize("count, outliers, passed", [(0, 0.0, True), (1, 0.0, False), (3, 1e-3, True),
                                                     (20, 1e-3, False)])
def test_program_parity_allows_only_the_declared_share_of_outlier_pixels(count, outliers, passed):
    """A program with a hard threshold inside may differ from its reference on a few pixels;
    the export check allows the declared share of them, and only that (0: none)."""
    from mtc.export.compile import CompileJob, ParityCase
    from mtc.export.program import compare_programs

    program = Program(graphs=(GraphSpec("net", "net.onnx", ("image",), ("alpha",)),), frame=Phase((Step(op="run", graph="net"),)))
    io = ModelIO(inputs=(TensorSpec("image", "image", shape=(1, 3, "H", "W"), layout="NCHW"),),
                 outputs=(TensorSpec("alpha", "alpha", shape=(1, 1, "H", "W"), layout="NCHW", value_range=(0.0, 1.0)),))
    job = CompileJob(model="tiny", variant="flips", task="image_matting", license="MIT", io=io, tolerance=1e-3,
                     outliers=outliers)
    # 64x48 frames, 2 of them: 6144 pixels; 3 flips are 0.05%, 20 are 0.33%
    result = compare_programs(job, program, {"net": _FlippedPixels(0.25, 0)}, {"net": _FlippedPixels(0.25, count)},
                              ParityCase(64, 48, 2))

    assert result["passed"] is passed
    assert result["alpha_share_over_tolerance"] == pytest.approx(2 * count / 6144)
    assert result["alpha_max_abs_diff"] == pytest.approx(0.5 if count else 0.0)
