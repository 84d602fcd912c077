"""Export time and ONNX Runtime CPU FPS of every exporter, at each model's standard resolution.

The official PyTorch checkpoints cannot be downloaded here, so PyTorch models are exported from
random weights saved in the official key layout (same graph, same cost: timings do not depend on
weight values). RVM's official ONNX is the real file. Export time includes the parity check.

    python benchmarks/bench_export.py [--models rvm,modnet,...] [--frames 6]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import dump, machine, ran_on, summarize_times, update_results  # noqa: E402

import mtc.runtime  # noqa: E402
from mtc.data.builtin_clip import ClipSpec, builtin_clip  # noqa: E402
from mtc.export.torch_export import save_random_checkpoint  # noqa: E402
from mtc.models.export import export_model  # noqa: E402

# Where each family's build_network lives (its torch modules).
_NETWORK_MODULES = {"modnet": "mtc.models.modnet.net", "bgmv2": "mtc.models.bgmv2.net", "u2net": "mtc.models.u2net.net"}


def _rvm(backbone):
    from mtc.models.rvm import net

    return net.build_rvm(backbone)


def _network(family, *args):
    import importlib

    return importlib.import_module(_NETWORK_MODULES[family]).build_network(*args)


# (model, variant, checkpoint builder or None for the official file, checkpoint key prefix, frame size)
CASES = (
    ("rvm", "mobilenetv3", None, "", (512, 288)),
    ("rvm", "mobilenetv3-pth", lambda: _rvm("mobilenetv3"), "", (512, 288)),
    ("rvm", "resnet50-pth", lambda: _rvm("resnet50"), "", (512, 288)),
    ("modnet", "photographic", lambda: _network("modnet"), "module.", (512, 512)),
    ("u2net", "u2net", lambda: _network("u2net", "u2net"), "", (320, 320)),
    ("u2net", "u2netp", lambda: _network("u2net", "u2netp"), "", (320, 320)),
    ("bgmv2", "mobilenetv2", lambda: _network("bgmv2", "mobilenetv2"), "", (1920, 1080)),
    ("bgmv2", "resnet50", lambda: _network("bgmv2", "resnet50"), "", (1920, 1080)),
)


def bench(model, variant, make, prefix, size, frames, folder: Path) -> dict:
    weights = None
    if make is not None:
        weights = save_random_checkpoint(make(), folder / f"{model}-{variant}.pth", prefix=prefix, seed=0)
    started = time.perf_counter()
    artifact = export_model(model, variant=variant, output=folder / f"{model}-{variant}", weights_path=weights)
    export_s = time.perf_counter() - started
    session = mtc.runtime.load(artifact, backend="onnxruntime", allow_spinning=False, scene_cut_threshold=None)
    width, height = size
    clip = builtin_clip(ClipSpec(width=width, height=height, frames=frames + 1))
    if session.io.input_with_role("background") is not None:
        session.set_background(np.ascontiguousarray(clip[0][:, ::-1]))
    session.process(clip[0])  # warm-up
    times = []
    for frame in clip[1:]:
        t0 = time.perf_counter()
        session.process(frame)
        times.append(time.perf_counter() - t0)
    return {"model": model, "variant": variant, "resolution": f"{width}x{height}", "export_s": export_s,
            "weights": "official" if make is None else "random, official layout", **summarize_times(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="comma list of model names (default: all)")
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--json")
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()
    wanted = set(args.models.split(",")) if args.models else None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            if wanted is None or case[0] in wanted:
                rows.append(bench(*case, args.frames, Path(tmp)))
                print(f"{case[0]}/{case[1]}: {rows[-1]['export_s']:.1f} s, {rows[-1]['fps']:.1f} FPS", file=sys.stderr)
    result = {"benchmark": "exporters", "machine": machine(), "rows": rows}
    dump(result, args.json)
    if not args.no_results:
        m = result["machine"]
        table = "\n".join(f"| {r['model']} | {r['variant']} | {r['weights']} | {r['resolution']} | {r['export_s']:.1f} "
                          f"| {r['fps']:.1f} | {r['median_ms']:.0f} |" for r in rows)
        update_results("bench_export", f"""## Exporters: export time and ONNX Runtime CPU speed per model

{ran_on(result, 'python benchmarks/bench_export.py')}, onnxruntime {m['onnxruntime']}.
Export time includes the parity check against the reference (PyTorch, or the original ONNX). FPS: mtc.runtime on
ONNX Runtime CPU, FP32, 2 threads, median of {args.frames} frames of the built-in clip after one warm-up frame.

| model | variant | weights | resolution | export s | FPS | median ms |
|---|---|---|---|---|---|---|
{table}
""")


if __name__ == "__main__":
    main()
