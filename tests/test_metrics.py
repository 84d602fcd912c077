"""Tests for mtc.metrics: hand-computed values pin every formula and scale factor."""

from collections import deque
from math import sqrt

import numpy as np
import pytest

from mtc.errors import MtcError
from mtc.metrics import (
    SodScores,
    _largest_component,
    conn,
    dtssd,
    dtssd_per_frame,
    e_measure_curve,
    f_measure_curve,
    grad,
    mad,
    matting_metrics,
    mse,
    prepare_sod,
    s_measure,
    sod_metrics,
    weighted_f_measure,
)
from mtc.metrics import mae as sod_mae

# ------------------------------------------------------------------------------------ MAD/MSE


def test_mad_mse_hand_computed():
    pred = np.array([[0.0, 0.5], [1.0, 0.25]])
    gt = np.array([[0.0, 0.0], [0.5, 0.75]])
    # |d| = 0, .5, .5, .5 -> mean .375; d^2 = 0, .25, .25, .25 -> mean .1875
    assert mad(pred, gt) == pytest.approx(375.0)
    assert mse(pred, gt) == pytest.approx(187.5)


def test_mad_mse_clip_is_global_mean():
    pred = np.stack([np.full((2, 2), 0.5), np.zeros((2, 2))])
    gt = np.zeros((2, 2, 2))
    assert mad(pred, gt) == pytest.approx(250.0)
    assert mse(pred, gt) == pytest.approx(125.0)


def test_integer_inputs_are_scaled():
    assert mad(np.full((2, 2), 255, np.uint8), np.ones((2, 2))) == 0.0
    assert mad(np.full((2, 2), 65535, np.uint16), np.ones((2, 2))) == 0.0
    assert mad(np.full((1, 1), 51, np.uint8), np.zeros((1, 1))) == pytest.approx(200.0)


# -------------------------------------------------------------------------------------- dtSSD


def _hand_clip():
    gt = np.stack([np.zeros((2, 2)), np.zeros((2, 2)), np.full((2, 2), 0.5)])
    pred = np.stack(
        [
            np.zeros((2, 2)),
            np.full((2, 2), 0.2),
            np.array([[0.7, 0.7], [0.3, 0.3]]),
        ]
    )
    return pred, gt


def test_dtssd_per_frame_hand_computed():
    pred, gt = _hand_clip()
    # t=1: d = 0.2 everywhere -> sqrt(4 * 0.04 / 4) * 100 = 20
    # t=2: dpred = [.5, .5, .1, .1], dgt = .5 -> d = [0, 0, -.4, -.4]
    #      -> sqrt(0.32 / 4) * 100 = sqrt(0.08) * 100
    expected = np.array([0.0, 20.0, np.sqrt(0.08) * 100])
    np.testing.assert_allclose(dtssd_per_frame(pred, gt), expected)


def test_dtssd_is_mean_over_all_frames_including_frame0():
    pred, gt = _hand_clip()
    assert dtssd(pred, gt) == pytest.approx((20.0 + np.sqrt(0.08) * 100) / 3)


def test_dtssd_ignores_static_error():
    rng = np.random.default_rng(1)
    gt = rng.uniform(0.0, 0.8, size=(4, 6, 5))
    pred = gt + 0.2
    assert mad(pred, gt) == pytest.approx(200.0)
    np.testing.assert_allclose(dtssd_per_frame(pred, gt), 0.0, atol=1e-12)
    assert dtssd(pred, gt) == pytest.approx(0.0, abs=1e-12)


def test_dtssd_single_frame_is_zero():
    x = np.full((1, 3, 3), 0.4)
    assert dtssd(x, np.zeros_like(x)) == 0.0
    np.testing.assert_array_equal(dtssd_per_frame(x, np.zeros_like(x)), [0.0])


# --------------------------------------------------------------------------------------- Grad


