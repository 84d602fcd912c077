"""The image CLI people know, as processes: a watched folder, raw frames through pipes, alpha-matting
refinement, mask clean-up, and the warning for a matte that came out empty."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import mtc.runtime
from mtc.artifact.manifest import MANIFEST_NAME, Manifest, ModelIO, Precision, StatePair, TensorSpec, file_entry

W, H = 40, 32


def red_artifact(folder: Path, *, gain: float = 50.0, offset: float = -25.0, step: float | None = None,
                 model: str = "red", task: str = "image_matting") -> Path:
    """alpha = clip(gain * red + offset (+ state), 0, 1), red in [0, 1]: with the defaults, a near-hard
    mask of the red pixels. `step` adds recurrent state: s' = s + step, so frame t's alpha moves by
    t * step, and a session that loses its state between frames shows it."""
    inits = [numpy_helper.from_array(np.array(gain, np.float32), "gain"),
             numpy_helper.from_array(np.array(offset, np.float32), "offset"),
             numpy_helper.from_array(np.array([0], np.int64), "start"),
             numpy_helper.from_array(np.array([1], np.int64), "end"),
             numpy_helper.from_array(np.array([1], np.int64), "axis"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one")]
    nodes = [helper.make_node("Slice", ["img", "start", "end", "axis"], ["red"]),
             helper.make_node("Mul", ["red", "gain"], ["scaled"]),
             helper.make_node("Add", ["scaled", "offset"], ["raw"])]
    inputs = [helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 3, "h", "w"])]
    outputs = [helper.make_tensor_value_info("alpha", TensorProto.FLOAT, [1, 1, "h", "w"])]
    io_in, io_out, states = [TensorSpec("img", "image", shape=(1, 3, "h", "w"))], [], ()
    if step is not None:
        inits.append(numpy_helper.from_array(np.array(step, np.float32), "step"))
        nodes += [helper.make_node("Add", ["raw", "s_in"], ["lifted"]),
                  helper.make_node("Add", ["s_in", "step"], ["s_out"])]
        inputs.append(helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [1, 1, 1, 1]))
        outputs.append(helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [1, 1, 1, 1]))
        io_in.append(TensorSpec("s_in", "state", shape=(1, 1, 1, 1)))
        io_out.append(TensorSpec("s_out", "state", shape=(1, 1, 1, 1)))
        states = (StatePair("s_in", "s_out", initial_shape=(1, 1, 1, 1)),)
    nodes.append(helper.make_node("Clip", ["lifted" if step is not None else "raw", "zero", "one"], ["alpha"]))
    graph = helper.make_graph(nodes, "red", inputs, outputs, initializer=inits)
    folder.mkdir(parents=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(folder / "model.onnx"))
    io = ModelIO(inputs=tuple(io_in),
                 outputs=(TensorSpec("alpha", "alpha", shape=(1, 1, "h", "w"), value_range=(0.0, 1.0)), *io_out),
                 states=states)
    manifest = Manifest(model=model, variant="test", task=task, license="MIT", model_file="model.onnx", io=io,
                        precision=Precision(), files={"model.onnx": file_entry(folder / "model.onnx")})
    (folder / MANIFEST_NAME).write_text(manifest.to_json())
    return folder


def disk_picture(seed: int = 0) -> np.ndarray:
    """Grey noise with a red disk in the middle."""
    rng = np.random.default_rng(seed)
    picture = rng.integers(0, 100, (H, W, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:H, :W]
    inside = (yy - H / 2) ** 2 + (xx - W / 2) ** 2 < (H / 3) ** 2
    picture[inside] = (230, 40, 40)
    return picture


def run_mtc(*args, stdin: bytes | None = None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtc", *map(str, args)], input=stdin, capture_output=True,
                          env={**os.environ, **(env or {})}, timeout=600)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    return red_artifact(tmp_path_factory.mktemp("red") / "artifact")


# ---- raw frames through pipes ------------------------------------------------------------------


def test_raw_frames_on_stdin_to_stdout_carry_recurrent_state(tmp_path):
    recurrent = red_artifact(tmp_path / "recurrent", gain=0.5, offset=0.1, step=0.1)
    frames = [disk_picture(seed=0)] * 4  # the same picture: only the state can change the alpha
    result = run_mtc("run", recurrent, "-", "--raw", f"{W}x{H}", "-o", "-", "--what", "alpha", "--backend",
                 "onnxruntime", stdin=b"".join(f.tobytes() for f in frames))
    assert result.returncode == 0, result.stderr.decode()
    out = np.frombuffer(result.stdout, np.uint8)
    assert out.size == 4 * W * H  # stdout holds the frames and nothing else
    out = out.reshape(4, H, W)
    session = mtc.runtime.load(recurrent, backend="onnxruntime")
    expected = np.stack([session.process(f).alpha_u8() for f in frames])  # one shot, state carried
    np.testing.assert_array_equal(out, expected)
    assert (out[3].astype(int) - out[0]).mean() > 50  # 3 steps of 0.1 in alpha: ~76 grey levels


def test_raw_frames_to_a_numbered_pattern_and_a_truncated_stream(artifact, tmp_path):
    frames = [disk_picture(seed=s) for s in range(3)]
    pattern = tmp_path / "out" / "f_%04d.png"
    result = run_mtc("run", artifact, "-", "--raw", f"{W}x{H}", "-o", pattern, "--what", "foreground",
                 stdin=b"".join(f.tobytes() for f in frames))
    assert result.returncode == 0, result.stderr.decode()
    assert sorted(p.name for p in pattern.parent.iterdir()) == ["f_0001.png", "f_0002.png", "f_0003.png"]
    rgba = np.asarray(Image.open(pattern.parent / "f_0002.png"))
    assert rgba.shape == (H, W, 4)
    visible = rgba[..., 3:] > 0
    np.testing.assert_array_equal(rgba[..., :3], frames[1] * visible)  # fully transparent pixels are zero
    assert rgba[H // 2, W // 2, 3] == 255 and rgba[0, 0, 3] == 0  # the red disk is the subject

    cut = b"".join(f.tobytes() for f in frames)[:-10]
    result = run_mtc("run", artifact, "-", "--raw", f"{W}x{H}", "-o", "-", stdin=cut)
    assert result.returncode == 1
    assert f"ended {W * H * 3 - 10} bytes into frame 3" in result.stderr.decode()


def test_usage_errors_exit_2(artifact, tmp_path):
    for args in (["-", "-o", "-"], [tmp_path, "--raw", "40x32", "-o", "-"], ["-", "--raw", "40by32", "-o", "-"],
                 ["-", "--raw", "40x32", "-o", tmp_path / "out.png"], [tmp_path / "a.png", "-o", "b.png", "--watch"],
                 [tmp_path, "-o", "out", "--alpha-matting", "--alpha-matting-foreground", "5"]):
        result = run_mtc("run", artifact, *args, stdin=b"")
        assert result.returncode == 2, (args, result.stderr.decode())


# ---- a watched folder --------------------------------------------------------------------------


def _wait_for(predicate, seconds: float = 120.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_watch_mattes_images_as_they_arrive_and_stops_on_sigterm(artifact, tmp_path):
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    Image.fromarray(disk_picture(seed=1)).save(inbox / "early.png")
    process = subprocess.Popen([sys.executable, "-m", "mtc", "run", str(artifact), str(inbox), "-o", str(outbox),
                                "--watch", "--what", "alpha", "--backend", "onnxruntime"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert _wait_for(lambda: (outbox / "early.png").exists()), "an image already there is matted"
        # A file that arrives slowly: half of it, a pause of several polls, then the rest. It must be
        # matted once, whole (a half-written PNG would fail to decode and be reported as skipped).
        data = (tmp_path / "late.png")
        Image.fromarray(disk_picture(seed=2)).save(data)
        content = data.read_bytes()
        with open(inbox / "late.png", "wb") as growing:
            growing.write(content[: len(content) // 2])
            growing.flush()
            time.sleep(2.0)
            growing.write(content[len(content) // 2:])
        Image.fromarray(disk_picture(seed=3)).save(inbox / "third.png")
        assert _wait_for(lambda: (outbox / "late.png").exists() and (outbox / "third.png").exists())
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr.decode()
    assert "skipped" not in stderr.decode() and "error" not in stderr.decode()
    assert "3 images" in stdout.decode()
    session = mtc.runtime.load(artifact, backend="onnxruntime")
    np.testing.assert_array_equal(np.asarray(Image.open(outbox / "late.png")),
                                  session.process(disk_picture(seed=2)).alpha_u8())
    assert not [p for p in outbox.iterdir() if p.name.startswith(".")]  # no partial files left


# ---- refinement, clean-up and the coverage warning --------------------------------------------


def test_post_process_mask_writes_a_binary_mask(tmp_path):
    soft = red_artifact(tmp_path / "soft", gain=1.0, offset=0.0)  # alpha = red: soft, noisy
    picture = disk_picture()
    Image.fromarray(picture).save(tmp_path / "in.png")
    result = run_mtc("run", soft, tmp_path / "in.png", "-o", tmp_path / "plain.png", "--what", "alpha")
    assert result.returncode == 0, result.stderr.decode()
    assert len(np.unique(np.asarray(Image.open(tmp_path / "plain.png")))) > 10
    result = run_mtc("run", soft, tmp_path / "in.png", "-o", tmp_path / "clean.png", "--what", "alpha",
                 "--post-process-mask")
    assert result.returncode == 0, result.stderr.decode()
    clean = np.asarray(Image.open(tmp_path / "clean.png"))
    assert set(np.unique(clean)) == {0, 255}
    assert clean[H // 2, W // 2] == 255 and clean[0, 0] == 0  # the disk stays, the noise goes


def test_alpha_matting_runs_through_the_cli(artifact, tmp_path):
    pytest.importorskip("pymatting")
    Image.fromarray(disk_picture()).save(tmp_path / "in.png")
    result = run_mtc("run", artifact, tmp_path / "in.png", "-o", tmp_path / "out.png", "--what", "alpha",
                 "--alpha-matting", "--alpha-matting-erode", "3")
    assert result.returncode == 0, result.stderr.decode()
    refined = np.asarray(Image.open(tmp_path / "out.png"))
    hard = mtc.runtime.load(artifact).process(disk_picture()).alpha_u8()
    assert refined.shape == hard.shape and (refined != hard).any()
    assert refined[H // 2, W // 2] == 255 and refined[0, 0] == 0  # sure regions are kept


def test_alpha_matting_without_pymatting_names_the_extra(artifact, tmp_path):
    Image.fromarray(disk_picture()).save(tmp_path / "in.png")
    # None in sys.modules makes `import pymatting` fail, as where it is not installed.
    code = "import sys\nsys.modules['pymatting'] = None\nfrom mtc.cli.main import main\nmain()\n"
    result = subprocess.run([sys.executable, "-c", code, "run", str(artifact), str(tmp_path / "in.png"), "-o",
                             str(tmp_path / "out.png"), "--alpha-matting"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: --alpha-matting needs the pymatting library")
    assert "pip install 'mtc[refine]'" in result.stderr and not (tmp_path / "out.png").exists()


def test_an_empty_matte_warns_with_what_the_model_is_for(tmp_path):
    from mtc.models.registry import get_model

    # A model registered as a people matter that finds nothing: the wording comes from the registry.
    people = red_artifact(tmp_path / "people", gain=0.0, offset=0.0, model="rvm", task="video_matting")
    Image.fromarray(disk_picture()).save(tmp_path / "dog.png")
    result = run_mtc("run", people, tmp_path / "dog.png", "-o", tmp_path / "out.png")
    assert result.returncode == 0, result.stderr.decode()
    warning = result.stderr.decode()
    assert "warning: the matte came out almost empty: rvm mattes people (video matting)" in warning
    assert "for objects use" in warning and "u2netp" in warning
    assert get_model("rvm").purpose == "people"

    # A model the registry does not know: no claim about its purpose.
    unknown = red_artifact(tmp_path / "unknown", gain=0.0, offset=1.0, model="mystery")
    result = run_mtc("run", unknown, tmp_path / "dog.png", "-o", tmp_path / "out2.png")
    assert "almost fully opaque: mystery (image matting)" in result.stderr.decode()

    # A matte with a subject: no warning.
    result = run_mtc("run", red_artifact(tmp_path / "fine"), tmp_path / "dog.png", "-o", tmp_path / "out3.png")
    assert result.returncode == 0 and "warning" not in result.stderr.decode()


# ---- PNG compression of image outputs ----------------------------------------------------------


def test_png_compression_sets_the_zlib_level_of_image_outputs(artifact, tmp_path):
    """A folder of images, cut out at the default level (1), at 9 and at 0: the same pixels, files whose
    sizes follow the level; the default is level 1, not Pillow's 6."""
    yy, xx = np.mgrid[:120, :160]
    smooth = np.stack([(xx + yy) % 256, xx % 256, yy % 256], axis=2).astype(np.uint8)  # compressible
    smooth[40:80, 60:100] = (230, 40, 40)
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(smooth).save(photos / name)
    sizes, pixels = {}, {}
    for level in (None, "0", "1", "6", "9"):
        out = tmp_path / f"out-{level}"
        result = run_mtc("run", artifact, photos, "-o", out, "--what", "foreground", "--backend", "onnxruntime",
                         *(["--png-compression", level] if level else []))
        assert result.returncode == 0, result.stderr.decode()
        sizes[level] = (out / "a.png").stat().st_size
        pixels[level] = np.asarray(Image.open(out / "a.png"))
        assert (out / "a.png").read_bytes() == (out / "b.png").read_bytes()
    for level in pixels:
        np.testing.assert_array_equal(pixels[level], pixels["0"])
    assert pixels["0"][60, 80, 3] == 255 and pixels["0"][0, 0, 3] == 0
    assert sizes["0"] > sizes["1"] > sizes["9"]
    assert sizes[None] == sizes["1"] != sizes["6"]
    single = run_mtc("run", artifact, photos / "a.png", "-o", tmp_path / "one.png", "--what", "foreground",
                     "--backend", "onnxruntime", "--png-compression", "9")
    assert single.returncode == 0, single.stderr.decode()
    assert (tmp_path / "one.png").stat().st_size == sizes["9"]
    assert run_mtc("run", artifact, photos, "-o", tmp_path / "bad", "--png-compression", "10").returncode == 2
