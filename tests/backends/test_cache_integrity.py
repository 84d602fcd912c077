"""Every engine-cache entry is checked against the sha256 recorded when it was written: a damaged
or unsealed OpenVINO blob, OpenVINO graph or ONNX Runtime optimized model is rebuilt with a
warning and never run (TensorRT plans: tests/backends/test_tensorrt.py)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from tiny_artifacts import flip_middle_bytes, frames, write_tiny_artifact

import mtc.runtime
from mtc.artifact.cache import SEAL_SUFFIX, check_entry


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MTC_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def artifact(tmp_path):
    return write_tiny_artifact(tmp_path / "tiny")


def _alpha(artifact, backend):
    return mtc.runtime.load(artifact, backend=backend).process(frames(1)[0]).alpha.copy()


def _seals(cache):
    return sorted(cache.rglob(f"*{SEAL_SUFFIX}"))


def test_a_damaged_openvino_blob_is_recompiled_with_a_warning(artifact, private_cache, caplog):
    pytest.importorskip("openvino")
    fresh = _alpha(artifact, "openvino")
    (blob,) = private_cache.rglob("*.blob")
    flip_middle_bytes(blob)
    with caplog.at_level(logging.WARNING, logger="mtc"):
        again = _alpha(artifact, "openvino")
    assert "compiled-model cache" in caplog.text and "does not match the sha256" in caplog.text
    np.testing.assert_array_equal(again, fresh)
    (blob,) = private_cache.rglob("*.blob")  # rebuilt and sealed again: the next load trusts it
    assert check_entry(blob.parent / f"compiled{SEAL_SUFFIX}") is None


def test_an_unsealed_openvino_blob_is_never_used(artifact, private_cache, caplog):
    pytest.importorskip("openvino")
    fresh = _alpha(artifact, "openvino")
    (blob,) = private_cache.rglob("*.blob")
    (blob.parent / f"compiled{SEAL_SUFFIX}").unlink()  # as an interrupted run or an older mtc leaves it
    flip_middle_bytes(blob)
    with caplog.at_level(logging.WARNING, logger="mtc"):
        again = _alpha(artifact, "openvino")
    assert "has no seal" in caplog.text
    np.testing.assert_array_equal(again, fresh)


def test_a_damaged_openvino_graph_is_rebuilt_with_a_warning(artifact, private_cache, caplog):
    pytest.importorskip("openvino")
    fresh = _alpha(artifact, "openvino")
    weights = sorted(private_cache.rglob("*.bin"))
    assert weights, "the rewritten graphs were not cached"
    for path in weights:
        flip_middle_bytes(path)
    with caplog.at_level(logging.WARNING, logger="mtc"):
        again = _alpha(artifact, "openvino")
    assert "graph cache entry" in caplog.text and "rebuilding it" in caplog.text
    np.testing.assert_array_equal(again, fresh)
    assert all(check_entry(seal) is None for seal in _seals(private_cache))


def test_a_damaged_onnxruntime_optimized_model_is_rebuilt_with_a_warning(artifact, private_cache, caplog):
    from mtc.backends.build import build

    reference = _alpha(artifact, "onnxruntime")  # no optimized model yet: ORT optimizes in memory
    build(artifact, backend="onnxruntime")
    (optimized,) = private_cache.rglob("*.onnx")
    session = mtc.runtime.load(artifact, backend="onnxruntime")
    assert session.backend.optimized_model == optimized
    flip_middle_bytes(optimized)
    with caplog.at_level(logging.WARNING, logger="mtc"):
        session = mtc.runtime.load(artifact, backend="onnxruntime")
    assert "cached optimized model" in caplog.text and "does not match the sha256" in caplog.text
    assert session.backend.optimized_model == optimized  # rebuilt in place, sealed again
    assert check_entry(optimized.with_name(optimized.name + SEAL_SUFFIX)) is None
    np.testing.assert_allclose(session.process(frames(1)[0]).alpha, reference, rtol=0, atol=1e-6)


def test_an_unsealed_onnxruntime_optimized_model_is_never_loaded(artifact, private_cache, caplog):
    from mtc.backends.build import build

    build(artifact, backend="onnxruntime")
    (optimized,) = private_cache.rglob("*.onnx")
    optimized.with_name(optimized.name + SEAL_SUFFIX).unlink()
    optimized.write_bytes(b"not the model that was optimized")
    with caplog.at_level(logging.WARNING, logger="mtc"):
        session = mtc.runtime.load(artifact, backend="onnxruntime")
    assert "has no seal" in caplog.text
    assert optimized.read_bytes() != b"not the model that was optimized"
    assert session.backend.optimized_model == optimized


def test_a_full_disk_while_openvino_writes_its_blob_cache_says_so(artifact, private_cache, monkeypatch):
    ov = pytest.importorskip("openvino")
    from mtc.backends.openvino import session as ov_session
    from mtc.errors import MtcError

    def failing_compile(self, *args, **kwargs):  # OpenVINO reports a failed blob write this generically
        raise RuntimeError("Exception from src/inference/src/cpp/core.cpp:109:\n[ GENERAL_ERROR ] write failed")

    monkeypatch.setattr(ov.Core, "compile_model", failing_compile)
    monkeypatch.setattr(ov_session, "out_of_space", lambda folder, needed: True)
    with pytest.raises(MtcError, match="disk full while OpenVINO wrote its compiled-model cache"):
        _alpha(artifact, "openvino")
    monkeypatch.setattr(ov_session, "out_of_space", lambda folder, needed: False)
    with pytest.raises(MtcError, match="openvino cannot compile the model"):  # with room, the model is to blame
        _alpha(artifact, "openvino")