def _reference_grad(pred, gt, sigma=1.4, half=4):
    """Direct 2-D convolution with explicit loops: an independent re-derivation."""

    def g(x):
        return np.exp(-(x**2) / (2 * sigma**2)) / (sigma * np.sqrt(2 * np.pi))

    size = 2 * half + 1
    fx = np.zeros((size, size))
    for r in range(size):
        for c in range(size):
            y, x = r - half, c - half
            fx[r, c] = g(y) * (-x * g(x) / sigma**2)
    fx /= np.sqrt((fx**2).sum())
    fy = fx.T

    def magnitude(img):
        img = (img - img.min()) / (img.max() - img.min())
        h, w = img.shape
        gx = np.zeros_like(img)
        gy = np.zeros_like(img)
        for i in range(h):
            for j in range(w):
                for r in range(size):
                    for c in range(size):
                        # True convolution (flipped kernel), replicate border by clamping.
                        yy = min(max(i - (r - half), 0), h - 1)
                        xx = min(max(j - (c - half), 0), w - 1)
                        gx[i, j] += fx[r, c] * img[yy, xx]
                        gy[i, j] += fy[r, c] * img[yy, xx]
        return np.sqrt(gx**2 + gy**2)

    return ((magnitude(gt) - magnitude(pred)) ** 2).sum() / 1000


def test_grad_matches_direct_convolution():
    rng = np.random.default_rng(7)
    pred = rng.random((11, 13))
    gt = rng.random((11, 13))
    assert grad(pred, gt) == pytest.approx(_reference_grad(pred, gt), rel=1e-10)


def test_grad_zero_for_identical_and_constant():
    rng = np.random.default_rng(3)
    x = rng.random((16, 16))
    assert grad(x, x) == 0.0
    assert grad(np.full((8, 8), 0.3), np.full((8, 8), 0.7)) == 0.0


def test_grad_orders_blurred_edges():
    cols = np.arange(32)
    step = np.tile((cols >= 16).astype(float), (20, 1))

    def ramp(width):
        return np.tile(np.clip((cols - 16 + width / 2) / width, 0, 1), (20, 1))

    slight, heavy = grad(ramp(3), step), grad(ramp(12), step)
    assert grad(step, step) == 0.0
    assert 0 < slight < heavy


def test_grad_minmax_normalises_each_frame():
    # RVM min-max normalises pred and gt before filtering, so a uniformly scaled matte has
    # the same normalised gradients as the ground truth.
    rng = np.random.default_rng(5)
    gt = rng.random((10, 10))
    gt[0, 0], gt[0, 1] = 0.0, 1.0
    assert grad(0.5 * gt, gt) == pytest.approx(0.0, abs=1e-12)


def test_grad_clip_is_mean_over_frames():
    rng = np.random.default_rng(9)
    p, g = rng.random((3, 12, 12)), rng.random((3, 12, 12))
    assert grad(p, g) == pytest.approx(np.mean([grad(p[t], g[t]) for t in range(3)]))


# --------------------------------------------------------------------------------------- Conn


def _block_with_blob(blob_at, pred_blob=0.7, gt_blob=0.6):
    gt = np.zeros((5, 5))
    gt[0:3, 0:3] = 1.0
    pred = gt.copy()
    pred[blob_at], gt[blob_at] = pred_blob, gt_blob
    return pred, gt


def test_conn_identical_is_zero():
    rng = np.random.default_rng(2)
    x = rng.random((20, 20))
    assert conn(x, x) == 0.0


def test_conn_disconnected_blob():
    # Blob at (4,4) never joins the 3x3 block, so l = 0 there:
    # d_p = .7 -> phi_p = .3, d_g = .6 -> phi_g = .4 -> |diff| = .1
    pred, gt = _block_with_blob((4, 4))
    assert conn(pred, gt) == pytest.approx(0.1 / 1000)


def test_conn_connected_blob():
    # Blob at (3,2) touches the block, stays in the component up to t = .6, so l = .6:
    # d_p = .1 < .15 -> phi_p = 1, d_g = 0 -> phi_g = 1 -> no error
    pred, gt = _block_with_blob((3, 2))
    assert conn(pred, gt) == pytest.approx(0.0, abs=1e-15)


def test_conn_diagonal_neighbours_are_separate():
    # (3,3) only touches the block corner (2,2) diagonally: not 4-connected.
    pred, gt = _block_with_blob((3, 3))
    assert conn(pred, gt) == pytest.approx(0.1 / 1000)


