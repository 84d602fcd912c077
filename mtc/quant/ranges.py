"""Activation range calibration: one pass over the data, three ways to pick the clipping range.

Every candidate tensor keeps its min, max and a histogram of |x| that is re-binned when a
larger value arrives, so min-max, percentile and entropy (KL) thresholds all come from the
same single pass. Ranges are symmetric (amax), as TensorRT's INT8 expects.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from mtc.errors import MtcError

HISTOGRAM_BINS = 2048
METHODS = ("minmax", "percentile", "entropy", "mse")


@dataclass
class TensorStats:
    """Running statistics of one tensor over the calibration data."""

    minimum: float = np.inf
    maximum: float = -np.inf
    hist: np.ndarray = field(default_factory=lambda: np.zeros(HISTOGRAM_BINS, np.float64))
    hist_max: float = 0.0  # upper edge of the |x| histogram
    count: int = 0
    shape: tuple[int, ...] = ()  # of the last batch (channel counts for mtc.quant.equalize)

    @property
    def amax(self) -> float:
        return max(abs(self.minimum), abs(self.maximum))

    @property
    def one_sided(self) -> bool:
        """Never negative over the calibration data (ReLU outputs, images)."""
        return self.count > 0 and self.minimum >= 0

    def update(self, values: np.ndarray) -> None:
        """Fold one batch of values into the running statistics."""
        if values.size == 0:
            return
        self.shape = tuple(values.shape)
        values = values.astype(np.float32, copy=False).ravel()
        self.minimum = min(self.minimum, float(values.min()))
        self.maximum = max(self.maximum, float(values.max()))
        self.count += values.size
        magnitudes = np.abs(values)
        high = float(magnitudes.max())
        if high > self.hist_max:
            self._grow(high)
        if self.hist_max > 0:
            idx = np.minimum((magnitudes * (HISTOGRAM_BINS / self.hist_max)).astype(np.int64), HISTOGRAM_BINS - 1)
            self.hist += np.bincount(idx, minlength=HISTOGRAM_BINS)

    def _grow(self, new_max: float) -> None:
        """Widen the histogram to cover new_max, merging old bins (power-of-two growth keeps it exact)."""
        if self.hist_max == 0:
            self.hist_max = new_max
            return
        factor = 1
        while self.hist_max * factor < new_max:
            factor *= 2
        merged = self.hist.reshape(-1, factor).sum(axis=1) if factor <= HISTOGRAM_BINS else self.hist.sum(keepdims=True)
        self.hist = np.zeros(HISTOGRAM_BINS, np.float64)
        self.hist[: merged.size] = merged
        self.hist_max *= factor


def threshold(stats: TensorStats, method: str, *, percentile: float = 99.999, levels: int = 127) -> float:
    """The clipping value (amax) for one tensor quantized to `levels` steps on [0, amax]
    (127 for symmetric int8, 255 for a one-sided uint8 range)."""
    if method == "minmax" or stats.hist.sum() == 0:
        return stats.amax
    edges = np.linspace(0.0, stats.hist_max, HISTOGRAM_BINS + 1)
    if method == "percentile":
        cdf = np.cumsum(stats.hist) / stats.hist.sum()
        index = int(np.searchsorted(cdf, percentile / 100.0))
        return float(min(edges[min(index + 1, HISTOGRAM_BINS)], stats.amax))
    if method == "entropy":
        return _entropy_threshold(stats.hist, edges)
    if method == "mse":
        return _mse_threshold(stats.hist, edges, levels)
    raise MtcError(f"unknown calibration method {method!r}", hint=f"choose one of: {', '.join(METHODS)}")


def _entropy_threshold(hist: np.ndarray, edges: np.ndarray, levels: int = 128) -> float:
    """TensorRT-style KL calibration: the clip that keeps the 128-level histogram closest to the data."""
    best_kl, best_index = np.inf, len(hist)
    total = hist.sum()
    for i in range(levels, len(hist) + 1, 16):
        reference = hist[:i].copy()
        reference[i - 1] += hist[i:].sum()  # clipped mass lands in the last bin
        chunks = np.array_split(hist[:i], levels)
        candidate = np.concatenate([
            np.where(c > 0, c.sum() / max(np.count_nonzero(c), 1), 0.0) for c in chunks
        ])
        p = reference / total
        q = candidate / max(candidate.sum(), 1e-12)
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if kl < best_kl:
            best_kl, best_index = kl, i
    return float(edges[best_index])


def _mse_threshold(hist: np.ndarray, edges: np.ndarray, levels: int = 127) -> float:
    """The clip minimising expected squared error: rounding noise inside, clipping error outside."""
    centers = (edges[:-1] + edges[1:]) / 2
    candidates = edges[64::8]
    inside_count = np.cumsum(hist)
    best, best_error = edges[-1], np.inf
    for t in candidates:
        k = np.searchsorted(centers, t)
        rounding = inside_count[k - 1] * (t / levels) ** 2 / 12 if k > 0 else 0.0
        clipping = float(np.sum(hist[k:] * (centers[k:] - t) ** 2))
        if rounding + clipping < best_error:
            best, best_error = t, rounding + clipping
    return float(best)


def collect_stats(model: onnx.ModelProto, tensor_names: Sequence[str], feeds: Iterable[dict[str, np.ndarray]],
                  *, progress=None) -> dict[str, TensorStats]:
    """Run `model` once per feed with `tensor_names` exposed as outputs and accumulate statistics."""
    from mtc.runtime.backends import OrtBackend

    augmented = expose_tensors(model, tensor_names)
    backend = OrtBackend(augmented.SerializeToString(), optimization="basic")
    stats = {name: TensorStats() for name in tensor_names}
    for feed in feeds:
        outputs = backend.run({k: v for k, v in feed.items() if k in backend.input_names})
        for name in tensor_names:
            stats[name].update(outputs[name])
        if progress:
            progress()
    return stats


def expose_tensors(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of `model` whose graph also outputs `names` (type taken from value_info when known)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    existing = {o.name for o in copy.graph.output}
    types = {v.name: v.type.tensor_type.elem_type for v in copy.graph.value_info}
    for name in names:
        if name not in existing:
            copy.graph.output.append(onnx.helper.make_tensor_value_info(name, types.get(name, onnx.TensorProto.FLOAT), None))
    return copy
