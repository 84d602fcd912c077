"""The session holds a model to its declared roles and controls: a probe frame at load, a check of
the first frame at every model input size, and the downsample ratio's declared range (API and CLI)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image
from tiny_artifacts import edit_manifest, frames, write_tiny_artifact

import mtc.runtime
from mtc.artifact.manifest import Preprocess, file_entry
from mtc.backends.onnxruntime.session import OrtBackend
from mtc.errors import MtcError
from mtc.runtime.session import MattingSession

BAD_RATIOS = [0, 0.001, math.nan, 5.0, -0.25, math.inf]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MTC_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _files(folder):
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# ---- the downsample ratio's range ------------------------------------------------------------


@pytest.mark.parametrize("ratio", BAD_RATIOS)
def test_load_refuses_a_ratio_outside_the_declared_range_before_any_backend_work(tmp_path, private_cache, ratio):
    artifact = write_tiny_artifact(tmp_path / "tiny", with_ratio=True)
    with pytest.raises(MtcError, match=r"downsample ratio .* is outside this model's valid range \[0.0625, 1\]") as err:
        mtc.runtime.load(artifact, backend="onnxruntime", downsample_ratio=ratio)
    assert "\n" not in str(err.value) and "0.0625 and 1" in err.value.hint
    assert _files(private_cache) == []  # refused before anything was built or cached


@pytest.mark.parametrize("ratio", BAD_RATIOS)
def test_the_session_refuses_a_ratio_outside_the_declared_range(tmp_path, ratio):
    artifact = write_tiny_artifact(tmp_path / "tiny", with_ratio=True)
    manifest = mtc.runtime.read_manifest(artifact)
    backend = OrtBackend(artifact / "model.onnx")
    with pytest.raises(MtcError, match="outside this model's valid range"):
        MattingSession(manifest.io, backend, downsample_ratio=ratio)


def test_a_declared_range_is_what_the_check_uses(tmp_path):
    artifact = write_tiny_artifact(tmp_path / "tiny", with_ratio=True)
    edit_manifest(artifact, lambda d: d["io"]["downsample"].update(valid_range=[0.25, 0.5]))
    assert mtc.runtime.load(artifact, backend="onnxruntime", downsample_ratio=0.5).downsample_ratio == 0.5
    with pytest.raises(MtcError, match=r"valid range \[0.25, 0.5\]"):
        mtc.runtime.load(artifact, backend="onnxruntime", downsample_ratio=1.0)
    # the automatic rule stays inside it too: 512 / 64 would give 1.0
    session = mtc.runtime.load(artifact, backend="onnxruntime")
    assert session.ratio_for(64, 64) == 0.5 and session.ratio_for(4096, 4096) == 0.25


def _mtc(*args):
    return subprocess.run([sys.executable, "-m", "mtc", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ}, timeout=300)


@pytest.mark.parametrize("command", ["run", "bench"])
@pytest.mark.parametrize("ratio", ["0", "0.001", "nan", "5.0"])
def test_the_cli_refuses_a_ratio_outside_the_range_with_one_line(tmp_path, command, ratio):
    artifact = write_tiny_artifact(tmp_path / "tiny", with_ratio=True)
    before = _files(artifact)
    if command == "run":
        image = tmp_path / "in.png"
        Image.fromarray(frames(1)[0]).save(image)
        result = _mtc("run", artifact, image, "-o", tmp_path / "out.png", "--backend", "onnxruntime", "--ratio", ratio)
        assert not (tmp_path / "out.png").exists()
    else:
        result = _mtc("bench", artifact, "-r", "64x48", "--backend", "onnxruntime", "--ratio", ratio,
                      "--json", tmp_path / "bench.json")
        assert not (tmp_path / "bench.json").exists()
    assert result.returncode != 0 and "Traceback" not in result.stderr
    # the flag's own check (exit 2) or the model's declared range (exit 1): one line either way
    assert "ratio" in result.stderr and "range" in result.stderr
    assert len([line for line in result.stderr.splitlines() if "rror" in line]) == 1
    assert _files(artifact) == before


# ---- outputs against their roles --------------------------------------------------------------


def test_load_probes_one_frame_and_refuses_an_alpha_outside_its_range(tmp_path):
    artifact = write_tiny_artifact(tmp_path / "tiny", alpha_op="Identity")  # raw conv output: not in [0, 1]
    with pytest.raises(MtcError, match=r"alpha output 'alpha' spans .* outside its declared range \[0, 1\]"):
        mtc.runtime.load(artifact, backend="onnxruntime")


def test_the_probe_leaves_no_trace_in_the_session(tmp_path):
    artifact = write_tiny_artifact(tmp_path / "tiny", preprocess=Preprocess(multiple_of=8))
    probed = mtc.runtime.load(artifact, backend="onnxruntime")
    assert probed.frames_processed == 0
    fresh = MattingSession(probed.io, OrtBackend(artifact / "model.onnx"))
    for frame in frames(3, 40, 56):
        np.testing.assert_array_equal(probed.process(frame).alpha, fresh.process(frame).alpha)
    assert probed.frames_processed == 3 and probed.state_resets == fresh.state_resets


def _half_resolution_alpha(folder):
    """A model whose alpha comes out at half the input size, declared as a full-size alpha."""
    img = helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 3, "h", "w"])
    alpha = helper.make_tensor_value_info("alpha", TensorProto.FLOAT, [1, 1, "h2", "w2"])
    nodes = [helper.make_node("AveragePool", ["img"], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("ReduceMean", ["pooled"], ["alpha"], axes=[1], keepdims=1)]
    model = helper.make_model(helper.make_graph(nodes, "half", [img], [alpha]),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(folder / "model.onnx"))
    entry = file_entry(folder / "model.onnx")
    edit_manifest(folder, lambda d: d["files"].update({"model.onnx": {"sha256": entry.sha256, "size": entry.size,
                                                                      "role": "model"}}))


def test_an_alpha_of_the_wrong_shape_is_refused(tmp_path):
    artifact = write_tiny_artifact(tmp_path / "tiny")
    _half_resolution_alpha(artifact)
    with pytest.raises(MtcError, match=r"alpha output 'alpha' has shape \(1, 1, 8, 8\), not 1x1x16x16"):
        mtc.runtime.load(artifact, backend="onnxruntime")


def test_openvino_checks_the_first_frame_at_each_size_and_mtc_run_writes_nothing(tmp_path):
    pytest.importorskip("openvino")
    artifact = write_tiny_artifact(tmp_path / "tiny", alpha_op="Identity")
    session = mtc.runtime.load(artifact, backend="openvino")  # compiles per shape: no probe at load
    assert session.backend.compile_seconds == []
    with pytest.raises(MtcError, match="outside its declared range"):
        session.process(frames(1)[0])
    image = tmp_path / "in.png"
    Image.fromarray(frames(1)[0]).save(image)
    result = _mtc("run", artifact, image, "-o", tmp_path / "out.png", "--backend", "openvino")
    assert result.returncode == 1 and "outside its declared range" in result.stderr
    assert not (tmp_path / "out.png").exists() and not list(tmp_path.glob(".out*"))


def test_a_fixed_size_model_is_probed_at_its_one_size_on_openvino(tmp_path):
    pytest.importorskip("openvino")
    artifact = write_tiny_artifact(tmp_path / "tiny", preprocess=Preprocess(resize="fixed", fixed_size=(32, 32)))
    session = mtc.runtime.load(artifact, backend="openvino")
    assert len(session.backend.compile_seconds) == 1  # the probe compiled what every frame runs
    session.process(frames(1, 48, 64)[0])
    assert len(session.backend.compile_seconds) == 1


def test_a_large_fixed_size_model_is_checked_on_its_first_frame_instead_of_a_probe(tmp_path):
    artifact = write_tiny_artifact(tmp_path / "tiny", alpha_op="Identity",
                                   preprocess=Preprocess(resize="fixed", fixed_size=(1024, 1024)))
    session = mtc.runtime.load(artifact, backend="onnxruntime")  # a probe would cost a full-size inference
    with pytest.raises(MtcError, match="outside its declared range"):
        session.process(frames(1)[0])
