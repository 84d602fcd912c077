"""Runtime overhead: mtc.runtime on the FP32 RVM artifact vs a plain ONNX Runtime session.

Both run the same frames of the built-in clip, interleaved block by block in one process,
each with its own recurrent state and with thread spinning off (spinning sessions steal each
other's cores). The plain session does what typical user code does: uint8 HWC -> float NCHW
with numpy, then `session.run`. The claim checked: the runtime is not more than 5% slower.

    python benchmarks/bench_runtime.py [--artifact DIR] [--rounds 6] [--block 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OrtRvm, dump, ensure_artifact, machine, summarize_times, update_results  # noqa: E402

import mtc.runtime  # noqa: E402
from calib_data.builtin_clip import ClipSpec, builtin_clip  # noqa: E402
from mtc.exporters.rvm import MOBILENETV3_ONNX  # noqa: E402
from mtc.weights import fetch_weights  # noqa: E402

CASES = ((512, 288, 1.0), (1920, 1080, 0.25))


def bench_case(artifact: Path, official: Path, width: int, height: int, ratio: float, rounds: int, block: int,
               threads: int) -> dict:
    frames = builtin_clip(ClipSpec(width=width, height=height, frames=block))
    runtime = mtc.runtime.load(artifact, backend="onnxruntime", downsample_ratio=ratio, scene_cut_threshold=None, threads=threads,
                               allow_spinning=False)
    plain = OrtRvm(official, ratio, threads)
    runners = {"mtc_runtime": lambda f: runtime.process(f), "plain_ort": lambda f: plain.process(f)}
    for run in runners.values():  # warm-up: allocations and first-run kernels
        run(frames[0])
    times: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(rounds):
        order = list(runners) if r % 2 == 0 else list(reversed(runners))  # alternate who goes first
        for name in order:
            for frame in frames:
                t0 = time.perf_counter()
                runners[name](frame)
                times[name].append(time.perf_counter() - t0)
    stats = {name: summarize_times(t) for name, t in times.items()}
    ratio_fps = stats["mtc_runtime"]["fps"] / stats["plain_ort"]["fps"]
    return {"resolution": f"{width}x{height}", "downsample_ratio": ratio, **stats,
            "runtime_vs_plain_fps": ratio_fps, "within_5pct": ratio_fps >= 0.95}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, help="FP32 RVM artifact (exported if omitted)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--block", type=int, default=8, help="frames per interleaved block")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the JSON here")
    parser.add_argument("--no-results", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args()

    artifact = ensure_artifact(args.artifact)
    official = fetch_weights(MOBILENETV3_ONNX)
    cases = [bench_case(artifact, official, w, h, r, args.rounds, args.block, args.threads) for w, h, r in CASES]
    result = {"benchmark": "runtime_overhead", "machine": machine(), "threads": args.threads,
              "rounds": args.rounds, "block": args.block, "cases": cases}
    dump(result, args.json)
    if not args.no_results:
        rows = "\n".join(
            f"| {c['resolution']} | {c['downsample_ratio']} | {c['plain_ort']['fps']:.1f} | {c['mtc_runtime']['fps']:.1f} "
            f"| {c['runtime_vs_plain_fps']:.3f} | {'yes' if c['within_5pct'] else 'NO'} |" for c in cases)
        m = result["machine"]
        update_results("bench_runtime", f"""## Runtime overhead: mtc.runtime vs plain ONNX Runtime (RVM MobileNetV3, FP32)

`python benchmarks/bench_runtime.py` — {m['date']}, {m['cpu']}, {m['cores']} cores, {args.threads} threads,
onnxruntime {m['onnxruntime']}. Median per-frame time over {args.rounds} interleaved rounds of {args.block} frames
(built-in clip, recurrent state carried, spinning off). FPS includes uint8→float conversion for both.

| resolution | ratio | plain ORT FPS | mtc.runtime FPS | runtime / plain | within 5% |
|---|---|---|---|---|---|
{rows}
""")


if __name__ == "__main__":
    main()
