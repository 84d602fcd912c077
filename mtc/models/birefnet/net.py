"""BiRefNet's PyTorch modules, checkpoint loading and ONNX export (imports torch).

Module and attribute names follow the official release, because its checkpoints store the
weights under them: `bb` (the Swin backbone), `squeeze_module.0`, and `decoder` with
`ipt_blk5..1`, `decoder_block4..1`, `lateral_block4..2`, `conv_out1`, `conv_ms_spvn_4..2`,
`gdt_convs_4..2`, `gdt_convs_pred_4..2`, `gdt_convs_attn_4..2`; inside a decoder block
`conv_in`, `bn_in`, `dec_att` (ASPPDeformable: `aspp1`, `aspp_deforms.0..2`, `global_avg_pool`,
`conv1`, `bn1`), `conv_out`, `bn_out`. Channel widths are derived from the backbone as the
official `Decoder.__init__` derives them. Only the inference path is in `forward`.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch
from torch import nn
from torch.nn import functional as F

from mtc.errors import MtcError
from mtc.export.torch_export import export_onnx
from mtc.models.birefnet import BACKBONES, INPUT_NAMES, MULTIPLE_OF, OUTPUT_NAMES, SwinConfig
from mtc.models.birefnet.checkpoint import load_into, read_checkpoint
from mtc.models.birefnet.deform_conv import DEFORM_CONV_OPSET, DeformableConv2d, set_onnx_form
from mtc.models.nn.swin import SwinTransformer

DEC_CHANNELS = 64  # the fixed inner width of every decoder block (`dec_channels_inter = 'fixed'`)
ASPP_CHANNELS = 256  # each ASPPDeformable branch
ASPP_KERNELS = (1, 3, 7)  # the parallel deformable branches (after `aspp1`, itself 1x1)
GRADIENT_CHANNELS = 16  # the gradient-attention heads (`_N`)
IMAGE_HIDDEN = 64  # SimpleConvs' inner width on the image patches


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear with align_corners=True, as every resize in the official model."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def _size(x: torch.Tensor) -> tuple[int, int]:
    """Height and width as Python ints: the exported graph is static in them."""
    return int(x.shape[2]), int(x.shape[3])


def _image_patches(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The image cut into a grid of `size` patches stacked on the channels, channel-major:
    (N, C, g_h * h, g_w * w) -> (N, C * g_h * g_w, h, w), the official einops pattern
    'b c (hg h) (wg w) -> b (c hg wg) h w'. (The official code then resizes to `size`, which the
    patches already have: a no-op.)"""
    channels, height, width = (int(d) for d in image.shape[1:])
    h, w = size
    grid_h, grid_w = height // h, width // w
    x = image.view(-1, channels, grid_h, h, grid_w, w).permute(0, 1, 2, 4, 3, 5)
    return x.reshape(-1, channels * grid_h * grid_w, h, w)


class DeformBranch(nn.Module):
    """Official `_ASPPModuleDeformable`: deformable conv, BatchNorm, ReLU."""

    def __init__(self, in_channels: int, kernel: int):
        super().__init__()
        self.atrous_conv = DeformableConv2d(in_channels, ASPP_CHANNELS, kernel, padding=kernel // 2)
        self.bn = nn.BatchNorm2d(ASPP_CHANNELS)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.bn(self.atrous_conv(x)))


