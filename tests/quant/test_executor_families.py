"""The torch executor (mtc.quant.torch_graph) against ONNX Runtime on every family's export.

Each family's graph is built the way its own tests build it (tests/models: reduced networks with
random weights, their helpers imported from there), sanitized as the export does, then run by
`GraphModule` and by ONNX Runtime on a realistic input; multi-graph programs run the whole
program on ONNX Runtime over a few frames of the built-in clip, and each graph is compared on
the inputs the program fed it (memory, rings and all). The official recurrent video model and
U²-Netp are covered in test_torch_graph.py.

Every output must agree to 1e-5 of its scale (max |diff| <= 1e-5 * max(1, max |reference|)):
float32 summation order alone moves ONNX Runtime by about that much between its own
optimization levels, and logits reach the tens. The one exception is the InSPyReNet blend's
lr and hr graphs, noisier than that in ONNX Runtime too (test_inspyrenet_blend below).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from mtc.backends import OrtBackend  # noqa: E402
from mtc.data.builtin_clip import ClipSpec, builtin_clip  # noqa: E402
from mtc.export.onnx_ingest import sanitize  # noqa: E402
from mtc.export.program import parity_prompt  # noqa: E402
from mtc.export.torch_export import save_random_checkpoint  # noqa: E402
from mtc.models.registry import get_model  # noqa: E402
from mtc.quant.torch_graph import GraphModule, to_torch_feeds  # noqa: E402
from mtc.runtime.program import ProgramEngine  # noqa: E402
from mtc.runtime.session import MattingSession  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "models"))
import test_birefnet as birefnet_tests  # noqa: E402
import test_inspyrenet as inspyrenet_tests  # noqa: E402
import test_inspyrenet_blend as blend_tests  # noqa: E402
import test_matanyone_artifact as matanyone_tests  # noqa: E402
import test_pdfnet as pdfnet_tests  # noqa: E402
from test_bgmv2 import frames as bgmv2_frames  # noqa: E402

TOLERANCE = 1e-5  # of each output's scale
# For the graphs held to ONNX Runtime's own noise: a floor independent of the machine, so a CPU
# whose two optimization levels happen to agree does not turn the bound back into TOLERANCE.
NOISE_FLOOR = 1e-4  # of the output's scale
SEEDS = {"swinb": 11, "res2net50": 12}  # test_inspyrenet's (and + 20, test_inspyrenet_blend's)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sanitized(model, rewrites=()):
    """The graph as the export writes it: sanitized, then the variant's exact rewrites."""
    model, _ = sanitize(model)
    for rewrite in rewrites:
        model, _ = rewrite(model)
    return model


def _frame(height: int, width: int, *, mean=0.0, std=1.0) -> np.ndarray:
    """A frame of the built-in clip as NCHW float32, (x / 255 - mean) / std."""
    image = builtin_clip(ClipSpec(width=width, height=height, frames=1))[0].astype(np.float32) / 255
    return ((image - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)


def _run_ort(model, calls: list[dict], level) -> list[dict]:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return [dict(zip(names, session.run(None, feeds))) for feeds in calls]


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max()) if a.size else 0.0


