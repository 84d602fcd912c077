"""INT8 that knows transformers: linear layers (MatMul with a constant operand, Gemm) get Q/DQ
with per-output-channel weights; LayerNorm, Softmax and GELU stay float; attention's own
MatMuls only when asked; the per-layer fit, the fallback and the recipe work on such graphs."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from mtc.artifact.manifest import MANIFEST_NAME, Manifest, ModelIO, Preprocess, QuantRecipe, TensorSpec, file_entry
from mtc.errors import MtcError
from mtc.quant.affine import apply_corrections, fit_layers
from mtc.quant.config import QUANTIZABLE_OPS, Gates, Int8Config
from mtc.quant.data_plan import DataPlan
from mtc.quant.pipeline import quantize_artifact
from mtc.quant.qdq import RULES, insert_qdq, plan_qdq
from mtc.quant.ranges import expose_tensors

torch = pytest.importorskip("torch")

from mtc.export.torch_export import export_onnx  # noqa: E402

GATE_MAD = 3.0  # x 1e-3: between the outlier model's all-INT8 error and its error with fc1 in float
FLOAT_OPS = ("LayerNormalization", "Softmax", "Erf")  # LayerNorm, attention's softmax, GELU's erf


class TinyViT(torch.nn.Module):
    """Patch embedding, one pre-norm transformer block (two heads), a conv head: the op mix of a
    Swin stage at toy size."""

    def __init__(self, dim=16, heads=2, patch=4):
        super().__init__()
        self.heads, self.patch = heads, patch
        self.embed = torch.nn.Conv2d(3, dim, patch, stride=patch)
        self.norm1 = torch.nn.LayerNorm(dim)
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)
        self.norm2 = torch.nn.LayerNorm(dim)
        self.fc1 = torch.nn.Linear(dim, 2 * dim)
        self.fc2 = torch.nn.Linear(2 * dim, dim)
        self.head = torch.nn.Conv2d(dim, 1, 3, padding=1)

    def forward(self, src):
        x = self.embed(src)
        n, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        q, k, v = self.qkv(self.norm1(t)).reshape(n, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attention = (q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5).softmax(-1)
        t = t + self.proj((attention @ v).transpose(1, 2).reshape(n, h * w, c))
        t = t + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm2(t))))
        y = self.head(t.transpose(1, 2).reshape(n, c, h, w))
        return torch.sigmoid(torch.nn.functional.interpolate(y, scale_factor=self.patch, mode="bilinear"))


def _tiny_vit_onnx(seed=0, size=(32, 48), outlier=False):
    """The exported TinyViT; `outlier` gives fc1's input one huge channel that fc1 scales back
    down (the same float function), so per-tensor INT8 on that input wipes out the others."""
    torch.manual_seed(seed)
    net = TinyViT()
    if outlier:
        with torch.no_grad():
            net.norm2.weight[0] *= 1000.0
            net.norm2.bias[0] *= 1000.0
            net.fc1.weight[:, 0] /= 1000.0
    model = export_onnx(net, (torch.randn(1, 3, *size),), input_names=["src"], output_names=["pha"])
    return onnx.shape_inference.infer_shapes(model)


@pytest.fixture(scope="module")
def vit():
    return _tiny_vit_onnx()


def _by_name(model):
    return {n.name: n for n in model.graph.node}


def _feeds(count=4, size=(32, 48), seed=1):
    rng = np.random.default_rng(seed)
    return [{"src": rng.standard_normal((1, 3, *size)).astype(np.float32)} for _ in range(count)]


def _ranges(model, tensors, feeds):
    session = ort.InferenceSession(expose_tensors(model, tensors).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    lo, hi = dict.fromkeys(tensors, 0.0), dict.fromkeys(tensors, 0.0)
    for feed in feeds:
        for name, value in zip(names, session.run(None, feed)):
            if name in lo:
                lo[name], hi[name] = min(lo[name], float(value.min())), max(hi[name], float(value.max()))
    return {t: (lo[t], hi[t]) for t in tensors}


def test_the_config_knows_exactly_the_ops_that_have_rules():
    assert set(QUANTIZABLE_OPS) == set(RULES)
    with pytest.raises(MtcError, match="no INT8 rule for op type Softmax"):
        Int8Config(op_types=("Conv", "Softmax"))


def test_linear_layers_get_per_output_channel_weights_and_attention_stays_float(vit):
    nodes = _by_name(vit)
    plan = plan_qdq(vit, op_types=("Conv", "MatMul", "Gemm"), quantize_outputs=True)
    planned = {n.node: n for n in plan.nodes}
    kinds = sorted(nodes[n].op_type for n in planned)
    linear = [n for n in planned.values() if nodes[n.node].op_type == "MatMul"]

    assert kinds == ["Conv", "Conv", "MatMul", "MatMul", "MatMul", "MatMul"]  # embed, head; qkv, proj, fc1, fc2
    for layer in linear:
        weight = next(i for i in vit.graph.initializer if i.name == nodes[layer.node].input[1])
        assert layer.weights == ((1, len(weight.dims) - 1),)  # (in, out): output channels are the last axis
        assert layer.output is None  # its readers (bias Add, GELU, residual) run in float
    all_matmuls = [n for n in vit.graph.node if n.op_type == "MatMul"]
    assert len(all_matmuls) == 6  # the two of attention are left alone ...
    with_attention = plan_qdq(vit, op_types=("MatMul",), activation_matmuls=True)
    assert len(with_attention.nodes) == 6  # ... unless asked
    assert {len(n.inputs) for n in with_attention.nodes} == {1, 2}


def test_gemm_weight_axis_follows_transb():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    ys = [helper.make_tensor_value_info(f"y{t}", TensorProto.FLOAT, [2, 3]) for t in (0, 1)]
    inits = [numpy_helper.from_array(np.ones((4, 3), np.float32), "b0"),
             numpy_helper.from_array(np.ones((3, 4), np.float32), "b1")]
    nodes = [helper.make_node("Gemm", ["x", "b0"], ["y0"], name="g0", transB=0),
             helper.make_node("Gemm", ["x", "b1"], ["y1"], name="g1", transB=1)]
    model = onnx.shape_inference.infer_shapes(helper.make_model(helper.make_graph(nodes, "g", [x], ys, inits)))
    plan = {n.node: n.weights for n in plan_qdq(model, op_types=("Gemm",)).nodes}
    assert plan == {"g0": ((1, 1),), "g1": ((1, 0),)}


def test_quantized_transformer_runs_close_to_float_with_layernorm_softmax_gelu_in_float(vit):
    feeds = _feeds()
    plan = plan_qdq(vit, op_types=("Conv", "MatMul"), quantize_outputs=True)
    ranges = _ranges(vit, plan.activation_tensors(), feeds)
    quantized = insert_qdq(vit, plan, ranges, activation_type="uint8")
    writers = {o: n for n in quantized.graph.node for o in n.output}

    for node in quantized.graph.node:
        if node.op_type in FLOAT_OPS:  # no float op reads a dequantized tensor
            assert all(writers.get(i) is None or writers[i].op_type != "DequantizeLinear" for i in node.input)
    weights = [i for i in quantized.graph.initializer if i.name.endswith("__int8")]
    assert len(weights) == 6 and all(i.data_type == TensorProto.INT8 for i in weights)

    # What the placement costs: the Q/DQ arithmetic exactly (optimizations off, DequantizeLinear
    # into float ops). Integer kernels: with 7-bit weights, which every CPU class computes as that
    # arithmetic; AVX2 without VNNI saturates on 8-bit ones (measured 13x the quantization error
    # here, docs/quantization.md "Integer kernels and 7-bit weights").
    exact = ort.SessionOptions()
    exact.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    float_session = ort.InferenceSession(vit.SerializeToString(), providers=["CPUExecutionProvider"])
    simulated = ort.InferenceSession(quantized.SerializeToString(), exact, providers=["CPUExecutionProvider"])
    seven_bit = insert_qdq(vit, plan, ranges, activation_type="uint8", weight_bits=7)
    kernels = ort.InferenceSession(seven_bit.SerializeToString(), providers=["CPUExecutionProvider"])
    for feed in feeds:
        expected = float_session.run(None, feed)[0]
        for session in (simulated, kernels):
            actual = session.run(None, feed)[0]
            assert np.abs(actual - expected).mean() < 0.01  # a real but small error ...
            assert np.abs(actual - expected).max() > 0  # ... not a float graph in disguise


def test_the_layer_fit_measures_linear_layers_and_corrects_only_where_it_folds_exactly(vit):
    feeds = _feeds()
    plan = plan_qdq(vit, op_types=("Conv", "MatMul"))
    ranges = _ranges(vit, plan.activation_tensors(), feeds)
    fits = fit_layers(vit, plan, ranges, feeds, activation_type="uint8")
    nodes = _by_name(vit)
    matmuls = [n for n in fits if nodes[n].op_type == "MatMul"]

    assert len(matmuls) == 4 and len(fits) == 6
    for name in matmuls:
        out_features = next(i for i in vit.graph.initializer if i.name == nodes[name].input[1]).dims[-1]
        assert fits[name].gamma.shape == (out_features,)  # channels on the last axis
        assert np.all(fits[name].gamma == 1) and np.all(fits[name].beta == 0)  # no bias input to fold beta into
        assert fits[name].uncorrected_error > 0
    quantized = insert_qdq(vit, plan, ranges, activation_type="uint8")
    corrected = apply_corrections(quantized, fits)
    assert [len(n.input) for n in corrected.graph.node if n.op_type == "MatMul"] == [2] * 6


def _vit_artifact(folder, recipe, outlier=False):
    folder.mkdir()
    onnx.save(_tiny_vit_onnx(size=(48, 64), outlier=outlier), str(folder / "model.onnx"))
    io = ModelIO(inputs=(TensorSpec("src", "image", shape=(1, 3, 48, 64)),),
                 outputs=(TensorSpec("pha", "alpha", shape=(1, 1, 48, 64)),),
                 preprocess=Preprocess(resize="fixed", fixed_size=(48, 64)))
    manifest = Manifest(model="toyvit", variant="v", task="image_matting", license="MIT", model_file="model.onnx",
                        io=io, files={"model.onnx": file_entry(folder / "model.onnx")}, quantization=recipe)
    (folder / MANIFEST_NAME).write_text(manifest.to_json())
    return folder


def test_the_recipe_decides_the_op_types_and_the_fallback_finds_the_linear_layer_that_needs_it(tmp_path):
    recipe = QuantRecipe(int8_op_types=("Conv", "MatMul", "Gemm"))
    source = _vit_artifact(tmp_path / "vit", recipe, outlier=True)
    data = DataPlan(calib_frames=4, check_frames=4, settings=((64, 48, None),))

    outcome = quantize_artifact(source, tmp_path / "int8", precision="int8",
                                config=Int8Config(method="minmax", activation_type="uint8"),
                                gates=Gates(max_mad=GATE_MAD, max_dtssd=None), data=data)
    report = outcome.report["int8"]

    assert report["op_types"] == ["Conv", "MatMul", "Gemm"]
    assert report["quantized_by_op"] == {"Conv": 2, "MatMul": 4}
    assert not report["all_int8_check"]["passed"]  # the case is built to need fallback
    assert outcome.passed and report["fallback_layers"] == ["/fc1/MatMul"]
    isolated = report["isolated_layer_error"]
    assert max(isolated, key=isolated.get) == "/fc1/MatMul"  # the per-layer fit sees it too

    quantized = onnx.load(str(tmp_path / "int8" / "model.onnx"))
    dequantized = {o for n in quantized.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    int8_matmuls = {n.name for n in quantized.graph.node
                    if n.op_type == "MatMul" and any(i in dequantized for i in n.input)}
    assert int8_matmuls == {"/qkv/MatMul", "/proj/MatMul", "/fc2/MatMul"}
    manifest = json.loads((tmp_path / "int8" / MANIFEST_NAME).read_text())
    assert manifest["quantization"]["int8_op_types"] == ["Conv", "MatMul", "Gemm"]
    assert manifest["precision"]["excluded_nodes"] == ["/fc1/MatMul"]


def test_without_the_recipe_a_model_keeps_its_linear_layers_in_float(tmp_path):
    source = _vit_artifact(tmp_path / "vit", QuantRecipe())
    data = DataPlan(calib_frames=2, check_frames=2, settings=((64, 48, None),))
    outcome = quantize_artifact(source, tmp_path / "int8", precision="int8",
                                config=Int8Config(method="minmax", activation_type="uint8"),
                                gates=Gates(max_mad=None, max_dtssd=None), data=data)
    assert outcome.report["int8"]["quantized_by_op"] == {"Conv": 2}


def _mtc(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "mtc", *map(str, args)], capture_output=True, text=True)


def test_op_types_on_the_command_line_override_the_recipe(tmp_path):
    source = _vit_artifact(tmp_path / "vit", QuantRecipe(int8_op_types=("Conv", "MatMul", "Gemm")))
    done = _mtc("quantize", source, "-o", tmp_path / "int8", "--int8", "--op-types", "Conv", "--calib-frames", "2",
                "--max-mad", "50", "--max-dtssd", "50")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "int8" / "report.json").read_text())
    assert report["int8"]["quantized_by_op"] == {"Conv": 2}

    refused = _mtc("quantize", source, "-o", tmp_path / "bad", "--int8", "--op-types", "Conv,LayerNormalization")
    assert refused.returncode == 2 and "LayerNormalization is not one of" in refused.stderr
    assert not (tmp_path / "bad").exists()
