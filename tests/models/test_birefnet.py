"""BiRefNet / ToonOut: official key layout, checkpoint formats, the deformable conv's two ONNX
forms, and PyTorch vs ONNX Runtime parity.

Everything that runs does so on a reduced BiRefNet (a Swin of width 8, two blocks per stage so
the shifted windows are exercised) at 96x64, where every part of the full model still runs:
the half-size pass pads odd stage sizes, the windows pad the maps, and the decoder's widths
follow from the backbone as in the official code. The full-size models are only built on the
meta device (no memory) to check their key layout; the official checkpoints cannot be
downloaded here.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from torch.nn import functional as F  # noqa: E402

import mtc.models.birefnet as birefnet  # noqa: E402  (registers the family)
import mtc.models.birefnet.net as birefnet_net  # noqa: E402
from mtc.errors import MtcError  # noqa: E402
from mtc.export.torch_export import save_random_checkpoint  # noqa: E402
from mtc.models.birefnet.checkpoint import read_checkpoint  # noqa: E402
from mtc.models.birefnet.deform_conv import DeformableConv2d, deform_conv2d, set_onnx_form  # noqa: E402
from mtc.models.registry import get_model  # noqa: E402
from mtc.passes.deform_conv import decompose_deform_conv  # noqa: E402
from mtc.passes.openvino.deform_conv import deform_conv_as_openvino_op, zero_padded_sampling  # noqa: E402

ort = pytest.importorskip("onnxruntime")

SMALL = birefnet.SwinConfig(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), window_size=4)
SIZE = (96, 64)  # (height, width): the half-size pass's last stage is 3x2 -> 2x1, padded

# Facts from the official code, per unit of the key layout:
SWIN_BLOCK_KEYS = 14  # norm1 (2), bias table, position index, qkv (2), proj (2), norm2 (2), fc1 (2), fc2 (2)
SWIN_FIXED_KEYS = 4 + 3 * 3 + 4 * 2  # patch_embed proj + norm, 3 patch mergings (reduction, norm), norm0..3
BN_KEYS = 5  # weight, bias, running_mean, running_var, num_batches_tracked
ASPP_KEYS = 4 * (5 + BN_KEYS) + 1 + BN_KEYS + 1 + BN_KEYS  # 4 deformable branches, pooling conv + BN, fuse conv + BN
DEC_BLOCK_KEYS = 2 + BN_KEYS + ASPP_KEYS + 2 + BN_KEYS  # conv_in, bn_in, dec_att, conv_out, bn_out
DECODER_KEYS = (5 * 4 + 4 * DEC_BLOCK_KEYS + 2  # ipt_blk5..1, decoder_block4..1, conv_out1
                + 3 * 2 + 3 * 2 + 3 * (2 + BN_KEYS) + 3 * 2 + 3 * 2)  # lateral, ms_spvn, gdt convs / pred / attn

# Key names and shapes of the official checkpoints, derived from config.py and the modules.
OFFICIAL_KEYS = {
    "swin_v1_l": {
        "bb.patch_embed.proj.weight": (192, 3, 4, 4),
        "bb.layers.2.blocks.17.attn.relative_position_bias_table": (529, 24),
        "bb.layers.2.blocks.17.attn.relative_position_index": (144, 144),
        "bb.layers.3.blocks.1.mlp.fc1.weight": (6144, 1536),
        "bb.layers.2.downsample.reduction.weight": (1536, 3072),
        "bb.norm3.weight": (1536,),
        "squeeze_module.0.conv_in.weight": (64, 5760, 3, 3),  # 3072 + 384 + 768 + 1536 in
        "squeeze_module.0.conv_out.weight": (3072, 64, 3, 3),
        "squeeze_module.0.dec_att.aspp1.atrous_conv.offset_conv.weight": (2, 64, 1, 1),
        "squeeze_module.0.dec_att.aspp_deforms.2.atrous_conv.offset_conv.weight": (98, 64, 7, 7),
        "squeeze_module.0.dec_att.aspp_deforms.2.atrous_conv.modulator_conv.weight": (49, 64, 7, 7),
        "squeeze_module.0.dec_att.aspp_deforms.1.atrous_conv.regular_conv.weight": (256, 64, 3, 3),
        "squeeze_module.0.dec_att.global_avg_pool.1.weight": (256, 64, 1, 1),
        "squeeze_module.0.dec_att.global_avg_pool.2.running_var": (256,),
        "squeeze_module.0.dec_att.conv1.weight": (64, 1280, 1, 1),
        "decoder.ipt_blk5.conv1.weight": (64, 3072, 3, 3),
        "decoder.ipt_blk5.conv_out.weight": (384, 64, 3, 3),
        "decoder.ipt_blk1.conv1.weight": (64, 3, 3, 3),
        "decoder.ipt_blk1.conv_out.weight": (48, 64, 3, 3),
        "decoder.decoder_block4.conv_in.weight": (64, 3456, 3, 3),
        "decoder.decoder_block4.conv_out.weight": (1536, 64, 3, 3),
        "decoder.decoder_block1.conv_in.weight": (64, 480, 3, 3),
        "decoder.conv_out1.0.weight": (1, 240, 1, 1),
        "decoder.lateral_block4.conv.weight": (1536, 1536, 1, 1),
        "decoder.conv_ms_spvn_2.weight": (1, 384, 1, 1),
        "decoder.gdt_convs_3.0.weight": (16, 768, 3, 3),
        "decoder.gdt_convs_pred_4.0.weight": (1, 16, 1, 1),
        "decoder.gdt_convs_attn_2.0.bias": (1,),
    },
    "swin_v1_t": {
        "bb.patch_embed.proj.weight": (96, 3, 4, 4),
        "bb.layers.2.blocks.5.attn.relative_position_bias_table": (169, 12),
        "bb.layers.2.blocks.5.attn.relative_position_index": (49, 49),
        "bb.norm3.weight": (768,),
        "squeeze_module.0.conv_in.weight": (64, 2880, 3, 3),
        "squeeze_module.0.conv_out.weight": (1536, 64, 3, 3),
        "decoder.ipt_blk5.conv_out.weight": (192, 64, 3, 3),
        "decoder.decoder_block4.conv_in.weight": (64, 1728, 3, 3),
        "decoder.decoder_block1.conv_in.weight": (64, 240, 3, 3),
        "decoder.conv_out1.0.weight": (1, 120, 1, 1),
        "decoder.gdt_convs_3.0.weight": (16, 384, 3, 3),
    },
}
# 220.2 M parameters: the 885 MB general model.safetensors; 44.3 M: the lite models.
PARAMETERS = {"swin_v1_l": 220_176_498, "swin_v1_t": 44_313_720}


def reference_deform_conv(x, offset, mask, weight, padding):
    """DCNv2 from its definition, in float64: per kernel tap, grid_sample (bilinear, zeros
    outside, pixel centres at align_corners) at the shifted positions, modulated, convolved."""
    x, offset, mask, weight = (t.double() for t in (x, offset, mask, weight))
    height, width = x.shape[2:]
    out_h, out_w = offset.shape[2:]
    kernel = weight.shape[-1]
    out = torch.zeros(x.shape[0], weight.shape[0], out_h, out_w, dtype=torch.float64)
    for i in range(kernel):
        for j in range(kernel):
            tap = i * kernel + j
            rows = torch.arange(out_h).view(-1, 1) - padding + i + offset[:, 2 * tap]
            cols = torch.arange(out_w).view(1, -1) - padding + j + offset[:, 2 * tap + 1]
            grid = torch.stack([cols / (width - 1) * 2 - 1, rows / (height - 1) * 2 - 1], dim=-1)
            sampled = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
            out += torch.einsum("nchw,oc->nohw", sampled * mask[:, tap:tap + 1], weight[:, :, i, j])
    return out


def _deform_layer(kernel: int, seed: int) -> DeformableConv2d:
    """A layer whose offsets reach a few pixels, in and out of the image (the official init is zero)."""
    generator = torch.Generator().manual_seed(seed)
    layer = DeformableConv2d(6, 5, kernel, padding=kernel // 2)
    with torch.no_grad():
        for conv in (layer.offset_conv, layer.modulator_conv, layer.regular_conv):
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) / conv.weight[0].numel() ** 0.5)
            if conv.bias is not None:
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * 2.0)
    return layer.eval()


def _run_onnx(model, feeds: dict) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


@pytest.mark.parametrize("kernel", [1, 3, 7])
def test_deform_conv_matches_its_definition(kernel):
    layer = _deform_layer(kernel, seed=kernel)
    x = torch.randn(2, 6, 11, 9, generator=torch.Generator().manual_seed(10 + kernel))
    with torch.no_grad():
        offset = layer.offset_conv(x)
        mask = 2 * torch.sigmoid(layer.modulator_conv(x))
        actual = deform_conv2d(x, offset, mask, layer.regular_conv.weight, padding=kernel // 2)
        expected = reference_deform_conv(x, offset, mask, layer.regular_conv.weight, kernel // 2)

    assert offset.abs().max() > 3  # taps land outside the image: the zero padding is exercised
    assert (actual.double() - expected).abs().max() < 1e-5  # measured 2.4e-6, 1.1e-6, 8.5e-7 (k = 1, 3, 7)


@pytest.mark.parametrize("form", ["native", "decomposed", "rewritten"])
@pytest.mark.parametrize("kernel", [1, 3, 7])
def test_deform_conv_onnx_forms_match_pytorch(form, kernel):
    """Exported as DeformConv, exported decomposed, or exported as DeformConv and decomposed on
    the ONNX graph (what a backend without the op gets, with no PyTorch at hand)."""
    from mtc.export.torch_export import export_onnx

    layer = _deform_layer(kernel, seed=kernel)
    set_onnx_form(layer, "decomposed" if form == "decomposed" else "native")
    model = export_onnx(layer, (torch.zeros(1, 6, 11, 9),), input_names=["x"], output_names=["y"],
                        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset=19)
    if form == "rewritten":
        model, count = decompose_deform_conv(model)
        assert count == 1
        onnx.checker.check_model(model)
    x = torch.randn(3, 6, 11, 9, generator=torch.Generator().manual_seed(20 + kernel))  # another batch size
    with torch.no_grad():
        offset = layer.offset_conv(x)
        expected = reference_deform_conv(x, offset, 2 * torch.sigmoid(layer.modulator_conv(x)),
                                         layer.regular_conv.weight, kernel // 2).numpy()

    actual = _run_onnx(model, {"x": x.numpy()})
    ops = [node.op_type for node in model.graph.node]

    assert ops.count("DeformConv") == (1 if form == "native" else 0)
    assert np.abs(actual - expected).max() < 1e-5  # measured at most 3.0e-6 (k = 1, 3, 7; each form), outputs up to ~4


def test_deform_conv_form_must_be_known():
    with pytest.raises(ValueError, match="native"):
        set_onnx_form(_deform_layer(1, seed=0), "gather")


@pytest.mark.parametrize(("height", "width", "window"), [(16, 16, 4), (12, 20, 4), (14, 21, 7)])
def test_swin_shift_masks_match_the_official_regions(height, width, window):
    """The factored row and column masks mask exactly the pairs the official (windows, N, N)
    mask does: tokens whose cyclic-shift regions (3 row bands x 3 column bands) differ."""
    from mtc.models.nn.swin import _shift_masks, _window_partition

    shift = window // 2
    regions = torch.zeros(1, height, width, 1)
    bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for index, (rows, cols) in enumerate((r, c) for r in bands for c in bands):
        regions[:, rows, cols, :] = index
    ids = _window_partition(regions, window).squeeze(-1)  # (windows, N)
    official = ids.unsqueeze(1) != ids.unsqueeze(2)

    rows, cols = _shift_masks(height, width, window, shift)
    tokens = window * window
    ours = (rows + cols).reshape(-1, tokens, tokens)

    assert torch.equal(ours < 0, official)
    assert ours.min() == -200.0  # the official -100 from each mask where rows and columns both differ


@pytest.mark.parametrize("backbone", ["swin_v1_l", "swin_v1_t"])
def test_state_dict_has_the_official_layout(backbone):
    with torch.device("meta"):
        net = birefnet_net.build_network(backbone)
    state = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    blocks = sum(birefnet.BACKBONES[backbone].depths)

    assert len(state) == blocks * SWIN_BLOCK_KEYS + SWIN_FIXED_KEYS + DEC_BLOCK_KEYS + DECODER_KEYS
    assert len(state) == {"swin_v1_l": 754, "swin_v1_t": 586}[backbone]
    assert {k: state.get(k) for k in OFFICIAL_KEYS[backbone]} == OFFICIAL_KEYS[backbone]
    assert sum(p.numel() for p in net.parameters()) == PARAMETERS[backbone]
    assert sum(isinstance(m, DeformableConv2d) for m in net.modules()) == 5 * 4  # 5 ASPPDeformable x (1x1, 1, 3, 7)


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    """A reduced BiRefNet with random weights (BatchNorm statistics too) saved as a plain state dict."""
    path = tmp_path_factory.mktemp("birefnet") / "small.pth"
    return save_random_checkpoint(birefnet_net.build_network(SMALL), path, seed=7)


@pytest.fixture(scope="module")
def small_matte(small_checkpoint):
    return birefnet_net.matte_module(SMALL, small_checkpoint)


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])  # DataParallel, compile, ToonOut
def test_pth_wrapper_prefixes_are_stripped(small_checkpoint, tmp_path, prefix):
    state = _state(small_checkpoint)
    path = tmp_path / "wrapped.pth"
    torch.save({prefix + k: v for k, v in state.items()}, path)

    loaded = birefnet_net.load_network(SMALL, path).state_dict()

    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_safetensors_checkpoint_loads(small_checkpoint, tmp_path):
    save_file = pytest.importorskip("safetensors.torch").save_file  # the export extra's reader

    state = _state(small_checkpoint)
    # A Hugging Face file may leave out the derived position indices; they are rebuilt.
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items() if not k.endswith("relative_position_index")}, str(path))

    loaded = birefnet_net.load_network(SMALL, path).state_dict()

    assert any(k.endswith("relative_position_index") for k in loaded)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert read_checkpoint(path).keys() < state.keys()


def test_checkpoint_of_another_backbone_is_refused(small_checkpoint):
    other = birefnet.SwinConfig(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), window_size=4)

    with pytest.raises(MtcError) as info:
        birefnet_net.load_network(other, small_checkpoint)

    message = info.value.message
    assert "small.pth does not fit BiRefNet" in message
    assert "wrong shape: bb.patch_embed.proj.weight (8, 3, 4, 4) != (16, 3, 4, 4)" in message


@pytest.fixture(scope="module")
def small_onnx(small_matte):
    """The reduced model's ONNX in each deformable-conv form, exported once per form."""
    exported = {}

    def export(form: str):
        if form not in exported:
            exported[form] = birefnet_net.export_network(small_matte, size=SIZE, deform_conv=form)
        return exported[form]

    return export


