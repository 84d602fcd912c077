"""`mtc package --kind ensemble`: four models Triton's protobuf reads back, wired by name, and
pre/post steps that reproduce the runtime's mattes around a network that keeps the state."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from serve.artifacts import stream, write_recurrent_artifact

import mtc.runtime
from mtc.artifact.manifest import Preprocess
from mtc.errors import MtcError
from mtc.serve.triton_repo import package_triton

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="tritonclient is not installed (pip install 'mtc[triton]')")
text_format = pytest.importorskip("google.protobuf.text_format")


def _parse(folder: Path):
    return text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def test_ensemble_models_parse_and_connect(tmp_path):
    artifact = write_recurrent_artifact(tmp_path / "rec")
    packaged = package_triton(artifact, tmp_path / "repo", kind="ensemble", name="rec")
    assert packaged.models == ["rec_pre", "rec_network", "rec_post", "rec"]
    configs = {name: _parse(tmp_path / "repo" / name) for name in packaged.models}
    ensemble = configs["rec"]
    assert ensemble.platform == "ensemble" and [t.name for t in ensemble.input] == ["FRAME"]
    steps = ensemble.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["rec_pre", "rec_network", "rec_post"]
    # Every tensor a step reads is the ensemble's input or an earlier step's output.
    available = {"FRAME"}
    for step in steps:
        config = configs[step.model_name]
        assert set(step.input_map) == {t.name for t in config.input}
        assert set(step.input_map.values()) <= available
        assert set(step.output_map) <= {t.name for t in config.output}
        available |= set(step.output_map.values())
    assert {t.name for t in ensemble.output} <= available
    network = configs["rec_network"]
    assert [s.input_name for s in network.sequence_batching.state] == ["s_in"]
    assert (configs["rec_pre"].backend, configs["rec_post"].backend) == ("python", "python")
    assert list(configs["rec_pre"].output[0].dims) == list(network.input[0].dims) == [1, 3, -1, -1]


def test_an_existing_step_stops_the_ensemble_before_anything_is_written(tmp_path):
    artifact = write_recurrent_artifact(tmp_path / "rec")
    package_triton(artifact, tmp_path / "repo", kind="python", name="rec_post")
    with pytest.raises(MtcError, match="rec_post already exists"):
        package_triton(artifact, tmp_path / "repo", kind="ensemble", name="rec")
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["rec_post"]


class _Tensor:
    def __init__(self, name, array):
        self.name, self.array = name, np.asarray(array)

    def as_numpy(self):
        return self.array


class _Request:
    def __init__(self, inputs, wanted=()):
        self.inputs, self.wanted = inputs, list(wanted)

    def requested_output_names(self):
        return self.wanted


class _Response:
    def __init__(self, output_tensors, error=None):
        self.outputs, self.error = {t.name: t.array for t in output_tensors}, error


@pytest.fixture
def fake_triton(monkeypatch):
    """The few `triton_python_backend_utils` calls the steps make, outside Triton."""
    module = types.SimpleNamespace(
        Tensor=_Tensor, InferenceResponse=_Response, TritonError=str,
        get_input_tensor_by_name=lambda request, name: (_Tensor(name, request.inputs[name])
                                                        if name in request.inputs else None))
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", module)


def _step(model, inputs: dict, wanted=()):
    response = model.execute([_Request(inputs, wanted)])[0]
    assert response.error is None, response.error
    return response.outputs


# As exported, and with a fixed model size and a normalization, so that resizing both ways and
# the mean/std are exercised.
PREPROCESSING = [Preprocess(), Preprocess(resize="fixed", fixed_size=(16, 16), mean=(0.5, 0.5, 0.5),
                                          std=(0.25, 0.25, 0.25))]


@pytest.mark.parametrize("preprocess", PREPROCESSING, ids=["as-is", "fixed-16x16-normalized"])
def test_pre_network_post_equals_the_runtime(tmp_path, fake_triton, preprocess):
    from mtc.serve.triton_ensemble import PostprocessModel, PreprocessModel

    artifact = write_recurrent_artifact(tmp_path / "rec", preprocess)
    repo = tmp_path / "repo"
    package_triton(artifact, repo, kind="ensemble", name="rec")
    pre, post = PreprocessModel(), PostprocessModel()
    for model, name in ((pre, "rec_pre"), (post, "rec_post")):
        model.initialize({"model_repository": str(repo / name), "model_version": "1",
                          "model_config": json.dumps({"name": name})})
    network = ort.InferenceSession(str(repo / "rec_network" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    state = np.zeros((1, 1, 1, 1), np.float32)  # what the zero initial_state gives on START
    frames = stream(4, seed=8)
    local = mtc.runtime.load(artifact, backend="onnxruntime", threads=1)
    for frame in frames:
        fed = _step(pre, {"FRAME": frame})
        alpha, state = network.run(["alpha", "s_out"], {**fed, "s_in": state})  # Triton's implicit state
        out = _step(post, {"FRAME": frame, "alpha": alpha}, wanted=["ALPHA", "COMPOSITE"])
        matte = local.process(frame)
        np.testing.assert_allclose(out["ALPHA"], matte.alpha, rtol=0, atol=1e-6)
        assert np.abs(out["COMPOSITE"].astype(int) - matte.composite((0, 255, 0)).astype(int)).max() <= 1


def test_a_bad_frame_is_an_error_response(tmp_path, fake_triton):
    from mtc.serve.triton_ensemble import PreprocessModel

    artifact = write_recurrent_artifact(tmp_path / "rec")
    package_triton(artifact, tmp_path / "repo", kind="ensemble", name="rec")
    pre = PreprocessModel()
    pre.initialize({"model_repository": str(tmp_path / "repo" / "rec_pre"), "model_version": "1", "model_config": "{}"})
    (response,) = pre.execute([_Request({"FRAME": np.zeros((8, 8, 3), np.uint8)})])
    assert "too small" in response.error and response.outputs == {}
