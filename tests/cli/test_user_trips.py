"""What a new user tripped on (issue #20, item 10): silent quantization, a squashed `mtc models`
when piped, a missing-checkpoint error that did not name the torch extra."""

from __future__ import annotations

import io
import re

import pytest
from click.testing import CliRunner
from rich.console import Console

from mtc.runtime.progress import Stages, counted, format_duration

# ---- progress of `mtc quantize` / `mtc export --int8` ---------------------------------------


def _fake_terminal() -> tuple[Console, io.StringIO]:
    stream = io.StringIO()
    return Console(file=stream, force_terminal=True, width=120, color_system=None), stream


def test_stages_on_a_terminal_show_name_bar_and_duration():
    console, stream = _fake_terminal()
    stages = Stages(console)
    with stages.stage("calibration: activation ranges", total=3) as advance:
        for _ in counted(range(3), advance):
            pass
    with stages.stage("writing the report", counts=False):
        pass
    shown = stream.getvalue()
    assert "calibration: activation ranges" in shown and "writing the report" in shown
    assert "3/3" in shown and "ETA" in shown  # the bar: count and time remaining
    assert re.search(r"✓ calibration: activation ranges \d+\.\d s", shown)
    assert re.search(r"✓ writing the report \d+\.\d s", shown)


def test_stages_off_a_terminal_write_one_plain_line_each():
    stream = io.StringIO()
    stages = Stages(Console(file=stream, width=80))  # not a terminal: what CI logs get
    names = ["loading calibration and check frames", "fallback search: sensitive layers back to float until the "
             "gates pass (a name longer than the console is wide)"]
    for name in names:
        with stages.stage(name, total=5) as advance:
            for _ in range(5):
                advance()
    lines = stream.getvalue().splitlines()
    assert len(lines) == len(names), lines
    for name, line in zip(names, lines):
        assert re.fullmatch(re.escape(name) + r": \d+\.\d s", line), line
    assert "\x1b" not in stream.getvalue() and "━" not in stream.getvalue()


def test_a_failing_stage_adds_no_line_to_the_error():
    stream = io.StringIO()
    with pytest.raises(ValueError), Stages(Console(file=stream)).stage("checking against FP32"):
        raise ValueError("boom")
    assert stream.getvalue() == ""


def test_counted_advances_once_per_item_after_its_use():
    log = []
    for item in counted("abc", lambda: log.append("advance")):
        log.append(item)
    assert log == ["a", "advance", "b", "advance", "c", "advance"]


def test_format_duration():
    assert [format_duration(s) for s in (0.04, 12.34, 245, 3720)] == ["0.0 s", "12.3 s", "4 min 05 s", "1 h 02 min"]


QUANT_STAGES = [
    "loading calibration and check frames",
    "calibration: recording FP32 inputs",
    "FP32 reference on the check frames",
    "equalizing concat inputs",
    "calibration: activation ranges",
    "range coverage: clipping on the check frames",
    "weight rounding (GPTQ)",
    "range fitting: per-layer INT8 error",
    "checking all-INT8 against FP32",
    "float budget: probing layers",
    "layer sensitivity, one at a time",
    "fallback search until gates pass",
    "integer kernels vs their float simulation",
    "speed timing:",
    "writing the report and artifact",
]


def _quantize_toy(tmp_path, **kwargs):
    from quant.test_quant import SMALL, _toy_artifact  # the toy artifact whose conv2 needs fallback

    from mtc.quant.config import Gates, Int8Config
    from mtc.quant.pipeline import quantize_artifact

    config = Int8Config(method="minmax", quantize_outputs=False, weight_rounding="gptq", affine_correction=True,
                        float_budget=0.5)
    return quantize_artifact(_toy_artifact(tmp_path / "toy"), tmp_path / "int8", precision="int8", config=config,
                             gates=Gates(max_mad=5.0, max_dtssd=5.0), data=SMALL, **kwargs)


