"""MODNet (Ke et al., AAAI 2022, Apache-2.0): trimap-free portrait matting from one RGB image.

Re-implemented from the paper and the facts of the official release (layer shapes and
checkpoint key names), so the official `.ckpt` files load strictly:

- a MobileNetV2 encoder (expansion 6, width 1.0, last 1x1 conv to 1280 channels) whose 19
  `features` are stored under both `backbone.model.` and `lr_branch.backbone.` (the same module
  is registered twice, so the checkpoint holds two copies);
- a low-resolution branch: SE block (reduction 4) on the 1/32 features, two 5x5 convs with
  bilinear 2x upsampling down to 1/8;
- a high-resolution branch at 1/4 and 1/2 fed with the image at 1/2 and 1/4;
- a fusion branch that upsamples to full size and ends in a sigmoid;
- IBNorm (BatchNorm on the first half of the channels, InstanceNorm without affine on the
  rest) after every hidden conv. The InstanceNorm half exports as ONNX InstanceNormalization,
  which the FP16 pass must keep an eye on (its variance overflows FP16 on some backends).

The exported graph is the inference path only: `src` (1x3xHxW, RGB normalised with mean 0.5 /
std 0.5, H and W multiples of 32) -> `alpha` (1x1xHxW in [0, 1]). The semantic and detail heads
(`lr_branch.conv_lr`, `hr_branch.conv_hr`) are training-only but stay in the module because the
checkpoints hold their weights.

Resolution rule of the official demos (`ref_size = 512`): if both sides are below 512 or both
above, scale so the *shorter* side becomes 512, otherwise keep the size; then floor each side
to a multiple of 32. The manifest states it as resize "reference" with reference_side 512 and
multiple_of 32; the official demos resize with area interpolation, the runtime bilinearly.

The official checkpoints live in a Google Drive folder without direct links and with no
published checksum: they are used unverified (the artifact records their sha256).
"""

from __future__ import annotations

import functools
from pathlib import Path

from mtc.artifact.manifest import ModelIO, Preprocess, TensorSpec
from mtc.models.registry import ModelSpec, VariantSpec, register
from mtc.weights import WeightFile

DRIVE_FOLDER = "https://drive.google.com/drive/folders/1umYmlCulvIFNaqPjwod1SayFmSRHziyR"
REFERENCE_SIDE = 512
MULTIPLE_OF = 32  # the encoder's output stride
HR_CHANNELS = 32
ENC_CHANNELS = (16, 24, 32, 96, 1280)  # MobileNetV2 features at 1/2, 1/4, 1/8, 1/16, 1/32

# (expansion t, output channels c, repeats n, first stride s) of MobileNetV2.
_MOBILENETV2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1))

INPUT_NAMES = ("src",)
OUTPUT_NAMES = ("alpha",)


def _official_file(filename: str) -> WeightFile:
    return WeightFile(filename=filename, sha256=None, size=None, license="Apache-2.0", sources=(),
                      download_page=DRIVE_FOLDER)


PHOTOGRAPHIC = _official_file("modnet_photographic_portrait_matting.ckpt")
WEBCAM = _official_file("modnet_webcam_portrait_matting.ckpt")

MODNET_IO = ModelIO(
    inputs=(TensorSpec("src", "image", layout="NCHW", value_range=(-1.0, 1.0)),),
    outputs=(TensorSpec("alpha", "alpha", layout="NCHW", value_range=(0.0, 1.0)),),
    preprocess=Preprocess(scale=1.0 / 255.0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize="reference",
                          reference_side=REFERENCE_SIDE, multiple_of=MULTIPLE_OF),
)


