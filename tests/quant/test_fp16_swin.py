"""The FP16 overflow guard on Swin attention: what it measures and keeps in FP32 where trained
transformers grow large activations (a residual stream in the hundreds, attention logits past
FP16's range), and that the kept ops are exactly what stands between FP16 and a broken matte.

The official checkpoints cannot be downloaded here, so the magnitudes are made: a reduced Swin
stage (our mtc.models.nn.swin, plain and shifted windows) whose input tokens and query/key
weights are scaled up. The guard's rule is the measured one mtc quantize uses."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from mtc.quant.fp16 import FP16_MAX, HEADROOM, activation_magnitudes, convert_to_fp16, overflow_prone_nodes
from mtc.quant.ranges import expose_tensors

torch = pytest.importorskip("torch")

from mtc.export.torch_export import export_onnx  # noqa: E402
from mtc.models.nn.swin import SwinStage  # noqa: E402

DIM, SIDE, WINDOW = 16, 8, 4
TOKEN_SCALE = 300.0  # the residual stream's size: LayerNorm then squares ~1e5, past FP16
QK_SCALE = 200.0  # query and key weights: logits past FP16's 65504


class Stage(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stage = SwinStage(DIM, depth=2, heads=2, window=WINDOW, mlp_ratio=4.0, downsample=False)

    def forward(self, tokens):
        return self.stage(tokens, SIDE, SIDE)[0]


def _swin_stage(large: bool) -> onnx.ModelProto:
    torch.manual_seed(0)
    module = Stage()
    if large:
        with torch.no_grad():
            for block in module.stage.blocks:
                block.attn.qkv.weight[: 2 * DIM] *= QK_SCALE
    tokens = torch.randn(1, SIDE * SIDE, DIM)
    model = export_onnx(module, (tokens,), input_names=["tokens"], output_names=["out"])
    return onnx.shape_inference.infer_shapes(model)


def _feeds(large: bool, count=3):
    rng = np.random.default_rng(3)
    scale = TOKEN_SCALE if large else 1.0
    return [{"tokens": (rng.standard_normal((1, SIDE * SIDE, DIM)) * scale).astype(np.float32)} for _ in range(count)]


def _run(model, feed):
    """The first output, or the last one (an exposed tensor) where several."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[-1]


def _relative_error(actual, expected):
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def test_the_guard_keeps_large_attention_logits_and_layernorms_in_fp32_where_fp16_cannot_hold_them():
    model, feeds = _swin_stage(large=True), _feeds(large=True)
    kinds = {n.name: n.op_type for n in model.graph.node}
    magnitudes = activation_magnitudes(model, feeds)
    kept = overflow_prone_nodes(model, magnitudes)
    kept_kinds = {kinds[n] for n in kept}

    scores = [n for n in model.graph.node if n.op_type == "MatMul" and "attn" in n.name
              and all(i not in {t.name for t in model.graph.initializer} for i in n.input)]
    assert max(magnitudes[n.output[0]] for n in scores) > FP16_MAX  # logits past FP16 (measured)
    assert "LayerNormalization" in kept_kinds  # input ~300: its variance overflows
    assert {n.name for n in scores[::2]} <= set(kept)  # q @ k^T of both blocks (the other is attn @ v)

    expected = [_run(model, f) for f in feeds]
    guarded = convert_to_fp16(model, keep_fp32=kept)
    guarded_out = [_run(guarded, f) for f in feeds]
    assert all(np.isfinite(o).all() for o in guarded_out)
    assert max(_relative_error(a, e) for a, e in zip(guarded_out, expected)) < 1e-2

    # Without the guard the logits are FP16 tensors, and FP16 cannot hold them. (ONNX Runtime's
    # CPU kernels run FP16 ops in FP32 and may carry a value across unstored, so the matte itself
    # can survive there; a GPU computing in FP16 cannot. The stored tensor shows what it would hold.)
    naive = convert_to_fp16(model)
    logits = max((n.output[0] for n in scores), key=magnitudes.get)
    stored = [_run(expose_tensors(naive, [logits]), f) for f in feeds]
    assert stored[0].dtype == np.float16 and not all(np.isfinite(s).all() for s in stored)
    kept_logits = [_run(expose_tensors(guarded, [logits]), f) for f in feeds]
    assert kept_logits[0].dtype == np.float32 and all(np.isfinite(s).all() for s in kept_logits)


def test_at_ordinary_magnitudes_the_guard_keeps_nothing_and_fp16_is_close():
    model, feeds = _swin_stage(large=False), _feeds(large=False)
    magnitudes = activation_magnitudes(model, feeds)

    assert max(magnitudes.values()) < FP16_MAX / HEADROOM
    assert overflow_prone_nodes(model, magnitudes) == []
    converted = convert_to_fp16(model)
    assert max(_relative_error(_run(converted, f), _run(model, f)) for f in feeds) < 1e-2