@pytest.fixture(scope="module")
def small_case(small_matte):
    """A batch of two (the export ran with one) and its PyTorch alpha."""
    x = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(30))
    with torch.no_grad():
        return x.numpy(), small_matte(x).numpy()


@pytest.mark.parametrize("form", ["native", "decomposed"])
def test_onnx_export_matches_pytorch(small_onnx, small_case, form):
    model = small_onnx(form)
    x, expected = small_case

    actual = _run_onnx(model, {"src": x})
    input_dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    ops = [node.op_type for node in model.graph.node]

    assert input_dims == ["batch", 3, *SIZE]  # static size, dynamic batch
    assert ops.count("DeformConv") == (20 if form == "native" else 0)
    assert expected.shape == (2, 1, *SIZE) and expected.std() > 1e-3  # a real map, not a constant
    assert np.abs(actual - expected).max() < 2e-5  # measured 8.9e-7 (both forms); the spec allows 1e-4


def test_each_size_is_its_own_static_graph(small_matte):
    """Another size (landscape, the half-size pass's last stage 1x2) exports a graph of its own."""
    size = (64, 128)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(31))
    with torch.no_grad():
        expected = small_matte(x).numpy()

    model = birefnet_net.export_network(small_matte, size=size)
    actual = _run_onnx(model, {"src": x.numpy()})

    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[2:]] == list(size)
    assert np.abs(actual - expected).max() < 2e-5  # measured 1.2e-6


