"""Clip metrics computed frame by frame, so HD clips never have to be held in memory.

Every figure is the one `mtc.metrics.matting_metrics` gives on the stacked clip: MAD, MSE,
Grad and Conn are per-frame means (all frames have the same pixel count), and dtSSD is the
mean of `dtssd_per_frame`, frame 0 counting as 0. The SOD metrics (MAE, F-, weighted F-, S-
and E-measure) are aggregated over frames or images as `mtc.metrics.SodScores` does.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from mtc.errors import MtcError
from mtc.metrics import METRIC_NAMES, SOD_METRIC_NAMES, SodScores, dtssd_per_frame, matting_metrics

ALL_METRIC_NAMES = METRIC_NAMES + SOD_METRIC_NAMES
# Independent images have no time axis, so an image folder gets every metric but dtSSD.
IMAGE_METRIC_NAMES = tuple(m for m in ALL_METRIC_NAMES if m != "dtssd")


def parse_metric_names(text: str | Sequence[str]) -> tuple[str, ...]:
    """'mad,dtssd' (or a list) -> validated metric names in ALL_METRIC_NAMES order."""
    names = [n.strip().lower() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = [n for n in names if n not in ALL_METRIC_NAMES]
    if unknown or not names:
        raise MtcError(f"unknown metric(s) {', '.join(map(repr, unknown)) or '(none given)'}",
                       hint=f"choose from {', '.join(ALL_METRIC_NAMES)}")
    return tuple(m for m in ALL_METRIC_NAMES if m in names)


def as_alpha(alpha: np.ndarray) -> np.ndarray:
    """A private float32 copy clipped to [0, 1], as every consumer of a matte sees it.

    Low-precision models overshoot by a few 1e-3; clipping keeps the metrics' range check for
    real errors (NaN and infinities still raise there).
    """
    return np.clip(np.asarray(alpha, dtype=np.float32), 0.0, 1.0)


class StreamingMetrics:
    """Accumulate matting metrics over a clip one frame pair at a time.

    Args:
        which: metric names (see mtc.metrics.METRIC_NAMES).
    """

    def __init__(self, which: Sequence[str] = METRIC_NAMES):
        self.which = parse_metric_names(which)
        self._spatial = tuple(m for m in self.which if m in METRIC_NAMES and m != "dtssd")
        sod = tuple(m for m in self.which if m in SOD_METRIC_NAMES)
        self._sod = SodScores(sod) if sod else None
        self._sums = dict.fromkeys((m for m in self.which if m in METRIC_NAMES), 0.0)
        self._previous: tuple[np.ndarray, np.ndarray] | None = None
        self.frames = 0

    def add(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add frame t: HxW predicted and reference alpha (float in [0, 1] or uint8)."""
        pred, gt = np.asarray(pred), np.asarray(gt)
        if pred.ndim != 2 or pred.shape != gt.shape:
            raise MtcError(f"alpha frames must be two HxW arrays of one size, got {pred.shape} and {gt.shape}",
                           hint="resize the ground truth to the benchmark resolution")
        if self._spatial:
            for name, value in matting_metrics(pred, gt, which=self._spatial).items():
                self._sums[name] += value
        if "dtssd" in self.which:
            if self._previous is not None:
                p0, g0 = self._previous
                self._sums["dtssd"] += float(dtssd_per_frame(np.stack([p0, pred]), np.stack([g0, gt]))[1])
            self._previous = (pred, gt)
        if self._sod is not None:
            self._sod.add(pred, gt)
        self.frames += 1

    def result(self) -> dict:
        """``{metric: clip value, ..., "frames": T}`` in ALL_METRIC_NAMES order; raises when no frame was added."""
        if not self.frames:
            raise MtcError("no frames were compared", hint="benchmark at least one frame")
        values = {name: total / self.frames for name, total in self._sums.items()}
        if self._sod is not None:
            values.update(self._sod.result())
        return {**{name: values[name] for name in self.which}, "frames": self.frames}


def compare_sessions(candidate, frames: Iterable[np.ndarray], *, reference=None,
                     ground_truth: Iterable[np.ndarray] | None = None,
                     metrics: Sequence[str] = METRIC_NAMES) -> dict:
    """Run `candidate` (and `reference`) over the same frames and score the candidate's alpha.

    Both sessions are reset first and keep their own recurrent state. Any object with
    ``.process(frame)`` returning something with ``.alpha`` works; ``.reset()`` is optional.

    Args:
        candidate: the session under test.
        frames: HxWx3 uint8 frames, in order.
        reference: a session to compare against (e.g. the FP32 artifact), or None.
        ground_truth: HxW alpha frames aligned with `frames` (float in [0, 1] or uint8), or None.
        metrics: which metrics to compute.

    Returns:
        ``{"reference": {...} | None, "gt": {...} | None}`` with StreamingMetrics results.

    Raises:
        MtcError: the ground truth ends before the frames, or a matte is invalid (NaN, ...).
    """
    sessions = [candidate] + ([reference] if reference is not None else [])
    for session in sessions:
        if hasattr(session, "reset"):
            session.reset()
    vs_reference = StreamingMetrics(metrics) if reference is not None else None
    vs_gt = StreamingMetrics(metrics) if ground_truth is not None else None
    truth: Iterator[np.ndarray] | None = iter(ground_truth) if ground_truth is not None else None
    for index, frame in enumerate(frames):
        alpha = as_alpha(candidate.process(frame).alpha)
        if vs_reference is not None:
            vs_reference.add(alpha, as_alpha(reference.process(frame).alpha))
        if truth is not None:
            gt = next(truth, None)
            if gt is None:
                raise MtcError(f"the ground truth ends after {index} frames, before the benchmarked frames do",
                               hint="pass --frames no larger than the ground truth's frame count")
            vs_gt.add(alpha, gt if gt.dtype == np.uint8 else as_alpha(gt))
    return {"reference": vs_reference.result() if vs_reference else None,
            "gt": vs_gt.result() if vs_gt else None}