class ASPPDeformable(nn.Module):
    """Five branches (1x1 deformable, then 1x1, 3x3, 7x7 deformable, then global pooling)
    concatenated and fused back to the input width by a 1x1 conv, BatchNorm and ReLU."""

    def __init__(self, channels: int):
        super().__init__()
        self.aspp1 = DeformBranch(channels, 1)
        self.aspp_deforms = nn.ModuleList(DeformBranch(channels, k) for k in ASPP_KERNELS)
        self.global_avg_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, ASPP_CHANNELS, 1, bias=False),
                                             nn.BatchNorm2d(ASPP_CHANNELS), nn.ReLU(inplace=True))
        self.conv1 = nn.Conv2d(ASPP_CHANNELS * (2 + len(ASPP_KERNELS)), channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        branches = [self.aspp1(x), *(branch(x) for branch in self.aspp_deforms)]
        # The official code resizes the 1x1 pooled map bilinearly (align_corners) to the input
        # size, which copies the value everywhere: a broadcast.
        pooled = self.global_avg_pool(x).expand(-1, -1, *_size(x))
        # Dropout(0.5) follows in the official module: the identity at inference.
        return self.relu(self.bn1(self.conv1(torch.cat([*branches, pooled], dim=1))))


class BasicDecBlk(nn.Module):
    """3x3 conv to 64, BatchNorm, ReLU, ASPPDeformable, 3x3 conv, BatchNorm (no final activation)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, DEC_CHANNELS, 3, padding=1)
        self.bn_in = nn.BatchNorm2d(DEC_CHANNELS)
        self.relu_in = nn.ReLU(inplace=True)
        self.dec_att = ASPPDeformable(DEC_CHANNELS)
        self.conv_out = nn.Conv2d(DEC_CHANNELS, out_channels, 3, padding=1)
        self.bn_out = nn.BatchNorm2d(out_channels)

    def forward(self, x):
        return self.bn_out(self.conv_out(self.dec_att(self.relu_in(self.bn_in(self.conv_in(x))))))


class BasicLatBlk(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x):
        return self.conv(x)


class SimpleConvs(nn.Module):
    """Two 3x3 convs without activation, on the stacked image patches (`ipt_blk*`)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, IMAGE_HIDDEN, 3, padding=1)
        self.conv_out = nn.Conv2d(IMAGE_HIDDEN, out_channels, 3, padding=1)

    def forward(self, x):
        return self.conv_out(self.conv1(x))


def _gradient_head(in_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, GRADIENT_CHANNELS, 3, padding=1), nn.BatchNorm2d(GRADIENT_CHANNELS),
                         nn.ReLU(inplace=True))


def _to_one(in_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, 1, 1))


