"""Every flag is checked while the command line is parsed, before any work starts: a bad value is
one usage line (exit 2), never a failure minutes into a run, and nothing is written."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from tiny_artifacts import write_tiny_artifact

from mtc.errors import MtcError


@pytest.fixture
def no_work(monkeypatch):
    """Every entry point that does real work fails the test if it is reached."""

    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the flags were checked")

    import mtc.backends.build
    import mtc.bench.runner
    import mtc.models.export
    import mtc.quant.pipeline
    import mtc.runtime

    monkeypatch.setattr(mtc.runtime, "load", forbidden)
    monkeypatch.setattr(mtc.bench.runner, "run_bench", forbidden)
    monkeypatch.setattr(mtc.quant.pipeline, "quantize_artifact", forbidden)
    monkeypatch.setattr(mtc.models.export, "export_model", forbidden)
    monkeypatch.setattr(mtc.models.export, "export_onnx_file", forbidden)
    monkeypatch.setattr(mtc.backends.build, "build", forbidden)


@pytest.fixture
def artifact(tmp_path):
    return write_tiny_artifact(tmp_path / "artifact")


def _command(name: str):
    import importlib

    from mtc.cli.main import COMMANDS

    module, attr = COMMANDS[name].split(":")
    return getattr(importlib.import_module(module), attr)


def _invoke(name: str, *args) -> object:
    return CliRunner().invoke(_command(name), [str(a) for a in args])


def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


BAD_FLAGS = [
    ("quantize", ["--int8", "--max-mad", "nan"], "'nan' is out of range: needs 0 <= x"),
    ("quantize", ["--int8", "--max-mad", "-1"], "'-1' is out of range: needs 0 <= x"),
    ("quantize", ["--fp16", "--max-dtssd", "inf"], "'inf' is out of range"),
    ("quantize", ["--int8", "--float-budget", "nan"], "needs 0 <= x <= 100"),
    ("quantize", ["--int8", "--float-budget", "101"], "needs 0 <= x <= 100"),
    ("quantize", ["--int8", "--calib-frames", "0"], "0 is not in the range 1<=x<=10000"),
    ("quantize", ["--int8", "--calib", "no/such/clip.mp4"], "is not `builtin`, a video file or a folder"),
    ("quantize", ["--int8", "--check", "notes.txt"], "is not `builtin`, a video file or a folder"),
    ("run", ["photo.png", "-o", "out.png", "--threads", "-2"], "-2 is not in the range x>=1"),
    ("run", ["photo.png", "-o", "out.png", "--threads", "0"], "0 is not in the range x>=1"),
    ("run", ["photo.png", "-o", "out.png", "--ratio", "nan"], "needs 0 < x <= 1"),
    ("run", ["photo.png", "-o", "out.png", "--ratio", "0"], "needs 0 < x <= 1"),
    ("run", ["photo.png", "-o", "out.png", "--ratio", "5.0"], "needs 0 < x <= 1"),
    ("run", ["photo.png", "-o", "out.png", "--max-pixels", "-3"], "is not a positive pixel count"),
    ("bench", ["--threads", "-2"], "-2 is not in the range x>=1"),
    ("bench", ["--ratio", "nan"], "needs 0 < x <= 1"),
    ("bench", ["-r", "9000x9000"], "9000x9000 = 81,000,000 pixels, over the limit of 67,108,864"),
    ("bench", ["--frames", "0"], "0 is not in the range x>=1"),
    ("bench", ["--input", "no/such/clip.mp4"], "is not `builtin`, a video file or a folder of images"),
    ("bench", ["--gt", "no/such/alphas"], "does not exist"),
    ("bench", ["--reference", "no/such/artifact"], "does not exist"),
    ("run", ["photo.png", "-o", "out.png", "--background-plate", "no/plate.png"], "does not exist"),
    ("inspect", ["--ratio", "nan"], "needs 0 < x <= 1"),
    ("build", ["--backend", "openvino", "--threads", "-2"], "-2 is not in the range x>=1"),
    ("inspect", ["-r", "20000x20000"], "over the limit"),
]


@pytest.mark.parametrize("command, flags, message", BAD_FLAGS, ids=[f"{c} {' '.join(f)}" for c, f, _ in BAD_FLAGS])
def test_a_bad_flag_is_a_usage_error_before_any_work(no_work, artifact, tmp_path, monkeypatch, command, flags,
                                                     message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("not frames")
    before = _listing(tmp_path)
    extra = ["-o", "quantized"] if command == "quantize" else []
    result = _invoke(command, artifact, *extra, *flags)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output
    assert _listing(tmp_path) == before


def test_export_refuses_a_zero_std_or_a_nan_mean_before_exporting(no_work, tmp_path):
    for flags, message in ((["--std", "0.2,0,0.2"], "each must be above 0"),
                           (["--mean", "nan,0,0"], "three comma-separated finite numbers"),
                           (["--input-size", "20000x20000"], "over the limit")):
        result = _invoke("export", tmp_path / "model.onnx", "-o", tmp_path / "out", *flags)
        assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("gates", ["max_mad = nan", "max_mad = -1.0", "max_mad = true", "[gates]\nmax_dtssd = inf"])
def test_a_bad_gates_file_stops_an_export_before_the_fp32_export(no_work, tmp_path, gates):
    path = tmp_path / "gates.toml"
    path.write_text(gates + "\n")
    result = _invoke("export", tmp_path / "model.onnx", "--int8", "--gates", path, "-o", tmp_path / "out")
    assert isinstance(result.exception, MtcError), result.output
    assert "unexpected gate" in result.exception.message
    assert _listing(tmp_path) == ["gates.toml"]


def test_max_pixels_is_read_before_the_resolutions_whatever_the_order(no_work, artifact):
    # Within the raised limit -r passes, so the error is the next bad flag's, not the pixel limit's.
    result = _invoke("bench", artifact, "-r", "9000x9000", "--max-pixels", "1e8", "--threads", "0")
    assert result.exit_code == 2 and "--threads" in result.output and "pixels" not in result.output


def test_a_gates_file_resolution_over_the_limit_is_a_usage_error(no_work, artifact, tmp_path):
    gates = tmp_path / "gates.toml"
    gates.write_text('[gates."30000x30000"]\nmin_fps = 1\n')
    result = _invoke("bench", artifact, "--gate", gates)
    assert result.exit_code == 2 and "30000x30000 = 900,000,000 pixels, over the limit" in " ".join(
        result.output.split()), result.output
