"""Matting quality metrics (as in Robust Video Matting's evaluation) and the image metrics of
salient-object and dichotomous-segmentation evaluation.

All metrics compare a predicted alpha matte ``pred`` with a ground truth ``gt``. Mattes are
HxW (one frame) or TxHxW (a clip); float inputs must lie in [0, 1], ``uint8`` inputs are
divided by 255 and ``uint16`` inputs by 65535. Everything is computed in float64 with numpy
only (no OpenCV), so the metrics run wherever the runtime runs; the weighted F-measure alone
imports SciPy, when it is called (its exact distance transform).

Matting scales follow RVM's tables: MAD and MSE are reported x1e3, Grad and Conn /1e3, dtSSD
x1e2. For clips, every metric is a per-frame value averaged over the frames of the clip. The
SOD metrics (MAE, F-, weighted F-, S- and E-measure) are on the [0, 1] scale their papers use.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mtc.errors import MtcError

__all__ = [
    "mad",
    "mse",
    "grad",
    "conn",
    "dtssd",
    "dtssd_per_frame",
    "matting_metrics",
    "METRIC_NAMES",
    "SOD_METRIC_NAMES",
    "mae",
    "f_measure_curve",
    "weighted_f_measure",
    "s_measure",
    "e_measure_curve",
    "prepare_sod",
    "SodScores",
    "sod_metrics",
]

METRIC_NAMES = ("mad", "mse", "grad", "conn", "dtssd")

# Gradient filter: sigma 1.4 with a 9x9 support. Half-width 4 is what the usual epsilon
# rule gives, ceil(sigma * sqrt(-2 ln(sqrt(2 pi) sigma eps))) with eps = 1e-2.
_GRAD_SIGMA = 1.4
_GRAD_HALF = 4

# Connectivity thresholds 0.1, 0.2, ..., 1.0. Built as k/10 rather than np.arange(0.1, 1.1, 0.1)
# because arange accumulates float error (0.30000000000000004), which would move pixels whose
# alpha is exactly on a threshold into the wrong level.
_CONN_STEP = 0.1
_CONN_THRESHOLDS = tuple(k / 10 for k in range(1, 11))
# Differences below this are treated as "still connected" (Rhemann et al. 2009).
_CONN_MIN_DIFF = 0.15


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------


def _to_unit_float(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float64) / 65535.0
    if arr.dtype == np.bool_:
        return arr.astype(np.float64)
    if not np.issubdtype(arr.dtype, np.floating):
        raise MtcError(
            f"{name} has dtype {arr.dtype}; metrics accept float, uint8 or uint16 alpha mattes",
            hint="pass float alpha in [0,1], or uint8 (0-255) / uint16 (0-65535) images",
        )
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise MtcError(
            f"{name} contains NaN or infinite values",
            hint="check the model output for numerical problems before computing metrics",
        )
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        raise MtcError(
            f"{name} has values in [{lo:g}, {hi:g}], outside the alpha range [0, 1]",
            hint="clip with np.clip(x, 0, 1), or divide 0-255 floats by 255",
        )
    return arr


def _validate(pred, gt) -> tuple[np.ndarray, np.ndarray]:
    """Check a (pred, gt) pair and return both as float64 arrays in [0, 1]."""
    p_shape, g_shape = np.shape(pred), np.shape(gt)
    if p_shape != g_shape:
        raise MtcError(
            f"pred shape {p_shape} does not match gt shape {g_shape}",
            hint="resize the prediction to the ground-truth resolution and frame count",
        )
    if len(p_shape) not in (2, 3):
        raise MtcError(
            f"alpha mattes must be HxW or TxHxW, got {len(p_shape)}-D shape {p_shape}",
            hint="drop channel axes (e.g. x[..., 0] or x.squeeze(1)) so alpha is HxW or TxHxW",
        )
    if 0 in p_shape:
        raise MtcError(
            f"alpha mattes are empty (shape {p_shape})",
            hint="pass at least one frame with at least one pixel",
        )
    return _to_unit_float(pred, "pred"), _to_unit_float(gt, "gt")


def _frames(x: np.ndarray) -> np.ndarray:
    return x[None] if x.ndim == 2 else x


# --------------------------------------------------------------------------------------------
# MAD / MSE
# --------------------------------------------------------------------------------------------


def mad(pred, gt) -> float:
    """Mean absolute difference, scaled by 1e3.

    Args:
        pred: Predicted alpha, HxW or TxHxW.
        gt: Ground-truth alpha, same shape as ``pred``.

    Returns:
        ``mean(|pred - gt|) * 1e3``. For clips this equals the mean of the per-frame values,
        since every frame has the same pixel count.

    Raises:
        MtcError: If the inputs are invalid (shape, dtype, range, non-finite).
    """
    p, g = _validate(pred, gt)
    return float(np.mean(np.abs(p - g)) * 1e3)


def mse(pred, gt) -> float:
    """Mean squared error, scaled by 1e3.

    Args:
        pred: Predicted alpha, HxW or TxHxW.
        gt: Ground-truth alpha, same shape as ``pred``.

    Returns:
        ``mean((pred - gt)**2) * 1e3``.

    Raises:
        MtcError: If the inputs are invalid.
    """
    p, g = _validate(pred, gt)
    return float(np.mean((p - g) ** 2) * 1e3)


# --------------------------------------------------------------------------------------------
# Grad
# --------------------------------------------------------------------------------------------


def _gauss_deriv_kernels(sigma: float = _GRAD_SIGMA, half: int = _GRAD_HALF):
    """Return the separable factors (smooth, deriv) of the x-gradient filter.

    The 2-D x filter is ``outer(smooth, deriv)`` (rows smoothed, columns differentiated) and
    the y filter is its transpose. The 2-D filter ``G(y) * dG(x)`` is divided by its L2 norm
    ``sqrt(sum(filter**2))``; because the filter is an outer product that norm factors into
    ``||G|| * ||dG||``, so each 1-D factor is L2-normalised on its own.
    """
    x = np.arange(-half, half + 1, dtype=np.float64)
    g = np.exp(-(x**2) / (2 * sigma**2)) / (sigma * np.sqrt(2 * np.pi))
    dg = -x * g / sigma**2
    return g / np.linalg.norm(g), dg / np.linalg.norm(dg)


def _correlate_1d(img: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    """Correlate along one axis with replicate ('nearest') borders."""
    half = len(kernel) // 2
    pad = [(0, 0)] * img.ndim
    pad[axis] = (half, half)
    padded = np.pad(img, pad, mode="edge")
    n = img.shape[axis]
    out = np.zeros_like(img)
    for i, w in enumerate(kernel):
        out += w * np.take(padded, np.arange(i, i + n), axis=axis)
    return out


def _minmax(frame: np.ndarray) -> np.ndarray:
    # RVM min-max normalises each frame (cv2.NORM_MINMAX); a constant frame maps to zeros.
    lo, hi = frame.min(), frame.max()
    if hi - lo <= np.finfo(np.float64).eps:
        return np.zeros_like(frame)
    return (frame - lo) / (hi - lo)


def _gradient_magnitude(frame: np.ndarray) -> np.ndarray:
    smooth, deriv = _gauss_deriv_kernels()
    gx = _correlate_1d(_correlate_1d(frame, smooth, axis=0), deriv, axis=1)
    gy = _correlate_1d(_correlate_1d(frame, deriv, axis=0), smooth, axis=1)
    return np.sqrt(gx**2 + gy**2)


def _grad_frame(p: np.ndarray, g: np.ndarray) -> float:
    diff = _gradient_magnitude(_minmax(g)) - _gradient_magnitude(_minmax(p))
    return float(np.sum(diff**2) / 1000.0)


def grad(pred, gt) -> float:
    """Gradient error: ``sum((|grad gt| - |grad pred|)**2) / 1000``.

    The gradient uses first-derivative-of-Gaussian filters with sigma = 1.4 on a 9x9 support,
    as in the MATLAB-derived matting evaluation used by RVM:

    * ``G(x) = exp(-x**2 / (2 sigma**2)) / (sigma sqrt(2 pi))``, ``dG(x) = -x G(x) / sigma**2``
      for integer offsets ``x`` in [-4, 4].
    * x filter ``Fx[y, x] = G(y) dG(x)``, normalised by its L2 norm: ``Fx / sqrt(sum(Fx**2))``
      (so neither factor sums to 1; the normalisation constant of ``G`` cancels). The y filter
      is ``Fx.T``. It is applied separably.
    * Filtering is correlation (as ``cv2.filter2D``); convolution would only flip the sign of
      each directional derivative, which the magnitude ``sqrt(gx**2 + gy**2)`` ignores.
    * Borders are replicated ('nearest' / ``BORDER_REPLICATE``).
    * Before filtering, each frame of pred and of gt is min-max normalised to [0, 1], as RVM
      does with ``cv2.normalize(..., NORM_MINMAX)``; a constant frame becomes all zeros.

    Args:
        pred: Predicted alpha, HxW or TxHxW.
        gt: Ground-truth alpha, same shape as ``pred``.

    Returns:
        The Grad error for a frame, or its mean over frames for a clip.

    Raises:
        MtcError: If the inputs are invalid.
    """
    p, g = _validate(pred, gt)
    return float(np.mean([_grad_frame(pf, gf) for pf, gf in zip(_frames(p), _frames(g))]))


# --------------------------------------------------------------------------------------------
# Conn
# --------------------------------------------------------------------------------------------


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Return the largest 4-connected component of a 2-D boolean mask.

    Works on horizontal runs instead of pixels so a 1080p mask is a few hundred thousand nodes:
    runs in adjacent rows whose column ranges overlap are joined, and components are found with
    a vectorised union-find (hook each root onto the smaller neighbouring root, then pointer-jump
    until every node points at its root). Parents only ever point to smaller indices, so the
    root of a component is its first run in raster order; ties in size therefore go to the
    component that starts first in raster order, which is what OpenCV's labelling plus argmax
    picks as well.
    """
    h, w = mask.shape
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    row, start = np.nonzero(edges == 1)
    _, end = np.nonzero(edges == -1)  # row-major order pairs each start with its end
    n = len(row)
    if n == 0:
        return np.zeros_like(mask, dtype=bool)

    # Keys that sort runs in raster order and keep rows apart: a run spans [start, end).
    stride = w + 1
    start_key = row * stride + start
    end_key = row * stride + end
    # For each run j, the runs in row(j) - 1 overlapping it form the contiguous index range
    # [first, last]: end > start_j and start < end_j, both measured in the previous row's keys.
    prev = (row - 1) * stride
    first = np.searchsorted(end_key, prev + start, side="right")
    last = np.searchsorted(start_key, prev + end, side="left") - 1
    counts = np.maximum(last - first + 1, 0)
    counts[row == 0] = 0
    total = int(counts.sum())
    b = np.repeat(np.arange(n), counts)
    offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    a = np.repeat(first, counts) + offsets

    parent = np.arange(n)
    while True:
        ra, rb = parent[a], parent[b]
        differ = ra != rb
        if not differ.any():
            break
        np.minimum.at(parent, np.maximum(ra, rb)[differ], np.minimum(ra, rb)[differ])
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped

    sizes = np.bincount(parent, weights=end - start, minlength=n)
    keep = parent == np.argmax(sizes)
    # Paint the kept runs with a +1/-1 difference array over the flattened image.
    delta = np.zeros(h * w + 1, dtype=np.int32)
    np.add.at(delta, row[keep] * w + start[keep], 1)
    np.add.at(delta, row[keep] * w + end[keep], -1)
    return (np.cumsum(delta[:-1]) > 0).reshape(h, w)


