"""The `mtc` command end to end, in subprocesses: exit codes, one-line errors, real outputs."""

import os
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image


def mtc(*args, env=None, check=False, max_file_bytes=None):
    """Run `mtc ARGS`; `max_file_bytes` caps every file the process writes (RLIMIT_FSIZE: writes
    past it fail with EFBIG, as a disk that fills up fails with ENOSPC)."""
    full_env = {**os.environ, **(env or {})}

    def limit_file_size():
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    result = subprocess.run([sys.executable, "-m", "mtc", *map(str, args)], capture_output=True, text=True,
                            env=full_env, timeout=600, preexec_fn=limit_file_size if max_file_bytes else None)
    if check and result.returncode != 0:
        raise AssertionError(result.stderr)
    return result


def assert_clean_error(result, *phrases):
    """One `error:` line, last on stderr (log lines may precede it there), no traceback."""
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    assert "Traceback" not in result.stderr
    for phrase in phrases:
        assert phrase in errors[0], errors[0]


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    from mtc.data.builtin_clip import ClipSpec, builtin_clip

    path = tmp_path_factory.mktemp("inputs") / "photo.png"
    Image.fromarray(builtin_clip(ClipSpec(width=320, height=180, frames=1))[0]).save(path)
    return path


def test_models_lists_rvm():
    result = mtc("models", check=True)
    assert "rvm" in result.stdout and "GPL-3.0" in result.stdout


def test_unknown_model():
    assert_clean_error(mtc("export", "rvn"), "unknown model 'rvn'", "did you mean 'rvm'")


def test_export_refuses_wrong_weights_and_writes_nothing(tmp_path):
    bad = tmp_path / "rvm.onnx"
    bad.write_bytes(b"definitely not the model" * 1000)
    out = tmp_path / "out"
    assert_clean_error(mtc("export", "rvm", "--weights", bad, "-o", out), "not the expected rvm_mobilenetv3_fp32.onnx")
    assert_clean_error(mtc("export", "rvm", "--weights", tmp_path / "missing.onnx", "-o", out), "not found")
    assert not out.exists() and list(tmp_path.iterdir()) == [bad]


def test_export_offline_with_empty_cache(tmp_path):
    result = mtc("export", "rvm", "-o", tmp_path / "out", env={"MTC_CACHE": str(tmp_path / "cache"), "MTC_OFFLINE": "1"})
    assert_clean_error(result, "offline")


def test_export_alpha_only_refuses_a_model_without_foreground(tmp_path):
    assert_clean_error(mtc("export", "modnet", "--alpha-only", "-o", tmp_path / "out"), "alpha-only already",
                       "drop --alpha-only")
    assert list(tmp_path.iterdir()) == []


def test_export_will_not_overwrite_without_force(rvm_artifact):
    assert_clean_error(mtc("export", "rvm", "-o", rvm_artifact), "already exists", "--force")


def test_export_cli_writes_a_loadable_artifact(rvm_onnx, tmp_path):
    out = tmp_path / "rvm"
    mtc("export", "rvm", "--weights", rvm_onnx, "-o", out, check=True)
    from mtc.runtime import load

    assert load(out).manifest.precision.mode == "fp32"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_inspect_reports_graph_and_cost(rvm_artifact):
    import json

    result = mtc("inspect", rvm_artifact, "--resolution", "512x288", "--json", check=True)
    data = json.loads(result.stdout)
    assert 3.5e6 < data["graph"]["params"] < 4.0e6
    assert data["cost"]["downsample_ratio"] == 1.0 and data["cost"]["gflops"] > 1
    table = mtc("inspect", rvm_artifact, check=True).stdout
    assert "GFLOPs" in table and "r1o -> r1i" in table


def test_run_on_image_outputs(rvm_artifact, photo, tmp_path):
    mtc("run", rvm_artifact, photo, "-o", tmp_path / "comp.png", check=True)
    mtc("run", rvm_artifact, photo, "-o", tmp_path / "alpha.png", "--what", "alpha", check=True)
    mtc("run", rvm_artifact, photo, "-o", tmp_path / "fg.png", "--what", "foreground", check=True)
    comp, alpha, fg = (Image.open(tmp_path / n) for n in ("comp.png", "alpha.png", "fg.png"))
    assert comp.size == alpha.size == fg.size == (320, 180)
    assert (comp.mode, alpha.mode, fg.mode) == ("RGB", "L", "RGBA")
    a = np.asarray(alpha)
    assert a.min() < 10 and a.max() > 245  # a real matte: clear background and foreground
    np.testing.assert_array_equal(np.asarray(fg)[..., 3], a)


