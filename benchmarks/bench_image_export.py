"""Image families at full size on the CPU: `mtc export` time and peak memory, then the peak
memory of matting one image with the artifact on each CPU backend.

Every step runs in its own child process, so each peak (the child's maximum resident set, from
the kernel: common.run_measured) is that step's alone; the export's includes making the random
checkpoint. The official checkpoints cannot be downloaded here: each family is exported
from random weights saved in the official key layout (same graphs, same cost). Export time
includes building the graph(s), simplifying and the parity check at the family's own parity
case(s).

    python benchmarks/bench_image_export.py [--models birefnet-general,inspyrenet-base,...] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import dump, machine, ran_on, run_measured, update_results  # noqa: E402

from mtc.backends.cpu import has_bf16  # noqa: E402

# name -> (model, variant, input side): the standard sizes of the image families
CASES = {
    "birefnet-general": ("birefnet", "general", 1024),
    "birefnet-lite": ("birefnet", "lite", 1024),
    "inspyrenet-base": ("inspyrenet", "base", 1024),
    "inspyrenet-fast": ("inspyrenet", "fast", 384),
    "pdfnet": ("pdfnet", "swin-b", 1024),
}


def _random_weights(model: str, variant: str, folder: Path) -> Path:
    """A checkpoint of random weights in the family's official layout (PDFNet: its depth model's
    too, placed where the weight cache looks for it)."""
    from mtc.export.torch_export import save_random_checkpoint

    if model == "birefnet":
        from mtc.models.birefnet import RELEASES, net

        return save_random_checkpoint(net.build_network(RELEASES[variant].backbone), folder / "w.pth", seed=0)
    if model == "inspyrenet":
        from mtc.models.inspyrenet import RELEASES, net

        return save_random_checkpoint(net.build_network(RELEASES[variant].arch), folder / "w.pth", seed=0)
    from mtc.models.pdfnet import DEPTH_WEIGHTS
    from mtc.models.pdfnet.depth import build_depth_model
    from mtc.models.pdfnet.net import build_network
    from mtc.weights import cached_path

    depth = cached_path(DEPTH_WEIGHTS)
    depth.parent.mkdir(parents=True, exist_ok=True)
    save_random_checkpoint(build_depth_model(), depth, seed=1)
    return save_random_checkpoint(build_network(), folder / "w.pth", seed=0)


def child_export(name: str, folder: Path) -> dict:
    from mtc.models.export import export_model

    model, variant, _ = CASES[name]
    weights = _random_weights(model, variant, folder)
    started = time.perf_counter()
    export_model(model, variant=variant, weights_path=weights, output=folder / name, overwrite=True)
    return {"export_s": time.perf_counter() - started}


def child_run(name: str, folder: Path, backend: str, precision: str) -> dict:
    import numpy as np

    import mtc.runtime

    side = CASES[name][2]
    session = mtc.runtime.load(folder / name, backend=backend, precision=precision, threads=2)
    frame = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    started = time.perf_counter()
    session.process(frame)
    first = time.perf_counter() - started
    started = time.perf_counter()
    alpha = session.process(frame).alpha
    second = time.perf_counter() - started
    np.save(folder / f"{name}-{backend}-{precision}-alpha.npy", alpha)  # compared in the parent
    return {"first_s": first, "second_s": second}


def add_fidelity(row: dict, work: Path) -> None:
    """Each run's alpha MAD (x1e3) against ONNX Runtime FP32's on the same image."""
    import numpy as np

    from mtc.metrics import mad

    reference = work / f"{row['name']}-onnxruntime-fp32-alpha.npy"
    for key, entry in row["run"].items():
        alpha = work / f"{row['name']}-{key}-alpha.npy"
        if "failed" not in entry and alpha.exists() and reference.exists():
            entry["mad_vs_ort_fp32"] = mad(np.load(alpha), np.load(reference))


def _child(*args: str, env: dict) -> dict:
    """One step in its own process: its own result, and its wall time and peak memory."""
    try:
        measured = run_measured([sys.executable, __file__, "--child", *args], env=env)
    except SystemExit as failure:
        return {"failed": str(failure)}
    return {**json.loads(measured["output"].splitlines()[-1]), "peak_mib": measured["peak_mib"]}


def runners() -> list[tuple[str, str]]:
    found = [("onnxruntime", "fp32"), ("openvino", "fp32")]
    if has_bf16():
        found.append(("openvino", "bf16"))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help=f"comma list of {', '.join(CASES)} (default: all)")
    parser.add_argument("--work", type=Path, help="folder for the artifacts (default: temporary)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--json")
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()
    if args.child:
        kind, name, folder, *rest = args.child
        result = child_export(name, Path(folder)) if kind == "export" else child_run(name, Path(folder), *rest)
        print(json.dumps(result))
        return
    wanted = args.models.split(",") if args.models else list(CASES)
    unknown = sorted(set(wanted) - set(CASES))
    if unknown:
        parser.error(f"unknown model {', '.join(unknown)}: choose from {', '.join(CASES)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MTC_CACHE": str(work / "cache")}  # PDFNet's depth weights go there
        for name in wanted:
            row = {"name": name, "size": CASES[name][2], "export": _child("export", name, str(work), env=env)}
            print(f"{name}: export {row['export']}", file=sys.stderr)
            row["run"] = {}
            if "failed" not in row["export"]:
                for backend, precision in runners():
                    row["run"][f"{backend}-{precision}"] = _child("run", name, str(work), backend, precision, env=env)
                    print(f"{name}: {backend} {precision} {row['run'][f'{backend}-{precision}']}", file=sys.stderr)
                add_fidelity(row, work)
            rows.append(row)
    result = {"benchmark": "image_export", "machine": machine(), "rows": rows}
    dump(result, args.json)
    if not args.no_results:
        render(result)


def _cell(entry: dict, key: str, fmt: str) -> str:
    return entry["failed"] if "failed" in entry else format(entry[key], fmt)


def render(result: dict) -> None:
    m = result["machine"]
    backends = sorted({k for r in result["rows"] for k in r["run"]})
    head = " | ".join(f"{b}: peak MiB / s per image / MAD" for b in backends)
    lines = []
    for r in result["rows"]:
        runs = " | ".join(f"{_cell(r['run'][b], 'peak_mib', '.0f')} / {_cell(r['run'][b], 'second_s', '.1f')} / "
                          f"{_cell(r['run'][b], 'mad_vs_ort_fp32', '.2f') if 'mad_vs_ort_fp32' in r['run'][b] else '-'}"
                          if b in r["run"] else "-" for b in backends)
        lines.append(f"| {r['name']} | {r['size']}² | {_cell(r['export'], 'export_s', '.0f')} "
                     f"| {_cell(r['export'], 'peak_mib', '.0f')} | {runs} |")
    update_results("bench_image_export", f"""## Image families at full size: export time and peak memory, then one image per backend

{ran_on(result, 'python benchmarks/bench_image_export.py')}, onnxruntime {m['onnxruntime']}.
Random weights in the official layouts. Each step in its own process; peak = its maximum resident set. Export:
graph build, simplification and the parity check. Per backend: the artifact loaded with 2 threads, one image at the
standard size matted twice (the second time is the one shown); MAD: its alpha vs ONNX Runtime FP32's, ×1e3.

| model | size | export s | export peak MiB | {head} |
|---|---|---|---|{'---|' * len(backends)}
{chr(10).join(lines)}
""")


if __name__ == "__main__":
    main()
