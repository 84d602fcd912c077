"""Activation range calibration: one pass over the data, four ways to pick the clipping range.

Every candidate tensor keeps its min, max and histograms of |x| (all values, and the negative
ones apart) that are re-binned when a larger value arrives, so min-max, percentile, entropy (KL)
and MSE ranges all come from the same single pass. `threshold` gives a symmetric range (amax),
as TensorRT's INT8 expects; `asymmetric_range` a [lo, hi] one for uint8 with a zero point.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from mtc.errors import MtcError

log = logging.getLogger("mtc")

HISTOGRAM_BINS = 2048
METHODS = ("minmax", "percentile", "entropy", "mse")


@dataclass
class TensorStats:
    """Running statistics of one tensor over the calibration data."""

    minimum: float = np.inf
    maximum: float = -np.inf
    hist: np.ndarray = field(default_factory=lambda: np.zeros(HISTOGRAM_BINS, np.float64))
    neg_hist: np.ndarray = field(default_factory=lambda: np.zeros(HISTOGRAM_BINS, np.float64))  # |x| of x < 0
    hist_max: float = 0.0  # upper edge of the |x| histograms
    count: int = 0
    shape: tuple[int, ...] = ()  # of the last batch (channel counts for mtc.quant.equalize)

    @property
    def amax(self) -> float:
        return max(abs(self.minimum), abs(self.maximum))

    def update(self, values: np.ndarray) -> None:
        """Fold one batch of values into the running statistics."""
        if values.size == 0:
            return
        self.shape = tuple(values.shape)
        values = values.astype(np.float32, copy=False).ravel()
        self.minimum = min(self.minimum, float(values.min()))
        self.maximum = max(self.maximum, float(values.max()))
        self.count += values.size
        if not np.isfinite(self.minimum + self.maximum):
            # A masking constant (-inf before a softmax, say) is no activation range: the bounds
            # keep it (the FP16 guard keeps such ops in FP32), the histogram counts finite values.
            values = values[np.isfinite(values)]
            if values.size == 0:
                return
        magnitudes = np.abs(values)
        high = float(magnitudes.max())
        if high > self.hist_max:
            self._grow(high)
        if self.hist_max > 0:
            idx = np.minimum((magnitudes * (HISTOGRAM_BINS / self.hist_max)).astype(np.int64), HISTOGRAM_BINS - 1)
            self.hist += np.bincount(idx, minlength=HISTOGRAM_BINS)
            if self.minimum < 0:
                self.neg_hist += np.bincount(idx[values < 0], minlength=HISTOGRAM_BINS)

    def _grow(self, new_max: float) -> None:
        """Widen the histogram to cover new_max, merging old bins (power-of-two growth keeps it exact)."""
        if self.hist_max == 0:
            self.hist_max = new_max
            return
        factor = 1
        while self.hist_max * factor < new_max:
            factor *= 2
        self.hist, self.neg_hist = _merge_bins(self.hist, factor), _merge_bins(self.neg_hist, factor)
        self.hist_max *= factor


def _merge_bins(hist: np.ndarray, factor: int) -> np.ndarray:
    merged = hist.reshape(-1, factor).sum(axis=1) if factor <= HISTOGRAM_BINS else hist.sum(keepdims=True)
    out = np.zeros(HISTOGRAM_BINS, np.float64)
    out[: merged.size] = merged
    return out


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


def asymmetric_range(stats: TensorStats, method: str, *, percentile: float = 99.999,
                     levels: int = 255) -> tuple[float, float]:
    """The clipping range [lo, hi] (lo <= 0 <= hi) for one tensor quantized to `levels` steps
    with a zero point. A tensor that is mostly one-signed (after hardswish: -0.375 to 7; a
    ConvGRU concat: -1 to 10) gets nearly all the steps on the side its values are, where a
    symmetric range spends half of them on values that never occur; a never-negative one gets
    lo = 0 (zero point 0)."""
    if stats.count == 0:
        return 0.0, 0.0
    if method == "mse" and stats.hist.sum() > 0:
        lo, hi = _mse_range(stats, levels)
    else:  # the symmetric clip, cut to the side each value occurs on
        t = threshold(stats, method, percentile=percentile, levels=levels)
        lo, hi = -t, t
    return max(lo, min(stats.minimum, 0.0)), min(hi, max(stats.maximum, 0.0))


def _mse_range(stats: TensorStats, levels: int) -> tuple[float, float]:
    """MSE over both sides at once: one step (hi - lo) / levels for the rounding noise inside,
    each side's own clipping error outside."""
    edges = np.linspace(0.0, stats.hist_max, HISTOGRAM_BINS + 1)
    candidates = np.arange(0, HISTOGRAM_BINS + 1, 4)
    clip = edges[candidates]
    positive_error, positive_out = _clipping_errors(stats.hist - stats.neg_hist, edges, candidates)
    negative_error, negative_out = _clipping_errors(stats.neg_hist, edges, candidates)
    step = (clip[:, None] + clip[None, :]) / levels  # rows: hi, columns: -lo
    inside = stats.hist.sum() - positive_out[:, None] - negative_out[None, :]
    cost = inside * step ** 2 / 12 + positive_error[:, None] + negative_error[None, :]
    cost[0, 0] = np.inf  # an empty range
    high, low = np.unravel_index(int(np.argmin(cost)), cost.shape)
    return -float(clip[low]), float(clip[high])


