"""Batch matting of a video library on a local Ray cluster: outputs identical to `mtc run`, a
broken video reported without stopping the others, finished outputs skipped on a re-run, and a
video split at its scene cuts into pieces joined into the single run's output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from serve.artifacts import stream, write_recurrent_artifact

from mtc.errors import MtcError
from mtc.runtime.video_reader import VideoReader
from mtc.runtime.video_writer import VideoWriter
from mtc.serve.ray_batch import find_videos, matte_library, plan_outputs

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'mtc[ray]')")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    folder = tmp_path_factory.mktemp("library")
    artifact = write_recurrent_artifact(folder / "artifact")
    videos = folder / "videos"
    videos.mkdir()
    for seed, count in ((1, 12), (2, 9)):
        with VideoWriter(videos / f"clip{seed}.mp4", width=32, height=24, fps=10, kind="rgb") as writer:
            for frame in stream(count, seed=seed):
                writer.write(frame)
    (videos / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    return artifact, videos


def shots(*lengths: int) -> list[np.ndarray]:
    """Steady shots, alternately dark and bright, so that every change of shot is a hard cut."""
    frames = []
    for number, count in enumerate(lengths):
        shift = -60 if number % 2 else 60
        frames += [np.clip(f.astype(np.int16) + shift, 0, 255).astype(np.uint8) for f in stream(count, seed=10 + number)]
    return frames


@pytest.fixture(scope="module")
def long_video(library):
    path = library[1].parent / "long" / "three-shots.mp4"
    with VideoWriter(path, width=32, height=24, fps=10, kind="rgb") as writer:
        for frame in shots(7, 5, 8):
            writer.write(frame)
    return path


def _frames(path: Path) -> list[np.ndarray]:
    with VideoReader(path) as reader:
        return [np.array(f) for f in reader]


def _differences(ours: list[np.ndarray], theirs: list[np.ndarray]) -> str:
    """'' where both videos hold the same pictures, else which frames differ and how much."""
    if len(ours) != len(theirs):
        return f"{len(ours)} frames against {len(theirs)}"
    differ = {i: int(np.abs(a.astype(np.int16) - b).max()) for i, (a, b) in enumerate(zip(ours, theirs))
              if not np.array_equal(a, b)}
    return f"frames differ (frame: largest difference): {differ}" if differ else ""


def test_library_is_matted_like_mtc_run_and_a_broken_video_is_reported(cluster, library, tmp_path):
    from mtc.cli.main import cli

    artifact, videos = library
    seen = []
    report = matte_library(artifact, [videos], tmp_path / "out", retries=1, on_result=lambda r, d, t: seen.append(d))
    by_name = {r.source.name: r for r in report.results}
    assert sorted(by_name) == ["broken.mp4", "clip1.mp4", "clip2.mp4"] and sorted(seen) == [1, 2, 3]
    assert "cannot read video" in by_name["broken.mp4"].error and not (tmp_path / "out" / "broken.mp4").exists()
    assert [r.source.name for r in report.failed] == ["broken.mp4"]
    assert (by_name["clip1.mp4"].frames, by_name["clip2.mp4"].frames) == (12, 9)
    for name in ("clip1.mp4", "clip2.mp4"):
        single = tmp_path / f"single-{name}"
        result = CliRunner().invoke(cli, ["run", str(artifact), str(videos / name), "-o", str(single)])
        assert result.exit_code == 0, result.output
        assert not (problem := _differences(_frames(tmp_path / "out" / name), _frames(single))), problem
    # Nothing half-written is left beside the outputs.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["clip1.mp4", "clip2.mp4"]


def test_a_rerun_skips_finished_videos_and_the_cli_exits_1_on_failure(cluster, library, tmp_path):
    from mtc.cli.main import cli

    artifact, videos = library
    out = tmp_path / "out"
    first = CliRunner().invoke(cli, ["batch", str(artifact), str(videos / "clip2.mp4"), str(videos / "broken.mp4"),
                                     "-o", str(out), "--retries", "0"])
    assert first.exit_code == 1 and "1 of 2 videos done" in first.output and "1 failed" in first.output
    stamp = (out / "clip2.mp4").stat().st_mtime_ns
    again = matte_library(artifact, [videos / "clip2.mp4"], out)
    assert again.results[0].skipped and (out / "clip2.mp4").stat().st_mtime_ns == stamp


def test_inputs_are_checked_before_any_work(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for folder in ("a", "b"):
        (tmp_path / folder / "take.mp4").write_bytes(b"")
    (tmp_path / "a" / "notes.txt").write_text("not a video")
    videos = find_videos([tmp_path / "a", tmp_path / "b"])
    assert [p.name for p in videos] == ["take.mp4", "take.mp4"]
    with pytest.raises(MtcError, match="would both be written to"):
        plan_outputs(videos, tmp_path / "out", ".mp4")
    with pytest.raises(MtcError, match="does not exist"):
        find_videos([tmp_path / "missing"])
    with pytest.raises(MtcError, match="overwritten by its own output"):
        plan_outputs([tmp_path / "a" / "take.mp4"], tmp_path / "a", ".mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MtcError, match="no video files"):
        find_videos([tmp_path / "empty"])


def test_a_video_split_at_its_cuts_gives_the_single_run_output(cluster, library, long_video, tmp_path):
    from mtc.cli.main import cli

    artifact, _ = library
    out = tmp_path / "out"
    report = matte_library(artifact, [long_video], out, split_shots=True, min_piece_frames=5)
    assert report.results[0].ok and report.results[0].frames == 20, report.results[0]
    assert report.results[0].pieces == 3
    single = tmp_path / "single.mp4"
    result = CliRunner().invoke(cli, ["run", str(artifact), str(long_video), "-o", str(single)])
    assert result.exit_code == 0, result.output
    ours = _frames(out / long_video.name)
    assert len(ours) == 20 and not (problem := _differences(ours, _frames(single))), problem
    # The pieces are gone once joined.
    assert [p.name for p in out.iterdir()] == [long_video.name]


def test_splitting_really_cuts_the_video_into_pieces(library, long_video):
    from mtc.runtime.scenes import find_shots

    plan = find_shots(long_video)
    assert plan.cuts == (7, 12) and plan.frames == 20 and len(plan.times) == 20
    assert plan.pieces(5) == [(0, 7), (7, 12), (12, 20)]
    assert plan.pieces(6) == [(0, 7), (7, 20)]  # the 5-frame shot joins the next
    assert plan.pieces(100) == [(0, 20)]


def test_mtc_run_ray_mattes_a_folder_of_videos(cluster, library, tmp_path):
    from mtc.cli.main import cli

    artifact, videos = library
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["run", str(artifact), str(videos / "clip1.mp4"), "-o", str(out), "--what",
                                      "alpha", "--ray"])
    assert result.exit_code == 0, result.output
    assert "1 of 1 videos done" in result.output and (out / "clip1.mp4").is_file()
    refused = CliRunner().invoke(cli, ["run", str(artifact), str(videos), "-o", str(out), "--watch", "--ray"])
    assert refused.exit_code == 2 and "--ray does not take --watch" in refused.output
