"""Still images for the runtime and the CLI (Pillow, no torch): reading, writing, listing.

Every picture crossing this module is an ``HxWx3`` (or ``HxWx4`` for alpha output) ``uint8``
numpy array in RGB order. Inputs we cannot handle faithfully (grayscale, transparency,
16-bit) are refused with an `MtcError` instead of being silently converted, because a matting
model fed a flattened alpha or a truncated 16-bit image produces plausible-looking garbage.

Outputs are written to a hidden temporary sibling and renamed into place only when complete,
so an interrupted run never leaves a file that looks finished.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mtc.errors import MtcError
from mtc.fsutil import atomic_file
from mtc.runtime.frames import check_pixels, max_pixels, pixel_limit_error

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
_TO_8BIT_RGB = "convert it to 8-bit RGB, e.g. `convert in.png -alpha off -depth 8 -type TrueColor out.png`"


def is_image(path: str | os.PathLike) -> bool:
    """Return True if `path` has a still-image extension this module reads."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _file_bit_depth(path: Path, img: Image.Image) -> int:
    """Bits per channel as stored in the file, where Pillow's mode would hide it."""
    if img.format == "PNG":
        # Pillow opens 16-bit RGB PNGs as 8-bit 'RGB', dropping precision silently; the IHDR
        # chunk (always first) stores the true depth at byte 24.
        with contextlib.suppress(OSError), open(path, "rb") as handle:
            header = handle.read(26)
            if len(header) == 26 and header[12:16] == b"IHDR":
                return header[24]
    if img.format == "TIFF":
        bits = getattr(img, "tag_v2", {}).get(258)  # BitsPerSample
        if bits:
            return max(bits) if isinstance(bits, tuple) else int(bits)
    return 8


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as an RGB frame, honouring EXIF orientation.

    Accepts 8-bit RGB, palette images, CMYK and YCbCr (converted to RGB); an alpha channel or
    transparent palette entry is accepted only where every pixel is opaque (alpha 255).

    Args:
        path: Image file (PNG, JPEG, BMP, WebP, TIFF, ...).

    Returns:
        ``HxWx3`` ``uint8`` array in RGB order.

    Raises:
        MtcError: The file is missing, unreadable, or grayscale / transparent / 16-bit.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not an image" if path.is_dir() else "not found"
        raise MtcError(f"image {path} {what}", hint="check the path")
    try:
        with Image.open(path) as img:  # reads the header only
            check_pixels(*img.size, f"image {path}")
            img.load()
            rgb = _to_rgb(path, img)
            rgb = ImageOps.exif_transpose(rgb)
            return np.array(rgb, dtype=np.uint8)
    except MtcError:
        raise
    except Image.DecompressionBombError as exc:
        # Pillow refuses far larger images on opening, before our check sees the size; its own
        # bound (2 x Image.MAX_IMAGE_PIXELS) still holds where --max-pixels goes past it.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        if found and int(found[1]) > max_pixels():
            raise pixel_limit_error(f"image {path}", int(found[1])) from None
        raise MtcError(f"image {path} is too large to read safely ({exc})", hint="downscale it first") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        # Pillow reports truncated/corrupt data as OSError, SyntaxError or ValueError by format.
        raise MtcError(
            f"cannot read image {path}: not an image or corrupt ({exc})",
            hint="re-export the file as PNG or JPEG",
        ) from None


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a mask picture as HxW uint8 (255 = the object): a grey or black-and-white image, or
    a cut-out whose transparency marks the background (its alpha is the mask).

    Raises:
        MtcError: The file is missing or not an image.
    """
    path = Path(path)
    if not path.is_file():
        raise MtcError(f"mask {path} {'is a folder' if path.is_dir() else 'not found'}", hint="check the path")
    try:
        with Image.open(path) as img:
            check_pixels(*img.size, f"mask {path}")
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                img = img.convert("RGBA")
                if _see_through_share(img) > 0:
                    return np.array(img.getchannel("A"), dtype=np.uint8)
            return np.array(img.convert("L"), dtype=np.uint8)
    except MtcError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise MtcError(f"cannot read mask {path}: not an image or corrupt ({exc})",
                       hint="save the mask as a PNG, white on black") from None


def _see_through_share(img: Image.Image) -> float:
    """The share of pixels whose alpha is below 255 (alpha channel, or palette / colour-key transparency)."""
    bands = img.getbands()
    if "A" in bands or "a" in bands:  # "a": premultiplied (RGBa, La); its alpha is still alpha
        alpha = img.getchannel("A" if "A" in bands else "a")
    else:  # a tRNS chunk: P or RGB with a transparent palette entry or colour
        alpha = img.convert("RGBA").getchannel("A")
    if alpha.getextrema()[0] == 255:  # the common case, without a full-size array
        return 0.0
    return float(np.mean(np.asarray(alpha) < 255))


def _to_rgb(path: Path, img: Image.Image) -> Image.Image:
    mode = img.mode
    bits = 16 if mode.startswith("I;16") else 32 if mode in ("I", "F") else _file_bit_depth(path, img)
    if bits > 8:
        raise MtcError(
            f"image {path} has {bits} bits per channel (mode {mode}); the model needs 8-bit RGB", hint=_TO_8BIT_RGB
        )
    if mode in ("LA", "La", "PA", "RGBA", "RGBa") or "transparency" in img.info:
        see_through = _see_through_share(img)
        if see_through > 0:
            share = f"{see_through:.1%}" if see_through >= 1e-3 else "under 0.1%"
            raise MtcError(
                f"image {path} has transparency (mode {mode}, {share} of pixels not opaque); "
                "the model needs an opaque RGB image",
                hint="flatten it, e.g. `convert in.png -background white -alpha remove -alpha off out.png`",
            )
        # Alpha 255 everywhere carries nothing: editors and screenshot tools often save opaque
        # pictures as RGBA. The image is the RGB picture it shows.
    if mode in ("L", "1", "LA", "La"):
        raise MtcError(f"image {path} is grayscale (mode {mode}); the model needs RGB", hint=_TO_8BIT_RGB)
    if mode == "RGB":
        return img
    if mode in ("P", "PA") and "transparency" in img.info:
        return img.convert("RGBA").convert("RGB")  # the way Pillow wants a tRNS palette converted
    if mode in ("P", "PA", "CMYK", "YCbCr", "RGBX", "RGBA", "RGBa"):
        return img.convert("RGB")
    raise MtcError(f"image {path} has unsupported pixel mode {mode}", hint=_TO_8BIT_RGB)


def write_image(path: str | os.PathLike, array: np.ndarray, *, png_compression: int = 6,
                replace: bool = True) -> None:
    """Write a ``uint8`` image atomically as PNG or JPEG, chosen by extension.

    Args:
        path: Destination ``.png``, ``.jpg`` or ``.jpeg`` file.
        array: ``HxW`` (grayscale, e.g. an alpha matte), ``HxWx3`` (RGB) or ``HxWx4`` (RGBA).
        png_compression: zlib level 0-9 (Pillow's default 6). Video frames use 1: a 1080p RGB
            frame takes 36 instead of 93 ms and its file is about 13% larger.
        replace: Replace a file at `path` (False: refuse, leaving it alone, where one appeared
            since the caller checked).

    Raises:
        MtcError: Unsupported extension or array layout, RGBA to JPEG, or a disk error.
    """
    path = Path(path)
    ext = path.suffix.lower()
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}.get(ext)
    if fmt is None:
        raise MtcError(f"cannot write image {path}: unsupported extension {ext!r}", hint="use .png or .jpg")
    array = np.asarray(array)
    modes = {2: "L", 3: "RGB", 4: "RGBA"}
    channels = 2 if array.ndim == 2 else (array.shape[2] if array.ndim == 3 else 0)
    if array.dtype != np.uint8 or channels not in modes or array.ndim == 3 and channels == 2:
        raise MtcError(
            f"cannot write image {path}: expected uint8 HxW, HxWx3 or HxWx4, got {array.dtype} {array.shape}",
            hint="convert to uint8 with values 0..255",
        )
    mode = modes[channels]
    if mode == "RGBA" and fmt == "JPEG":
        raise MtcError(f"cannot write {path}: JPEG has no alpha channel", hint="write .png to keep the alpha")
    img = Image.fromarray(np.ascontiguousarray(array), mode=mode)
    options = {"quality": 95} if fmt == "JPEG" else {"compress_level": png_compression}
    with atomic_file(path, "wb", replace=replace) as handle:
        img.save(handle, format=fmt, **options)


def cover(image: Image.Image, size: tuple[int, int],
          resample: Image.Resampling = Image.Resampling.BILINEAR) -> Image.Image:
    """`image` filling `size` (width, height): centre-cropped to that aspect, then resized, so
    nothing is squashed."""
    width, height = size
    crop_w, crop_h = min(image.width, image.height * width / height), min(image.height, image.width * height / width)
    left, top = (image.width - crop_w) / 2, (image.height - crop_h) / 2
    return image.resize(size, resample, box=(left, top, left + crop_w, top + crop_h))


def _natural_key(path: Path) -> list:
    # frame_2.png sorts before frame_10.png, matching how sequences are numbered.
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def list_images(folder: str | os.PathLike) -> list[Path]:
    """List the images in a folder (not recursive), in natural order (``2`` before ``10``).

    Hidden files (leftover ``.part`` temporaries, macOS ``._`` files) are skipped.

    Args:
        folder: Folder to scan.

    Returns:
        Sorted image paths.

    Raises:
        MtcError: The folder is missing or contains no images.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MtcError(f"folder {folder} not found", hint="check the path")
    images = [p for p in folder.iterdir() if p.is_file() and is_image(p) and not p.name.startswith(".")]
    if not images:
        exts = ", ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
        raise MtcError(f"no images in folder {folder}", hint=f"put image files there ({exts})")
    return sorted(images, key=_natural_key)