def clipping_error(stats: TensorStats, low: float, high: float) -> float:
    """The squared error clipping the calibration values to [low, high] adds up to, from the
    histograms (each value at its bin's centre)."""
    if stats.count == 0 or stats.hist_max == 0:
        return 0.0
    centers = (np.arange(HISTOGRAM_BINS) + 0.5) * (stats.hist_max / HISTOGRAM_BINS)
    positive, negative = stats.hist - stats.neg_hist, stats.neg_hist
    return float((positive * np.square(np.maximum(centers - high, 0.0))).sum()
                 + (negative * np.square(np.maximum(centers + low, 0.0))).sum())


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
    candidates = np.arange(64, HISTOGRAM_BINS + 1, 8)
    clipping, outside = _clipping_errors(hist, edges, candidates)
    clip = edges[candidates]
    cost = (hist.sum() - outside) * (clip / levels) ** 2 / 12 + clipping
    return float(clip[int(np.argmin(cost))])


def _clipping_errors(hist: np.ndarray, edges: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For a clip at each candidate edge i: sum over bins j >= i of hist[j] * (center[j] -
    edge[i])^2, and how many values lie there (suffix sums, so every candidate costs O(1))."""
    centers = (edges[:-1] + edges[1:]) / 2
    clip = edges[candidates]
    suffix = [np.append(np.cumsum((hist * centers ** p)[::-1])[::-1], 0.0)[candidates] for p in (0, 1, 2)]
    return suffix[2] - 2 * clip * suffix[1] + clip ** 2 * suffix[0], suffix[0]


# Exposing a tensor as a graph output keeps it alive to the end of the run: a transformer at
# 1024x1024 computes thousands of intermediate tensors, tens of GB if exposed at once. So they
# are exposed in groups whose size per run stays under this budget, one pass over the feeds each.
EXPOSED_BYTES = 1 << 30


def stat_passes(model: onnx.ModelProto, tensor_names: Sequence[str], feed: dict[str, np.ndarray], *,
                budget: int = EXPOSED_BYTES) -> list[list[str]]:
    """`tensor_names` cut into the groups `collect_stats` exposes one pass at a time, their sizes
    inferred for the shapes of `feed`."""
    sizes = _tensor_bytes(model, feed)
    unknown = max(budget // 16, 1)  # a size shape inference cannot tell: assume a large one
    groups, current, used = [], [], 0
    for name in tensor_names:
        size = sizes.get(name) or unknown
        if current and used + size > budget:
            groups.append(current)
            current, used = [], 0
        current.append(name)
        used += size
    return groups + ([current] if current else [])


def _tensor_bytes(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, int]:
    """Bytes of each tensor whose shape is known once the graph inputs take `feed`'s shapes."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for graph_input in copy.graph.input:
        if graph_input.name in feed:
            dims = graph_input.type.tensor_type.shape.dim
            for dim, size in zip(dims, feed[graph_input.name].shape):
                dim.Clear()
                dim.dim_value = size
    del copy.graph.value_info[:]
    try:
        # data_prop folds the shape arithmetic (Shape -> Gather -> Concat -> Reshape) that a
        # transformer's window and head reshapes are made of; without it most of their sizes
        # stay unknown and the passes multiply.
        inferred = onnx.shape_inference.infer_shapes(copy, data_prop=True)
    except Exception:  # noqa: BLE001  (an estimate: unknown sizes are assumed large)
        return {}
    sizes = {}
    for value in [*inferred.graph.value_info, *inferred.graph.output]:
        tensor = value.type.tensor_type
        dims = tensor.shape.dim
        if dims and all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
            width = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).itemsize if tensor.elem_type else 4
            sizes[value.name] = width * int(np.prod([d.dim_value for d in dims]))
    return sizes


def collect_stats(model: onnx.ModelProto, tensor_names: Sequence[str], feeds: Iterable[dict[str, np.ndarray]],
                  *, progress=None, budget: int = EXPOSED_BYTES) -> dict[str, TensorStats]:
    """Run `model` over the feeds with `tensor_names` exposed as outputs and accumulate their
    statistics: one pass per group of `stat_passes` (`progress` as in `exposed_runs`)."""
    stats = {name: TensorStats() for name in tensor_names}
    for group, outputs in exposed_runs(model, tensor_names, feeds, progress=progress, budget=budget):
        for name in group:
            stats[name].update(outputs[name])
    return stats


