"""RVM re-implementation: official key layout, checkpoint loading, export parity, and fidelity to
the official ONNX on real weights (transplanted), plus the TensorRT-friendly fixed-ratio graph."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from mtc.backends import OrtBackend  # noqa: E402
from mtc.data.builtin_clip import ClipSpec, builtin_clip  # noqa: E402
from mtc.errors import MtcError  # noqa: E402
from mtc.export.onnx_ingest import sanitize  # noqa: E402
from mtc.export.torch_export import save_random_checkpoint  # noqa: E402
from mtc.models.export import ParityCase, check_export_parity, export_model, io_from_graph  # noqa: E402
from mtc.models.registry import get_model  # noqa: E402
from mtc.models.rvm import (  # noqa: E402
    INPUT_NAMES,
    OUTPUT_NAMES,
    PARITY_TOLERANCE,
    RVM_IO,
    alpha_only_tail,
    fixed_ratio_io,
    fuse_refiner_tail,
    with_fixed_ratio,
)
from mtc.models.rvm.net import build_rvm, export_rvm_onnx, fold_batchnorm, load_rvm, rvm_reference  # noqa: E402
from mtc.models.rvm.official_onnx import module_from_official_onnx, state_dict_from_official_onnx  # noqa: E402
from mtc.models.rvm.onnx_graph import bake_downsample_ratio, data_dependent_resize_inputs  # noqa: E402

# Keys of the official checkpoints (model/*.py in PeterL1n/RobustVideoMatting, torchvision
# naming for the backbones), with shapes where they pin the architecture down.
OFFICIAL_KEYS = {
    "mobilenetv3": {
        "backbone.features.0.0.weight": (16, 3, 3, 3),
        "backbone.features.0.1.running_var": (16,),
        "backbone.features.1.block.0.0.weight": (16, 1, 3, 3),
        "backbone.features.1.block.1.1.num_batches_tracked": (),
        "backbone.features.4.block.2.fc1.weight": (24, 72, 1, 1),
        "backbone.features.13.block.1.0.weight": (672, 1, 5, 5),
        "backbone.features.14.block.1.0.weight": (960, 1, 5, 5),
        "backbone.features.15.block.3.1.bias": (160,),
        "backbone.features.16.0.weight": (960, 160, 1, 1),
        "aspp.aspp1.0.weight": (128, 960, 1, 1),
        "aspp.aspp2.1.weight": (128, 960, 1, 1),
        "decoder.decode4.gru.ih.0.weight": (128, 128, 3, 3),
        "decoder.decode3.conv.0.weight": (80, 171, 3, 3),
        "decoder.decode1.gru.hh.0.bias": (16,),
        "decoder.decode0.conv.4.running_mean": (16,),
        "project_mat.conv.weight": (4, 16, 1, 1),
        "project_seg.conv.bias": (1,),
        "refiner.box_filter.weight": (4, 1, 3, 3),
        "refiner.conv.1.running_var": (16,),
        "refiner.conv.6.bias": (4,),
    },
    "resnet50": {
        "backbone.conv1.weight": (64, 3, 7, 7),
        "backbone.bn1.running_mean": (64,),
        "backbone.layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "backbone.layer2.0.conv2.weight": (128, 128, 3, 3),
        "backbone.layer3.5.bn2.num_batches_tracked": (),
        "backbone.layer4.0.downsample.1.weight": (2048,),
        "backbone.layer4.2.conv3.weight": (2048, 512, 1, 1),
        "aspp.aspp1.0.weight": (256, 2048, 1, 1),
        "decoder.decode4.gru.ih.0.weight": (256, 256, 3, 3),
        "decoder.decode3.conv.0.weight": (128, 771, 3, 3),
        "decoder.decode2.gru.ih.0.bias": (64,),
        "decoder.decode0.conv.3.weight": (16, 16, 3, 3),
        "refiner.conv.0.weight": (16, 24, 1, 1),
    },
}
# Total keys: torchvision's resnet50 without fc has 318; MobileNetV3-Large features 308; the
# RVM head (aspp 7, decoder 46, projections 4, refiner 15) adds 72.
OFFICIAL_KEY_COUNTS = {"mobilenetv3": 380, "resnet50": 390}
STATE_CHANNELS = {"mobilenetv3": (16, 20, 40, 64), "resnet50": (16, 32, 64, 128)}


def _ort(model) -> OrtBackend:
    # No spinning: these sessions alternate with PyTorch on two cores.
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return OrtBackend(source, allow_spinning=False)


def _zeros_state():
    return [torch.zeros(1, 1, 1, 1) for _ in range(4)]


@pytest.fixture(scope="module")
def mbv3_checkpoint(tmp_path_factory):
    return save_random_checkpoint(build_rvm("mobilenetv3"), tmp_path_factory.mktemp("ckpt") / "rvm_mobilenetv3.pth")


@pytest.mark.parametrize("backbone", ["mobilenetv3", "resnet50"])
def test_state_dict_keys_match_the_official_layout(backbone):
    state = build_rvm(backbone).state_dict()
    assert len(state) == OFFICIAL_KEY_COUNTS[backbone]
    for key, shape in OFFICIAL_KEYS[backbone].items():
        assert key in state, key
        assert tuple(state[key].shape) == shape, key
    # Backbone keys are exactly torchvision's (no extra buffers such as the normalisation).
    assert not any(k.startswith("backbone.") and k.split(".")[-1] in ("mean", "std") for k in state)


@pytest.mark.parametrize("backbone", ["mobilenetv3", "resnet50"])
def test_arbitrary_sizes_and_first_frame_states(backbone):
    """Any H x W (not multiples of 16/32), 1x1x1x1 zero states expanded; the states come back
    at 1/2..1/16 of the network's resolution, rounded up like the encoder."""
    model = build_rvm(backbone)
    with torch.inference_mode():
        fgr, pha, *states = model(torch.rand(1, 3, 58, 90), *_zeros_state(), torch.tensor([0.5]))
    assert fgr.shape == (1, 3, 58, 90) and pha.shape == (1, 1, 58, 90)
    assert [tuple(s.shape) for s in states] == [(1, c, h, w) for c, (h, w) in
                                                 zip(STATE_CHANNELS[backbone], [(15, 23), (8, 12), (4, 6), (2, 3)])]
    assert float(pha.min()) >= 0 and float(pha.max()) <= 1


