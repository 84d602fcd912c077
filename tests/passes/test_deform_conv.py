"""DeformConv on every backend: ONNX Runtime's own kernel is the reference; OpenVINO runs its own
DeformableConvolution (mtc.passes.openvino.deform_conv); an ONNX Runtime without the kernel runs
the exact decomposition (mtc.passes.deform_conv). Each gives the reference's values, and each
backend gets the form it runs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from mtc.artifact.manifest import MANIFEST_NAME, Manifest, ModelIO, Precision, Preprocess, TensorSpec, file_entry
from mtc.errors import MtcError
from mtc.passes.deform_conv import decompose_deform_conv
from mtc.passes.openvino.deform_conv import deform_conv_as_openvino_op, zero_padded_sampling

SIZE = 24  # static height and width: the decomposition needs them


def _deform_model(kernel: int, *, channels: int = 4, seed: int = 0, modulated: bool = True) -> onnx.ModelProto:
    """src (N,3,SIZE,SIZE) -> a stem conv -> DeformConv (offsets from a conv; `modulated`: a mask
    from a sigmoid and a bias) -> 1x1 conv -> sigmoid: alpha. The offsets reach several pixels, so
    taps land outside the image and the zero padding is exercised."""
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
        helper.make_node("DeformConv", ["stem", "dcn_w", "offset"] + (["dcn_b", "mask"] if modulated else []), ["deformed"],
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


@pytest.mark.parametrize("kernel", [1, 3, 7])
@pytest.mark.parametrize("modulated", [True, False])
def test_openvinos_deform_conv_matches_onnxruntimes_op(kernel, modulated):
    """OpenVINO's own DeformableConvolution, once zero-padded, gives ONNX Runtime's values; read
    without that step it does not (taps past the border are sampled differently)."""
    ov = pytest.importorskip("openvino")
    model = _deform_model(kernel, seed=kernel, modulated=modulated)
    rewritten, count = deform_conv_as_openvino_op(model)
    x = np.random.default_rng(20 + kernel).random((2, 3, SIZE, SIZE), dtype=np.float32)
    core = ov.Core()

    def on_openvino(padded: bool) -> np.ndarray:
        graph = core.read_model(rewritten.SerializeToString())
        graph.add_outputs(["deformed"])
        rewrites = zero_padded_sampling(graph) if padded else 0
        assert rewrites == padded
        compiled = core.compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return compiled({"src": x})["deformed"]

    native = _run(model, x, "deformed")
    peak = np.abs(native).max()
    assert count == 1 and {n.op_type for n in rewritten.graph.node}.isdisjoint({"DeformConv"})
    assert peak > 0.5
    assert np.abs(on_openvino(padded=True) - native).max() < 1e-5 * peak  # float rounding: sums in another order
    assert np.abs(on_openvino(padded=False) - native).max() > 1e-2 * peak


def _artifact(folder, model: onnx.ModelProto):
    folder.mkdir()
    onnx.save(model, str(folder / "model.onnx"))
    io = ModelIO(inputs=(TensorSpec("src", "image", layout="NCHW", value_range=(0.0, 1.0)),),
                 outputs=(TensorSpec("alpha", "alpha", layout="NCHW", value_range=(0.0, 1.0)),),
                 preprocess=Preprocess(resize="fixed", fixed_size=(SIZE, SIZE)))
    manifest = Manifest(model="deform", variant="test", task="image_matting", license="MIT", model_file="model.onnx",
                        io=io, precision=Precision(), files={"model.onnx": file_entry(folder / "model.onnx")})
    (folder / MANIFEST_NAME).write_text(manifest.to_json())
    return folder


def test_each_backend_gets_the_form_it_runs(tmp_path, monkeypatch):
    """ONNX Runtime (1.31 on) runs the op itself; OpenVINO, which cannot read it, runs its own
    DeformableConvolution, zero-padded; an older ONNX Runtime runs the decomposition. All give
    the same matte."""
    ov = pytest.importorskip("openvino")
    import onnxruntime

    import mtc.runtime
    from mtc.backends.onnxruntime.session import with_onnx_passes

    monkeypatch.setenv("MTC_CACHE", str(tmp_path / "cache"))
    folder = _artifact(tmp_path / "deform", _deform_model(3))
    frame = np.random.default_rng(3).integers(0, 256, (40, 56, 3), dtype=np.uint8)

    on_ort = mtc.runtime.load(folder, backend="onnxruntime")
    on_openvino = mtc.runtime.load(folder, backend="openvino")
    ort_alpha = on_ort.process(frame).alpha.copy()
    ov_alpha = on_openvino.process(frame).alpha.copy()
    ov_ops = {op.get_type_name(): op for op in on_openvino.backend.model.get_ordered_ops()}
    as_given = with_onnx_passes(folder / "model.onnx")
    monkeypatch.setattr(onnxruntime, "__version__", "1.30.1")
    for_older = onnx.load_from_string(with_onnx_passes(folder / "model.onnx"))
    older_alpha = mtc.runtime.load(folder, backend="onnxruntime").process(frame).alpha.copy()

    assert as_given == str(folder / "model.onnx")  # this ONNX Runtime: the file as it is
    assert "DeformConv" in {node.op_type for node in onnx.load(str(folder / "model.onnx")).graph.node}
    with pytest.raises(Exception, match="DeformConv"):  # what OpenVINO would face without the passes
        ov.Core().read_model(str(folder / "model.onnx"))
    assert ov_ops["DeformableConvolution"].get_attributes()["bilinear_interpolation_pad"]
    assert np.abs(ov_alpha - ort_alpha).max() < 1e-5
    assert "DeformConv" not in {node.op_type for node in for_older.graph.node}
    assert np.abs(older_alpha - ort_alpha).max() < 1e-5


def test_on_a_bf16_cpu_openvinos_deform_conv_samples_in_fp32():
    """The reason OpenVINO gets its own op: in BF16 the decomposition's sampling positions were
    rounded to 8 mantissa bits; the DeformableConvolution node runs in FP32 inside a BF16 model."""
    ov = pytest.importorskip("openvino")
    from mtc.backends.cpu import has_bf16

    if not has_bf16():
        pytest.skip("this CPU has no BF16: OpenVINO runs everything in FP32 here")
    core = ov.Core()
    graph = core.read_model(deform_conv_as_openvino_op(_deform_model(3))[0].SerializeToString())
    zero_padded_sampling(graph)
    compiled = core.compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
    precisions = {op.get_rt_info()["layerType"].astype(str): op.get_rt_info()["runtimePrecision"].astype(str)
                  for op in compiled.get_runtime_model().get_ordered_ops()}

    assert precisions.get("Convolution") == "bf16"  # the model around it does run in BF16
    assert precisions["DeformableConvolution"] == "f32"


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
