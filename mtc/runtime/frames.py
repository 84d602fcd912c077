"""Validation of frames handed to the runtime API, and the pixel limit (kept free of codec imports)."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator

import numpy as np

from mtc.errors import MtcError

MIN_FRAME_SIDE = 16

# One limit for every picture mtc is asked to allocate: image files, video streams, benchmark
# and gate resolutions. 8192x8192 covers 8K video and large photos; a few hundred bytes of
# header can claim far more, and the allocations behind it (decode, float tensors, resizes)
# would otherwise fail as a MemoryError traceback or take the machine down.
DEFAULT_MAX_PIXELS = 2**26
MAX_PIXELS_ENV = "MTC_MAX_PIXELS"
_RAISE_HINT = f"downscale it, or raise the limit with --max-pixels N or {MAX_PIXELS_ENV}=N"
_override: int | None = None


def parse_max_pixels(text: str, *, source: str = "--max-pixels") -> int:
    """A positive pixel count: '100000000', '1e8' or '12000x9000' (sides multiplied)."""
    cleaned = text.strip().lower()
    try:
        if "x" in cleaned:
            width, height = (int(side) for side in cleaned.split("x"))
            value = width * height if width > 0 and height > 0 else 0
        else:
            number = float(cleaned)
            value = int(number) if math.isfinite(number) and number.is_integer() else 0
    except (ValueError, OverflowError):
        value = 0
    if value <= 0:
        raise MtcError(f"{source} {text!r} is not a positive pixel count",
                       hint="write e.g. 100000000, 1e8 or 12000x9000")
    return value


def max_pixels() -> int:
    """The pixel limit in force: `pixel_limit`'s, else $MTC_MAX_PIXELS, else DEFAULT_MAX_PIXELS."""
    if _override is not None:
        return _override
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    return parse_max_pixels(text, source=MAX_PIXELS_ENV) if text else DEFAULT_MAX_PIXELS


@contextlib.contextmanager
def pixel_limit(limit: int) -> Iterator[None]:
    """Use `limit` (pixels per frame) instead of the environment's or the default inside the block."""
    global _override
    previous, _override = _override, int(limit)
    try:
        yield
    finally:
        _override = previous


def check_pixels(width: int, height: int, what: str) -> None:
    """Refuse a `width` x `height` picture over the pixel limit, before anything is allocated for it.

    Args:
        width: Width in pixels.
        height: Height in pixels.
        what: What the picture is, for the message (e.g. "image photo.png", "resolution 9000x9000").

    Raises:
        MtcError: Naming the size, the limit and how to raise it.
    """
    if width * height > max_pixels():
        raise pixel_limit_error(what, width * height, size=f"{width}x{height}")


def pixel_limit_error(what: str, pixels: int, *, size: str | None = None) -> MtcError:
    """The one-line error for `what` of `pixels` pixels (`size`: WxH where known) over the limit."""
    count = f"{size} = {pixels:,}" if size else f"{pixels:,}"
    return MtcError(f"{what} is {count} pixels, over the limit of {max_pixels():,}", hint=_RAISE_HINT)


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
    check_pixels(shape[1], shape[0], "frame")
