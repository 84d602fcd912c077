"""Calibration and check data: frames from videos, image folders or the built-in clip, and the
exact model inputs (recurrent state included) that the FP32 model sees on them.

Recurrent models are calibrated on the states the FP32 model itself produces over each clip in
order; zero states would calibrate a situation that never occurs after the first frame.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtc.artifact.manifest import ModelIO
from mtc.backends import Backend, OrtBackend
from mtc.errors import MtcError
from mtc.runtime.session import MattingSession

BUILTIN = "builtin"


@dataclass(frozen=True)
class Clip:
    """Consecutive frames (TxHxWx3 uint8) and the downsample ratio to run them at."""

    name: str
    frames: np.ndarray
    downsample_ratio: float | None = None


def load_clips(source: str | Path, *, frames: int, size: tuple[int, int] | None = None, seed: int = 0,
               downsample_ratio: float | None = None, builtin_shots: int | None = None,
               keep_aspect: bool = False) -> list[Clip]:
    """Clips from `source`: "builtin", a video file, or a folder of images (each image its own clip).

    Args:
        source: where the frames come from.
        frames: at most this many frames in total.
        size: (width, height) to resize to; the built-in clip is rendered at this size
            (default 512x288); files keep their size when None.
        seed: motion variant of the built-in clip (use another seed for held-out checks).
        downsample_ratio: fixed ratio for recurrent models (None: the model's auto rule).
        builtin_shots: shots of the built-in clip (None: one per background photo, as
            calibration wants).
        keep_aspect: for a model that runs frames at their own aspect: a file's frames keep
            theirs, `size` turned to their orientation (portrait footage gets height x width)
            and centre-cropped to its aspect, rather than stretched to `size` (as a model with a
            fixed input size sees them).
    """
    if str(source) == BUILTIN:
        from mtc.data.builtin_clip import CALIBRATION_SHOTS, ClipSpec, builtin_clip

        width, height = size or (512, 288)
        # Every background photo gets a shot: calibrated on the two-shot demo clip instead, the
        # speed preset's MAD on real footage (evalset composites, the recurrent video model at 512x288) was 1.22, on
        # six scenes 0.81 (and 0.66 with asymmetric ranges; benchmarks/RESULTS.md).
        shots = builtin_shots or CALIBRATION_SHOTS
        clip = builtin_clip(ClipSpec(width=width, height=height, frames=frames, seed=seed, shots=shots))
        return [Clip(f"builtin-{width}x{height}-seed{seed}", clip, downsample_ratio)]
    path = Path(source)
    from mtc.runtime.images import list_images, read_image
    from mtc.runtime.video_reader import is_video

    if path.is_file() and is_video(path):
        from mtc.runtime.video_reader import VideoReader

        collected = []
        with VideoReader(path) as reader:
            for frame in reader:
                collected.append(_resize(frame, size, keep_aspect))
                if len(collected) >= frames:
                    break
        return [Clip(path.name, np.stack(collected), downsample_ratio)]
    if path.is_dir():
        images = list_images(path)[:frames]
        return [Clip(p.name, _resize(read_image(p), size, keep_aspect)[None], downsample_ratio) for p in images]
    raise MtcError(f"calibration source not found or not a video/folder: {source}",
                   hint=f"pass a video, a folder of images, or `{BUILTIN}`")


def builtin_photo_clips(split: str, size: tuple[int, int]) -> list[Clip]:
    """The built-in still photos of `split` ("calibration" or "check"), one clip each, at `size`."""
    from mtc.data.builtin_photos import builtin_photos

    return [Clip(f"photo-{name.rsplit('.', 1)[0]}-{size[0]}x{size[1]}", frame[None])
            for name, frame in builtin_photos(split, size)]


def _resize(frame: np.ndarray, size: tuple[int, int] | None, keep_aspect: bool = False) -> np.ndarray:
    """`frame` at `size` (width, height): stretched, or with `keep_aspect` at `size` turned to the
    frame's orientation and centre-cropped to its aspect (nothing squashed)."""
    if size is None:
        return frame
    height, width = frame.shape[:2]
    if keep_aspect and (height > width) != (size[1] > size[0]):
        size = (size[1], size[0])
    if (width, height) == size:
        return frame
    from PIL import Image

    from mtc.runtime.images import cover

    image = Image.fromarray(frame)
    return np.asarray(cover(image, size) if keep_aspect else image.resize(size, Image.Resampling.BILINEAR))


class RecordingBackend:
    """Passes runs through and keeps a copy of the inputs it was fed: of every run, or of the
    runs numbered in `keep` (counted from 0), so a caller that needs a few never holds them all."""

    def __init__(self, backend: Backend, keep: Collection[int] | None = None):
        self.backend, self.name = backend, "recording"
        self.input_names, self.output_names = backend.input_names, backend.output_names
        self.feeds: list[dict[str, np.ndarray]] = []
        self._keep, self._runs = (None if keep is None else set(keep)), 0

    def run(self, feeds):
        if self._keep is None or self._runs in self._keep:
            self.feeds.append({k: np.array(v, copy=True) for k, v in feeds.items()})
        self._runs += 1
        return self.backend.run(feeds)


def calibration_record(sources: Sequence[str | Path], clips: Sequence[Clip]) -> dict:
    """What report.json says a quantization was calibrated on: the sources, the frames (one
    recorded model input each) and the clips they came in."""
    return {"sources": [str(source) for source in sources], "frames": sum(len(c.frames) for c in clips),
            "clips": [{"name": c.name, "frames": len(c.frames), "downsample_ratio": c.downsample_ratio} for c in clips]}


def record_feeds(io: ModelIO, fp32_model: bytes | Path, clips: list[Clip]) -> list[dict[str, np.ndarray]]:
    """The model inputs, recurrent state included, that the FP32 model gets when run over `clips`."""
    recorder = RecordingBackend(OrtBackend(fp32_model))
    for clip in clips:
        session = MattingSession(io, recorder, downsample_ratio=clip.downsample_ratio, scene_cut_threshold=None)
        for frame in clip.frames:
            session.step(frame)
    return recorder.feeds
