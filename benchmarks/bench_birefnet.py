"""BiRefNet-lite at 1024x1024 on the CPU: mtc's artifacts and backends vs plain ONNX Runtime FP32.

The official checkpoints cannot be downloaded here, so the model is exported from random weights
in the official key layout (same graph, same cost; fidelity is then measured against FP32 only).
From the FP32 artifact the script makes an INT8 artifact (the family's transformer recipe: convs
and linear layers in INT8; LayerNorm, Softmax, GELU and attention's MatMuls in float), an FP16
one and, where the CPU has BF16, a BF16 one (the FP32 graph, checked as OpenVINO runs it in BF16),
all without fallback or gates, so what each precision costs in fidelity is shown as it is.

Runners, each on the same still photos at 1024x1024, interleaved round by round (the order
alternates), 2 threads:
- `plain_ort_fp32`: a bare onnxruntime.InferenceSession on the FP32 artifact's model.onnx, fed
  the preprocessed tensor (its timing excludes preprocessing; every mtc runner's includes it);
- mtc.runtime sessions (`--runners`; each holds about 2 GB at this size, so by default the ones
  the targets need): OpenVINO on FP32 and INT8, FP16 on ONNX Runtime and OpenVINO, the BF16
  artifact on the backend it chooses (where the CPU has BF16); also available: ONNX Runtime on
  FP32 and INT8, the INT8 artifact's float remainder in BF16 on OpenVINO.
Reported: median ms per image, speed x plain_ort_fp32, and alpha MAD (x1e3) and max |diff|
against plain_ort_fp32 (the spec's gates: INT8 and BF16 MAD 2, FP16 0.1).

    python benchmarks/bench_birefnet.py [--work DIR] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import dump, machine, ran_on, summarize_times, update_results  # noqa: E402

import mtc.runtime  # noqa: E402
from mtc.artifact.manifest import read_manifest  # noqa: E402
from mtc.backends.cpu import has_bf16  # noqa: E402
from mtc.data.builtin_photos import builtin_photos  # noqa: E402
from mtc.metrics import mad  # noqa: E402
from mtc.quant.config import Fallback, Gates, preset  # noqa: E402
from mtc.quant.data_plan import DataPlan  # noqa: E402
from mtc.quant.pipeline import DEFAULT_GATES, quantize_artifact  # noqa: E402

SIZE = 1024
REFERENCE = "plain_ort_fp32"
# Small calibration: at 1024x1024 a frame takes seconds, and these weights are random anyway.
DATA = DataPlan(calib_frames=8, check_frames=3, settings=((SIZE, SIZE, None),))


def make_artifacts(work: Path) -> dict[str, Path]:
    """FP32 (exported once, kept in `work`), INT8, FP16 and (on a BF16 CPU) BF16 artifacts of
    BiRefNet-lite."""
    from mtc.export.torch_export import save_random_checkpoint
    from mtc.models.birefnet import net
    from mtc.models.export import export_model

    precisions = ("fp32", "int8", "fp16", "bf16") if has_bf16() else ("fp32", "int8", "fp16")
    folders = {p: work / f"birefnet-lite-{p}" for p in precisions}
    timings = {}
    if not (folders["fp32"] / "manifest.json").exists():
        weights = save_random_checkpoint(net.build_network("swin_v1_t"), work / "lite.pth", seed=8)
        started = time.perf_counter()
        export_model("birefnet", variant="lite", weights_path=weights, output=folders["fp32"])
        timings["export_fp32_s"] = time.perf_counter() - started
    for precision in precisions[1:]:
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

    @staticmethod
    def prepare_with(manifest, frame: np.ndarray) -> np.ndarray:
        """The normalised NCHW tensor of an HxWx3 uint8 frame, as the manifest's preprocessing says."""
        pre = manifest.io.preprocess
        x = (frame.astype(np.float32) * pre.scale - np.array(pre.mean, np.float32)) / np.array(pre.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None])

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"src": x})[0][0, 0]


# Every session holds gigabytes of buffers at 1024x1024: all of them at once ran a 24 GB machine
# out of memory, so sessions are opened one at a time (see `bench`), and by default only the
# runners the targets need.
DEFAULT_RUNNERS = ("mtc_openvino_fp32", "mtc_openvino_int8", "mtc_ort_fp16", "mtc_openvino_fp16", "mtc_bf16")


def runner_makers(folders: dict[str, Path], threads: int, wanted: tuple[str, ...]) -> dict:
    """name -> a function opening that runner's session."""
    common = {"threads": threads, "scene_cut_threshold": None}
    makers = {}
    for precision in ("fp32", "int8", "fp16"):
        makers[f"mtc_ort_{precision}"] = lambda p=precision: mtc.runtime.load(
            folders[p], backend="onnxruntime", allow_spinning=False, **common)
        makers[f"mtc_openvino_{precision}"] = lambda p=precision: mtc.runtime.load(folders[p], backend="openvino",
                                                                                   **common)
    if "bf16" in folders:
        makers["mtc_openvino_int8_bf16"] = lambda: mtc.runtime.load(folders["int8"], backend="openvino",
                                                                    precision="bf16", **common)
        makers["mtc_bf16"] = lambda: mtc.runtime.load(folders["bf16"], **common)
    unknown = sorted(set(wanted) - set(makers))
    if unknown:
        raise SystemExit(f"--runners: {', '.join(unknown)} is not one of {', '.join(makers)}")
    return {REFERENCE: lambda: PlainOrt(folders["fp32"], threads), **{name: makers[name] for name in wanted}}


