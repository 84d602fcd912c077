"""Proof that two graphs compute the same thing: run both over the same frames, state and all."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mtc.artifact.manifest import ModelIO
from mtc.backends import Backend
from mtc.runtime.session import MattingSession


@dataclass(frozen=True)
class ParityResult:
    height: int
    width: int
    downsample_ratio: float | None
    frames: int
    max_abs_diff: dict[str, float]  # per output, over all frames
    tolerance: float

    @property
    def worst(self) -> float:
        return max(self.max_abs_diff.values())

    @property
    def passed(self) -> bool:
        return self.worst <= self.tolerance

    def to_dict(self) -> dict:
        return {"resolution": f"{self.width}x{self.height}", "downsample_ratio": self.downsample_ratio,
                "frames": self.frames, "max_abs_diff": self.max_abs_diff, "tolerance": self.tolerance,
                "passed": self.passed}


def compare_on_frames(io: ModelIO, reference: Backend, candidate: Backend, frames: Sequence[np.ndarray], *,
                      downsample_ratio: float | None = None, tolerance: float = 1e-5,
                      background: np.ndarray | None = None) -> ParityResult:
    """Feed `frames` through both backends, each carrying its own recurrent state.

    `background` is the plate for models with a background input (the frames' size).
    """
    sessions = [MattingSession(io, b, downsample_ratio=downsample_ratio, scene_cut_threshold=None)
                for b in (reference, candidate)]
    for session in sessions:
        session.set_background(background)
    worst: dict[str, float] = {}
    for frame in frames:
        ref, cand = (s.step(frame) for s in sessions)
        for name in (t.name for t in io.outputs):  # the reference may have more (an alpha-only candidate)
            value = ref[name]
            diff = float(np.max(np.abs(value.astype(np.float64) - cand[name]))) if value.size else 0.0
            worst[name] = max(worst.get(name, 0.0), diff)
    h, w = frames[0].shape[:2]
    return ParityResult(h, w, sessions[0].ratio_for(h, w), len(frames), worst, tolerance)