def test_fold_batchnorm_computes_the_same_function(mbv3_checkpoint):
    model = load_rvm(mbv3_checkpoint, "mobilenetv3")
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(1, 3, 72, 96)
    with torch.inference_mode():
        for a, b in zip(model(x, *_zeros_state(), torch.tensor([0.5])), folded(x, *_zeros_state(), torch.tensor([0.5]))):
            assert torch.allclose(a, b, atol=1e-4)


def test_random_checkpoint_loads_exports_and_matches_onnxruntime(mbv3_checkpoint):
    model = load_rvm(mbv3_checkpoint, "mobilenetv3")
    exported, _ = sanitize(export_rvm_onnx(model))
    dims = {v.name: [d.dim_param for d in v.type.tensor_type.shape.dim] for v in exported.graph.input}
    assert dims["src"][0] and dims["src"][2] and dims["src"][3]  # dynamic batch, height, width
    everything = [d for names in dims.values() for d in names if d]
    assert len(everything) == len(set(everything))  # every state has its own dim names
    io = io_from_graph(RVM_IO, exported)
    # 250x170 is no multiple of 16 or 32: RVM pads nothing, it rounds sizes up and crops.
    cases = (ParityCase(128, 96, 3, 1.0), ParityCase(250, 170, 3, 0.5))
    results = check_export_parity(io, rvm_reference(model), _ort(exported), cases, tolerance=PARITY_TOLERANCE)
    assert [r.frames for r in results] == [3, 3]


def test_resnet50_checkpoint_exports_and_matches_onnxruntime(tmp_path):
    path = save_random_checkpoint(build_rvm("resnet50"), tmp_path / "rvm_resnet50.pth", seed=1)
    model = load_rvm(path, "resnet50")
    exported, _ = sanitize(export_rvm_onnx(model, example_size=(64, 64)))
    check_export_parity(io_from_graph(RVM_IO, exported), rvm_reference(model), _ort(exported),
                        (ParityCase(90, 58, 2, 0.5),), tolerance=PARITY_TOLERANCE)


