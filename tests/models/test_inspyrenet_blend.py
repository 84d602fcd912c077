"""InSPyReNet's two-pass pyramid blend (the `-blend` variants): our PyTorch blend against a plain
re-statement of the official `forward_inference` with a threshold, the four-graph artifact
against PyTorch through `mtc.runtime` on ONNX Runtime and OpenVINO (blending frames above the
threshold, the single pass for the others), and the single pass left as the default.

Reduced networks with calibrated random weights (test_inspyrenet.py), base size 64x64 and full
size 128x128 (threshold 96), so that each test takes seconds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from torch.nn import functional as F  # noqa: E402

import mtc.models.inspyrenet as inspyrenet  # noqa: E402
import mtc.runtime  # noqa: E402
from mtc.errors import MtcError  # noqa: E402
from mtc.export.compile import CompileJob, ParityCase  # noqa: E402
from mtc.export.program import compile_program  # noqa: E402
from mtc.models.inspyrenet import Blend, Release  # noqa: E402
from mtc.models.inspyrenet.blend import (  # noqa: E402
    SinglePass,
    Transition,
    TwoPassMatte,
    antialiased_bilinear_weights,
    ellipse,
)
from mtc.models.inspyrenet.net import load_network  # noqa: E402
from mtc.models.registry import get_model  # noqa: E402
from mtc.weights import WeightFile  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_inspyrenet import BASE, SMALL, _calibrated_checkpoint  # noqa: E402

FULL = (128, 128)
BLEND = Blend(FULL, 96)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


# ---- an independent re-statement of the official algorithm ------------------------------------


def _official_kernel() -> torch.Tensor:
    """cv2.getGaussianKernel(7, 1) outer itself (float64 numpy, as OpenCV computes it)."""
    g = np.exp(-(np.arange(7) - 3.0) ** 2 / 2.0)
    g /= g.sum()
    return torch.tensor(np.outer(g, g)).float()[None, None]


def _official_reconstruct(x: torch.Tensor, laplacian: torch.Tensor) -> torch.Tensor:
    """`ImagePyramid.reconstruct`: expand, then add the Laplacian, always interpolated
    (bilinear, align_corners=True) to the expanded size."""
    z = torch.zeros_like(x)
    expanded = F.pixel_shuffle(torch.cat([x, z, z, z], dim=1), 2)
    expanded = F.conv2d(F.pad(expanded, (3, 3, 3, 3), mode="reflect"), _official_kernel() * 4)
    return expanded + F.interpolate(laplacian, expanded.shape[-2:], mode="bilinear", align_corners=True)


def _kornia_morphology(x: torch.Tensor, element: np.ndarray, *, dilate: bool) -> torch.Tensor:
    """kornia.morphology.dilation / erosion with a flat element and the default geodesic border:
    the border padded with -/+1e4, neighbours outside the element offset by -/+1e4."""
    k = element.shape[0]
    big = 1e4
    neighbourhood = torch.zeros(k, k)
    neighbourhood[torch.from_numpy(element) == 0] = -big
    padded = F.pad(x, (k // 2,) * 4, mode="constant", value=-big if dilate else big)
    windows = padded.unfold(2, k, 1).unfold(3, k, 1)
    if dilate:
        return (windows + neighbourhood.flip((0, 1))).amax(dim=(4, 5))
    return (windows - neighbourhood).amin(dim=(4, 5))


def _official_transition(logits: torch.Tensor, size: int) -> torch.Tensor:
    import cv2

    element = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    x = torch.sigmoid(logits)
    return ((_kornia_morphology(x, element, dilate=True) - _kornia_morphology(x, element, dilate=False)) > 0.5).float()


def _official_blend(net, image: torch.Tensor, base_size: tuple[int, int]) -> torch.Tensor:
    """`forward_inference` with both sides above the threshold: `image_resized` (PIL bilinear,
    i.e. antialiased) through the network, `image` through the network, the pyramid blend."""
    def ret(x, target):
        return F.interpolate(x, size=target.shape[-2:], mode="bilinear", align_corners=False)

    image_resized = F.interpolate(image, size=base_size, mode="bilinear", align_corners=False, antialias=True)
    lr = net.pyramid(image_resized)
    hr = net.pyramid(image)
    d3 = ret(lr.d0, hr.d3)
    p2 = ret(_official_transition(d3, 5), hr.p2) * hr.p2
    d2 = _official_reconstruct(d3, p2)
    p1 = ret(_official_transition(d2, 9), hr.p1) * hr.p1
    d1 = _official_reconstruct(d2, p1)
    p0 = ret(_official_transition(d1, 17), hr.p0) * hr.p0
    d0 = _official_reconstruct(d1, p0)
    pred = torch.sigmoid(d0)
    return (pred - pred.min()) / (pred.max() - pred.min() + 1e-8)


# ---- fixtures ---------------------------------------------------------------------------------


def _image(seed: int) -> torch.Tensor:
    """An image-like input at the full size: smooth shapes and noise."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 3, 8, 8, generator=generator)
    return F.interpolate(coarse, size=FULL, mode="bilinear", align_corners=False) + 0.1 * torch.randn(
        1, 3, *FULL, generator=generator)