def test_conn_threshold_exactly_on_level():
    # pred = .3 exactly must pass t = .3 (np.arange's 0.30000000000000004 would fail it):
    # l = .3 -> d_p = 0 -> phi_p = 1; d_g = .2 -> phi_g = .8 -> error .2 (not .3)
    pred, gt = _block_with_blob((3, 2), pred_blob=0.3, gt_blob=0.5)
    assert conn(pred, gt) == pytest.approx(0.2 / 1000)


def _bfs_largest(mask):
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    best = []
    for i in range(h):
        for j in range(w):
            if not mask[i, j] or seen[i, j]:
                continue
            comp, queue = [], deque([(i, j)])
            seen[i, j] = True
            while queue:
                y, x = queue.popleft()
                comp.append((y, x))
                for yy, xx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                    if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not seen[yy, xx]:
                        seen[yy, xx] = True
                        queue.append((yy, xx))
            if len(comp) > len(best):  # strict: ties keep the earlier component
                best = comp
    out = np.zeros_like(mask, dtype=bool)
    for y, x in best:
        out[y, x] = True
    return out


def test_largest_component_matches_bfs():
    rng = np.random.default_rng(11)
    for _ in range(200):
        h, w = rng.integers(1, 25, size=2)
        mask = rng.random((h, w)) < rng.random()
        np.testing.assert_array_equal(_largest_component(mask), _bfs_largest(mask))


def test_largest_component_shapes():
    # A U shape: its two arms only meet through the bottom row.
    u = np.zeros((5, 5), bool)
    u[:, 0] = u[:, 4] = u[4, :] = True
    np.testing.assert_array_equal(_largest_component(u), u)
    # Equal sizes: the component starting first in raster order wins.
    two = np.zeros((3, 5), bool)
    two[2, 0:2] = True
    two[0, 3:5] = True
    expected = np.zeros_like(two)
    expected[0, 3:5] = True
    np.testing.assert_array_equal(_largest_component(two), expected)
    assert not _largest_component(np.zeros((4, 4), bool)).any()


def test_conn_full_hd_completes():
    rng = np.random.default_rng(0)
    gt = (rng.random((1080, 1920)) > 0.5).astype(np.float64)
    pred = np.clip(gt + 0.3 * rng.standard_normal(gt.shape), 0.0, 1.0)
    value = conn(pred, gt)
    assert np.isfinite(value) and value > 0


# ------------------------------------------------------------------------------ All at once


def test_matting_metrics_matches_individual_functions():
    pred, gt = _hand_clip()
    out = matting_metrics(pred, gt)
    assert list(out) == ["mad", "mse", "grad", "conn", "dtssd"]
    assert out["mad"] == pytest.approx(mad(pred, gt))
    assert out["mse"] == pytest.approx(mse(pred, gt))
    assert out["grad"] == pytest.approx(grad(pred, gt))
    assert out["conn"] == pytest.approx(conn(pred, gt))
    assert out["dtssd"] == pytest.approx(dtssd(pred, gt))
    assert all(isinstance(v, float) for v in out.values())


def test_matting_metrics_subset_and_single_frame():
    x = np.full((1, 4, 4), 0.5)
    assert matting_metrics(x, np.zeros_like(x), which=("dtssd", "mad")) == {
        "dtssd": 0.0,
        "mad": pytest.approx(500.0),
    }


# ------------------------------------------------------------------------------- Validation


@pytest.mark.parametrize(
    "pred, gt",
    [
        (np.zeros((2, 2)), np.zeros((2, 3))),
        (np.zeros(4), np.zeros(4)),
        (np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 2, 2))),
        (np.zeros((0, 2)), np.zeros((0, 2))),
        (np.array([[np.nan, 0.0]]), np.zeros((1, 2))),
        (np.zeros((1, 2)), np.array([[np.inf, 0.0]])),
        (np.array([[1.5, 0.0]]), np.zeros((1, 2))),
        (np.array([[-0.1, 0.0]]), np.zeros((1, 2))),
        (np.zeros((2, 2), np.int32), np.zeros((2, 2))),
    ],
)
@pytest.mark.parametrize("fn", [mad, mse, grad, conn, matting_metrics])
def test_invalid_inputs_raise(fn, pred, gt):
    with pytest.raises(MtcError) as info:
        fn(pred, gt)
    assert info.value.hint


