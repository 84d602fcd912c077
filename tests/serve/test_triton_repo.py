"""`mtc package --triton`: repositories whose configs Triton's own protobuf reads back, field by
field as the manifest says."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from serve.artifacts import recurrent_io, recurrent_model, write_artifact, write_recurrent_artifact
from tiny_artifacts import tiny_model, write_tiny_artifact

from mtc.artifact.manifest import ModelIO, TensorSpec, read_manifest
from mtc.errors import MtcError
from mtc.serve.triton_repo import PYTHON_MODEL_SOURCE, package_triton

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="tritonclient is not installed (pip install 'mtc[triton]')")
text_format = pytest.importorskip("google.protobuf.text_format")

mc = model_config_pb2.ModelConfig


def _parse(folder: Path):
    return text_format.Parse((folder / "config.pbtxt").read_text(), mc())


def _batchable_artifact(folder: Path) -> Path:
    """The tiny image model with a free batch dimension (as a graph exported with one has)."""
    model = tiny_model()
    for value in list(model.graph.input) + list(model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    io = ModelIO(inputs=(TensorSpec("img", "image", shape=("batch", 3, "h", "w")),),
                 outputs=(TensorSpec("alpha", "alpha", shape=("batch", 1, "h", "w"), value_range=(0.0, 1.0)),))
    return write_artifact(folder, model, io, task="image_matting")


def test_image_network_model_gets_dynamic_batching_and_instances(tmp_path):
    artifact = _batchable_artifact(tmp_path / "img")
    packaged = package_triton(artifact, tmp_path / "repo", kind="network", name="matte", max_batch=4, instances=3)
    config = _parse(tmp_path / "repo" / "matte")
    assert packaged.models == ["matte"]
    assert (config.name, config.platform, config.max_batch_size) == ("matte", "onnxruntime_onnx", 4)
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [("img", model_config_pb2.TYPE_FP32, [3, -1, -1])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("alpha", [1, -1, -1])]
    assert config.HasField("dynamic_batching") and not config.HasField("sequence_batching")
    assert [(g.count, g.kind) for g in config.instance_group] == [(3, model_config_pb2.ModelInstanceGroup.KIND_GPU)]
    assert (tmp_path / "repo" / "matte" / "1" / "model.onnx").read_bytes() == (artifact / "model.onnx").read_bytes()


def test_a_graph_with_batch_one_gets_no_batching_and_says_why(tmp_path):
    artifact = write_tiny_artifact(tmp_path / "tiny")  # image input 1x3xHxW
    packaged = package_triton(artifact, tmp_path / "repo", kind="network", name="tiny", max_batch=8)
    config = _parse(tmp_path / "repo" / "tiny")
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [1, 3, -1, -1]
    assert "fixes the batch dimension of 'img'" in packaged.notes[0]


def test_recurrent_network_model_gets_implicit_state_per_pair(tmp_path):
    artifact = write_recurrent_artifact(tmp_path / "rec")
    package_triton(artifact, tmp_path / "repo", kind="network", name="rec", idle_seconds=5)
    config = _parse(tmp_path / "repo" / "rec")
    manifest = read_manifest(artifact)
    batching = config.sequence_batching
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert batching.max_sequence_idle_microseconds == 5_000_000
    assert batching.WhichOneof("strategy_choice") == "oldest"
    assert len(batching.state) == len(manifest.io.states) == 1
    for state, pair in zip(batching.state, manifest.io.states):
        assert (state.input_name, state.output_name) == (pair.input, pair.output)
        assert state.data_type == model_config_pb2.TYPE_FP32
        assert list(state.dims) == [1, 1, -1, -1]  # the zero 1x1x1x1 start broadcasts: H, W stay free
        (initial,) = state.initial_state
        assert initial.zero_data and list(initial.dims) == list(pair.initial_shape)
    # State travels inside Triton: it is neither a request input nor a response output.
    assert [t.name for t in config.input] == ["img"] and [t.name for t in config.output] == ["alpha"]


def test_tensorrt_platform_needs_a_plan_and_uses_it(tmp_path):
    artifact = write_recurrent_artifact(tmp_path / "rec")
    with pytest.raises(MtcError, match="needs the engine built for the serving GPU"):
        package_triton(artifact, tmp_path / "repo", kind="network", platform="tensorrt_plan")
    plan = tmp_path / "engine.plan"
    plan.write_bytes(b"plan bytes")
    package_triton(artifact, tmp_path / "repo", kind="network", platform="tensorrt_plan", plan=plan, name="trt")
    config = _parse(tmp_path / "repo" / "trt")
    assert (config.platform, config.default_model_filename) == ("tensorrt_plan", "model.plan")
    assert (tmp_path / "repo" / "trt" / "1" / "model.plan").read_bytes() == b"plan bytes"
    assert len(config.sequence_batching.state) == 1


def test_python_model_for_a_recurrent_artifact_reads_sequence_controls(tmp_path):
    artifact = write_recurrent_artifact(tmp_path / "rec")
    package_triton(artifact, tmp_path / "repo", kind="python", name="rec", instances=2, threads=1)
    folder = tmp_path / "repo" / "rec"
    config = _parse(folder)
    assert (config.backend, config.max_batch_size) == ("python", 0)
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [("FRAME", model_config_pb2.TYPE_UINT8,
                                                                           [-1, -1, 3])]
    assert [t.name for t in config.output] == ["ALPHA", "FOREGROUND", "COMPOSITE"]
    kinds = {c.name: (c.control[0].kind, c.control[0].data_type) for c in config.sequence_batching.control_input}
    Control = model_config_pb2.ModelSequenceBatching.Control
    assert kinds == {"START": (Control.CONTROL_SEQUENCE_START, 0), "END": (Control.CONTROL_SEQUENCE_END, 0),
                     "READY": (Control.CONTROL_SEQUENCE_READY, 0),
                     "CORRID": (Control.CONTROL_SEQUENCE_CORRID, model_config_pb2.TYPE_UINT64)}
    assert config.parameters["threads"].string_value == "1" and config.instance_group[0].count == 2
    # The model is the installed runtime's code, and the artifact is copied whole and verified.
    assert (folder / "1" / "model.py").read_text() == PYTHON_MODEL_SOURCE
    assert read_manifest(folder / "1" / "artifact") == read_manifest(artifact)


def test_python_model_for_an_image_artifact_has_no_sequence_batcher(tmp_path):
    package_triton(write_tiny_artifact(tmp_path / "tiny"), tmp_path / "repo", kind="python", name="tiny")
    assert not _parse(tmp_path / "repo" / "tiny").HasField("sequence_batching")


def test_an_existing_model_is_kept_without_force_and_replaced_with_it(tmp_path):
    artifact = write_recurrent_artifact(tmp_path / "rec")
    package_triton(artifact, tmp_path / "repo", kind="python", name="m")
    with pytest.raises(MtcError, match="already exists.*--force"):
        package_triton(artifact, tmp_path / "repo", kind="network", name="m")
    assert _parse(tmp_path / "repo" / "m").backend == "python"
    package_triton(artifact, tmp_path / "repo", kind="network", name="m", force=True)
    assert _parse(tmp_path / "repo" / "m").platform == "onnxruntime_onnx"


def test_a_damaged_artifact_writes_nothing(tmp_path):
    artifact = write_recurrent_artifact(tmp_path / "rec")
    (artifact / "model.onnx").write_bytes(b"not the model")
    with pytest.raises(MtcError, match="model.onnx"):
        package_triton(artifact, tmp_path / "repo", kind="python", name="m")
    assert not (tmp_path / "repo" / "m").exists()
    assert not any(p.name.endswith(".part") for p in (tmp_path / "repo").glob(".*"))


def test_nonzero_initial_state_is_refused_by_the_network_form(tmp_path):
    io = recurrent_io()
    io = ModelIO(io.inputs, io.outputs, (io.states[0].__class__("s_in", "s_out", (1, 1, 1, 1), 0.5, 1),))
    artifact = write_artifact(tmp_path / "rec", recurrent_model(), io, task="video_matting")
    with pytest.raises(MtcError, match="starts at 0.5.*--kind python"):
        package_triton(artifact, tmp_path / "repo", kind="network")


def test_cli_writes_the_repository_and_names_the_model(tmp_path):
    from mtc.cli.main import cli

    artifact = write_recurrent_artifact(tmp_path / "my artifact")
    result = CliRunner().invoke(cli, ["package", str(artifact), "--triton", str(tmp_path / "repo"), "--kind", "network"])
    assert result.exit_code == 0, result.output
    assert "my_artifact" in result.output and "state kept by Triton" in result.output
    assert _parse(tmp_path / "repo" / "my_artifact").name == "my_artifact"
    bad = CliRunner().invoke(cli, ["package", str(artifact), "--triton", str(tmp_path / "repo"), "--name", "a/b"])
    assert bad.exit_code != 0 and "not a usable Triton model name" in str(bad.exception)