@pytest.mark.parametrize("form", ["openvino_op", "decomposed"])
def test_openvino_runs_the_model_in_either_form(small_onnx, small_case, form):
    """OpenVINO reads no ONNX DeformConv: its backend writes the native export as its own
    DeformableConvolution (zero-padded once read); the decomposed export runs as it is."""
    ov = pytest.importorskip("openvino")
    model = small_onnx("decomposed") if form == "decomposed" else deform_conv_as_openvino_op(small_onnx("native"))[0]
    x, expected = small_case
    core = ov.Core()
    graph = core.read_model(model.SerializeToString(), b"")
    padded = zero_padded_sampling(graph)
    compiled = core.compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

    actual = compiled({"src": x})[0]

    assert "DeformConv" not in {node.op_type for node in model.graph.node}
    assert padded == (20 if form == "openvino_op" else 0)
    assert np.abs(actual - expected).max() < 2e-5  # measured 3.6e-7 (both)


def test_export_refuses_sizes_that_are_not_multiples_of_32(small_matte):
    with pytest.raises(MtcError, match="multiples of 32"):
        birefnet_net.export_network(small_matte, size=(100, 64))


def test_variants_declare_their_size_and_preprocessing():
    spec = get_model("birefnet")
    sizes = {name: variant.io.preprocess.fixed_size for name, variant in spec.variants.items()}
    toonout = get_model("toonout").variant(None)

    assert sizes == {"general": (1024, 1024), "lite": (1024, 1024), "lite-2k": (1440, 2560), "hr": (2048, 2048),
                     "matting": (1024, 1024), "hr-matting": (2048, 2048), "dynamic": (1024, 1024)}
    assert {birefnet.RELEASES[name].backbone for name in ("lite", "lite-2k")} == {"swin_v1_t"}
    assert toonout.io.preprocess.fixed_size == (1024, 1024) and birefnet.TOONOUT.backbone == "swin_v1_l"
    preprocess = spec.variant(None).io.preprocess
    assert (preprocess.resize, preprocess.mean, preprocess.std) == ("fixed", (0.485, 0.456, 0.406),
                                                                    (0.229, 0.224, 0.225))
    assert all(v.weights.sources[0].url.startswith("https://huggingface.co/") for v in spec.variants.values())


