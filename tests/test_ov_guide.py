"""OpenVINO: a guided filter's guide, Concat(image, channel mean), as one 1x1 convolution
(mtc.runtime.backends.ov_guide), with the same values as ONNX Runtime."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'mtc[openvino]')")

import mtc.runtime  # noqa: E402
from mtc.runtime.backends import OrtBackend  # noqa: E402
from mtc.runtime.backends.openvino import OpenVinoBackend  # noqa: E402
from mtc.runtime.backends.ov_guide import guide_as_conv  # noqa: E402


def _guide_model(path, reduce_axis=1):
    """src (1x3xHxW) -> Concat(src, ReduceMean(src, reduce_axis)) -> * coeffs: RVM's refiner tail."""
    nodes = [helper.make_node("ReduceMean", ["src", "axes"], ["mean"], keepdims=1),
             helper.make_node("Concat", ["src", "mean"], ["guide"], axis=1 if reduce_axis == 1 else 3),
             helper.make_node("Mul", ["guide", "coeffs"], ["out"])]
    graph = helper.make_graph(
        nodes, "guide",
        [helper.make_tensor_value_info("src", TensorProto.FLOAT, [1, 3, "h", "w"]),
         helper.make_tensor_value_info("coeffs", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.array([reduce_axis], np.int64), "axes")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def test_channel_mean_guide_is_a_conv_with_onnxruntimes_values(tmp_path, caplog):
    path = _guide_model(tmp_path / "guide.onnx")
    rng = np.random.default_rng(0)
    feeds = {"src": rng.random((1, 3, 20, 28), dtype=np.float32),
             "coeffs": rng.standard_normal((1, 4, 20, 28)).astype(np.float32)}
    caplog.set_level(logging.DEBUG, logger="mtc")

    got = OpenVinoBackend(path, cache=False).run(dict(feeds))["out"]

    expected = OrtBackend(path).run(dict(feeds))["out"]
    assert "1 guide(s) as 1x1 convolutions" in caplog.text
    assert got.shape == expected.shape == (1, 4, 20, 28)
    assert np.abs(got - expected).max() < 1e-6


def test_only_channel_mean_guides_at_the_frame_size_are_rewritten(tmp_path):
    import openvino as ov

    def static(path):
        model = ov.Core().read_model(path)
        model.reshape({"src": [1, 3, 20, 28], "coeffs": [1, 4, 20, 28]} if "spatial" not in path.name
                      else {"src": [1, 3, 20, 28], "coeffs": [1, 3, 20, 29]})
        return model

    model = static(_guide_model(tmp_path / "guide.onnx"))
    assert guide_as_conv(model, {(40, 56)}) == 0  # another frame size
    assert guide_as_conv(static(_guide_model(tmp_path / "spatial.onnx", reduce_axis=3)), {(20, 28)}) == 0
    assert guide_as_conv(model, {(20, 28)}) == 1
    types = [op.get_type_name() for op in model.get_ordered_ops()]
    assert "ReduceMean" not in types and "Concat" not in types and "Convolution" in types


@pytest.mark.parametrize("artifact, ratio, guides", [("rvm_artifact", 0.25, 1), ("rvm_artifact", 1.0, 2),
                                                     ("rvm_alpha_artifact", 0.25, 0)])
def test_rvm_guides_become_convs_and_alpha_matches_onnxruntime(request, caplog, artifact, ratio, guides):
    # At ratio 0.25 only the full-resolution guide is at the frame size; at ratio 1 the refiner's
    # low-resolution guide is too. The alpha-only tail needs the mean alone, not a concat.
    from calib_data.builtin_clip import ClipSpec, builtin_clip

    frames = builtin_clip(ClipSpec(width=256, height=144, frames=3))
    caplog.set_level(logging.DEBUG, logger="mtc")
    alphas = {}
    for backend in ("openvino", "onnxruntime"):
        session = mtc.runtime.load(request.getfixturevalue(artifact), backend=backend, downsample_ratio=ratio)
        alphas[backend] = np.stack([session.process(frame).alpha.copy() for frame in frames])
    assert f"{guides} guide(s) as 1x1 convolutions" in caplog.text
    assert np.abs(alphas["openvino"] - alphas["onnxruntime"]).max() < 1e-4
