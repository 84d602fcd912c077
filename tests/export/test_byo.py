"""Bring your own ONNX: contracts inferred from graphs, and `mtc export PATH.onnx`."""

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mtc.errors import MtcError
from mtc.export.byo import ContractHints, infer_contract, measure_state_strides


def _mtc(*args):
    return subprocess.run([sys.executable, "-m", "mtc", *map(str, args)], capture_output=True, text=True, timeout=600)


def _image_model(path, *, outputs=("d0", "d1"), size=(32, 32), extra_input=None):
    """A fixed-size image model with several 1-channel sigmoid outputs, like U²-Net's."""
    h, w = size
    inputs = [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, h, w])]
    if extra_input:
        inputs.append(helper.make_tensor_value_info(extra_input, TensorProto.FLOAT, [1, 5]))
    weight = onnx.numpy_helper.from_array(np.full((1, 3, 1, 1), 0.3, np.float32), "w")
    nodes = [helper.make_node("Conv", ["input.1", "w"], ["logits"])]
    nodes += [helper.make_node("Sigmoid", ["logits"], [name]) for name in outputs]
    graph = helper.make_graph(nodes, "img", inputs,
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1, h, w]) for n in outputs],
                              initializer=[weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_image_model_contract_is_inferred(tmp_path):
    model = onnx.load(_image_model(tmp_path / "m.onnx"))
    io, task = infer_contract(model)
    assert task == "image_matting"
    assert [(t.name, t.role) for t in io.inputs] == [("input.1", "image")]
    assert [(t.name, t.role) for t in io.outputs] == [("d0", "alpha"), ("d1", "aux")]
    assert io.preprocess.resize == "fixed" and io.preprocess.fixed_size == (32, 32)
    io, _ = infer_contract(model, ContractHints(alpha="d1", input_size=(64, 48), mean=(0.5,) * 3, std=(0.5,) * 3))
    assert io.output_with_role("alpha").name == "d1" and io.preprocess.fixed_size == (48, 64)
    assert io.preprocess.mean == (0.5, 0.5, 0.5)


def test_what_cannot_be_inferred_names_the_flag(tmp_path):
    with pytest.raises(MtcError, match="cannot tell what input 'extra'") as err:
        infer_contract(onnx.load(_image_model(tmp_path / "m.onnx", extra_input="extra")))
    assert "--state" in err.value.hint
    with pytest.raises(MtcError, match="--alpha 'nope' is not a graph output"):
        infer_contract(onnx.load(_image_model(tmp_path / "n.onnx")), ContractHints(alpha="nope"))
    with pytest.raises(MtcError, match="does not name a graph input"):
        infer_contract(onnx.load(_image_model(tmp_path / "o.onnx")), ContractHints(states=(("a", "b"),)))


def test_a_recurrent_graph_gets_the_same_contract_as_its_family_spec(rvm_onnx):
    from mtc.models.rvm import RVM_IO

    model = onnx.load(rvm_onnx)
    io, task = infer_contract(model)
    assert task == "video_matting"
    assert {t.name: t.role for t in io.inputs} == {t.name: t.role for t in RVM_IO.inputs}
    assert {t.name: t.role for t in io.outputs} == {t.name: t.role for t in RVM_IO.outputs}
    io = measure_state_strides(model.SerializeToString(), io)
    assert [(p.input, p.output, p.stride) for p in io.states] == [(p.input, p.output, p.stride) for p in RVM_IO.states]


def test_export_of_an_official_file_given_as_a_path_uses_its_family(rvm_onnx, tmp_path):
    copy = tmp_path / "some.onnx"
    shutil.copy(rvm_onnx, copy)
    result = _mtc("export", copy, "-o", tmp_path / "a")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert (manifest["model"], manifest["variant"]) == ("rvm", "mobilenetv3")
    assert manifest["quantization"] == {"int8_preset": "speed", "builtin_photos": False, "int8_graphs": [],
                                        "int8_op_types": ["Conv"], "int8_activation_matmuls": False}  # a video model


def test_export_of_an_unknown_onnx_writes_a_checked_artifact_the_runtime_runs(tmp_path):
    import mtc.runtime

    path = _image_model(tmp_path / "cutout.onnx")
    result = _mtc("export", path, "-o", tmp_path / "art", "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["model"] == "cutout" and manifest["task"] == "image_matting"
    assert manifest["provenance"]["contract"] == "inferred"
    assert manifest["quantization"] == {"int8_preset": "speed", "builtin_photos": True, "int8_graphs": [],
                                        "int8_op_types": ["Conv"], "int8_activation_matmuls": False}  # the task's defaults
    session = mtc.runtime.load(tmp_path / "art", backend="onnxruntime")
    matte = session.process(np.full((50, 70, 3), 200, np.uint8))
    assert matte.alpha.shape == (50, 70)
    # (200/255 - 0.5) / 0.5 * 0.3 * 3 channels, through a sigmoid
    np.testing.assert_allclose(matte.alpha, 1 / (1 + np.exp(-0.9 * (200 / 255 - 0.5) / 0.5)), atol=2e-3)


def test_bad_onnx_options_are_one_line_errors(tmp_path):
    path = _image_model(tmp_path / "m.onnx")
    result = _mtc("export", path, "--mean", "1,2", "-o", tmp_path / "x")
    assert result.returncode != 0 and "three comma-separated finite numbers" in result.stderr
    result = _mtc("export", tmp_path / "missing.onnx")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and len(lines) == 1 and "ONNX file not found" in lines[0]
    assert not (tmp_path / "x").exists()
