"""Image/video I/O: accepted and refused inputs, codec round trips, audio carry-over, atomicity."""

from __future__ import annotations

import ast
import logging
import os
import struct
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from mtc.errors import MtcError
from mtc.runtime.frames import check_frame
from mtc.runtime.images import cover, is_image, list_images, read_image, write_image
from mtc.runtime.video_reader import FrameConverter, VideoReader, is_video
from mtc.runtime.video_writer import VideoWriter

# --------------------------------------------------------------------------------------------
# helpers


def _smooth(height: int, width: int, index: int = 0, channels: int = 3) -> np.ndarray:
    """Smooth gradients that survive lossy coding nearly unchanged."""
    y, x = np.mgrid[0:height, 0:width]
    frame = np.empty((height, width, channels), np.uint8)
    frame[..., 0] = (x * 200 // width + index * 4) % 256
    frame[..., 1] = y * 200 // height + 20
    frame[..., 2] = 100 + index * 3
    if channels == 4:
        frame[..., 3] = x * 255 // max(width - 1, 1)
    return frame


def _png16_rgb(path: Path, height: int = 8, width: int = 10) -> None:
    """A real 16-bit-per-channel RGB PNG, built by hand (Pillow cannot write one)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    pixels = (np.arange(height * width * 3).reshape(height, width, 3) * 700).astype(">u2")
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)


def _decoded_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def _no_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --------------------------------------------------------------------------------------------
# images


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
    assert _no_leftovers(tmp_path) == []


def test_read_image_jpeg_round_trip_is_close(tmp_path):
    rgb = _smooth(40, 48)
    write_image(tmp_path / "a.jpg", rgb)
    out = read_image(tmp_path / "a.jpg")
    assert out.shape == rgb.shape
    assert np.abs(out.astype(int) - rgb).mean() < 3


def test_read_image_converts_palette_and_cmyk(tmp_path):
    rgb = _smooth(16, 24)
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "p.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    for name in ("p.png", "c.jpg"):
        out = read_image(tmp_path / name)
        assert out.shape == (16, 24, 3) and out.dtype == np.uint8
        assert np.abs(out.astype(int) - rgb).mean() < 12, name


def test_read_image_applies_exif_orientation(tmp_path):
    rgb = _smooth(16, 24)
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
        "RGBA": (Image.fromarray(_smooth(16, 16, channels=4)), "transparency"),
        "I;16": (Image.fromarray(g.astype(np.uint16) * 257), "16 bits per channel"),
        "I": (Image.fromarray(g.astype(np.int32)), "32 bits per channel"),
        "F": (Image.fromarray(g.astype(np.float32)), "32 bits per channel"),
    }
    files = {}
    for mode, (img, word) in made.items():
        path = tmp_path / f"bad_{mode.replace(';', '')}.{'tif' if mode in ('I', 'F') else 'png'}"
        img.save(path)
        files[mode] = (path, word)
    palette = Image.fromarray(_smooth(16, 16)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
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
    rgb = _smooth(16, 20)
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
    rgba = np.dstack([_smooth(16, 20), np.full((16, 20), 255, np.uint8)])
    rgba[3, 4, 3] = 254
    Image.fromarray(rgba).save(tmp_path / "almost.png")
    with pytest.raises(MtcError, match=r"has transparency \(mode RGBA, 0.3% of pixels not opaque\)"):
        read_image(tmp_path / "almost.png")


def test_opaque_rgba_picture_is_a_composite_background(tmp_path):
    from mtc.runtime.apply import make_renderer

    rgb = _smooth(16, 20)
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])).save(tmp_path / "bg.png")
    renderer = make_renderer("composite", str(tmp_path / "bg.png"))
    np.testing.assert_array_equal(renderer.image, rgb)
    Image.fromarray(_smooth(16, 20, channels=4)).save(tmp_path / "cutout.png")  # alpha 0..255
    with pytest.raises(MtcError, match="transparency"):
        make_renderer("composite", str(tmp_path / "cutout.png"))


def test_write_image_modes_and_refusals(tmp_path):
    alpha = np.arange(16 * 20, dtype=np.uint8).reshape(16, 20)
    write_image(tmp_path / "m.png", alpha)
    assert Image.open(tmp_path / "m.png").mode == "L"
    rgba = _smooth(16, 20, channels=4)
    write_image(tmp_path / "c.png", rgba)
    np.testing.assert_array_equal(np.array(Image.open(tmp_path / "c.png")), rgba)
    with pytest.raises(MtcError, match="JPEG has no alpha"):
        write_image(tmp_path / "c.jpg", rgba)
    with pytest.raises(MtcError, match="unsupported extension"):
        write_image(tmp_path / "c.gif", alpha)
    with pytest.raises(MtcError, match="expected uint8"):
        write_image(tmp_path / "f.png", alpha.astype(np.float32))
    assert not (tmp_path / "c.jpg").exists() and _no_leftovers(tmp_path) == []


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


# --------------------------------------------------------------------------------------------
# check_frame


def test_check_frame_accepts_rgb_uint8_views():
    frame = _smooth(32, 48)
    check_frame(frame)
    check_frame(frame[:, ::-1])  # not C-contiguous
    check_frame(np.ascontiguousarray(frame[..., ::-1]))


@pytest.mark.parametrize(
    ("frame", "problem", "fix"),
    [
        (np.zeros((32, 48, 4), np.uint8), "RGBA", "frame[..., :3]"),
        (np.zeros((32, 48), np.uint8), "grayscale", "np.repeat(frame[..., None], 3, axis=2)"),
        (np.zeros((32, 48, 1), np.uint8), "grayscale", "np.repeat"),
        (np.zeros((32, 48, 3), np.uint16), "uint16", "convert to uint8"),
        (np.zeros((32, 48, 3), np.float32), "float32", "convert to uint8"),
        (np.zeros((3, 32, 48), np.uint8), "channels-first", "transpose"),
        (np.zeros((2, 32, 48, 3), np.uint8), "single HxWx3", "one frame at a time"),
        (np.zeros((0, 0, 3), np.uint8), "empty", "(height, width, 3)"),
        (np.zeros((8, 48, 3), np.uint8), "too small", "(height, width, 3)"),
        ([[0, 0, 0]], "numpy array", "np.asarray"),
    ],
)
def test_check_frame_explains_the_layout(frame, problem, fix):
    with pytest.raises(MtcError) as err:
        check_frame(frame)
    assert problem in err.value.message
    assert fix in err.value.hint


# --------------------------------------------------------------------------------------------
# video


def _write(path: Path, frames: list[np.ndarray], *, fps=24.0, kind="rgb", **kw) -> Path:
    height, width = frames[0].shape[:2]
    with VideoWriter(path, width=width, height=height, fps=fps, kind=kind, **kw) as writer:
        for frame in frames:
            writer.write(frame)
        assert writer.frames_written == len(frames)
    return path


@pytest.mark.parametrize(
    ("name", "width", "height"), [("even.mp4", 96, 64), ("odd.mp4", 97, 63), ("a.mkv", 96, 64), ("a.mov", 96, 64)]
)
def test_rgb_video_round_trip(tmp_path, name, width, height):
    frames = [_smooth(height, width, i) for i in range(12)]
    path = _write(tmp_path / name, frames, fps=24.0)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name in ("h264", "mpeg4")
        assert stream.codec_context.pix_fmt == "yuv420p"
    with VideoReader(path) as video:
        assert video.fps == 24.0
        assert not video.has_audio
        # 4:2:0 needs even sizes: odd sides gain one replicated row/column.
        assert (video.width, video.height) == (width + width % 2, height + height % 2)
        out = list(video)
    assert len(out) == 12
    for got, want in zip(out, frames):
        assert got.dtype == np.uint8 and got.shape == (video.height, video.width, 3)
        assert np.abs(got[:height, :width].astype(int) - want).mean() < 6
    if width % 2:
        assert np.abs(out[0][:, -1].astype(int) - out[0][:, -2]).mean() < 4
    assert _no_leftovers(tmp_path) == []


# A phone's variable frame rate: 30 fps for half a second, then 10 fps (its average is 20).
VFR_TIMES = [i / 30 for i in range(15)] + [0.5 + i / 10 for i in range(5)]


@pytest.mark.parametrize("name", ["a.mp4", "a.mkv", "a.mov", "a.webm"])
def test_timed_writer_keeps_variable_frame_times(tmp_path, name):
    frames = [_smooth(64, 96, i) for i in range(len(VFR_TIMES))]
    with VideoWriter(tmp_path / name, width=96, height=64, fps=20, kind="rgb", timed=True) as writer:
        for frame, time in zip(frames, VFR_TIMES):
            writer.write(frame, time=time)
    with VideoReader(tmp_path / name) as video:
        times = [t for t, _ in video.timed_frames()]
    np.testing.assert_allclose(times, VFR_TIMES, atol=1.5e-3)  # WebM stores milliseconds


def test_timed_writer_spaces_unknown_and_repeated_times(tmp_path):
    frames = [_smooth(64, 96, i) for i in range(4)]
    with VideoWriter(tmp_path / "a.mkv", width=96, height=64, fps=25, kind="rgb", timed=True) as writer:
        for frame, time in zip(frames, [0.0, None, 0.04, 0.2]):  # unknown, then repeated: one period on
            writer.write(frame, time=time)
    with VideoReader(tmp_path / "a.mkv") as video:
        times = [t for t, _ in video.timed_frames()]
    assert times == [0.0, 0.04, 0.08, 0.2]
    with VideoWriter(tmp_path / "b.mp4", width=96, height=64, fps=25, kind="rgb") as writer:
        with pytest.raises(ValueError, match="timed=True"):
            writer.write(frames[0], time=0.0)
        writer.write(frames[0])


@pytest.fixture
def fake_hardware(monkeypatch):
    """Stand-ins for the hardware encoders, run by libx264 (nv12 like Quick Sync), and a probe
    result per name; the real probe's cache is bypassed."""
    from mtc.runtime import video_writer

    monkeypatch.setattr(video_writer, "HARDWARE_H264", {
        "nvenc": ("libx264", "yuv420p", {"preset": "ultrafast"}),
        "qsv": ("libx264", "nv12", {"preset": "ultrafast", "crf": "20"}),
    })
    problems = {"nvenc": "h264_nvenc cannot start here (test)", "qsv": None}
    monkeypatch.setattr(video_writer, "hardware_encoder_problem", lambda name: problems[name])
    return problems


def test_auto_encoder_takes_the_first_hardware_encoder_that_starts(fake_hardware, tmp_path):
    from mtc.runtime.video_writer import _video_codec

    assert _video_codec(tmp_path / "a.mp4", "rgb", encoder="auto")[:2] == ("libx264", "nv12")  # the qsv stand-in
    fake_hardware["qsv"] = "h264_qsv cannot start here (test)"
    assert _video_codec(tmp_path / "a.mp4", "rgb", encoder="auto")[:2] == ("libx264", "yuv420p")  # x264 itself
    assert _video_codec(tmp_path / "a.mp4", "rgb", encoder="auto")[2]["crf"] == "18"
    with pytest.raises(MtcError, match=r"h264_nvenc cannot start here .*--encoder x264"):
        _video_codec(tmp_path / "a.mp4", "rgb", encoder="nvenc")
    assert _video_codec(tmp_path / "a.webm", "rgb", encoder="auto")[0] == "libvpx-vp9"
    with pytest.raises(MtcError, match="WebM holds VP9"):
        _video_codec(tmp_path / "a.webm", "rgb", encoder="qsv")


def test_an_nv12_encoder_pads_odd_frames_like_yuv420p(fake_hardware, tmp_path):
    frames = [_smooth(63, 97, i) for i in range(3)]
    with VideoWriter(tmp_path / "a.mp4", width=97, height=63, fps=24, kind="rgb", encoder="qsv") as writer:
        assert writer._pix_fmt == "nv12"
        for frame in frames:
            writer.write(frame)
    with VideoReader(tmp_path / "a.mp4") as video:
        assert (video.width, video.height) == (98, 64)
        assert np.abs(next(iter(video))[:63, :97].astype(int) - frames[0]).mean() < 6


def test_hardware_encoders_take_the_pixel_format_we_give_them():
    from mtc.runtime.video_writer import HARDWARE_H264

    for codec, pix_fmt, _ in HARDWARE_H264.values():
        if codec not in av.codecs_available:
            continue  # an FFmpeg build without it: the probe reports that
        assert pix_fmt in [f.name for f in av.Codec(codec, "w").video_formats], codec


def test_the_encoder_probe_opens_and_runs_the_encoder(monkeypatch):
    from mtc.runtime import video_writer

    monkeypatch.setattr(video_writer, "HARDWARE_H264", {
        "works": ("libx264", "yuv420p", {"preset": "ultrafast"}),
        "refused": ("libx264", "yuv420p", {"preset": "no-such-preset"}),
        "absent": ("h264_no_such_encoder", "yuv420p", {}),
    })
    probe = video_writer.hardware_encoder_problem.__wrapped__  # uncached
    assert probe("works") is None
    assert "libx264 cannot start here" in probe("refused")
    assert probe("absent") == "this FFmpeg build has no h264_no_such_encoder"


def _visible(plane, sample_bytes: int) -> np.ndarray:
    """A frame plane's pixels, without the padding at the end of each row."""
    rows = np.frombuffer(plane, np.uint8)[:plane.height * plane.line_size].reshape(plane.height, plane.line_size)
    return rows[:, :plane.width * sample_bytes]


@pytest.mark.parametrize(("name", "width", "height"), [("a.mp4", 96, 64), ("odd.mp4", 97, 63), ("a.mov", 96, 64)])
def test_planar_frames_reach_the_encoder_as_interleaved_ones_do(tmp_path, name, width, height):
    from mtc.runtime.video_writer import _video_frame

    frames = [_smooth(height, width, i) for i in range(3)]
    planar = [np.ascontiguousarray(f.transpose(2, 0, 1)).transpose(1, 2, 0) for f in frames]
    # Planar memory goes in as FFmpeg's planar G,B,R (no interleaving copy), HWC as rgb24.
    assert _video_frame(planar[0]).format.name == "gbrp"
    assert _video_frame(frames[0]).format.name == "rgb24"
    kind = "rgba" if name.endswith(".mov") else "rgb"
    with VideoWriter(tmp_path / name, width=width, height=height, fps=24.0, kind=kind) as writer:
        for packed, planes in zip(frames, planar):
            want, got = writer._encoder_frame(packed), writer._encoder_frame(planes)
            assert got.format.name == want.format.name == writer._pix_fmt
            sample_bytes = 2 if got.format.components[0].bits > 8 else 1
            for plane_got, plane_want in zip(got.planes, want.planes):
                np.testing.assert_array_equal(_visible(plane_got, sample_bytes), _visible(plane_want, sample_bytes))
            writer.write(planes)
    with VideoReader(tmp_path / name) as video:
        decoded = list(video)
    assert len(decoded) == 3
    assert np.abs(decoded[0][:height, :width].astype(int) - frames[0]).mean() < 6


def _stored_with_rotation(path: Path, stored: np.ndarray, degrees: int, mirror: bool) -> Path:
    """An H.264 file of `stored` frames tagged, as phones tag portrait video, with a display
    rotation (FFmpeg's convention: degrees counter-clockwise), then a left-right mirror."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.height, stream.width = stored.shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.set_display_rotation(degrees, hflip=mirror)
        for _ in range(3):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")))
        container.mux(stream.encode())
    return path


# Where the stored frame's top-left corner is displayed, as FFmpeg's and OpenCV's autorotate
# turn frames: -90 (a phone's portrait video) is a clockwise quarter turn. The four corners
# times the two frame shapes tell all eight orientations apart.
@pytest.mark.parametrize(("degrees", "mirror", "corner"), [
    (-90, False, "top-right"), (90, False, "bottom-left"), (180, False, "bottom-right"), (0, False, "top-left"),
    (-90, True, "top-left"), (90, True, "bottom-right"), (180, True, "bottom-left"), (0, True, "top-right"),
])
def test_reader_displays_frames_as_the_display_matrix_says(tmp_path, degrees, mirror, corner):
    stored = np.zeros((64, 96, 3), np.uint8)  # landscape as stored, a white block top-left
    stored[:16, :16] = 255
    path = _stored_with_rotation(tmp_path / "phone.mp4", stored, degrees, mirror)
    with VideoReader(path) as video:
        size = (video.width, video.height)
        frames = list(video)
    assert size == ((96, 64) if degrees in (0, 180) else (64, 96))
    assert len(frames) == 3 and all(f.shape == (size[1], size[0], 3) for f in frames)
    rows = slice(0, 16) if corner.startswith("top") else slice(-16, None)
    cols = slice(0, 16) if corner.endswith("left") else slice(-16, None)
    assert frames[0][rows, cols].mean() > 200 and frames[0].mean() < 60
    assert frames[0].transpose(2, 0, 1).flags.c_contiguous  # planar, as the model's input conversion reads fastest


@pytest.mark.parametrize(("width", "height", "planar"), [(96, 64, True), (1920, 64, True), (98, 64, False),
                                                      (104, 63, False), (97, 63, False)])
def test_reader_frames_equal_ffmpegs_rgb24_and_are_planar_where_exact(tmp_path, width, height, planar):
    path = _write(tmp_path / "a.mkv", [_smooth(height, width, i) for i in range(3)], fps=24.0)
    with av.open(str(path)) as container:
        packed = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    with VideoReader(path) as video:
        frames = list(video)
    assert len(frames) == len(packed) == 3
    for got, want in zip(frames, packed):
        assert got.transpose(2, 0, 1).flags.c_contiguous == planar
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("pixel_format", ["yuv420p", "yuvj420p", "yuv422p", "yuv444p"])
def test_planar_decoding_is_exact_at_every_size_it_is_used_for(pixel_format):
    from mtc.runtime.video_reader import _planar_conversion_is_exact, _planar_rgb

    rng = np.random.default_rng(0)
    used = 0
    for width in [*range(16, 161, 8), 1280, 1920]:
        for height in (1, 2, 33, 34, 720):
            frame = av.VideoFrame(width, height, pixel_format)
            if not _planar_conversion_is_exact(frame):
                continue
            used += 1
            for plane in frame.planes:
                plane.update(rng.integers(16, 236, plane.buffer_size, dtype=np.uint8).tobytes())
            np.testing.assert_array_equal(_planar_rgb(frame.reformat(format="gbrp")), frame.to_ndarray(format="rgb24"),
                                          err_msg=f"{pixel_format} {width}x{height}")
    assert used >= 36  # every format takes the planar path for common sizes (1920x720 among them)
    # Where FFmpeg's planar output differs (see _planar_conversion_is_exact), packed RGB is used.
    subsampled = pixel_format != "yuv444p"
    assert _planar_conversion_is_exact(av.VideoFrame(96, 33, pixel_format)) != subsampled
    assert _planar_conversion_is_exact(av.VideoFrame(104, 34, pixel_format)) != subsampled
    assert not _planar_conversion_is_exact(av.VideoFrame(96, 34, "yuv420p10le"))


def test_mpeg4_fallback_without_libx264(tmp_path, monkeypatch):
    monkeypatch.setattr(av, "codecs_available", av.codecs_available - {"libx264"})
    frames = [_smooth(64, 96, i) for i in range(12)]
    path = _write(tmp_path / "a.mp4", frames)
    with VideoReader(path) as video:
        out = list(video)
    assert len(out) == 12
    assert np.abs(out[5].astype(int) - frames[5]).mean() < 6
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "mpeg4"


def test_ntsc_frame_rate_is_kept_exactly(tmp_path):
    path = _write(tmp_path / "ntsc.mp4", [_smooth(32, 32, i) for i in range(6)], fps=30000 / 1001)
    with av.open(str(path)) as container:
        assert container.streams.video[0].average_rate == Fraction(30000, 1001)
    with VideoReader(path) as video:
        assert video.frame_count == 6
        assert abs(video.fps - 29.97003) < 1e-4


def test_rgba_mov_is_prores_4444_with_alpha(tmp_path):
    frames = [_smooth(63, 97, i, channels=4) for i in range(6)]
    path = _write(tmp_path / "a.mov", frames, kind="rgba")
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "prores"
        # The 4444 profile carries alpha; FFmpeg's decoder reports it as 12-bit.
        assert stream.codec_context.pix_fmt.startswith("yuva444p")
        decoded = [f.to_ndarray(format="rgba") for f in container.decode(stream)]
    assert len(decoded) == 6
    assert decoded[0].shape == (63, 97, 4)  # 4:4:4 needs no padding
    assert np.abs(decoded[0][..., 3].astype(int) - frames[0][..., 3]).max() <= 2
    assert np.abs(decoded[0][..., :3].astype(int) - frames[0][..., :3]).mean() < 2


def test_rgba_webm_is_vp9_with_alpha(tmp_path):
    frames = [_smooth(64, 96, i, channels=4) for i in range(6)]
    path = _write(tmp_path / "a.webm", frames, kind="rgba")
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "vp9"
        # WebM stores VP9 alpha as a second bitstream in BlockAdditional side data, flagged
        # by alpha_mode; FFmpeg's native vp9 decoder ignores it, libvpx-vp9 decodes it.
        assert stream.metadata.get("alpha_mode") == "1"
        decoder = av.CodecContext.create("libvpx-vp9", "r")
        decoded = [f for packet in container.demux(stream) for f in decoder.decode(packet)]
    assert len(decoded) == 6
    assert decoded[0].format.name == "yuva420p"
    alpha = decoded[0].to_ndarray(format="rgba")[..., 3]
    assert np.abs(alpha.astype(int) - frames[0][..., 3]).mean() < 4
    with VideoReader(path) as video:  # the reader itself returns plain RGB
        assert sum(1 for _ in video) == 6


def test_writer_refuses_bad_kind_extension_and_frames(tmp_path):
    with pytest.raises(MtcError, match=r"\.mov .*\.webm"):
        VideoWriter(tmp_path / "a.mp4", width=32, height=32, fps=24, kind="rgba")
    with pytest.raises(MtcError, match="unsupported extension"):
        VideoWriter(tmp_path / "a.avi", width=32, height=32, fps=24, kind="rgb")
    with pytest.raises(MtcError, match="frame rate"):
        VideoWriter(tmp_path / "a.mp4", width=32, height=32, fps=0, kind="rgb")
    with pytest.raises(MtcError, match="expected uint8 32x32x3"):
        with VideoWriter(tmp_path / "a.mp4", width=32, height=32, fps=24, kind="rgb") as writer:
            writer.write(np.zeros((32, 32, 4), np.uint8))
    with pytest.raises(MtcError, match="no frames"):
        with VideoWriter(tmp_path / "a.mp4", width=32, height=32, fps=24, kind="rgb"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_failing_mid_write_leaves_nothing(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(tmp_path / "out.mp4", width=32, height=32, fps=24, kind="rgb") as writer:
            for i in range(5):
                writer.write(_smooth(32, 32, i))
            assert len(_no_leftovers(tmp_path)) == 1  # the temp sibling exists while writing
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def _source_with_audio(path: Path, *, seconds=1.0, fps=24, rate=44100) -> Path:
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("aac", rate=rate)
        audio.layout = "mono"
        for i in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(_smooth(48, 64, i), format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        t = np.arange(int(seconds * rate)) / rate
        tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for start in range(0, len(tone), 1024):
            frame = av.AudioFrame.from_ndarray(tone[None, start : start + 1024], format="flt", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            container.mux(audio.encode(frame))
        container.mux(video.encode(None))
        container.mux(audio.encode(None))
    return path


def _audio_seconds(path: Path) -> tuple[str, float]:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return stream.codec_context.name, samples / stream.codec_context.sample_rate


@pytest.mark.parametrize(("name", "codec"), [("out.mp4", "aac"), ("out.webm", "opus")])
def test_audio_is_carried_and_trimmed_to_the_video(tmp_path, name, codec):
    source = _source_with_audio(tmp_path / "src.mp4", seconds=1.0)
    with VideoReader(source) as video:
        assert video.has_audio
    # mp4 takes the AAC packets as they are; webm needs Opus, so that path re-encodes.
    out = _write(tmp_path / name, [_smooth(48, 64, i) for i in range(12)], fps=24, audio_from=source)
    got_codec, seconds = _audio_seconds(out)
    assert got_codec == codec
    assert abs(seconds - 0.5) < 0.05  # 12 frames at 24 fps
    with VideoReader(out) as video:
        assert video.has_audio and sum(1 for _ in video) == 12


def test_audio_from_a_file_without_audio_is_ignored(tmp_path, caplog):
    silent = _write(tmp_path / "silent.mp4", [_smooth(32, 32, i) for i in range(3)])
    out = _write(tmp_path / "out.mp4", [_smooth(32, 32, i) for i in range(3)], audio_from=silent)
    with VideoReader(out) as video:
        assert not video.has_audio
    with caplog.at_level(logging.WARNING, logger="mtc"):
        (tmp_path / "junk.mp4").write_bytes(os.urandom(1000))
        out = _write(tmp_path / "out2.mp4", [_smooth(32, 32, i) for i in range(3)], audio_from=tmp_path / "junk.mp4")
    assert "without audio" in caplog.text
    assert _decoded_frames(out) == 3


def _zero_frame_videos(tmp_path: Path) -> list[Path]:
    """Containers that declare a video stream but hold no decodable frame."""
    empty_mp4 = tmp_path / "noframes.mp4"
    with av.open(str(empty_mp4), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()
    garbage_mkv = tmp_path / "garbage.mkv"
    with av.open(str(garbage_mkv), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(4):
            packet = av.Packet(np.random.default_rng(i).bytes(300))
            packet.stream, packet.pts, packet.dts, packet.time_base = stream, i, i, Fraction(1, 24)
            container.mux(packet)
    return [empty_mp4, garbage_mkv]


def test_video_reader_refuses_non_videos(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "random.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    (tmp_path / "notes.mp4").write_text("hello\n" * 50)
    (tmp_path / "notes.txt").write_text("hello\n" * 50)
    bad = ["empty.mp4", "random.mp4", "notes.mp4", "notes.txt", "missing.mp4"]
    for name in bad:
        with pytest.raises(MtcError) as err:
            VideoReader(tmp_path / name)
        assert err.value.hint and "\n" not in str(err.value), name
    for path in _zero_frame_videos(tmp_path):
        with pytest.raises(MtcError, match="no (decodable video frames|video stream)"):
            with VideoReader(path) as video:
                list(video)
    with pytest.raises(MtcError, match="no decodable video frames"):
        with VideoReader(tmp_path / "garbage.mkv") as video:
            list(video)


def _noise_video(path: Path, count: int = 24) -> Path:
    rng = np.random.default_rng(0)
    # Noise defeats compression, so frames spread evenly through the file.
    return _write(path, [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(count)])


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_truncated_video_yields_what_it_can_and_names_the_lost_frames(tmp_path, caplog, ext):
    data = _noise_video(tmp_path / f"full.{ext}").read_bytes()
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="mtc"), VideoReader(cut) as video:
        frames = list(video)
        lost = video.lost_frames
    assert 3 <= len(frames) < 24
    # mp4 stores a frame count, Matroska a duration: either way the missing tail is counted.
    assert lost == list(range(len(frames), 24))
    assert "lost to damaged or missing data" in caplog.text


def _packets(path: Path) -> list[tuple[int, int]]:
    """(byte offset, size) of each video packet in the file."""
    with av.open(str(path)) as container:
        return [(p.pos, p.size) for p in container.demux(video=0) if p.size]


def _damage(path: Path, start: int, stop: int, target: Path) -> Path:
    data = bytearray(path.read_bytes())
    data[start:stop] = np.random.default_rng(1).integers(0, 256, stop - start, dtype=np.uint8).tobytes()
    target.write_bytes(bytes(data))
    return target


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_a_damaged_packet_costs_its_own_frame_and_decoding_goes_on(tmp_path, caplog, ext):
    full = _noise_video(tmp_path / f"full.{ext}")
    with VideoReader(full) as video:
        reference = list(video.timed_frames())
    position, size = _packets(full)[12]
    bad = _damage(full, position + 4, position + size, tmp_path / f"bad.{ext}")  # the payload, not the framing
    with caplog.at_level(logging.WARNING, logger="mtc"), VideoReader(bad) as video:
        kept = list(video.timed_frames())
        lost = video.lost_frames
    assert lost == [12]
    assert len(kept) == 23  # before the fix decoding stopped here, after 10 or 12 frames
    times = [t for t, _ in kept]
    assert times == sorted(times) and times == [t for i, (t, _) in enumerate(reference) if i != 12]
    for (_, frame), (_, expected) in zip(kept[:12], reference[:12]):  # untouched by the damage
        np.testing.assert_array_equal(frame, expected)
    assert "frame 13" in caplog.text  # named 1-based, as frame files are


def test_frames_an_edit_list_cuts_away_are_not_lost_frames(tmp_path, caplog):
    # A video trimmed without re-encoding starts mid-GOP: the frames before the cut are decoded
    # for reference and dropped, by design. Shifting the first 5 packets before time 0 makes the
    # mp4 muxer write such an edit list.
    full = _noise_video(tmp_path / "full.mp4")
    trimmed = tmp_path / "trimmed.mp4"
    with av.open(str(full)) as source, av.open(str(trimmed), "w") as target:
        stream = source.streams.video[0]
        out = target.add_stream_from_template(stream)
        shift = 5 * round(1 / (24 * stream.time_base))
        for packet in source.demux(stream):
            if packet.dts is not None:
                packet.pts, packet.dts, packet.stream = packet.pts - shift, packet.dts - shift, out
                target.mux(packet)
    with caplog.at_level(logging.WARNING, logger="mtc"), VideoReader(trimmed) as video:
        assert video.frame_count == 24
        frames = list(video)
        lost = video.lost_frames
    assert len(frames) == 19 and lost == [] and "lost" not in caplog.text


def test_a_container_damaged_past_resync_reports_the_frames_it_never_reached(tmp_path):
    full = _noise_video(tmp_path / "full.mkv")
    position, _ = _packets(full)[12]
    bad = _damage(full, position - 16, position + 16, tmp_path / "bad.mkv")  # the block header itself
    with VideoReader(bad) as video:
        kept = list(video)
        lost = video.lost_frames
    assert len(kept) == 12 and lost == list(range(12, 24))  # Matroska's duration says 24 frames


def _h264_segment(path: Path, frames: list[np.ndarray], first_pts: int) -> None:
    with av.open(str(path), "w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for index, frame in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts = first_pts + index
            container.mux(stream.encode(picture))
        container.mux(stream.encode(None))


def test_a_resolution_change_mid_stream_keeps_every_frame_at_the_first_size(tmp_path, caplog):
    first, second = tmp_path / "a.ts", tmp_path / "b.ts"
    _h264_segment(first, [_smooth(48, 64, i) for i in range(6)], 0)
    _h264_segment(second, [_smooth(96, 128, i) for i in range(6, 12)], 6)
    joined = tmp_path / "joined.ts"  # MPEG-TS segments concatenate into one stream, as broadcasts switch
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    with caplog.at_level(logging.WARNING, logger="mtc"), VideoReader(joined) as video:
        assert (video.width, video.height) == (64, 48)
        frames = list(video)
        lost = video.lost_frames
    assert len(frames) == 12 and lost == []
    assert all(frame.shape == (48, 64, 3) for frame in frames)
    # The scaled frames show the second segment's picture, not a stretched copy of the first.
    expected = np.asarray(Image.fromarray(_smooth(96, 128, 9)).resize((64, 48), Image.BILINEAR), np.int16)
    assert np.abs(frames[9].astype(np.int16) - expected).mean() < 6
    assert "changes to 128x96 part-way" in caplog.text


def test_a_video_over_the_pixel_limit_is_refused_before_any_frame_is_decoded(tmp_path, monkeypatch):
    from mtc.runtime.frames import pixel_limit

    path = _write(tmp_path / "clip.mp4", [_smooth(48, 64, i) for i in range(3)])

    def decoding(self):
        raise AssertionError("decoded a frame of a video over the pixel limit")
        yield

    monkeypatch.setattr(VideoReader, "_decode", decoding)
    with pixel_limit(64 * 48 - 1), pytest.raises(MtcError, match=r"video .*clip.mp4 is 64x48 = 3,072 pixels, over "
                                                                  r"the limit of 3,071") as info:
        VideoReader(path)
    assert "--max-pixels" in info.value.hint and "MTC_MAX_PIXELS" in info.value.hint


def test_an_image_over_the_pixel_limit_is_refused_from_its_header(tmp_path, monkeypatch):
    from mtc.runtime.frames import pixel_limit

    path = tmp_path / "photo.png"
    Image.fromarray(_smooth(11, 10)).save(path)
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


def test_the_writers_keep_a_file_that_appeared_meanwhile_unless_told_to_replace(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"someone else's")
    with pytest.raises(MtcError, match="appeared while this run was writing it"):
        write_image(target, _smooth(16, 16), replace=False)
    assert target.read_bytes() == b"someone else's" and _no_leftovers(tmp_path) == []
    video = tmp_path / "out.mp4"
    with pytest.raises(MtcError, match="appeared while this run was writing it"):
        with VideoWriter(video, width=64, height=48, fps=24, kind="rgb", replace=False) as writer:
            writer.write(_smooth(48, 64))
            video.write_bytes(b"someone else's")
    assert video.read_bytes() == b"someone else's" and _no_leftovers(tmp_path) == []


def test_x264_preset_reaches_the_encoder_and_a_bad_one_is_refused(tmp_path):
    import click

    from mtc.cli.run import run
    from mtc.runtime.video_writer import X264_PRESETS

    frames = [_smooth(64, 96, i) for i in range(8)]
    sizes = {}
    for preset in ("ultrafast", "veryfast"):
        path = _write(tmp_path / f"{preset}.mp4", frames, x264_preset=preset)
        with av.open(str(path)) as container:
            sizes[preset] = path.stat().st_size
            assert container.streams.video[0].codec_context.name == "h264"
    assert sizes["ultrafast"] > sizes["veryfast"]  # the faster preset spends bits instead of CPU
    with pytest.raises(MtcError, match="unknown x264 preset"):
        VideoWriter(tmp_path / "bad.mp4", width=96, height=64, fps=24, kind="rgb", x264_preset="warp")
    assert not list(tmp_path.glob("bad*"))
    option = next(p for p in run.params if p.name == "x264_preset")
    assert isinstance(option.type, click.Choice) and tuple(option.type.choices) == X264_PRESETS


def test_a_full_disk_while_writing_media_says_so_and_leaves_nothing(tmp_path, monkeypatch):
    import errno

    from mtc.runtime import video_writer

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    with pytest.raises(MtcError, match=r"disk full while writing .*matte.png") as info:
        write_image(tmp_path / "matte.png", _smooth(16, 16))
    assert "free space" in info.value.hint
    monkeypatch.setattr(video_writer, "finish_file", full)  # the encoder's last bytes, or the rename
    with pytest.raises(MtcError, match=r"disk full while writing .*clip.mp4") as info:
        with VideoWriter(tmp_path / "clip.mp4", width=64, height=48, fps=24, kind="rgb") as writer:
            writer.write(_smooth(48, 64))
    assert "free space" in info.value.hint and "re-export" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# pixel format conversion


def test_the_frame_converter_asks_swscale_for_one_thread_and_converts_exactly():
    asked = []

    class Recording:
        def reformat(self, frame, **options):
            asked.append(options)
            return frame.reformat(**options)

    converter = FrameConverter()
    converter._swscale = Recording()
    picture = _smooth(36, 50)
    planar = converter(av.VideoFrame.from_ndarray(picture, format="rgb24"), format="gbrp")
    assert asked == [{"threads": 1, "format": "gbrp"}]
    assert np.array_equal(FrameConverter()(planar, format="rgb24").to_ndarray(), picture)


def test_every_conversion_in_mtc_goes_through_the_frame_converter():
    """A `reformat` or a converting `to_ndarray` elsewhere would run swscale on its threads."""
    package = Path(__file__).resolve().parents[2] / "mtc"
    elsewhere = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        allowed = {id(node) for cls in ast.walk(tree) if isinstance(cls, ast.ClassDef) and cls.name == "FrameConverter"
                   for node in ast.walk(cls)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and id(node) not in allowed
                    and (node.func.attr == "reformat" or (node.func.attr == "to_ndarray" and (node.args or node.keywords)))):
                elsewhere.append(f"{path.relative_to(package.parent)}:{node.lineno}")
    assert elsewhere == []