def test_mismatched_checkpoint_is_refused_with_the_keys(mbv3_checkpoint, tmp_path):
    with pytest.raises(MtcError) as info:
        load_rvm(mbv3_checkpoint, "resnet50")
    message = info.value.message
    assert "missing" in message and "backbone.conv1.weight" in message
    assert "unexpected" in message and "backbone.features.0.0.weight" in message
    state = torch.load(mbv3_checkpoint, weights_only=True)
    state["decoder.decode0.conv.0.weight"] = torch.zeros(16, 34, 3, 3)
    torch.save(state, tmp_path / "wrong.pth")
    with pytest.raises(MtcError, match=r"wrong shape: decoder\.decode0\.conv\.0\.weight \(16, 34, 3, 3\)"):
        load_rvm(tmp_path / "wrong.pth", "mobilenetv3")


def _run_clip(run, frames, ratio):
    """Feed frames with recurrent state through `run(feeds) -> outputs`; return the outputs per frame."""
    state = [np.zeros((1, 1, 1, 1), np.float32)] * 4
    results = []
    for frame in frames:
        feeds = {"src": frame.transpose(2, 0, 1)[None].astype(np.float32) / 255.0,
                 **{f"r{i + 1}i": s for i, s in enumerate(state)}}
        if ratio is not None:
            feeds["downsample_ratio"] = np.array([ratio], np.float32)
        outputs = run(feeds)
        state = [outputs[f"r{i + 1}o"] for i in range(4)]
        results.append(outputs)
    return results


def _max_diff(a, b, name):
    return max(float(np.abs(x[name] - y[name]).max()) for x, y in zip(a, b))


def test_transplanted_official_weights_match_the_official_onnx(rvm_onnx):
    """The proof of fidelity: the official weights in our module and in our exported graph give
    the official ONNX's output over a clip, recurrent state and refiner included."""
    module = module_from_official_onnx(rvm_onnx)
    ours_onnx, _ = sanitize(export_rvm_onnx(module))
    official = _ort(rvm_onnx)
    ours = _ort(ours_onnx)
    torch_ref = rvm_reference(module)
    report = {}
    # 250x170 at 0.5: odd sizes at every stride (RVM rounds up and crops, like the official graph).
    for width, height, count, ratio in ((512, 288, 8, 1.0), (640, 360, 4, 0.25), (250, 170, 2, 0.5)):
        frames = builtin_clip(ClipSpec(width=width, height=height, frames=count))
        expected = _run_clip(official.run, frames, ratio)
        for label, backend in (("torch", torch_ref), ("onnx", ours)):
            got = _run_clip(backend.run, frames, ratio)
            for name in ("pha", "fgr"):
                report[f"{label} {name} {width}x{height}@{ratio}"] = _max_diff(expected, got, name)
    print(report)
    assert max(v for k, v in report.items() if " pha " in k) <= 1e-4, report
    assert max(report.values()) <= 1e-4, report


def test_fixed_ratio_graph_is_tensorrt_friendly(mbv3_checkpoint):
    """Baked ratio: no Resize geometry computed from a graph input's values (the float ratio is
    what TensorRT rejects), and the same numbers as the float-ratio graph at that ratio."""
    dynamic = sanitize(export_rvm_onnx(load_rvm(mbv3_checkpoint, "mobilenetv3")))[0]
    fixed_model = load_rvm(mbv3_checkpoint, "mobilenetv3", fixed_ratio=0.25)
    fixed = sanitize(export_rvm_onnx(fixed_model))[0]

    assert [i.name for i in fixed.graph.input] == list(INPUT_NAMES[:-1])
    assert data_dependent_resize_inputs(fixed) == []
    assert sum(n.op_type == "Resize" for n in fixed.graph.node) == 7  # the check saw every Resize
    # The official-compatible graph is flagged exactly where expected: the ratio input.
    problems = data_dependent_resize_inputs(dynamic)
    assert len(problems) == 1 and "downsample_ratio" in problems[0] and "scales" in problems[0]

    frames = builtin_clip(ClipSpec(width=200, height=120, frames=3))
    a = _run_clip(_ort(dynamic).run, frames, 0.25)
    b = _run_clip(_ort(fixed).run, frames, None)
    assert _max_diff(a, b, "pha") <= 1e-5 and _max_diff(a, b, "fgr") <= 1e-5
    check_export_parity(io_from_graph(fixed_ratio_io(0.5), fixed), rvm_reference(fixed_model),
                        _ort(fixed), (ParityCase(200, 120, 2),), tolerance=1e-4)


