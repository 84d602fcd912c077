"""RVM's PyTorch modules, checkpoint loading, batch-norm folding and ONNX export (imports torch).

Module and attribute names follow the official code, because the official checkpoints store
their weights under those names; the backbones come from :mod:`mtc.models.nn` with
torchvision's names.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import onnx
import torch
from torch import nn
from torch.nn import functional as F

from mtc.errors import MtcError
from mtc.export.torch_export import TorchBackend, export_onnx, load_checkpoint
from mtc.models.nn.layers import norm
from mtc.models.nn.mobilenetv3 import MobileNetV3LargeEncoder
from mtc.models.nn.resnet import BLOCKS as RESNET_BLOCKS
from mtc.models.nn.resnet import ResNet
from mtc.models.rvm import INPUT_NAMES, OUTPUT_NAMES, STATE_NAMES


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
    """What differs between the two official models."""

    aspp_channels: tuple[int, int]  # LR-ASPP (in, out)
    feature_channels: tuple[int, int, int, int]  # f1, f2, f3 and the ASPP output
    decoder_channels: tuple[int, int, int, int]  # decode3, decode2, decode1, decode0 outputs


BACKBONES = {
    "mobilenetv3": BackboneConfig((960, 128), (16, 24, 40, 128), (80, 40, 32, 16)),
    "resnet50": BackboneConfig((2048, 256), (64, 256, 512, 256), (128, 64, 32, 16)),
}


# --------------------------------------------------------------------------- LR-ASPP and decoder


class LRASPP(nn.Module):
    """Lite R-ASPP: a 1x1 conv branch gated by a global-pooled sigmoid branch."""

    def __init__(self, cin: int, cout: int, *, folded: bool = False):
        super().__init__()
        self.aspp1 = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=folded), norm(cout, folded=folded), nn.ReLU())
        self.aspp2 = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.Sigmoid())

    def forward(self, x):
        return self.aspp1(x) * self.aspp2(x)


class ConvGRU(nn.Module):
    """Convolutional GRU (paper, eq. 1-4): gates r, z from [x, h]; candidate from [x, r*h]."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.ih = nn.Sequential(nn.Conv2d(2 * channels, 2 * channels, 3, padding=1), nn.Sigmoid())
        self.hh = nn.Sequential(nn.Conv2d(2 * channels, channels, 3, padding=1), nn.Tanh())

    def forward(self, x, h):
        # A 1x1x1x1 zero state (first frame) is broadcast to x's shape, as in the official graph.
        h = h.expand_as(x)
        reset, update = self.ih(torch.cat([x, h], dim=1)).split(self.channels, dim=1)
        candidate = self.hh(torch.cat([x, reset * h], dim=1))
        return (1 - update) * h + update * candidate


def _upsample2x_like(x, like):
    # Encoder sizes round up at every stride, so 2x upsampling can overshoot by one pixel:
    # crop to the skip connection (this is what lets RVM take any frame size).
    x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
    return x[:, :, : like.size(2), : like.size(3)]


class BottleneckBlock(nn.Module):
    """Lowest decoder stage: a ConvGRU over half of the ASPP channels."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.gru = ConvGRU(channels // 2)

    def forward(self, x, r):
        keep, recur = x.split(self.channels // 2, dim=1)
        r = self.gru(recur, r)
        return torch.cat([keep, r], dim=1), r


class UpsamplingBlock(nn.Module):
    """Upsample, concat skip features and the pooled frame, conv, ConvGRU on half the channels."""

    def __init__(self, cin: int, skip: int, src: int, cout: int, *, folded: bool = False):
        super().__init__()
        self.out_channels = cout
        self.conv = nn.Sequential(nn.Conv2d(cin + skip + src, cout, 3, 1, 1, bias=folded),
                                  norm(cout, folded=folded), nn.ReLU())
        self.gru = ConvGRU(cout // 2)

    def forward(self, x, f, s, r):
        x = self.conv(torch.cat([_upsample2x_like(x, s), f, s], dim=1))
        keep, recur = x.split(self.out_channels // 2, dim=1)
        r = self.gru(recur, r)
        return torch.cat([keep, r], dim=1), r


class OutputBlock(nn.Module):
    """Last stage at the network's full resolution: two conv-BN-ReLU, no recurrence."""

    def __init__(self, cin: int, src: int, cout: int, *, folded: bool = False):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(cin + src, cout, 3, 1, 1, bias=folded), norm(cout, folded=folded), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=folded), norm(cout, folded=folded), nn.ReLU(),
        )

    def forward(self, x, s):
        return self.conv(torch.cat([_upsample2x_like(x, s), s], dim=1))