def run_once(runner, frame: np.ndarray, prepared: np.ndarray) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    alpha = runner.run(prepared) if isinstance(runner, PlainOrt) else runner.process(frame).alpha
    return time.perf_counter() - started, alpha


def bench(folders: dict[str, Path], rounds: int, threads: int, wanted: tuple[str, ...]) -> dict:
    """Each round opens every runner in turn (the order alternating between rounds), runs one
    warm-up image (compilation, allocations, first-run kernels), times the photos and closes it;
    round 0 also keeps the alphas."""
    photos = [frame for _, frame in builtin_photos("check", (SIZE, SIZE))][:2]
    makers = runner_makers(folders, threads, wanted)
    prepared = [PlainOrt.prepare_with(read_manifest(folders["fp32"]), p) for p in photos]
    first_s, backends = {}, {}
    times = {name: [] for name in makers}
    alphas = {name: [] for name in makers}
    for r in range(rounds):
        for name in (list(makers) if r % 2 == 0 else list(reversed(makers))):
            runner = makers[name]()
            seconds, _ = run_once(runner, photos[0], prepared[0])
            first_s.setdefault(name, seconds)
            backends[name] = runner.backend.describe() if not isinstance(runner, PlainOrt) else "onnxruntime (bare)"
            for photo, x in zip(photos, prepared):
                seconds, alpha = run_once(runner, photo, x)
                times[name].append(seconds)
                if r == 0:
                    alphas[name].append(np.array(alpha, np.float32))
            del runner
            gc.collect()
        print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    stats = {name: summarize_times(t) for name, t in times.items()}
    reference = np.stack(alphas[REFERENCE])
    for name in makers:
        got = np.stack(alphas[name])
        stats[name].update(speed_vs_plain_ort=stats[REFERENCE]["median_ms"] / stats[name]["median_ms"],
                           mad_x1e3_vs_fp32=mad(got, reference), max_abs_vs_fp32=float(np.abs(got - reference).max()),
                           first_image_s=first_s[name], backend=backends[name])
    return stats


def render(result: dict) -> None:
    m, guard = result["machine"], result["fp16_guard"]
    gates = {p: DEFAULT_GATES[p].max_mad for p in ("int8", "fp16", "bf16")}
    rows = []
    for name, s in sorted(result["runners"].items(), key=lambda kv: kv[1]["median_ms"]):
        precision = next((p for p in ("int8", "fp16", "bf16") if p in name), None)
        if precision:
            gate = "meets" if s["mad_x1e3_vs_fp32"] <= gates[precision] else "misses"
            gate += f" MAD <= {gates[precision]}"
        else:
            gate = "reference" if name == REFERENCE else "FP32"
        rows.append(f"| {name} | {s['median_ms']:.0f} | {s['speed_vs_plain_ort']:.2f}x | {s['mad_x1e3_vs_fp32']:.3f} "
                    f"| {s['max_abs_vs_fp32']:.4f} | {gate} |")
    update_results("bench_birefnet", f"""## BiRefNet-lite 1024x1024: mtc vs plain ONNX Runtime FP32

{ran_on(result, 'python benchmarks/bench_birefnet.py')},
{result['threads']} threads, onnxruntime {m['onnxruntime']}. Random weights in the official layout (fidelity vs FP32
only). {result['rounds']} interleaved rounds of 2 built-in photos; medians. INT8: the family's transformer recipe,
`openvino` placement, no float budget or fallback; FP16 and BF16 without fallback. `mtc_bf16` is the BF16
artifact on the backend mtc.runtime chooses for it ({result['runners'].get('mtc_bf16', {}).get('backend', 'not built')}).
BF16 quantization check (its own report, check photos vs FP32): {result.get('bf16_check', 'not built')}.

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
    parser.add_argument("--runners", default=",".join(DEFAULT_RUNNERS),
                        help="mtc runners beside plain ONNX Runtime FP32 [default: %(default)s; also mtc_ort_fp32, "
                             "mtc_ort_int8, mtc_openvino_int8_bf16]")
    parser.add_argument("--json")
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        folders, timings = make_artifacts(work)
        wanted = tuple(r.strip() for r in args.runners.split(",") if r.strip())
        runners = bench(folders, args.rounds, args.threads, tuple(w for w in wanted if w != "mtc_bf16" or "bf16" in folders))
        fp16 = json.loads((folders["fp16"] / "report.json").read_text())["fp16"]
        bf16_check = None
        if "bf16" in folders:
            clips = json.loads((folders["bf16"] / "report.json").read_text())["check"]["clips"]
            bf16_check = ", ".join(f"{c['clip']} MAD {c['mad']:.3f}" for c in clips)
    result = {"benchmark": "birefnet_lite_1024", "machine": machine(),
              "threads": args.threads, "rounds": args.rounds, "timings": timings, "runners": runners,
              "bf16_check": bf16_check,
              # the FP16 overflow guard on this graph: measured peak and the ops it kept in FP32
              "fp16_guard": {"peak_activation": fp16["peak_activation"], "kept_fp32": fp16["kept_fp32"]}}
    dump(result, args.json)
    if not args.no_results:
        render(result)


if __name__ == "__main__":
    main()
