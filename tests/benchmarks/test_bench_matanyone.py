"""benchmarks/bench_matanyone.py: its bookkeeping (paired speedups, alpha comparison, graph
timing shim) and its RESULTS.md section. The run itself takes minutes (full network), so it is
not run here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_matanyone.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_matanyone", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_matanyone"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_matanyone", None)


def test_speedup_is_the_median_of_paired_ratios(bench):
    # Ratios 2, 4, 1: the median pair's, not a ratio of medians (3 / 1.5).
    assert bench.speedup([2.0, 4.0, 3.0], [1.0, 1.0, 3.0]) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        bench.speedup([1.0], [1.0, 2.0])


def test_compare_alphas_reports_worst_mean_and_tolerance(bench):
    reference = [np.zeros((2, 2), np.float32), np.zeros((2, 2), np.float32)]
    ours = [np.full((2, 2), 1e-5, np.float32), np.array([[0, 0], [0, 4e-4]], np.float32)]
    c = bench.compare_alphas(ours, reference)
    assert c["max_abs_diff"] == pytest.approx(4e-4) and c["mean_abs_diff"] == pytest.approx((1e-5 + 1e-4) / 2)
    assert not c["within_tolerance"] and c["pixels_over_tolerance"] == 1 and c["frames"] == 2
    assert bench.compare_alphas(ours[:1], reference[:1])["within_tolerance"]


def test_timed_graph_adds_each_run_to_its_graph(bench):
    ticks = iter([0.0, 0.5, 1.0, 1.25])

    class Fake:
        name, input_names = "fake", ("image",)

        def run(self, feeds):
            return {"alpha": feeds["image"]}

    account = {}
    timed = bench.TimedGraph(Fake(), "segmenter", account, clock=lambda: next(ticks))
    assert timed.name == "fake" and timed.input_names == ("image",)
    assert timed.run({"image": 3}) == {"alpha": 3}
    timed.run({"image": 4})
    assert account == {"segmenter": pytest.approx(0.75)}


def test_results_markdown_has_the_three_tables(bench):
    engine = {"median_ms": 3000.0, "p90_ms": 3200.0, "fps": 1 / 3, "first_frame_ms": 40000.0,
              "first_frame_cold_ms": 50000.0,
              "graphs_median_ms": {"image_encoder": 800.0, "mask_encoder": 450.0, "memory_readout": 700.0,
                                   "segmenter": 1000.0}}
    ort = {**engine, "speedup_vs_pytorch": 3.5, "first_frame_speedup_vs_pytorch": 2.8,
           "alpha_vs_pytorch": {"max_abs_diff": 2e-5, "mean_abs_diff": 1e-8, "within_tolerance": True}}
    result = {"machine": {"date": "today", "cpu": "CPU", "cores": 2, "onnxruntime": "1.0", "load_average": [2.0, 3.0],
                          "libraries": {"openvino": "2026.1"}},
              "torch": "2.13", "threads": 2, "frames": 6, "rounds": 1,
              "export": {"tiny": False, "parameters": 35249195, "total_s": 200.0, "checkpoint_s": 4.0,
                         "build_onnx_s": 40.0, "compile_s": 156.0, "peak_rss_mb": 1200.0, "artifact_mb": 134.5,
                         "parity": [{"resolution": "128x96", "frames": 12, "alpha_max_abs_diff": 3e-6}]},
              "sizes": [{"resolution": "854x480", "model_size": "848x480",
                         "engines": {"onnxruntime": ort, "pytorch": {**engine, "median_ms": 10500.0}}}],
              "long": [{"backend": "onnxruntime", "resolution": "160x96", "frames": 1000, "median_ms": 120.0,
                        "rss_mb": {"10": 900.0, "100": 910.0, "1000": 911.5}, "growth_mb": 1.5, "flat": True,
                        "ring": {"valid_shape": [1, 5], "valid_sum": 5.0, "pushed": 199}}]}
    text = bench.results_markdown(result)
    assert "| 854x480 (848x480) | onnxruntime | 50.0 | 40.0 | 3000 | 3200 | 0.33 | 3.50× | 2.80× | 2.0e-05 | 1.0e-08 | yes |" in text
    assert "| 854x480 | onnxruntime | 800 | 450 | 700 | 1000 | 3000 |" in text
    assert "| onnxruntime | 160x96 | 1000 | 900 | 910 | 912 | +1.5 | yes | 120 | [1, 5] sum 5, 199 pushed |" in text
    assert "RSS @1000 MB" in text and "openvino 2026.1" in text and "35,249,195 parameters" in text
