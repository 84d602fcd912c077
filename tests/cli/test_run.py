"""`mtc run` and `mtc export` as processes under faults: damaged video, SIGTERM, pictures over the
pixel limit, and two runs racing for one output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from tiny_artifacts import tiny_model, write_tiny_artifact

from mtc.runtime.video_writer import VideoWriter


def mtc(*args, env=None, script: str | None = None) -> subprocess.CompletedProcess:
    """Run `mtc ARGS` (after `script`, Python run first in the same process, if given)."""
    code = (script or "") + "\nfrom mtc.cli.main import main\nmain()\n"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in result.stderr, result.stderr
    return errors[0]


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    return write_tiny_artifact(tmp_path_factory.mktemp("tiny") / "artifact")


def _noise_video(path: Path, count: int) -> Path:
    rng = np.random.default_rng(0)
    with VideoWriter(path, width=64, height=48, fps=24, kind="rgb", encoder="x264") as writer:
        for _ in range(count):
            writer.write(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    return path


def _frames_in(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_a_video_with_a_damaged_packet_is_written_whole_and_exits_3(artifact, tmp_path):
    source = _noise_video(tmp_path / "in.mp4", 24)
    with av.open(str(source)) as container:
        position, size = [(p.pos, p.size) for p in container.demux(video=0) if p.size][12]
    data = bytearray(source.read_bytes())
    data[position + 4:position + size] = np.random.default_rng(1).integers(0, 256, size - 4, np.uint8).tobytes()
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    out = tmp_path / "out.mp4"

    result = mtc("run", artifact, damaged, "-o", out, "--what", "alpha", "--backend", "onnxruntime")

    assert result.returncode == 3, result.stderr
    assert "lost 1 frame(s) to damaged data (frame 13)" in result.stderr
    assert "holds the 23 that decode" in result.stderr
    assert _frames_in(out) == 23  # before the fix: 10 frames and exit 0
    assert hidden(tmp_path) == []


# The run slows to 0.2 s per encoded frame and says when two are written, so the signal lands
# mid-run whatever the machine's speed.
SLOW_ENCODER = textwrap.dedent("""
    import time
    import mtc.runtime.video_writer as video_writer

    write = video_writer.VideoWriter.write

    def slow_write(self, frame, time_=None, **kwargs):
        write(self, frame, **kwargs)
        if self.frames_written == 2:
            print("two frames written", flush=True)
        time.sleep(0.2)

    video_writer.VideoWriter.write = slow_write
