"""Validation of frames handed to the runtime API (kept free of codec imports)."""

from __future__ import annotations

import numpy as np

from mtc.errors import MtcError

MIN_FRAME_SIDE = 16


def check_frame(frame: object) -> None:
    """Validate a frame handed to the runtime API.

    Args:
        frame: Expected to be an ``HxWx3`` ``uint8`` RGB numpy array (any strides), with both
            sides at least 16 pixels.

    Raises:
        MtcError: Naming what is wrong with the layout and how to convert it.
    """
    if not isinstance(frame, np.ndarray):
        raise MtcError(
            f"frame must be a numpy array, got {type(frame).__name__}",
            hint="pass np.asarray(image) with shape HxWx3, dtype uint8, RGB order",
        )
    shape = frame.shape
    if frame.ndim == 2:
        raise MtcError(
            f"frame is 2-D {shape} (grayscale); expected HxWx3 RGB",
            hint="repeat it to 3 channels: np.repeat(frame[..., None], 3, axis=2)",
        )
    if frame.ndim != 3:
        raise MtcError(
            f"frame has shape {shape}; expected a single HxWx3 RGB frame",
            hint="pass one frame at a time, shaped (height, width, 3)",
        )
    if shape[2] != 3 and shape[0] in (3, 4) and shape[2] > 4:
        raise MtcError(
            f"frame has shape {shape}, which looks channels-first; expected HxWx3",
            hint="transpose it: frame.transpose(1, 2, 0)",
        )
    if shape[2] == 4:
        raise MtcError(
            f"frame has 4 channels {shape} (RGBA); expected HxWx3 RGB",
            hint="drop the alpha channel: frame[..., :3]",
        )
    if shape[2] == 1:
        raise MtcError(
            f"frame has 1 channel {shape} (grayscale); expected HxWx3 RGB",
            hint="repeat it to 3 channels: np.repeat(frame, 3, axis=2)",
        )
    if shape[2] != 3:
        raise MtcError(f"frame has {shape[2]} channels {shape}; expected HxWx3 RGB", hint="pass an RGB frame")
    if frame.dtype != np.uint8:
        if frame.dtype == np.uint16:
            fix = "convert to uint8: (frame >> 8).astype(np.uint8)"
        elif np.issubdtype(frame.dtype, np.floating):
            fix = "convert to uint8: (frame.clip(0, 1) * 255).round().astype(np.uint8) for values in [0, 1]"
        else:
            fix = "convert to uint8 with values 0..255"
        raise MtcError(f"frame dtype is {frame.dtype}; expected uint8", hint=fix)
    if shape[0] < MIN_FRAME_SIDE or shape[1] < MIN_FRAME_SIDE:
        problem = "is empty" if frame.size == 0 else "is too small"
        raise MtcError(
            f"frame {problem} ({shape[1]}x{shape[0]}); both sides must be at least {MIN_FRAME_SIDE} px",
            hint="pass a real image frame, shaped (height, width, 3)",
        )
