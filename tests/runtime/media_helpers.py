"""Helpers the image and video I/O tests share: smooth test frames, a video writer loop, leftover temporaries."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtc.runtime.video_writer import VideoWriter


def smooth_frame(height: int, width: int, index: int = 0, channels: int = 3) -> np.ndarray:
    """Smooth gradients that survive lossy coding nearly unchanged."""
    y, x = np.mgrid[0:height, 0:width]
    frame = np.empty((height, width, channels), np.uint8)
    frame[..., 0] = (x * 200 // width + index * 4) % 256
    frame[..., 1] = y * 200 // height + 20
    frame[..., 2] = 100 + index * 3
    if channels == 4:
        frame[..., 3] = x * 255 // max(width - 1, 1)
    return frame


def leftover_temporaries(folder: Path) -> list[str]:
    """The hidden temporaries an atomic write left behind in `folder`."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def write_video(path: Path, frames: list[np.ndarray], *, fps=24.0, kind="rgb", **kw) -> Path:
    """`frames` written to `path` by VideoWriter, every one of them counted."""
    height, width = frames[0].shape[:2]
    with VideoWriter(path, width=width, height=height, fps=fps, kind=kind, **kw) as writer:
        for frame in frames:
            writer.write(frame)
        assert writer.frames_written == len(frames)
    return path

