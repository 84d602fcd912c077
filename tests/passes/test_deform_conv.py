"""The DeformConv decomposition OpenVINO's backend runs: the same values as ONNX Runtime's own
DeformConv kernel, and each backend gets the form it runs (ONNX Runtime the op, OpenVINO the
decomposition)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from mtc.artifact.manifest import MANIFEST_NAME, Manifest, ModelIO, Precision, Preprocess, TensorSpec, file_entry
from mtc.errors import MtcError
from mtc.passes.openvino.deform_conv import decompose_deform_conv

SIZE = 24  # static height and width: the decomposition needs them


def _deform_model(kernel: int, *, channels: int = 4, seed: int = 0) -> onnx.ModelProto:
    """src (N,3,SIZE,SIZE) -> a stem conv -> modulated DeformConv (offsets from a conv, mask from a
    sigmoid, with bias) -> 1x1 conv -> sigmoid: alpha. The offsets reach several pixels, so taps
    land outside the image and the zero padding is exercised."""
    rng = np.random.default_rng(seed)
    taps = kernel * kernel

    def init(name, shape, scale):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [init("stem_w", (channels, 3, 3, 3), 0.5), init("off_w", (2 * taps, channels, 3, 3), 1.5),
             init("mask_w", (taps, channels, 3, 3), 0.5), init("dcn_w", (channels, channels, kernel, kernel), 0.3),
             init("dcn_b", (channels,), 0.2), init("head_w", (1, channels, 1, 1), 0.5)]
    nodes = [
        helper.make_node("Conv", ["src", "stem_w"], ["stem"], pads=[1, 1, 1, 1], name="stem"),
        helper.make_node("Conv", ["stem", "off_w"], ["offset"], pads=[1, 1, 1, 1], name="offset"),
        helper.make_node("Conv", ["stem", "mask_w"], ["mask_logit"], pads=[1, 1, 1, 1], name="mask_conv"),
        helper.make_node("Sigmoid", ["mask_logit"], ["mask"], name="mask"),
        helper.make_node("DeformConv", ["stem", "dcn_w", "offset", "dcn_b", "mask"], ["deformed"],
                         kernel_shape=[kernel, kernel], pads=[kernel // 2] * 4, name="dcn"),
        helper.make_node("Conv", ["deformed", "head_w"], ["logit"], name="head"),
        helper.make_node("Sigmoid", ["logit"], ["alpha"], name="alpha"),
    ]
    graph = helper.make_graph(nodes, "deform", [helper.make_tensor_value_info("src", TensorProto.FLOAT,
                                                                              ["n", 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("alpha", TensorProto.FLOAT, ["n", 1, SIZE, SIZE])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def _run(model: onnx.ModelProto, x: np.ndarray, output: str = "alpha") -> np.ndarray:
    """The value of tensor `output` (made a graph output if it is not one)."""
    probed = onnx.ModelProto()
    probed.CopyFrom(model)
    if output not in {o.name for o in probed.graph.output}:
        probed.graph.output.append(helper.make_tensor_value_info(output, TensorProto.FLOAT, None))
    session = ort.InferenceSession(probed.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([output], {"src": x})[0]


@pytest.mark.parametrize("kernel", [1, 3, 7])
def test_decomposed_deform_conv_matches_onnxruntimes_op(kernel):
    model = _deform_model(kernel, seed=kernel)
    offsets_reach = np.abs(_run(model, np.ones((1, 3, SIZE, SIZE), np.float32), "offset")).max()
    rewritten, count = decompose_deform_conv(model)
    onnx.checker.check_model(rewritten)
    x = np.random.default_rng(10 + kernel).random((2, 3, SIZE, SIZE), dtype=np.float32)  # batch 2: still dynamic

    native, decomposed = _run(model, x, "deformed"), _run(rewritten, x, "deformed")

    assert offsets_reach > 3  # taps fall outside the image: the padding path runs
    assert count == 1 and "DeformConv" not in {node.op_type for node in rewritten.graph.node}
    assert np.abs(native).max() > 0.5  # a real signal, not a near-zero layer
    assert np.abs(decomposed - native).max() < 1e-5


def test_graphs_without_deform_conv_are_left_alone_and_unsupported_forms_refused():
    plain = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])]))
    strided = helper.make_model(helper.make_graph(
        [helper.make_node("DeformConv", ["x", "w", "offset"], ["y"], kernel_shape=[3, 3], strides=[2, 2])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 2, 3, 3]),
         helper.make_tensor_value_info("offset", TensorProto.FLOAT, [1, 18, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]), opset_imports=[helper.make_opsetid("", 19)])

    assert decompose_deform_conv(plain) == (plain, 0)
    with pytest.raises(MtcError, match="stride 1"):
        decompose_deform_conv(strided)


def test_each_backend_gets_the_form_it_runs(tmp_path, monkeypatch):
    """ONNX Runtime runs the op itself; OpenVINO, which cannot read it, runs the decomposition
    through its graph passes, and both give the same matte."""
    ov = pytest.importorskip("openvino")
    import mtc.runtime

    monkeypatch.setenv("MTC_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "deform"
    folder.mkdir()
    onnx.save(_deform_model(3), str(folder / "model.onnx"))
    io = ModelIO(inputs=(TensorSpec("src", "image", layout="NCHW", value_range=(0.0, 1.0)),),
                 outputs=(TensorSpec("alpha", "alpha", layout="NCHW", value_range=(0.0, 1.0)),),
                 preprocess=Preprocess(resize="fixed", fixed_size=(SIZE, SIZE)))
    manifest = Manifest(model="deform", variant="test", task="image_matting", license="MIT", model_file="model.onnx",
                        io=io, precision=Precision(), files={"model.onnx": file_entry(folder / "model.onnx")})
    (folder / MANIFEST_NAME).write_text(manifest.to_json())
    frame = np.random.default_rng(3).integers(0, 256, (40, 56, 3), dtype=np.uint8)

    on_ort = mtc.runtime.load(folder, backend="onnxruntime")
    on_openvino = mtc.runtime.load(folder, backend="openvino")
    ort_alpha = on_ort.process(frame).alpha.copy()
    ov_alpha = on_openvino.process(frame).alpha.copy()

    assert "DeformConv" in {node.op_type for node in onnx.load(str(folder / "model.onnx")).graph.node}
    with pytest.raises(Exception, match="DeformConv"):  # what OpenVINO would face without the pass
        ov.Core().read_model(str(folder / "model.onnx"))
    assert np.abs(ov_alpha - ort_alpha).max() < 1e-5


def test_an_fp16_deform_conv_is_decomposed_in_float32_and_cast_back():
    """An FP16 artifact's DeformConv (float16 inputs) decomposes too: the arithmetic runs in
    float32 between casts, so OpenVINO, which has no DeformConv, reads the graph (its element
    types used to clash: float32 constants against float16 activations)."""
    from mtc.quant.fp16 import convert_to_fp16

    model = onnx.shape_inference.infer_shapes(_deform_model(3, seed=3))
    fp16 = convert_to_fp16(model)
    assert any(n.op_type == "DeformConv" for n in fp16.graph.node)
    rewritten, count = decompose_deform_conv(fp16)
    onnx.checker.check_model(rewritten)
    x = np.random.default_rng(13).random((1, 3, SIZE, SIZE), dtype=np.float32)

    assert count == 1 and "DeformConv" not in {node.op_type for node in rewritten.graph.node}
    assert np.abs(_run(rewritten, x) - _run(model, x)).max() < 5e-3  # FP16 activations around it, not the op
    openvino = pytest.importorskip("openvino")
    core = openvino.Core()  # pinned to f32: on a BF16 CPU OpenVINO's default would round everything to BF16
    compiled = core.compile_model(core.read_model(rewritten.SerializeToString()), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert np.abs(compiled({"src": x})[compiled.output(0)] - _run(model, x)).max() < 5e-3