def exposed_runs(model: onnx.ModelProto, tensor_names: Sequence[str], feeds: Iterable[dict[str, np.ndarray]],
                 *, progress=None, budget: int = EXPOSED_BYTES):
    """(group, outputs) for every feed of every group of `tensor_names` (`stat_passes`):
    `model` run with that group exposed, one session per group, so only one group's tensors
    are alive at a time. `progress(steps=...)` is called after each run with its share of a
    feed (1 / the number of groups): the calls add up to one per feed however many groups the
    tensors take, so a bar of one step per feed ends full."""
    from mtc.backends import OrtBackend

    feeds = list(feeds)
    groups = stat_passes(model, tensor_names, feeds[0], budget=budget) if feeds else []
    for group in groups:
        backend = OrtBackend(expose_tensors(model, group).SerializeToString(), optimization="basic")
        for feed in feeds:
            outputs = backend.run({k: v for k, v in feed.items() if k in backend.input_names})
            yield group, outputs
            del outputs
            if progress:
                progress(steps=1 / len(groups))
        del backend


def channel_ranges(model: onnx.ModelProto, tensor_names: Sequence[str], feeds: Sequence[dict],
                   *, progress=None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per channel (axis 1) of each tensor, its smallest and largest value over the feeds
    (`exposed_runs`, and its `progress`: one step per feed in all)."""
    ranges: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for group, outputs in exposed_runs(model, tensor_names, feeds, progress=progress):
        for name in group:
            values = outputs[name]
            if not values.size:
                continue
            axes = tuple(a for a in range(values.ndim) if a != 1)
            low, high = values.min(axis=axes), values.max(axis=axes)
            if name in ranges:
                low, high = np.minimum(ranges[name][0], low), np.maximum(ranges[name][1], high)
            ranges[name] = (low, high)
    return ranges


PEAK_SUFFIX = "__mtc_peak"


def tensor_peaks(model: onnx.ModelProto, tensor_names: Sequence[str], feeds: Iterable[dict[str, np.ndarray]],
                 *, progress=None) -> dict[str, float]:
    """Peak |value| of each of `tensor_names` (float tensors) over the feeds, in one run per
    feed: the graph computes each tensor's max(|x|) itself, right after the tensor is made, and
    outputs only those scalars, so nothing large is kept alive for them (exposing the tensors
    themselves takes a pass per memory-sized group, see `collect_stats`). `progress` is called
    once per feed.

    A tensor that is empty for these feeds has peak 0. Where ONNX Runtime cannot run the
    reductions (an empty tensor whose size inference could not tell), the tensors are
    exposed in groups instead: the same peaks, more passes."""
    import onnxruntime as ort

    from mtc.backends.onnxruntime.session import session_options

    feeds = list(feeds)
    sizes = _tensor_bytes(model, feeds[0]) if feeds else {}
    names = [name for name in tensor_names if sizes.get(name, 1) > 0]
    peaks = dict.fromkeys(tensor_names, 0.0)
    try:
        options = session_options(threads=None, allow_spinning=False, optimization="basic")
        # ONNX Runtime's default order may run a reduction long after its tensor was made (it
        # then stays alive until then: a transformer at 1024x1024 ran out of 23 GB); by
        # priority, it keeps the node order, where each reduction follows its tensor.
        options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
        session = ort.InferenceSession(with_peaks(model, names).SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        inputs = {i.name for i in session.get_inputs()}
        outputs = [name + PEAK_SUFFIX for name in names]
        for feed in feeds:
            values = session.run(outputs, {k: v for k, v in feed.items() if k in inputs})
            for name, value in zip(names, values):
                peaks[name] = max(peaks[name], float(value))
            if progress:
                progress()
    except Exception as error:  # noqa: BLE001  (the grouped passes measure the same peaks)
        log.warning("measuring peaks inside the graph failed (%s): exposing the tensors in groups instead",
                    str(error).splitlines()[0][:200])
        stats = collect_stats(model, names, feeds)
        peaks.update({name: stats[name].amax for name in names})
    return peaks


def with_peaks(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of `model` that also outputs max(|x|) over every element of each tensor in
    `names`, as the scalar `<name>__mtc_peak`, computed by nodes placed right after the node
    that makes the tensor (or first, for a graph input)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    wanted = set(names)

    def peak_nodes(name: str) -> list[onnx.NodeProto]:
        magnitude = f"{name}{PEAK_SUFFIX}_abs"
        return [onnx.helper.make_node("Abs", [name], [magnitude], name=magnitude),
                onnx.helper.make_node("ReduceMax", [magnitude], [name + PEAK_SUFFIX], keepdims=0,
                                      name=name + PEAK_SUFFIX)]

    nodes = [peak for i in copy.graph.input if i.name in wanted for peak in peak_nodes(i.name)]
    for node in copy.graph.node:
        nodes.append(node)
        nodes += [peak for o in node.output if o in wanted for peak in peak_nodes(o)]
    del copy.graph.node[:]
    copy.graph.node.extend(nodes)
    for name in names:
        copy.graph.output.append(onnx.helper.make_tensor_value_info(name + PEAK_SUFFIX, onnx.TensorProto.FLOAT, []))
    return copy


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
