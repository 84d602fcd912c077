"""MatAnyone as a multi-graph artifact: the manifest's program reproduces the official flow, the
export checks each graph and the clip, and the runtime mattes a clip with memory, its ring
bounded, on ONNX Runtime and OpenVINO.

A reduced network (one block per ResNet stage, narrow layers) with random weights in the
official layout; the full-size key layout is checked in test_matanyone.py.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import mtc.runtime  # noqa: E402
from mtc.artifact.manifest import ModelIO  # noqa: E402
from mtc.export.compile import CompileJob, ParityCase  # noqa: E402
from mtc.export.program import compile_program  # noqa: E402
from mtc.export.torch_export import save_random_checkpoint  # noqa: E402
from mtc.models.matanyone import IO, MASK_KERNEL, PARITY_TOLERANCE, QUANTIZATION, build_program  # noqa: E402
from mtc.models.matanyone.net import MatAnyone, MatAnyoneConfig  # noqa: E402
from mtc.models.matanyone.reference import Graphs, run_graphs  # noqa: E402
from mtc.runtime.program import ProgramEngine, close_mask  # noqa: E402
from mtc.runtime.session import MattingSession  # noqa: E402

SMALL = MatAnyoneConfig(pixel_blocks=(1, 1, 1), mask_blocks=(1, 1, 1), pixel_dim=32, key_dim=16, value_dim=32,
                        sensory_dim=32, embed_dim=32, num_heads=2, num_queries=4, num_blocks=2, ff_dim=64,
                        up_dims=(32, 16, 16, 8, 8))
SIZE = (64, 80)  # (height, width): multiples of 16, 20 tokens per memory frame
FRAMES = 14  # two memory commits (frames 5 and 10) after the first frame


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_random_checkpoint(MatAnyone(SMALL), tmp_path_factory.mktemp("matanyone") / "small.pth", seed=3)


@pytest.fixture(scope="module")
def build(weights):
    return build_program(weights, config=SMALL)


def _clip(count: int = FRAMES) -> tuple[list[np.ndarray], np.ndarray]:
    """Frames with a bright disk drifting over noise, and the disk's mask on the first frame."""
    rng = np.random.default_rng(4)
    h, w = SIZE
    yy, xx = np.mgrid[:h, :w]
    frames = []
    for t in range(count):
        frame = rng.integers(0, 120, (h, w, 3)).astype(np.uint8)
        disk = (yy - h / 2) ** 2 + (xx - 20 - 2 * t) ** 2 < 14 ** 2
        frame[disk] = (230, 200, 40)
        frames.append(frame)
    mask = ((yy - h / 2) ** 2 + (xx - 20) ** 2 < 14 ** 2).astype(np.uint8) * 255
    return frames, mask


def _official_flow(build, frames, mask) -> np.ndarray:
    """The flow as the official script runs it, on the same graph modules (helper's reference)."""
    modules = {name: backend.module for name, backend in build.references.items()}
    graphs = Graphs(modules["image_encoder"], modules["mask_encoder"], modules["memory_readout"], modules["segmenter"])
    video = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255
    closed = torch.from_numpy(close_mask(mask >= 128, MASK_KERNEL).astype(np.float32))
    return run_graphs(graphs, video, closed, sensory_dim=SMALL.sensory_dim, value_dim=SMALL.value_dim)[:, 0].numpy()


def _run(session: MattingSession, frames, mask) -> np.ndarray:
    session.set_prompt(mask)
    return np.stack([session.step(f)["alpha"][0, 0] for f in frames])


def test_the_program_is_the_official_flow(build):
    """The manifest's program, run by the generic runtime on the PyTorch graphs, equals the
    official flow written out by hand (warm-up, commits every 5 frames, FIFO ring, sums)."""
    frames, mask = _clip()
    session = MattingSession(IO, ProgramEngine(build.program, IO, build.references), scene_cut_threshold=None)
    ours = _run(session, frames, mask)
    official = _official_flow(build, frames, mask)
    assert ours.shape == official.shape == (FRAMES, *SIZE)
    assert float(np.abs(ours - official).max()) < 1e-5
    # The memory matters: later frames differ from a run that forgets after each frame.
    assert float(np.abs(ours[-1] - official[0]).max()) > 1e-3


@pytest.fixture(scope="module")
def artifact(build, tmp_path_factory):
    io: ModelIO = IO
    job = CompileJob(model="matanyone", variant="small", task="video_matting", license="test", io=io,
                     cases=(ParityCase(80, 64, FRAMES), ParityCase(48, 32, 8)), tolerance=PARITY_TOLERANCE,
                     quantization=QUANTIZATION)
    return compile_program(build, job, output=tmp_path_factory.mktemp("artifacts") / "matanyone-small")


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_the_artifact_mattes_a_clip_like_pytorch(artifact, build, backend):
    if backend == "openvino":
        pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'mtc[openvino]')")
    frames, mask = _clip(30)
    session = mtc.runtime.load(artifact, backend=backend)
    ours = _run(session, frames, mask)
    reference = _official_flow(build, frames, mask)
    # Top-k selection makes the tolerance: see PARITY_TOLERANCE's comment; measured in the report.
    assert float(np.abs(ours - reference).max()) < PARITY_TOLERANCE
    ring = session.backend._rings["memory"]
    assert ring.valid.shape == (1, 5) and ring.valid.sum() == 5 and ring.pushed == 5  # 30 frames: 5 commits, 5 slots


