"""A folder of mixed-size photos, each tool in its own process: wall time and peak memory.

`mtc run ART photos/ -o out/ --what foreground` (the CLI, on each CPU backend) against rembg's
`rembg p` loop with the same model (rembg's u2netp session; `remove(path.read_bytes())` per file,
written as PNG), each as a fresh child process whose maximum resident set is read from the
kernel (common.run_measured). Every photo has its own size, so this is also where a backend that compiles a
static graph per input size pays for it. The runs alternate over --rounds; medians.

rembg is not a dependency of mtc: `pip install rembg` first. Photos are read, never copied.

    python benchmarks/bench_folder_memory.py --photos ../shared/evalset/images [--artifact DIR] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_u2netp_rembg import photos_in  # noqa: E402
from common import dump, machine, ran_on, run_measured, update_results  # noqa: E402

REMBG_LOOP = """
import os, sys
from pathlib import Path
import onnxruntime as ort
from rembg import new_session, remove
options = ort.SessionOptions()
options.intra_op_num_threads = int(sys.argv[3])
session = new_session("u2netp", sess_opts=options, providers=["CPUExecutionProvider"])
out = Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
for path in sorted(Path(sys.argv[1]).iterdir()):
    if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"):
        (out / (path.stem + ".png")).write_bytes(remove(path.read_bytes(), session=session))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, required=True, help="a folder of photos (read only)")
    parser.add_argument("--artifact", type=Path, help="the u2netp artifact [default: a fresh `mtc export u2netp`]")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()
    photos = photos_in(args.photos)
    sizes = {f"{w}x{h}" for w, h in (_size(p) for p in photos)}
    with tempfile.TemporaryDirectory(prefix="folder-memory-") as tmp:
        tmp = Path(tmp)
        artifact = args.artifact
        if artifact is None:
            from mtc.models.export import export_model

            artifact = export_model("u2netp", output=tmp / "u2netp")
        home = tmp / "u2net-home"
        home.mkdir()
        from mtc.artifact.manifest import read_manifest

        manifest = read_manifest(artifact)
        (home / "u2netp.onnx").symlink_to((artifact / manifest.model_file).resolve())  # rembg's own file
        env = {**os.environ, "U2NET_HOME": str(home), "OMP_NUM_THREADS": str(args.threads)}
        tools = {
            "rembg p (u2netp)": [sys.executable, "-c", REMBG_LOOP, str(args.photos), "{out}", str(args.threads)],
            "mtc run, onnxruntime": [sys.executable, "-m", "mtc", "run", str(artifact), str(args.photos), "-o", "{out}",
                                     "--what", "foreground", "--backend", "onnxruntime", "--threads",
                                     str(args.threads), "--force"],
            "mtc run, openvino": [sys.executable, "-m", "mtc", "run", str(artifact), str(args.photos), "-o", "{out}",
                                  "--what", "foreground", "--backend", "openvino", "--threads", str(args.threads),
                                  "--force"],
        }
        runs = {name: [] for name in tools}
        for round_ in range(args.rounds):
            names = list(tools)
            for name in names[round_ % len(names):] + names[:round_ % len(names)]:  # who goes first rotates
                out = tmp / f"out-{len(runs[name])}-{name.split()[0]}-{name.split()[-1]}"
                measured = run_measured([a.replace("{out}", str(out)) for a in tools[name]], env)
                runs[name].append({"seconds": measured["seconds"], "peak_mib": measured["peak_mib"]})
                print(f"round {round_ + 1}: {name}: {runs[name][-1]}", file=sys.stderr)
    summary = {name: {"seconds": statistics.median(r["seconds"] for r in values),
                      "peak_mib": statistics.median(r["peak_mib"] for r in values),
                      "peak_mib_max": max(r["peak_mib"] for r in values)} for name, values in runs.items()}
    base = summary["rembg p (u2netp)"]
    for s in summary.values():
        s["throughput_vs_rembg"] = base["seconds"] / s["seconds"]
        s["memory_vs_rembg"] = s["peak_mib"] / base["peak_mib"]
    result = {"benchmark": "folder_memory", "machine": machine(), "photos": len(photos), "sizes": len(sizes),
              "rounds": args.rounds, "threads": args.threads, "runs": runs, "summary": summary}
    dump(result, args.json)
    if not args.no_results:
        render(result)


def _size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def render(result: dict) -> None:
    rows = "\n".join(f"| {name} | {s['seconds']:.1f} | {s['throughput_vs_rembg']:.2f}× | {s['peak_mib']:.0f} "
                     f"(max {s['peak_mib_max']:.0f}) | {s['memory_vs_rembg']:.2f}× |"
                     for name, s in result["summary"].items())
    update_results("bench_folder_memory", f"""## A folder of mixed-size photos: wall time and peak memory per tool

{ran_on(result, 'python benchmarks/bench_folder_memory.py --photos ...')},
{result['threads']} threads. {result['photos']} photos of {result['sizes']} different sizes, RGBA PNGs out; each tool a
fresh process (peak = its maximum resident set, from the kernel); medians over {result['rounds']} rounds, the order
rotating. Same model on both sides: rembg's official `u2netp.onnx`.

| tool | seconds | throughput vs rembg | peak MiB | memory vs rembg |
|---|---|---|---|---|
{rows}
""")


if __name__ == "__main__":
    main()
