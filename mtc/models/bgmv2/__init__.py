"""BackgroundMattingV2 (Lin et al., CVPR 2021, MIT): matting with a captured background plate.

Re-implemented from the paper and the facts of the official release (layer shapes and
checkpoint key names), so the official `pytorch_<backbone>.pth` files load strictly. Inputs are
the frame `src` and the clean background plate `bgr`, both RGB in [0, 1] with H and W
divisible by 4; outputs are `pha` (alpha) and `fgr` (foreground), both at full resolution.

- Base network at 1/4 of the input (the official default `backbone_scale`): a DeepLabV3-style
  encoder on the 6-channel concatenation, MobileNetV2 or ResNet-50/101 in torchvision's layout
  (first conv widened to 6 channels, output stride 16 through dilation in the last stage), ASPP
  with rates (3, 6, 9), and a decoder that upsamples through the encoder's skips to 37 channels:
  coarse alpha, foreground residual, error map and 32 hidden channels.
- Refiner: two 3x3 convs at 1/2 resolution on hidden features + coarse outputs + both images,
  2x nearest upsampling, two 3x3 convs at full resolution with the images again.

Refinement modes and ONNX. The official refiner picks 4x4 patches ("sampling": the k patches
with the largest predicted error; "thresholding": those whose error exceeds a threshold) and
crops/scatters them with data-dependent gather/scatter. Those graphs have a dynamic patch count
(NonZero/TopK + ScatterND), which TensorRT profiles, INT8 calibration and FP16 checks handle
badly. Here:

- "full" (exported): refine every patch with ordinary convolutions over the padded image. Each
  refined pixel equals what the patch refiner computes for that patch (the patch crops carry
  exactly the receptive field: 3 px at 1/2 resolution, 2 px at full resolution).
- "thresholding" (exported): the same dense refinement, then a per-4x4-patch select between the
  refined result and the bilinearly upsampled coarse result where the coarse error (at 1/4)
  exceeds the threshold. Same output as the official thresholding mode, at full-mode cost.
  A patch whose error sits exactly at the threshold can flip between backends.
- "sampling" is not exported: its top-k selection has no dense equivalent that is cheaper
  than "full", and ties in the error map make it backend-dependent.

The official checkpoints are in a Google Drive folder without direct links and with no
published checksum: they are used unverified (the artifact records their sha256).
"""

from __future__ import annotations

import functools
from pathlib import Path

from mtc.artifact.manifest import ModelIO, Preprocess, TensorSpec
from mtc.models.registry import ModelSpec, VariantSpec, register
from mtc.weights import WeightFile

DRIVE_FOLDER = "https://drive.google.com/drive/folders/1cbetlrKREitIgjnIikG1HdM4x72FtgBh"
BACKBONES = ("mobilenetv2", "resnet50", "resnet101")
REFINE_MODES = ("full", "thresholding")
BACKBONE_DOWNSAMPLE = 4  # the official backbone_scale 1/4 (HD); 8 is the official choice for 4K
REFINE_THRESHOLD = 0.1  # the official default for "thresholding"
MULTIPLE_OF = 4

INPUT_NAMES = ("src", "bgr")
OUTPUT_NAMES = ("pha", "fgr")

_RESNET_BLOCKS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}
_MOBILENETV2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1))
_DECODER_CHANNELS = (256, 128, 64, 48, 1 + 3 + 1 + 32)  # ASPP out ... pha, fgr residual, err, hidden
_SKIP_CHANNELS = {"mobilenetv2": (32, 24, 16, 6), "resnet": (512, 256, 64, 6)}  # 1/8, 1/4, 1/2, 1/1

BGMV2_IO = ModelIO(
    inputs=(
        TensorSpec("src", "image", layout="NCHW", value_range=(0.0, 1.0)),
        TensorSpec("bgr", "background", layout="NCHW", value_range=(0.0, 1.0)),
    ),
    outputs=(
        TensorSpec("pha", "alpha", layout="NCHW", value_range=(0.0, 1.0)),
        TensorSpec("fgr", "foreground", layout="NCHW", value_range=(0.0, 1.0)),
    ),
    # Full resolution in; sides must be multiples of 4 (the runtime crops by resizing).
    preprocess=Preprocess(scale=1.0 / 255.0, resize="none", multiple_of=MULTIPLE_OF),
)


def _official_file(backbone: str) -> WeightFile:
    return WeightFile(filename=f"pytorch_{backbone}.pth", sha256=None, size=None, license="MIT", sources=(),
                      download_page=DRIVE_FOLDER)