def _centred_checkpoint(arch, path, *, seed: int):
    """A calibrated checkpoint whose finest logits straddle 0 on the test images, as a trained
    model's do around an object: random heads can leave the whole map on one side of 0, where
    the transition masks are empty and the full-resolution Laplacians never enter the blend.
    Shifting the last SICA's output bias shifts d0 (the expands keep constants)."""
    _calibrated_checkpoint(arch, path, seed=seed)
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = load_network(arch, path)
    with torch.no_grad():
        d0 = net(F.interpolate(_image(40), size=arch.base_size, mode="bilinear", antialias=True))
    state["attention0.conv_out4.bn.bias"] -= float(d0.median())
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inspyrenet-blend")
    return {name: _centred_checkpoint(arch, folder / f"{name}.pth", seed=seed)
            for (name, arch), seed in zip(SMALL.items(), (31, 32))}


def _transition_masks(net, image: torch.Tensor) -> list[float]:
    """The fraction of each level the full-resolution Laplacians enter (official order p2, p1, p0)."""
    blend = TwoPassMatte(net, FULL, BASE).eval()
    fractions = []
    with torch.no_grad():
        laplacians = blend.hr(image)
        logits = F.interpolate(blend.lr(image), size=(FULL[0] // 8, FULL[1] // 8), mode="bilinear")
        for transition, laplacian in zip(blend.blend.transitions, laplacians):
            mask = F.interpolate(transition(logits), size=laplacian.shape[-2:], mode="bilinear")
            fractions.append(float((mask > 0).float().mean()))
            logits = blend.blend.image_pyramid.reconstruct(logits, mask * laplacian)
    return fractions


# ---- (a) our PyTorch blend is the official algorithm ------------------------------------------


@pytest.mark.parametrize("size", [5, 9, 17, 3, 31])
def test_ellipse_is_opencvs(size):
    cv2 = pytest.importorskip("cv2")

    assert np.array_equal(ellipse(size), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)))


@pytest.mark.parametrize("size", [5, 9, 17])
def test_transition_is_kornias_gradient_of_the_sigmoid(size):
    pytest.importorskip("cv2")
    # Smooth logits, so that the mask has edges and flat regions, some of them along the border.
    coarse = 8 * torch.randn(1, 1, 4, 6, generator=torch.Generator().manual_seed(size))
    logits = F.interpolate(coarse, size=(48, 72), mode="bilinear", align_corners=False)

    expected = _official_transition(logits, size)
    actual = Transition(size)(logits)

    assert torch.equal(actual, expected)
    assert 0.05 < float(expected.mean()) < 0.95  # both values occur, also along the border


