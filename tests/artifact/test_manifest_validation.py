"""Hostile or damaged manifests: paths confined to the artifact folder, every field in range, every
file the model reads listed and hashed. Each case is one MtcError naming the field, and nothing
outside the folder is read."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper
from tiny_artifacts import edit_manifest, write_tiny_artifact

from mtc.artifact.manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    file_entry,
    manifest_from_dict,
    read_manifest,
)
from mtc.errors import MtcError


@pytest.fixture
def artifact(tmp_path):
    return write_tiny_artifact(tmp_path / "tiny", with_ratio=True)


def _data(artifact):
    return json.loads((artifact / MANIFEST_NAME).read_text())


def _refused(data, *fragments):
    with pytest.raises(MtcError) as err:
        manifest_from_dict(data)
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ---- paths -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, why", [
    ("../x.onnx", "leaves or is not a plain path"),
    ("a/../../x.onnx", "leaves or is not a plain path"),
    ("/etc/passwd", "an absolute path"),
    ("./model.onnx", "leaves or is not a plain path"),
    ("sub//model.onnx", "leaves or is not a plain path"),
    ("C:\\model.onnx", "not a plain relative path"),
    ("model\0.onnx", "not a plain relative path"),
])
def test_file_names_that_leave_the_folder_are_refused(artifact, name, why):
    data = _data(artifact)
    data["files"][name] = data["files"].pop("model.onnx")
    _refused(data, "files", why)
    data["model_file"] = name
    _refused(data, why)


def test_a_model_file_not_listed_in_files_is_refused(artifact):
    data = _data(artifact)
    data["model_file"] = "/abs/model.onnx"
    _refused(data, "model_file", "an absolute path")


def test_a_symlink_that_escapes_the_folder_is_refused_before_hashing(artifact, tmp_path):
    outside = tmp_path / "outside.onnx"
    os.replace(artifact / "model.onnx", outside)
    (artifact / "model.onnx").symlink_to(outside)  # same bytes, same hash: only the link is wrong
    with pytest.raises(MtcError, match="is a link to .* outside the artifact folder"):
        read_manifest(artifact)
    assert outside.exists()


def test_a_symlink_inside_the_folder_is_followed(artifact):
    os.replace(artifact / "model.onnx", artifact / "real.onnx")
    (artifact / "model.onnx").symlink_to("real.onnx")
    assert read_manifest(artifact).model_file == "model.onnx"


def test_a_files_entry_naming_a_fifo_is_refused_without_opening_it(artifact):
    os.mkfifo(artifact / "pipe")
    edit_manifest(artifact, lambda d: d["files"].update(pipe={"sha256": "0" * 64, "size": 0}))
    outcome = {}

    def read():
        try:
            read_manifest(artifact)
        except MtcError as exc:
            outcome["error"] = str(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(60)
    if reader.is_alive():  # opening the FIFO blocked: unblock it and fail
        with open(artifact / "pipe", "wb"):
            pass
        pytest.fail("read_manifest opened a FIFO listed in files")
    assert "is not a regular file" in outcome["error"]


def test_a_files_entry_naming_a_device_through_a_link_is_refused(artifact):
    (artifact / "zero").symlink_to("/dev/zero")
    edit_manifest(artifact, lambda d: d["files"].update(zero={"sha256": "0" * 64, "size": 10}))
    with pytest.raises(MtcError, match="outside the artifact folder"):
        read_manifest(artifact)


def test_a_huge_sparse_file_is_refused_by_its_size_before_a_byte_is_hashed(artifact, monkeypatch):
    import mtc.artifact.manifest as manifest_module

    with open(artifact / "model.onnx", "r+b") as handle:
        handle.truncate(1 << 36)  # 64 GiB, sparse

    def no_hashing(*args, **kwargs):
        raise AssertionError("hashed a file whose size already disagrees with the manifest")

    monkeypatch.setattr(manifest_module, "_hash_bounded", no_hashing)
    with pytest.raises(MtcError, match=r"does not match its manifest hash \(68719476736 bytes, the manifest records"):
        read_manifest(artifact)


def test_a_recorded_size_beyond_the_bound_is_refused_at_parse(artifact):
    data = _data(artifact)
    data["files"]["model.onnx"]["size"] = 1 << 50
    _refused(data, "files.model.onnx.size", "expected a value in")


# ---- external data ---------------------------------------------------------------------------


def _with_external_weights(artifact, location="weights.bin", *, list_it=True):
    """Rewrite the tiny model with its weights in an external file at `location`."""
    model = onnx.load(str(artifact / "model.onnx"))
    weights = numpy_helper.to_array(model.graph.initializer[0])
    target = (artifact / location)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(weights.tobytes())
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(weights.nbytes))):
        tensor.external_data.add(key=key, value=value)
    onnx.save(model, str(artifact / "model.onnx"))
    files = {"model.onnx": file_entry(artifact / "model.onnx")}
    if list_it:
        files[location] = file_entry(target, role="weights")
    edit_manifest(artifact, lambda d: d.update(files={name: {"sha256": e.sha256, "size": e.size, "role": e.role}
                                                      for name, e in files.items()}))


def test_external_data_not_listed_in_the_manifest_is_refused(artifact):
    _with_external_weights(artifact, list_it=False)
    with pytest.raises(MtcError, match="reads external data 'weights.bin', which the manifest does not list"):
        read_manifest(artifact)


def test_listed_external_data_is_hashed_like_any_file(artifact):
    import mtc.runtime

    _with_external_weights(artifact)
    session = mtc.runtime.load(artifact, backend="onnxruntime")
    assert session.process(np.zeros((32, 32, 3), np.uint8)).alpha.shape == (32, 32)
    with open(artifact / "weights.bin", "r+b") as handle:
        handle.write(b"\x00\x00\x80\x7f")  # a NaN in the first weight, same size
    with pytest.raises(MtcError, match="weights.bin does not match its manifest hash"):
        read_manifest(artifact)


def test_external_data_outside_the_folder_is_refused(artifact, tmp_path):
    (artifact / "sub").mkdir()
    _with_external_weights(artifact, location="../outside.bin", list_it=False)
    with pytest.raises(MtcError, match=r"reads external data '\.\./outside\.bin'"):
        read_manifest(artifact)


# ---- field ranges ----------------------------------------------------------------------------


def _io(d):
    return d["io"]


@pytest.mark.parametrize("change, fragments", [
    (lambda d: _io(d)["inputs"][0].update(shape=[1, 3, -5, "w"]), ("io.inputs[0].shape[2]", "is -5")),
    (lambda d: _io(d)["inputs"][0].update(shape=[1, 3, 10**12, "w"]), ("io.inputs[0].shape[2]",)),
    (lambda d: _io(d)["inputs"][0].update(shape=[1] * 20), ("io.inputs[0].shape", "at most 8")),
    (lambda d: _io(d)["inputs"][0].update(shape=[1, 3, 2.5, "w"]), ("io.inputs[0].shape", "ints and dim names")),
    (lambda d: _io(d)["inputs"][0].update(name=""), ("io.inputs[0].name", "non-empty")),
    (lambda d: _io(d)["outputs"][0].update(value_range=[1, 0]), ("io.outputs[0].value_range", "low end")),
    (lambda d: _io(d)["outputs"][0].update(value_range=[0, float("nan")]), ("io.outputs[0].value_range[1]", "finite")),
    (lambda d: _io(d)["preprocess"].update(multiple_of=0), ("io.preprocess.multiple_of", "is 0")),
    (lambda d: _io(d)["preprocess"].update(resize="reference", reference_side=0), ("io.preprocess.reference_side",)),
    (lambda d: _io(d)["preprocess"].update(resize="reference", reference_side=-512), ("io.preprocess.reference_side",)),
    (lambda d: _io(d)["preprocess"].update(resize="fixed", fixed_size=[0, 320]), ("io.preprocess.fixed_size[0]",)),
    (lambda d: _io(d)["preprocess"].update(resize="fixed", fixed_size=[320, 10**9]), ("io.preprocess.fixed_size[1]",)),
    (lambda d: _io(d)["preprocess"].update(scale=float("nan")), ("io.preprocess.scale", "finite")),
    (lambda d: _io(d)["preprocess"].update(scale=0), ("io.preprocess.scale", "(0,")),
    (lambda d: _io(d)["preprocess"].update(std=[0.5, 0.0, 0.5]), ("io.preprocess.std[1]", "is 0.0")),
    (lambda d: _io(d)["preprocess"].update(std=[0.5, -0.5, 0.5]), ("io.preprocess.std[1]",)),
    (lambda d: _io(d)["preprocess"].update(mean=[0.5, float("inf"), 0.5]), ("io.preprocess.mean[1]", "finite")),
    (lambda d: _io(d)["downsample"].update(target_side=0), ("io.downsample.target_side",)),
    (lambda d: _io(d)["downsample"].update(max_ratio=5.0), ("io.downsample.max_ratio",)),
    (lambda d: _io(d)["downsample"].update(snap=float("nan")), ("io.downsample.snap", "finite")),
    (lambda d: _io(d)["downsample"].update(valid_range=[0, 1]), ("io.downsample.valid_range[0]", "(0, 1]")),
    (lambda d: _io(d)["downsample"].update(valid_range=[0.5, 0.25]), ("io.downsample.valid_range", "low end")),
    (lambda d: _io(d)["downsample"].update(valid_range=[0.5, 5.0]), ("io.downsample.valid_range[1]",)),
    (lambda d: _io(d).update(states=[{"input": "img", "output": "alpha", "stride": 0}]), ("io.states[0].stride",)),
    (lambda d: _io(d).update(states=[{"input": "img", "output": "alpha", "initial_shape": [1, -1]}]),
     ("io.states[0].initial_shape[1]",)),
    (lambda d: _io(d).update(states=[{"input": "img", "output": "alpha", "initial_value": float("nan")}]),
     ("io.states[0].initial_value", "finite")),
    (lambda d: _io(d)["inputs"].append(dict(_io(d)["inputs"][0])), ("io", "tensor name twice")),
    (lambda d: d["files"]["model.onnx"].update(size=-1), ("files.model.onnx.size",)),
    (lambda d: d["files"]["model.onnx"].update(sha256="abc"), ("files.model.onnx.sha256", "64 lowercase hex")),
    (lambda d: d["precision"].update(samples=-3), ("precision.samples",)),
    (lambda d: d["precision"].update(excluded_nodes=[1, 2]), ("precision.excluded_nodes", "node names")),
    (lambda d: d.update(check_sizes=[{"width": 0, "height": 288}]), ("check_sizes[0].width",)),
    (lambda d: d.update(check_sizes=[{"width": 512, "height": 288, "downsample_ratio": 0}]),
     ("check_sizes[0].downsample_ratio",)),
    (lambda d: d.update(schema_version=10**30), ("schema_version",)),
    # standard JSON has no NaN: a manifest holding one anywhere would not survive its own round trip
    (lambda d: d.update(provenance={"tools": {"x": float("nan")}}), ("provenance.tools.x", "finite")),
])
def test_every_field_out_of_range_is_one_error_naming_it(artifact, change, fragments):
    data = _data(artifact)
    change(data)
    _refused(data, *fragments)


def test_deeply_nested_json_is_one_error(artifact):
    data = _data(artifact)
    nested = leaf = {}
    for _ in range(200):
        leaf["x"] = {}
        leaf = leaf["x"]
    data["provenance"] = nested
    _refused(data, "nests deeper than 32 levels")
    # and as text, deeper than the interpreter's own recursion limit
    (artifact / MANIFEST_NAME).write_text('{"provenance": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(MtcError, match="nests deeper than 32 levels|not valid JSON"):
        read_manifest(artifact)


def test_an_oversized_manifest_is_refused_unread(artifact):
    with open(artifact / MANIFEST_NAME, "r+b") as handle:
        handle.truncate(MAX_MANIFEST_BYTES + 1)
    with pytest.raises(MtcError, match="larger than 16 MB"):
        read_manifest(artifact)


def test_a_valid_manifest_still_reads_and_keeps_its_defaults(artifact):
    manifest = read_manifest(artifact)
    assert manifest.io.downsample.valid_range == (1 / 16, 1.0)
    data = _data(artifact)
    del data["io"]["downsample"]["valid_range"]  # written before the field existed
    assert manifest_from_dict(data).io.downsample.valid_range == (1 / 16, 1.0)
