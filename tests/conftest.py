"""Shared fixtures: the real pretrained RVM (from the PyPI wheel, cached) and an exported artifact."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mtc.errors import MtcError


@pytest.fixture(autouse=True)
def _mtc_logging_restored():
    """Tests that run `mtc.cli.main` in-process attach its stderr log handler to the "mtc"
    logger; later tests must see the logger as a library user has it, whatever ran before."""
    logger = logging.getLogger("mtc")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


@pytest.fixture(scope="session")
def rvm_onnx() -> Path:
    """The official rvm_mobilenetv3_fp32.onnx, fetched once into the user cache and verified."""
    from mtc.models.rvm import MOBILENETV3_ONNX
    from mtc.weights import fetch_weights

    try:
        return fetch_weights(MOBILENETV3_ONNX, progress=False)
    except MtcError as exc:  # offline and not cached: tests that need the real model skip
        pytest.skip(f"the official RVM ONNX is not available ({exc.message})")


@pytest.fixture(scope="session")
def rvm_artifact(rvm_onnx: Path, tmp_path_factory) -> Path:
    """An FP32 RVM artifact exported by the real pipeline (shared; tests must not modify it)."""
    from mtc.models.export import export_model

    return export_model("rvm", output=tmp_path_factory.mktemp("artifacts") / "rvm", weights_path=rvm_onnx)


@pytest.fixture(scope="session")
def rvm_alpha_artifact(rvm_onnx: Path, tmp_path_factory) -> Path:
    """The alpha-only RVM export (`mtc export rvm --alpha-only`; shared, do not modify)."""
    from mtc.models.export import export_model

    return export_model("rvm", output=tmp_path_factory.mktemp("artifacts") / "rvm-alpha", weights_path=rvm_onnx,
                        alpha_only=True)



# FP32 on OpenVINO vs FP32 on ONNX Runtime: same math, different kernels and summation order.
# Measured max |diff| on alpha and foreground: RVM ~2e-5, MODNet ~7e-6, U²-Netp ~1e-6, BGMv2 ~5e-8.
BACKEND_MAX_ABS = 1e-4


@pytest.fixture
def assert_cpu_backends_agree():
    """Returns check(artifact, frames, plate=None): runs the artifact on ONNX Runtime and on
    OpenVINO (FP32), each session over the same frames, asserts alpha and foreground agree within
    BACKEND_MAX_ABS, and returns ONNX Runtime's (alphas, foregrounds) for further checks."""
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'mtc[openvino]')")
    import numpy as np

    import mtc.runtime

    def check(artifact: Path, frames: list, plate=None) -> tuple:
        outputs = {}
        for backend in ("onnxruntime", "openvino"):
            session = mtc.runtime.load(artifact, backend=backend)
            assert session.backend.name == backend
            if plate is not None:
                session.set_background(plate)
            mattes = [session.process(frame).copy() for frame in frames]
            outputs[backend] = (np.stack([m.alpha for m in mattes]), np.stack([m.foreground for m in mattes]))
        for reference, other, what in zip(outputs["onnxruntime"], outputs["openvino"], ("alpha", "foreground")):
            assert other.shape == reference.shape
            assert np.abs(other - reference).max() < BACKEND_MAX_ABS, what
        return outputs["onnxruntime"]

    return check