def _assert_matches(model, calls: list[dict], what: str, *, floor: bool = False) -> None:
    """Every output of the executor within TOLERANCE of its scale of ONNX Runtime's (default
    optimizations) over the calls' feeds. `floor`: or within twice ONNX Runtime's own distance
    between its optimization levels, for graphs whose float32 summation-order noise exceeds it."""
    wants = _run_ort(model, calls, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    plain = _run_ort(model, calls, ort.GraphOptimizationLevel.ORT_DISABLE_ALL) if floor else wants
    module = GraphModule(model)
    worst: dict[str, list[float]] = {}  # output -> [executor diff, ORT's own diff, scale]
    for feeds, want, other in zip(calls, wants, plain):
        with torch.no_grad():
            got = module(to_torch_feeds(feeds))
        for name, reference in want.items():
            value = got[name].numpy()
            assert value.shape == reference.shape and value.dtype == reference.dtype, (what, name)
            row = worst.setdefault(name, [0.0, 0.0, 0.0])
            row[0] = max(row[0], _max_diff(value, reference))
            row[1] = max(row[1], _max_diff(other[name], reference))
            row[2] = max(row[2], float(np.abs(reference).max()) if reference.size else 0.0)
    print(f"\n{what}: " + ", ".join(f"{k} {d:.1e}" + (f" (ONNX Runtime's own {o:.1e})" if floor else "")
                                    + f" at scale {s:.2g}" for k, (d, o, s) in worst.items()))
    for name, (diff, own, scale) in worst.items():
        bounds = [TOLERANCE * max(1.0, scale)] + ([2 * own, NOISE_FLOOR * max(1.0, scale)] if floor else [])
        bound = max(bounds)
        assert np.isfinite(diff) and diff <= bound, (what, name, diff, own, scale)


# ---- single-graph families -------------------------------------------------------------------


def test_modnet(tmp_path):
    import mtc.models.modnet.net as modnet_net

    checkpoint = save_random_checkpoint(modnet_net.build_network(), tmp_path / "modnet.ckpt", prefix="module.",
                                        seed=3)
    variant = get_model("modnet").variant("photographic")
    model = _sanitized(variant.build_onnx(checkpoint), variant.rewrites)

    _assert_matches(model, [{"src": _frame(96, 160, mean=0.5, std=0.5)}], "modnet")


@pytest.mark.parametrize("name", ["mobilenetv2", "mobilenetv2-thresholding"])
def test_bgmv2(tmp_path, name):
    import mtc.models.bgmv2.net as bgmv2_net

    checkpoint = save_random_checkpoint(bgmv2_net.build_network("mobilenetv2"), tmp_path / "bgmv2.pth", seed=7)
    variant = get_model("bgmv2").variant(name)
    model = _sanitized(variant.build_onnx(checkpoint), variant.rewrites)
    src, bgr = bgmv2_frames(96, 128)

    _assert_matches(model, [{"src": src, "bgr": bgr}], f"bgmv2 {name}")


def test_full_u2net(tmp_path):
    """The 44 M-parameter U²-Net (U²-Netp, the same graph narrower, is in test_torch_graph.py)."""
    import mtc.models.u2net.net as u2net_net

    checkpoint = save_random_checkpoint(u2net_net.build_network("u2net"), tmp_path / "u2net.pth", seed=6)
    variant = get_model("u2net").variant("u2net")
    model = _sanitized(variant.build_onnx(checkpoint), variant.rewrites)

    _assert_matches(model, [{"src": _frame(96, 64)}], "u2net")


@pytest.fixture(scope="module")
def birefnet_checkpoint(tmp_path_factory):
    import mtc.models.birefnet.net as birefnet_net

    path = tmp_path_factory.mktemp("birefnet") / "small.pth"
    return save_random_checkpoint(birefnet_net.build_network(birefnet_tests.SMALL), path, seed=7)


@pytest.mark.parametrize("form", ["native", "decomposed"])
def test_birefnet(birefnet_checkpoint, form):
    """The deformable convs as ONNX DeformConv, and decomposed into plain ops."""
    import mtc.models.birefnet as birefnet

    model = _sanitized(birefnet.build_onnx(birefnet_tests.SMALL, birefnet_tests.SIZE, birefnet_checkpoint,
                                           deform_conv=form))
    assert sum(n.op_type == "DeformConv" for n in model.graph.node) == (20 if form == "native" else 0)

    _assert_matches(model, [{"src": _frame(*birefnet_tests.SIZE, mean=IMAGENET_MEAN, std=IMAGENET_STD)}],
                    f"birefnet {form}")


@pytest.mark.parametrize("backbone", ["swinb", "res2net50"])
def test_inspyrenet(tmp_path, backbone):
    import mtc.models.inspyrenet as inspyrenet
    from mtc.models.inspyrenet import Release
    from mtc.weights import WeightFile

    arch = inspyrenet_tests.SMALL[backbone]
    checkpoint = inspyrenet_tests._calibrated_checkpoint(arch, tmp_path / f"{backbone}.pth",
                                                         seed=SEEDS[backbone])
    variant = inspyrenet._variant("small", Release(arch, WeightFile("small.pth", None, None, "MIT", ())))
    model = _sanitized(variant.build_onnx(checkpoint), variant.rewrites)

    _assert_matches(model, [{"src": _frame(*inspyrenet_tests.BASE, mean=IMAGENET_MEAN, std=IMAGENET_STD)}],
                    f"inspyrenet {backbone}")


# ---- multi-graph programs --------------------------------------------------------------------


@dataclass
class _Recording:
    """An ONNX Runtime backend for the program engine that keeps the feeds of every call."""

    backend: OrtBackend
    calls: list = field(default_factory=list)

    def __post_init__(self):
        self.name, self.input_names, self.output_names = self.backend.name, self.backend.input_names, self.backend.output_names
        self.fresh_outputs = True

    def run(self, feeds):
        self.calls.append({k: np.array(v) for k, v in feeds.items()})
        return self.backend.run(feeds)


def _program_calls(build, io, cases) -> tuple[dict, dict[str, list[dict]]]:
    """The sanitized graphs of `build`, and the feeds each got while the program ran on ONNX
    Runtime over the built-in clip at each (width, height, frames) case."""
    graphs = {name: _sanitized(model) for name, model in build.graphs.items()}
    calls: dict[str, list[dict]] = {name: [] for name in graphs}
    for width, height, count in cases:
        backends = {name: _Recording(OrtBackend(m.SerializeToString(), threads=1)) for name, m in graphs.items()}
        session = MattingSession(io, ProgramEngine(build.program, io, backends), scene_cut_threshold=None)
        if session.prompt_input is not None:
            session.set_prompt(parity_prompt(height, width))
        for frame in builtin_clip(ClipSpec(width=width, height=height, frames=count)):
            session.step(frame)
        for name, backend in backends.items():
            calls[name] += backend.calls
    return graphs, calls


@pytest.mark.parametrize("backbone", ["swinb", "res2net50"])
def test_inspyrenet_blend(tmp_path, backbone):
    """lr, hr and blend on a frame above the threshold, lr and single on one at it.

    lr's logits and hr's Laplacians carry more float32 noise than 1e-5 of their scale: ONNX
    Runtime itself moves them by up to 4e-5 of it between its optimization levels (Res2Net's
    lr_d0, 5.5e-4 at a scale of 15), and the executor lands as close to either level as the
    levels are to each other. So these graphs are held to that floor."""
    arch = inspyrenet_tests.SMALL[backbone]
    checkpoint = blend_tests._centred_checkpoint(arch, tmp_path / f"{backbone}.pth",
                                                                seed=SEEDS[backbone] + 20)
    variant = blend_tests._small_variant(backbone)
    cases = [(width, height, 1) for width, height, _, _ in variant.parity_cases]
    graphs, calls = _program_calls(variant.build_program(checkpoint), variant.io, cases)

    assert all(calls[name] for name in ("lr", "hr", "blend", "single"))
    for name, model in graphs.items():
        _assert_matches(model, calls[name], f"inspyrenet-blend {backbone} {name}", floor=True)


def test_pdfnet(tmp_path):
    from mtc.models.pdfnet import build_program, model_io
    from mtc.models.pdfnet.depth import DepthAnythingV2
    from mtc.models.pdfnet.net import PDFNet

    weights = save_random_checkpoint(pdfnet_tests._randomised(PDFNet(pdfnet_tests.SMALL_NET), 1),
                                     tmp_path / "PDFNet_Best.pth", seed=3)
    depth = save_random_checkpoint(pdfnet_tests._randomised(DepthAnythingV2(pdfnet_tests.SMALL_DEPTH), 2),
                                   tmp_path / "depth.pth", seed=4)
    build = build_program(weights, depth_weights=depth, size=pdfnet_tests.SMALL_SIZE, config=pdfnet_tests.SMALL_NET,
                          depth_config=pdfnet_tests.SMALL_DEPTH, depth_input=42)
    graphs, calls = _program_calls(build, model_io(pdfnet_tests.SMALL_SIZE), [(320, 240, 1)])

    assert set(graphs) == {"depth", "pdfnet"}
    for name, model in graphs.items():
        _assert_matches(model, calls[name], f"pdfnet {name}")


def test_matanyone(tmp_path):
    """Seven frames: the first frame's start phases, ordinary frames and a memory commit (frame 5)."""
    from mtc.models.matanyone import IO, build_program
    from mtc.models.matanyone.net import MatAnyone

    small = matanyone_tests.SMALL
    torch.manual_seed(0)  # what save_random_checkpoint does not draw (embeddings) comes from here
    weights = save_random_checkpoint(MatAnyone(small), tmp_path / "small.pth", seed=3)
    height, width = matanyone_tests.SIZE
    graphs, calls = _program_calls(build_program(weights, config=small), IO, [(width, height, 7)])

    assert set(graphs) == {"image_encoder", "mask_encoder", "memory_readout", "segmenter"}
    for name, model in graphs.items():
        _assert_matches(model, calls[name], f"matanyone {name}")