@pytest.mark.slow
def test_lite_exports_at_full_size_through_the_pipeline(tmp_path):
    """The real-size lite model (random weights in the official layout, as safetensors) through
    `mtc export`, then the runtime: build, parity, artifact, one frame. About 2 minutes and a
    5.6 GB peak on a 2-core CPU."""
    import json

    save_file = pytest.importorskip("safetensors.torch").save_file

    import mtc.runtime
    from mtc.models.export import export_model

    net = birefnet_net.build_network("swin_v1_t")
    save_random_checkpoint(net, tmp_path / "lite.pth", seed=8)
    weights = tmp_path / "lite.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))

    artifact = export_model("birefnet", variant="lite", weights_path=weights, output=tmp_path / "lite")
    frame = np.random.default_rng(9).integers(0, 256, (360, 480, 3), dtype=np.uint8)
    # ONNX Runtime: the export holds the native DeformConv, which OpenVINO cannot read.
    matte = mtc.runtime.load(artifact, backend="onnxruntime").process(frame)

    report = json.loads((artifact / "report.json").read_text())
    assert all(p["passed"] for p in report["parity"])
    assert matte.alpha.shape == (360, 480)


def test_the_dynamic_variant_exports_at_other_sizes_and_the_others_refuse():
    from mtc.errors import MtcError
    from mtc.models.registry import get_model

    spec = get_model("birefnet")
    sized = spec.variant("dynamic").sized(1536, 2048)
    assert sized.name == "dynamic-2048x1536" and sized.io.preprocess.fixed_size == (1536, 2048)
    with pytest.raises(MtcError, match="fixed input size"):
        spec.variant("general").sized(1024, 1024)
    with pytest.raises(MtcError, match="multiples of 32"):
        spec.variant("dynamic").sized(1000, 1024)
    with pytest.raises(MtcError, match="from 256 to 2304"):
        spec.variant("dynamic").sized(4096, 4096)
