"""Motion between consecutive calibration frames, for PTQ4VM's flow-assisted temporal loss.

Quantization error that changes from frame to frame is flicker, which a per-frame loss does
not see. The temporal loss compares how the quantized model's alpha changes between frames t
and t+1 with how the FP32 model's changes, after following the motion: the prediction at t+1 is
warped back onto frame t along the optical flow, so that only the change the motion does not
explain is compared. Pixels with no counterpart in the other frame (occluded, disoccluded, or
leaving the picture) are masked out by a forward-backward consistency check.

The flow is OpenCV's DIS (Kroeger et al. 2016) on the input frames: a fast, well-tested
estimator, not flow code of our own and not another network. OpenCV is only needed here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mtc.errors import MtcError
from mtc.quant.torch_graph import torch

# Forward-backward check (Sundaram et al. 2010): a pixel is consistent when the round trip
# |f(p) + b(p + f(p))|^2 stays below ALPHA * (|f|^2 + |b|^2) + BETA (pixels^2).
ALPHA, BETA = 0.01, 0.5
# ... and the pixel it lands on differs from the one it left by less than this share of the
# frames' value range in every channel.
COLOR_TOLERANCE = 0.05


@dataclass(frozen=True)
class FramePair:
    """Frames t and t+1 of a clip: the flow from t to t+1 (H, W, 2; x then y, in pixels: pixel
    p of frame t is at p + flow[p] in frame t+1) and where it can be trusted (H, W; 1 = valid)."""

    flow: np.ndarray
    valid: np.ndarray


def _gray(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """A (3, H, W) or (H, W, 3) float image as 8-bit grey for DIS, on a range shared by the pair."""
    channels_first = image.ndim == 3 and image.shape[0] == 3
    grey = image.mean(axis=0 if channels_first else -1)
    return np.clip((grey - low) / max(high - low, 1e-8) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def dis_flow(previous: np.ndarray, following: np.ndarray) -> np.ndarray:
    """Flow from `previous` to `following` (float images, (3, H, W) or (H, W, 3), any value range)."""
    try:
        import cv2
    except ImportError:
        raise MtcError("the flow-assisted temporal loss needs OpenCV, which is not installed",
                       hint="pip install opencv-python-headless") from None
    low, high = float(min(previous.min(), following.min())), float(max(previous.max(), following.max()))
    estimator = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return estimator.calc(_gray(previous, low, high), _gray(following, low, high), None).astype(np.float32)


def consistent(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """1 where the forward flow (t -> t+1) lands inside frame t+1 and the backward flow there
    (t+1 -> t) brings it back (ALPHA, BETA), else 0: occluded, disoccluded or out of frame."""
    height, width = forward.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    x, y = xs + forward[..., 0], ys + forward[..., 1]
    inside = (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)
    back = np.stack([_bilinear(backward[..., k], x, y) for k in range(2)], axis=-1)
    round_trip = ((forward + back) ** 2).sum(-1)
    bound = ALPHA * ((forward ** 2).sum(-1) + (back ** 2).sum(-1)) + BETA
    return (inside & (round_trip < bound)).astype(np.float32)


def _bilinear(channel: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    height, width = channel.shape
    x, y = np.clip(x, 0, width - 1), np.clip(y, 0, height - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    fx, fy = x - x0, y - y0
    top = channel[y0, x0] * (1 - fx) + channel[y0, x1] * fx
    bottom = channel[y1, x0] * (1 - fx) + channel[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def frame_pair(previous: np.ndarray, following: np.ndarray) -> FramePair:
    """The flow from `previous` to `following`, valid where it passes the forward-backward check
    and where the pixel it lands on looks like the one it left (within COLOR_TOLERANCE of the
    pair's value range): across a scene cut a smooth flow field can be consistent both ways
    and still follow nothing."""
    forward = dis_flow(previous, following)
    valid = consistent(forward, dis_flow(following, previous))
    channels_last = previous if previous.shape[-1] == 3 else previous.transpose(1, 2, 0)
    later = following if following.shape[-1] == 3 else following.transpose(1, 2, 0)
    height, width = forward.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    x, y = xs + forward[..., 0], ys + forward[..., 1]
    landed = np.stack([_bilinear(later[..., k], x, y) for k in range(3)], axis=-1)
    scale = max(float(max(previous.max(), following.max()) - min(previous.min(), following.min())), 1e-8)
    alike = np.abs(landed - channels_last).max(-1) / scale < COLOR_TOLERANCE
    return FramePair(forward, valid * alike)


def warp_back(following, flow: np.ndarray):
    """`following` (N, C, H, W torch tensor, frame t+1) sampled at p + flow[p]: frame t+1's
    values brought onto frame t's pixels (bilinear, differentiable)."""
    height, width = flow.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    x = (xs + flow[..., 0]) / max(width - 1, 1) * 2 - 1  # grid_sample's [-1, 1] with align_corners
    y = (ys + flow[..., 1]) / max(height - 1, 1) * 2 - 1
    grid = torch.from_numpy(np.stack([x, y], axis=-1)[None]).to(following.dtype).expand(following.shape[0], -1, -1, -1)
    return torch.nn.functional.grid_sample(following, grid, mode="bilinear", padding_mode="border", align_corners=True)


def temporal_error(student_t, student_next, teacher_t, teacher_next, pair: FramePair):
    """Mean squared difference, over valid pixels, between the student's and the teacher's
    change from frame t to the motion-compensated frame t+1."""
    valid = torch.from_numpy(pair.valid)[None, None].to(student_t.dtype)
    change = (warp_back(student_next, pair.flow) - student_t) - (warp_back(teacher_next, pair.flow) - teacher_t)
    return (change ** 2 * valid).sum() / (valid.sum() * change.shape[1] * change.shape[0]).clamp(min=1)
