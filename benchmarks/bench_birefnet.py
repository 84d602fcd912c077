"""BiRefNet-lite at 1024x1024 on the CPU: mtc's artifacts and backends vs plain ONNX Runtime FP32.

The official checkpoints cannot be downloaded here, so the model is exported from random weights
in the official key layout (same graph, same cost; fidelity is then measured against FP32 only).
From the FP32 artifact the script makes an INT8 artifact (the family's transformer recipe: convs
and linear layers in INT8; LayerNorm, Softmax, GELU and attention's MatMuls in float) and an FP16
one, without fallback, so what each precision costs in fidelity is shown as it is.

Runners, each on the same still photos at 1024x1024, interleaved round by round (the order
alternates), 2 threads:
- `plain_ort_fp32`: a bare onnxruntime.InferenceSession on the FP32 artifact's model.onnx, fed
  the preprocessed tensor (its timing excludes preprocessing; every mtc runner's includes it);
- mtc.runtime sessions: ONNX Runtime and OpenVINO on FP32, INT8 and FP16, and OpenVINO BF16
  (only where the CPU has BF16).
Reported: median ms per image, speed x plain_ort_fp32, and alpha MAD (x1e3) and max |diff|
against plain_ort_fp32 (the spec's INT8 gate is MAD 2, FP16's 0.1).

    python benchmarks/bench_birefnet.py [--work DIR] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import dump, machine, summarize_times, update_results  # noqa: E402

import mtc.runtime  # noqa: E402
from calib_data.builtin_photos import builtin_photos  # noqa: E402
from mtc.artifact.manifest import read_manifest  # noqa: E402
from mtc.backends.cpu import cpu_class, has_bf16  # noqa: E402
from mtc.metrics import mad  # noqa: E402
from mtc.quant.config import Fallback, Gates, preset  # noqa: E402
from mtc.quant.pipeline import DEFAULT_GATES, DataPlan, quantize_artifact  # noqa: E402

SIZE = 1024
REFERENCE = "plain_ort_fp32"
# Small calibration: at 1024x1024 a frame takes seconds, and these weights are random anyway.
DATA = DataPlan(calib_frames=8, check_frames=3, settings=((SIZE, SIZE, None),))


def make_artifacts(work: Path) -> dict[str, Path]:
    """FP32 (exported once, kept in `work`), INT8 and FP16 artifacts of BiRefNet-lite."""
    from mtc.export.torch_export import save_random_checkpoint
    from mtc.models.birefnet import net
    from mtc.models.export import export_model

    folders = {p: work / f"birefnet-lite-{p}" for p in ("fp32", "int8", "fp16")}
    timings = {}
    if not (folders["fp32"] / "manifest.json").exists():
        weights = save_random_checkpoint(net.build_network("swin_v1_t"), work / "lite.pth", seed=8)
        started = time.perf_counter()
        export_model("birefnet", variant="lite", weights_path=weights, output=folders["fp32"])
        timings["export_fp32_s"] = time.perf_counter() - started
    for precision in ("int8", "fp16"):
        if (folders[precision] / "manifest.json").exists():
            continue
        started = time.perf_counter()
        config = preset("openvino", float_budget=0.0) if precision == "int8" else None
        quantize_artifact(folders["fp32"], folders[precision], precision=precision, config=config,
                          gates=Gates(max_mad=None, max_dtssd=None), fallback=Fallback(enabled=False), data=DATA,
                          overwrite=True)
        timings[f"quantize_{precision}_s"] = time.perf_counter() - started
    return folders, timings


class PlainOrt:
    """The FP32 graph in a bare ONNX Runtime session, fed the normalised tensor."""

    def __init__(self, artifact: Path, threads: int):
        manifest = read_manifest(artifact)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(artifact / manifest.model_file), options,
                                            providers=["CPUExecutionProvider"])
        self.pre = manifest.io.preprocess

    def prepare(self, frame: np.ndarray) -> np.ndarray:
        x = (frame.astype(np.float32) * self.pre.scale - np.array(self.pre.mean, np.float32)) / np.array(
            self.pre.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None])

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"src": x})[0][0, 0]


def make_runners(folders: dict[str, Path], threads: int) -> dict:
    common = {"threads": threads, "scene_cut_threshold": None}
    runners = {REFERENCE: PlainOrt(folders["fp32"], threads)}
    bf16 = has_bf16()
    for precision in ("fp32", "int8", "fp16"):
        runners[f"mtc_ort_{precision}"] = mtc.runtime.load(folders[precision], backend="onnxruntime",
                                                           allow_spinning=False, **common)
        runners[f"mtc_openvino_{precision}"] = mtc.runtime.load(folders[precision], backend="openvino", **common)
        if bf16 and precision != "fp16":
            runners[f"mtc_openvino_{precision}_bf16"] = mtc.runtime.load(folders[precision], backend="openvino",
                                                                         precision="bf16", **common)
    return runners


def run_once(runner, frame: np.ndarray, prepared: np.ndarray) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    alpha = runner.run(prepared) if isinstance(runner, PlainOrt) else runner.process(frame).alpha
    return time.perf_counter() - started, alpha


def bench(folders: dict[str, Path], rounds: int, threads: int) -> dict:
    photos = [frame for _, frame in builtin_photos("check", (SIZE, SIZE))][:2]
    runners = make_runners(folders, threads)
    prepared = [runners[REFERENCE].prepare(p) for p in photos]
    first_s = {}
    for name, runner in runners.items():  # warm-up: compilation, allocations, first-run kernels
        first_s[name], _ = run_once(runner, photos[0], prepared[0])
    times = {name: [] for name in runners}
    alphas = {name: [] for name in runners}
    for r in range(rounds):
        for name in (list(runners) if r % 2 == 0 else list(reversed(runners))):
            for photo, x in zip(photos, prepared):
                seconds, alpha = run_once(runners[name], photo, x)
                times[name].append(seconds)
                if r == 0:
                    alphas[name].append(np.asarray(alpha, np.float32))
        print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    stats = {name: summarize_times(t) for name, t in times.items()}
    reference = np.stack(alphas[REFERENCE])
    for name, runner in runners.items():
        got = np.stack(alphas[name])
        stats[name].update(speed_vs_plain_ort=stats[REFERENCE]["median_ms"] / stats[name]["median_ms"],
                           mad_x1e3_vs_fp32=mad(got, reference), max_abs_vs_fp32=float(np.abs(got - reference).max()),
                           first_image_s=first_s[name],
                           backend=runner.backend.describe() if not isinstance(runner, PlainOrt) else "onnxruntime (bare)")
    return stats


def render(result: dict) -> None:
    m, guard = result["machine"], result["fp16_guard"]
    gates = {"int8": DEFAULT_GATES["int8"].max_mad, "fp16": DEFAULT_GATES["fp16"].max_mad}
    rows = []
    for name, s in sorted(result["runners"].items(), key=lambda kv: kv[1]["median_ms"]):
        precision = next((p for p in ("int8", "fp16") if p in name), None)
        if name.endswith("bf16"):
            gate = "BF16: vs FP32 only"
        elif precision:
            gate = "meets" if s["mad_x1e3_vs_fp32"] <= gates[precision] else "misses"
            gate += f" MAD <= {gates[precision]}"
        else:
            gate = "reference" if name == REFERENCE else "FP32"
        rows.append(f"| {name} | {s['median_ms']:.0f} | {s['speed_vs_plain_ort']:.2f}x | {s['mad_x1e3_vs_fp32']:.3f} "
                    f"| {s['max_abs_vs_fp32']:.4f} | {gate} |")
    update_results("bench_birefnet", f"""## BiRefNet-lite 1024x1024: mtc vs plain ONNX Runtime FP32

