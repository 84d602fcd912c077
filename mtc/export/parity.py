"""Proof that two graphs compute the same thing: run both over the same frames, state and all."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mtc.artifact.manifest import ModelIO
from mtc.backends import Backend
from mtc.runtime.session import MattingSession

# The floor: the candidate graph run by a second implementation (ONNX Runtime with its graph
# optimizations off) differs from the first only by float32 summation order, by an amount
# that depends on the CPU class (kernels for AVX2 and for AVX-512 sum in other orders). The
# reference (PyTorch) is a third implementation, so it may differ from the candidate by about
# twice that. A broken export differs by orders of magnitude more.
FLOOR_FACTOR = 2.0


def allowed_difference(tolerance: float, floor: float) -> float:
    """The tolerance, or FLOOR_FACTOR times the measured floor where that is larger."""
    return max(tolerance, FLOOR_FACTOR * floor)


@dataclass(frozen=True)
class ParityResult:
    height: int
    width: int
    downsample_ratio: float | None
    frames: int
    max_abs_diff: dict[str, float]  # per output, over all frames
    tolerance: float
    floor: dict[str, float] | None = None  # per output: the candidate against its second implementation

    @property
    def worst(self) -> float:
        return max(self.max_abs_diff.values())

    @property
    def allowed(self) -> float:
        return allowed_difference(self.tolerance, max(self.floor.values(), default=0.0) if self.floor else 0.0)

    @property
    def passed(self) -> bool:
        return self.worst <= self.allowed

    def to_dict(self) -> dict:
        return {"resolution": f"{self.width}x{self.height}", "downsample_ratio": self.downsample_ratio,
                "frames": self.frames, "max_abs_diff": self.max_abs_diff, "tolerance": self.tolerance,
                **({"floor": self.floor, "allowed": self.allowed} if self.floor is not None else {}),
                "passed": self.passed}


def compare_on_frames(io: ModelIO, reference: Backend, candidate: Backend, frames: Sequence[np.ndarray], *,
                      downsample_ratio: float | None = None, tolerance: float = 1e-5,
                      background: np.ndarray | None = None, floor: Backend | None = None) -> ParityResult:
    """Feed `frames` through both backends, each carrying its own recurrent state.

    `background` is the plate for models with a background input (the frames' size). `floor`,
    if given, runs the candidate's graph by a second implementation: the result then allows
    FLOOR_FACTOR times what the two differ by, where that exceeds `tolerance`.
    """
    backends = [reference, candidate] + ([floor] if floor is not None else [])
    sessions = [MattingSession(io, b, downsample_ratio=downsample_ratio, scene_cut_threshold=None) for b in backends]
    for session in sessions:
        session.set_background(background)
    worst: dict[str, float] = {}
    floors: dict[str, float] = {}
    for frame in frames:
        ref, cand, *second = (s.step(frame) for s in sessions)
        for name in (t.name for t in io.outputs):  # the reference may have more (an alpha-only candidate)
            worst[name] = max(worst.get(name, 0.0), _max_diff(ref[name], cand[name]))
            if second:
                floors[name] = max(floors.get(name, 0.0), _max_diff(second[0][name], cand[name]))
    h, w = frames[0].shape[:2]
    return ParityResult(h, w, sessions[0].ratio_for(h, w), len(frames), worst, tolerance,
                        floors if floor is not None else None)


def _max_diff(want: np.ndarray, got: np.ndarray) -> float:
    return float(np.max(np.abs(want.astype(np.float64) - got))) if want.size else 0.0