def test_dtssd_requires_clip():
    with pytest.raises(MtcError):
        dtssd(np.zeros((3, 3)), np.zeros((3, 3)))
    with pytest.raises(MtcError):
        dtssd_per_frame(np.zeros((3, 3)), np.zeros((3, 3)))


def test_unknown_metric_name_raises():
    with pytest.raises(MtcError):
        matting_metrics(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)), which=("sad",))


# ------------------------------------------------------------------- SOD / DIS image metrics

# pred levels floor(255 p): 0, 127, 255, 255; gt foreground = the anti-diagonal.
SOD_PRED = np.array([[0.0, 0.5], [1.0, 1.0]])
SOD_GT = np.array([[0, 255], [255, 0]], dtype=np.uint8)


def test_prepare_sod_normalises_pred_and_binarises_gt_at_128():
    p, g = prepare_sod(np.array([[0.2, 0.4], [0.6, 0.6]]), np.array([[128, 129], [255, 0]], dtype=np.uint8))
    np.testing.assert_allclose(p, [[0.0, 0.5], [1.0, 1.0]])  # (x - .2) / .4
    assert g.tolist() == [[False, True], [True, False]]  # 128 is background, 129 foreground
    constant, _ = prepare_sod(np.full((2, 2), 0.3), SOD_GT)
    np.testing.assert_allclose(constant, 0.3)  # nothing to stretch: left as it is


def test_mae_hand_computed():
    # |p - g| = 0, .5, 0, 1 -> 1.5 / 4
    assert sod_mae(SOD_PRED, SOD_GT) == pytest.approx(0.375)
    # the same after min-max normalisation (.2 .. .6 -> 0 .. 1)
    assert sod_mae(np.array([[0.2, 0.4], [0.6, 0.6]]), SOD_GT) == pytest.approx(0.375)


def test_f_measure_curve_hand_computed():
    curve = f_measure_curve(SOD_PRED, SOD_GT)
    # F = 1.3 P R / (0.3 P + R)
    # t = 0: all 4 selected, TP 2: P 1/2, R 1 -> .65 / 1.15 = 13/23
    # t = 1..127: levels 127, 255, 255 selected, TP 2: P 2/3, R 1 -> (1.3 * 2/3) / 1.2 = 13/18
    # t = 128..255: the two 255s, TP 1: P 1/2, R 1/2 -> .325 / .65 = 1/2
    expected = np.array([13 / 23] + [13 / 18] * 127 + [0.5] * 128)
    np.testing.assert_allclose(curve, expected, rtol=1e-12)
    scores = sod_metrics(SOD_PRED, SOD_GT, which=("max_f", "mean_f"))
    assert scores["max_f"] == pytest.approx(13 / 18)
    assert scores["mean_f"] == pytest.approx((13 / 23 + 127 * 13 / 18 + 64) / 256)


def test_f_measure_of_a_threshold_selecting_nothing_is_zero():
    # min-max stretches 0.5 to 1 (level 255): t = 0 selects both (P 1/2, R 1 -> 13/23), then only
    # the foreground pixel: P = R = 1 -> 1 up to t = 255.
    curve = f_measure_curve(np.array([[0.0, 0.5]]), np.array([[0, 255]], dtype=np.uint8))
    np.testing.assert_allclose(curve, [13 / 23] + [1.0] * 255)
    empty = f_measure_curve(np.array([[0.0, 0.0]]), np.array([[0, 255]], dtype=np.uint8))
    np.testing.assert_allclose(empty, [13 / 23] + [0.0] * 255)  # t >= 1 selects nothing: P = R = 0 -> 0