`python benchmarks/bench_birefnet.py` — {m['date']}, {m['cpu']} (class {result['cpu_class']}), {m['cores']} cores,
{result['threads']} threads, onnxruntime {m['onnxruntime']}. Random weights in the official layout (fidelity vs FP32
only). {result['rounds']} interleaved rounds of 2 built-in photos; medians. INT8: the family's transformer recipe,
`openvino` placement, no float budget or fallback; FP16 without fallback.

| runner | median ms | speed x plain ORT FP32 | MAD x1e3 vs FP32 | max abs | spec gate |
|---|---|---|---|---|---|
{chr(10).join(rows)}

FP16 overflow guard on this graph (calibration photos): peak |activation| {guard['peak_activation']:.4g}; ops kept in
FP32: {len(guard['kept_fp32'])}{(' (' + ', '.join(guard['kept_fp32'][:6]) + ')') if guard['kept_fp32'] else ''}.
""")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, help="folder for the artifacts, kept between runs (default: temporary)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        folders, timings = make_artifacts(work)
        runners = bench(folders, args.rounds, args.threads)
        fp16 = json.loads((folders["fp16"] / "report.json").read_text())["fp16"]
    result = {"benchmark": "birefnet_lite_1024", "machine": machine(), "cpu_class": cpu_class(),
              "threads": args.threads, "rounds": args.rounds, "timings": timings, "runners": runners,
              # the FP16 overflow guard on this graph: measured peak and the ops it kept in FP32
              "fp16_guard": {"peak_activation": fp16["peak_activation"], "kept_fp32": fp16["kept_fp32"]}}
    dump(result, args.json)
    if not args.no_results:
        render(result)


if __name__ == "__main__":
    main()
