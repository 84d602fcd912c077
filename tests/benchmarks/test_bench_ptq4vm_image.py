"""benchmarks/bench_ptq4vm_image.py: its verdict and its RESULTS.md section. The run itself
quantizes a real model with PTQ4VM (minutes), so it is not run here."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def bench(script_module):
    with script_module("bench_ptq4vm_image") as module:
        yield module


NOISE_FLOOR = "fp32, input ±1 gray level"


def _result(mad: float) -> dict:
    score = {"mad_vs_fp32": mad, "worst_mad_vs_fp32": 2 * mad, "worst_photo": "a.png", "above_yardstick": 1,
             "mae_vs_gt": 291.5, "median_ms": 40.0, "speed_vs_reference": 1.8}
    made = {"placement": "dense", "method": "ptq4vm", "int8_layers": 40, "quantized_layers": 40, "outlier_convs": 3,
            "seconds": 600, "peak_mib": 2048}
    return {"machine": {"date": "2026-12-04", "cpu": "a CPU", "cores": 2, "onnxruntime": "1.32.0",
                        "libraries": {"openvino": "2026.4"}, "cpu_class": "amx"},
            "threads": 2, "photos": 3, "with_gt": 2, "rounds": 3, "source": "u2netp-fp32",
            "artifacts": {"dense-ptq4vm": made},
            "scores": {"fp32 (ONNX Runtime)": {**score, "mad_vs_fp32": 0.0, "mae_vs_gt": None},
                       "dense-ptq4vm": score},
            "noise_floor": {"label": NOISE_FLOOR, "mad_vs_fp32": 4.5, "worst_mad_vs_fp32": 45.0, "worst_photo": "b.png"}}


@pytest.mark.parametrize(("mad", "verdict"), [(1.5, "met"), (2.5, "missed")])
def test_the_verdict_follows_the_target(bench, mad, verdict):
    (line,) = bench.verdicts(_result(mad))
    assert f"MAD {mad:.2f}" in line and f"({verdict}: <= 2)" in line


def test_the_results_section_holds_every_row(bench, monkeypatch):
    written = {}
    monkeypatch.setattr(bench, "update_results", lambda section, text: written.update({section: text}))
    bench.render(_result(1.5))
    text = written["bench_ptq4vm_image"]
    assert ("| dense-ptq4vm | dense | ptq4vm | 40/40 + 3 outlier float | 10.0 min | 2.0 GB | 1.50 (3.00) | 1/3 "
            "| 291.5 | 1.80× |") in text
    assert "| fp32 (ONNX Runtime) | – | – | – | – | – | 0.00 (3.00) | 1/3 | – | 1.80× |" in text
    assert "class amx" in text and "(met: <= 2)" in text
    assert "moves MAD 4.50 (worst photo 45.00) from its alpha on the clean photos" in text
    assert bench.NOISE_FLOOR == NOISE_FLOOR and "| fp32, input" not in text  # a sentence, not a row


def test_photos_are_counted_above_their_yardstick_when_an_artifact_moves_more_than_noise_does(bench, monkeypatch,
                                                                                            tmp_path):
    """Three photos whose FP32 alpha moves by 0.010, 0.001 and 0.100 for one gray level of noise;
    the INT8 alpha is 0.005 off on every photo: above the yardstick on the second photo only."""
    import numpy as np

    photos = [tmp_path / f"{i}.png" for i in range(3)]
    moved_by = [0.010, 0.001, 0.100]

    class Runner:
        def __init__(self, offset):
            self.offset = offset

        def process(self, frame):
            photo = int(frame[0, 0, 0]) // 10  # the photo's index, unless noise moved it by one
            noisy = frame[0, 0, 0] % 10 != 0
            base = 0.5 + (moved_by[photo] if noisy and self.offset == 0 else 0.0)
            return type("Result", (), {"alpha": np.full((4, 4), base + self.offset, np.float32)})

    monkeypatch.setattr(bench, "runners", lambda folders, threads: {bench.REFERENCE: Runner(0.0),
                                                                    "dense-mse": Runner(0.005)})
    monkeypatch.setattr(bench, "load_photo", lambda path: np.full((4, 4, 3), 10 * photos.index(path), np.uint8))
    monkeypatch.setattr(bench, "one_gray_level_noise", lambda frame, seed: frame + 1)
    scores, floor = bench.score(photos, None, {bench.REFERENCE: tmp_path, "dense-mse": tmp_path}, rounds=1, threads=1)
    assert scores["dense-mse"]["above_yardstick"] == 1
    assert scores[bench.REFERENCE]["above_yardstick"] == 0
    assert floor["worst_photo"] == "2.png"


def test_one_gray_level_noise_moves_values_by_at_most_one_and_stays_in_range(script_module):
    import numpy as np

    with script_module("common") as common:
        frame = np.array([[0, 128, 255] * 2000], np.uint8)
        noisy = common.one_gray_level_noise(frame, seed=0)
        moved = noisy.astype(int) - frame
        assert noisy.dtype == np.uint8 and set(np.unique(moved)) <= {-1, 0, 1}
        assert 0.4 < (moved[:, 1::3] != 0).mean() < 0.6  # mid-gray moves either way half the time
        assert noisy[:, 0::3].min() == 0 and noisy[:, 2::3].max() == 255  # clipped, not wrapped
        assert (common.one_gray_level_noise(frame, seed=0) == noisy).all()

