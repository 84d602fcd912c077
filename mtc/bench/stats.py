"""Latency statistics with a stated percentile rule, so gates mean the same thing everywhere."""

from __future__ import annotations

import math
from collections.abc import Sequence

from mtc.errors import MtcError

PERCENTILES = (50, 90, 99)


def nearest_rank(ordered: Sequence[float], percent: int) -> float:
    """The nearest-rank percentile of an ascending sequence: the smallest value with at least
    `percent` % of the samples at or below it (element ``ceil(percent * n / 100)``, 1-based).

    Always an observed value; with n < 100 samples, p99 is the maximum.
    """
    if not ordered:
        raise MtcError("no timings to summarize", hint="measure at least one frame")
    if not 0 < percent <= 100:
        raise ValueError(f"percentile {percent} outside (0, 100]")
    rank = -(-percent * len(ordered) // 100)  # integer ceil: no float rounding at exact ranks
    return ordered[rank - 1]


def latency_stats(seconds: Sequence[float]) -> dict:
    """Summarize per-frame times.

    Args:
        seconds: one duration per frame, in seconds.

    Returns:
        ``{"frames", "seconds", "fps", "fps_median", "latency_ms": {"mean", "min", "p50", "p90",
        "p99", "max"}}``. ``fps`` is throughput (frames / total time); ``fps_median`` is
        1 / p50, robust to the slow phases of shared machines. Percentiles are nearest-rank.

    Raises:
        MtcError: no timings, or a negative / non-finite one.
    """
    values = [float(s) for s in seconds]
    if not values:
        raise MtcError("no timings to summarize", hint="measure at least one frame")
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise MtcError("timings must be finite and non-negative", hint="check the clock passed to the benchmark")
    ordered = sorted(values)
    total = math.fsum(values)
    p50 = nearest_rank(ordered, 50)
    latency = {"mean": total / len(values) * 1e3, "min": ordered[0] * 1e3}
    latency.update({f"p{p}": nearest_rank(ordered, p) * 1e3 for p in PERCENTILES})
    latency["max"] = ordered[-1] * 1e3
    return {
        "frames": len(values),
        "seconds": total,
        "fps": len(values) / total if total > 0 else math.inf,
        "fps_median": 1.0 / p50 if p50 > 0 else math.inf,
        "latency_ms": latency,
    }