def _conn_frame(p: np.ndarray, g: np.ndarray) -> float:
    # level[i]: the highest threshold at which pixel i is still in the largest component of
    # the intersection (pred >= t) & (gt >= t); 1 if it never drops out.
    level = np.ones_like(g)
    for t in _CONN_THRESHOLDS:
        omega = _largest_component((p >= t) & (g >= t))
        dropped = (level == 1) & ~omega
        level[dropped] = round(t - _CONN_STEP, 1)
    d_p = p - level
    d_g = g - level
    phi_p = 1 - d_p * (d_p >= _CONN_MIN_DIFF)
    phi_g = 1 - d_g * (d_g >= _CONN_MIN_DIFF)
    return float(np.sum(np.abs(phi_p - phi_g)) / 1000.0)


def conn(pred, gt) -> float:
    """Connectivity error (Rhemann et al. 2009, as in RVM's evaluation).

    For thresholds t = 0.1, 0.2, ..., 1.0, take the largest 4-connected component of
    ``(pred >= t) & (gt >= t)``. Each pixel's level ``l`` is ``t - 0.1`` for the first t at
    which it is outside that component (1 if it never is). With ``d = alpha - l``,
    ``phi = 1 - d * (d >= 0.15)``, and the error is ``sum(|phi(pred) - phi(gt)|) / 1000``.

    Args:
        pred: Predicted alpha, HxW or TxHxW.
        gt: Ground-truth alpha, same shape as ``pred``.

    Returns:
        The Conn error for a frame, or its mean over frames for a clip.

    Raises:
        MtcError: If the inputs are invalid.
    """
    p, g = _validate(pred, gt)
    return float(np.mean([_conn_frame(pf, gf) for pf, gf in zip(_frames(p), _frames(g))]))


