"""PDFNet as a two-graph artifact (the depth model, then PDFNet), chained by the manifest's
program: export with per-graph and chain parity, `mtc.runtime` and OpenVINO on an image, FP16,
and `mtc run` on a photo.

Reduced networks with random weights (the layouts are checked at full size in test_pdfnet.py).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import mtc.runtime  # noqa: E402
from mtc.export.compile import CompileJob, ParityCase  # noqa: E402
from mtc.export.program import compile_program  # noqa: E402
from mtc.export.torch_export import save_random_checkpoint  # noqa: E402
from mtc.models.pdfnet import PARITY_TOLERANCE, build_program, model_io  # noqa: E402
from mtc.models.pdfnet.depth import DepthAnythingV2  # noqa: E402
from mtc.models.pdfnet.net import PDFNet  # noqa: E402

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from test_pdfnet import SMALL_DEPTH, SMALL_NET, SMALL_SIZE, _randomised  # noqa: E402

IO = model_io(SMALL_SIZE)


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pdfnet-artifact")
    weights = save_random_checkpoint(_randomised(PDFNet(SMALL_NET), 1), folder / "PDFNet_Best.pth", seed=3)
    depth = save_random_checkpoint(_randomised(DepthAnythingV2(SMALL_DEPTH), 2), folder / "depth.pth", seed=4)
    return build_program(weights, depth_weights=depth, size=SMALL_SIZE, config=SMALL_NET, depth_config=SMALL_DEPTH,
                         depth_input=42)


@pytest.fixture(scope="module")
def artifact(build, tmp_path_factory):
    job = CompileJob(model="pdfnet", variant="small", task="image_matting", license="MIT", io=IO,
                     cases=(ParityCase(320, 240, 2),), tolerance=PARITY_TOLERANCE)
    return compile_program(build, job, output=tmp_path_factory.mktemp("artifacts") / "pdfnet-small")


def _photo(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    photo = rng.integers(0, 90, (240, 320, 3), dtype=np.uint8)
    photo[60:200, 100:230] = (220, 180, 60)
    return photo


def _torch_chain(build, photo: np.ndarray) -> np.ndarray:
    """The two PyTorch graphs on the photo as the runtime feeds it (resized to the model size)."""
    from PIL import Image

    resized = np.array(Image.fromarray(photo).resize((SMALL_SIZE, SMALL_SIZE), Image.BILINEAR))
    image = torch.from_numpy(resized).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        depth = build.references["depth"].module(image)
        return build.references["pdfnet"].module(image, depth)[0, 0].numpy()


def test_the_export_checks_the_chain_and_each_graph(artifact):
    report = json.loads((artifact / "report.json").read_text())
    case = report["parity"][0]
    assert case["passed"] and set(case["graph_max_abs_diff"]) == {"depth", "pdfnet"}
    assert max(case["graph_max_abs_diff"].values()) < PARITY_TOLERANCE
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert [g["file"] for g in manifest["program"]["graphs"]] == ["depth.onnx", "pdfnet.onnx"]


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_the_runtime_chains_the_two_graphs(artifact, build, backend):
    if backend == "openvino":
        pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'mtc[openvino]')")
    session = mtc.runtime.load(artifact, backend=backend)
    photo = _photo()
    alpha = session.step(photo)["alpha"][0, 0]  # at the model size, before resizing back
    expected = _torch_chain(build, photo)
    assert alpha.shape == expected.shape == (SMALL_SIZE, SMALL_SIZE)
    assert float(np.abs(alpha - expected).max()) < PARITY_TOLERANCE
    assert session.process(photo).alpha.shape == photo.shape[:2]


def test_fp16_of_both_graphs(artifact, tmp_path):
    from mtc.quant.config import Fallback, Gates
    from mtc.quant.data_plan import DataPlan
    from mtc.quant.pipeline import quantize_artifact

    # Random weights: generous gates test the mechanism; the report names each graph's precision.
    data = DataPlan(calib_frames=3, check_frames=4)
    outcome = quantize_artifact(artifact, tmp_path / "fp16", precision="fp16", data=data,
                                gates=Gates(max_mad=50.0, max_dtssd=50.0), fallback=Fallback(enabled=False))
    assert outcome.passed, outcome.check.failures
    assert outcome.report["quantized_graphs"] == ["depth", "pdfnet"]
    session = mtc.runtime.load(tmp_path / "fp16", backend="onnxruntime")
    assert session.manifest.precision.mode == "fp16" and np.isfinite(session.process(_photo()).alpha).all()


def test_mtc_run_on_a_photo(artifact, tmp_path):
    from PIL import Image

    Image.fromarray(_photo(1)).save(tmp_path / "photo.png")
    done = subprocess.run([sys.executable, "-m", "mtc", "run", str(artifact), str(tmp_path / "photo.png"), "-o",
                           str(tmp_path / "cut.png"), "--what", "foreground"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "cut.png").mode == "RGBA"