def test_run_on_image_folder(rvm_artifact, photo, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("b.png", "a.png"):
        (folder / name).write_bytes(photo.read_bytes())
    mtc("run", rvm_artifact, folder, "-o", tmp_path / "out", "--what", "alpha", check=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png"]


def test_run_never_overwrites_its_input(rvm_artifact, photo, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    image = folder / "a.png"
    image.write_bytes(photo.read_bytes())
    before = image.read_bytes()
    for source, output in ((image, image), (folder, folder), (image, tmp_path / "." / "photos" / "a.png")):
        assert_clean_error(mtc("run", rvm_artifact, source, "-o", output, "--what", "alpha", "--force"),
                           "is the input", "another path")
    assert image.read_bytes() == before and sorted(folder.iterdir()) == [image]


def test_run_on_builtin_clip_writes_video(rvm_artifact, tmp_path):
    from mtc.runtime.video_reader import VideoReader

    out = tmp_path / "demo.mp4"
    result = mtc("run", rvm_artifact, "builtin", "-o", out, check=True)
    assert "FPS" in result.stdout
    with VideoReader(out) as reader:
        assert sum(1 for _ in reader) == 48 and (reader.width, reader.height) == (512, 288)


def test_run_on_video_keeps_audio_and_writes_alpha_video(rvm_artifact, tmp_path):
    import av

    from mtc.runtime.video_reader import VideoReader

    source = tmp_path / "talk.mp4"
    _video_with_audio(source, frames=10)
    out = tmp_path / "fg.mov"
    mtc("run", rvm_artifact, source, "-o", out, "--what", "foreground", check=True)
    with av.open(str(out)) as container:
        assert container.streams.audio, "audio was dropped"
        assert "yuva" in container.streams.video[0].codec_context.pix_fmt
    with VideoReader(out) as reader:
        assert sum(1 for _ in reader) == 10


def test_run_keeps_a_variable_frame_rate_in_step_with_the_source(rvm_artifact, tmp_path):
    import av

    from mtc.data.builtin_clip import ClipSpec, builtin_clip
    from mtc.runtime.video_reader import VideoReader

    # 30 fps for half a second, then 10 fps: the average rate (20) would put frame 15 at 0.75 s.
    times = [i / 30 for i in range(15)] + [0.5 + i / 10 for i in range(5)]
    source = tmp_path / "phone.mp4"
    with av.open(str(source), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for image, time in zip(builtin_clip(ClipSpec(width=160, height=96, frames=len(times))), times):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = round(time * 1000), Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    out = tmp_path / "alpha.mp4"
    mtc("run", rvm_artifact, source, "-o", out, "--what", "alpha", check=True)
    with VideoReader(out) as reader:
        got = [t for t, _ in reader.timed_frames()]
    np.testing.assert_allclose(got, times, atol=1e-3)


def test_run_writes_a_video_as_numbered_pngs(rvm_artifact, tmp_path):
    source = tmp_path / "talk.mp4"
    _video_with_audio(source, frames=5)
    frames = tmp_path / "mattes"
    for what, mode in (("alpha", "L"), ("foreground", "RGBA")):
        mtc("run", rvm_artifact, source, "-o", frames, "--what", what, "--force", check=True)
        names = sorted(p.name for p in frames.iterdir())
        assert names == [f"{i:06d}.png" for i in range(1, 6)]
        with Image.open(frames / names[0]) as image:
            assert (image.mode, image.size) == (mode, (160, 96))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no leftovers of the build


def test_run_frames_never_replace_a_folder_of_other_files(rvm_artifact, tmp_path):
    source = tmp_path / "talk.mp4"
    _video_with_audio(source, frames=2)
    folder = tmp_path / "Desktop"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    assert_clean_error(mtc("run", rvm_artifact, source, "-o", folder, "--what", "alpha", "--force"),
                       "other than numbered frames", "new folder")
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_run_refuses_a_hardware_encoder_that_cannot_start(rvm_artifact, tmp_path):
    from mtc.runtime.video_writer import hardware_encoder_problem

    if hardware_encoder_problem("nvenc") is None:
        pytest.skip("NVENC works on this machine")
    source = tmp_path / "talk.mp4"
    _video_with_audio(source, frames=2)
    out = tmp_path / "out.mp4"
    assert_clean_error(mtc("run", rvm_artifact, source, "-o", out, "--encoder", "nvenc"), "h264_nvenc", "--encoder x264")
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["talk.mp4"]


def test_run_offers_exactly_the_writers_encoders():
    """The CLI spells the choices out (importing PyAV would slow `mtc --help`): they must not drift."""
    import click

    from mtc.cli.run import run
    from mtc.runtime.video_writer import ENCODERS

    option = next(p for p in run.params if p.name == "encoder")
    assert isinstance(option.type, click.Choice) and tuple(option.type.choices) == ENCODERS


def _video_with_audio(path, frames):
    import av

    from mtc.data.builtin_clip import ClipSpec, builtin_clip

    clip = builtin_clip(ClipSpec(width=160, height=96, frames=frames))
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 160, 96, "yuv420p"
        audio = container.add_stream("aac", rate=16000)
        audio.layout = "mono"
        for image in clip:
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        samples = (0.2 * np.sin(np.arange(16000 * frames // 10) * 0.05)).astype(np.float32)[None]
        for start in range(0, samples.shape[1], 1024):
            chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start:start + 1024]), format="fltp", layout="mono")
            chunk.sample_rate = 16000
            chunk.pts = start
            for packet in audio.encode(chunk):
                container.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode():
                container.mux(packet)


@pytest.mark.parametrize("mode, phrase", [("L", "grayscale"), ("RGBA", "RGBA"), ("I;16", "16 bits per channel")])
def test_run_refuses_unsupported_images(rvm_artifact, tmp_path, mode, phrase):
    path = tmp_path / f"bad_{mode.replace(';', '')}.png"
    Image.new(mode, (64, 48)).save(path)
    out = tmp_path / "out.png"
    result = mtc("run", rvm_artifact, path, "-o", out)
    assert_clean_error(result)
    assert phrase.lower() in result.stderr.lower()
    assert not out.exists()


@pytest.mark.parametrize("content", [b"", b"\x00\x01 not a video at all" * 50])
def test_run_refuses_empty_or_corrupt_video(rvm_artifact, tmp_path, content):
    source = tmp_path / "broken.mp4"
    source.write_bytes(content)
    out = tmp_path / "out.mp4"
    assert_clean_error(mtc("run", rvm_artifact, source, "-o", out), "broken.mp4")
    assert list(tmp_path.iterdir()) == [source]  # nothing half-written


def test_run_refuses_unwritable_output(rvm_artifact, photo, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    assert_clean_error(mtc("run", rvm_artifact, photo, "-o", blocker / "out.png"), "cannot write")


@pytest.mark.skipif(sys.platform != "linux", reason="needs RLIMIT_FSIZE to make writes fail")
def test_outputs_that_cannot_be_written_to_the_end_leave_nothing(rvm_artifact, rvm_onnx, photo, tmp_path):
    # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG instead of killing mtc.
    source = tmp_path / "talk.mp4"
    _video_with_audio(source, frames=10)
    out = tmp_path / "out"
    out.mkdir()
    for args in ((rvm_artifact, photo, "-o", out / "cut.png", "--what", "foreground"),
                 (rvm_artifact, source, "-o", out / "green.mp4")):
        assert_clean_error(mtc("run", *args, max_file_bytes=2048), "cannot write", "file-size limit")
        assert list(out.iterdir()) == []  # no output and no temporary left behind
    result = mtc("export", "rvm", "--weights", rvm_onnx, "-o", out / "rvm", max_file_bytes=1 << 20,
                 env={"MTC_CACHE": str(tmp_path / "cache")})
    assert_clean_error(result, "cannot write", "file-size limit")
    assert list(out.iterdir()) == []


def test_run_refuses_a_damaged_artifact(rvm_artifact, photo, tmp_path):
    import shutil

    copy = tmp_path / "art"
    shutil.copytree(rvm_artifact, copy)
    (copy / "manifest.json").write_text('{"schema_version": 1}')
    assert_clean_error(mtc("run", copy, photo, "-o", tmp_path / "o.png"), "manifest.json", "re-export")


def test_missing_input(rvm_artifact, tmp_path):
    assert_clean_error(mtc("run", rvm_artifact, tmp_path / "nope.png", "-o", tmp_path / "o.png"), "not found")


def test_backends_lists_each_registered_backend_and_the_auto_choice():
    from mtc.backends.registry import backend_names, choose_backend, probe_availability

    result = mtc("backends", check=True)
    available = probe_availability()
    assert f"CPU class: {available.cpu}" in result.stdout
    for name in backend_names():
        assert f"\n{name}: " in result.stdout
    assert f"auto for FP32 artifacts: {choose_backend('auto', available).name}" in result.stdout


def test_an_unknown_backend_is_a_one_line_error(rvm_artifact, photo, tmp_path):
    assert_clean_error(mtc("run", rvm_artifact, photo, "-o", tmp_path / "x.png", "--backend", "tflite"),
                       "unknown backend 'tflite'", "onnxruntime")


def test_quantize_prints_the_speed_it_timed_on_the_backend_auto_picks():
    from mtc.quant.report import speed_line

    on_openvino = {"speed": {"clip": "builtin-512x288-seed1", "speedup": 0.9, "fps_all_int8": 10.0,
                             "float_layers_cost": 0.04,
                             "openvino": {"vs_onnxruntime_fp32": 1.32, "speedup": 0.93, "fps_all_int8": 19.0,
                                          "float_layers_cost": 0.333}},
                   "int8": {"quantized_layers": 85, "int8_layers": 63}}
    assert speed_line(on_openvino) == (
        "speed: 1.32x ONNX Runtime FP32 on OpenVINO (0.93x its FP32 there), the backend auto picks here "
        "(builtin-512x288-seed1; indicative, benchmarks/ has the controlled comparison). All-INT8 ran 19.0 FPS: "
        "keeping 22 layers in float cost 33.3% of that speed.")
    on_ort = {"speed": {"clip": "c", "speedup": 1.5}, "int8": {"quantized_layers": 4, "int8_layers": 4}}
    assert speed_line(on_ort).startswith("speed: 1.50x ONNX Runtime FP32 on ONNX Runtime,")
    assert "float" not in speed_line(on_ort)  # nothing fell back: no all-INT8 model to compare with
    faster = {"speed": {"clip": "c", "speedup": 1.5, "fps_all_int8": 1.4, "float_layers_cost": -0.05},
              "int8": {"quantized_layers": 4, "int8_layers": 3}}
    assert "keeping 1 layer in float gained 5.0%" in speed_line(faster)


def test_quantize_warns_when_the_artifact_buys_no_speed_over_its_fp32_model():
    from mtc.quant.report import speed_warning

    slow = {"precision": "int8",
            "speed": {"clip": "c", "speedup": 1.5, "openvino": {"vs_onnxruntime_fp32": 1.07, "speedup": 1.0}},
            "int8": {"quantized_layers": 119, "int8_layers": 69, "fallback_mac_share": 0.972}}
    assert speed_warning(slow) == (
        "INT8 runs 1.00x the FP32 model on OpenVINO here, with 97% of its MACs returned to float by the fallback: "
        "it buys little or no speed (keep the FP32 artifact, or quantize only the layers that pay with --preset speed)")
    # ONNX Runtime's figure decides where the artifact runs there; no fallback, no share named
    on_ort = {"precision": "int8", "speed": {"clip": "c", "speedup": 1.02}, "int8": {}}
    assert speed_warning(on_ort).startswith("INT8 runs 1.02x the FP32 model on ONNX Runtime here: it buys")
    assert speed_warning({**slow, "speed": {"clip": "c", "speedup": 0.9,
                                            "openvino": {"vs_onnxruntime_fp32": 2.4, "speedup": 1.8}}}) is None
    bf16 = {"precision": "bf16", "speed": {"clip": "c", "speedup": 0.95, "openvino": {"speedup": 0.95}}}
    assert speed_warning(bf16).endswith("it buys little or no speed (keep the FP32 artifact)")
    # FP16 is made for GPUs: slower on this CPU is no news
    assert speed_warning({"precision": "fp16", "speed": {"clip": "c", "speedup": 0.4}}) is None