def test_quantize_shows_every_long_step_on_a_terminal(tmp_path):
    console, stream = _fake_terminal()
    outcome = _quantize_toy(tmp_path, stages=Stages(console))
    assert outcome.report["int8"]["fallback_layers"]  # the run went through the float budget or fallback
    shown = stream.getvalue()
    done = re.findall(r"✓ ([^\r\n\x1b]*)", shown)  # the line each stage leaves behind
    for name, line in zip(QUANT_STAGES, done, strict=True):
        assert line.startswith(name) and re.search(r" \d+\.\d s$", line), (name, line)
    assert re.search(r"\b(\d+)/\1\b", shown)  # a bar that reached its end, e.g. over the calibration frames


def test_quantize_progress_goes_to_stderr_one_line_per_stage(tmp_path, capsys):
    _quantize_toy(tmp_path)  # the default reporter, as `mtc quantize` uses it
    captured = capsys.readouterr()
    assert captured.out == ""  # stdout stays free for results (and JSON)
    lines = captured.err.splitlines()
    assert len(lines) == len(QUANT_STAGES), lines
    for name, line in zip(QUANT_STAGES, lines):
        assert line.startswith(name) and re.search(r": \d+\.\d s$", line), (name, line)


# ---- `mtc models` piped ------------------------------------------------------------------


def test_models_piped_prints_one_line_per_variant():
    from mtc.cli.models import models
    from mtc.models.registry import list_models

    result = CliRunner().invoke(models, [])  # stdout is not a terminal here, as in a pipe or CI
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    specs = list_models()
    assert len(lines) == 1 + sum(len(spec.variants) for spec in specs), result.output
    assert lines[0].split() == ["name", "variant", "task", "purpose", "input", "license", "weights"]
    for spec in specs:
        for variant in spec.variants:
            # name, variant, what it is for, the whole input description and the licence on one line
            assert any(line.startswith(f"{spec.name} ") and f" {variant} " in f"{line} "
                       and f"  {spec.purpose or '-'}  " in line
                       and spec.input_description in line and f"  {spec.license}  " in line for line in lines[1:]), \
                (spec.name, variant, result.output)
    assert any(line.startswith("rvm ") and "  people  " in line for line in lines)
    assert any(line.startswith("u2netp ") and "  objects  " in line for line in lines)


# ---- a PyTorch checkpoint with no download source --------------------------------------------


def test_missing_checkpoint_names_its_page_and_the_export_extra(monkeypatch, tmp_path):
    from mtc.errors import MtcError
    from mtc.models.modnet import PHOTOGRAPHIC  # the official weights: a Drive folder, no direct link
    from mtc.weights import fetch_weights

    monkeypatch.setenv("MTC_CACHE", str(tmp_path / "cache"))
    with pytest.raises(MtcError) as info:
        fetch_weights(PHOTOGRAPHIC)
    assert "no download source is known for modnet_photographic_portrait_matting.ckpt" in info.value.message
    assert PHOTOGRAPHIC.download_page in info.value.hint and "--weights PATH" in info.value.hint
    assert "pip install 'mtc[export]'" in info.value.hint
    assert "\n" not in str(info.value)


def test_missing_onnx_file_does_not_ask_for_torch(monkeypatch, tmp_path):
    from mtc.errors import MtcError
    from mtc.weights import WeightFile, fetch_weights

    monkeypatch.setenv("MTC_CACHE", str(tmp_path / "cache"))
    weight = WeightFile(filename="model.onnx", sha256=None, size=None, license="MIT", sources=(),
                        download_page="https://example.org/model")
    with pytest.raises(MtcError) as info:
        fetch_weights(weight)
    assert "https://example.org/model" in info.value.hint and "mtc[export]" not in info.value.hint


def test_offline_checkpoint_error_names_the_export_extra(monkeypatch, tmp_path):
    from mtc.errors import MtcError
    from mtc.models.modnet import WEBCAM
    from mtc.weights import fetch_weights

    monkeypatch.setenv("MTC_CACHE", str(tmp_path / "cache"))
    with pytest.raises(MtcError) as info:
        fetch_weights(WEBCAM, offline=True)
    assert "--weights PATH" in info.value.hint and "pip install 'mtc[export]'" in info.value.hint
