"""Built-in still photos for image models, from the public-domain and CC0 photos in scikit-image.

An image model (a salient-object or portrait mask, one image at a time) meets whole photos:
objects of every kind, close-ups, text, flat and busy backgrounds. The built-in clip alone is
one person composited over moving backgrounds, so INT8 ranges calibrated on it alone miss what
real photos hold. The photos are split in two fixed, disjoint sets: one joins the calibration
data, the other the held-out checks behind the gates. Photos without a subject (microscopy,
deep space) are calibration only: a salient-object map of such a photo is nearly flat, and
models that min-max normalise their output stretch it, so any rounding becomes a large
difference in a mask nobody would use.

Like the clip, the photos are read from scikit-image's installed ``data`` folder without
importing scikit-image, and nothing is stored in git.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from mtc.data.builtin_clip import _data_dir
from mtc.errors import MtcError
from mtc.runtime.images import cover

#: (file in skimage/data, what it shows, source and licence as scikit-image states them)
CALIBRATION_PHOTOS = (
    ("astronaut.png", "portrait of astronaut Eileen Collins", "NASA; public domain"),
    ("coffee.png", "espresso cup on a wooden table", "Rachel Michetti; CC0"),
    ("rocket.jpg", "Falcon 9 on the launch pad at dusk", "SpaceX; public domain"),
    ("clock_motion.png", "motion-blurred wall clock (grey)", "Stefan van der Walt; public domain"),
    ("retina.jpg", "human retina (fundus photograph)", "Häggström, Mikael; CC0"),
    ("brick.png", "brick wall (grey)", "CC0Textures (Bricks25); CC0"),
    ("ihc.png", "immunohistochemical staining (microscopy)", "CMMI; no known copyright restrictions"),
    ("hubble_deep_field.jpg", "Hubble eXtreme Deep Field", "NASA; public domain"),
)
CHECK_PHOTOS = (
    ("chelsea.png", "Chelsea the cat", "Stefan van der Walt; CC0"),
    ("camera.png", "a man with a camera (grey)", "Lav Varshney; CC0"),
    ("horse.png", "silhouette of a horse (binary)", "Andreas Preuss; CC0"),
    ("coins.png", "Greek coins from Pompeii (grey)", "Brooklyn Museum; no known copyright restrictions"),
    ("text.png", "printed text on a textured background (grey)", "Wikipedia (File:Corner.png); public domain"),
)
SPLITS = {"calibration": CALIBRATION_PHOTOS, "check": CHECK_PHOTOS}


@functools.lru_cache(maxsize=2)
def _photos(split: str) -> tuple[tuple[str, Image.Image], ...]:
    folder = _data_dir()
    try:
        return tuple((name, Image.open(folder / name).convert("RGB")) for name, _, _ in SPLITS[split])
    except OSError as exc:
        raise MtcError(f"cannot read scikit-image's sample photos ({exc})", hint="reinstall scikit-image") from None


def builtin_photos(split: str, size: tuple[int, int]) -> list[tuple[str, np.ndarray]]:
    """The photos of one split as (file name, HxWx3 uint8 RGB) at `size` (width, height).

    Each photo is centre-cropped to the aspect ratio of `size` before resizing, so nothing is
    stretched.
    """
    if split not in SPLITS:
        raise MtcError(f"unknown built-in photo split {split!r}", hint=f"use one of: {', '.join(SPLITS)}")
    width, height = size
    if min(width, height) < 16:
        raise MtcError(f"built-in photos at {width}x{height} are too small", hint="use width and height >= 16")
    out = []
    for name, photo in _photos(split):
        out.append((name, np.asarray(cover(photo, (width, height), Image.Resampling.LANCZOS))))
    return out
