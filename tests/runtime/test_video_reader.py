"""mtc.runtime.video_reader: display rotation, exact RGB, damaged and refused videos, the pixel limit, FrameConverter."""

from __future__ import annotations

import ast
import logging
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from runtime.media_helpers import smooth_frame, write_video

from mtc.errors import MtcError
from mtc.runtime.video_reader import FrameConverter, VideoReader


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
    path = write_video(tmp_path / "a.mkv", [smooth_frame(height, width, i) for i in range(3)], fps=24.0)
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
    return write_video(path, [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(count)])


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
    _h264_segment(first, [smooth_frame(48, 64, i) for i in range(6)], 0)
    _h264_segment(second, [smooth_frame(96, 128, i) for i in range(6, 12)], 6)
    joined = tmp_path / "joined.ts"  # MPEG-TS segments concatenate into one stream, as broadcasts switch
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    with caplog.at_level(logging.WARNING, logger="mtc"), VideoReader(joined) as video:
        assert (video.width, video.height) == (64, 48)
        frames = list(video)
        lost = video.lost_frames
    assert len(frames) == 12 and lost == []
    assert all(frame.shape == (48, 64, 3) for frame in frames)
    # The scaled frames show the second segment's picture, not a stretched copy of the first.
    expected = np.asarray(Image.fromarray(smooth_frame(96, 128, 9)).resize((64, 48), Image.BILINEAR), np.int16)
    assert np.abs(frames[9].astype(np.int16) - expected).mean() < 6
    assert "changes to 128x96 part-way" in caplog.text


def test_a_video_over_the_pixel_limit_is_refused_before_any_frame_is_decoded(tmp_path, monkeypatch):
    from mtc.runtime.frames import pixel_limit

    path = write_video(tmp_path / "clip.mp4", [smooth_frame(48, 64, i) for i in range(3)])

    def decoding(self):
        raise AssertionError("decoded a frame of a video over the pixel limit")
        yield

    monkeypatch.setattr(VideoReader, "_decode", decoding)
    with pixel_limit(64 * 48 - 1), pytest.raises(MtcError, match=r"video .*clip.mp4 is 64x48 = 3,072 pixels, over "
                                                                  r"the limit of 3,071") as info:
        VideoReader(path)
    assert "--max-pixels" in info.value.hint and "MTC_MAX_PIXELS" in info.value.hint


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
    picture = smooth_frame(36, 50)
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

