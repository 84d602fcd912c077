"""U²-Net / U²-Netp exporter: official key layout, export, parity, pre/post-processing, runtime.

The official checkpoints cannot be downloaded here, so randomly initialised networks are saved
in the official layout and stand in for them. The u2netp stand-in leaves out BatchNorm's
`num_batches_tracked`, as a checkpoint saved by PyTorch 0.4.0 (the version the official
README names) would.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import mtc.models.u2net as u2net  # noqa: E402  (registers the family)
import mtc.models.u2net.net as u2net_net  # noqa: E402
import mtc.runtime  # noqa: E402
from mtc.errors import MtcError  # noqa: E402
from mtc.export.torch_export import save_random_checkpoint  # noqa: E402
from mtc.models.export import export_model  # noqa: E402

TOLERANCE = 1e-4  # alpha in [0, 1]; measured max |diff| PyTorch vs ONNX Runtime is ~3e-6

# Key names with shapes in the official u2net.pth / u2netp.pth.
OFFICIAL_KEYS = {
    "u2net": {
        "stage1.rebnconvin.conv_s1.weight": (64, 3, 3, 3),
        "stage1.rebnconv1.conv_s1.weight": (32, 64, 3, 3),
        "stage1.rebnconv7.conv_s1.weight": (32, 32, 3, 3),
        "stage1.rebnconv6d.bn_s1.running_var": (32,),
        "stage1.rebnconv1d.conv_s1.weight": (64, 64, 3, 3),
        "stage4.rebnconv4.conv_s1.bias": (128,),
        "stage5.rebnconv4.conv_s1.weight": (256, 256, 3, 3),
        "stage6.rebnconv3d.bn_s1.weight": (256,),
        "stage5d.rebnconvin.conv_s1.weight": (512, 1024, 3, 3),
        "stage1d.rebnconv1.conv_s1.weight": (16, 64, 3, 3),
        "side1.weight": (1, 64, 3, 3),
        "side6.weight": (1, 512, 3, 3),
        "outconv.weight": (1, 6, 1, 1),
        "outconv.bias": (1,),
    },
    "u2netp": {
        "stage1.rebnconvin.conv_s1.weight": (64, 3, 3, 3),
        "stage1.rebnconv1.conv_s1.weight": (16, 64, 3, 3),
        "stage2.rebnconv6.conv_s1.weight": (16, 16, 3, 3),
        "stage5.rebnconv4.conv_s1.weight": (16, 16, 3, 3),
        "stage5d.rebnconvin.conv_s1.weight": (64, 128, 3, 3),
        "side6.weight": (1, 64, 3, 3),
        "outconv.weight": (1, 6, 1, 1),
    },
}
# 112 REBNCONV blocks x 7 tensors + 6 side convs and the fusing conv x 2; 686 without the
# BatchNorm counters (checkpoints saved by PyTorch < 0.4.1).
OFFICIAL_KEY_COUNT = 798
PARAMETERS = {"u2net": 44_009_869, "u2netp": 1_131_181}  # the official 176 MB / 4.7 MB files


@pytest.fixture(scope="module")
def u2netp_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("u2netp") / "u2netp.pth"
    return save_random_checkpoint(u2net_net.build_network("u2netp"), path, seed=5,
                                  drop_buffers=("num_batches_tracked",))


@pytest.fixture(scope="module")
def artifact(u2netp_checkpoint, tmp_path_factory):
    return export_model("u2net", variant="u2netp", weights_path=u2netp_checkpoint,
                        output=tmp_path_factory.mktemp("artifacts") / "u2netp")


@pytest.mark.parametrize("arch", ["u2net", "u2netp"])
def test_state_dict_has_the_official_layout(arch):
    net = u2net_net.build_network(arch)
    state = {k: tuple(v.shape) for k, v in net.state_dict().items()}

    assert len(state) == OFFICIAL_KEY_COUNT
    assert sum(not k.endswith("num_batches_tracked") for k in state) == 686
    assert {k: state.get(k) for k in OFFICIAL_KEYS[arch]} == OFFICIAL_KEYS[arch]
    assert sum(p.numel() for p in net.parameters()) == PARAMETERS[arch]


def test_export_checks_parity(artifact):
    report = json.loads((artifact / "report.json").read_text())
    manifest = json.loads((artifact / "manifest.json").read_text())

    assert [p["resolution"] for p in report["parity"]] == ["320x320", "200x120"]
    assert all(p["passed"] and p["max_abs_diff"]["alpha"] <= TOLERANCE for p in report["parity"])
    assert {p["tolerance"] for p in report["parity"]} == {u2net.PARITY_TOLERANCE} == {TOLERANCE}
    assert manifest["io"]["preprocess"]["resize"] == "fixed"
    assert manifest["io"]["preprocess"]["fixed_size"] == [320, 320]
    assert [t["name"] for t in manifest["io"]["outputs"]] == ["alpha"]  # the fused map only


def test_graph_divides_by_the_image_maximum_and_min_max_normalises(artifact):
    from mtc.backends import OrtBackend

    backend = OrtBackend(artifact / "model.onnx")
    x = np.random.default_rng(1).random((1, 3, 320, 320), dtype=np.float32) * 0.9 + 0.05
    bright = backend.run({"src": x})["alpha"]
    dim = backend.run({"src": x * 0.4})["alpha"]  # the official x / max(x) makes brightness irrelevant

    assert np.abs(bright - dim).max() < 1e-5
    assert bright.min() == pytest.approx(0.0, abs=1e-6) and bright.max() == pytest.approx(1.0, abs=1e-6)


def test_official_preprocessing_formula(u2netp_checkpoint):
    """The wrapper matches the official test script: image / max, ImageNet mean/std, normPRED."""
    wrapper = u2net_net.matte_module("u2netp", u2netp_checkpoint)
    net = wrapper.net
    image = np.random.default_rng(2).random((160, 160, 3)) * 0.7  # float64 as the official loader
    normalised = image / np.max(image)
    normalised = (normalised - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])  # ImageNet
    with torch.no_grad():
        d0 = net(torch.from_numpy(normalised.transpose(2, 0, 1)[None]).float())
        expected = (d0 - d0.min()) / (d0.max() - d0.min())
        actual = wrapper(torch.from_numpy(image.transpose(2, 0, 1)[None].copy()).float())

    assert torch.abs(actual - expected).max() < 1e-5


def test_full_u2net_exports_and_matches_pytorch(tmp_path):
    """The 44 M-parameter variant, checked without the (slow) pipeline on a small input."""
    from mtc.backends import OrtBackend
    from mtc.export.torch_export import export_onnx

    path = save_random_checkpoint(u2net_net.build_network("u2net"), tmp_path / "u2net.pth", seed=6)
    module = u2net_net.matte_module("u2net", path)
    x = np.random.default_rng(3).random((1, 3, 96, 64), dtype=np.float32)
    dims = {0: "batch", 2: "height", 3: "width"}
    model = export_onnx(module, (torch.from_numpy(x),), input_names=["src"], output_names=["alpha"],
                        dynamic_axes={"src": dims, "alpha": dims})

    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    actual = OrtBackend(model.SerializeToString()).run({"src": x})["alpha"]

    assert actual.shape == (1, 1, 96, 64)
    assert np.abs(actual - expected).max() <= TOLERANCE


def test_runtime_returns_alpha_of_the_frame_size(artifact):
    session = mtc.runtime.load(artifact)
    frame = np.random.default_rng(4).integers(0, 256, (90, 161, 3), dtype=np.uint8)

    matte = session.process(frame)

    assert matte.alpha.shape == (90, 161)
    assert 0.0 <= matte.alpha.min() and matte.alpha.max() <= 1.0


def test_openvino_gives_the_alpha_onnxruntime_gives(artifact, assert_cpu_backends_agree):
    rng = np.random.default_rng(5)
    frames = [rng.integers(0, 256, (90, 161, 3), dtype=np.uint8) for _ in range(2)]

    alphas, _ = assert_cpu_backends_agree(artifact, frames)

    assert alphas.std() > 0.01  # a real matte, not a constant both backends could agree on


def test_u2netp_checkpoint_given_to_u2net_is_refused(u2netp_checkpoint, tmp_path):
    with pytest.raises(MtcError) as info:
        export_model("u2net", variant="u2net", weights_path=u2netp_checkpoint, output=tmp_path / "out")

    message = info.value.message
    assert "u2netp.pth does not fit U2Net" in message
    assert "wrong shape: stage1.rebnconv1.conv_s1.weight (16, 64, 3, 3) != (32, 64, 3, 3)" in message
    assert "more)" in message  # only the first few of the many mismatches are listed
    assert not (tmp_path / "out").exists()
