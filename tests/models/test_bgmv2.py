"""BackgroundMattingV2 exporter: official key layout, dense refiner == patch refiner, parity.

The official checkpoints cannot be downloaded here, so randomly initialised networks are saved
in the official layout and stand in for them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import mtc.models.bgmv2.net as bgmv2_net  # noqa: E402  (registers the family)
import mtc.runtime  # noqa: E402
from mtc.backends import OrtBackend  # noqa: E402
from mtc.errors import MtcError  # noqa: E402
from mtc.export.onnx_ingest import sanitize  # noqa: E402
from mtc.export.torch_export import save_random_checkpoint  # noqa: E402
from mtc.models.registry import get_model  # noqa: E402

F = torch.nn.functional
TOLERANCE = 1e-4  # pha and fgr in [0, 1]; measured max |diff| PyTorch vs ONNX Runtime is ~2e-7

# Key names with shapes in the official pytorch_<backbone>.pth (saved from MattingRefine).
COMMON_KEYS = {
    "aspp.convs.0.0.weight": None,  # shape depends on the backbone
    "aspp.convs.1.0.weight": None,
    "aspp.convs.3.1.running_mean": (256,),
    "aspp.convs.4.1.weight": None,  # the image-pooling branch: pool, conv, bn, relu
    "aspp.convs.4.2.bias": (256,),
    "aspp.project.0.weight": (256, 1280, 1, 1),
    "aspp.project.1.weight": (256,),
    "decoder.conv4.weight": (37, 54, 3, 3),
    "decoder.conv4.bias": (37,),
    "decoder.bn3.running_var": (48,),
    "refiner.conv1.weight": (24, 42, 3, 3),
    "refiner.conv2.weight": (16, 24, 3, 3),
    "refiner.conv3.weight": (12, 22, 3, 3),
    "refiner.bn3.weight": (12,),
    "refiner.conv4.weight": (4, 12, 3, 3),
    "refiner.conv4.bias": (4,),
}
OFFICIAL_KEYS = {
    "mobilenetv2": {
        **COMMON_KEYS,
        "aspp.convs.0.0.weight": (256, 320, 1, 1),
        "aspp.convs.1.0.weight": (256, 320, 3, 3),
        "aspp.convs.4.1.weight": (256, 320, 1, 1),
        "backbone.features.0.0.weight": (32, 6, 3, 3),  # widened to src + bgr
        "backbone.features.1.conv.0.0.weight": (32, 1, 3, 3),
        "backbone.features.1.conv.1.weight": (16, 32, 1, 1),
        "backbone.features.2.conv.0.0.weight": (96, 16, 1, 1),
        "backbone.features.14.conv.1.0.weight": (576, 1, 3, 3),
        "backbone.features.17.conv.3.running_var": (320,),
        "decoder.conv1.weight": (128, 288, 3, 3),
        "decoder.conv3.weight": (48, 80, 3, 3),
    },
    "resnet50": {
        **COMMON_KEYS,
        "aspp.convs.0.0.weight": (256, 2048, 1, 1),
        "aspp.convs.1.0.weight": (256, 2048, 3, 3),
        "aspp.convs.4.1.weight": (256, 2048, 1, 1),
        "backbone.conv1.weight": (64, 6, 7, 7),
        "backbone.bn1.running_mean": (64,),
        "backbone.layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "backbone.layer3.5.conv2.weight": (256, 256, 3, 3),
        "backbone.layer4.0.downsample.1.weight": (2048,),
        "backbone.layer4.2.conv3.weight": (2048, 512, 1, 1),
        "decoder.conv1.weight": (128, 768, 3, 3),
        "decoder.conv3.weight": (48, 128, 3, 3),
    },
}
KEY_COUNTS = {"mobilenetv2": 382, "resnet50": 394, "resnet101": 700}  # incl. num_batches_tracked
PARAMETERS = {"mobilenetv2": 5_006_839, "resnet50": 40_247_703}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bgmv2")
    return {name: save_random_checkpoint(bgmv2_net.build_network(name), folder / f"pytorch_{name}.pth", seed=7)
            for name in ("mobilenetv2", "resnet50")}


def frames(height, width, seed=0):
    """A frame and a plate that differs from it in a blob: a plausible src/bgr pair in [0, 1]."""
    rng = np.random.default_rng(seed)
    bgr = rng.random((1, 3, height, width), dtype=np.float32)
    yy, xx = np.mgrid[:height, :width]
    blob = ((yy - height / 2) ** 2 / (height / 3) ** 2 + (xx - width / 2) ** 2 / (width / 4) ** 2) < 1
    src = np.where(blob, rng.random((1, 3, height, width), dtype=np.float32), bgr)
    return src.astype(np.float32), bgr


@pytest.mark.parametrize("backbone", ["mobilenetv2", "resnet50"])
def test_state_dict_has_the_official_layout(backbone):
    net = bgmv2_net.build_network(backbone)
    state = {k: tuple(v.shape) for k, v in net.state_dict().items()}

    assert len(state) == KEY_COUNTS[backbone]
    assert {k: state.get(k) for k in OFFICIAL_KEYS[backbone]} == OFFICIAL_KEYS[backbone]
    assert sum(p.numel() for p in net.parameters()) == PARAMETERS[backbone]


def test_resnet101_layout():
    state = bgmv2_net.build_network("resnet101").state_dict()
    assert len(state) == KEY_COUNTS["resnet101"] and "backbone.layer3.22.conv3.weight" in state


@pytest.mark.parametrize(("backbone", "mode"), [("mobilenetv2", "full"), ("mobilenetv2", "thresholding"),
                                                ("resnet50", "full")])
def test_onnx_matches_pytorch_at_two_sizes(checkpoints, backbone, mode):
    variant = get_model("bgmv2").variant(backbone if mode == "full" else f"{backbone}-{mode}")
    model, _ = sanitize(variant.build_onnx(checkpoints[backbone]))
    reference = variant.build_reference(checkpoints[backbone])
    candidate = OrtBackend(model.SerializeToString())

    for height, width in ((144, 256), (116, 200)):  # the second is not a multiple of 32
        src, bgr = frames(height, width)
        expected = reference.run({"src": src, "bgr": bgr})
        actual = candidate.run({"src": src, "bgr": bgr})
        assert actual["pha"].shape == (1, 1, height, width) and actual["fgr"].shape == (1, 3, height, width)
        for name in ("pha", "fgr"):
            assert np.abs(actual[name] - expected[name]).max() <= TOLERANCE, (name, height, width)


def patch_refine(refiner, src, bgr, pha, fgr, err, hid, selected):
    """The official patch refiner restated: crop the selected 4x4 patches (with the context the
    unpadded convs consume), refine each on its own, paste them over the upsampled coarse result."""
    h, w = src.shape[2:]
    src_bgr = torch.cat([src, bgr], 1)
    half = torch.cat([F.interpolate(torch.cat([hid, pha, fgr], 1), (h // 2, w // 2), mode="bilinear"),
                      F.interpolate(src_bgr, (h // 2, w // 2), mode="bilinear")], 1)
    half, full = F.pad(half, (3, 3, 3, 3)), F.pad(src_bgr, (2, 2, 2, 2))
    out = F.interpolate(torch.cat([pha, fgr], 1), (h, w), mode="bilinear")
    for b, i, j in selected.nonzero().tolist():
        x = half[b:b + 1, :, 2 * i:2 * i + 8, 2 * j:2 * j + 8]
        x = refiner.relu(refiner.bn2(refiner.conv2(refiner.relu(refiner.bn1(refiner.conv1(x))))))
        x = F.interpolate(x, 8, mode="nearest")
        x = torch.cat([x, full[b:b + 1, :, 4 * i:4 * i + 8, 4 * j:4 * j + 8]], 1)
        out[b, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4] = refiner.conv4(refiner.relu(refiner.bn3(refiner.conv3(x))))[0]
    return out[:, :1], out[:, 1:]


@pytest.mark.parametrize("mode", ["full", "thresholding"])
def test_dense_refiner_equals_the_official_patch_refiner(checkpoints, mode):
    src, bgr = (torch.from_numpy(a) for a in frames(48, 64, seed=1))
    probe = bgmv2_net.load_network("mobilenetv2", checkpoints["mobilenetv2"])
    with torch.no_grad():
        coarse = probe.coarse(src, bgr)
        err_quarter = F.interpolate(coarse[2], (12, 16), mode="bilinear")
        # A threshold at the median refines half of the patches and leaves the rest coarse.
        threshold = float(err_quarter.median()) if mode == "thresholding" else -1.0
        net = bgmv2_net.build_network("mobilenetv2", mode, refine_threshold=threshold)
        net.load_state_dict(probe.state_dict())
        selected = err_quarter[:, 0] > threshold
        assert 0 < int(selected.sum()) < selected.numel() or mode == "full"

        pha, fgr = net(src, bgr)
        ref_pha, ref_fgr = patch_refine(net.refiner, src, bgr, *coarse, selected)

    assert torch.abs(pha - ref_pha.clamp(0, 1)).max() < 1e-5
    assert torch.abs(fgr - (ref_fgr + src).clamp(0, 1)).max() < 1e-5


def test_sampling_mode_is_not_offered():
    with pytest.raises(ValueError, match="not exportable"):
        bgmv2_net.build_network("mobilenetv2", "sampling")
    assert not any("sampling" in name for name in get_model("bgmv2").variants)


def test_mobilenet_checkpoint_given_to_resnet50_is_refused(checkpoints, tmp_path):
    from mtc.models.export import export_model

    with pytest.raises(MtcError) as info:
        export_model("bgmv2", variant="resnet50", weights_path=checkpoints["mobilenetv2"], output=tmp_path / "out")

    message = info.value.message
    assert "pytorch_mobilenetv2.pth does not fit MattingRefine" in message
    assert "missing: backbone.conv1.weight" in message
    assert "unexpected: backbone.features.0.0.weight" in message
    assert "wrong shape: aspp.convs.0.0.weight (256, 320, 1, 1) != (256, 2048, 1, 1)" in message
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def artifact(checkpoints, tmp_path_factory):
    from mtc.models.export import export_model

    return export_model("bgmv2", variant="mobilenetv2", weights_path=checkpoints["mobilenetv2"],
                        output=tmp_path_factory.mktemp("artifacts") / "bgmv2")


def plate_and_frame(height, width, seed):
    """An empty-scene plate and a frame with a person-sized patch that differs from it."""
    rng = np.random.default_rng(seed)
    plate = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    frame = plate.copy()
    frame[height // 3:height * 4 // 5, width // 3:width * 2 // 3] = rng.integers(
        0, 256, (height * 4 // 5 - height // 3, width * 2 // 3 - width // 3, 3), dtype=np.uint8)
    return plate, frame


def test_export_and_runtime_with_a_background_plate(artifact):
    report = json.loads((artifact / "report.json").read_text())
    assert [p["resolution"] for p in report["parity"]] == ["256x144", "200x116"]
    assert all(p["passed"] for p in report["parity"])

    session = mtc.runtime.load(artifact)
    plate, frame = plate_and_frame(90, 150, seed=0)  # 90 is not a multiple of 4
    session.set_background(plate)

    matte = session.process(frame)

    assert matte.alpha.shape == (90, 150)
    assert matte.foreground.shape == (90, 150, 3)
    assert 0.0 <= matte.alpha.min() and matte.alpha.max() <= 1.0


def test_openvino_gives_the_matte_onnxruntime_gives(artifact, assert_cpu_backends_agree):
    plate, frame = plate_and_frame(90, 150, seed=1)
    _, second = plate_and_frame(90, 150, seed=2)
    second[:45] = plate[:45]  # other content, same empty scene above it

    alphas, foregrounds = assert_cpu_backends_agree(artifact, [frame, second], plate=plate)

    # random weights clip most of alpha to 0, so the foreground carries the comparison
    assert foregrounds.std() > 0.01 and alphas.max() > 0