def test_baking_the_ratio_into_the_official_onnx(rvm_onnx):
    official = onnx.load(str(rvm_onnx))
    baked = sanitize(bake_downsample_ratio(official, 0.5))[0]
    assert data_dependent_resize_inputs(baked) == []
    frames = builtin_clip(ClipSpec(width=160, height=96, frames=2))
    a = _run_clip(_ort(rvm_onnx).run, frames, 0.5)
    b = _run_clip(_ort(baked).run, frames, None)
    assert _max_diff(a, b, "pha") <= 1e-6
    variant = with_fixed_ratio(get_model("rvm").variant("mobilenetv3"), 0.5)
    assert variant.name == "mobilenetv3-r0.5" and variant.io == fixed_ratio_io(0.5)


def test_registry_variants():
    spec = get_model("rvm")
    assert spec.default_variant == "mobilenetv3"
    for name, filename in (("mobilenetv3-pth", "rvm_mobilenetv3.pth"), ("resnet50-pth", "rvm_resnet50.pth")):
        variant = spec.variant(name)
        assert variant.weights.filename == filename
        assert variant.weights.sources[0].url.endswith(f"/releases/download/v1.0.0/{filename}")
        assert variant.build_reference is not None and variant.io is RVM_IO
    assert OUTPUT_NAMES == ("fgr", "pha", "r1o", "r2o", "r3o", "r4o")
    fixed = with_fixed_ratio(spec.variant("mobilenetv3-pth"), 0.25)
    assert fixed.name == "mobilenetv3-pth-r0.25" and fixed.io == fixed_ratio_io(0.25) and fixed.build_reference
    with pytest.raises(MtcError, match="downsample ratio"):
        with_fixed_ratio(spec.variant("mobilenetv3-pth"), 1.5)


def test_export_pipeline_end_to_end_on_real_weights(rvm_onnx, tmp_path):
    """`mtc export rvm --variant mobilenetv3-pth --weights FILE`: the official weights, written in
    the official checkpoint layout, go through the whole pipeline (strict load, export,
    PyTorch-vs-ONNX-Runtime parity) and the artifact mattes like the official ONNX."""
    import mtc.runtime
    from mtc.artifact.manifest import sha256_file
    from mtc.runtime.session import MattingSession

    checkpoint = tmp_path / "rvm_mobilenetv3.pth"
    torch.save(state_dict_from_official_onnx(rvm_onnx), checkpoint)
    # PARITY_TOLERANCE: PyTorch and ONNX Runtime round differently (see mtc.models.rvm).
    folder = export_model("rvm", variant="mobilenetv3-pth", weights_path=checkpoint, output=tmp_path / "rvm",
                          tolerance=PARITY_TOLERANCE)
    session = mtc.runtime.load(folder, scene_cut_threshold=None, allow_spinning=False)
    assert session.manifest.variant == "mobilenetv3-pth"
    assert session.manifest.provenance["source_sha256"] == sha256_file(checkpoint)
    official = MattingSession(RVM_IO, _ort(rvm_onnx), scene_cut_threshold=None)
    for frame in builtin_clip(ClipSpec(width=160, height=96, frames=3)):
        matte, expected = session.process(frame), official.process(frame)
        assert matte.alpha.shape == (96, 160) and matte.foreground.shape == (96, 160, 3)
        assert float(np.abs(matte.alpha - expected.alpha).max()) <= 1e-4


def test_refiner_tail_fold_removes_the_full_resolution_residual_add_and_keeps_the_values(rvm_onnx):
    import onnxruntime as ort

    original, _ = sanitize(onnx.load(str(rvm_onnx)))
    folded, applied = fuse_refiner_tail(original)
    assert applied
    producers = {o: n for n in folded.graph.node for o in n.output}
    fgr_clip = producers["fgr"]
    assert producers[fgr_clip.input[0]].op_type == "Split"  # no full-resolution "+ src" any more
    assert len(folded.graph.node) == len(original.graph.node)  # one Add moved to low resolution
    rng = np.random.default_rng(0)
    sessions = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]) for m in (original, folded)]
    for height, width, ratio in ((288, 512, 1.0), (361, 641, 0.25)):
        feeds = {"src": rng.random((1, 3, height, width), dtype=np.float32),
                 "downsample_ratio": np.array([ratio], np.float32),
                 **{f"r{i}i": np.zeros((1, 1, 1, 1), np.float32) for i in range(1, 5)}}
        expected, got = (s.run(None, feeds) for s in sessions)
        for a, b in zip(expected, got):
            np.testing.assert_allclose(b, a, atol=1e-6)
    # A graph without that tail is returned as is.
    untouched, applied = fuse_refiner_tail(folded)
    assert not applied and untouched is folded


