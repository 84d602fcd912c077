"""mtc.runtime.video_writer: codecs and round trips, frame times, encoders, alpha, audio carry-over, atomicity."""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from runtime.media_helpers import leftover_temporaries, smooth_frame, write_video

from mtc.errors import MtcError
from mtc.runtime.images import write_image
from mtc.runtime.video_reader import VideoReader
from mtc.runtime.video_writer import VideoWriter


def _decoded_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.mark.parametrize(
    ("name", "width", "height"), [("even.mp4", 96, 64), ("odd.mp4", 97, 63), ("a.mkv", 96, 64), ("a.mov", 96, 64)]
)
def test_rgb_video_round_trip(tmp_path, name, width, height):
    frames = [smooth_frame(height, width, i) for i in range(12)]
    path = write_video(tmp_path / name, frames, fps=24.0)
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
    assert leftover_temporaries(tmp_path) == []


# A phone's variable frame rate: 30 fps for half a second, then 10 fps (its average is 20).
VFR_TIMES = [i / 30 for i in range(15)] + [0.5 + i / 10 for i in range(5)]


@pytest.mark.parametrize("name", ["a.mp4", "a.mkv", "a.mov", "a.webm"])
def test_timed_writer_keeps_variable_frame_times(tmp_path, name):
    frames = [smooth_frame(64, 96, i) for i in range(len(VFR_TIMES))]
    with VideoWriter(tmp_path / name, width=96, height=64, fps=20, kind="rgb", timed=True) as writer:
        for frame, time in zip(frames, VFR_TIMES):
            writer.write(frame, time=time)
    with VideoReader(tmp_path / name) as video:
        times = [t for t, _ in video.timed_frames()]
    np.testing.assert_allclose(times, VFR_TIMES, atol=1.5e-3)  # WebM stores milliseconds


def test_timed_writer_spaces_unknown_and_repeated_times(tmp_path):
    frames = [smooth_frame(64, 96, i) for i in range(4)]
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
    frames = [smooth_frame(63, 97, i) for i in range(3)]
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

    frames = [smooth_frame(height, width, i) for i in range(3)]
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


def test_mpeg4_fallback_without_libx264(tmp_path, monkeypatch):
    monkeypatch.setattr(av, "codecs_available", av.codecs_available - {"libx264"})
    frames = [smooth_frame(64, 96, i) for i in range(12)]
    path = write_video(tmp_path / "a.mp4", frames)
    with VideoReader(path) as video:
        out = list(video)
    assert len(out) == 12
    assert np.abs(out[5].astype(int) - frames[5]).mean() < 6
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "mpeg4"


def test_ntsc_frame_rate_is_kept_exactly(tmp_path):
    path = write_video(tmp_path / "ntsc.mp4", [smooth_frame(32, 32, i) for i in range(6)], fps=30000 / 1001)
    with av.open(str(path)) as container:
        assert container.streams.video[0].average_rate == Fraction(30000, 1001)
    with VideoReader(path) as video:
        assert video.frame_count == 6
        assert abs(video.fps - 29.97003) < 1e-4


def test_rgba_mov_is_prores_4444_with_alpha(tmp_path):
    frames = [smooth_frame(63, 97, i, channels=4) for i in range(6)]
    path = write_video(tmp_path / "a.mov", frames, kind="rgba")
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
    frames = [smooth_frame(64, 96, i, channels=4) for i in range(6)]
    path = write_video(tmp_path / "a.webm", frames, kind="rgba")
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
                writer.write(smooth_frame(32, 32, i))
            assert len(leftover_temporaries(tmp_path)) == 1  # the temp sibling exists while writing
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def _source_with_audio(path: Path, *, seconds=1.0, fps=24, rate=44100) -> Path:
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("aac", rate=rate)
        audio.layout = "mono"
        for i in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(smooth_frame(48, 64, i), format="rgb24")
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
    out = write_video(tmp_path / name, [smooth_frame(48, 64, i) for i in range(12)], fps=24, audio_from=source)
    got_codec, seconds = _audio_seconds(out)
    assert got_codec == codec
    assert abs(seconds - 0.5) < 0.05  # 12 frames at 24 fps
    with VideoReader(out) as video:
        assert video.has_audio and sum(1 for _ in video) == 12


def test_audio_from_a_file_without_audio_is_ignored(tmp_path, caplog):
    silent = write_video(tmp_path / "silent.mp4", [smooth_frame(32, 32, i) for i in range(3)])
    out = write_video(tmp_path / "out.mp4", [smooth_frame(32, 32, i) for i in range(3)], audio_from=silent)
    with VideoReader(out) as video:
        assert not video.has_audio
    with caplog.at_level(logging.WARNING, logger="mtc"):
        (tmp_path / "junk.mp4").write_bytes(os.urandom(1000))
        out = write_video(tmp_path / "out2.mp4", [smooth_frame(32, 32, i) for i in range(3)], audio_from=tmp_path / "junk.mp4")
    assert "without audio" in caplog.text
    assert _decoded_frames(out) == 3


def test_the_writers_keep_a_file_that_appeared_meanwhile_unless_told_to_replace(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"someone else's")
    with pytest.raises(MtcError, match="appeared while this run was writing it"):
        write_image(target, smooth_frame(16, 16), replace=False)
    assert target.read_bytes() == b"someone else's" and leftover_temporaries(tmp_path) == []
    video = tmp_path / "out.mp4"
    with pytest.raises(MtcError, match="appeared while this run was writing it"):
        with VideoWriter(video, width=64, height=48, fps=24, kind="rgb", replace=False) as writer:
            writer.write(smooth_frame(48, 64))
            video.write_bytes(b"someone else's")
    assert video.read_bytes() == b"someone else's" and leftover_temporaries(tmp_path) == []


def test_x264_preset_reaches_the_encoder_and_a_bad_one_is_refused(tmp_path):
    import click

    from mtc.cli.run import run
    from mtc.runtime.video_writer import X264_PRESETS

    frames = [smooth_frame(64, 96, i) for i in range(8)]
    sizes = {}
    for preset in ("ultrafast", "veryfast"):
        path = write_video(tmp_path / f"{preset}.mp4", frames, x264_preset=preset)
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
        write_image(tmp_path / "matte.png", smooth_frame(16, 16))
    assert "free space" in info.value.hint
    monkeypatch.setattr(video_writer, "finish_file", full)  # the encoder's last bytes, or the rename
    with pytest.raises(MtcError, match=r"disk full while writing .*clip.mp4") as info:
        with VideoWriter(tmp_path / "clip.mp4", width=64, height=48, fps=24, kind="rgb") as writer:
            writer.write(smooth_frame(48, 64))
    assert "free space" in info.value.hint and "re-export" not in str(info.value)
    assert list(tmp_path.iterdir()) == []