class AvgPool(nn.Module):
    """The frame at 1/2, 1/4, 1/8, rounding sizes up like the encoder does."""

    def __init__(self):
        super().__init__()
        self.avgpool = nn.AvgPool2d(2, 2, count_include_pad=False, ceil_mode=True)

    def forward(self, s0):
        s1 = self.avgpool(s0)
        s2 = self.avgpool(s1)
        return s1, s2, self.avgpool(s2)


class RecurrentDecoder(nn.Module):
    """Four upsampling stages from 1/16 to the network's resolution; ConvGRUs carry r1..r4."""

    def __init__(self, feature_channels, decoder_channels, *, folded: bool = False):
        super().__init__()
        f, d = feature_channels, decoder_channels
        self.avgpool = AvgPool()
        self.decode4 = BottleneckBlock(f[3])
        self.decode3 = UpsamplingBlock(f[3], f[2], 3, d[0], folded=folded)
        self.decode2 = UpsamplingBlock(d[0], f[1], 3, d[1], folded=folded)
        self.decode1 = UpsamplingBlock(d[1], f[0], 3, d[2], folded=folded)
        self.decode0 = OutputBlock(d[2], 3, d[3], folded=folded)

    def forward(self, s0, f1, f2, f3, f4, r1, r2, r3, r4):
        s1, s2, s3 = self.avgpool(s0)
        x4, r4 = self.decode4(f4, r4)
        x3, r3 = self.decode3(x4, f3, s3, r3)
        x2, r2 = self.decode2(x3, f2, s2, r2)
        x1, r1 = self.decode1(x2, f1, s1, r1)
        return self.decode0(x1, s0), r1, r2, r3, r4


class Projection(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        return self.conv(x)


# --------------------------------------------------------------------------- Deep Guided Filter


class DeepGuidedFilterRefiner(nn.Module):
    """Guided filter (He et al.) whose per-pixel linear coefficients come from a small CNN.

    At low resolution, fit out = A * guide + b, with A predicted from local covariance,
    variance and the decoder's hidden features; A and b are then upsampled bilinearly and
    applied to the full-resolution frame (guide = RGB + grey).
    """

    def __init__(self, hidden: int = 16, *, folded: bool = False):
        super().__init__()
        self.box_filter = nn.Conv2d(4, 4, 3, padding=1, bias=False, groups=4)
        with torch.no_grad():
            self.box_filter.weight.fill_(1 / 9)
        self.conv = nn.Sequential(
            nn.Conv2d(4 * 2 + hidden, hidden, 1, bias=folded), norm(hidden, folded=folded), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1, bias=folded), norm(hidden, folded=folded), nn.ReLU(),
            nn.Conv2d(hidden, 4, 1, bias=True),
        )

    def forward(self, fine_src, base_src, base_fgr, base_pha, base_hid):
        fine_guide = torch.cat([fine_src, fine_src.mean(1, keepdim=True)], dim=1)
        guide = torch.cat([base_src, base_src.mean(1, keepdim=True)], dim=1)
        target = torch.cat([base_fgr, base_pha], dim=1)
        mean_guide = self.box_filter(guide)
        mean_target = self.box_filter(target)
        covariance = self.box_filter(guide * target) - mean_guide * mean_target
        variance = self.box_filter(guide * guide) - mean_guide * mean_guide
        a = self.conv(torch.cat([covariance, variance, base_hid], dim=1))
        b = mean_target - a * mean_guide
        size = fine_src.shape[2:]
        a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
        b = F.interpolate(b, size=size, mode="bilinear", align_corners=False)
        fgr, pha = (a * fine_guide + b).split([3, 1], dim=1)
        return fgr, pha


# --------------------------------------------------------------------------- the model


