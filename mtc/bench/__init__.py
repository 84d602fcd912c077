"""`mtc bench`: throughput, latency, memory, cost and accuracy of an artifact, and CI gates.

    from mtc.bench import BenchConfig, run_bench
    report = run_bench(BenchConfig(folder=Path("artifacts/my-model"), resolutions=((1920, 1080),)))

The measuring core (`measure_model`, `compare_sessions`) takes any session-like object
(``.process(frame)`` returning something with ``.alpha``) and an injectable clock.
"""

from __future__ import annotations

from mtc.bench.accuracy import StreamingMetrics, compare_sessions
from mtc.bench.gates import GATE_KINDS, GateResult, Gates, evaluate_gates, junit_xml, load_gates, parse_gates
from mtc.bench.machine import machine_info
from mtc.bench.measure import measure_end_to_end, measure_model
from mtc.bench.memory import PeakMemory, peak_rss_bytes
from mtc.bench.runner import SCHEMA, BenchConfig, build_report, run_bench
from mtc.bench.stats import latency_stats, nearest_rank

__all__ = [
    "SCHEMA", "BenchConfig", "run_bench", "build_report", "measure_model", "measure_end_to_end", "compare_sessions",
    "StreamingMetrics", "latency_stats", "nearest_rank", "PeakMemory", "peak_rss_bytes", "machine_info",
    "Gates", "GateResult", "GATE_KINDS", "parse_gates", "load_gates", "evaluate_gates", "junit_xml",
]
