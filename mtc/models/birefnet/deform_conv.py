"""Modulated deformable convolution (DCNv2) in the two ONNX forms a backend may need (imports torch).

BiRefNet's `DeformableConv2d` predicts, from its own input, an (dy, dx) offset and a modulation
weight (2 * sigmoid, in (0, 2)) for every kernel tap at every output position, and convolves
the input sampled bilinearly (zeros outside the image) at the shifted taps. The official code
calls torchvision's `deform_conv2d`; the same sampling written with plain tensor ops below is
the PyTorch computation, and it exports in one of two forms:

- "native": the standard ONNX `DeformConv` (opset 19), one node. Its offset layout is
  torchvision's: channel 2k is dy and 2k+1 dx of tap k (taps row-major). ONNX Runtime has CPU
  and CUDA kernels for it and the TensorRT parser takes it; OpenVINO (2026.4) reads it only as
  its own op (:mod:`mtc.passes.openvino.deform_conv`).
- "decomposed": the same arithmetic as ordinary ops (Floor, Gather, Mul, MatMul), for
  backends without the op. The four bilinear corners are gathered from the (N*H*W, C) image
  with flat int64 indices (clamped, their weight zeroed when outside the image), weighted,
  summed, and contracted with the kernel in one MatMul. Its largest tensor is the sampled
  (N, H*W, taps, C) stack: 822 MB for a 7x7 kernel on 64 channels at 256x256 (BiRefNet at
  1024² has one), so this form is for backends that need it, not the default.
  :mod:`mtc.passes.deform_conv` produces the same form from an exported native graph.

Both keep the batch dynamic and the spatial size static (read as Python ints at export).
"""

from __future__ import annotations

import torch
from torch import nn

from mtc.models.birefnet import DEFORM_CONV_FORMS

DEFORM_CONV_OPSET = 19  # the first opset with DeformConv


