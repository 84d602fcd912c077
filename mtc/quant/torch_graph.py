"""A differentiable executor for ONNX graphs: the graph, op by op, as a torch module.

Learned quantization (block reconstruction, trained affine corrections) needs gradients
through the very graph that ships. Rather than re-implementing each model in torch, this runs
the sanitized FP32 ONNX itself: the ONNX graph stays the single source of truth, which also
covers models that exist only as ONNX. Conv, ConvTranspose, Gemm and MatMul weights (and
their biases) become trainable parameters; every other initializer is a constant.

Fake quantization attaches at graph edges: `set_input_transform(node, index, module)` makes
`node` read its `index`-th input through `module` (as a DequantizeLinear in front of it
would), `set_output_transform(node, module)` rewrites the node's first output in place.
`mtc.quant.fake_quant` places them where a Q/DQ plan puts Q/DQ nodes.

torch is the optional `export` extra; only code that trains quantization imports this module.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from mtc.errors import MtcError
from mtc.graph_edit import last_reader_positions

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError:  # the runtime never gets here: only learned quantization imports this module
    raise MtcError("learned quantization runs the graph in PyTorch, which is not installed",
                   hint="pip install 'mtc[export]' (pins the CPU build torch==2.13.0)") from None

# Ops whose weight (input 1) and bias (input 2), when initializers, are trainable parameters.
PARAMETRIC = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (1,)}

_DTYPES = {onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.DOUBLE: torch.float64,
           onnx.TensorProto.FLOAT16: torch.float16, onnx.TensorProto.INT64: torch.int64,
           onnx.TensorProto.INT32: torch.int32, onnx.TensorProto.INT8: torch.int8,
           onnx.TensorProto.UINT8: torch.uint8, onnx.TensorProto.BOOL: torch.bool}


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _ints(tensor) -> list[int]:
    return [int(v) for v in tensor.reshape(-1).tolist()]


def _present(inputs: Sequence, index: int):
    return inputs[index] if index < len(inputs) else None


def _binary(fn):
    return lambda inputs, attrs: fn(inputs[0], inputs[1])


def _div(a, b):
    if a.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")  # integer Div truncates, as C++ does


def _variadic(fn):
    def run(inputs, attrs):
        out = inputs[0]
        for other in inputs[1:]:
            out = fn(out, other)
        return out
    return run


def _reduce(fn):
    def run(inputs, attrs):
        x = inputs[0]
        axes = attrs.get("axes")
        if axes is None and _present(inputs, 1) is not None:
            axes = _ints(inputs[1])
        keep = bool(attrs.get("keepdims", 1))
        if not axes:
            if attrs.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        return fn(x, [a % x.dim() for a in axes], keep)
    return run


def _amax(x, axes, keep):
    return torch.amax(x, dim=axes, keepdim=keep)


def _amin(x, axes, keep):
    return torch.amin(x, dim=axes, keepdim=keep)


def _mean(x, axes, keep):
    return torch.mean(x, dim=axes, keepdim=keep)


def _sum(x, axes, keep):
    return torch.sum(x, dim=axes, keepdim=keep)


def _prod(x, axes, keep):
    for axis in sorted(axes, reverse=True):  # torch.prod takes one dim at a time
        x = torch.prod(x, dim=axis, keepdim=keep)
    return x


def _spatial_pads(pads: Sequence[int], dims: int) -> list[int]:
    """ONNX pads (all begins, then all ends) as F.pad's (last axis first) pairs."""
    out = []
    for axis in reversed(range(dims)):
        out += [pads[axis], pads[axis + dims]]
    return out


def _conv(inputs, attrs):
    x, weight, bias = inputs[0], inputs[1], _present(inputs, 2)
    dims = x.dim() - 2
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise MtcError("Conv with auto_pad is not supported by the torch executor",
                       hint="export the model with explicit pads")
    pads = list(attrs.get("pads", [0] * 2 * dims))
    strides = attrs.get("strides", [1] * dims)
    dilations = attrs.get("dilations", [1] * dims)
    group = attrs.get("group", 1)
    if pads[:dims] == pads[dims:]:
        padding = pads[:dims]
    else:
        x, padding = F.pad(x, _spatial_pads(pads, dims)), [0] * dims
    conv = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]
    return conv(x, weight, bias, stride=strides, padding=padding, dilation=dilations, groups=group)


