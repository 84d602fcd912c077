"""benchmarks/bench_runtime.py: the overhead and pipeline bookkeeping, and its RESULTS.md section."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_runtime.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_runtime", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_runtime"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_runtime", None)


def test_overhead_is_the_median_per_frame_share(bench):
    # Per-frame shares 0.05, 0.25, 0.0: the median is the first frame's, not a ratio of medians.
    o = bench.overhead_summary([1.0, 2.0, 4.0], [0.95, 1.5, 4.0])
    assert o["frames"] == 3 and o["share"] == pytest.approx(0.05)
    assert o["total_median_ms"] == pytest.approx(2000) and o["backend_median_ms"] == pytest.approx(1500)
    assert o["within_10pct"]
    assert not bench.overhead_summary([1.0, 1.0], [0.8, 0.8])["within_10pct"]
    with pytest.raises(ValueError):
        bench.overhead_summary([1.0, 2.0], [0.5])


def test_pipeline_ratio_compares_medians_over_rounds_against_the_faster_model_only_session(bench):
    model = {"spinning": [10.0, 12.0, 11.0], "no_spinning": [10.0, 10.5, 10.0]}
    p = bench.pipeline_summary(model, [9.0, 10.5, 8.0], [10.0, 9.0, 9.5], "veryfast")
    assert (p["model_only_fps"], p["pipeline_fps"], p["pipeline_model_fps"]) == (11.0, 9.0, 9.5)
    assert p["model_only_by_session"] == {"spinning": 11.0, "no_spinning": 10.0}
    assert p["pipeline_vs_model"] == pytest.approx(9 / 11) and not p["within_90pct"]
    assert p["rounds"]["pipeline_fps"] == [9.0, 10.5, 8.0] and p["x264_preset"] == "veryfast"
    assert bench.pipeline_summary({"a": [10.0], "b": [8.0]}, [9.0], [9.0], "ultrafast")["within_90pct"]
    assert not bench.pipeline_summary({"a": [8.0], "b": [10.0]}, [8.9], [9.0], "ultrafast")["within_90pct"]


def test_timed_backend_times_run_and_delegates_the_rest(bench):
    ticks = iter([1.0, 1.25, 5.0, 5.5])

    class Fake:
        name, input_names = "fake", ("src",)

        def run(self, feeds):
            return {"pha": feeds["src"]}

    timed = bench.TimedBackend(Fake(), clock=lambda: next(ticks))
    assert timed.name == "fake" and timed.input_names == ("src",)
    assert timed.run({"src": 7}) == {"pha": 7} and timed.seconds == 0.25
    timed.run({"src": 8})
    assert timed.seconds == 0.5


def test_results_markdown_has_the_three_tables(bench):
    def case(resolution, ratio, share, pipeline_ratio):
        return {"resolution": resolution, "downsample_ratio": ratio, "plain_ort": {"fps": 10.0},
                "mtc_runtime": {"fps": 10.2}, "runtime_vs_plain_fps": 1.02, "within_5pct": True,
                "overhead": {"total_median_ms": 100.0, "backend_median_ms": 100 * (1 - share), "share": share,
                             "within_10pct": share <= 0.10},
                "pipeline": [{"x264_preset": preset, "model_only_fps": 10.0, "pipeline_fps": 10 * pipeline_ratio,
                              "pipeline_model_fps": 9.6, "pipeline_vs_model": pipeline_ratio,
                              "within_90pct": pipeline_ratio >= 0.90}
                             for preset in ("veryfast", "ultrafast")]}

    result = {"machine": {"date": "today", "cpu": "CPU", "cores": 2, "onnxruntime": "1.0"}, "threads": 2,
              "rounds": 6, "block": 8, "clip_frames": 48,
              "cases": [case("512x288", 1.0, 0.02, 0.95), case("1920x1080", 0.25, 0.125, 0.80)]}
    text = bench.results_markdown(result)
    assert "| 512x288 | 1.0 | 10.0 | 10.2 | 1.020 | yes |" in text
    assert "| 512x288 | 1.0 | 100.0 | 98.0 | 2.0% | yes |" in text
    assert "| 1920x1080 | 0.25 | 100.0 | 87.5 | 12.5% | NO |" in text
    assert "| 512x288 | 1.0 | veryfast | 10.0 | 9.5 | 9.6 | 0.950 | yes |" in text
    assert "| 1920x1080 | 0.25 | ultrafast | 10.0 | 8.0 | 9.6 | 0.800 | NO |" in text
    assert "48-frame built-in clip" in text