def _tap_grid(kernel: int, padding: int, out_h: int, out_w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Undeformed sampling rows and columns, each (out_h * out_w, kernel * kernel): position-major, taps row-major."""
    rows = torch.arange(out_h).view(-1, 1, 1, 1) - padding + torch.arange(kernel).view(1, 1, -1, 1)
    cols = torch.arange(out_w).view(1, -1, 1, 1) - padding + torch.arange(kernel).view(1, 1, 1, -1)
    shape = (out_h, out_w, kernel, kernel)
    return (rows.expand(shape).reshape(out_h * out_w, -1).float(),
            cols.expand(shape).reshape(out_h * out_w, -1).float())


def deform_conv2d(x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor, *,
                  padding: int) -> torch.Tensor:
    """Modulated deformable 2-D convolution, stride 1, dilation 1, one offset group, no bias.

    Args:
        x: Input (N, C, H, W).
        offset: (N, 2 * k * k, H_out, W_out), channel 2t = dy and 2t+1 = dx of tap t (row-major).
        mask: Modulation (N, k * k, H_out, W_out).
        weight: Kernel (O, C, k, k).
        padding: Zero padding on every side.

    Returns:
        (N, O, H_out, W_out).
    """
    channels, height, width = (int(d) for d in x.shape[1:])
    out_channels, kernel = int(weight.shape[0]), int(weight.shape[-1])
    out_h, out_w = int(offset.shape[2]), int(offset.shape[3])
    taps, positions = kernel * kernel, out_h * out_w

    base_rows, base_cols = _tap_grid(kernel, padding, out_h, out_w)
    offset = offset.reshape(-1, taps, 2, positions).permute(0, 3, 1, 2)  # (N, P, taps, 2)
    rows = base_rows.to(x.dtype) + offset[..., 0]
    cols = base_cols.to(x.dtype) + offset[..., 1]
    modulation = mask.reshape(-1, taps, positions).transpose(1, 2)  # (N, P, taps)

    row0, col0 = torch.floor(rows), torch.floor(cols)
    frac_r, frac_c = rows - row0, cols - col0
    image = x.permute(0, 2, 3, 1).reshape(-1, channels)  # (N*H*W, C)
    first_pixel = (torch.arange(x.shape[0]) * (height * width)).view(-1, 1, 1)  # the batch stays dynamic
    sampled = None
    for d_row, d_col, corner_weight in ((0, 0, (1 - frac_r) * (1 - frac_c)), (0, 1, (1 - frac_r) * frac_c),
                                        (1, 0, frac_r * (1 - frac_c)), (1, 1, frac_r * frac_c)):
        r, c = row0 + d_row, col0 + d_col
        inside = (r >= 0) & (r <= height - 1) & (c >= 0) & (c <= width - 1)
        index = r.clamp(0, height - 1) * width + c.clamp(0, width - 1)
        values = image[index.long() + first_pixel]  # (N, P, taps, C)
        term = values * (corner_weight * inside.to(x.dtype) * modulation).unsqueeze(-1)
        sampled = term if sampled is None else sampled + term
    kernel_matrix = weight.permute(0, 2, 3, 1).reshape(out_channels, taps * channels).t()  # (taps*C, O)
    out = sampled.reshape(-1, positions, taps * channels) @ kernel_matrix
    return out.transpose(1, 2).reshape(-1, out_channels, out_h, out_w)


class _NativeDeformConv(torch.autograd.Function):
    """Computes :func:`deform_conv2d`; exports as one ONNX DeformConv node."""

    @staticmethod
    def forward(ctx, x, offset, mask, weight, padding: int):
        if torch.onnx.is_in_onnx_export():
            # Only the output's shape matters to the exporter, which emits `symbolic` instead;
            # tracing the sampling ops into the node's body would be wasted (and trips the exporter).
            return x.new_zeros(x.shape[0], weight.shape[0], offset.shape[2], offset.shape[3])
        return deform_conv2d(x, offset, mask, weight, padding=padding)

    @staticmethod
    def symbolic(g, x, offset, mask, weight, padding: int):
        out_channels, _, kernel, _ = weight.type().sizes()
        # DeformConv's bias input sits before the mask, so it cannot be left out: zeros.
        bias = g.op("Constant", value_t=torch.zeros(out_channels))
        return g.op("DeformConv", x, weight, offset, bias, mask, kernel_shape_i=[kernel, kernel],
                    pads_i=[padding] * 4, strides_i=[1, 1], dilations_i=[1, 1], group_i=1, offset_group_i=1)


class DeformableConv2d(nn.Module):
    """BiRefNet's DCNv2 layer: offsets and modulation predicted by two same-size convs.

    Keys (the official ones): `offset_conv.*` (2k² channels, bias), `modulator_conv.*` (k²
    channels, bias), `regular_conv.weight` (the kernel; no bias in BiRefNet). `onnx_form`
    chooses how it exports (:data:`~mtc.models.birefnet.DEFORM_CONV_FORMS`); eager results do not depend on it.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, padding: int):
        super().__init__()
        self.padding = padding
        self.onnx_form = "native"
        self.offset_conv = nn.Conv2d(in_channels, 2 * kernel * kernel, kernel, padding=padding)
        self.modulator_conv = nn.Conv2d(in_channels, kernel * kernel, kernel, padding=padding)
        self.regular_conv = nn.Conv2d(in_channels, out_channels, kernel, padding=padding, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset = self.offset_conv(x)
        mask = 2.0 * torch.sigmoid(self.modulator_conv(x))
        weight = self.regular_conv.weight
        if self.onnx_form == "native":
            return _NativeDeformConv.apply(x, offset, mask, weight, self.padding)
        return deform_conv2d(x, offset, mask, weight, padding=self.padding)


def set_onnx_form(module: nn.Module, form: str) -> None:
    """Make every DeformableConv2d inside `module` export as `form` ("native" or "decomposed")."""
    if form not in DEFORM_CONV_FORMS:
        raise ValueError(f"deformable conv form must be one of {DEFORM_CONV_FORMS}, not {form!r}")
    for sub in module.modules():
        if isinstance(sub, DeformableConv2d):
            sub.onnx_form = form
