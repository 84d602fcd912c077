"""benchmarks/bench_scaleout.py: concurrent streams, the ratios, Triton's statistics, RESULTS.md."""

from __future__ import annotations

import importlib.util
import sys
import threading
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_scaleout.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_scaleout", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_scaleout"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_scaleout", None)


def test_drive_runs_the_streams_at_once_and_times_every_call(bench):
    inside, most, lock = [0], [0], threading.Lock()
    seen = []

    def stream(i, frame):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
            seen.append((i, frame))
        threading.Event().wait(0.02)
        with lock:
            inside[0] -= 1

    out = bench.drive([stream, stream, stream], ["a", "b"])
    assert out["frames"] == 6 and len(out["latencies"]) == 6
    assert sorted(seen) == [(0, "a")] * 3 + [(1, "b")] * 3
    assert most[0] == 3  # concurrent, not one after another
    assert 0.035 < out["wall"] < 1.0 and all(s >= 0.015 for s in out["latencies"])

    def broken(i, frame):
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        bench.drive([stream, broken], ["a"])


def test_stream_summary_pairs_rounds_and_takes_the_latency_difference(bench):
    triton = [{"frames": 10, "wall": 2.0, "latencies": [0.21, 0.20]}, {"frames": 10, "wall": 1.0, "latencies": [0.22]}]
    inprocess = [{"frames": 10, "wall": 1.0, "latencies": [0.19, 0.18]}, {"frames": 10, "wall": 1.0,
                                                                         "latencies": [0.20]}]
    s = bench.stream_summary(triton, inprocess)
    assert s["triton_fps"] == pytest.approx(7.5) and s["inprocess_fps"] == pytest.approx(10.0)
    assert s["triton_vs_inprocess"] == pytest.approx(0.75)  # median of the per-round ratios 0.5 and 1.0
    assert s["triton_latency_ms"] == pytest.approx(210) and s["inprocess_latency_ms"] == pytest.approx(190)
    assert s["overhead_ms_per_frame"] == pytest.approx(20)
    assert s["triton_latency_mean_ms"] == pytest.approx(210)
    with pytest.raises(ValueError):
        bench.stream_summary(triton, inprocess[:1])


def test_stats_delta_is_per_request_between_two_replies(bench):
    def reply(count, scale):
        keys = ("success", *bench.STAT_KEYS)
        return {"model_stats": [{"inference_stats": {k: {"count": str(count), "ns": str(scale * (i + 1) * 1_000_000)}
                                                     for i, k in enumerate(keys)}}]}

    d = bench.stats_delta(reply(2, 2), reply(6, 6))  # 4 requests; success 8 ms more in all -> 2 ms each
    assert d["requests"] == 4 and d["success_ms"] == pytest.approx(1.0)
    assert d["queue_ms"] == pytest.approx(2.0) and d["compute_output_ms"] == pytest.approx(5.0)
    assert bench.stats_delta(reply(2, 2), reply(2, 2)) == {"requests": 0}


def test_ray_summary_speedups_against_the_reference(bench):
    runs = {"ref": [{"wall_s": 10.0}, {"wall_s": 12.0}],
            "ray": [{"wall_s": 20.0, "start_s": 4.0, "matte_s": 5.0, "stop_s": 1.0, "pieces": 3},
                    {"wall_s": 12.0, "start_s": 3.0, "matte_s": 6.0, "stop_s": 3.0, "pieces": 3}]}
    s = bench.ray_summary(runs, "ref", 96)
    assert s["ref"]["speedup"] == 1.0 and s["ref"]["fps"] == pytest.approx(96 / 11)
    ray = s["ray"]
    assert ray["wall_s"] == 16.0 and ray["start_s"] == 3.5 and ray["pieces"] == 3
    assert ray["speedup"] == pytest.approx((0.5 + 1.0) / 2)
    assert ray["speedup_without_cluster"] == pytest.approx((2.0 + 2.0) / 2)


def _machine():
    return {"date": "today", "cpu": "Intel(R) Xeon(R) Processor", "cores": 2, "onnxruntime": "1.0",
            "isa": ["avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_int8"]}


def test_results_markdown_tables_and_skips(bench):
    case = {"streams": 1, "instances": 1, "triton_fps": 8.0, "inprocess_fps": 9.0, "triton_vs_inprocess": 0.89,
            "triton_latency_ms": 125.0, "inprocess_latency_ms": 111.0, "overhead_ms_per_frame": 14.0,
            "server": {"queue_ms": 0.2, "outside_ms": 3.5}}
    row = {"wall_s": 20.0, "start_s": 4.0, "matte_s": 15.0, "stop_s": 1.0, "fps": 9.6, "speedup": 0.5,
           "speedup_without_cluster": 0.67}
    result = {"machine": _machine(), "seconds": 300.0,
              "triton": {"resolution": "512x288", "frames_per_stream": 12, "rounds": 5, "cases": [case]},
              "ray": {"resolution": "256x144", "clips": 4, "clip_frames": 48, "repeats": 3,
                      "library": {"mtc_run_sequential": {"wall_s": 10.0, "fps": 19.2, "speedup": 1.0},
                                  "ray_1_worker": row, "ray_2_workers": row},
                      "long_video": {"frames": 192, "shots": 4, "min_piece_frames": 48,
                                     "unsplit_2_workers": {**row, "speedup": 1.0},
                                     "split_2_workers": {**row, "speedup": 1.1, "pieces": 4}}}}
    text = bench.results_markdown(result)
    assert "Intel(R) Xeon(R) Processor (class amx), 2 cores" in text and "5.0 min" in text
    assert "| 1 | 1 | 8.0 | 9.0 | 0.89 | 125 | 111 | +14.0 | 0.2 | 3.5 |" in text
    assert "| `mtc run` per clip, in turn | 10.0 | – | – | – | 19.2 | 1.00 |" in text
    assert "| Ray, 2 workers | 20.0 | 4.0 | 15.0 | 1.0 | 9.6 | 0.50 (0.67 without the cluster) |" in text
    assert "split (4 pieces) | 20.0 | 4.0 | 15.0 | 1.0 | 9.6 | 1.10" in text
    skipped = bench.results_markdown({"machine": {**_machine(), "isa": []}, "seconds": 1.0,
                                      "triton": {"skipped": "no Triton server environment"},
                                      "ray": {"skipped": "ray is not installed"}})
    assert "Triton part skipped: no Triton server environment" in skipped
    assert "Ray part skipped: ray is not installed" in skipped and "Processor (class other), 2 cores" in skipped