def _conv_transpose(inputs, attrs):
    x, weight, bias = inputs[0], inputs[1], _present(inputs, 2)
    dims = x.dim() - 2
    pads = list(attrs.get("pads", [0] * 2 * dims))
    if "output_shape" in attrs or pads[:dims] != pads[dims:]:
        raise MtcError("ConvTranspose with output_shape or asymmetric pads is not supported by the torch executor",
                       hint="export the model with symmetric pads")
    conv = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[dims - 1]
    return conv(x, weight, bias, stride=attrs.get("strides", [1] * dims), padding=pads[:dims],
                output_padding=attrs.get("output_padding", [0] * dims), groups=attrs.get("group", 1),
                dilation=attrs.get("dilations", [1] * dims))


def _deform_conv(inputs, attrs):
    """ONNX DeformConv (2-D): each kernel tap samples the input bilinearly at its grid position
    plus a learned offset (zero outside the image), scaled by the optional mask, then the taps
    are combined as a grouped conv would."""
    x, weight, offset = inputs[0], inputs[1], inputs[2]
    bias, mask = _present(inputs, 3), _present(inputs, 4)
    n, channels, height, width = x.shape
    out_channels, _, kernel_h, kernel_w = weight.shape
    taps = kernel_h * kernel_w
    out_h, out_w = offset.shape[2:]
    offset_groups, groups = attrs.get("offset_group", 1), attrs.get("group", 1)
    stride_h, stride_w = attrs.get("strides", [1, 1])
    dilation_h, dilation_w = attrs.get("dilations", [1, 1])
    pad_top, pad_left = attrs.get("pads", [0, 0, 0, 0])[:2]
    tap_y = (torch.arange(kernel_h) * dilation_h).repeat_interleave(kernel_w).to(x.dtype)
    tap_x = (torch.arange(kernel_w) * dilation_w).repeat(kernel_h).to(x.dtype)
    grid_y = (torch.arange(out_h) * stride_h - pad_top).to(x.dtype)
    grid_x = (torch.arange(out_w) * stride_w - pad_left).to(x.dtype)
    offset = offset.reshape(n, offset_groups, taps, 2, out_h, out_w)
    y = tap_y.reshape(1, 1, taps, 1, 1) + grid_y.reshape(1, 1, 1, out_h, 1) + offset[:, :, :, 0]
    x_pos = tap_x.reshape(1, 1, taps, 1, 1) + grid_x.reshape(1, 1, 1, 1, out_w) + offset[:, :, :, 1]
    flat = x.reshape(n, offset_groups, channels // offset_groups, height * width)
    y0, x0 = torch.floor(y), torch.floor(x_pos)
    sampled = 0
    for corner_y, weight_y in ((y0, y0 + 1 - y), (y0 + 1, y - y0)):
        for corner_x, weight_x in ((x0, x0 + 1 - x_pos), (x0 + 1, x_pos - x0)):
            inside = (corner_y >= 0) & (corner_y < height) & (corner_x >= 0) & (corner_x < width)
            index = (corner_y.clamp(0, height - 1) * width + corner_x.clamp(0, width - 1)).long()
            index = index.reshape(n, offset_groups, 1, -1).expand(-1, -1, flat.shape[2], -1)
            values = flat.gather(3, index).reshape(n, offset_groups, -1, taps, out_h, out_w)
            sampled = sampled + values * (weight_y * weight_x * inside).unsqueeze(2)
    if mask is not None:
        sampled = sampled * mask.reshape(n, offset_groups, 1, taps, out_h, out_w)
    columns = sampled.reshape(n, groups, (channels // groups) * taps, out_h * out_w)
    kernels = weight.reshape(groups, out_channels // groups, (channels // groups) * taps)
    out = torch.einsum("gok,ngkl->ngol", kernels, columns).reshape(n, out_channels, out_h, out_w)
    return out if bias is None else out + bias.reshape(1, -1, 1, 1)


def _gemm(inputs, attrs):
    a, b, c = inputs[0], inputs[1], _present(inputs, 2)
    a = a.transpose(0, 1) if attrs.get("transA", 0) else a
    b = b.transpose(0, 1) if attrs.get("transB", 0) else b
    out = attrs.get("alpha", 1.0) * (a @ b)
    return out if c is None else out + attrs.get("beta", 1.0) * c


def _pool_padding(x, attrs, dims, value):
    pads = list(attrs.get("pads", [0] * 2 * dims))
    if pads[:dims] == pads[dims:]:
        return x, pads[:dims]
    return F.pad(x, _spatial_pads(pads, dims), value=value), [0] * dims


def _max_pool(inputs, attrs):
    x = inputs[0]
    dims = x.dim() - 2
    x, padding = _pool_padding(x, attrs, dims, -math.inf)
    pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[dims - 1]
    return pool(x, attrs["kernel_shape"], stride=attrs.get("strides", [1] * dims), padding=padding,
                dilation=attrs.get("dilations", [1] * dims), ceil_mode=bool(attrs.get("ceil_mode", 0)))


def _average_pool(inputs, attrs):
    x = inputs[0]
    dims = x.dim() - 2
    pads = list(attrs.get("pads", [0] * 2 * dims))
    if pads[:dims] != pads[dims:]:
        raise MtcError("AveragePool with asymmetric pads is not supported by the torch executor",
                       hint="export the model with symmetric pads")
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[dims - 1]
    return pool(x, attrs["kernel_shape"], stride=attrs.get("strides", [1] * dims), padding=pads[:dims],
                ceil_mode=bool(attrs.get("ceil_mode", 0)),
                count_include_pad=bool(attrs.get("count_include_pad", 0)))


def _global_average_pool(inputs, attrs):
    x = inputs[0]
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


def _channel_shape(x, values):
    return values.reshape([1, -1] + [1] * (x.dim() - 2))


def _batch_norm(inputs, attrs):
    x, scale, bias, mean, var = inputs[:5]
    inv = scale / torch.sqrt(var + attrs.get("epsilon", 1e-5))
    return (x - _channel_shape(x, mean)) * _channel_shape(x, inv) + _channel_shape(x, bias)


def _instance_norm(inputs, attrs):
    x, scale, bias = inputs
    return F.instance_norm(x, weight=scale, bias=bias, eps=attrs.get("epsilon", 1e-5))


def _layer_norm(inputs, attrs):
    x, scale, bias = inputs[0], inputs[1], _present(inputs, 2)
    axis = attrs.get("axis", -1) % x.dim()
    axes = tuple(range(axis, x.dim()))
    mean = x.mean(dim=axes, keepdim=True)
    centered = x - mean
    var = (centered * centered).mean(dim=axes, keepdim=True)
    out = centered / torch.sqrt(var + attrs.get("epsilon", 1e-5)) * scale
    return out if bias is None else out + bias


def _clip(inputs, attrs):
    x, low, high = inputs[0], _present(inputs, 1), _present(inputs, 2)
    low = attrs.get("min") if low is None else low
    high = attrs.get("max") if high is None else high
    if low is not None:
        x = torch.maximum(x, torch.as_tensor(low, dtype=x.dtype))
    if high is not None:
        x = torch.minimum(x, torch.as_tensor(high, dtype=x.dtype))
    return x


def _hard_sigmoid(inputs, attrs):
    return torch.clamp(inputs[0] * attrs.get("alpha", 0.2) + attrs.get("beta", 0.5), 0.0, 1.0)


def _concat(inputs, attrs):
    return torch.cat(list(inputs), dim=attrs["axis"])


def _split(inputs, attrs, outputs: int):
    x, axis = inputs[0], attrs.get("axis", 0)
    sizes = _present(inputs, 1)
    if sizes is not None:
        sizes = _ints(sizes)
    elif "split" in attrs:
        sizes = list(attrs["split"])
    else:
        parts = attrs.get("num_outputs", outputs)
        chunk = -(-x.shape[axis] // parts)
        sizes = [min(chunk, x.shape[axis] - i * chunk) for i in range(parts)]
    return list(torch.split(x, sizes, dim=axis))


def _slice(inputs, attrs):
    x = inputs[0]
    starts, ends = _ints(inputs[1]), _ints(inputs[2])
    axes = _ints(inputs[3]) if _present(inputs, 3) is not None else list(range(len(starts)))
    steps = _ints(inputs[4]) if _present(inputs, 4) is not None else [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis %= x.dim()
        size = x.shape[axis]
        start = start + size if start < 0 else start
        end = end + size if end < 0 else end
        if step > 0:
            start, end = min(max(start, 0), size), min(max(end, 0), size)
            x = x.narrow(axis, start, max(end - start, 0))[(slice(None),) * axis + (slice(None, None, step),)]
        else:
            start, end = min(max(start, 0), size - 1), min(max(end, -1), size - 1)
            x = x.index_select(axis, torch.arange(start, end, step, device=x.device))
    return x


def _depth_to_space(inputs, attrs):
    """Channel blocks to spatial blocks: DCR (the default) takes the block offset from the
    outer channel digits, CRD from the inner ones."""
    x, block = inputs[0], attrs["blocksize"]
    n, channels, height, width = x.shape
    depth = channels // (block * block)
    if _text(attrs.get("mode", "DCR")) == "DCR":
        x = x.reshape(n, block, block, depth, height, width).permute(0, 3, 4, 1, 5, 2)
    else:
        x = x.reshape(n, depth, block, block, height, width).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(n, depth, height * block, width * block)


def _top_k(inputs, attrs, outputs: int):
    x, k = inputs[0], _ints(inputs[1])[0]
    values, indices = torch.topk(x, k, dim=attrs.get("axis", -1), largest=bool(attrs.get("largest", 1)),
                                 sorted=bool(attrs.get("sorted", 1)))
    return [values, indices]


_SCATTER_REDUCTIONS = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


def _scatter_elements(inputs, attrs):
    data, indices, updates = inputs
    axis = attrs.get("axis", 0) % data.dim()
    indices = torch.where(indices < 0, indices + data.shape[axis], indices)
    reduction = _text(attrs.get("reduction", "none"))
    if reduction == "none":
        return data.scatter(axis, indices, updates)
    return data.scatter_reduce(axis, indices, updates, _SCATTER_REDUCTIONS[reduction], include_self=True)


def _einsum(inputs, attrs):
    return torch.einsum(_text(attrs["equation"]).replace(" ", ""), *inputs)


def _reshape(inputs, attrs):
    x, shape = inputs[0], _ints(inputs[1])
    if not attrs.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _flatten(inputs, attrs):
    x = inputs[0]
    axis = attrs.get("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), -1)


def _transpose(inputs, attrs):
    x = inputs[0]
    return x.permute(attrs.get("perm", list(reversed(range(x.dim())))))


def _unsqueeze(inputs, attrs):
    x = inputs[0]
    axes = attrs.get("axes") or _ints(inputs[1])
    rank = x.dim() + len(axes)
    for axis in sorted(a % rank for a in axes):
        x = x.unsqueeze(axis)
    return x


def _squeeze(inputs, attrs):
    x = inputs[0]
    axes = attrs.get("axes") or (_ints(inputs[1]) if _present(inputs, 1) is not None else None)
    if axes is None:
        return x.squeeze()
    return x.squeeze(tuple(a % x.dim() for a in axes))


def _gather(inputs, attrs):
    data, indices = inputs
    axis = attrs.get("axis", 0) % data.dim()
    indices = torch.where(indices < 0, indices + data.shape[axis], indices)
    picked = data.index_select(axis, indices.reshape(-1))
    return picked.reshape(data.shape[:axis] + indices.shape + data.shape[axis + 1:])


def _shape(inputs, attrs):
    shape = list(inputs[0].shape)
    start, end = attrs.get("start", 0), attrs.get("end", len(shape))
    return torch.tensor(shape[start:end], dtype=torch.int64)


def _constant_of_shape(inputs, attrs):
    value = attrs.get("value")
    fill = numpy_helper.to_array(value) if value is not None else np.zeros(1, np.float32)
    dtype = _DTYPES[value.data_type if value is not None else onnx.TensorProto.FLOAT]
    return torch.full(_ints(inputs[0]), fill.reshape(-1)[0].item(), dtype=dtype)


def _expand(inputs, attrs):
    x, shape = inputs[0], _ints(inputs[1])
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(shape)))


def _range(inputs, attrs):
    start, limit, delta = inputs
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)


def _where(inputs, attrs):
    return torch.where(inputs[0], inputs[1], inputs[2])


def _cast(inputs, attrs):
    return inputs[0].to(_DTYPES[attrs["to"]])


def _softmax(inputs, attrs):
    return torch.softmax(inputs[0], dim=attrs.get("axis", -1))


def _pad(inputs, attrs):
    x, pads = inputs[0], _ints(inputs[1])
    value = _present(inputs, 2)
    axes = _ints(inputs[3]) if _present(inputs, 3) is not None else list(range(x.dim()))
    full = [0] * (2 * x.dim())
    for i, axis in enumerate(a % x.dim() for a in axes):
        full[axis], full[axis + x.dim()] = pads[i], pads[i + len(axes)]
    mode = attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    torch_pads = []
    for axis in reversed(range(x.dim())):
        torch_pads += [full[axis], full[axis + x.dim()]]
    if mode == "constant":
        return F.pad(x, torch_pads, value=0.0 if value is None or value.numel() == 0 else value.item())
    if mode not in ("reflect", "edge"):
        raise MtcError(f"Pad mode {mode!r} is not supported by the torch executor", hint="use constant, reflect or edge")
    spatial = 2 * (x.dim() - 2)
    if any(torch_pads[spatial:]):  # torch pads only the trailing (spatial) dims in these modes
        raise MtcError(f"Pad mode {mode!r} on batch or channel dims is not supported by the torch executor",
                       hint="pad only spatial dims")
    return F.pad(x, torch_pads[:spatial], mode="reflect" if mode == "reflect" else "replicate")


def _source_coordinates(out_len: int, in_len: int, scale: np.float32, mode: str) -> np.ndarray:
    """Each output index's coordinate in the input (ONNX Resize), in float32 as ONNX Runtime
    computes it, so that rounding at interpolation edges matches."""
    x = np.arange(out_len, dtype=np.float32)
    if mode == "half_pixel":
        return (x + np.float32(0.5)) / scale - np.float32(0.5)
    if mode == "pytorch_half_pixel":
        return (x + np.float32(0.5)) / scale - np.float32(0.5) if out_len > 1 else np.zeros(1, np.float32)
    if mode == "align_corners":
        return x * np.float32((in_len - 1) / (out_len - 1)) if out_len > 1 else np.zeros(1, np.float32)
    if mode == "asymmetric":
        return x / scale
    raise MtcError(f"Resize coordinate_transformation_mode {mode!r} is not supported by the torch executor",
                   hint="use half_pixel, pytorch_half_pixel, align_corners or asymmetric")


def _nearest_index(coords: np.ndarray, rule: str) -> np.ndarray:
    if rule == "floor":
        return np.floor(coords)
    if rule == "ceil":
        return np.ceil(coords)
    if rule == "round_prefer_ceil":
        return np.floor(coords + np.float32(0.5))
    if rule == "round_prefer_floor":
        return np.ceil(coords - np.float32(0.5))
    raise MtcError(f"Resize nearest_mode {rule!r} is not supported by the torch executor", hint="use floor or round_*")


def _cubic_weights(fraction: np.ndarray, a: float) -> np.ndarray:
    """The four taps' weights (at floor - 1 .. floor + 2) of ONNX Resize's cubic convolution
    for a coordinate `fraction` past its floor, with coefficient `a`."""
    distances = np.stack([fraction + 1, fraction, 1 - fraction, 2 - fraction]).astype(np.float64)
    near = ((a + 2) * distances - (a + 3)) * distances * distances + 1  # |d| <= 1
    far = ((a * distances - 5 * a) * distances + 8 * a) * distances - 4 * a  # 1 < |d| < 2
    return np.where(distances <= 1, near, far)


def _resize_cubic(x, axis: int, coords: np.ndarray, in_len: int, attrs: dict):
    """Cubic along `axis`: taps outside the input read the edge, or with exclude_outside weigh
    nothing (the others renormalised)."""
    floor = np.floor(coords)
    weights = _cubic_weights(coords - floor, attrs["cubic_coeff_a"])
    taps = floor.astype(np.int64) + np.arange(-1, 3)[:, None]
    if attrs["exclude_outside"]:
        weights = weights * ((taps >= 0) & (taps < in_len))
        weights = weights / weights.sum(axis=0, keepdims=True)
    shape = [1] * x.dim()
    shape[axis] = len(coords)
    out = 0
    for tap, weight in zip(np.clip(taps, 0, in_len - 1), weights.astype(np.float32)):
        out = out + (x.index_select(axis, torch.from_numpy(tap).to(x.device))
                     * torch.from_numpy(weight).reshape(shape).to(x.device, x.dtype))
    return out


def _resize_axis(x, axis: int, out_len: int, scale: np.float32, attrs: dict):
    in_len = x.shape[axis]
    coords = _source_coordinates(out_len, in_len, scale, attrs["coordinate_transformation_mode"])
    if attrs["mode"] == "nearest":
        index = np.clip(_nearest_index(coords, attrs["nearest_mode"]), 0, in_len - 1).astype(np.int64)
        return x.index_select(axis, torch.from_numpy(index).to(x.device))
    if attrs["mode"] == "cubic":
        return _resize_cubic(x, axis, coords, in_len, attrs)
    coords = np.clip(coords, np.float32(0), np.float32(in_len - 1))
    low = np.minimum(coords.astype(np.int64), in_len - 1)
    high = np.minimum(low + 1, in_len - 1)
    upper_weight = coords - low.astype(np.float32)
    shape = [1] * x.dim()
    shape[axis] = out_len
    w_high = torch.from_numpy(upper_weight).reshape(shape).to(x.device, x.dtype)
    w_low = torch.from_numpy(np.float32(1) - upper_weight).reshape(shape).to(x.device, x.dtype)
    return (x.index_select(axis, torch.from_numpy(low).to(x.device)) * w_low
            + x.index_select(axis, torch.from_numpy(high).to(x.device)) * w_high)


def _resize(inputs, attrs):
    x = inputs[0]
    scales, sizes = _present(inputs, 2), _present(inputs, 3)
    settings = {
        "mode": _text(attrs.get("mode", "nearest")),
        "coordinate_transformation_mode": _text(attrs.get("coordinate_transformation_mode", "half_pixel")),
        "nearest_mode": _text(attrs.get("nearest_mode", "round_prefer_floor")),
        "cubic_coeff_a": attrs.get("cubic_coeff_a", -0.75),
        "exclude_outside": attrs.get("exclude_outside", 0),
    }
    if settings["mode"] not in ("nearest", "linear", "cubic") or attrs.get("antialias", 0) or "axes" in attrs:
        raise MtcError(f"Resize mode {settings['mode']!r} (or antialias/axes) is not supported by the torch executor",
                       hint="use nearest, linear or cubic")
    in_shape = list(x.shape)
    if sizes is not None and sizes.numel():
        out_shape = _ints(sizes)
        factors = [np.float32(o) / np.float32(i) for o, i in zip(out_shape, in_shape)]
    else:
        factors = [np.float32(s) for s in scales.reshape(-1).tolist()]
        out_shape = [int(np.float32(i) * f) for i, f in zip(in_shape, factors)]
    for axis, (out_len, factor) in enumerate(zip(out_shape, factors)):
        if out_len != in_shape[axis] or factor != 1:
            x = _resize_axis(x, axis, out_len, factor, settings)
    return x


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _constant(node: onnx.NodeProto, attrs: dict):
    if "value" in attrs:
        return _to_torch(numpy_helper.to_array(attrs["value"]))
    for name, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                        ("value_ints", np.int64)):
        if name in attrs:
            return torch.from_numpy(np.array(attrs[name], dtype))
    raise MtcError(f"Constant {node.name} has no supported value attribute", hint="fold it into an initializer")


def _to_torch(array: np.ndarray):
    return torch.from_numpy(np.array(array, copy=True))


def _unary(fn):
    return lambda inputs, attrs: fn(inputs[0])


OPS: dict[str, Callable] = {
    "Add": _binary(torch.add), "Sub": _binary(torch.sub), "Mul": _binary(torch.mul), "Div": _binary(_div),
    "Pow": _binary(torch.pow), "Equal": _binary(torch.eq), "Less": _binary(torch.lt), "Greater": _binary(torch.gt),
    "LessOrEqual": _binary(torch.le), "GreaterOrEqual": _binary(torch.ge), "And": _binary(torch.logical_and),
    "Or": _binary(torch.logical_or), "Max": _variadic(torch.maximum), "Min": _variadic(torch.minimum),
    "Sum": _variadic(torch.add),
    "Relu": _unary(torch.relu), "Sigmoid": _unary(torch.sigmoid), "Tanh": _unary(torch.tanh),
    "Erf": _unary(torch.erf), "Floor": _unary(torch.floor), "Sqrt": _unary(torch.sqrt), "Exp": _unary(torch.exp),
    "Log": _unary(torch.log), "Neg": _unary(torch.neg), "Abs": _unary(torch.abs), "Not": _unary(torch.logical_not),
    "Reciprocal": _unary(torch.reciprocal), "Identity": _unary(lambda x: x), "Sin": _unary(torch.sin),
    "Cos": _unary(torch.cos),
    "HardSigmoid": _hard_sigmoid, "Clip": _clip, "Softmax": _softmax,
    "Conv": _conv, "ConvTranspose": _conv_transpose, "DeformConv": _deform_conv, "Gemm": _gemm, "MatMul": _binary(torch.matmul),
    "MaxPool": _max_pool, "AveragePool": _average_pool, "GlobalAveragePool": _global_average_pool,
    "BatchNormalization": _batch_norm, "InstanceNormalization": _instance_norm,
    "LayerNormalization": _layer_norm,
    "ReduceMean": _reduce(_mean), "ReduceMax": _reduce(_amax), "ReduceMin": _reduce(_amin),
    "ReduceSum": _reduce(_sum), "ReduceProd": _reduce(_prod), "Einsum": _einsum,
    "ScatterElements": _scatter_elements,
    "Concat": _concat, "Slice": _slice, "Reshape": _reshape, "Flatten": _flatten, "Transpose": _transpose,
    "Unsqueeze": _unsqueeze, "Squeeze": _squeeze, "Gather": _gather, "Shape": _shape,
    "ConstantOfShape": _constant_of_shape, "Expand": _expand, "Range": _range, "Where": _where, "Cast": _cast,
    "Pad": _pad, "Resize": _resize, "DepthToSpace": _depth_to_space,
}
MULTI_OUTPUT = {"Split": _split, "TopK": _top_k}  # ops that return a list, one tensor per output
SUPPORTED_OPS = frozenset(OPS) | frozenset(MULTI_OUTPUT) | {"Constant"}


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    return sorted({n.op_type for n in model.graph.node if n.op_type not in SUPPORTED_OPS or n.domain not in ("", "ai.onnx")})


class GraphModule(nn.Module):
    """An ONNX graph run op by op in torch, with its layer weights as trainable parameters.

    `forward(feeds)` takes {graph input name: tensor} and returns {graph output name: tensor}.
    `run(env, start, stop)` runs only nodes[start:stop] on an environment of named tensors,
    which is how blocks are reconstructed one at a time.
    """

    def __init__(self, model: onnx.ModelProto):
        super().__init__()
        missing = unsupported_ops(model)
        if missing:
            raise MtcError(f"the torch executor does not support {', '.join(missing)}",
                           hint="learned quantization needs a graph of supported ops; use a plain calibrator instead")
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        if opset < 11:
            raise MtcError(f"the torch executor needs opset 11 or later (the graph has {opset})",
                           hint="upgrade the graph's opset first (onnx.version_converter)")
        graph = model.graph
        self.nodes: list[onnx.NodeProto] = list(graph.node)
        self.node_index = {n.name: i for i, n in enumerate(self.nodes)}
        self.attributes = [_attributes(n) for n in self.nodes]
        self.input_names = [i.name for i in graph.input]
        self.output_names = [o.name for o in graph.output]
        initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        trainable = {n.input[i] for n in self.nodes if n.op_type in PARAMETRIC
                     for i in PARAMETRIC[n.op_type] if i < len(n.input) and n.input[i] in initializers
                     and initializers[n.input[i]].dtype == np.float32}
        self.parameter_key = {name: f"p{i}" for i, name in enumerate(sorted(trainable))}
        self.weights = nn.ParameterDict({key: nn.Parameter(_to_torch(initializers[name]))
                                         for name, key in self.parameter_key.items()})
        self.constants = {name: _to_torch(value) for name, value in initializers.items() if name not in trainable}
        for node, attrs in zip(self.nodes, self.attributes):
            if node.op_type == "Constant":
                self.constants[node.output[0]] = _constant(node, attrs)
        self.input_transforms: dict[tuple[str, int], nn.Module] = {}
        self.output_transforms: dict[str, nn.Module] = {}
        self.transforms = nn.ModuleList()  # owns every transform's parameters
        self.last_use = self._last_uses()

    def _last_uses(self) -> dict[str, int]:
        last = last_reader_positions(self.nodes)
        for name in self.output_names:
            last[name] = len(self.nodes)
        return last

    def parameter(self, name: str):
        """The trainable tensor standing for initializer `name`."""
        return self.weights[self.parameter_key[name]]

    def is_parameter(self, name: str) -> bool:
        return name in self.parameter_key

    def set_input_transform(self, node: str, index: int, module: nn.Module) -> None:
        """Make `node` read its `index`-th input through `module` (shared modules share parameters)."""
        self.input_transforms[(node, index)] = module
        self._own(module)

    def set_output_transform(self, node: str, module: nn.Module) -> None:
        """Replace `node`'s first output y by module(y)."""
        self.output_transforms[node] = module
        self._own(module)

    def _own(self, module: nn.Module) -> None:
        if not any(m is module for m in self.transforms):
            self.transforms.append(module)

    def clear_transforms(self) -> None:
        self.input_transforms.clear()
        self.output_transforms.clear()
        self.transforms = nn.ModuleList()

    def _read(self, env: Mapping, node: onnx.NodeProto, index: int):
        name = node.input[index]
        if not name:
            return None
        if name in env:
            value = env[name]
        elif name in self.parameter_key:
            value = self.weights[self.parameter_key[name]]
        else:
            value = self.constants[name]
        transform = self.input_transforms.get((node.name, index))
        return value if transform is None else transform(value)

    def run(self, env: dict, start: int = 0, stop: int | None = None, *, keep: Iterable[str] = ()) -> dict:
        """Run nodes[start:stop] on `env` (tensor name -> tensor; updated in place and returned).

        Under no_grad, tensors are dropped after their last reader unless named in `keep`, so
        a full-resolution pass holds only the live tensors.
        """
        stop = len(self.nodes) if stop is None else stop
        keep = set(keep)
        release = not torch.is_grad_enabled()
        for position in range(start, stop):
            node, attrs = self.nodes[position], self.attributes[position]
            if node.op_type == "Constant":
                continue
            inputs = [self._read(env, node, i) for i in range(len(node.input))]
            if node.op_type in MULTI_OUTPUT:
                outputs = MULTI_OUTPUT[node.op_type](inputs, attrs, len(node.output))
            else:
                outputs = [OPS[node.op_type](inputs, attrs)]
            transform = self.output_transforms.get(node.name)
            if transform is not None:
                outputs[0] = transform(outputs[0])
            for name, value in zip(node.output, outputs):
                if name:
                    env[name] = value
            if release:
                for name in set(node.input) | set(node.output):
                    if name in env and self.last_use.get(name, -1) <= position and name not in keep:
                        del env[name]
        return env

    def forward(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        env = self.run(dict(feeds), keep=self.output_names)
        return {name: env[name] for name in self.output_names}

    def initializers(self) -> dict[str, np.ndarray]:
        """The trainable weights' current values by initializer name (to write back into ONNX)."""
        return {name: self.weights[key].detach().cpu().numpy() for name, key in self.parameter_key.items()}


def to_torch_feeds(feeds: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in feeds.items()}
