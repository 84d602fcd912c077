"""Benchmark inputs: frames at a resolution (built-in clip or a video) and ground-truth alpha."""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from mtc.errors import MtcError

log = logging.getLogger("mtc")

BUILTIN = "builtin"


def parse_resolution(text: str) -> tuple[int, int]:
    """'1920x1080' -> (1920, 1080); both sides at least 16."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or min(int(match[1]), int(match[2])) < 16:
        raise MtcError(f"{text!r} is not a resolution WIDTHxHEIGHT with both sides >= 16",
                       hint="write it like 1920x1080")
    return int(match[1]), int(match[2])


def parse_resolutions(values: str | Sequence[str]) -> list[tuple[int, int]]:
    """Repeated and/or comma-separated resolutions, duplicates dropped, order kept."""
    items = [values] if isinstance(values, str) else list(values)
    out: list[tuple[int, int]] = []
    for item in items:
        for part in item.split(","):
            if part.strip():
                size = parse_resolution(part)
                if size not in out:
                    out.append(size)
    return out


def resolution_name(width: int, height: int) -> str:
    return f"{width}x{height}"


def resize_rgb(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    if frame.shape[:2] == (height, width):
        return frame
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(frame)).resize((width, height), Image.BILINEAR))


def resize_alpha(alpha: np.ndarray, width: int, height: int) -> np.ndarray:
    """HxW alpha (uint8 or float) resized bilinearly; uint8 stays uint8 when no resize is needed."""
    if alpha.shape == (height, width):
        return alpha
    from PIL import Image

    plane = alpha.astype(np.float32) / 255.0 if alpha.dtype == np.uint8 else alpha.astype(np.float32)
    image = Image.fromarray(np.ascontiguousarray(plane), mode="F").resize((width, height), Image.BILINEAR)
    return np.clip(np.asarray(image), 0.0, 1.0)


def bench_frames(source: str | Path, width: int, height: int, count: int) -> list[np.ndarray]:
    """Pre-decode `count` HxWx3 uint8 frames at `width` x `height`.

    Args:
        source: "builtin" (the built-in clip rendered at that size) or a video file (its first
            `count` frames, resized bilinearly when the size differs).
        width, height: the benchmark resolution.
        count: frames wanted; a shorter video gives all it has (with a warning).
    """
    if count < 1:
        raise MtcError(f"--frames must be at least 1, got {count}", hint="pass --frames 8 or more")
    if str(source) == BUILTIN:
        from mtc.data.builtin_clip import ClipSpec, builtin_frames

        return list(builtin_frames(ClipSpec(width=width, height=height, frames=count)))
    from mtc.runtime.video_reader import VideoReader

    with VideoReader(Path(source)) as video:
        frames = [resize_rgb(f, width, height) for f in itertools.islice(video, count)]
    if len(frames) < count:
        log.warning("%s has only %d frames; benchmarking those instead of %d", source, len(frames), count)
    return frames


def read_alpha(path: Path) -> np.ndarray:
    """An alpha image as HxW: uint8, or float32 in [0, 1] for 16-bit and float files (RGBA: its alpha)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("LA", "RGBA", "PA") or "transparency" in image.info:
                return np.asarray(image.convert("RGBA"))[..., 3]
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                return np.clip(np.asarray(image, dtype=np.float64) / 65535.0, 0.0, 1.0).astype(np.float32)
            if image.mode == "F":
                return np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
            return np.asarray(image.convert("L"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise MtcError(f"cannot read ground-truth alpha {path}: {exc}", hint="pass 8-bit grey PNGs") from None


def iter_ground_truth(source: str | Path, width: int, height: int) -> Iterator[np.ndarray]:
    """Yield HxW ground-truth alpha frames (uint8, or float32 in [0, 1] when resized).

    Args:
        source: a folder of alpha images (natural order: 2 before 10; grey, 16-bit grey, or the
            alpha channel of RGBA) or an alpha video (its first colour channel is the alpha).
        width, height: the benchmark resolution; other sizes are resized bilinearly.

    Raises:
        MtcError: the path is missing, an empty folder, or not readable.
    """
    source = Path(source)
    if source.is_dir():
        from mtc.runtime.images import list_images

        for path in list_images(source):
            yield resize_alpha(read_alpha(path), width, height)
        return
    check_ground_truth(source)
    from mtc.runtime.images import is_image
    from mtc.runtime.video_reader import VideoReader

    if is_image(source):
        yield resize_alpha(read_alpha(source), width, height)
        return

    with VideoReader(source) as video:
        for frame in video:
            yield resize_alpha(np.ascontiguousarray(frame[..., 0]), width, height)


def check_ground_truth(source: str | Path) -> None:
    """Fail before any benchmarking when --gt cannot be read."""
    source = Path(source)
    if source.is_dir():
        from mtc.runtime.images import list_images

        list_images(source)
        return
    if not source.is_file():
        raise MtcError(f"ground truth {source} not found", hint="pass a folder of alpha PNGs or an alpha video")
