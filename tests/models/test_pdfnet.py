"""PDFNet and its depth prior, Depth Anything V2 Small: official key layouts, the official
inference's pieces checked by hand, strict checkpoint loading, and each of the two graphs against
ONNX Runtime.

What runs does so on reduced networks: a PDFNet with a Swin of width 8 (two blocks per stage, so
shifted windows are exercised) and inner width 8 at 256x256, the smallest size its 8x8 patch
grid allows; a Depth Anything with a 4-block ViT of width 32 and a DPT head of width 16. The
full-size networks are only built on the meta device to check their key layouts; the official
checkpoints cannot be downloaded here.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from torch.nn import functional as F  # noqa: E402

from mtc.errors import MtcError  # noqa: E402
from mtc.export.torch_export import export_onnx, save_random_checkpoint  # noqa: E402
from mtc.models.contracts import SwinConfig  # noqa: E402
from mtc.models.nn.dinov2 import ViTConfig  # noqa: E402
from mtc.models.pdfnet import graphs  # noqa: E402
from mtc.models.pdfnet.depth import (  # noqa: E402
    DepthAnythingConfig,
    DepthAnythingV2,
    depth_input_size,
    load_depth_model,
)
from mtc.models.pdfnet.net import (  # noqa: E402
    FSE,
    PDFNET_SWINB,
    CrossAttention,
    PDFNet,
    PDFNetConfig,
    RMSNorm,
    load_network,
    merge_patches,
    split_patches,
)

SMALL_NET = PDFNetConfig(SwinConfig(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), window_size=4), emb=8)
SMALL_SIZE = 256
SMALL_DEPTH = DepthAnythingConfig(ViTConfig(embed_dim=32, depth=4, num_heads=2, image_size=98), features=16,
                                  out_channels=(8, 16, 32, 32), layers=(0, 1, 2, 3))

# Expected layouts, obtained by instantiating the official classes in a scratch directory outside
# the repository (github.com/Tennine2077/PDFNet @ f4e218b: `PDFNet_process(SwinB(args, in_chans=3,
# pretrained=False), PDF_decoder(args), ...)` with the `args.py` defaults; Depth-Anything-V2:
# `DepthAnythingV2('vits', features=64, out_channels=[48, 96, 192, 384])`), with timm, einops,
# matplotlib and torchvision stubbed, and listing `state_dict()`: 561 PDFNet keys (2 of them the
# training loss's Sobel kernels, `IntegrityPriorLoss.sobel_x/y.weight`) and 239 Depth Anything keys.
PDFNET_KEYS = 559
PDFNET_ELEMENTS = 98_344_208 - 2 * 9  # minus the two 3x3 Sobel kernels
PDFNET_PREFIXES = {"encoder": 358, "decoder": 183, "Glob": 3, "channel_mix": 3, "channel_mix1": 3,
                   "channel_mix2": 3, "channel_mix3": 3, "channel_mix4": 3}
PDFNET_SAMPLES = {
    "encoder.absolute_pos_embed": (1, 128, 56, 56),
    "encoder.patch_embed.proj.weight": (128, 3, 4, 4),
    "encoder.layers.2.blocks.17.attn.relative_position_bias_table": (529, 16),
    "encoder.layers.2.blocks.17.attn.relative_position_index": (144, 144),
    "encoder.layers.3.blocks.1.mlp.fc2.weight": (1024, 4096),
    "encoder.layers.2.downsample.reduction.weight": (1024, 2048),
    "encoder.norm3.weight": (1024,),
    "Glob.0.0.weight": (128, 128, 3, 3),
    "Glob.0.1.weight": (128,),
    "channel_mix.0.weight": (128, 512, 3, 3),
    "channel_mix4.0.weight": (128, 1024, 3, 3),
    "channel_mix1.1.weight": (128,),
    "decoder.FSE_mix.0.I_channelswich.0.weight": (128, 256, 3, 3),
    "decoder.FSE_mix.3.PI.Att.in_proj_weight": (384, 128),
    "decoder.FSE_mix.3.PI.Att.out_proj.weight": (128, 128),
    "decoder.FSE_mix.3.PI.FFN.w1.weight": (128, 128),
    "decoder.FSE_mix.2.DI.Norm2.weight": (128,),
    "decoder.shallow.0.weight": (128, 6, 4, 4),
    "decoder.shallow.1.1.weight": (128,),
    "decoder.upsample1.0.0.weight": (128, 128, 3, 3),
    "decoder.channel_mix.3.0.weight": (128, 384, 3, 3),
    "decoder.Bside.5.weight": (1, 128, 3, 3),
}
DEPTH_KEYS = 239
DEPTH_ELEMENTS = 24_785_089
DEPTH_PREFIXES = {"pretrained": 175, "depth_head": 64}
DEPTH_SAMPLES = {
    "pretrained.cls_token": (1, 1, 384),
    "pretrained.pos_embed": (1, 1370, 384),
    "pretrained.mask_token": (1, 384),
    "pretrained.patch_embed.proj.weight": (384, 3, 14, 14),
    "pretrained.blocks.11.attn.qkv.weight": (1152, 384),
    "pretrained.blocks.11.ls2.gamma": (384,),
    "pretrained.blocks.0.mlp.fc1.weight": (1536, 384),
    "pretrained.norm.bias": (384,),
    "depth_head.projects.3.weight": (384, 384, 1, 1),
    "depth_head.resize_layers.0.weight": (48, 48, 4, 4),
    "depth_head.resize_layers.1.weight": (96, 96, 2, 2),
    "depth_head.resize_layers.3.weight": (384, 384, 3, 3),
    "depth_head.scratch.layer4_rn.weight": (64, 384, 3, 3),
    "depth_head.scratch.refinenet4.resConfUnit1.conv1.weight": (64, 64, 3, 3),
    "depth_head.scratch.output_conv1.weight": (32, 64, 3, 3),
    "depth_head.scratch.output_conv2.0.weight": (32, 32, 3, 3),
    "depth_head.scratch.output_conv2.2.weight": (1, 32, 1, 1),
}


def _layout(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_pdfnet_has_the_official_layout():
    with torch.device("meta"):
        state = _layout(PDFNet(PDFNET_SWINB))

    assert len(state) == PDFNET_KEYS
    assert {p: sum(k.split(".")[0] == p for k in state) for p in PDFNET_PREFIXES} == PDFNET_PREFIXES
    assert {k: state.get(k) for k in PDFNET_SAMPLES} == PDFNET_SAMPLES
    assert not any(k.startswith(("IntegrityPriorLoss.", "depth_decoder.")) or "bias" in k.split(".")[-1]
                   and ".Att." in k for k in state)  # the attention is bias-free
    assert sum(int(np.prod(s)) for s in state.values()) == PDFNET_ELEMENTS


def test_depth_anything_small_has_the_official_layout():
    with torch.device("meta"):
        state = _layout(DepthAnythingV2())

    assert len(state) == DEPTH_KEYS
    assert {p: sum(k.split(".")[0] == p for k in state) for p in DEPTH_PREFIXES} == DEPTH_PREFIXES
    assert {k: state.get(k) for k in DEPTH_SAMPLES} == DEPTH_SAMPLES
    assert "depth_head.resize_layers.2.weight" not in state  # the identity at stride 14
    assert sum(int(np.prod(s)) for s in state.values()) == DEPTH_ELEMENTS


def test_full_size_depth_graph_runs_the_vit_at_518_on_meta():
    with torch.device("meta"):
        model = DepthAnythingV2()
        graph = graphs.DepthGraph(model)
        seen = []
        model.register_forward_hook(lambda module, inputs, output: seen.append((inputs[0].shape, output.shape)))
        depth = graph(torch.rand(1, 3, 1024, 1024))

    assert depth.shape == (1, 1, 1024, 1024)
    assert seen == [((1, 3, 518, 518), (1, 1, 518, 518))]


# The official `Resize(518, 518, keep_aspect_ratio=True, ensure_multiple_of=14, 'lower_bound')`,
# by hand: the shorter side scaled to 518, the other rounded to a multiple of 14; at 505 the
# rounding (36 x 14 = 504) falls short and goes up to 37 x 14.
@pytest.mark.parametrize(("size", "target", "expected"), [
    ((1024, 1024), 518, (518, 518)), ((768, 1024), 518, (518, 686)), ((1920, 1080), 518, (924, 518)),
    ((1000, 1000), 505, (518, 518))])
def test_depth_input_size_is_the_official_lower_bound_rule(size, target, expected):
    assert depth_input_size(*size, target) == expected


def test_patches_are_stacked_row_column_batch_and_merge_back():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)

    patches = split_patches(x, 4)

    assert patches.shape == (32, 3, 2, 2)
    # The official `split`: for row j, for column i, append x[..., j-th rows, i-th columns] (whole batch).
    assert torch.equal(patches[(2 * 4 + 1) * 2 + 1], x[1, :, 4:6, 2:4])
    assert torch.equal(merge_patches(patches, 4), x)


def test_boundary_and_integrity_by_hand():
    # 16 x 16: an eighth is 2 (even), so a 3x3 mean with zero padding counted, thresholded at 0.1.
    # On constant logits -2, s = sigmoid(sigmoid(-2)) = sigmoid(0.119) = 0.530 everywhere (applied
    # twice, as officially; once would give 0.119 and no boundary at all): the mean equals s inside
    # and is at most 6/9 s on the border (|s - 6/9 s| = 0.177 > 0.1), so the boundary is the border
    # ring; integrity is relu(sigmoid(-2) - boundary): 0.119 inside, 0 on the ring.
    boundary, integrity = FSE.boundary_and_integrity(torch.full((1, 1, 16, 16), -2.0))
    ring = torch.ones(16, 16)
    ring[1:-1, 1:-1] = 0

    assert torch.equal(boundary[0, 0], ring)
    assert torch.equal(integrity[0, 0], torch.sigmoid(torch.tensor(-2.0)) * (1 - ring))

    # 8 x 8: an eighth is 1 (odd): a 1x1 mean, so |s - s| = 0 and no threshold.
    logits = torch.randn(1, 1, 8, 8)
    boundary, integrity = FSE.boundary_and_integrity(logits)
    assert torch.equal(boundary, torch.zeros_like(logits))
    assert torch.equal(integrity, torch.sigmoid(logits))


def test_min_max_is_per_image():
    x = torch.tensor([[2.0, 4.0], [6.0, 10.0]]).view(1, 1, 2, 2)

    out = graphs.min_max(torch.cat([x, 3 * x + 1]))

    expected = torch.tensor([[0.0, 0.25], [0.5, 1.0]]).view(1, 1, 2, 2)
    assert torch.equal(out, torch.cat([expected, expected]))
    assert torch.equal(graphs.min_max(torch.full((1, 1, 2, 2), 3.0)), torch.zeros(1, 1, 2, 2))  # no NaN


def test_patch_cells_on_the_boundary_are_doubled():
    fse = FSE(16, 8, (1, 1, 1), patch_ratio=8)
    boundary = torch.zeros(1, 1, 16, 16)
    boundary[0, 0, 5, 12] = 0.3  # cell (2, 6) of the 8x8 grid of 2x2 cells
    patch = torch.rand(1, 4, 32, 32)

    selected = fse.select_patches(patch, boundary)

    expected = patch.clone()
    expected[..., 8:12, 24:28] *= 2
    assert torch.equal(selected, expected)


def test_cross_attention_is_torchs_bias_free_multihead_attention():
    torch.manual_seed(0)
    ours = CrossAttention(8)
    official = torch.nn.MultiheadAttention(8, 1, bias=False, batch_first=True).eval()
    official.load_state_dict(ours.state_dict())
    q, kv = torch.randn(2, 5, 8), torch.randn(2, 7, 8)

    with torch.no_grad():
        torch.testing.assert_close(ours(q, kv), official(q, kv, kv)[0], atol=1e-6, rtol=1e-5)


def test_rms_norm_by_hand():
    norm = RMSNorm(2)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([2.0, 1.0]))
    x = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)  # mean square 12.5

    expected = torch.tensor([2 * 3.0, 4.0]).view(1, 2, 1, 1) / (12.5 + 1e-6) ** 0.5
    torch.testing.assert_close(norm(x), expected)


def test_position_embedding_is_resized_with_the_official_offset():
    """Off its learned 7x7 grid, the embedding is resized bicubically by the scale (grid + 0.1) / 7,
    not by the size ratio (which samples elsewhere)."""
    vit = _randomised(DepthAnythingV2(SMALL_DEPTH), 7).pretrained
    learned = vit.pos_embed[:, 1:].reshape(1, 7, 7, -1).permute(0, 3, 1, 2)

    with torch.no_grad():
        resized = vit.position_embedding(3, 4)
        by_scale = F.interpolate(learned, scale_factor=(3.1 / 7, 4.1 / 7), mode="bicubic", align_corners=False)
        by_size = F.interpolate(learned, size=(3, 4), mode="bicubic", align_corners=False)

    assert torch.equal(resized[:, :1], vit.pos_embed[:, :1])  # the class token's, unchanged
    assert torch.equal(resized[:, 1:], by_scale.flatten(2).transpose(1, 2))
    assert not torch.allclose(by_scale, by_size, atol=1e-3)
    assert vit.position_embedding(7, 7) is vit.pos_embed


def _pdfnet_inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, SMALL_SIZE, SMALL_SIZE, generator=generator)
    depth = F.interpolate(torch.rand(1, 1, 8, 8, generator=generator) * 5 + 1, size=(SMALL_SIZE, SMALL_SIZE),
                          mode="bilinear", align_corners=True)
    return image, depth


def _randomised(module, seed: int):
    """`module` with random values also where `save_random_checkpoint` leaves the initial ones (it
    draws conv and linear weights): position embeddings, class token, attention projections
    and bias tables, norm and LayerScale weights. Zeros there would make, say, the resized
    position embeddings compute nothing."""
    generator = torch.Generator().manual_seed(seed)
    drawn = (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, drawn):
                continue
            for name, p in sub.named_parameters(recurse=False):
                if p.dim() == 1:  # norm weights and biases, LayerScale
                    value = 0.1 * torch.randn(p.shape, generator=generator) + (0 if name == "bias" else 1)
                else:  # embeddings, tokens, bias tables, the attention's input projection
                    value = torch.randn(p.shape, generator=generator) * (p[0].numel() ** -0.5 if p.dim() == 2 else 0.5)
                p.copy_(value)
    return module


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pdfnet")
    return {
        "pdfnet": save_random_checkpoint(_randomised(PDFNet(SMALL_NET), 1), folder / "PDFNet_Best.pth", seed=3),
        "depth": save_random_checkpoint(_randomised(DepthAnythingV2(SMALL_DEPTH), 2),
                                        folder / "depth_anything_v2_vits.pth", seed=4),
    }


@pytest.fixture(scope="module")
def pdfnet_graph(checkpoints):
    return graphs.PDFNetGraph(load_network(checkpoints["pdfnet"], SMALL_NET))


@pytest.fixture(scope="module")
def depth_graph(checkpoints):
    return graphs.DepthGraph(load_depth_model(checkpoints["depth"], SMALL_DEPTH), input_size=42)


def test_reduced_forward_shapes(pdfnet_graph, depth_graph):
    image, depth = _pdfnet_inputs()
    with torch.no_grad():
        logits = pdfnet_graph.net(graphs.imagenet_normalise(image), graphs.min_max(depth))
        alpha = pdfnet_graph(image, depth)
        prior = depth_graph(image[:, :, :64, :48])
        raw = depth_graph.model(torch.randn(1, 3, 42, 56))

    assert logits.shape == alpha.shape == (1, 1, SMALL_SIZE, SMALL_SIZE)
    assert torch.equal(alpha, torch.sigmoid(logits))
    assert 0 < float(alpha.min()) and float(alpha.max()) < 1 and float(alpha.std()) > 1e-3
    assert prior.shape == (1, 1, 64, 48) and float(prior.min()) == 0 and float(prior.max()) == pytest.approx(1)
    assert raw.shape == (1, 1, 42, 56) and float(raw.min()) >= 0


def test_pdfnet_refuses_non_square_and_odd_sizes(pdfnet_graph):
    for size in ((256, 512), (384, 384)):
        with pytest.raises(MtcError, match="multiple of 256"):
            pdfnet_graph(torch.rand(1, 3, *size), torch.rand(1, 1, *size))


def test_checkpoints_round_trip(checkpoints, pdfnet_graph, depth_graph):
    for name, loaded in (("pdfnet", pdfnet_graph.net), ("depth", depth_graph.model)):
        state = torch.load(checkpoints[name], map_location="cpu", weights_only=True)
        assert loaded.state_dict().keys() == state.keys()
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())


def test_official_extras_and_prefixes_are_accepted(checkpoints, tmp_path):
    state = torch.load(checkpoints["pdfnet"], map_location="cpu", weights_only=True)
    official = {f"module.{k}": v for k, v in state.items()}
    official["IntegrityPriorLoss.sobel_x.weight"] = torch.zeros(1, 1, 3, 3)
    official["IntegrityPriorLoss.sobel_y.weight"] = torch.zeros(1, 1, 3, 3)
    torch.save(official, tmp_path / "official.pth")

    loaded = load_network(tmp_path / "official.pth", SMALL_NET).state_dict()

    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_each_checkpoint_is_refused_by_the_other_model(checkpoints):
    with pytest.raises(MtcError, match="does not fit PDFNet.*missing: Glob.0.0.weight"):
        load_network(checkpoints["depth"], SMALL_NET)
    with pytest.raises(MtcError, match="does not fit DepthAnythingV2.*missing: pretrained.cls_token"):
        load_depth_model(checkpoints["pdfnet"], SMALL_DEPTH)


def _run(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {k: v.numpy() for k, v in feeds.items()})[0]


def test_depth_graph_exports_and_matches_pytorch(depth_graph):
    # 64 x 48 runs the ViT at 56 x 42 (a 4 x 3 grid), so the position embedding is resized too.
    image = torch.rand(1, 3, 64, 48, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = depth_graph(image).numpy()

    model = export_onnx(depth_graph, (image,), input_names=graphs.DEPTH_INPUTS, output_names=graphs.DEPTH_OUTPUTS,
                        opset=19)
    actual = _run(model, {"image": image})

    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 64, 48]
    assert actual.shape == (1, 1, 64, 48) and expected.std() > 0.05
    assert np.abs(actual - expected).max() < 1e-4


def test_pdfnet_graph_exports_and_matches_pytorch(pdfnet_graph):
    image, depth = _pdfnet_inputs(6)
    with torch.no_grad():
        expected = pdfnet_graph(image, depth).numpy()

    model = export_onnx(pdfnet_graph, (image, depth), input_names=graphs.PDFNET_INPUTS,
                        output_names=graphs.PDFNET_OUTPUTS, opset=19)
    actual = _run(model, {"image": image, "depth": depth})

    assert [i.name for i in model.graph.input] == ["image", "depth"]
    assert actual.shape == (1, 1, SMALL_SIZE, SMALL_SIZE) and expected.std() > 1e-3
    assert np.abs(actual - expected).max() < 1e-4