@functools.cache
def _classes():
    """The network's module classes, defined on first use so importing this file needs no torch."""
    from mtc.export.torch_export import require_torch

    torch = require_torch()
    nn = torch.nn
    F = torch.nn.functional

    def resize(x, size, mode="bilinear"):
        if mode == "nearest":
            return F.interpolate(x, size=size, mode="nearest")
        return F.interpolate(x, size=size, mode=mode, align_corners=False)

    # ---- MobileNetV2 in torchvision's layout -----------------------------------------------

    def conv_bn_relu6(inp, oup, kernel, stride=1, groups=1):
        return nn.Sequential(nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                             nn.BatchNorm2d(oup), nn.ReLU6(inplace=True))

    class InvertedResidual(nn.Module):
        def __init__(self, inp, oup, stride, expansion):
            super().__init__()
            hidden = int(round(inp * expansion))
            self.use_residual = stride == 1 and inp == oup
            layers = [conv_bn_relu6(inp, hidden, 1)] if expansion != 1 else []
            layers += [conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                       nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup)]
            self.conv = nn.Sequential(*layers)

        def forward(self, x):
            return x + self.conv(x) if self.use_residual else self.conv(x)

    class MobileNetV2Encoder(nn.Module):
        """Features 0..17 (the final 1x1 conv to 1280 is dropped); block 14 keeps stride 1 and
        blocks 15..17 use dilation 2, so the deepest features stay at 1/16."""

        def __init__(self, in_channels):
            super().__init__()
            layers = [conv_bn_relu6(in_channels, 32, 3, 2)]
            channels = 32
            for t, c, n, s in _MOBILENETV2_STAGES:
                for i in range(n):
                    layers.append(InvertedResidual(channels, c, s if i == 0 else 1, t))
                    channels = c
            self.features = nn.Sequential(*layers)
            self.features[14].conv[1][0].stride = (1, 1)
            for block in self.features[15:]:
                block.conv[1][0].dilation = (2, 2)
                block.conv[1][0].padding = (2, 2)

        def forward(self, x):
            x0 = x
            shortcuts = []
            for i, block in enumerate(self.features):
                x = block(x)
                if i in (1, 3, 6):  # 1/2, 1/4, 1/8
                    shortcuts.append(x)
            x1, x2, x3 = shortcuts
            return x, x3, x2, x1, x0

    # ---- ResNet in torchvision's layout ----------------------------------------------------

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, inplanes, planes, stride=1, dilation=1, downsample=None):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(planes * 4)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = downsample

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            return self.relu(self.bn3(self.conv3(out)) + identity)

    class ResNetEncoder(nn.Module):
        """ResNet with the last stage dilated (stride 1, dilation 2) for output stride 16."""

        def __init__(self, in_channels, blocks):
            super().__init__()
            self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.inplanes = 64
            self.dilation = 1
            self.layer1 = self._stage(64, blocks[0], 1)
            self.layer2 = self._stage(128, blocks[1], 2)
            self.layer3 = self._stage(256, blocks[2], 2)
            self.layer4 = self._stage(512, blocks[3], 2, dilate=True)

        def _stage(self, planes, count, stride, dilate=False):
            first_dilation = self.dilation
            if dilate:  # trade the stride for dilation; the first block keeps the old dilation
                self.dilation *= stride
                stride = 1
            downsample = None
            if stride != 1 or self.inplanes != planes * 4:
                downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False),
                                           nn.BatchNorm2d(planes * 4))
            layers = [Bottleneck(self.inplanes, planes, stride, first_dilation, downsample)]
            self.inplanes = planes * 4
            layers += [Bottleneck(self.inplanes, planes, dilation=self.dilation) for _ in range(1, count)]
            return nn.Sequential(*layers)

        def forward(self, x):
            x0 = x
            x = self.relu(self.bn1(self.conv1(x)))
            x1 = x
            x2 = self.layer1(self.maxpool(x))
            x3 = self.layer2(x2)
            x4 = self.layer4(self.layer3(x3))
            return x4, x3, x2, x1, x0

    # ---- ASPP (torchvision's DeepLabV3 layout), decoder, refiner ---------------------------

    def conv_bn_relu(inp, oup, kernel, dilation=1):
        return nn.Sequential(nn.Conv2d(inp, oup, kernel, padding=dilation if kernel == 3 else 0, dilation=dilation,
                                       bias=False), nn.BatchNorm2d(oup), nn.ReLU())

    class ASPPPooling(nn.Sequential):
        def __init__(self, inp, oup):
            super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(inp, oup, 1, bias=False), nn.BatchNorm2d(oup),
                             nn.ReLU())

        def forward(self, x):
            pooled = super().forward(x)
            # Bilinear upsampling of a 1x1 map is a broadcast; expand says so without a Resize.
            return pooled.expand(-1, -1, x.shape[2], x.shape[3])

    class ASPP(nn.Module):
        def __init__(self, inp, rates=(3, 6, 9), oup=256):
            super().__init__()
            self.convs = nn.ModuleList([conv_bn_relu(inp, oup, 1), *(conv_bn_relu(inp, oup, 3, r) for r in rates),
                                        ASPPPooling(inp, oup)])
            self.project = nn.Sequential(nn.Conv2d(oup * len(self.convs), oup, 1, bias=False), nn.BatchNorm2d(oup),
                                         nn.ReLU(), nn.Dropout(0.5))

        def forward(self, x):
            return self.project(torch.cat([conv(x) for conv in self.convs], 1))

    class Decoder(nn.Module):
        def __init__(self, channels, skips):
            super().__init__()
            self.conv1 = nn.Conv2d(skips[0] + channels[0], channels[1], 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(channels[1])
            self.conv2 = nn.Conv2d(skips[1] + channels[1], channels[2], 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(channels[2])
            self.conv3 = nn.Conv2d(skips[2] + channels[2], channels[3], 3, padding=1, bias=False)
            self.bn3 = nn.BatchNorm2d(channels[3])
            self.conv4 = nn.Conv2d(skips[3] + channels[3], channels[4], 3, padding=1, bias=True)
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x4, x3, x2, x1, x0):
            x = self.relu(self.bn1(self.conv1(torch.cat([resize(x4, x3.shape[2:]), x3], 1))))
            x = self.relu(self.bn2(self.conv2(torch.cat([resize(x, x2.shape[2:]), x2], 1))))
            x = self.relu(self.bn3(self.conv3(torch.cat([resize(x, x1.shape[2:]), x1], 1))))
            return self.conv4(torch.cat([resize(x, x0.shape[2:]), x0], 1))

    class Refiner(nn.Module):
        """Dense form of the patch refiner (kernel size 3); see the module docstring."""

        def __init__(self, mode, threshold):
            super().__init__()
            self.mode = mode
            self.threshold = threshold
            self.conv1 = nn.Conv2d(32 + 6 + 4, 24, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(24)
            self.conv2 = nn.Conv2d(24, 16, 3, bias=False)
            self.bn2 = nn.BatchNorm2d(16)
            self.conv3 = nn.Conv2d(16 + 6, 12, 3, bias=False)
            self.bn3 = nn.BatchNorm2d(12)
            self.conv4 = nn.Conv2d(12, 4, 3, bias=True)
            self.relu = nn.ReLU(inplace=True)

        def forward(self, src, bgr, pha, fgr, err, hid):
            full = src.shape[2:]
            half = (full[0] // 2, full[1] // 2)
            src_bgr = torch.cat([src, bgr], 1)
            # Unpadded 3x3 convs: pad 3 px at 1/2 resolution and 2 px at full resolution, the
            # context each official patch crop carries.
            x = F.pad(resize(torch.cat([hid, pha, fgr], 1), half), (3, 3, 3, 3))
            y = F.pad(resize(src_bgr, half), (3, 3, 3, 3))
            x = self.relu(self.bn1(self.conv1(torch.cat([x, y], 1))))
            x = self.relu(self.bn2(self.conv2(x)))
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")  # (H/2 + 2) * 2 == H + 4
            x = self.relu(self.bn3(self.conv3(torch.cat([x, F.pad(src_bgr, (2, 2, 2, 2))], 1))))
            refined = self.conv4(x)
            if self.mode == "full":
                return refined[:, :1], refined[:, 1:]
            quarter = (full[0] // 4, full[1] // 4)
            selected = resize(err, quarter) > self.threshold
            selected = resize(selected.to(src.dtype), full, mode="nearest") > 0.5  # one flag per 4x4 patch
            coarse = resize(torch.cat([pha, fgr], 1), full)
            out = torch.where(selected, refined, coarse)
            return out[:, :1], out[:, 1:]

    class MattingRefine(nn.Module):
        """src, bgr (N x 3 x H x W in [0, 1], H and W divisible by 4) -> pha, fgr at full size."""

        def __init__(self, backbone, *, refine_mode="full", refine_threshold=REFINE_THRESHOLD,
                     backbone_downsample=BACKBONE_DOWNSAMPLE):
            super().__init__()
            if refine_mode not in REFINE_MODES:
                raise ValueError(f"refine mode {refine_mode!r} is not exportable; use one of {REFINE_MODES}")
            self.backbone_downsample = backbone_downsample
            if backbone == "mobilenetv2":
                self.backbone = MobileNetV2Encoder(6)
                self.aspp = ASPP(320)
                self.decoder = Decoder(_DECODER_CHANNELS, _SKIP_CHANNELS["mobilenetv2"])
            else:
                self.backbone = ResNetEncoder(6, _RESNET_BLOCKS[backbone])
                self.aspp = ASPP(2048)
                self.decoder = Decoder(_DECODER_CHANNELS, _SKIP_CHANNELS["resnet"])
            self.refiner = Refiner(refine_mode, refine_threshold)

        def coarse(self, src, bgr):
            """The base network at 1/k: alpha, foreground residual, error, hidden features."""
            k = self.backbone_downsample
            small = (src.shape[2] // k, src.shape[3] // k)
            x = torch.cat([resize(src, small), resize(bgr, small)], 1)
            x4, *shortcuts = self.backbone(x)
            x = self.decoder(self.aspp(x4), *shortcuts)
            return x[:, 0:1].clamp(0.0, 1.0), x[:, 1:4], x[:, 4:5].clamp(0.0, 1.0), x[:, 5:].relu()

        def forward(self, src, bgr):
            pha, fgr = self.refiner(src, bgr, *self.coarse(src, bgr))
            return pha.clamp(0.0, 1.0), (fgr + src).clamp(0.0, 1.0)

    return MattingRefine


def build_network(backbone: str, refine_mode: str = "full", *, refine_threshold: float = REFINE_THRESHOLD):
    """A randomly initialised MattingRefine in the official key layout."""
    return _classes()(backbone, refine_mode=refine_mode, refine_threshold=refine_threshold).eval()


def load_network(backbone: str, weights: Path, refine_mode: str = "full"):
    from mtc.export.torch_export import load_checkpoint

    net = build_network(backbone, refine_mode)
    load_checkpoint(net, weights, strip_prefixes=("module.",))
    return net


def _build_onnx(backbone: str, refine_mode: str, weights: Path):
    from mtc.export.torch_export import export_onnx, require_torch

    torch = require_torch()
    dims = {0: "batch", 2: "height", 3: "width"}
    example = (torch.rand(1, 3, 288, 512), torch.rand(1, 3, 288, 512))
    return export_onnx(load_network(backbone, weights, refine_mode), example, input_names=INPUT_NAMES,
                       output_names=OUTPUT_NAMES, dynamic_axes={name: dims for name in INPUT_NAMES + OUTPUT_NAMES},
                       opset=17)


def _build_reference(backbone: str, refine_mode: str, weights: Path):
    from mtc.export.torch_export import TorchBackend

    return TorchBackend(load_network(backbone, weights, refine_mode), input_names=INPUT_NAMES,
                        output_names=OUTPUT_NAMES)


# Small frames keep the check quick: 256x144 and 200x116 (multiples of 4, not of 32).
PARITY_CASES = ((256, 144, 2, None), (200, 116, 1, None))
# Max |diff| PyTorch vs ONNX Runtime allowed on pha/fgr in [0, 1] (1/40 of an 8-bit step);
# measured up to 2e-7 on random weights.
PARITY_TOLERANCE = 1e-4


def _variant(backbone: str, refine_mode: str) -> VariantSpec:
    name = backbone if refine_mode == "full" else f"{backbone}-{refine_mode}"
    return VariantSpec(name=name, weights=_official_file(backbone), io=BGMV2_IO,
                       build_onnx=functools.partial(_build_onnx, backbone, refine_mode),
                       build_reference=functools.partial(_build_reference, backbone, refine_mode),
                       exporter="torch", parity_cases=PARITY_CASES,
                       parity_tolerance=PARITY_TOLERANCE)


register(
    ModelSpec(
        name="bgmv2",
        task="image_matting",
        summary="BackgroundMattingV2: high-resolution matting given a clean background plate",
        license="MIT",
        paper="arXiv:2012.07810",
        input_description="RGB frame + background plate of the same size (sides multiples of 4)",
        variants={v.name: v for v in (_variant(b, m) for m in REFINE_MODES for b in BACKBONES)},
        default_variant="mobilenetv2",
        aliases=("backgroundmattingv2",),
    )
)
