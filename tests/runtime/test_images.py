"""mtc.runtime.images: accepted and refused pictures, writing, listing, the pixel limit."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from runtime.media_helpers import leftover_temporaries, smooth_frame

from mtc.errors import MtcError
from mtc.runtime.images import cover, is_image, list_images, read_image, write_image
from mtc.runtime.video_reader import is_video


def _png16_rgb(path: Path, height: int = 8, width: int = 10) -> None:
    """A real 16-bit-per-channel RGB PNG, built by hand (Pillow cannot write one)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    pixels = (np.arange(height * width * 3).reshape(height, width, 3) * 700).astype(">u2")
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)


@pytest.mark.parametrize("size", [(64, 36), (36, 64), (40, 30)])
def test_cover_fills_the_size_cropping_the_centre_never_squashing(size):
    from PIL import Image

    # 4:3 and green, with a red band along the top and a blue one down the left (20 pixels
    # each): cropping to a wider aspect trims the top, to a taller one the left, the same keeps both.
    image = np.zeros((300, 400, 3), np.uint8)
    image[:, :, 1] = 255
    image[:20, :] = (255, 0, 0)
    image[20:, :20] = (0, 0, 255)
    out = np.asarray(cover(Image.fromarray(image), size))
    assert out.shape == (size[1], size[0], 3)
    aspect = size[0] / size[1]
    assert bool(out[0, size[0] // 2, 0] > 150) is (aspect <= 4 / 3)  # the top band kept
    assert bool(out[size[1] // 2, 0, 2] > 150) is (aspect >= 4 / 3)  # the left band kept


def test_read_image_png_round_trip_is_exact(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    write_image(tmp_path / "a.png", rgb)
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
    np.testing.assert_array_equal(out, rgb)
    assert leftover_temporaries(tmp_path) == []


def test_read_image_jpeg_round_trip_is_close(tmp_path):
    rgb = smooth_frame(40, 48)
    write_image(tmp_path / "a.jpg", rgb)
    out = read_image(tmp_path / "a.jpg")
    assert out.shape == rgb.shape
    assert np.abs(out.astype(int) - rgb).mean() < 3


def test_read_image_converts_palette_and_cmyk(tmp_path):
    rgb = smooth_frame(16, 24)
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "p.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    for name in ("p.png", "c.jpg"):
        out = read_image(tmp_path / name)
        assert out.shape == (16, 24, 3) and out.dtype == np.uint8
        assert np.abs(out.astype(int) - rgb).mean() < 12, name


def test_read_image_applies_exif_orientation(tmp_path):
    rgb = smooth_frame(16, 24)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(rgb).save(tmp_path / "r.png", exif=exif)
    out = read_image(tmp_path / "r.png")
    np.testing.assert_array_equal(out, np.rot90(rgb, k=-1))


def _bad_images(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, a word the error must contain)."""
    g = np.arange(16 * 16, dtype=np.uint8).reshape(16, 16)
    made = {
        "L": (Image.fromarray(g), "grayscale"),
        "1": (Image.fromarray(g).convert("1"), "grayscale"),
        # alpha varies: an LA image with alpha 255 everywhere is refused as grayscale instead
        "LA": (Image.fromarray(np.dstack([g, g]), "LA"), "transparency"),
        "RGBA": (Image.fromarray(smooth_frame(16, 16, channels=4)), "transparency"),
        "I;16": (Image.fromarray(g.astype(np.uint16) * 257), "16 bits per channel"),
        "I": (Image.fromarray(g.astype(np.int32)), "32 bits per channel"),
        "F": (Image.fromarray(g.astype(np.float32)), "32 bits per channel"),
    }
    files = {}
    for mode, (img, word) in made.items():
        path = tmp_path / f"bad_{mode.replace(';', '')}.{'tif' if mode in ('I', 'F') else 'png'}"
        img.save(path)
        files[mode] = (path, word)
    palette = Image.fromarray(smooth_frame(16, 16)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    palette.save(tmp_path / "bad_ptrns.png", transparency=0)
    files["P+transparency"] = (tmp_path / "bad_ptrns.png", "transparency")
    _png16_rgb(tmp_path / "bad_rgb16.png")
    files["RGB 16-bit"] = (tmp_path / "bad_rgb16.png", "16 bits per channel")
    (tmp_path / "text.png").write_text("not an image\n")
    files["text"] = (tmp_path / "text.png", "not an image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    files["empty"] = (tmp_path / "empty.jpg", "not an image")
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good)
    (tmp_path / "truncated.png").write_bytes(good.read_bytes()[:2000])
    files["truncated"] = (tmp_path / "truncated.png", "corrupt")
    files["missing"] = (tmp_path / "missing.png", "not found")
    files["folder"] = (tmp_path, "folder")
    return files


def test_read_image_refuses_bad_inputs_with_a_clear_error(tmp_path):
    # Guard the fixture itself: Pillow really does open a 16-bit RGB PNG as plain 'RGB'.
    _png16_rgb(tmp_path / "probe.png")
    assert Image.open(tmp_path / "probe.png").mode == "RGB"

    for name, (path, word) in _bad_images(tmp_path).items():
        with pytest.raises(MtcError) as err:
            read_image(path)
        assert word in err.value.message, (name, err.value.message)
        assert err.value.hint, name
        assert "\n" not in str(err.value), name


def test_read_image_accepts_an_opaque_alpha_channel(tmp_path):
    """Issue #20: an RGBA PNG with alpha 255 everywhere (as editors save opaque pictures) was
    refused as transparent, e.g. as `mtc run --background`."""
    rgb = smooth_frame(16, 20)
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])).save(tmp_path / "rgba.png")
    assert Image.open(tmp_path / "rgba.png").mode == "RGBA"
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgb)
    # a palette PNG whose transparent entry no pixel uses is opaque too
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    unused = next(i for i in range(256) if i not in set(np.asarray(palette).ravel()))
    palette.save(tmp_path / "p.png", transparency=unused)
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), np.asarray(palette.convert("RGB")))
    # opaque but grayscale stays refused, as grayscale
    Image.fromarray(rgb[..., 0]).convert("LA").save(tmp_path / "la.png")
    with pytest.raises(MtcError, match="grayscale"):
        read_image(tmp_path / "la.png")


def test_read_image_refuses_a_single_transparent_pixel(tmp_path):
    rgba = np.dstack([smooth_frame(16, 20), np.full((16, 20), 255, np.uint8)])
    rgba[3, 4, 3] = 254
    Image.fromarray(rgba).save(tmp_path / "almost.png")
    with pytest.raises(MtcError, match=r"has transparency \(mode RGBA, 0.3% of pixels not opaque\)"):
        read_image(tmp_path / "almost.png")


def test_opaque_rgba_picture_is_a_composite_background(tmp_path):
    from mtc.runtime.apply import make_renderer

    rgb = smooth_frame(16, 20)
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])).save(tmp_path / "bg.png")
    renderer = make_renderer("composite", str(tmp_path / "bg.png"))
    np.testing.assert_array_equal(renderer.image, rgb)
    Image.fromarray(smooth_frame(16, 20, channels=4)).save(tmp_path / "cutout.png")  # alpha 0..255
    with pytest.raises(MtcError, match="transparency"):
        make_renderer("composite", str(tmp_path / "cutout.png"))


def test_write_image_modes_and_refusals(tmp_path):
    alpha = np.arange(16 * 20, dtype=np.uint8).reshape(16, 20)
    write_image(tmp_path / "m.png", alpha)
    assert Image.open(tmp_path / "m.png").mode == "L"
    rgba = smooth_frame(16, 20, channels=4)
    write_image(tmp_path / "c.png", rgba)
    np.testing.assert_array_equal(np.array(Image.open(tmp_path / "c.png")), rgba)
    with pytest.raises(MtcError, match="JPEG has no alpha"):
        write_image(tmp_path / "c.jpg", rgba)
    with pytest.raises(MtcError, match="unsupported extension"):
        write_image(tmp_path / "c.gif", alpha)
    with pytest.raises(MtcError, match="expected uint8"):
        write_image(tmp_path / "f.png", alpha.astype(np.float32))
    assert not (tmp_path / "c.jpg").exists() and leftover_temporaries(tmp_path) == []


def test_list_images(tmp_path):
    for name in ("f10.png", "f2.JPG", "f1.jpeg", "x.webp", "y.TIFF", "z.bmp", "notes.txt", ".f3.png.part"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.png").mkdir()
    names = [p.name for p in list_images(tmp_path)]
    assert names == ["f1.jpeg", "f2.JPG", "f10.png", "x.webp", "y.TIFF", "z.bmp"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MtcError, match="no images"):
        list_images(empty)
    with pytest.raises(MtcError, match="not found"):
        list_images(tmp_path / "nope")


def test_is_video_is_image():
    assert is_video("a/b.MP4") and is_video("x.mov") and is_video("x.webm") and not is_video("x.png")
    assert is_image("a/b.JPEG") and is_image("x.tif") and not is_image("x.mkv")


def test_an_image_over_the_pixel_limit_is_refused_from_its_header(tmp_path, monkeypatch):
    from mtc.runtime.frames import pixel_limit

    path = tmp_path / "photo.png"
    Image.fromarray(smooth_frame(11, 10)).save(path)
    with pixel_limit(110):
        assert read_image(path).shape == (11, 10, 3)
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded an image over the pixel limit"))
    with pixel_limit(109), pytest.raises(MtcError, match=r"photo.png is 10x11 = 110 pixels, over the limit of 109"):
        read_image(path)
    monkeypatch.setenv("MTC_MAX_PIXELS", "100")
    with pytest.raises(MtcError, match="over the limit of 100"):
        read_image(path)
    monkeypatch.setenv("MTC_MAX_PIXELS", "lots")
    with pytest.raises(MtcError, match="MTC_MAX_PIXELS 'lots' is not a positive pixel count"):
        read_image(path)


def test_a_tiny_file_claiming_a_huge_image_is_refused_by_the_pixel_limit(tmp_path):
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    # 100,000 x 100,000 RGB would be 30 GB decoded; the file is under 100 bytes.
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    path = tmp_path / "bomb.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) +
                     chunk(b"IEND", b""))
    with pytest.raises(MtcError, match=r"bomb.png is 10,000,000,000 pixels, over the limit of 67,108,864"):
        read_image(path)