def test_rvm_export_reports_its_rewrites(rvm_artifact):
    report = json.loads((rvm_artifact / "report.json").read_text())
    assert report["rewrites"] == ["fuse_refiner_tail"]


def test_alpha_only_tail_drops_fgr_upsamples_two_channels_and_keeps_alpha_bit_identical(rvm_onnx):
    import onnxruntime as ort

    original, _ = sanitize(onnx.load(str(rvm_onnx)))
    alpha, applied = alpha_only_tail(original)
    assert applied
    onnx.checker.check_model(alpha)
    assert [o.name for o in alpha.graph.output] == ["pha", "r1o", "r2o", "r3o", "r4o"]
    # No four-channel tensor at full resolution any more: the guide's Concat and the Split are gone,
    # and A's and b's alpha channels go up in one 2-channel Resize.
    producers = {o: n for n in alpha.graph.node for o in n.output}
    assert producers[producers["pha"].input[0]].op_type == "ReduceSum"
    assert not any(n.op_type in ("Concat", "Split") and ("src" in n.input or "fgr" in n.output) for n in alpha.graph.node)
    full_resolution = [n for n in alpha.graph.node if n.op_type == "Resize" and len(n.input) > 3 and n.input[3]]
    assert len(full_resolution) == 1 and producers[full_resolution[0].input[0]].op_type == "Concat"
    rng = np.random.default_rng(0)
    sessions = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]) for m in (original, alpha)]
    for height, width, ratio in ((288, 512, 1.0), (361, 641, 0.25)):
        feeds = {"src": rng.random((1, 3, height, width), dtype=np.float32),
                 "downsample_ratio": np.array([ratio], np.float32),
                 **{f"r{i}i": np.zeros((1, 1, 1, 1), np.float32) for i in range(1, 5)}}
        expected = dict(zip([o.name for o in sessions[0].get_outputs()], sessions[0].run(None, feeds)))
        got = dict(zip([o.name for o in sessions[1].get_outputs()], sessions[1].run(None, feeds)))
        assert got["pha"].shape == (1, 1, height, width)
        for name, value in got.items():
            np.testing.assert_array_equal(value, expected[name])
    untouched, applied = alpha_only_tail(alpha)
    assert not applied and untouched is alpha


def test_alpha_only_export_writes_an_artifact_without_foreground(rvm_alpha_artifact):
    import mtc.runtime
    from mtc.artifact.manifest import read_manifest

    folder = rvm_alpha_artifact
    manifest = read_manifest(folder)
    assert manifest.variant == "mobilenetv3-alpha"
    assert manifest.io.output_with_role("foreground") is None
    assert json.loads((folder / "report.json").read_text())["rewrites"] == ["alpha_only_tail"]
    frame = builtin_clip(ClipSpec(width=160, height=96, frames=1))[0]
    matte = mtc.runtime.load(folder, scene_cut_threshold=None).process(frame)
    assert matte.alpha.shape == (96, 160)
    visible = (matte.alpha_u8() > 0)[..., None]
    np.testing.assert_array_equal(matte.rgba()[..., :3], frame * visible)  # the source is the foreground


def test_alpha_only_export_fails_cleanly_when_the_rewrite_does_not_match(rvm_onnx, tmp_path, monkeypatch):
    import dataclasses

    spec = get_model("rvm")
    variant = spec.variants["mobilenetv3"]
    unmatched = dataclasses.replace(variant, alpha_only_rewrites=(lambda model: (model, False),))
    monkeypatch.setitem(spec.variants, "mobilenetv3", unmatched)
    with pytest.raises(MtcError, match=r"outputs its I/O contract does not declare: \['fgr'\]") as err:
        export_model("rvm", output=tmp_path / "alpha", weights_path=rvm_onnx, alpha_only=True)
    assert "--alpha-only" in err.value.hint
    assert not (tmp_path / "alpha").exists()


def test_alpha_only_is_refused_where_it_means_nothing():
    from mtc.models.registry import get_model

    with pytest.raises(MtcError, match="alpha-only already"):
        get_model("modnet").variant(None).alpha_only()
    with pytest.raises(MtcError, match="no alpha-only form"):
        get_model("bgmv2").variant(None).alpha_only()
