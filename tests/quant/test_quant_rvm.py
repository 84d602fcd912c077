"""Quantization of the real pretrained RVM, checked against its FP32 artifact on the built-in clip."""

import json

import numpy as np
import onnxruntime as ort
import pytest

import mtc.runtime
from mtc.quant.config import Gates, preset
from mtc.quant.data_plan import DataPlan
from mtc.quant.pipeline import quantize_artifact

# One setting keeps CI time reasonable; benchmarks/ covers HD at ratio 0.25 as well.
DATA = DataPlan(calib_frames=12, check_frames=12, settings=((512, 288, 1.0),))


@pytest.fixture(scope="module")
def rvm_int8(rvm_artifact, tmp_path_factory):
    out = tmp_path_factory.mktemp("quant") / "rvm-int8"
    return quantize_artifact(rvm_artifact, out, precision="int8", config=preset("speed"),
                             gates=Gates(max_mad=2.0, max_dtssd=2.0), data=DATA)


def test_int8_rvm_passes_its_gates(rvm_int8):
    assert rvm_int8.passed, rvm_int8.check.failures
    for clip in rvm_int8.check.clips:
        assert clip.mad <= 2.0 and clip.dtssd <= 2.0 and not clip.nonfinite_frames
    report = json.loads((rvm_int8.folder / "report.json").read_text())
    assert report["int8"]["int8_layers"] >= report["int8"]["quantized_layers"] // 2  # mostly INT8, not all fallback
    # The float budget measured every layer it could afford and spent at most 4% of the MACs.
    budget = report["int8"]["float_budget"]
    assert budget["mac_share"] <= 0.04 and set(budget["layers"]) <= set(report["removal_sensitivity"]["layers"])
    assert len(report["removal_sensitivity"]["layers"]) >= 5


def test_int8_rvm_artifact_is_really_int8_and_runs(rvm_int8, rvm_artifact):
    import onnx

    model = onnx.load(str(rvm_int8.folder / "model.onnx"))
    ops = [n.op_type for n in model.graph.node]
    report = json.loads((rvm_int8.folder / "report.json").read_text())
    int8_weights = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
    # The speed preset quantizes the layers carrying the compute (>= 1.5% of the MACs each).
    assert len(int8_weights) == report["int8"]["int8_layers"] >= 8
    assert ops.count("QuantizeLinear") >= report["int8"]["int8_layers"]
    # ONNX Runtime must turn every quantized conv into an integer kernel, or INT8 buys no speed.
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(rvm_int8.folder.parent / "ort-optimized.onnx")
    ort.InferenceSession(str(rvm_int8.folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert fused.count("QLinearConv") == report["int8"]["int8_layers"]
    # The full-resolution decoder conv reads 32 + 3 image channels: padded to 36 for the fast kernel.
    assert "Conv_290" in report["int8"]["channel_aligned_layers"]
    session = mtc.runtime.load(rvm_int8.folder, backend="onnxruntime")
    assert session.manifest.precision.mode == "int8" and session.manifest.precision.activation_type == "uint8"
    assert session.manifest.provenance["reference_artifact"] == str(rvm_artifact.resolve())
    frame = np.full((288, 512, 3), 128, np.uint8)
    assert np.isfinite(session.process(frame).alpha).all()


def test_fp16_rvm_has_no_nan_and_stays_within_tolerance(rvm_artifact, tmp_path):
    outcome = quantize_artifact(rvm_artifact, tmp_path / "rvm-fp16", precision="fp16",
                                gates=Gates(max_mad=0.1, max_dtssd=0.1), data=DATA)
    assert outcome.passed, outcome.check.failures
    clip = outcome.check.clips[0]
    assert not clip.nonfinite_frames and clip.mad <= 0.1
    import onnx

    model = onnx.load(str(tmp_path / "rvm-fp16" / "model.onnx"))
    assert sum(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer) > 50
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # I/O stays FP32


def test_uint8_int8_artifact_runs_faithfully_on_openvino(rvm_int8):
    """The reason `auto` may send uint8-activation INT8 artifacts to OpenVINO (signed ones lose ~30e-3 MAD there)."""
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'mtc[openvino]')")
    from mtc import metrics
    from mtc.data.builtin_clip import ClipSpec, builtin_clip

    clip = builtin_clip(ClipSpec(width=512, height=288, frames=8, seed=2))
    alphas = {}
    for backend in ("onnxruntime", "openvino"):
        session = mtc.runtime.load(rvm_int8.folder, backend=backend, scene_cut_threshold=None)
        alphas[backend] = np.stack([session.process(frame).alpha.copy() for frame in clip])
    assert metrics.mad(alphas["openvino"], alphas["onnxruntime"]) < 1.0  # x1e3; signed int8 gives 30+
    assert mtc.runtime.load(rvm_int8.folder).backend.name == "openvino"  # what `auto` picks