def test_the_export_report_checks_each_graph(artifact):
    import json

    report = json.loads((artifact / "report.json").read_text())
    for case in report["parity"]:
        assert case["passed"] and set(case["graph_max_abs_diff"]) == {"image_encoder", "mask_encoder",
                                                                      "memory_readout", "segmenter"}
        assert max(case["graph_max_abs_diff"].values()) < 1e-4


def _mtc(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "mtc", *map(str, args)], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    from PIL import Image

    from mtc.runtime.video_writer import VideoWriter

    folder = tmp_path_factory.mktemp("clip")
    frames, mask = _clip(12)
    with VideoWriter(folder / "clip.mp4", width=SIZE[1], height=SIZE[0], fps=10, kind="rgb") as writer:
        for frame in frames:
            writer.write(frame)
    Image.fromarray(mask).save(folder / "mask.png")
    return folder


def test_mtc_run_with_a_mask_or_a_mask_from_another_artifact(artifact, clip_files, tmp_path):
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
    from tiny_artifacts import write_tiny_artifact

    from mtc.runtime.video_reader import VideoReader

    video = clip_files / "clip.mp4"
    done = _mtc("run", artifact, video, "-o", tmp_path / "masked.mp4", "--what", "alpha", "--mask",
                clip_files / "mask.png", "--backend", "onnxruntime")
    assert done.returncode == 0, done.stderr
    with VideoReader(tmp_path / "masked.mp4") as reader:
        alphas = [frame[..., 0] for frame in reader]
    assert len(alphas) == 12
    finder = write_tiny_artifact(tmp_path / "finder")
    done = _mtc("run", artifact, video, "-o", tmp_path / "found.mp4", "--mask-from", finder, "--backend", "onnxruntime")
    assert done.returncode == 0, done.stderr
    missing = _mtc("run", artifact, video, "-o", tmp_path / "none.mp4")
    assert missing.returncode != 0 and "no mask was given" in missing.stderr and not (tmp_path / "none.mp4").exists()
    misplaced = _mtc("run", finder, video, "-o", tmp_path / "other.mp4", "--mask", clip_files / "mask.png")
    assert misplaced.returncode != 0 and "takes no first-frame mask" in misplaced.stderr
    # mtc bench marks the middle of the first frame for such models.
    bench = _mtc("bench", artifact, "-r", "80x64", "--backend", "onnxruntime", "--json", tmp_path / "bench.json")
    assert bench.returncode == 0, bench.stderr
    import json

    result = json.loads((tmp_path / "bench.json").read_text())["results"][0]
    assert result["model"]["fps"] > 0 and result["cost"]["gflops_per_frame"] is None


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_quantizing_the_program_graph_by_graph(artifact, tmp_path, precision):
    """FP16 converts every graph, INT8 the two encoders the recipe names; each graph is checked
    inside the whole program, and the report names the precision each graph got."""
    import json

    import onnx

    from mtc.quant.config import Fallback, Gates
    from mtc.quant.data_plan import DataPlan
    from mtc.quant.pipeline import quantize_artifact

    # Random weights: the gates are generous, so what is tested is the mechanism, not a fidelity
    # figure (the benchmark measures those); small clips keep it fast.
    data = DataPlan(calib_frames=6, check_frames=8, settings=((80, 64, None),))
    outcome = quantize_artifact(artifact, tmp_path / precision, precision=precision, data=data,
                                gates=Gates(max_mad=50.0, max_dtssd=50.0), fallback=Fallback(enabled=False))
    assert outcome.passed, outcome.check.failures
    report = json.loads((tmp_path / precision / "report.json").read_text())
    wanted = {"image_encoder", "mask_encoder"} if precision == "int8" else {
        "image_encoder", "mask_encoder", "memory_readout", "segmenter"}
    assert set(report["graphs"]) == wanted and set(report["quantized_graphs"]) == wanted
    html = (tmp_path / precision / "report.html").read_text()
    assert "<h2>Graphs</h2>" in html
    # what the graphs were calibrated on, as for a single graph
    calibration = report["calibration"]
    assert calibration["sources"] == ["builtin"] and calibration["frames"] == sum(c["frames"] for c in calibration["clips"]) > 0
    assert f"Calibrated on builtin: {calibration['frames']} frames" in html
    marker = {"fp16": lambda m: any(i.data_type == onnx.TensorProto.FLOAT16 for i in m.graph.initializer),
              "int8": lambda m: any(n.op_type == "QuantizeLinear" for n in m.graph.node)}[precision]
    for name in ("image_encoder", "mask_encoder", "memory_readout", "segmenter"):
        model = onnx.load(str(tmp_path / precision / f"{name}.onnx"))
        assert marker(model) == (name in wanted), name
    # The artifact runs, and its alphas are what the report's check measured.
    frames, mask = _clip(8)
    session = mtc.runtime.load(tmp_path / precision, backend="onnxruntime")
    assert session.manifest.precision.mode == precision
    assert np.isfinite(_run(session, frames, mask)).all()