def test_e_measure_curve_hand_computed():
    curve = e_measure_curve(SOD_PRED, SOD_GT)
    # bias maps: gt fg 1 - 1/2 = 1/2, gt bg -1/2; E = sum((1 + a)^2 / 4) / (4 - 1), a = 2xy / (x^2 + y^2)
    # t = 0: B all 1, bias 0 everywhere: a = 0 -> 4 * 1/4 / 3 = 1/3
    # t = 1..127: 3 selected (mean 3/4): pred fg 1/4, pred bg -3/4
    #   2 px (1/4, 1/2): a = .25 / .3125 = 4/5 -> .81 each; 1 px (1/4, -1/2): a = -4/5 -> .01
    #   1 px (-3/4, -1/2): a = .75 / .8125 = 12/13 -> (25/13)^2 / 4 = 625/676
    # t = 128..255: 2 selected (mean 1/2): two pixels agree (a = 1 -> 1), two disagree (a = -1 -> 0)
    middle = (1.62 + 0.01 + 625 / 676) / 3
    expected = np.array([1 / 3] + [middle] * 127 + [2 / 3] * 128)
    np.testing.assert_allclose(curve, expected, rtol=1e-12)
    scores = sod_metrics(SOD_PRED, SOD_GT, which=("max_e", "mean_e"))
    assert scores["max_e"] == pytest.approx(middle)
    assert scores["mean_e"] == pytest.approx((1 / 3 + 127 * middle + 128 * 2 / 3) / 256)


def test_e_measure_with_an_all_background_or_all_foreground_gt():
    pred = np.array([[0.0, 1.0, 1.0]])  # levels 0, 255, 255
    empty = e_measure_curve(pred, np.zeros((1, 3), np.uint8))
    # the share of pixels left out: t = 0 leaves none (0 / 2), t >= 1 leaves one (1 / 2)
    np.testing.assert_allclose(empty, [0.0] + [0.5] * 255)
    full = e_measure_curve(pred, np.full((1, 3), 255, np.uint8))
    np.testing.assert_allclose(full, [1.5] + [1.0] * 255)  # |B| / (n - 1): 3/2, then 2/2


