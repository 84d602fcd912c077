"""benchmarks/bench_ptq4vm.py: which artifact its verdicts compare PTQ4VM with. The run itself
quantizes the real RVM several times (tens of minutes), so it is not run here."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def bench(script_module):
    with script_module("bench_ptq4vm") as module:
        yield module


def _row(label: str, mad: float, dtssd: float) -> dict:
    return {"label": label, "speedup_vs_ort_fp32": 2.0, "vs_fp32": {"mad": mad, "dtssd": dtssd, "grad": 0.1},
            "vs_gt": None}


def _result(bench, rows: list[dict]) -> dict:
    made = {name: {**spec, "seconds": 300, "peak_mib": 2048, "int8_layers": 85, "quantized_layers": 85}
            for name, spec in bench.configurations(("mse",)).items()}
    folders = {name: f"/work/rvm-int8-{name}" for name in made}
    return {"artifacts": made, "folders": folders,
            "runs": {"built-in clip": {"cases": [{"resolution": "512x288", "configs": rows}]}}}


def test_ptq4vm_is_compared_with_the_plain_calibrators_of_its_own_plan_only(bench):
    rows = [_row("mtc_int8_openvino_rvm-int8-speed", 0.3, 0.3),
            _row("mtc_int8_openvino_rvm-int8-dense-mse", 1.5, 1.6),
            _row("mtc_int8_openvino_rvm-int8-dense-ptq4vm", 1.2, 1.0),
            # Another placement (conv outputs quantized too): never "the best plain calibrator".
            _row("mtc_int8_openvino_rvm-int8-dense-outputs-mse", 0.9, 0.9)]
    lines = bench.verdicts(_result(bench, rows))
    comparison = next(line for line in lines if "best plain calibrator" in line)
    assert "dense-mse: MAD 1.50 / dtSSD 1.60" in comparison
    assert "dtSSD 38% lower, MAD not worse (met" in comparison


def test_the_placement_column_names_the_quantized_conv_outputs(bench):
    made = bench.configurations(("mse",))
    assert bench.placement_label(made["dense-mse"]) == "dense"
    assert bench.placement_label(made["dense-outputs-mse"]) == "dense + conv outputs"
    assert bench.preset_of(made["dense-outputs-mse"]).quantize_outputs
    assert not bench.preset_of(made["dense-mse"]).quantize_outputs


def test_the_layer_column_names_the_float_convs_of_split_outlier_channels(bench):
    assert bench.layers_label({"int8_layers": 85, "quantized_layers": 85}) == "85/85"
    assert bench.layers_label({"int8_layers": 119, "quantized_layers": 119, "outlier_convs": 3}) == \
        "119/119 + 3 outlier float"


def test_a_learned_model_with_more_flicker_than_the_plain_one_reads_higher_not_negative_lower(bench):
    rows = [_row("mtc_int8_openvino_rvm-int8-dense-mse", 0.7, 0.7),
            _row("mtc_int8_openvino_rvm-int8-dense-ptq4vm", 0.7, 0.84)]
    comparison = next(line for line in bench.verdicts(_result(bench, rows)) if "best plain calibrator" in line)
    assert "dtSSD 20% higher, MAD not worse (missed" in comparison


def test_the_one_gray_level_yardstick_is_a_row_explained_as_no_peer(bench, monkeypatch):
    rows = [_row("ort_fp32", 0.0, 0.0), _row(bench.ONE_GRAY_LEVEL, 1.1, 0.85),
            _row("mtc_int8_openvino_rvm-int8-dense-ptq4vm", 0.7, 0.7)]
    result = {**_result(bench, rows), "machine": {"date": "2026-12-05", "cpu": "a CPU", "cores": 2,
                                                   "onnxruntime": "1.32.0", "libraries": {},
                                                   "cpu_class": "avx2"},
              "threads": 2, "frames": 16, "rounds": 3}
    written = {}
    monkeypatch.setattr(bench, "update_results", lambda section, text: written.update({section: text}))
    bench.render(result)
    text = written["bench_ptq4vm"]
    assert f"| 512x288 | {bench.ONE_GRAY_LEVEL} | 2.00× | 1.1 | 0.85 |" in text
    assert f"`{bench.ONE_GRAY_LEVEL}` is no peer but a yardstick" in text
    # the verdicts still judge the learned artifact only
    assert any("dense PTQ4VM (fast) vs FP32 MAD 0.70 / dtSSD 0.70" in line for line in bench.verdicts(result))


def test_evalset_tables_show_the_error_away_from_the_subject(bench, monkeypatch):
    row = {**_row("mtc_int8_openvino_rvm-int8-dense-ptq4vm", 0.7, 0.7), "mad_vs_fp32_away_from_subject": 0.25}
    result = {**_result(bench, [row]), "machine": {"date": "2026-12-05", "cpu": "a CPU", "cores": 2,
                                                   "onnxruntime": "1.32.0", "libraries": {},
                                                   "cpu_class": "avx2"},
              "threads": 2, "frames": 16, "rounds": 3}
    result["runs"]["evalset composites (ground truth)"] = {"evalset": "/data/evalset",
                                                           "cases": [{"resolution": "512x288", "configs": [row]}]}
    written = {}
    monkeypatch.setattr(bench, "update_results", lambda section, text: written.update({section: text}))
    bench.render(result)
    builtin, evalset = written["bench_ptq4vm"].split("### evalset composites")
    assert "away from the subject" not in builtin.split("### built-in clip")[1]
    assert "| 0.25 |" in evalset and "farther than 4% of the frame height" in evalset


@pytest.mark.parametrize(("name", "calib", "label"), [
    ("dense-mse-checked", None, "dense, checked on street.mp4"),
    ("dense-mse-calibrated", "street_calib.mp4", "dense, calibrated also on street_calib.mp4, checked on street.mp4"),
    ("dense-ptq4vm-calibrated", "street_calib.mp4",
     "dense, calibrated also on street_calib.mp4, checked on street.mp4")])
def test_footage_artifacts_are_labelled_and_never_the_plain_calibrator_compared(bench, tmp_path, name, calib, label):
    made = bench.configurations(("mse",), tmp_path / "street.mp4", calib and tmp_path / calib)
    assert bench.placement_label(made[name]) == label
    result = _result(bench, [_row("mtc_int8_openvino_rvm-int8-dense-mse", 1.5, 1.6),
                             _row("mtc_int8_openvino_rvm-int8-dense-ptq4vm", 1.2, 1.0),
                             _row(f"mtc_int8_openvino_rvm-int8-{name}", 0.9, 0.9)])
    result["artifacts"][name] = {**made[name], "seconds": 150, "peak_mib": 2048, "int8_layers": 74,
                                 "quantized_layers": 85}
    result["folders"][name] = f"/work/rvm-int8-{name}"
    comparison = next(line for line in bench.verdicts(result) if "best plain calibrator" in line)
    assert "dense-mse: MAD 1.50 / dtSSD 1.60" in comparison


def test_the_calibrated_artifacts_are_checked_on_the_built_in_clip_without_check_footage(bench, tmp_path):
    made = bench.configurations(("mse",), None, tmp_path / "street_calib.mp4")
    assert [made[name]["method"] for name in made if "check" not in made[name] and made[name].get("calib")] == [
        "mse", "ptq4vm"]


def test_ptq4vm_calibrated_on_footage_is_compared_with_mse_on_the_same_data_beside_the_targets(bench, tmp_path):
    made = bench.configurations(("mse",), tmp_path / "street.mp4", tmp_path / "street_calib.mp4")
    result = _result(bench, [_row("mtc_int8_openvino_rvm-int8-dense-mse", 1.5, 1.6),
                             _row("mtc_int8_openvino_rvm-int8-dense-ptq4vm", 1.2, 1.0),
                             _row("mtc_int8_openvino_rvm-int8-dense-mse-calibrated", 1.0, 1.2),
                             _row("mtc_int8_openvino_rvm-int8-dense-ptq4vm-calibrated", 1.1, 0.9)])
    for name in ("dense-mse-calibrated", "dense-ptq4vm-calibrated"):
        result["artifacts"][name] = {**made[name], "seconds": 150, "peak_mib": 2048, "int8_layers": 81,
                                     "quantized_layers": 85}
        result["folders"][name] = f"/work/rvm-int8-{name}"
    lines = bench.verdicts(result)
    footage = [line for line in lines if "calibrated also on street_calib.mp4" in line]
    assert footage == ["  - beside the targets, both calibrated also on street_calib.mp4: PTQ4VM MAD 1.10 / dtSSD 0.90 "
                       "vs MSE 1.00 / 1.20 (dtSSD 25% lower, MAD worse)"]
    # the targets still judge the artifact learned on the built-in data, against dense-mse
    assert any("dense PTQ4VM (fast) vs FP32 MAD 1.20 / dtSSD 1.00" in line for line in lines)
    assert any("dense-mse: MAD 1.50 / dtSSD 1.60): dtSSD 38% lower, MAD not worse" in line for line in lines)


@pytest.mark.parametrize("flag", ["--check-footage", "--calib-footage"])
def test_footage_from_the_evalset_is_refused(bench, tmp_path, flag):
    import argparse

    evalset = tmp_path / "evalset"
    (evalset / "videos").mkdir(parents=True)
    inside, outside = evalset / "videos" / "a.mp4", tmp_path / "street.mp4"
    inside.write_bytes(b"x")
    outside.write_bytes(b"x")
    parser = argparse.ArgumentParser()
    assert bench.footage_arg(parser, flag, outside, evalset) == outside.resolve()
    assert bench.footage_arg(parser, flag, None, evalset) is None
    with pytest.raises(SystemExit):
        bench.footage_arg(parser, flag, inside, evalset)
    with pytest.raises(SystemExit):
        bench.footage_arg(parser, flag, tmp_path / "missing.mp4", None)


def test_calibrating_and_checking_on_the_same_footage_is_refused(bench, tmp_path):
    import subprocess
    import sys

    video = tmp_path / "street.mp4"
    video.write_bytes(b"x")
    run = subprocess.run([sys.executable, bench.__file__, "--check-footage", str(video), "--calib-footage", str(video)],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "are the same video" in run.stderr


def test_the_thorough_arm_learns_longer_and_is_judged_against_the_targets_beside_fast(bench, tmp_path):
    made = bench.configurations(("mse",), tmp_path / "street.mp4", tmp_path / "street_calib.mp4", thorough=True)
    assert "dense-ptq4vm-thorough" not in bench.configurations(("mse",))
    fast, thorough = (bench.preset_of(made[name]).learning for name in ("dense-ptq4vm", "dense-ptq4vm-thorough"))
    assert thorough.iterations > fast.iterations and thorough.gac_iterations > fast.gac_iterations
    result = _result(bench, [_row("mtc_int8_openvino_rvm-int8-dense-mse", 1.5, 1.6),
                             _row("mtc_int8_openvino_rvm-int8-dense-ptq4vm", 1.2, 1.0),
                             _row("mtc_int8_openvino_rvm-int8-dense-ptq4vm-thorough", 0.45, 0.4),
                             _row("mtc_int8_openvino_rvm-int8-dense-mse-calibrated", 1.0, 1.2),
                             _row("mtc_int8_openvino_rvm-int8-dense-ptq4vm-calibrated", 1.1, 0.9)])
    for name in ("dense-ptq4vm-thorough", "dense-mse-calibrated", "dense-ptq4vm-calibrated"):
        result["artifacts"][name] = {**made[name], "seconds": 1800, "peak_mib": 2048, "int8_layers": 85,
                                     "quantized_layers": 85}
        result["folders"][name] = f"/work/rvm-int8-{name}"
    lines = bench.verdicts(result)
    assert "- thorough preset on 2 cores: 30.0 min (no time target)" in lines
    assert any("dense PTQ4VM (fast) vs FP32 MAD 1.20 / dtSSD 1.00 (missed" in line for line in lines)
    assert any("dense PTQ4VM (thorough) vs FP32 MAD 0.45 / dtSSD 0.40 (met" in line for line in lines)
    assert sum("dense-mse: MAD 1.50 / dtSSD 1.60" in line for line in lines) == 2
    # the comparison on footage (the fast preset's) stays under the fast preset's target, before the thorough one
    order = [next(i for i, line in enumerate(lines) if text in line)
             for text in ("(fast) vs FP32", "calibrated also on street_calib.mp4", "(thorough) vs FP32")]
    assert order == sorted(order)