# --------------------------------------------------------------------------------------------
# dtSSD
# --------------------------------------------------------------------------------------------


def _require_clip(p: np.ndarray) -> None:
    if p.ndim != 3:
        raise MtcError(
            f"dtSSD needs a TxHxW clip, got shape {p.shape}",
            hint="stack frames along a leading time axis, e.g. np.stack(frames)",
        )


def _dtssd_series(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    out = np.zeros(p.shape[0], dtype=np.float64)
    if p.shape[0] > 1:
        diff = np.diff(p, axis=0) - np.diff(g, axis=0)
        n_pixels = p.shape[1] * p.shape[2]
        out[1:] = np.sqrt(np.sum(diff**2, axis=(1, 2)) / n_pixels) * 1e2
    return out


def dtssd_per_frame(pred, gt) -> np.ndarray:
    """Per-frame temporal error dtSSD.

    Frame t (t >= 1) scores ``sqrt(sum(((p_t - p_{t-1}) - (g_t - g_{t-1}))**2) / (H*W)) * 1e2``;
    frame 0 has no predecessor and scores 0. A static error (pred = gt + constant) scores 0:
    the metric only sees errors in how alpha changes over time.

    Args:
        pred: Predicted alpha clip, TxHxW.
        gt: Ground-truth alpha clip, TxHxW.

    Returns:
        Float64 array of length T whose first entry is 0.

    Raises:
        MtcError: If the inputs are invalid or not 3-D.
    """
    p, g = _validate(pred, gt)
    _require_clip(p)
    return _dtssd_series(p, g)


def dtssd(pred, gt) -> float:
    """Clip-level dtSSD: the mean of :func:`dtssd_per_frame` over all T frames.

    This is how RVM reports it: per-frame values (with frame 0 counted as 0) averaged over the
    clip, so the divisor is T, not T - 1. A one-frame clip scores 0.0.

    Args:
        pred: Predicted alpha clip, TxHxW.
        gt: Ground-truth alpha clip, TxHxW.

    Returns:
        Mean per-frame dtSSD.

    Raises:
        MtcError: If the inputs are invalid or not 3-D.
    """
    p, g = _validate(pred, gt)
    _require_clip(p)
    return float(np.mean(_dtssd_series(p, g)))


# --------------------------------------------------------------------------------------------
# All at once
# --------------------------------------------------------------------------------------------


def matting_metrics(pred, gt, *, which: Sequence[str] = METRIC_NAMES) -> dict[str, float]:
    """Compute several metrics for one clip, validating the inputs once.

    Args:
        pred: Predicted alpha clip, TxHxW (an HxW frame is treated as a one-frame clip).
        gt: Ground-truth alpha, same shape as ``pred``.
        which: Metric names to compute, any of ``"mad", "mse", "grad", "conn", "dtssd"``.

    Returns:
        ``{name: value}`` in the order of ``which``. Grad and Conn are per-frame means; dtSSD is
        the clip-level mean of :func:`dtssd_per_frame` (0.0 when T == 1).

    Raises:
        MtcError: If the inputs are invalid or ``which`` names an unknown metric.
    """
    if isinstance(which, str):
        which = (which,)
    unknown = [m for m in which if m not in METRIC_NAMES]
    if unknown:
        raise MtcError(
            f"unknown metric(s) {', '.join(map(repr, unknown))}",
            hint=f"choose from {', '.join(METRIC_NAMES)}",
        )
    p, g = _validate(pred, gt)
    p, g = _frames(p), _frames(g)
    frames = list(zip(p, g))
    compute = {
        "mad": lambda: float(np.mean(np.abs(p - g)) * 1e3),
        "mse": lambda: float(np.mean((p - g) ** 2) * 1e3),
        "grad": lambda: float(np.mean([_grad_frame(pf, gf) for pf, gf in frames])),
        "conn": lambda: float(np.mean([_conn_frame(pf, gf) for pf, gf in frames])),
        "dtssd": lambda: float(np.mean(_dtssd_series(p, g))),
    }
    return {name: compute[name]() for name in which}


# --------------------------------------------------------------------------------------------
# Salient-object / dichotomous-segmentation metrics (DIS and SOD evaluation)
# --------------------------------------------------------------------------------------------
#
# These follow the convention of the SOD evaluation toolkits, so figures compare with published
# tables: the ground truth is binarised at 128/255 (pixel > 128 in 8 bits is foreground), and
# each prediction is min-max normalised to [0, 1] (a constant prediction is left as it is).
# Threshold sweeps binarise the prediction at t = 0..255 on floor(255 * pred).

SOD_METRIC_NAMES = ("mae", "max_f", "mean_f", "weighted_f", "s_measure", "max_e", "mean_e")
F_BETA2 = 0.3  # beta^2 of the F-measure: precision weighs more than recall (Achanta et al. 2009)
S_ALPHA = 0.5  # S-measure balance of object-aware and region-aware structure (Fan et al. 2017)
_EPS = np.spacing(1.0)  # MATLAB's eps, which the reference implementations add to denominators
_GT_THRESHOLD = 128 / 255
_WF_BETA2 = 1.0  # weighted F-measure: Margolin et al. use beta^2 = 1
_WF_SIGMA, _WF_SIZE = 5.0, 7  # MATLAB fspecial('gaussian', 7, 5) spreads the error to neighbours
_WF_DECAY = 5.0  # background pixels 5 px from the object count half as much


def prepare_sod(pred, gt) -> tuple[np.ndarray, np.ndarray]:
    """An (HxW prediction, HxW ground truth) pair as the SOD metrics see them.

    Returns:
        ``(pred, gt)``: pred float64 min-max normalised to [0, 1], gt boolean (gt > 128/255).

    Raises:
        MtcError: If the inputs are invalid, or not a single HxW image each.
    """
    p, g = _validate(pred, gt)
    if p.ndim != 2:
        raise MtcError(f"SOD metrics take one HxW image pair, got shape {p.shape}",
                       hint="call them once per image (mtc.metrics.SodScores averages a data set)")
    lo, hi = p.min(), p.max()
    if hi > lo:
        p = (p - lo) / (hi - lo)
    return p, g > _GT_THRESHOLD


def _sweep_counts(p: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For t = 0..255: how many foreground and background pixels have floor(255 p) >= t."""
    levels = np.floor(p * 255).astype(np.int64)
    return _at_or_above(levels[g]), _at_or_above(levels[~g])


def _at_or_above(levels: np.ndarray) -> np.ndarray:
    # One histogram, summed from the top: entry t counts the levels >= t.
    return np.cumsum(np.bincount(levels, minlength=256)[::-1])[::-1]


def mae(pred, gt) -> float:
    """Mean absolute error between the normalised prediction and the binarised ground truth.

    On the [0, 1] scale SOD papers print (e.g. 0.037), not MAD's x1e3.
    """
    p, g = prepare_sod(pred, gt)
    return float(np.mean(np.abs(p - g)))


def f_measure_curve(pred, gt) -> np.ndarray:
    """F-measure at each threshold t = 0..255 (index t): ``(1 + b2) P R / (b2 P + R)``, b2 = 0.3.

    A threshold that selects no pixel has precision 0, and a pair with P = R = 0 scores 0, as in
    the SOD toolkits. Max and mean F-measure are the max and mean of this curve (over a data
    set: of the mean curve, see SodScores).
    """
    p, g = prepare_sod(pred, gt)
    return _f_curve(p, g)


def _f_curve(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    true_pos, false_pos = _sweep_counts(p, g)
    selected = true_pos + false_pos
    precision = true_pos / np.maximum(selected, 1)
    recall = true_pos / max(int(g.sum()), 1)
    numerator = (1 + F_BETA2) * precision * recall
    denominator = np.where(numerator == 0, 1.0, F_BETA2 * precision + recall)
    return numerator / denominator


def e_measure_curve(pred, gt) -> np.ndarray:
    """Enhanced-alignment measure (Fan et al. 2018) at each threshold t = 0..255 (index t).

    With the binarised prediction B and the ground truth G as 0/1 maps, each bias map is the map
    minus its mean; the alignment ``a = 2 b_B b_G / (b_B^2 + b_G^2)`` is enhanced as
    ``(1 + a)^2 / 4`` and summed over pixels, divided by ``H*W - 1``. When G is all background
    the score is the fraction of pixels B leaves out ((H*W - |B|) / (H*W - 1)); all foreground,
    the fraction it selects.
    """
    p, g = prepare_sod(pred, gt)
    return _e_curve(p, g)


def _e_curve(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    n = p.size
    fg_in, fg_out = _sweep_counts(p, g)  # pred-foreground pixels inside / outside the gt object
    selected = (fg_in + fg_out).astype(np.float64)
    gt_count = int(g.sum())
    if gt_count == 0:
        return (n - selected) / (n - 1 + _EPS)
    if gt_count == n:
        return selected / (n - 1 + _EPS)
    # Every pixel falls in one of four cases (pred fg/bg x gt fg/bg), each with one bias pair.
    mean_pred, mean_gt = selected / n, gt_count / n
    pred_fg, pred_bg = 1 - mean_pred, -mean_pred
    gt_fg, gt_bg = 1 - mean_gt, -mean_gt
    total = np.zeros(256)
    for count, b_pred, b_gt in ((fg_in, pred_fg, gt_fg), (fg_out, pred_fg, gt_bg),
                                (gt_count - fg_in, pred_bg, gt_fg), (n - gt_count - fg_out, pred_bg, gt_bg)):
        align = 2 * b_pred * b_gt / (b_pred**2 + b_gt**2 + _EPS)
        total += count * (1 + align) ** 2 / 4
    return total / (n - 1 + _EPS)


def s_measure(pred, gt, *, alpha: float = S_ALPHA) -> float:
    """Structure measure (Fan et al. 2017): ``alpha * S_object + (1 - alpha) * S_region``.

    An empty ground truth scores ``1 - mean(pred)``, a full one ``mean(pred)``; otherwise
    negative values are clipped to 0.
    """
    p, g = prepare_sod(pred, gt)
    share = g.mean()
    if share == 0:
        return float(1 - p.mean())
    if share == 1:
        return float(p.mean())
    return float(max(0.0, alpha * _s_object(p, g) + (1 - alpha) * _s_region(p, g)))


def _object_similarity(values: np.ndarray) -> float:
    # 2x / (x^2 + 1 + sigma): high for a region predicted uniformly close to 1.
    mean = values.mean()
    spread = values.std(ddof=1) if values.size > 1 else 0.0
    return float(2 * mean / (mean**2 + 1 + spread + _EPS))


def _s_object(p: np.ndarray, g: np.ndarray) -> float:
    share = g.mean()
    return share * _object_similarity(p[g]) + (1 - share) * _object_similarity(1 - p[~g])


def _ssim_like(p: np.ndarray, g: np.ndarray) -> float:
    # One-window SSIM of Fan et al.: 4 mx my sxy / ((mx^2 + my^2)(sx^2 + sy^2)).
    # The variances divide by N - 1 + eps, as MATLAB's reference does: a one-pixel block has no
    # structure to compare and scores 1.
    n = p.size - 1 + _EPS
    mx, my = p.mean(), g.mean()
    sxx = np.sum((p - mx) ** 2) / n
    syy = np.sum((g - my) ** 2) / n
    sxy = np.sum((p - mx) * (g - my)) / n
    numerator = 4 * mx * my * sxy
    denominator = (mx**2 + my**2) * (sxx + syy)
    if numerator != 0:
        return float(numerator / (denominator + _EPS))
    return 1.0 if denominator == 0 else 0.0


def _s_region(p: np.ndarray, g: np.ndarray) -> float:
    h, w = g.shape
    rows, cols = np.nonzero(g)
    # Split at the ground truth's centroid, rounded and counted from 1 as MATLAB indexes, so the
    # top-left block holds rows 0..y-1 and columns 0..x-1.
    y, x = int(np.round(rows.mean())) + 1, int(np.round(cols.mean())) + 1
    score = 0.0
    for rs, cs in ((slice(0, y), slice(0, x)), (slice(0, y), slice(x, w)),
                   (slice(y, h), slice(0, x)), (slice(y, h), slice(x, w))):
        block = g[rs, cs]
        if block.size:  # a centroid in the last row or column leaves blocks empty, of weight 0
            score += block.size / g.size * _ssim_like(p[rs, cs], block.astype(np.float64))
    return score


def weighted_f_measure(pred, gt) -> float:
    """Weighted F-measure (Margolin et al. 2014), beta^2 = 1.

    The absolute error E = |pred - gt| is spread by a 7x7 Gaussian (sigma 5) from each
    background pixel's nearest foreground pixel, so errors along the object count by their
    neighbourhood; foreground errors take min(E, spread E). Background pixels weigh
    ``2 - 0.5^(d / 5)`` by their distance d to the object. With the weighted errors Ew:
    recall ``1 - mean(Ew on fg)``, precision ``TPw / (TPw + sum(Ew on bg))`` where
    ``TPw = |fg| - sum(Ew on fg)``. An empty ground truth scores 0.

    Needs SciPy (the exact Euclidean distance transform), imported only here.
    """
    p, g = prepare_sod(pred, gt)
    return _weighted_f(p, g)


def _weighted_f(p: np.ndarray, g: np.ndarray) -> float:
    if not g.any():
        return 0.0
    try:
        from scipy import ndimage
    except ImportError:
        raise MtcError("the weighted F-measure needs SciPy",
                       hint="pip install 'mtc[metrics]', or leave weighted_f out of --metrics") from None
    error = np.abs(p - g)
    distance, (near_r, near_c) = ndimage.distance_transform_edt(~g, return_indices=True)
    spread = error[near_r, near_c]  # each background pixel takes its nearest object pixel's error
    spread = ndimage.convolve(spread, _gaussian_kernel(_WF_SIZE, _WF_SIGMA), mode="constant", cval=0.0)
    weighted = np.where(g & (spread < error), spread, error)
    weighted = np.where(g, weighted, weighted * (2 - np.exp(np.log(0.5) / _WF_DECAY * distance)))
    true_pos = g.sum() - weighted[g].sum()
    recall = 1 - weighted[g].mean()
    precision = true_pos / (true_pos + weighted[~g].sum() + _EPS)
    return float((1 + _WF_BETA2) * recall * precision / (recall + _WF_BETA2 * precision + _EPS))


def _gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    # MATLAB's fspecial('gaussian'): sampled at integer offsets, summing to 1.
    offsets = np.arange(size) - (size - 1) / 2
    kernel = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma**2))
    return kernel / kernel.sum()


class SodScores:
    """SOD metrics over a data set, as the evaluation toolkits aggregate them.

    MAE, weighted F and S-measure are per-image means. Max and mean F- and E-measure are the max
    and mean over thresholds of the *mean curve* over images (not the mean of each image's max).

    Args:
        which: names from SOD_METRIC_NAMES.
    """

    def __init__(self, which: Sequence[str] = SOD_METRIC_NAMES):
        unknown = [m for m in which if m not in SOD_METRIC_NAMES]
        if unknown:
            raise MtcError(f"unknown metric(s) {', '.join(map(repr, unknown))}",
                           hint=f"choose from {', '.join(SOD_METRIC_NAMES)}")
        self.which = tuple(m for m in SOD_METRIC_NAMES if m in which)
        self.images = 0
        self._sums = {"mae": 0.0, "weighted_f": 0.0, "s_measure": 0.0}
        self._f_curve = np.zeros(256)
        self._e_curve = np.zeros(256)

    def add(self, pred, gt) -> None:
        """Add one HxW image pair (float in [0, 1], uint8 or uint16)."""
        p, g = prepare_sod(pred, gt)
        wanted = set(self.which)
        if "mae" in wanted:
            self._sums["mae"] += float(np.mean(np.abs(p - g)))
        if wanted & {"max_f", "mean_f"}:
            self._f_curve += _f_curve(p, g)
        if "weighted_f" in wanted:
            self._sums["weighted_f"] += _weighted_f(p, g)
        if "s_measure" in wanted:
            self._sums["s_measure"] += s_measure(p, g)
        if wanted & {"max_e", "mean_e"}:
            self._e_curve += _e_curve(p, g)
        self.images += 1

    def result(self) -> dict[str, float]:
        """``{name: value}`` in SOD_METRIC_NAMES order; raises when no image was added."""
        if not self.images:
            raise MtcError("no images were compared", hint="add at least one image pair")
        f_curve, e_curve = self._f_curve / self.images, self._e_curve / self.images
        values = {"mae": self._sums["mae"] / self.images, "max_f": f_curve.max(), "mean_f": f_curve.mean(),
                  "weighted_f": self._sums["weighted_f"] / self.images,
                  "s_measure": self._sums["s_measure"] / self.images, "max_e": e_curve.max(), "mean_e": e_curve.mean()}
        return {name: float(values[name]) for name in self.which}


def sod_metrics(pred, gt, *, which: Sequence[str] = SOD_METRIC_NAMES) -> dict[str, float]:
    """The SOD metrics of one HxW image pair (a one-image SodScores)."""
    scores = SodScores(which)
    scores.add(pred, gt)
    return scores.result()