def test_s_measure_hand_computed():
    gt = np.array([[255, 255, 0], [255, 0, 0], [0, 0, 0]], dtype=np.uint8)
    pred = np.array([[1.0, 0.5, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    # Object: fg values 1, .5, 1: mean 5/6, std (ddof 1) sqrt(1/12) -> 2x / (x^2 + 1 + std);
    # bg values of 1 - pred are all 1 -> 2 / 2 = 1; weighted by the gt share 1/3 and 2/3.
    fg_score = (5 / 3) / (25 / 36 + 1 + sqrt(1 / 12))
    s_object = fg_score / 3 + 2 / 3
    # Region: centroid row 1/3, column 1/3 -> rounded 0, +1 -> split after row 0 and column 0.
    #   top-left [1] vs [1]: one pixel -> 1 (weight 1/9)
    #   top-right [.5, 0] vs [1, 0]: mx 1/4, my 1/2, sxx 1/8, syy 1/2, sxy 1/4 -> .125 / .1953125 = .64 (2/9)
    #   bottom-left [1, 0] vs [1, 0]: identical -> 1 (2/9); bottom-right all zeros -> 1 (4/9)
    s_region = (1 + 2 * 0.64 + 2 + 4) / 9
    assert s_measure(pred, gt) == pytest.approx(0.5 * s_object + 0.5 * s_region, rel=1e-12)


def test_s_measure_with_an_all_background_or_all_foreground_gt():
    pred = np.array([[0.0, 1.0], [0.5, 0.5]])
    assert s_measure(pred, np.zeros((2, 2), np.uint8)) == pytest.approx(0.5)  # 1 - mean
    pred = np.array([[0.0, 1.0], [0.25, 1.0]])
    assert s_measure(pred, np.full((2, 2), 255, np.uint8)) == pytest.approx(0.5625)  # mean


def test_weighted_f_measure_hand_computed():
    pytest.importorskip("scipy")
    gt = np.array([[255, 255, 0, 0]], dtype=np.uint8)
    pred = np.array([[1.0, 0.5, 0.5, 0.0]])
    # E = 0, .5, .5, 0. Background pixels take the error of their nearest object pixel (column 1):
    # Et = 0, .5, .5, .5. The 7x7 Gaussian (sigma 5, sum 1) meets a one-row image with its middle
    # row only: k(d) = exp(-d^2 / 50) / s^2 with s = sum over d = -3..3 of exp(-d^2 / 50).
    s = sum(np.exp(-d * d / 50) for d in range(-3, 4))
    k = [np.exp(-d * d / 50) / s**2 for d in range(4)]
    spread_at_1 = 0.5 * (k[0] + k[1] + k[2])  # Et at columns 1, 2, 3: distances 0, 1, 2
    # Object pixel 1: min(.5, spread) = spread; pixel 0 has no error. Background pixel 2 (distance 1)
    # weighs 2 - 0.5^(1/5); pixel 3 has no error.
    background_error = 0.5 * (2 - 0.5**0.2)
    true_pos = 2 - spread_at_1
    recall = 1 - spread_at_1 / 2
    precision = true_pos / (true_pos + background_error)
    expected = 2 * recall * precision / (recall + precision)
    assert weighted_f_measure(pred, gt) == pytest.approx(expected, rel=1e-9)
    assert 0.86 < expected < 0.87  # the hand figure: R .98270, P .77680 -> .8677


def test_weighted_f_measure_extremes():
    pytest.importorskip("scipy")
    gt = np.array([[0, 255, 255], [0, 0, 255]], dtype=np.uint8)
    assert weighted_f_measure(gt.astype(np.float64) / 255, gt) == pytest.approx(1.0)
    assert weighted_f_measure(np.array([[0.0, 1.0, 1.0]]), np.zeros((1, 3), np.uint8)) == 0.0


def test_sod_scores_average_curves_before_taking_the_max():
    # Image 1: pred levels 0, 255 with the 255 pixel foreground -> F is 13/23 at t = 0, then 1.
    # Image 2: the same pred with the 0 pixel foreground -> 13/23 at t = 0; t >= 1 selects only the
    # background pixel: P = R = 0 -> 0.
    scores = SodScores(("max_f", "mae"))
    scores.add(np.array([[0.0, 1.0]]), np.array([[0, 255]], dtype=np.uint8))
    scores.add(np.array([[0.0, 1.0]]), np.array([[255, 0]], dtype=np.uint8))
    result = scores.result()
    # mean curve: t = 0 -> 13/23; t >= 1 -> (1 + 0) / 2 = 1/2. Max 13/23, while the mean of per-image
    # maxima would be (1 + 13/23) / 2.
    assert result["max_f"] == pytest.approx(13 / 23)
    assert result["mae"] == pytest.approx(0.5)  # 0 and 1
    assert list(result) == ["mae", "max_f"]


def test_sod_metrics_refuse_clips_and_unknown_names():
    with pytest.raises(MtcError, match="one HxW image pair"):
        sod_metrics(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))
    with pytest.raises(MtcError, match="unknown metric"):
        SodScores(("mad",))


def test_sod_metrics_match_pysodmetrics():
    psm = pytest.importorskip("py_sod_metrics")
    pytest.importorskip("scipy")
    rng = np.random.default_rng(0)
    ours = SodScores()
    theirs = {"mae": psm.MAE(), "fm": psm.Fmeasure(), "wfm": psm.WeightedFmeasure(), "sm": psm.Smeasure(),
              "em": psm.Emeasure()}
    for index in range(12):
        h, w = rng.integers(8, 48, 2)
        gt = np.zeros((h, w), np.uint8)
        gt[h // 4:3 * h // 4, w // 5:w // 2] = 255
        if index % 3 == 0:
            gt = (rng.random((h, w)) > 0.6).astype(np.uint8) * 255
        pred = np.clip(gt * 0.7 + rng.normal(0, 50, (h, w)), 0, 255).astype(np.uint8)
        ours.add(pred, gt)
        for metric in theirs.values():
            metric.step(pred=pred, gt=gt)
    got = ours.result()
    fm, em = theirs["fm"].get_results()["fm"]["curve"], theirs["em"].get_results()["em"]["curve"]
    expected = {"mae": theirs["mae"].get_results()["mae"], "max_f": fm.max(), "mean_f": fm.mean(),
                "weighted_f": theirs["wfm"].get_results()["wfm"], "s_measure": theirs["sm"].get_results()["sm"],
                "max_e": em.max(), "mean_e": em.mean()}
    for name, value in expected.items():
        assert got[name] == pytest.approx(float(value), abs=1e-9), name
