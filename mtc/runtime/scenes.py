"""Scene cuts: where a video's shots begin, so that each shot starts from fresh recurrent state.

A recurrent model carries what it saw into the next frame; across a hard cut that memory
belongs to another scene, and the new shot's first frames pay for it. The session resets its
state where :class:`SceneCutDetector` sees a cut, which compares each frame with the one before
it only. That locality is what lets a long video be split at its cuts into shots matted
independently (:func:`find_shots` lists them): every piece begins where a single run would have
reset anyway, so the pieces give the single run's frames exactly.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtc.errors import MtcError

# Mean absolute difference (0..255) of tiny grey thumbnails of consecutive frames above which
# a cut is declared: a hard cut changes most of the picture, motion within a shot a part of it.
DEFAULT_SCENE_CUT_THRESHOLD = 30.0
THUMBNAIL_SIZE = (36, 64)  # (rows, columns) the frame is sampled down to, about


class SceneCutDetector:
    """Says whether each frame begins a new shot, from it and the frame before it alone.

    Args:
        threshold: Mean grey-level change (0..255) between consecutive thumbnails that counts
            as a cut.
    """

    def __init__(self, threshold: float = DEFAULT_SCENE_CUT_THRESHOLD):
        if not threshold > 0:
            raise MtcError(f"scene-cut threshold must be > 0, got {threshold}",
                           hint=f"the default is {DEFAULT_SCENE_CUT_THRESHOLD:g} (mean grey-level change, 0..255)")
        self.threshold = float(threshold)
        self._previous: np.ndarray | None = None

    def forget(self) -> None:
        """The next frame is compared with nothing (a new stream, or a new frame size)."""
        self._previous = None

    def is_cut(self, frame: np.ndarray) -> bool:
        """Whether `frame` (HxWx3) begins a new shot; the first frame after `forget` never does."""
        h, w = frame.shape[:2]
        thumb = frame[::max(1, h // THUMBNAIL_SIZE[0]), ::max(1, w // THUMBNAIL_SIZE[1])].mean(axis=2, dtype=np.float32)
        previous, self._previous = self._previous, thumb
        return previous is not None and float(np.abs(thumb - previous).mean()) > self.threshold


@dataclass(frozen=True)
class ShotPlan:
    """Where a video's shots begin, and the frame times a later pass re-times its output with.

    Attributes:
        frames: Frames decoded.
        cuts: Indices (0-based) of the frames that begin a shot, ascending; 0 is not listed.
        times: Each frame's presentation time in seconds (None where the file stores none),
            as `VideoReader.timed_frames` gives them.
        lost_frames: Frames damaged data cost (`VideoReader.lost_frames`).
    """

    frames: int
    cuts: tuple[int, ...]
    times: tuple[float | None, ...]
    lost_frames: tuple[int, ...] = ()

    def shots(self) -> list[tuple[int, int]]:
        """[start, stop) frame ranges, one per shot."""
        edges = [0, *self.cuts, self.frames]
        return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]

    def pieces(self, min_frames: int) -> list[tuple[int, int]]:
        """Consecutive shots joined into [start, stop) ranges of at least `min_frames` frames
        (a video shorter than that is one piece): what a video is split into. Each range
        begins at frame 0 or at a cut."""
        if min_frames < 1:
            raise ValueError(f"min_frames must be >= 1, got {min_frames}")
        pieces: list[tuple[int, int]] = []
        for start, stop in self.shots():
            if pieces and pieces[-1][1] - pieces[-1][0] < min_frames:
                pieces[-1] = (pieces[-1][0], stop)
            else:
                pieces.append((start, stop))
        if len(pieces) > 1 and pieces[-1][1] - pieces[-1][0] < min_frames:
            last = pieces.pop()
            pieces[-1] = (pieces[-1][0], last[1])
        return pieces


def find_shots(path: str | os.PathLike, *, threshold: float = DEFAULT_SCENE_CUT_THRESHOLD,
               on_frame: Callable[[int], None] | None = None) -> ShotPlan:
    """Decode `path` once and list the frames where the session would reset at a cut.

    Args:
        path: Video file.
        threshold: As :class:`SceneCutDetector`; the sessions that matte the pieces must use
            the same value.
        on_frame: Called with the number of frames read so far, for progress.

    Raises:
        MtcError: A bad threshold, or the video cannot be read.
    """
    from mtc.runtime.video_reader import VideoReader

    detector = SceneCutDetector(threshold)
    cuts: list[int] = []
    times: list[float | None] = []
    with VideoReader(Path(path)) as video:
        for index, (moment, rgb) in enumerate(video.timed_frames()):
            times.append(moment)
            if detector.is_cut(rgb):
                cuts.append(index)
            if on_frame:
                on_frame(index + 1)
        lost = tuple(video.lost_frames)
    return ShotPlan(frames=len(times), cuts=tuple(cuts), times=tuple(times), lost_frames=lost)
