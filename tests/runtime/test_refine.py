"""mtc.runtime.refine: the trimap, alpha-matting refinement against a known alpha, mask clean-up."""

from __future__ import annotations

import numpy as np
import pytest

from mtc.errors import MtcError
from mtc.metrics import mad
from mtc.runtime.refine import AlphaMatting, clean_mask, refine_alpha, trimap_from_alpha


def soft_disk(size: int = 64, radius: float = 20.0, ramp: float = 4.0):
    """A disk whose edge fades over `ramp` pixels, composited from two flat colours with a little
    noise: (picture, true alpha, the hard mask a segmentation model would give)."""
    yy, xx = np.mgrid[:size, :size]
    distance = np.hypot(yy - size / 2 + 0.5, xx - size / 2 + 0.5)
    alpha = np.clip((radius - distance) / ramp + 0.5, 0.0, 1.0)
    foreground, background = np.array([220.0, 60.0, 40.0]), np.array([30.0, 90.0, 200.0])
    noise = np.random.default_rng(0).normal(0, 2, (size, size, 3))
    picture = alpha[..., None] * foreground + (1 - alpha[..., None]) * background + noise
    return np.clip(picture, 0, 255).astype(np.uint8), alpha.astype(np.float32), (alpha >= 0.5).astype(np.float32)


def test_trimap_by_hand():
    # A 1x9 row: alpha levels 255, 255, 255, 250, 128, 5, 0, 0, 0 (x255).
    alpha = np.array([[255, 255, 255, 250, 128, 5, 0, 0, 0]], np.float32) / 255
    # No erosion: > 240 sure foreground, < 10 sure background, the 128 unknown.
    plain = trimap_from_alpha(alpha, AlphaMatting(erode_size=0))
    np.testing.assert_array_equal(plain, [[1, 1, 1, 1, 0.5, 0, 0, 0, 0]])
    # A 3x3 square erodes each region by one pixel from its edge; the image border does not eat
    # into the background (border counts as background), but it does into the foreground.
    eroded = trimap_from_alpha(np.repeat(alpha, 3, axis=0), AlphaMatting(erode_size=3))[1]
    np.testing.assert_array_equal(eroded, [0.5, 1, 1, 0.5, 0.5, 0.5, 0, 0, 0])


def test_options_are_checked():
    with pytest.raises(MtcError, match="background .* < foreground"):
        AlphaMatting(foreground_threshold=10, background_threshold=200)
    with pytest.raises(MtcError, match="method"):
        AlphaMatting(method="poisson")


@pytest.mark.parametrize("method", ["cf", "knn"])
def test_refinement_recovers_a_soft_edge_from_a_hard_mask(method):
    pytest.importorskip("pymatting")
    picture, truth, hard = soft_disk()
    refined = refine_alpha(hard, picture, AlphaMatting(erode_size=4, method=method))
    before, after = mad(hard, truth), mad(refined, truth)
    # The hard mask is off by up to 0.5 over the whole ramp (MAD ~ 16 x1e3); matting in the band
    # recovers the fade from the colours.
    assert before > 10 and after < before / 2, (before, after)
    sure = trimap_from_alpha(hard, AlphaMatting(erode_size=4)) != 0.5
    # Sure pixels stay what they were (KNN matting holds them as soft constraints: within 1/255).
    np.testing.assert_allclose(refined[sure], hard[sure], atol=1 / 255)


def test_nothing_to_solve_returns_the_alpha_unchanged():
    pytest.importorskip("pymatting")
    picture, _, _ = soft_disk()
    empty = np.zeros(picture.shape[:2], np.float32)
    np.testing.assert_array_equal(refine_alpha(empty, picture), empty)  # no foreground in the trimap


def test_clean_mask_removes_specks_and_keeps_the_body():
    mask = np.zeros((40, 40), np.float32)
    mask[10:30, 10:30] = 0.9  # the subject
    mask[2, 2] = 1.0  # a one-pixel speck
    mask[35, 20:23] = 0.8  # a thin line
    cleaned = clean_mask(mask)
    assert set(np.unique(cleaned)) == {0.0, 1.0}
    assert cleaned[2, 2] == 0 and cleaned[35, 21] == 0  # opening removes what is thinner than 3 px
    assert cleaned[12:28, 12:28].all()  # the body stays
    assert not cleaned[:8].any() and not cleaned[32:].any()