@functools.cache
def _classes():
    """The network's module classes, defined on first use so importing this file needs no torch."""
    from mtc.export.torch_export import require_torch

    torch = require_torch()
    nn = torch.nn
    F = torch.nn.functional

    def upsample2x(x):
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)

    class InvertedResidual(nn.Module):
        """MobileNetV2 block with its layers in one flat `conv` Sequential (the checkpoint's layout)."""

        def __init__(self, inp: int, oup: int, stride: int, expansion: int):
            super().__init__()
            hidden = round(inp * expansion)
            self.use_residual = stride == 1 and inp == oup
            layers = []
            if expansion != 1:  # pointwise expansion
                layers += [nn.Conv2d(inp, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
            layers += [
                nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                nn.ReLU6(inplace=True),
                nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup),  # linear bottleneck
            ]
            self.conv = nn.Sequential(*layers)

        def forward(self, x):
            return x + self.conv(x) if self.use_residual else self.conv(x)

    def conv_bn_relu6(inp: int, oup: int, kernel: int, stride: int):
        return nn.Sequential(nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(oup),
                             nn.ReLU6(inplace=True))

    class MobileNetV2Features(nn.Module):
        def __init__(self, in_channels: int = 3):
            super().__init__()
            layers = [conv_bn_relu6(in_channels, 32, 3, 2)]
            channels = 32
            for t, c, n, s in _MOBILENETV2_STAGES:
                for i in range(n):
                    layers.append(InvertedResidual(channels, c, s if i == 0 else 1, t))
                    channels = c
            layers.append(conv_bn_relu6(channels, ENC_CHANNELS[-1], 1, 1))
            self.features = nn.Sequential(*layers)

    class Backbone(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = MobileNetV2Features()

        def forward(self, x):
            f = self.model.features
            outs = []
            # Feature indices ending each output stride: 1/2, 1/4, 1/8, 1/16, 1/32.
            start = 0
            for end in (2, 4, 7, 14, 19):
                for i in range(start, end):
                    x = f[i](x)
                outs.append(x)
                start = end
            return outs

    class IBNorm(nn.Module):
        def __init__(self, channels: int):
            super().__init__()
            self.bnorm_channels = channels // 2
            self.bnorm = nn.BatchNorm2d(self.bnorm_channels, affine=True)
            self.inorm = nn.InstanceNorm2d(channels - self.bnorm_channels, affine=False)

        def forward(self, x):
            b = self.bnorm_channels
            return torch.cat((self.bnorm(x[:, :b]), self.inorm(x[:, b:])), 1)

    class ConvIBNormReLU(nn.Module):
        def __init__(self, inp: int, oup: int, kernel: int, stride: int = 1, padding: int = 0, *,
                     ibn: bool = True, relu: bool = True):
            super().__init__()
            layers = [nn.Conv2d(inp, oup, kernel, stride=stride, padding=padding, bias=True)]
            if ibn:
                layers.append(IBNorm(oup))
            if relu:
                layers.append(nn.ReLU(inplace=True))
            self.layers = nn.Sequential(*layers)

        def forward(self, x):
            return self.layers(x)

    class SEBlock(nn.Module):
        def __init__(self, channels: int, reduction: int):
            super().__init__()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Sequential(nn.Linear(channels, channels // reduction, bias=False), nn.ReLU(inplace=True),
                                    nn.Linear(channels // reduction, channels, bias=False), nn.Sigmoid())

        def forward(self, x):
            w = self.fc(self.pool(x).flatten(1))
            return x * w[:, :, None, None]

    class LRBranch(nn.Module):
        def __init__(self, backbone):
            super().__init__()
            e = ENC_CHANNELS
            self.backbone = backbone
            self.se_block = SEBlock(e[4], reduction=4)
            self.conv_lr16x = ConvIBNormReLU(e[4], e[3], 5, padding=2)
            self.conv_lr8x = ConvIBNormReLU(e[3], e[2], 5, padding=2)
            self.conv_lr = ConvIBNormReLU(e[2], 1, 3, stride=2, padding=1, ibn=False, relu=False)  # training only

        def forward(self, img):
            enc2x, enc4x, _, _, enc32x = self.backbone(img)
            lr16x = self.conv_lr16x(upsample2x(self.se_block(enc32x)))
            lr8x = self.conv_lr8x(upsample2x(lr16x))
            return lr8x, enc2x, enc4x

    class HRBranch(nn.Module):
        def __init__(self, hr: int):
            super().__init__()
            e = ENC_CHANNELS
            self.tohr_enc2x = ConvIBNormReLU(e[0], hr, 1)
            self.conv_enc2x = ConvIBNormReLU(hr + 3, hr, 3, stride=2, padding=1)
            self.tohr_enc4x = ConvIBNormReLU(e[1], hr, 1)
            self.conv_enc4x = ConvIBNormReLU(2 * hr, 2 * hr, 3, padding=1)
            self.conv_hr4x = nn.Sequential(ConvIBNormReLU(3 * hr + 3, 2 * hr, 3, padding=1),
                                           ConvIBNormReLU(2 * hr, 2 * hr, 3, padding=1),
                                           ConvIBNormReLU(2 * hr, hr, 3, padding=1))
            self.conv_hr2x = nn.Sequential(ConvIBNormReLU(2 * hr, 2 * hr, 3, padding=1),
                                           ConvIBNormReLU(2 * hr, hr, 3, padding=1),
                                           ConvIBNormReLU(hr, hr, 3, padding=1),
                                           ConvIBNormReLU(hr, hr, 3, padding=1))
            self.conv_hr = nn.Sequential(ConvIBNormReLU(hr + 3, hr, 3, padding=1),  # training only
                                         ConvIBNormReLU(hr, 1, 1, ibn=False, relu=False))

        def forward(self, img, enc2x, enc4x, lr8x):
            img2x = F.interpolate(img, scale_factor=0.5, mode="bilinear", align_corners=False)
            img4x = F.interpolate(img, scale_factor=0.25, mode="bilinear", align_corners=False)
            enc2x = self.tohr_enc2x(enc2x)
            hr4x = self.conv_enc2x(torch.cat((img2x, enc2x), 1))
            hr4x = self.conv_enc4x(torch.cat((hr4x, self.tohr_enc4x(enc4x)), 1))
            hr4x = self.conv_hr4x(torch.cat((hr4x, upsample2x(lr8x), img4x), 1))
            return self.conv_hr2x(torch.cat((upsample2x(hr4x), enc2x), 1))

    class FusionBranch(nn.Module):
        def __init__(self, hr: int):
            super().__init__()
            self.conv_lr4x = ConvIBNormReLU(ENC_CHANNELS[2], hr, 5, padding=2)
            self.conv_f2x = ConvIBNormReLU(2 * hr, hr, 3, padding=1)
            self.conv_f = nn.Sequential(ConvIBNormReLU(hr + 3, hr // 2, 3, padding=1),
                                        ConvIBNormReLU(hr // 2, 1, 1, ibn=False, relu=False))

        def forward(self, img, lr8x, hr2x):
            lr2x = upsample2x(self.conv_lr4x(upsample2x(lr8x)))
            f2x = self.conv_f2x(torch.cat((lr2x, hr2x), 1))
            return torch.sigmoid(self.conv_f(torch.cat((upsample2x(f2x), img), 1)))

    class MODNet(nn.Module):
        """Inference path: normalised RGB (N x 3 x H x W, H and W multiples of 32) -> matte in [0, 1]."""

        def __init__(self, hr_channels: int = HR_CHANNELS):
            super().__init__()
            self.backbone = Backbone()
            self.lr_branch = LRBranch(self.backbone)  # the same module again, as in the checkpoint
            self.hr_branch = HRBranch(hr_channels)
            self.f_branch = FusionBranch(hr_channels)

        def forward(self, img):
            lr8x, enc2x, enc4x = self.lr_branch(img)
            hr2x = self.hr_branch(img, enc2x, enc4x, lr8x)
            return self.f_branch(img, lr8x, hr2x)

    return MODNet


def build_network():
    """A randomly initialised MODNet whose state_dict has the official key layout (minus `module.`)."""
    return _classes()().eval()


def load_network(weights: Path):
    """MODNet with an official checkpoint loaded (DataParallel's `module.` prefix is stripped)."""
    from mtc.export.torch_export import load_checkpoint

    net = build_network()
    load_checkpoint(net, weights, strip_prefixes=("module.",))
    return net


def build_onnx(weights: Path):
    from mtc.export.torch_export import export_onnx, require_torch

    torch = require_torch()
    dims = {0: "batch", 2: "height", 3: "width"}
    return export_onnx(load_network(weights), (torch.zeros(1, 3, 288, 512),), input_names=INPUT_NAMES,
                       output_names=OUTPUT_NAMES, dynamic_axes={"src": dims, "alpha": dims}, opset=17)


def build_reference(weights: Path):
    from mtc.export.torch_export import TorchBackend

    return TorchBackend(load_network(weights), input_names=INPUT_NAMES, output_names=OUTPUT_NAMES)


# 512x288 runs as is; 520x200 (not a multiple of 32) is floored to 512x192 by the resize rule.
PARITY_CASES = ((512, 288, 2, None), (520, 200, 2, None))
# Max |diff| PyTorch vs ONNX Runtime allowed on alpha in [0, 1] (1/40 of an 8-bit step). The
# InstanceNorm halves differ most: measured up to 1.3e-5 on random weights, above the 1e-5 default.
PARITY_TOLERANCE = 1e-4


def _variant(name: str, weights: WeightFile) -> VariantSpec:
    return VariantSpec(name=name, weights=weights, io=MODNET_IO, build_onnx=build_onnx,
                       build_reference=build_reference, exporter="torch", parity_cases=PARITY_CASES,
                       parity_tolerance=PARITY_TOLERANCE)


register(
    ModelSpec(
        name="modnet",
        task="image_matting",
        summary="MODNet: real-time trimap-free portrait matting (photographic or webcam weights)",
        license="Apache-2.0",
        paper="arXiv:2011.11961",
        input_description="RGB portrait image or video frame, any size (rescaled around 512 px)",
        variants={
            "photographic": _variant("photographic", PHOTOGRAPHIC),
            "webcam": _variant("webcam", WEBCAM),
        },
        default_variant="photographic",
    )
)