class Decoder(nn.Module):
    """From the coarsest features up to full resolution, level 4 (1/32) to level 1 (1/4) and the image.

    Args:
        channels: The encoder's output channels, coarsest first (the official lateral channels,
            doubled by the half-size pass).
    """

    def __init__(self, channels: tuple[int, int, int, int]):
        super().__init__()
        # Image patches: a 32x32 grid at level 4 (3 * 1024 channels) ... the whole image at the end.
        patch_channels = [3 * 4 ** i for i in (5, 4, 3, 2, 0)]
        image_out = [c // 8 for c in channels]
        block_out = [*channels[1:], channels[-1] // 2]
        block_in = [channels[i] + image_out[max(0, i - 1)] for i in range(4)]
        self.ipt_blk5 = SimpleConvs(patch_channels[0], image_out[0])
        self.ipt_blk4 = SimpleConvs(patch_channels[1], image_out[0])
        self.ipt_blk3 = SimpleConvs(patch_channels[2], image_out[1])
        self.ipt_blk2 = SimpleConvs(patch_channels[3], image_out[2])
        self.ipt_blk1 = SimpleConvs(patch_channels[4], image_out[3])
        for level, (cin, cout) in zip((4, 3, 2, 1), zip(block_in, block_out)):
            self.add_module(f"decoder_block{level}", BasicDecBlk(cin, cout))
        self.conv_out1 = _to_one(block_out[3] + image_out[3])
        for level, (cin, cout) in zip((4, 3, 2), zip(channels[1:], block_out)):
            self.add_module(f"lateral_block{level}", BasicLatBlk(cin, cout))
        for level, cin in zip((4, 3, 2), block_out):
            self.add_module(f"conv_ms_spvn_{level}", nn.Conv2d(cin, 1, 1))  # training only
        for level, cin in zip((4, 3, 2), block_out):
            self.add_module(f"gdt_convs_{level}", _gradient_head(cin))
        for level in (4, 3, 2):
            self.add_module(f"gdt_convs_pred_{level}", _to_one(GRADIENT_CHANNELS))  # training only
        for level in (4, 3, 2):
            self.add_module(f"gdt_convs_attn_{level}", _to_one(GRADIENT_CHANNELS))

    def _with_image(self, x: torch.Tensor, image: torch.Tensor, level: int) -> torch.Tensor:
        patches = _image_patches(image, _size(x))
        return torch.cat([x, getattr(self, f"ipt_blk{level}")(patches)], dim=1)

    def _gradient_attention(self, p: torch.Tensor, level: int) -> torch.Tensor:
        head = getattr(self, f"gdt_convs_{level}")(p)
        return p * torch.sigmoid(getattr(self, f"gdt_convs_attn_{level}")(head))

    def forward(self, image, x1, x2, x3, x4):
        p = self._gradient_attention(self.decoder_block4(self._with_image(x4, image, 5)), 4)
        for level, skip in ((3, x3), (2, x2)):
            p = _resize(p, _size(skip)) + getattr(self, f"lateral_block{level + 1}")(skip)
            p = self._gradient_attention(getattr(self, f"decoder_block{level}")(self._with_image(p, image, level + 1)),
                                         level)
        p = _resize(p, _size(x1)) + self.lateral_block2(x1)
        p = _resize(self.decoder_block1(self._with_image(p, image, 2)), _size(image))
        return self.conv_out1(self._with_image(p, image, 1))


class BiRefNet(nn.Module):
    """The network: `forward` returns the logits of the final prediction (N, 1, H, W)."""

    def __init__(self, backbone: SwinConfig):
        super().__init__()
        self.bb = SwinTransformer(embed_dim=backbone.embed_dim, depths=backbone.depths,
                                  num_heads=backbone.num_heads, window_size=backbone.window_size)
        channels = tuple(2 * c for c in reversed(backbone.channels))  # coarsest first, doubled by the half-size pass
        context = sum(channels[1:])  # the three finer levels concatenated onto the coarsest
        self.squeeze_module = nn.Sequential(BasicDecBlk(channels[0] + context, channels[0]))
        self.decoder = Decoder(channels)

    def encode(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The four levels, finest first, each the full-size pass's features concatenated with
        the half-size pass's resized to them; the coarsest also carries the finer three."""
        height, width = _size(image)
        full = self.bb(image)
        half = self.bb(_resize(image, (height // 2, width // 2)))
        x1, x2, x3, x4 = (torch.cat([f, _resize(h, _size(f))], dim=1) for f, h in zip(full, half))
        x4 = torch.cat([_resize(x1, _size(x4)), _resize(x2, _size(x4)), _resize(x3, _size(x4)), x4], dim=1)
        return x1, x2, x3, x4

    def forward(self, image):
        x1, x2, x3, x4 = self.encode(image)
        return self.decoder(image, x1, x2, x3, self.squeeze_module(x4))


class BiRefNetMatte(nn.Module):
    """`src` (ImageNet-normalised RGB) -> `alpha`, the sigmoid of the network's prediction."""

    def __init__(self, net: BiRefNet):
        super().__init__()
        self.net = net

    def forward(self, src):
        return torch.sigmoid(self.net(src))


def build_network(backbone: str | SwinConfig) -> BiRefNet:
    """A BiRefNet with an official backbone name (`swin_v1_l`, `swin_v1_t`) or any SwinConfig."""
    config = BACKBONES[backbone] if isinstance(backbone, str) else backbone
    return BiRefNet(config)


def load_network(backbone: str | SwinConfig, weights: Path) -> BiRefNet:
    """A BiRefNet with a checkpoint (safetensors or .pth) loaded strictly, in eval mode."""
    net = build_network(backbone)
    load_into(net, read_checkpoint(weights), source=Path(weights).name)
    return net.eval()


def matte_module(backbone: str | SwinConfig, weights: Path) -> BiRefNetMatte:
    return BiRefNetMatte(load_network(backbone, weights)).eval()


def export_network(module: BiRefNetMatte, *, size: tuple[int, int], deform_conv: str = "native") -> onnx.ModelProto:
    """The matte module as ONNX (opset 19) at `size` (height, width), batch dynamic.

    Args:
        module: The matte module.
        size: Height and width, multiples of 32; the graph runs only at this size.
        deform_conv: "native" (the ONNX DeformConv op) or "decomposed" (gathers and a MatMul).
    """
    height, width = size
    if height % MULTIPLE_OF or width % MULTIPLE_OF:
        raise MtcError(f"BiRefNet needs sides that are multiples of {MULTIPLE_OF}, not {width}x{height}",
                       hint=f"round the size to a multiple of {MULTIPLE_OF}")
    set_onnx_form(module, deform_conv)
    batch = {0: "batch"}
    return export_onnx(module, (torch.zeros(1, 3, height, width),), input_names=INPUT_NAMES,
                       output_names=OUTPUT_NAMES, dynamic_axes={"src": batch, "alpha": batch},
                       opset=DEFORM_CONV_OPSET)