""")


def test_sigterm_during_a_video_run_cleans_up_like_ctrl_c(artifact, tmp_path):
    source = _noise_video(tmp_path / "in.mp4", 48)
    out = tmp_path / "out.mp4"
    code = SLOW_ENCODER + "\nfrom mtc.cli.main import main\nmain()\n"
    process = subprocess.Popen([sys.executable, "-c", code, "run", str(artifact), str(source), "-o", str(out),
                                "--backend", "onnxruntime"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "two frames written"
        assert any(name.startswith(".out.mtc") for name in hidden(tmp_path))  # the partial file exists now
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, stderr  # as Ctrl-C ends a run
    assert not out.exists() and hidden(tmp_path) == []


def test_a_killed_runs_partial_file_is_removed_by_the_next_run(artifact, tmp_path):
    from mtc import fsutil

    source = _noise_video(tmp_path / "in.mp4", 8)
    out = tmp_path / "out.mp4"
    code = SLOW_ENCODER + "\nfrom mtc.cli.main import main\nmain()\n"
    process = subprocess.Popen([sys.executable, "-c", code, "run", str(artifact), str(source), "-o", str(out),
                                "--backend", "onnxruntime"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "two frames written"
        process.send_signal(signal.SIGKILL)  # nothing can clean up after this
        process.wait(timeout=60)
    finally:
        process.kill()
    (leftover,) = hidden(tmp_path)
    assert leftover.startswith(f".out.mtc{process.pid}-") and leftover.endswith(".part.mp4")
    old = time.time() - 2 * fsutil.STALE_AFTER_SECONDS
    os.utime(tmp_path / leftover, (old, old))

    result = mtc("run", artifact, source, "-o", tmp_path / "again.mp4", "--backend", "onnxruntime")

    assert result.returncode == 0, result.stderr
    assert hidden(tmp_path) == [] and not out.exists() and _frames_in(tmp_path / "again.mp4") == 8


def test_max_pixels_flag_and_variable_set_the_limit_for_images(artifact, tmp_path):
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((100, 100, 3), 128, np.uint8)).save(photo)
    out = tmp_path / "out.png"
    for args, env in ((["--max-pixels", "9999"], None), ([], {"MTC_MAX_PIXELS": "9999"})):
        error = one_error_line(mtc("run", artifact, photo, "-o", out, "--backend", "onnxruntime", *args, env=env))
        assert "photo.png is 100x100 = 10,000 pixels, over the limit of 9,999" in error
        assert "--max-pixels N or MTC_MAX_PIXELS=N" in error
        assert not out.exists()
    result = mtc("run", artifact, photo, "-o", out, "--backend", "onnxruntime", "--max-pixels", "100x100",
                 env={"MTC_MAX_PIXELS": "10"})
    assert result.returncode == 0 and out.is_file(), result.stderr  # the flag wins over the variable


# Each export waits at its final rename until the test says go, so both are in flight together.
GATED_RENAME = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    import mtc.fsutil as fsutil

    gate = Path(os.environ["GATE"])
    rename = fsutil.rename_no_replace

    def gated(source, target):
        (gate / f"ready-{os.getpid()}").touch()
        while not (gate / "go").exists():
            time.sleep(0.05)
        rename(source, target)

    fsutil.rename_no_replace = gated
""")


def _wait_for(predicate, processes) -> None:
    while not predicate():
        assert all(p.poll() is None for p in processes), [p.communicate() for p in processes]
        time.sleep(0.05)


def _gated_exports(model: Path, out: Path, gate: Path, count: int) -> list[subprocess.Popen]:
    code = GATED_RENAME + "\nfrom mtc.cli.main import main\nmain()\n"
    return [subprocess.Popen([sys.executable, "-c", code, "export", str(model), "-o", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "GATE": str(gate)}) for _ in range(count)]


@pytest.fixture
def model(tmp_path) -> Path:
    import onnx

    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_model(), str(path))
    return path


def test_two_exports_to_one_output_without_force_exactly_one_succeeds(model, tmp_path):
    gate, out = tmp_path / "gate", tmp_path / "out"
    gate.mkdir()
    processes = _gated_exports(model, out, gate, 2)
    try:
        _wait_for(lambda: len(list(gate.glob("ready-*"))) == 2, processes)  # both past "already exists"
        (gate / "go").touch()
        results = [(p.wait(timeout=120), *p.communicate()) for p in processes]
    finally:
        for process in processes:
            process.kill()
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 1], results
    loser = next(stderr for code, _, stderr in results if code == 1)
    assert "appeared while this run was writing it" in loser and "--force" in loser
    assert (out / "manifest.json").is_file() and hidden(tmp_path) == []


def test_a_folder_made_at_the_output_during_an_export_is_not_touched(model, tmp_path):
    gate, out = tmp_path / "gate", tmp_path / "out"
    gate.mkdir()
    (process,) = _gated_exports(model, out, gate, 1)
    try:
        _wait_for(lambda: any(gate.glob("ready-*")), [process])
        out.mkdir()  # made by someone else while the export runs
        (out / "mine.txt").write_text("keep me")
        (gate / "go").touch()
        code, _, stderr = process.wait(timeout=120), *process.communicate()
    finally:
        process.kill()
    assert code == 1 and "appeared while this run was writing it" in stderr, stderr
    assert [p.name for p in out.iterdir()] == ["mine.txt"] and (out / "mine.txt").read_text() == "keep me"
    assert hidden(tmp_path) == []