@pytest.mark.parametrize(("size_in", "size_out"), [(128, 64), (1280, 384), (2048, 1024), (96, 64), (64, 96)])
def test_downscale_matrix_is_antialiased_bilinear(size_in, size_out):
    x = torch.randn(1, 1, size_in, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = F.interpolate(x, size=(size_out, 3), mode="bilinear", align_corners=False, antialias=True)
    weights = torch.from_numpy(antialiased_bilinear_weights(size_in, size_out)).double()

    assert torch.abs(weights @ x[0, 0] - expected[0, 0]).max() < 1e-6


@pytest.mark.parametrize("backbone", ["swinb", "res2net50"])
def test_blend_is_the_official_two_pass_inference(checkpoints, backbone):
    pytest.importorskip("cv2")
    net = load_network(SMALL[backbone], checkpoints[backbone])
    matte = TwoPassMatte(net, FULL, BASE).eval()
    image = _image(41)

    with torch.no_grad():
        expected = _official_blend(net, image, BASE)
        actual = matte(image)
        single = net(F.interpolate(image, size=BASE, mode="bilinear", antialias=True))

    # The full-resolution Laplacians enter part of every level, not none or all of it.
    assert all(0.05 < fraction < 0.95 for fraction in _transition_masks(net, image))
    assert actual.shape == (1, 1, *FULL)
    assert float(torch.abs(actual - expected).max()) < 1e-5  # measured 0 to ~1e-6
    # The blend is not the low-resolution pass upscaled: the full-resolution Laplacians add detail.
    upscaled = torch.sigmoid(F.interpolate(single, size=FULL, mode="bilinear"))
    upscaled = (upscaled - upscaled.min()) / (upscaled.max() - upscaled.min())
    assert float(torch.abs(actual - upscaled).max()) > 0.05


# ---- (b) the artifact, run by mtc.runtime, is the PyTorch blend ----------------------------


def _small_variant(backbone: str):
    release = Release(SMALL[backbone], WeightFile(f"{backbone}.pth", None, None, "MIT", ()))
    return inspyrenet._blend_variant("small-blend", release, BLEND)


@pytest.fixture(scope="module")
def artifact(checkpoints, tmp_path_factory):
    """The reduced Swin model's blend through the steps `mtc export` runs for a program variant."""
    variant = _small_variant("swinb")
    job = CompileJob(model="inspyrenet", variant=variant.name, task="image_matting", license="MIT", io=variant.io,
                     cases=tuple(ParityCase(*case) for case in variant.parity_cases), tolerance=variant.parity_tolerance,
                     outliers=variant.parity_outliers,
                     quantization=variant.quantization)
    build = variant.build_program(checkpoints["swinb"])
    return compile_program(build, job, output=tmp_path_factory.mktemp("artifacts") / "small-blend")


def _photo(seed: int, size: tuple[int, int] = (150, 200)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    height, width = size
    photo = rng.integers(0, 80, (height, width, 3), dtype=np.uint8)
    photo[height // 5:height * 4 // 5, width * 3 // 10:width * 3 // 4] = (210, 170, 70)
    photo[height // 3:height * 7 // 15, width // 10:width * 19 // 20] = (40, 90, 200)
    return photo


def _normalised(photo: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """The photo as the runtime feeds a graph of `size`: PIL bilinear, ImageNet mean/std."""
    from PIL import Image

    resized = np.asarray(Image.fromarray(photo).resize(size[::-1], Image.BILINEAR), np.float32) / 255
    return torch.from_numpy(((resized - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)[None].copy())


def _pytorch_alpha(checkpoints, photo: np.ndarray, *, blend: bool = True) -> np.ndarray:
    """The blend (or the low-resolution pass alone) in PyTorch on the photo as the runtime feeds it."""
    matte = TwoPassMatte(load_network(SMALL["swinb"], checkpoints["swinb"]), FULL, BASE).eval()
    image = _normalised(photo, FULL)
    with torch.no_grad():
        return (matte(image) if blend else matte.single(matte.lr(image)))[0, 0].numpy()


def test_artifact_is_four_graphs_chained_by_the_program(artifact):
    manifest = json.loads((artifact / "manifest.json").read_text())
    report = json.loads((artifact / "report.json").read_text())
    program = manifest["program"]

    assert [(g["name"], g["file"]) for g in program["graphs"]] == [("lr", "lr.onnx"), ("hr", "hr.onnx"),
                                                                   ("blend", "blend.onnx"), ("single", "single.onnx")]
    assert [s["graph"] for s in program["frame"]["steps"]] == ["lr", "hr", "blend"]
    assert program["small"]["side"] == BLEND.threshold
    assert [s["graph"] for s in program["small"]["phase"]["steps"]] == ["lr", "single"]
    assert manifest["io"]["preprocess"]["fixed_size"] == list(FULL)
    assert [t["role"] for t in manifest["io"]["inputs"]] == ["image", "frame_size"]
    blended, single = report["parity"]
    # one frame of each phase: the blend's graphs ran on the first, the single pass's on the second
    assert blended["resolution"] == "128x97" and single["resolution"] == "170x96"
    assert blended["passed"] and set(blended["graph_max_abs_diff"]) == {"lr", "hr", "blend", "single"}
    assert single["passed"]
    # A few mask flips would be allowed (see BLEND_CHAIN_OUTLIERS); at this size none occur.
    assert blended["tolerance"] == inspyrenet.BLEND_CHAIN_TOLERANCE
    assert blended["outliers_allowed"] == inspyrenet.BLEND_CHAIN_OUTLIERS
    assert blended["alpha_share_over_tolerance"] == single["alpha_share_over_tolerance"] == 0.0
    assert max(blended["alpha_max_abs_diff"], single["alpha_max_abs_diff"]) < inspyrenet.PARITY_TOLERANCE


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_runtime_blends_large_frames_and_runs_the_single_pass_on_small_ones(artifact, checkpoints, backend):
    if backend == "openvino":
        pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'mtc[openvino]')")
    session = mtc.runtime.load(artifact, backend=backend)
    # 150x200: both sides above the threshold (96), blended; 96x140: the shorter side at it, not blended.
    for seed, size, blend in ((0, (150, 200), True), (1, (150, 200), True), (2, (96, 140), False)):
        photo = _photo(seed, size)
        alpha = session.step(photo)["alpha"][0, 0]  # at the full size, before resizing back
        expected = _pytorch_alpha(checkpoints, photo, blend=blend)
        other = _pytorch_alpha(checkpoints, photo, blend=not blend)

        assert alpha.shape == expected.shape == FULL
        assert expected.std() > 0.05  # a real matte
        assert float(np.abs(alpha - expected).max()) < 1e-4
        assert float(np.abs(alpha - other).max()) > 0.05  # the other phase would have given another matte
    assert session.process(_photo(3)).alpha.shape == (150, 200)
    assert session.process(_photo(4, (60, 90))).alpha.shape == (60, 90)


def test_the_single_pass_phase_is_the_single_pass_model(checkpoints):
    """On a small frame the program's single pass (the frame resized to the full size, then
    downscaled inside `lr`) is the plain single-pass model on the frame resized to the base size,
    up to the two resizes' difference: the saliency at the base size agrees closely."""
    net = load_network(SMALL["swinb"], checkpoints["swinb"])
    matte = TwoPassMatte(net, FULL, BASE).eval()
    photo = _photo(5, (72, 96))
    with torch.no_grad():
        program = matte.single(matte.lr(_normalised(photo, FULL)))
        plain = SinglePass(FULL)(net(_normalised(photo, BASE)))

    assert float(torch.abs(program - plain).mean()) < 0.02


@pytest.fixture(scope="module")
def res2net_build(checkpoints):
    return _small_variant("res2net50").build_program(checkpoints["res2net50"])


def test_the_res2net_blend_exports_too(res2net_build):
    """The Res2Net50 backbone's three graphs on ONNX Runtime against PyTorch (no artifact)."""
    import onnxruntime as ort

    build = res2net_build
    image = _image(41).numpy()
    values = {"image": image}
    for step in (*build.program.frame.steps, build.program.small.phase.steps[-1]):
        spec = build.program.graph(step.graph)
        feeds = {name: values[name] for name in spec.inputs}
        session = ort.InferenceSession(build.graphs[step.graph].SerializeToString(), providers=["CPUExecutionProvider"])
        outputs = dict(zip(spec.outputs, session.run(list(spec.outputs), feeds)))
        expected = build.references[step.graph].run(feeds)
        for name, value in outputs.items():
            assert np.abs(value - expected[name]).max() < 1e-4, (step.graph, name)
        values.update(outputs)
    assert values["alpha"].shape == (1, 1, *FULL)


def test_build_checks_each_graph_on_the_same_inputs(res2net_build):
    """The export's own gate (the chained check tolerates transition-mask flips): a graph whose
    output is off by 1e-3 of its scale is refused."""
    from mtc.models.inspyrenet.export import check_graphs, example_image

    values, expected = {"image": example_image(FULL)}, {}
    for spec in res2net_build.program.graphs:
        expected[spec.name] = res2net_build.references[spec.name].run({k: values[k] for k in spec.inputs})
        values.update({k: v for k, v in expected[spec.name].items() if k != "alpha"})
    worst = check_graphs(res2net_build.graphs, values, expected)

    assert set(worst) == {"lr.lr_d0", "hr.hr_p2", "hr.hr_p1", "hr.hr_p0", "blend.alpha", "single.alpha"}
    assert worst["blend.alpha"] < 1e-5 and worst["single.alpha"] < 1e-5
    p1 = expected["hr"]["hr_p1"]
    expected["hr"]["hr_p1"] = p1 + 1e-3 * np.abs(p1).max()
    with pytest.raises(MtcError, match="graph hr differs from PyTorch"):
        check_graphs(res2net_build.graphs, values, expected)


# ---- (c) the single pass stays the default; the blend's rule is data ---------------------------


def test_single_pass_is_the_default_and_blend_an_option():
    spec = get_model("inspyrenet")
    default = spec.variant(None)
    blends = {name: v for name, v in spec.variants.items() if name.endswith("-blend")}

    assert default.name == "base" and default.build_onnx is not None and default.build_program is None
    assert default.io.preprocess.fixed_size == (1024, 1024)
    assert {name: v.io.preprocess.fixed_size for name, v in blends.items()} == {
        "base-blend": (2048, 2048), "fast-blend": (1280, 1280), "base-nightly-blend": (2048, 2048),
        "res2net50-blend": (1280, 1280)}
    assert all(v.build_program is not None and v.build_onnx is None for v in blends.values())
    assert all(v.weights == spec.variant(name.removesuffix("-blend")).weights for name, v in blends.items())
    assert spec.variant("fast-blend").quantization.int8_graphs == ("lr", "hr")
    # export checks one frame of each phase: blended (both sides above the threshold) and not
    assert spec.variant("fast-blend").parity_cases == ((1280, 720, 1, None), (910, 512, 1, None))
    assert spec.variant("base-blend").parity_cases == ((2048, 1152, 1, None), (1820, 1024, 1, None))


def test_single_pass_logits_are_the_pyramids_finest(checkpoints):
    net = load_network(SMALL["swinb"], checkpoints["swinb"])
    x = _image(42)[..., :64, :64]
    with torch.no_grad():
        assert torch.equal(net(x), net.pyramid(x).d0)


def test_blend_full_size_is_data_and_checked():
    spec = get_model("inspyrenet")

    assert spec.variant("fast-blend").sized(1536, 2048).io.preprocess.fixed_size == (1536, 2048)
    with pytest.raises(MtcError, match="both sides above 512"):
        spec.variant("fast-blend").sized(512, 1024)
    with pytest.raises(MtcError, match="multiples of 32"):
        spec.variant("fast-blend").sized(1000, 1000)
    with pytest.raises(MtcError, match="fixed input size"):
        spec.variant("fast").sized(1280, 1280)
