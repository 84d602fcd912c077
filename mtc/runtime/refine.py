"""Finishing steps for a predicted matte: morphological mask clean-up and alpha-matting refinement.

Both take and return HxW float32 alpha in [0, 1], with the HxWx3 uint8 frame it was predicted
from, so `mtc run` can chain them after any model.

* `clean_mask` turns a soft, speckled mask into a clean binary one: an opening removes
  isolated specks and thin bridges, a Gaussian blur rounds the outline, and a threshold at
  the middle makes it binary again (the post-processing rembg offers). Pillow only.
* `refine_alpha` recovers hair and soft edges that a segmentation model leaves hard: a trimap
  marks the confident foreground and background (the mask eroded, so a band around the edge
  stays unknown), and closed-form (Levin et al. 2008) or KNN matting (Chen et al. 2013) solves
  the unknown band from the picture's colours. The solvers are `pymatting`'s (the `refine`
  extra), imported when first used.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass

import numpy as np

from mtc.errors import MtcError

MATTING_METHODS = ("cf", "knn")


@dataclass(frozen=True, kw_only=True)
class AlphaMatting:
    """How `refine_alpha` builds its trimap and which solver fills it.

    The defaults are rembg's: alpha above 240/255 is sure foreground, below 10/255 sure
    background, and each sure region is eroded by a 10x10 square so the unknown band is about
    ten pixels wider on each side of the edge.
    """

    foreground_threshold: int = 240
    background_threshold: int = 10
    erode_size: int = 10
    method: str = "cf"

    def __post_init__(self):
        if not 0 <= self.background_threshold < self.foreground_threshold <= 255:
            raise MtcError(f"alpha-matting thresholds must satisfy 0 <= background ({self.background_threshold}) "
                           f"< foreground ({self.foreground_threshold}) <= 255",
                           hint="e.g. --alpha-matting-foreground 240 --alpha-matting-background 10")
        if self.erode_size < 0:
            raise MtcError(f"alpha-matting erode size must be >= 0, got {self.erode_size}", hint="e.g. 10")
        if self.method not in MATTING_METHODS:
            raise MtcError(f"unknown alpha-matting method {self.method!r}", hint=f"choose {' or '.join(MATTING_METHODS)}")


def require_pymatting():
    """The pymatting module, or an MtcError naming the extra that installs it."""
    try:
        import pymatting
    except ImportError:
        raise MtcError("--alpha-matting needs the pymatting library", hint="pip install 'mtc[refine]'") from None
    return pymatting


def trimap_from_alpha(alpha: np.ndarray, options: AlphaMatting = AlphaMatting()) -> np.ndarray:
    """HxW float64 trimap: 1 sure foreground, 0 sure background, 0.5 unknown.

    Sure regions are ``alpha * 255 > foreground_threshold`` and ``< background_threshold``,
    each eroded by an ``erode_size`` square (the image border counts as background for the
    background region, so it is not eaten away from the frame's edge).
    """
    from scipy import ndimage  # a dependency of pymatting: present wherever refinement runs

    levels = np.asarray(alpha, np.float32) * 255
    sure_fg = levels > options.foreground_threshold
    sure_bg = levels < options.background_threshold
    if options.erode_size > 0:
        square = np.ones((options.erode_size, options.erode_size), bool)
        sure_fg = ndimage.binary_erosion(sure_fg, structure=square)
        sure_bg = ndimage.binary_erosion(sure_bg, structure=square, border_value=1)
    trimap = np.full(levels.shape, 0.5)
    trimap[sure_fg] = 1.0
    trimap[sure_bg] = 0.0
    return trimap


def refine_alpha(alpha: np.ndarray, frame: np.ndarray, options: AlphaMatting = AlphaMatting()) -> np.ndarray:
    """Alpha from closed-form or KNN matting of `frame` inside the trimap built from `alpha`.

    A trimap without sure foreground, sure background or unknown pixels leaves nothing to solve:
    the alpha comes back unchanged.

    Raises:
        MtcError: pymatting is not installed.
    """
    pymatting = require_pymatting()
    trimap = trimap_from_alpha(alpha, options)
    unknown = trimap == 0.5
    if not unknown.any() or not (trimap == 1).any() or not (trimap == 0).any():
        return np.asarray(alpha, np.float32)
    solve = pymatting.estimate_alpha_cf if options.method == "cf" else pymatting.estimate_alpha_knn
    # pymatting prints its solver's performance notes; stdout may carry results (or raw frames).
    with contextlib.redirect_stdout(sys.stderr):
        refined = solve(np.asarray(frame, np.float64) / 255.0, trimap)
    return np.clip(refined, 0.0, 1.0).astype(np.float32)


# rembg's clean-up: opening with a 3x3 element, a Gaussian blur of sigma 2, threshold at 127.
_OPENING_SIZE = 3
_BLUR_SIGMA = 2
_THRESHOLD = 127


def clean_mask(alpha: np.ndarray, frame: np.ndarray | None = None) -> np.ndarray:
    """A binary (0/1) mask: opening, Gaussian blur and a threshold at the middle (`frame` unused)."""
    from PIL import Image, ImageFilter

    mask = Image.fromarray(np.clip(np.asarray(alpha, np.float32) * 255 + 0.5, 0, 255).astype(np.uint8), mode="L")
    mask = mask.filter(ImageFilter.MinFilter(_OPENING_SIZE)).filter(ImageFilter.MaxFilter(_OPENING_SIZE))
    mask = mask.filter(ImageFilter.GaussianBlur(_BLUR_SIGMA))
    return (np.asarray(mask) >= _THRESHOLD).astype(np.float32)
