"""OpenVINO backend: parity with ONNX Runtime on the real RVM, explicit precision, static
shapes per resolution, compiled-model cache, and Q/DQ (INT8) models."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ov = pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'mtc[openvino]')")

import mtc.runtime  # noqa: E402
from mtc.backends.openvino.session import OpenVinoBackend  # noqa: E402
from mtc.data.builtin_clip import ClipSpec, builtin_clip  # noqa: E402
from mtc.errors import MtcError  # noqa: E402
from mtc.metrics import mad  # noqa: E402

# FP32 on OpenVINO vs FP32 on ONNX Runtime: same math, different kernels and summation order.
# Measured on RVM: max |alpha diff| ~2e-5 over a clip, MAD ~1e-7. Stated tolerances:
ALPHA_MAX_ABS = 1e-4
ALPHA_MAD_X1E3 = 1e-3


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MTC_CACHE", str(tmp_path / "cache"))


def _alphas(session, frames):
    return np.stack([session.process(f).alpha.copy() for f in frames])


@pytest.mark.parametrize("width, height, ratio, frames", [(512, 288, 1.0, 16), (960, 540, 0.25, 6)])
def test_fp32_alpha_matches_onnxruntime_over_a_clip(rvm_artifact, width, height, ratio, frames):
    # 16 frames at 512x288 include the built-in clip's scene cut (state reset mid-clip).
    clip = builtin_clip(ClipSpec(width=width, height=height, frames=frames))
    reference = mtc.runtime.load(rvm_artifact, backend="onnxruntime", downsample_ratio=ratio)
    candidate = mtc.runtime.load(rvm_artifact, backend="openvino", downsample_ratio=ratio)
    a, b = _alphas(reference, clip), _alphas(candidate, clip)
    assert candidate.backend.precision == "fp32"
    assert np.abs(a - b).max() < ALPHA_MAX_ABS
    assert mad(b, a) < ALPHA_MAD_X1E3
    # the state really was carried (and reset at the cut) on both
    assert reference.state_resets == candidate.state_resets
    # one static model served the whole clip, frame 0's 1x1x1x1 states included
    assert len(candidate.backend._compiled) == 1


def test_default_precision_is_fp32_never_silently_bf16(rvm_artifact):
    session = mtc.runtime.load(rvm_artifact, backend="openvino")
    session.process(builtin_clip(ClipSpec(width=64, height=64, frames=1))[0])
    assert session.backend.precision == "fp32"
    assert "precision fp32" in session.backend.describe()


def test_bf16_is_explicit_and_recorded(rvm_artifact):
    core = ov.Core()
    if "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        with pytest.raises(MtcError, match="no BF16 support"):
            mtc.runtime.load(rvm_artifact, backend="openvino", precision="bf16")
        return
    clip = builtin_clip(ClipSpec(width=256, height=144, frames=4))
    fp32 = _alphas(mtc.runtime.load(rvm_artifact, backend="onnxruntime"), clip)
    session = mtc.runtime.load(rvm_artifact, backend="openvino", precision="bf16")
    bf16 = _alphas(session, clip)
    assert session.backend.precision == "bf16"
    assert 0 < mad(bf16, fp32) < 5.0  # bf16 changes numbers (that's why it is opt-in), but not the matte


def test_unknown_precision_is_refused(rvm_artifact):
    with pytest.raises(MtcError, match="unknown precision"):
        mtc.runtime.load(rvm_artifact, backend="openvino", precision="int4")


def test_one_compile_per_resolution_and_ratio(rvm_artifact):
    session = mtc.runtime.load(rvm_artifact, backend="openvino", scene_cut_threshold=None)
    small = builtin_clip(ClipSpec(width=96, height=64, frames=2))
    other = builtin_clip(ClipSpec(width=128, height=64, frames=2))
    for frame in [*small, *other, *small]:
        session.process(frame)
    assert len(session.backend.compile_seconds) == 2
    # the state shapes come from OpenVINO's shape inference and agree with the engines' rule
    from mtc.artifact.profiles import state_shapes

    inferred = [entry.state_shapes for entry in session.backend._compiled.values()]
    assert state_shapes(session.io, 64, 96, 1.0) in inferred and state_shapes(session.io, 64, 128, 1.0) in inferred


def test_compiled_models_are_cached_on_disk(rvm_artifact, tmp_path, monkeypatch):
    import mtc.backends.openvino.session as openvino_session
    from mtc.backends.build import build

    frame = builtin_clip(ClipSpec(width=256, height=144, frames=1))[0]
    reference = mtc.runtime.load(rvm_artifact, backend="openvino", downsample_ratio=1.0).process(frame).alpha.copy()
    for entry in (tmp_path / "cache").rglob("*"):  # start from an empty cache
        if entry.is_file():
            entry.unlink()
    results = build(rvm_artifact, backend="openvino", profiles="256x144@1.0")
    assert "compiled" in results[0]
    cached = sorted(p.relative_to(tmp_path) for p in (tmp_path / "cache" / "openvino").rglob("*") if p.is_file())
    assert any(p.suffix == ".blob" for p in cached), "OpenVINO wrote nothing to CACHE_DIR"
    assert any(p.suffix == ".xml" for p in cached), "the rewritten graphs were not cached"

    # A built artifact loads without running any graph pass, and compiles nothing new.
    def no_passes(*args, **kwargs):
        raise AssertionError("a graph pass ran on a built artifact")

    monkeypatch.setattr(openvino_session, "run_passes", no_passes)
    session = mtc.runtime.load(rvm_artifact, backend="openvino", downsample_ratio=1.0)
    np.testing.assert_array_equal(session.process(frame).alpha, reference)
    after = sorted(p.relative_to(tmp_path) for p in (tmp_path / "cache" / "openvino").rglob("*") if p.is_file())
    assert after == cached


def test_a_damaged_graph_cache_entry_is_rebuilt(rvm_artifact, tmp_path, caplog):
    frame = builtin_clip(ClipSpec(width=192, height=128, frames=1))[0]
    first = mtc.runtime.load(rvm_artifact, backend="openvino", downsample_ratio=0.5).process(frame).alpha.copy()
    for xml in (tmp_path / "cache" / "openvino" / "graphs").rglob("*.xml"):
        xml.write_text("<not a graph")
    with caplog.at_level(logging.WARNING, logger="mtc"):
        again = mtc.runtime.load(rvm_artifact, backend="openvino", downsample_ratio=0.5).process(frame).alpha
    assert "graph cache entry" in caplog.text and "rebuilding it" in caplog.text
    np.testing.assert_array_equal(again, first)


def _qdq_model(path, *, weight_limit=127):
    """x -> Q/DQ -> Conv(DQ(int8 weights)) -> Q/DQ -> y: the shape of an mtc INT8 artifact."""
    rng = np.random.default_rng(0)
    weight = rng.integers(-weight_limit, weight_limit + 1, (4, 3, 3, 3), dtype=np.int8)
    w_scale = (rng.random(4, dtype=np.float32) * 0.01 + 0.001).astype(np.float32)
    inits = [
        numpy_helper.from_array(weight, "w_q"),
        numpy_helper.from_array(w_scale, "w_scale"),
        numpy_helper.from_array(np.zeros(4, np.int8), "w_zero"),
        numpy_helper.from_array(np.array(1 / 127, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "x_zero"),
        numpy_helper.from_array(np.array(0.05, np.float32), "y_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "y_zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w_dq"], axis=0),
        helper.make_node("Conv", ["x_dq", "w_dq"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["conv", "y_scale", "y_zero"], ["y_q"]),
        helper.make_node("DequantizeLinear", ["y_q", "y_scale", "y_zero"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, "h", "w"])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_qdq_int8_model_loads_and_matches_onnxruntime(tmp_path):
    from mtc.backends import OrtBackend
    from mtc.backends.cpu import cpu_class, int8_saturates

    # Without VNNI both backends' integer kernels saturate int16 pair sums on full-range weights
    # (measured: 61-65% of outputs exact), so there they are compared on 7-bit weights, which
    # they compute exactly; the full range is covered on VNNI and AMX machines.
    path = _qdq_model(tmp_path / "qdq.onnx", weight_limit=63 if int8_saturates(cpu_class()) else 127)
    x = np.random.default_rng(1).uniform(-1, 1, (1, 3, 16, 24)).astype(np.float32)
    backend = OpenVinoBackend(path)
    y = backend.run({"x": x})["y"]
    expected = OrtBackend(path).run({"x": x})["y"]
    assert y.shape == (1, 4, 16, 24)
    # both quantize the output to steps of 0.05; kernels may round a rare value one step apart
    assert np.mean(np.abs(y - expected) < 1e-6) > 0.99 and np.abs(y - expected).max() <= 0.05 + 1e-6
    assert backend.precision == "fp32"


def test_the_first_compile_is_logged_at_info_unless_the_backend_is_told_not_to(tmp_path, caplog):
    path = _qdq_model(tmp_path / "qdq.onnx")
    x = np.zeros((1, 3, 16, 24), np.float32)
    for log_compiles, level in ((True, logging.INFO), (False, logging.DEBUG)):
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="mtc"):
            OpenVinoBackend(path, cache=False, log_compiles=log_compiles).run({"x": x})
        compiled = [r for r in caplog.records if "openvino: compiled for" in r.getMessage()]
        assert [r.levelno for r in compiled] == [level]


def test_unreadable_model_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(MtcError, match="openvino cannot read"):
        OpenVinoBackend(bad)


def test_rvm_fgr_and_pha_come_from_one_merged_output_bit_identical(rvm_artifact, monkeypatch):
    # OpenVINO returns RVM's Split/Clip ending as one 4-channel tensor that the backend slices
    # (mtc.passes.openvino.split_outputs); the values must be exactly those of the unmerged graph.
    import mtc.passes.openvino as openvino_passes

    io = mtc.runtime.load(rvm_artifact, backend="onnxruntime").io
    feeds = io.example_feeds(128, 192, downsample_ratio=0.5)
    feeds["src"] = np.stack([builtin_clip(ClipSpec(width=192, height=128, frames=1))[0].transpose(2, 0, 1)]) / 255
    merged = OpenVinoBackend(rvm_artifact / "model.onnx", io=io, cache=False)
    assert [m.parts for m in merged._merged.values()] == [(("fgr", 0, 3), ("pha", 3, 4))]
    assert merged.output_names[:2] == ("fgr", "pha")
    got = {k: v.copy() for k, v in merged.run(dict(feeds)).items()}
    monkeypatch.setattr(openvino_passes, "merge_split_outputs", lambda model: (model, ()))
    plain = OpenVinoBackend(rvm_artifact / "model.onnx", io=io, cache=False)
    assert not plain._merged
    expected = plain.run(dict(feeds))
    assert got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])


def test_past_the_static_budget_new_sizes_share_one_dynamic_model_and_the_cache_stops_growing(tmp_path):
    from tiny_artifacts import frames, write_tiny_artifact

    from mtc.backends.openvino import MAX_STATIC_SHAPES

    artifact = write_tiny_artifact(tmp_path / "tiny")  # its input size follows the frame, as photos vary
    session = mtc.runtime.load(artifact, backend="openvino")
    reference = mtc.runtime.load(artifact, backend="onnxruntime")
    sizes = [(32 + 8 * i, 48 + 8 * i) for i in range(MAX_STATIC_SHAPES + 5)]

    def cached():
        return sorted(p for p in (tmp_path / "cache").rglob("*") if p.is_file())

    for index, (height, width) in enumerate(sizes):
        frame = frames(1, height, width, seed=index)[0]
        np.testing.assert_allclose(session.process(frame).alpha, reference.process(frame).alpha, rtol=0,
                                   atol=ALPHA_MAX_ABS)
        if index == MAX_STATIC_SHAPES:
            after_dynamic = cached()
    assert len(session.backend.compile_seconds) == MAX_STATIC_SHAPES + 1
    assert cached() == after_dynamic  # four more sizes, no new compile and nothing more on disk
    # a size seen before the budget ran out keeps its static model
    session.process(frames(1, *sizes[0])[0])
    assert len(session.backend.compile_seconds) == MAX_STATIC_SHAPES + 1
