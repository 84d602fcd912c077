"""INT8/FP16 quality and speed: mtc's quantizer vs ONNX Runtime's stock quantize_static on RVM.

Every configuration is checked the same way mtc's gates check it: alpha vs the FP32 artifact on
held-out built-in clips (other motion than calibration) at 512x288 (ratio 1.0) and 1920x1080
(ratio 0.25), each model with its own recurrent state; FPS on ONNX Runtime CPU, interleaved with
FP32 on the same frames. The stock baseline is quantize_static (QDQ, per-channel, min-max,
calibrated on the same built-in clip with states carried).

The last row repeats the speed preset on the alpha-only export (`mtc export rvm --alpha-only`:
no foreground output, alpha bit-identical), timed against the alpha-only FP32 export.

    python benchmarks/bench_quant.py [--artifact artifacts/rvm] [--methods mse,minmax,percentile,entropy]
        [--no-alpha-only]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_peers import stock_int8  # noqa: E402
from common import dump, machine, ran_on, update_results  # noqa: E402

from mtc.artifact.manifest import read_manifest  # noqa: E402
from mtc.backends import OrtBackend  # noqa: E402
from mtc.models.export import export_model  # noqa: E402
from mtc.models.rvm import MOBILENETV3_ONNX  # noqa: E402
from mtc.quant.checks import ReferenceAlphas  # noqa: E402
from mtc.quant.config import Fallback, Gates, Int8Config, preset  # noqa: E402
from mtc.quant.data_plan import DataPlan, check_clips  # noqa: E402
from mtc.quant.pipeline import quantize_artifact  # noqa: E402
from mtc.quant.speed import interleaved_fps  # noqa: E402
from mtc.weights import cache_dir, fetch_weights  # noqa: E402

NO_GATES = Gates(max_mad=None, max_dtssd=None)
NO_FALLBACK = Fallback(enabled=False)


def fps_vs_fp32(io, fp32: Path, candidate: Path, clips, rounds: int = 8) -> list[tuple[float, float]]:
    """(candidate FPS, FP32 FPS) per clip, interleaved frame by frame on the same frames."""
    models = {"candidate": ("onnxruntime", candidate), "fp32": ("onnxruntime", fp32)}
    speeds = [interleaved_fps(io, models, clip, rounds=rounds) for clip in clips]
    return [(s["candidate"], s["fp32"]) for s in speeds]


def row(name: str, check, speeds, seconds: float, layers: str) -> dict:
    return {"configuration": name, "layers_int8": layers, "calibration_s": seconds,
            "clips": [{"clip": c.name, "mad": c.mad, "dtssd": c.dtssd, "fps": s[0], "fps_fp32": s[1]}
                      for c, s in zip(check.clips, speeds)]}


def config_row(name: str, source: Path, out: Path, precision: str, config, gates: Gates, data: DataPlan,
               reference: ReferenceAlphas, fallback: Fallback = NO_FALLBACK) -> dict:
    """Quantize the FP32 artifact `source` into `out`; score it against `reference` and time it
    against `source`, interleaved."""
    started = time.perf_counter()
    outcome = quantize_artifact(source, out, precision=precision, config=config, gates=gates, fallback=fallback,
                                data=data)
    seconds = time.perf_counter() - started
    model = out / ("model.onnx" if outcome.passed else "rejected.onnx")
    int8 = outcome.report.get("int8")
    layers = f"{int8['int8_layers']}/{int8['quantized_layers']}" if int8 else "-"
    check = reference.check(OrtBackend(model), NO_GATES, with_grad=False)
    fp32 = source / read_manifest(source).model_file
    print(f"{name}: done in {seconds:.0f} s", file=sys.stderr)
    return row(name, check, fps_vs_fp32(reference.io, fp32, model, reference.clips), seconds, layers)


def alpha_only_row(manifest, clips, data: DataPlan) -> dict:
    """The speed preset on the alpha-only export, scored and timed against the alpha-only FP32
    export (whose alpha is bit-identical to the full export's)."""
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_model(manifest.model, variant=manifest.variant, output=Path(tmp) / "fp32", alpha_only=True)
        reference = ReferenceAlphas(read_manifest(fp32).io, OrtBackend(fp32 / "model.onnx"), clips)
        return config_row("mtc speed / mse, alpha-only export (FPS vs FP32 alpha-only)", fp32, Path(tmp) / "int8",
                          "int8", preset("speed"), NO_GATES, data, reference)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, default=Path("artifacts/rvm"), help="FP32 RVM artifact")
    parser.add_argument("--methods", default="mse,minmax,percentile,entropy")
    parser.add_argument("--calib-frames", type=int, default=24)
    parser.add_argument("--no-alpha-only", action="store_true", help="skip the alpha-only export row")
    parser.add_argument("--json")
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()

    manifest = read_manifest(args.artifact)
    io, fp32 = manifest.io, args.artifact / manifest.model_file
    data = DataPlan(calib_frames=args.calib_frames,
                    settings=tuple((c.width, c.height, c.downsample_ratio) for c in manifest.checks()))
    reference = ReferenceAlphas(io, OrtBackend(fp32), check_clips(io, data))
    rows = []

    official = fetch_weights(MOBILENETV3_ONNX)
    cases = [(w, h, r) for w, h, r in data.settings]
    for stale in (cache_dir() / "peers").glob("rvm_int8_qdq_*.onnx"):
        stale.unlink()  # time a fresh calibration
    started = time.perf_counter()
    stock = stock_int8(official, cases, args.calib_frames)
    seconds = time.perf_counter() - started
    check = reference.check(OrtBackend(stock), NO_GATES, with_grad=False)
    rows.append(row("ORT quantize_static (QDQ, per-channel, min-max)", check,
                    fps_vs_fp32(io, fp32, stock, reference.clips), seconds, "all"))

    # Run first, listed last: a failure here costs minutes, not the whole run.
    alpha_row = None if args.no_alpha_only else alpha_only_row(manifest, reference.clips, data)

    # The default (mse) row spends the speed preset's float budget; the rows that compare range
    # methods and equalization run without it, against the "float budget off" row.
    configs = [(f"mtc speed / {m}" + ("" if m == "mse" else ", float budget off"), "int8",
                preset("speed", method=m, float_budget=None if m == "mse" else 0.0))
               for m in args.methods.split(",")]
    configs += [("mtc speed / mse, float budget off (--float-budget 0)", "int8",
                 preset("speed", float_budget=0.0)),
                ("mtc speed / mse, no concat equalization, float budget off", "int8",
                 preset("speed", equalize_concats=False, float_budget=0.0)),
                ("mtc speed / mse, GPTQ weights", "int8", preset("speed", weight_rounding="gptq")),
                ("mtc tensorrt / mse (gated, fallback)", "int8", preset("tensorrt")), ("mtc fp16", "fp16", None)]
    with tempfile.TemporaryDirectory() as tmp:
        for name, precision, config in configs:
            out = Path(tmp) / name.replace(" ", "_").replace("/", "")
            gates = Gates(max_mad=0.8, max_dtssd=0.8) if "gated" in name else NO_GATES
            rows.append(config_row(name, args.artifact, out, precision, config or Int8Config(), gates, data, reference,
                                   Fallback() if "gated" in name else NO_FALLBACK))
    if alpha_row is not None:
        rows.append(alpha_row)

    result = {"benchmark": "quantization", "machine": machine(), "calib_frames": args.calib_frames, "rows": rows}
    dump(result, args.json)
    if args.no_results:
        return
    stock_row = rows[0]["clips"]
    lines = []
    for r in rows:
        cells = []
        for c, s in zip(r["clips"], stock_row):
            better = (s["mad"] + s["dtssd"]) / max(c["mad"] + c["dtssd"], 1e-9)
            cells.append(f"{c['mad']:.2f} | {c['dtssd']:.2f} | {c['fps']:.1f} (×{c['fps'] / c['fps_fp32']:.2f}) | ×{better:.1f}")
        lines.append(f"| {r['configuration']} | {r['layers_int8']} | " + " | ".join(cells) + f" | {r['calibration_s']:.0f} |")
    m = result["machine"]
    update_results("bench_quant", f"""## Quantization: mtc vs ONNX Runtime quantize_static (RVM MobileNetV3)

{ran_on(result, 'python benchmarks/bench_quant.py')}, onnxruntime {m['onnxruntime']}.
Alpha error vs the FP32 artifact on held-out built-in clips (other motion than calibration), each model with
its own recurrent state: MAD ×1e3, dtSSD ×1e2. FPS: ONNX Runtime CPU, 2 threads, median frame time over 8 rounds
of 8 frames, interleaved frame by frame with FP32 on the same frames. "vs stock": how many times lower MAD + dtSSD is than quantize_static's.
Calibration time includes checks (and, for the gated preset, the sensitivity search).
Targets (issue 4): MAD ≤ 0.8 and dtSSD ≤ 0.8 at both sizes, ≥ 3× better than stock, INT8 ≥ 1.5× FP32 FPS.

| configuration | INT8 layers | MAD 512×288 | dtSSD | FPS | vs stock | MAD 1920×1080 | dtSSD | FPS | vs stock | calibration s |
|---|---|---|---|---|---|---|---|---|---|---|
""" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
