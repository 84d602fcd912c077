"""Simulated low-bit quantization (W4A8, W4A4) of RVM, next to PTQ4VM's published W4A8 figures.

No CPU backend runs 4-bit kernels, so every quantized row is a simulation: the FP32 graph in
mtc's torch executor with fake quantization (mtc.quant.lowbit), the first and last quantized
layers at 8 bits, every conv of the `speed` placement quantized (the dense placement). Rows:
FP32 (ONNX Runtime), W8A8, W4A8 with min-max and with MSE ranges and nearest rounding, W4A8 and
W4A4 learned with PTQ4VM's stage 1 (block reconstruction, from the MSE ranges). Each row: alpha MAD x1e3 and
dtSSD x1e2 against FP32 and, with `--evalset`, against ground truth, with the degradation
relative to FP32's own error against ground truth in percent, as PTQ4VM (arXiv 2506.10840)
reports it: +75% MAD, +72% dtSSD for W4A8 on RVM MobileNetV3 (VideoMatte 512x288).

Without `--evalset` the clips are the held-out built-in clip (no ground truth). The default
run (2 clips of 20 frames at 512x288, 12 calibration frames, 50 steps per block) takes about
15 minutes on 2 cores.

    python benchmarks/bench_lowbit.py [--artifact artifacts/rvm-mobilenetv3-fp32] [--evalset ../shared/evalset]
        [--clips 2] [--frames 20] [--size 512x288] [--calib-frames 12] [--iterations 50] [--json F] [--no-results]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_peers import evalset_clips  # noqa: E402
from common import dump, ensure_artifact, machine, ran_on, update_results  # noqa: E402

from mtc import metrics  # noqa: E402
from mtc.artifact.manifest import read_manifest  # noqa: E402
from mtc.backends import OrtBackend  # noqa: E402
from mtc.quant.calibration import Clip, record_feeds  # noqa: E402
from mtc.quant.checks import run_alphas  # noqa: E402
from mtc.quant.config import preset, with_recipe  # noqa: E402
from mtc.quant.data_plan import DataPlan, calibration_clips, check_clips  # noqa: E402
from mtc.quant.lowbit import (  # noqa: E402
    SimulatedBackend,
    calibrated_plan,
    dense_config,
    learning_samples,
    simulate,
)

log = logging.getLogger("bench_lowbit")

# PTQ4VM (arXiv 2506.10840), RVM MobileNetV3 on VideoMatte 512x288, simulated: (MAD, dtSSD) vs GT.
PUBLISHED = {"fp32": (6.08, 1.36), "w8a8": (6.03, 1.46), "w4a8": (10.61, 2.34)}


def published_degradation() -> dict:
    """PTQ4VM's rows as error against ground truth relative to its FP32's, in percent
    (W4A8: MAD +75%, dtSSD +72%)."""
    mad, dtssd = PUBLISHED["fp32"]
    return {mode: {"mad_pct": 100 * (m - mad) / mad, "dtssd_pct": 100 * (d - dtssd) / dtssd}
            for mode, (m, d) in PUBLISHED.items() if mode != "fp32"}


def parse_size(text: str) -> tuple[int, int]:
    width, height = text.lower().split("x")
    return int(width), int(height)


def load_clips(args, io) -> tuple[list[Clip], list[np.ndarray] | None]:
    """Evalset composites with their ground truth, or the held-out built-in clip without."""
    width, height = args.size
    if args.evalset is None:
        data = DataPlan(check_frames=args.frames, settings=((width, height, args.ratio),))
        return check_clips(io, data)[: args.clips], None
    composites = evalset_clips(args.evalset, width, height, args.frames, args.clips)
    clips = [Clip(c.name, np.stack(c.frames), args.ratio) for c in composites]
    return clips, [np.stack(c.gt) for c in composites]


def scores(alphas, fp32, truths) -> list[dict]:
    rows = []
    for i, (alpha, reference) in enumerate(zip(alphas, fp32)):
        row = {"vs_fp32": {"mad": metrics.mad(alpha, reference), "dtssd": metrics.dtssd(alpha, reference)}}
        if truths is not None:
            row["vs_gt"] = {"mad": metrics.mad(alpha, truths[i]), "dtssd": metrics.dtssd(alpha, truths[i])}
        rows.append(row)
    return rows


def mean_of(clips: list[dict], against: str, metric: str) -> float | None:
    values = [c[against][metric] for c in clips if against in c]
    return float(np.mean(values)) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, default=None,
                        help="FP32 RVM artifact [default: artifacts/rvm-mobilenetv3-fp32, exported on first use]")
    parser.add_argument("--evalset", type=Path, help="evalset folder (e.g. ../shared/evalset): GT composites")
    parser.add_argument("--clips", type=int, default=2)
    parser.add_argument("--frames", type=int, default=20, help="frames per clip")
    parser.add_argument("--size", type=parse_size, default=(512, 288), help="WIDTHxHEIGHT of the clips")
    parser.add_argument("--ratio", type=float, default=1.0, help="downsample ratio")
    parser.add_argument("--calib-frames", type=int, default=12, help="built-in calibration frames")
    parser.add_argument("--iterations", type=int, default=50, help="block reconstruction steps per block")
    parser.add_argument("--rounding-weight", type=float, default=None,
                        help="AdaRound regulariser weight [default: ReconstructionConfig's]")
    parser.add_argument("--threads", type=int, default=None, help="torch threads [default: torch's]")
    parser.add_argument("--json")
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from mtc.quant.reconstruct import ReconstructionConfig
    from mtc.quant.torch_graph import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    artifact = ensure_artifact(args.artifact)
    manifest = read_manifest(artifact)
    io, fp32_path = manifest.io, artifact / manifest.model_file
    clips, truths = load_clips(args, io)
    width, height = args.size
    calib = calibration_clips(io, DataPlan(calib_frames=args.calib_frames, settings=((width, height, args.ratio),)))
    feeds = record_feeds(io, fp32_path, calib)
    fp32 = [run_alphas(io, OrtBackend(fp32_path), clip) for clip in clips]
    model = onnx.shape_inference.infer_shapes(onnx.load(str(fp32_path)))
    recipe = manifest.quantization
    image, alpha = io.input_with_role("image").name, io.output_with_role("alpha").name
    learn = ReconstructionConfig(iterations=args.iterations, batch=1)
    if args.rounding_weight is not None:
        learn = dataclasses.replace(learn, rounding_weight=args.rounding_weight)
    samples = learning_samples(feeds, len(feeds))

    def placement(method: str):
        config = dense_config(with_recipe(preset("speed", method=method), recipe.int8_op_types,
                                          recipe.int8_activation_matmuls))
        return config, calibrated_plan(model, feeds, config)

    plans = {method: placement(method) for method in ("mse", "minmax")}
    rows = [{"configuration": "FP32 (ONNX Runtime)", "mode": "fp32", "seconds": 0.0, "clips": scores(fp32, fp32, truths)}]
    cases = [("W8A8 sim, MSE ranges, nearest", 8, 8, "mse", False),
             ("W4A8 sim, min-max ranges, nearest", 4, 8, "minmax", False),
             ("W4A8 sim, MSE ranges, nearest", 4, 8, "mse", False),
             ("W4A8 sim, PTQ4VM stage 1 (from MSE ranges)", 4, 8, "mse", True),
             ("W4A4 sim, PTQ4VM stage 1 (from MSE ranges)", 4, 4, "mse", True)]
    kept = None
    for name, weights, activations, method, learned in cases:
        config, calibrated = plans[method]
        started = time.perf_counter()
        simulated = simulate(calibrated.model, calibrated.plan, calibrated.ranges, samples, weight_bits=weights,
                             activation_bits=activations, activation_type=config.activation_type,
                             learn=learn if learned else None, inputs=[image], outputs=[alpha])
        seconds = time.perf_counter() - started
        kept = {"first": simulated.first, "last": simulated.last, "quantized_layers": len(calibrated.plan.nodes)}
        alphas = [run_alphas(io, SimulatedBackend(simulated.module), clip) for clip in clips]
        rows.append({"configuration": name, "mode": simulated.mode, "seconds": round(seconds, 1),
                     "clips": scores(alphas, fp32, truths)})
        log.info("%s: done (%.0f s learning)", name, seconds)

    base = {m: mean_of(rows[0]["clips"], "vs_gt", m) for m in ("mad", "dtssd")}
    for row in rows:
        row["mean"] = {f"{m}_vs_{a}": mean_of(row["clips"], f"vs_{a}", m) for m in ("mad", "dtssd") for a in ("fp32", "gt")}
        if base["mad"] is not None:
            row["degradation_pct"] = {m: 100.0 * (row["mean"][f"{m}_vs_gt"] - base[m]) / base[m] for m in ("mad", "dtssd")}
    result = {"benchmark": "lowbit", "simulated": True, "machine": machine(),
              "evalset": str(args.evalset) if args.evalset else None, "clips": [c.name for c in clips],
              "frames": args.frames, "size": f"{width}x{height}", "downsample_ratio": args.ratio,
              "calib_frames": len(feeds), "iterations": args.iterations, "rounding_weight": learn.rounding_weight,
              "kept_8bit": kept, "published_ptq4vm": published_degradation(), "rows": rows}
    dump(result, args.json)
    if not args.no_results:
        update_results("bench_lowbit", markdown(result))


def markdown(result: dict) -> str:
    def number(value):
        return "—" if value is None else f"{value:.2f}"

    def percent(row, metric):
        value = row.get("degradation_pct", {}).get(metric)
        return "—" if value is None else f"{value:+.0f}%"

    lines = [f"| {r['configuration']} | {number(r['mean']['mad_vs_fp32'])} | {number(r['mean']['dtssd_vs_fp32'])} | "
             f"{number(r['mean']['mad_vs_gt'])} | {number(r['mean']['dtssd_vs_gt'])} | {percent(r, 'mad')} | "
             f"{percent(r, 'dtssd')} | {r['seconds']:.0f} |" for r in result["rows"]]
    for mode, published in result["published_ptq4vm"].items():
        lines.append(f"| PTQ4VM {mode.upper()}, published (VideoMatte 512×288) | | | | | {published['mad_pct']:+.0f}% | "
                     f"{published['dtssd_pct']:+.0f}% | |")
    kept = result["kept_8bit"]
    source = (f"evalset composites ({result['evalset']})" if result["evalset"]
              else "the held-out built-in clip (no ground truth)")
    return f"""## Simulated low-bit quantization (W4A8, W4A4) of RVM MobileNetV3

{ran_on(result, 'python benchmarks/bench_lowbit.py')}.
**Simulated figures**: fake quantization in mtc's torch executor (no backend runs 4-bit kernels; nothing here is an
artifact). Dense `speed` placement ({kept['quantized_layers']} convs), first and last layers at W8A8
({len(set(kept['first']) | set(kept['last']))} layers: first {', '.join(kept['first'])}; last {', '.join(kept['last'])}).
{len(result['clips'])} clip(s) of {result['frames']} frames at {result['size']} (ratio {result['downsample_ratio']}) from {source};
calibration on {result['calib_frames']} built-in frames; PTQ4VM stage 1 with {result['iterations']} steps per block
(rounding weight {result['rounding_weight']:g}), no stage 2. Alpha MAD ×1e3 / dtSSD ×1e2, means over the clips;
"vs FP32 error" is the change of the error against ground truth relative to FP32's own, as PTQ4VM reports it.

| configuration | MAD vs FP32 | dtSSD vs FP32 | MAD vs GT | dtSSD vs GT | MAD vs FP32 error | dtSSD vs FP32 error | learning s |
|---|---|---|---|---|---|---|---|
""" + "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
