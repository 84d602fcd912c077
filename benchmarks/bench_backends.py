"""CPU backends on the FP32 RVM artifact: ONNX Runtime vs OpenVINO FP32 vs OpenVINO BF16.

All runners are mtc.runtime sessions over the same frames of the built-in clip, interleaved
block by block in one process (the order alternates every round), each carrying its own
recurrent state, ONNX Runtime with thread spinning off. OpenVINO runs with static shapes per
resolution (the runtime's default); "openvino_fp32_dynamic" is the same model compiled once
with dynamic shapes, to show what static shapes buy. BF16 is asked for explicitly.
Reported: median FPS per runner, and the alpha error of every runner against ONNX Runtime
FP32 over the first round's frames (MAD x1e3 via mtc.metrics.mad, and max |diff|).
The result decides the CPU default of `backend="auto"` (mtc/runtime/backends/select.py).

    python benchmarks/bench_backends.py [--artifact DIR] [--rounds 6] [--block 8] [--json out.json]
    python benchmarks/bench_backends.py --from-json out.json    # re-render RESULTS.md only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import dump, ensure_artifact, machine, ran_on, summarize_times, update_results  # noqa: E402

import mtc.runtime  # noqa: E402
from mtc.backends.openvino.session import OpenVinoBackend  # noqa: E402
from mtc.data.builtin_clip import ClipSpec, builtin_clip  # noqa: E402
from mtc.metrics import mad  # noqa: E402
from mtc.runtime.session import MattingSession  # noqa: E402

CASES = ((512, 288, 1.0), (1920, 1080, 0.25))
REFERENCE = "onnxruntime_fp32"


def make_sessions(artifact: Path, ratio: float, threads: int, dynamic: bool) -> dict[str, MattingSession]:
    common = {"downsample_ratio": ratio, "scene_cut_threshold": None, "threads": threads}
    sessions = {
        REFERENCE: mtc.runtime.load(artifact, backend="onnxruntime", allow_spinning=False, **common),
        "openvino_fp32": mtc.runtime.load(artifact, backend="openvino", precision="fp32", **common),
        "openvino_bf16": mtc.runtime.load(artifact, backend="openvino", precision="bf16", **common),
    }
    if dynamic:
        manifest = sessions[REFERENCE].manifest
        backend = OpenVinoBackend(artifact / manifest.model_file, io=manifest.io, precision="fp32", threads=threads,
                                  static_shapes=False)
        sessions["openvino_fp32_dynamic"] = MattingSession(manifest.io, backend, downsample_ratio=ratio,
                                                           scene_cut_threshold=None)
    return sessions


def bench_case(artifact: Path, width: int, height: int, ratio: float, rounds: int, block: int, threads: int,
               dynamic: bool) -> dict:
    frames = builtin_clip(ClipSpec(width=width, height=height, frames=block))
    sessions = make_sessions(artifact, ratio, threads, dynamic)
    first_frame_s = {}
    for name, session in sessions.items():  # warm-up: compilation, allocations, first-run kernels
        t0 = time.perf_counter()
        session.process(frames[0])
        first_frame_s[name] = time.perf_counter() - t0
        session.process(frames[1])
    times: dict[str, list[float]] = {name: [] for name in sessions}
    alphas: dict[str, list[np.ndarray]] = {name: [] for name in sessions}
    for r in range(rounds):
        order = list(sessions) if r % 2 == 0 else list(reversed(sessions))
        for name in order:
            session = sessions[name]
            session.reset()  # every runner sees the same state history in every round
            for frame in frames:
                t0 = time.perf_counter()
                matte = session.process(frame)
                times[name].append(time.perf_counter() - t0)
                if r == 0:
                    alphas[name].append(matte.alpha.copy())
    stats = {name: summarize_times(t) for name, t in times.items()}
    reference = np.stack(alphas[REFERENCE])
    for name in sessions:
        clip = np.stack(alphas[name])
        stats[name]["alpha_mad_x1e3_vs_ort_fp32"] = mad(clip, reference)
        stats[name]["alpha_max_abs_vs_ort_fp32"] = float(np.abs(clip - reference).max())
        stats[name]["fps_vs_ort_fp32"] = stats[name]["fps"] / stats[REFERENCE]["fps"]
        stats[name]["first_frame_s"] = first_frame_s[name]
        stats[name]["backend"] = sessions[name].backend.describe()
    return {"resolution": f"{width}x{height}", "downsample_ratio": ratio, "runners": stats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, help="FP32 RVM artifact (exported if omitted)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--block", type=int, default=8, help="frames per interleaved block")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-dynamic", action="store_true", help="skip the dynamic-shape OpenVINO runner")
    parser.add_argument("--json", help="also write the JSON here")
    parser.add_argument("--no-results", action="store_true", help="do not update RESULTS.md")
    parser.add_argument("--from-json", type=Path, help="re-render RESULTS.md from an earlier run's JSON, measure nothing")
    args = parser.parse_args()

    if args.from_json:
        render(json.loads(args.from_json.read_text()))
        return
    import openvino

    artifact = ensure_artifact(args.artifact)
    cases = [bench_case(artifact, w, h, r, args.rounds, args.block, args.threads, not args.no_dynamic)
             for w, h, r in CASES]
    result = {"benchmark": "cpu_backends", "machine": {**machine(), "openvino": openvino.__version__},
              "threads": args.threads, "rounds": args.rounds, "block": args.block, "cases": cases}
    dump(result, args.json)
    if not args.no_results:
        render(result)


def render(result: dict) -> None:
    cases = result["cases"]
    rows = []
    for case in cases:
        for name, s in case["runners"].items():
            rows.append(f"| {case['resolution']} | {case['downsample_ratio']} | {name} | {s['fps']:.1f} "
                        f"| {s['fps_vs_ort_fp32']:.2f} | {s['alpha_mad_x1e3_vs_ort_fp32']:.2g} "
                        f"| {s['alpha_max_abs_vs_ort_fp32']:.1e} | {s['first_frame_s']:.2f} |")
    m = result["machine"]
    update_results("bench_backends", f"""## CPU backends: ONNX Runtime vs OpenVINO FP32 / BF16 (RVM MobileNetV3, FP32 artifact)

{ran_on(result, 'python benchmarks/bench_backends.py')} ({', '.join(m['isa'])}),
{result['threads']} threads, onnxruntime {m['onnxruntime']}, openvino {m['openvino']}. Median per-frame time of
mtc.runtime sessions over {result['rounds']} interleaved rounds of {result['block']} frames (built-in clip, state carried
and reset per round, ORT spinning off). OpenVINO: static shapes per resolution unless marked dynamic; BF16 only
when asked. Error: alpha vs ONNX Runtime FP32 on the same frames (MAD x1e3, max |diff|). First frame includes
OpenVINO's compile (cache cold or warm, as found).

| resolution | ratio | runner | FPS | vs ORT | alpha MAD x1e3 | alpha max abs | first frame s |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}
""")


if __name__ == "__main__":
    main()