class ResizeByRatio(torch.autograd.Function):
    """Bilinear resize by a ratio given as a tensor at run time.

    ``F.interpolate`` only takes a Python number, which the tracer would bake in; this exports
    as one Resize whose scales are [1, 1, ratio, ratio] (ONNX Runtime semantics = PyTorch's
    ``recompute_scale_factor=False``).
    """

    @staticmethod
    def forward(ctx, x, ratio):
        return F.interpolate(x, scale_factor=float(ratio.reshape(-1)[0]), mode="bilinear",
                             align_corners=False, recompute_scale_factor=False)

    @staticmethod
    def symbolic(g, x, ratio):
        ones = g.op("Constant", value_t=torch.ones(2, dtype=torch.float32))
        flat = g.op("Reshape", ratio, g.op("Constant", value_t=torch.tensor([-1], dtype=torch.int64)))
        scales = g.op("Concat", ones, flat, flat, axis_i=0)
        roi = g.op("Constant", value_t=torch.zeros(0, dtype=torch.float32))
        return g.op("Resize", x, roi, scales, mode_s="linear",
                    coordinate_transformation_mode_s="pytorch_half_pixel")


class RobustVideoMatting(nn.Module):
    """The RVM inference network (no segmentation pass).

    Args:
        backbone: "mobilenetv3" or "resnet50".
        folded: batch norms folded into conv weights and biases (BN modules are Identity);
            the form of the official ONNX, and what post-training quantization starts from.
        fixed_ratio: bake this downsample ratio in; ``forward`` then ignores its
            ``downsample_ratio`` argument and the ONNX export has no ratio input.

    ``forward(src, r1, r2, r3, r4, downsample_ratio)`` returns ``(fgr, pha, r1, r2, r3, r4)``.
    ``src`` is Bx3xHxW RGB in 0..1, any H and W; the states may be 1x1x1x1 zeros on the first
    frame. A tensor ratio always runs the refiner (as the official ONNX graph, which cannot
    branch on a value); a Python number (or a fixed ratio) of 1 skips the resize and the
    refiner, as the official PyTorch model does.
    """

    def __init__(self, backbone: str = "mobilenetv3", *, folded: bool = False, fixed_ratio: float | None = None):
        super().__init__()
        if backbone not in BACKBONES:
            raise MtcError(f"unknown RVM backbone {backbone!r}", hint=f"choose one of: {', '.join(BACKBONES)}")
        if fixed_ratio is not None and not 0 < fixed_ratio <= 1:
            raise MtcError(f"downsample ratio must be in (0, 1], got {fixed_ratio}",
                           hint="RVM recommends 0.25 for HD and 0.125 for 4K")
        config = BACKBONES[backbone]
        self.backbone_name = backbone
        self.folded = folded
        self.fixed_ratio = fixed_ratio
        if backbone == "mobilenetv3":
            self.backbone = MobileNetV3LargeEncoder(folded=folded)
        else:  # RVM feeds the ResNet raw 0..1 RGB, without ImageNet normalisation
            self.backbone = ResNet(RESNET_BLOCKS[backbone], folded=folded)
        self.aspp = LRASPP(*config.aspp_channels, folded=folded)
        self.decoder = RecurrentDecoder(config.feature_channels, config.decoder_channels, folded=folded)
        self.project_mat = Projection(16, 4)
        # Only used by the segmentation training pass; kept so the official keys load.
        self.project_seg = Projection(16, 1)
        self.refiner = DeepGuidedFilterRefiner(folded=folded)

    def forward(self, src, r1, r2, r3, r4, downsample_ratio=None):
        ratio = self.fixed_ratio if self.fixed_ratio is not None else downsample_ratio
        if isinstance(ratio, torch.Tensor):
            src_sm, refine = ResizeByRatio.apply(src, ratio), True
        elif ratio is None or ratio == 1:
            src_sm, refine = src, False
        else:
            src_sm = F.interpolate(src, scale_factor=float(ratio), mode="bilinear", align_corners=False,
                                   recompute_scale_factor=False)
            refine = True
        f1, f2, f3, f4 = self.backbone(src_sm)
        f4 = self.aspp(f4)
        hid, r1, r2, r3, r4 = self.decoder(src_sm, f1, f2, f3, f4, r1, r2, r3, r4)
        fgr_residual, pha = self.project_mat(hid).split([3, 1], dim=1)
        if refine:
            fgr_residual, pha = self.refiner(src, src_sm, fgr_residual, pha, hid)
        fgr = (fgr_residual + src).clamp(0.0, 1.0)
        return fgr, pha.clamp(0.0, 1.0), r1, r2, r3, r4

    @property
    def input_names(self) -> tuple[str, ...]:
        return INPUT_NAMES if self.fixed_ratio is None else INPUT_NAMES[:-1]


