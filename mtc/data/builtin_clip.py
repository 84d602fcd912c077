"""The built-in demo/calibration clip, composed from public-domain photos in scikit-image.

A portrait (NASA's photo of astronaut Eileen Collins) is cut out with a hand-drawn, feathered
person-shaped mask and composited over slowly panning, zooming background photos. The demo clip
has two shots with different backgrounds, so it also exercises scene-cut handling; calibration
uses one shot per background photo (`CALIBRATION_SHOTS`), because INT8 ranges fitted on two
scenes fit real footage worse (measured in mtc.quant.calibration).

The alpha is an approximation drawn from ellipses and a polygon, not a ground-truth matte:
use the clip for INT8 calibration, demos and smoke tests, never to measure matting accuracy.

The photos are read from scikit-image's installed ``data`` folder without importing
scikit-image (which is slow to import). Nothing generated here is stored in git; the clip is
rebuilt deterministically on demand.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from mtc.errors import MtcError

#: (file in skimage/data, role in the clip, source and licence)
SOURCES = (
    (
        "astronaut.png",
        "foreground: portrait of astronaut Eileen Collins",
        "NASA Great Images (https://flic.kr/p/r9qvLn); no known copyright restrictions, public domain",
    ),
    (
        "rocket.jpg",
        "background, shot 1: Falcon 9 with DSCOVR on the launch pad at dusk",
        "SpaceX (https://www.flickr.com/photos/spacexphotos/16511594820/); released into the public domain",
    ),
    (
        "coffee.png",
        "background, shot 2: espresso cup on a wooden table",
        "Rachel Michetti, courtesy of Pikolo Espresso Bar; CC0, no copyright restrictions",
    ),
    ("chelsea.png", "background, shot 3: Chelsea the cat", "Stefan van der Walt; CC0, no copyright restrictions"),
    (
        "hubble_deep_field.jpg",
        "background, shot 4: Hubble eXtreme Deep Field",
        "NASA (HubbleSite, release 2012-37); public domain",
    ),
    ("camera.png", "background, shot 5: a man with a camera (grey)", "Lav Varshney; CC0, no copyright restrictions"),
    ("brick.png", "background, shot 6: a brick wall (grey)", "CC0Textures (Bricks25); CC0"),
)
_FOREGROUND = SOURCES[0][0]
_BACKGROUNDS = tuple(name for name, _, _ in SOURCES[1:])
#: One shot per background photo: the scene variety INT8 calibration wants.
CALIBRATION_SHOTS = len(_BACKGROUNDS)
#: The demo clip's shots (and the held-out check clip's).
DEMO_SHOTS = 2


@dataclass(frozen=True, kw_only=True)
class ClipSpec:
    """Size and length of the built-in clip.

    Attributes:
        width: Frame width in pixels (at least 16).
        height: Frame height in pixels (at least 16).
        frames: Number of frames (at least 1), split evenly into the shots.
        fps: Frame rate used when the clip is written as a video.
        seed: Varies the camera and subject motion; the same spec always gives the same clip.
        shots: Number of shots (1 to CALIBRATION_SHOTS), each over the next background photo.
    """

    width: int = 512
    height: int = 288
    frames: int = 48
    fps: float = 24.0
    seed: int = 0
    shots: int = DEMO_SHOTS

    def __post_init__(self):
        if min(self.width, self.height) < 16 or self.frames < 1 or not self.fps > 0:
            raise MtcError(
                f"bad built-in clip spec {self.width}x{self.height}, {self.frames} frames at {self.fps} fps",
                hint="use width and height >= 16, frames >= 1 and fps > 0",
            )
        if not 1 <= self.shots <= CALIBRATION_SHOTS:
            raise MtcError(f"bad built-in clip spec: {self.shots} shots",
                           hint=f"use 1 to {CALIBRATION_SHOTS} shots (one per background photo)")


def _data_dir() -> Path:
    # find_spec locates the package without executing skimage/__init__.py.
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise MtcError(
            "the built-in clip needs scikit-image's sample photos, but scikit-image is not installed",
            hint="pip install 'mtc[compile]'",
        )
    for location in spec.submodule_search_locations:
        folder = Path(location) / "data"
        if all((folder / name).is_file() for name, _, _ in SOURCES):
            return folder
    raise MtcError(
        "scikit-image is installed but its sample photos are missing",
        hint="reinstall it: pip install --force-reinstall 'scikit-image>=0.22'",
    )


def _person_mask(size: int) -> Image.Image:
    """Feathered cutout of the person in astronaut.png, drawn by eye (not ground truth).

    Coordinates are pixels of the 512x512 photo. The helmet at the bottom right is left out,
    so the cutout's right edge follows the helmet's outline.
    """
    supersample = 4  # smooth polygon edges before feathering

    def layer(shapes, feather: float) -> np.ndarray:
        canvas = Image.new("L", (size * supersample, size * supersample), 0)
        draw = ImageDraw.Draw(canvas)
        for kind, coords in shapes:
            scaled = [c * supersample for c in coords]
            if kind == "ellipse":
                draw.ellipse(scaled, fill=255)
            else:
                draw.polygon(list(zip(scaled[::2], scaled[1::2])), fill=255)
        canvas = canvas.resize((size, size), Image.Resampling.BOX)
        return np.asarray(canvas.filter(ImageFilter.GaussianBlur(feather)))

    # Suit collar ring, shoulders and torso down to the bottom edge.
    body = (
        112, 200, 120, 178, 135, 162, 155, 151, 180, 147, 210, 150, 240, 158, 262, 167, 282, 180,
        296, 198, 304, 222, 306, 248, 318, 266, 340, 280, 356, 296, 364, 320, 364, 346, 340, 358,
        316, 376, 300, 392, 286, 416, 278, 466, 277, 512, 20, 512, 18, 440, 20, 380, 30, 320,
        48, 285, 80, 262, 104, 244, 112, 225,
    )  # fmt: skip
    hair = (
        235, 15, 262, 20, 280, 30, 288, 40, 295, 50, 299, 62, 301, 80, 300, 100, 296, 112, 290, 122,
        280, 130, 270, 128, 180, 128, 172, 130, 164, 122, 157, 108, 154, 90, 155, 62, 159, 50, 170, 40,
        190, 30, 205, 20,
    )  # fmt: skip
    face = (176, 96, 273, 96, 272, 128, 266, 150, 256, 170, 240, 182, 225, 187, 208, 182, 195, 170, 186, 150, 179, 128)
    # Hair gets a wider feather than the suit: its real edge is soft and wispy.
    head = layer([("polygon", hair), ("polygon", face)], 2.5)
    mask = np.maximum(layer([("polygon", body)], 1.5), head)
    mask[-3:] = mask[-4]  # the torso continues below the photo, so no feathering at the bottom
    return Image.fromarray(mask, mode="L")


@functools.lru_cache(maxsize=1)
def _sources() -> tuple[Image.Image, Image.Image, tuple[Image.Image, ...]]:
    folder = _data_dir()
    try:
        person = Image.open(folder / _FOREGROUND).convert("RGB")
        backgrounds = tuple(Image.open(folder / name).convert("RGB") for name in _BACKGROUNDS)
    except OSError as exc:
        raise MtcError(f"cannot read scikit-image's sample photos ({exc})", hint="reinstall scikit-image") from None
    if person.size != (512, 512):  # the cutout below is drawn in this photo's pixel coordinates
        raise MtcError(f"unexpected {_FOREGROUND} of size {person.size} in {folder}", hint="reinstall scikit-image")
    return person, _person_mask(person.width), backgrounds


def scene_cut_frames(spec: ClipSpec = ClipSpec()) -> list[int]:
    """Indices of frames that start a new shot (the first frame itself is not counted).

    Args:
        spec: The clip.

    Returns:
        Evenly spaced cuts (``[spec.frames // 2]`` for the two-shot demo clip); a clip shorter
        than its shot count has one shot per frame.
    """
    shots = min(spec.shots, spec.frames)
    return [spec.frames * i // shots for i in range(1, shots)]


def _shots(spec: ClipSpec) -> list[range]:
    edges = [0, *scene_cut_frames(spec), spec.frames]
    return [range(a, b) for a, b in zip(edges, edges[1:])]


def _background(photo: Image.Image, spec: ClipSpec, t: float, pan: float, zoom: tuple[float, float]) -> Image.Image:
    """A crop window drifting across `photo` (t in [0, 1]), resized to the frame."""
    aspect = spec.width / spec.height
    full_w = min(photo.width, photo.height * aspect)
    crop_w = full_w * (zoom[0] + (zoom[1] - zoom[0]) * t)
    crop_h = crop_w / aspect
    u = 0.5 + pan * (t - 0.5)  # horizontal position of the window, 0 = left edge
    left = (photo.width - crop_w) * u
    top = (photo.height - crop_h) * (0.5 + 0.15 * math.sin(math.pi * t))
    box = (left, top, left + crop_w, top + crop_h)
    return photo.resize((spec.width, spec.height), Image.Resampling.BILINEAR, box=box)


def _render(spec: ClipSpec) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (HxWx3 uint8 RGB, HxW uint8 alpha) per frame."""
    person, mask, photos = _sources()
    rng = np.random.default_rng(spec.seed)
    W, H = spec.width, spec.height
    for shot, frames in enumerate(_shots(spec)):
        photo = photos[shot % len(photos)]
        direction = 1.0 if shot % 2 == 0 else -1.0
        pan = direction * rng.uniform(0.6, 0.9)
        zoom = (0.95, 0.85) if shot % 2 == 0 else (0.8, 0.9)
        phase = rng.uniform(0, 2 * math.pi)
        # Where the person's centre travels, as a fraction of the frame width.
        start, end = (0.38, 0.62) if direction > 0 else (0.66, 0.42)
        base = H * (1.05 if shot % 2 == 0 else 1.15)  # the second shot is a closer framing
        for i in frames:
            t = (i - frames.start) / max(len(frames) - 1, 1)
            rgb = np.array(_background(photo, spec, t, pan, zoom))
            alpha = np.zeros((H, W), np.uint8)

            # The photo is placed as a square of side `side` at (x0, y0), sub-pixel accurate.
            side = base * (1 + 0.03 * math.sin(2 * math.pi * t + phase))
            bob = 0.015 * H * math.sin(3 * math.pi * t + phase)
            centre = (start + (end - start) * t) * W
            # In the photo the torso's centre is at x=190 and the top of the hair at y=15 (of
            # 512). Keeping the hair 5% below the frame top puts the photo's bottom edge below
            # the frame for any side >= H.
            x0 = centre - side * (190 / 512)
            y0 = 0.05 * H - side * (15 / 512) + bob
            dx0, dx1 = max(0, math.ceil(x0)), min(W, math.floor(x0 + side))
            dy0, dy1 = max(0, math.ceil(y0)), min(H, math.floor(y0 + side))
            if dx1 > dx0 and dy1 > dy0:
                scale = person.width / side
                box = ((dx0 - x0) * scale, (dy0 - y0) * scale, (dx1 - x0) * scale, (dy1 - y0) * scale)
                size = (dx1 - dx0, dy1 - dy0)
                fg = np.asarray(person.resize(size, Image.Resampling.BILINEAR, box=box), dtype=np.float32)
                a8 = np.asarray(mask.resize(size, Image.Resampling.BILINEAR, box=box))
                a = a8[..., None].astype(np.float32) / 255
                region = rgb[dy0:dy1, dx0:dx1].astype(np.float32)
                # A convex blend of uint8 values stays in 0..255, so rounding needs no clip.
                rgb[dy0:dy1, dx0:dx1] = (region + (fg - region) * a + 0.5).astype(np.uint8)
                alpha[dy0:dy1, dx0:dx1] = a8
            yield rgb, alpha


def builtin_frames(spec: ClipSpec = ClipSpec()) -> Iterator[np.ndarray]:
    """Generate the built-in clip frame by frame.

    Args:
        spec: Size, length and seed; equal specs give identical frames.

    Yields:
        ``HxWx3`` ``uint8`` RGB frames.

    Raises:
        MtcError: scikit-image (which ships the photos) is not installed.
    """
    for rgb, _ in _render(spec):
        yield rgb


def builtin_clip(spec: ClipSpec = ClipSpec()) -> np.ndarray:
    """The whole built-in clip as one ``TxHxWx3`` ``uint8`` array.

    Args:
        spec: Size, length and seed.
    """
    clip = np.empty((spec.frames, spec.height, spec.width, 3), np.uint8)
    for i, frame in enumerate(builtin_frames(spec)):
        clip[i] = frame
    return clip


def builtin_alpha(spec: ClipSpec = ClipSpec()) -> np.ndarray:
    """The approximate alpha the clip was composited with, ``TxHxW`` ``float32`` in [0, 1].

    Hand-drawn, so only good for sanity checks (e.g. the matte covers the person), not for
    accuracy metrics.

    Args:
        spec: Size, length and seed.
    """
    out = np.empty((spec.frames, spec.height, spec.width), np.float32)
    for i, (_, alpha) in enumerate(_render(spec)):
        out[i] = alpha / np.float32(255)
    return out


def write_builtin_clip(path: str | Path, spec: ClipSpec = ClipSpec()) -> Path:
    """Encode the built-in clip as an 8-bit RGB video (H.264 in .mp4/.mkv/.mov).

    Args:
        path: Output video file, written atomically.
        spec: Size, length, frame rate and seed.

    Returns:
        The written path.
    """
    from mtc.runtime.video_writer import VideoWriter

    path = Path(path)
    with VideoWriter(path, width=spec.width, height=spec.height, fps=spec.fps, kind="rgb") as writer:
        for frame in builtin_frames(spec):
            writer.write(frame)
    return path
