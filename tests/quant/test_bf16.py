"""BF16 artifacts: the FP32 graph, checked as OpenVINO runs it in BF16, and run that way by
`auto` where the CPU has BF16 (in FP32 elsewhere, with a warning)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import onnx
import pytest

from mtc.artifact.manifest import MANIFEST_NAME
from mtc.backends import BackendOptions, _bf16_artifact
from mtc.backends.cpu import bf16_from_flags, has_bf16
from mtc.backends.registry import Availability, has_module
from mtc.errors import MtcError
from mtc.quant.data_plan import DataPlan
from mtc.quant.pipeline import quantize_artifact

from .test_quant import _toy_artifact

CAN_CHECK = has_bf16() and has_module("openvino")
SMALL = DataPlan(calib_frames=2, check_frames=4, settings=((64, 48, None),))


def test_bf16_flags():
    assert bf16_from_flags({"avx512f", "avx512_bf16"}) and bf16_from_flags({"amx_bf16", "amx_tile"})
    assert not bf16_from_flags({"avx2", "avx512_vnni", "fma"})


@pytest.mark.parametrize("requested", ["auto", "openvino"])
def test_a_bf16_artifact_runs_on_openvino_in_bf16_where_the_cpu_has_it(requested):
    name, options = _bf16_artifact(requested, BackendOptions(), Availability(openvino=True, bf16=True))
    assert (name, options.precision) == ("openvino", "bf16")


@pytest.mark.parametrize("requested, available, why", [
    ("auto", Availability(openvino=True, bf16=False), "this CPU has no BF16"),
    ("auto", Availability(openvino=False, bf16=True), "no OpenVINO here"),
    ("onnxruntime", Availability(openvino=True, bf16=True), "onnxruntime was asked for"),
])
def test_elsewhere_a_bf16_artifact_runs_in_fp32_and_says_why(requested, available, why, caplog):
    with caplog.at_level(logging.WARNING, logger="mtc"):
        name, options = _bf16_artifact(requested, BackendOptions(), available)
    assert (name, options.precision) == (requested, "fp32")
    assert why in caplog.text and "runs its graph in FP32" in caplog.text


@pytest.mark.skipif(not CAN_CHECK, reason="needs OpenVINO and a CPU with BF16 (AVX-512 BF16 or AMX)")
def test_bf16_artifact_holds_the_fp32_graph_checked_on_openvino_bf16(tmp_path):
    import mtc.runtime

    source = _toy_artifact(tmp_path / "toy")
    outcome = quantize_artifact(source, tmp_path / "bf16", precision="bf16", data=SMALL)
    report = json.loads((tmp_path / "bf16" / "report.json").read_text())
    manifest = json.loads((tmp_path / "bf16" / MANIFEST_NAME).read_text())

    assert outcome.passed and manifest["precision"]["mode"] == "bf16"
    assert report["bf16"]["inference_precision"] == "bf16"
    assert report["calibration"]["frames"] == 0  # nothing to calibrate
    mad = max(c.mad for c in outcome.check.clips)
    assert 0 < mad < 2.0  # BF16 rounds (not FP32 in disguise) within the default gate
    fp32 = onnx.load(str(source / "model.onnx"))
    assert onnx.load(str(tmp_path / "bf16" / manifest["model_file"])).graph == fp32.graph
    assert report["speed"]["backend"] == "openvino-bf16" and report["speed"]["fps"] > 0

    session = mtc.runtime.load(tmp_path / "bf16")
    frame = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    assert session.process(frame).alpha.shape == (48, 64)
    assert session.backend.name == "openvino" and session.backend.precision == "bf16"  # as compiled


@pytest.mark.skipif(CAN_CHECK, reason="this machine can check BF16: the refusal is for those that cannot")
def test_where_bf16_cannot_be_checked_it_is_refused_before_any_work(tmp_path):
    source = _toy_artifact(tmp_path / "toy")
    with pytest.raises(MtcError, match="BF16"):
        quantize_artifact(source, tmp_path / "bf16", precision="bf16", data=SMALL)
    assert not (tmp_path / "bf16").exists()


def test_the_bf16_command(tmp_path):
    source = _toy_artifact(tmp_path / "toy")
    done = subprocess.run([sys.executable, "-m", "mtc", "quantize", str(source), "-o", str(tmp_path / "bf16"),
                           "--bf16", "--calib-frames", "2"], capture_output=True, text=True)
    if CAN_CHECK:
        assert done.returncode == 0, done.stderr
        assert "artifact:" in done.stdout and (tmp_path / "bf16" / MANIFEST_NAME).exists()
    else:
        assert done.returncode == 1 and "BF16" in done.stderr and len(done.stderr.strip().splitlines()) <= 2
        assert not (tmp_path / "bf16").exists()