def build_rvm(backbone: str = "mobilenetv3", *, folded: bool = False,
              fixed_ratio: float | None = None) -> RobustVideoMatting:
    """A randomly initialised RVM module in eval mode (see :class:`RobustVideoMatting`)."""
    return RobustVideoMatting(backbone, folded=folded, fixed_ratio=fixed_ratio).eval()


def load_rvm(weights: Path, backbone: str, *, fixed_ratio: float | None = None) -> RobustVideoMatting:
    """Build RVM and load an official checkpoint strictly (weights_only; mismatches are listed)."""
    module = build_rvm(backbone, fixed_ratio=fixed_ratio)
    load_checkpoint(module, Path(weights))
    return module.eval()


def fold_batchnorm(module: RobustVideoMatting) -> RobustVideoMatting:
    """Return a folded copy of an RVM module: each conv absorbs the batch norm that follows it.

    conv(x) * g / sqrt(v + eps) + (beta - m * g / sqrt(v + eps)) in float64, then cast back.
    The result computes the same function up to float rounding (PTQ4VM's stage 1 starts here).
    """
    folded = build_rvm(module.backbone_name, folded=True, fixed_ratio=module.fixed_ratio)
    source = dict(module.named_modules())
    with torch.no_grad():
        for name, target in folded.named_modules():
            if not isinstance(target, nn.Conv2d):
                continue
            conv = source[name]
            bn = source.get(batchnorm_after(name))
            if isinstance(bn, nn.BatchNorm2d):
                scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
                target.weight.copy_(conv.weight.double() * scale.view(-1, 1, 1, 1))
                bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
                target.bias.copy_((bias - bn.running_mean.double()) * scale + bn.bias.double())
            else:
                target.weight.copy_(conv.weight)
                if target.bias is not None:
                    target.bias.copy_(conv.bias)
    return folded.eval()


def batchnorm_after(conv_name: str) -> str:
    """Module path of the batch norm that follows a conv, by torchvision's naming."""
    head, _, last = conv_name.rpartition(".")
    if last.isdigit():  # Sequential [conv, bn, act]
        return f"{head}.{int(last) + 1}" if head else str(int(last) + 1)
    if last.startswith("conv"):  # ResNet: convN -> bnN
        return f"{head}.bn{last[4:]}" if head else f"bn{last[4:]}"
    return ""


# --------------------------------------------------------------------------- ONNX export


def _dynamic_axes(input_names) -> dict[str, dict[int, str]]:
    # Every state gets its own dim names (DESIGN.md: shared names make ONNX Runtime reuse
    # buffers across tensors of different shapes); the 1x1x1x1 first-frame state needs even
    # its channel dim dynamic.
    axes: dict[str, dict[int, str]] = {"src": {0: "batch", 2: "height", 3: "width"},
                                       "fgr": {0: "batch", 2: "height", 3: "width"},
                                       "pha": {0: "batch", 2: "height", 3: "width"}}
    for r in STATE_NAMES:
        axes[f"{r}i"] = {0: f"{r}i_batch", 1: f"{r}i_channels", 2: f"{r}i_height", 3: f"{r}i_width"}
        axes[f"{r}o"] = {0: "batch", 2: f"{r}o_height", 3: f"{r}o_width"}
    return {k: v for k, v in axes.items() if k in input_names or k in OUTPUT_NAMES}


def export_rvm_onnx(module: RobustVideoMatting, *, opset: int = 17,
                    example_size: tuple[int, int] = (144, 256)) -> onnx.ModelProto:
    """Export an RVM module to ONNX with dynamic batch/height/width and per-state dim names.

    With ``module.fixed_ratio`` set the graph has no ``downsample_ratio`` input and every
    Resize gets constant scales or Shape-derived int64 sizes (TensorRT-friendly); otherwise it
    has the official contract, ratio input included.
    """
    height, width = example_size
    example = [torch.rand(1, 3, height, width), *(torch.zeros(1, 1, 1, 1) for _ in STATE_NAMES)]
    if module.fixed_ratio is None:
        example.append(torch.tensor([0.5]))
    names = module.input_names
    return export_onnx(module.eval(), tuple(example), input_names=names, output_names=OUTPUT_NAMES,
                       dynamic_axes=_dynamic_axes(names), opset=opset)


def rvm_reference(module: RobustVideoMatting) -> TorchBackend:
    """The module behind the runtime's Backend protocol, for parity checks."""
    return TorchBackend(module, input_names=module.input_names, output_names=OUTPUT_NAMES)
