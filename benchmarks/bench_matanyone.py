"""MatAnyone (issue #25): the compiled multi-graph artifact vs the PyTorch reference on this CPU.

The official weights cannot be downloaded here, so the network is the full-size one
(`MatAnyoneConfig()` defaults: ResNet-50 / ResNet-18 encoders, 3-block object transformer) with
seeded random weights saved in the official checkpoint layout. Timing does not depend on the
weights' values; the alphas of random weights are no measure of matting quality.

1. Export, once: the random checkpoint is written to `--work` and exported there as the registry
   exports the family (its PARITY_CASES and PARITY_TOLERANCE: the whole program on ONNX Runtime
   vs PyTorch over the built-in clip). The export runs in a child process, so its peak RSS
   (getrusage of that process) is the export's own. Reported: wall time, peak RSS, parity.
   A later run reuses the artifact (and the export's numbers) found in `--work`.
2. Per-frame time at 854x480 (the runtime resizes to 848x480) and 1280x720: the built-in clip
   (one shot), first-frame mask `mtc.export.program.parity_prompt`. Engines, each a
   `MattingSession` fed `set_prompt(mask)` then `step(frame)`:
   - `onnxruntime`, `openvino` (if installed): the artifact via `mtc.runtime.load`, 2 threads,
     ONNX Runtime with spinning off (the engines run interleaved), OpenVINO in FP32;
   - `pytorch`: the reference: the same program run by `ProgramEngine` over the four PyTorch
     graph modules (`TorchBackend`, `torch.inference_mode`, `torch.set_num_threads(2)`) in the
     same `MattingSession`, OpenMP threads waiting passively (`OMP_WAIT_POLICY=PASSIVE`, set
     before torch loads; `--torch-omp-wait active` keeps libgomp's spinning default). It is the
     fairest per-frame PyTorch path: the same graphs the
     export traced (the official flow written out, top-30 readout), the same preprocessing,
     resize and ring bookkeeping in numpy, so only the graph executor differs. (The
     monolithic `MatAnyoneReference` is clip-level and reads a token list that grows until the
     ring is full; the fixed ring always reads 5 slots, masked.)
   `--rounds` rounds: each starts a new stream (`reset`, prompt due) and runs `--frames` frames,
   engines interleaved frame by frame, the order rotating by frame and round. Frame 0 (mask step
   + 11 first-frame steps, i.e. about 12 frames' work) is timed apart: cold in round 1 (OpenVINO
   compiles for the frame size there), the median of later rounds' as warm (or round 1's when
   there is one round). Per-frame statistics are over frames 1.. of all rounds (frame 1 follows
   11 runs of every graph at this size, so it is warm). Speedup = median over frames of PyTorch time / engine time,
   each pair measured back to back. Each graph's time per frame is taken by a shim around the
   engine's graph backends. Accuracy: max and mean |alpha engine - alpha PyTorch| over every
   frame of every round (frame 0 included). Claim: the artifact is faster than PyTorch on both
   backends at both sizes; its alpha is compared with PARITY_TOLERANCE (the export's bound).
3. RSS over a long run (`--long-frames`, default 1000, at `--long-size`, default 160x96): one
   stream of the built-in clip (frames generated on the fly, nothing accumulated), RSS of this
   process (psutil) after frames 10, 100, 250, 500 and the last. It runs before PyTorch is
   loaded and before the timed sessions exist (after them, the heap they freed made RSS creep
   by a few MB in a first version of this script, while the same run in a fresh process was flat
   to 0.1 MB). Claim: flat, i.e. RSS at the
   end within FLAT_MB of RSS at frame 100; the memory ring keeps its 5 entries (validity sum 5,
   shape (1, 5)) however many frames were pushed.

    nice python benchmarks/bench_matanyone.py [--work DIR] [--sizes 854x480,1280x720] [--frames 6]
        [--rounds 1] [--long-frames 1000] [--long-size 160x96] [--long-backends onnxruntime]
        [--json out.json] [--no-results]

The defaults are sized for a 2-core CPU shared with other jobs (the full network takes seconds
per frame there, and frame 0 about 12 frames' time): export about 3-4 min once, then roughly
15-20 min. More rounds and frames tighten the medians: `--rounds 3 --frames 8`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import dump, machine, ran_on, summarize_times, update_results  # noqa: E402

import mtc.runtime  # noqa: E402
from mtc.data.builtin_clip import ClipSpec, builtin_clip, builtin_frames  # noqa: E402
from mtc.export.program import parity_prompt  # noqa: E402
from mtc.models.matanyone import IO, PARITY_CASES, PARITY_TOLERANCE, QUANTIZATION  # noqa: E402
from mtc.runtime.program import ProgramEngine  # noqa: E402
from mtc.runtime.session import MattingSession  # noqa: E402

SECTION = "bench_matanyone"
SIZES = ((854, 480), (1280, 720))
WEIGHTS_SEED = 25
CHECKPOINT = "random-matanyone.pth"
EXPORT_JSON = "export.json"
LONG_MARKS = (10, 100, 250, 500, 1000)
FLAT_MB = 5.0  # "flat": RSS at the end within this many MB of RSS at frame 100
TINY = dict(pixel_blocks=(1, 1, 1), mask_blocks=(1, 1, 1), pixel_dim=32, key_dim=16, value_dim=32, sensory_dim=32,
            embed_dim=32, num_heads=2, num_queries=4, num_blocks=2, ff_dim=64, up_dims=(32, 16, 16, 8, 8))


def _config(tiny: bool):
    from mtc.models.matanyone.net import MatAnyoneConfig

    return MatAnyoneConfig(**TINY) if tiny else MatAnyoneConfig()


def rss_bytes() -> int:
    """This process's resident set size now."""
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


# ---- 1. export ----------------------------------------------------------------------------------

def export_here(work: Path, tiny: bool) -> dict:
    """Write the random checkpoint and export it into work/artifact (run in a child process)."""
    import torch

    from mtc.export.compile import CompileJob, ParityCase
    from mtc.export.program import compile_program
    from mtc.export.torch_export import save_random_checkpoint
    from mtc.models.matanyone import LICENSE, build_program
    from mtc.models.matanyone.net import MatAnyone

    work.mkdir(parents=True, exist_ok=True)
    cfg = _config(tiny)
    started = time.perf_counter()
    weights = save_random_checkpoint(MatAnyone(cfg), work / CHECKPOINT, seed=WEIGHTS_SEED)
    checkpoint_s = time.perf_counter() - started
    started = time.perf_counter()
    build = build_program(weights, config=cfg)
    build_s = time.perf_counter() - started
    job = CompileJob(model="matanyone", variant="tiny-random" if tiny else "base-random", task="video_matting",
                     license=LICENSE, io=IO, cases=tuple(ParityCase(*case) for case in PARITY_CASES),
                     tolerance=PARITY_TOLERANCE, quantization=QUANTIZATION,
                     provenance={"exporter": "torch", "source_file": CHECKPOINT, "weights": f"random, seed {WEIGHTS_SEED}"})
    started = time.perf_counter()
    artifact = compile_program(build, job, output=work / "artifact", overwrite=True)
    compile_s = time.perf_counter() - started
    report = json.loads((artifact / "report.json").read_text())
    result = {"tiny": tiny, "threads": torch.get_num_threads(), "checkpoint_s": checkpoint_s,
              "build_onnx_s": build_s, "compile_s": compile_s, "total_s": checkpoint_s + build_s + compile_s,
              "peak_rss_mb": _peak_rss_bytes() / 2**20,
              "parameters": sum(p.numel() for p in MatAnyone(cfg).parameters()),
              "artifact_mb": sum(f.stat().st_size for f in artifact.iterdir()) / 2**20,
              "parity": [{k: case[k] for k in ("resolution", "frames", "alpha_max_abs_diff", "graph_max_abs_diff",
                                                "passed")} for case in report["parity"]]}
    (work / EXPORT_JSON).write_text(json.dumps(result, indent=2) + "\n")
    return result


def ensure_export(work: Path, tiny: bool) -> dict:
    """The export's numbers; exports in a child process unless work/ holds a finished one."""
    record = work / EXPORT_JSON
    if record.exists() and (work / "artifact" / "manifest.json").exists():
        result = json.loads(record.read_text())
        if result.get("tiny") == tiny:
            return {**result, "cached": True}
    command = [sys.executable, str(Path(__file__).resolve()), "--work", str(work), "--export-only"]
    if tiny:
        command.append("--tiny")
    subprocess.run(command, check=True)
    return {**json.loads(record.read_text()), "cached": False}


# ---- 2. per-frame time ------------------------------------------------------------------------

class TimedGraph:
    """A graph backend that adds the time of each `run` to its owner's per-frame account."""

    def __init__(self, backend, name: str, account: dict, clock=time.perf_counter):
        self.inner, self.graph, self.account, self.clock = backend, name, account, clock

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def run(self, feeds):
        start = self.clock()
        try:
            return self.inner.run(feeds)
        finally:
            self.account[self.graph] = self.account.get(self.graph, 0.0) + self.clock() - start


def time_graphs(session: MattingSession) -> dict:
    """Wrap each graph backend of the session's program engine; returns the account to read."""
    account: dict[str, float] = {}
    engine = session.backend
    engine.graphs = {name: TimedGraph(backend, name, account) for name, backend in engine.graphs.items()}
    return account


def torch_session(work: Path, tiny: bool, threads: int) -> MattingSession:
    """The PyTorch reference: the program on the four graph modules, in a MattingSession."""
    import torch

    from mtc.export.torch_export import TorchBackend
    from mtc.models.matanyone import program
    from mtc.models.matanyone.export import graph_modules
    from mtc.models.matanyone.net import MatAnyone, load_weights

    torch.set_num_threads(threads)
    net = MatAnyone(_config(tiny))
    load_weights(net, work / CHECKPOINT)
    graphs = {name: TorchBackend(module, input_names=module.input_names, output_names=module.output_names)
              for name, module in graph_modules(net).items()}
    cfg = net.cfg
    prog = program(key_dim=cfg.key_dim, value_dim=cfg.value_dim, sensory_dim=cfg.sensory_dim,
                   pixel_dim=cfg.pixel_dim, summaries=cfg.num_queries, embed_dim=cfg.embed_dim)
    return MattingSession(IO, ProgramEngine(prog, IO, graphs), scene_cut_threshold=None)


def artifact_session(artifact: Path, backend: str, threads: int) -> MattingSession:
    return mtc.runtime.load(artifact, backend=backend, threads=threads, allow_spinning=False,
                            scene_cut_threshold=None)


def _alpha(session: MattingSession, frame: np.ndarray) -> np.ndarray:
    return np.array(session.step(frame)[session.alpha_output.name][0, 0], dtype=np.float32)


def compare_alphas(ours: list[np.ndarray], reference: list[np.ndarray]) -> dict:
    if len(ours) != len(reference) or not ours:
        raise ValueError("need one reference alpha per alpha")
    diffs = [np.abs(a.astype(np.float64) - b) for a, b in zip(ours, reference)]
    worst = float(max(d.max() for d in diffs))
    return {"max_abs_diff": worst, "mean_abs_diff": float(np.mean([d.mean() for d in diffs])), "frames": len(diffs),
            "within_tolerance": worst <= PARITY_TOLERANCE, "per_frame_max": [float(d.max()) for d in diffs],
            "pixels_over_tolerance": int(sum((d > PARITY_TOLERANCE).sum() for d in diffs))}


def speedup(reference: list[float], ours: list[float]) -> float:
    """Median over frames of reference time / our time (pairs measured back to back)."""
    if len(reference) != len(ours) or not ours:
        raise ValueError("need one reference time per time")
    return statistics.median(r / o for r, o in zip(reference, ours))


def bench_size(sessions: dict[str, MattingSession], width: int, height: int, frames_per_round: int,
               rounds: int) -> dict:
    frames = builtin_clip(ClipSpec(width=width, height=height, frames=frames_per_round, shots=1))
    mask = parity_prompt(height, width)
    accounts = {name: time_graphs(s) for name, s in sessions.items()}
    names = list(sessions)
    first = {n: [] for n in names}
    times = {n: [] for n in names}
    graph_times = {n: [] for n in names}
    alphas = {n: [] for n in names}
    for session in sessions.values():
        session.set_prompt(mask)
    for r in range(rounds):
        for session in sessions.values():
            session.reset()
        for i, frame in enumerate(frames):
            shift = (r + i) % len(names)
            for name in names[shift:] + names[:shift]:
                session, account = sessions[name], accounts[name]
                account.clear()
                t0 = time.perf_counter()
                alphas[name].append(_alpha(session, frame))
                seconds = time.perf_counter() - t0
                (first if i == 0 else times)[name].append(seconds)
                if i:
                    graph_times[name].append(dict(account))
    model_h, model_w = IO.preprocess.model_size(height, width)
    engines = {}
    for name in names:
        graphs = {g: statistics.median(t.get(g, 0.0) for t in graph_times[name]) * 1e3
                  for g in sorted({g for t in graph_times[name] for g in t})}
        warm = first[name][1:] or first[name]  # round 1's frame 0 is cold (OpenVINO compiles there)
        engines[name] = {**summarize_times(times[name]), "first_frame_ms": statistics.median(warm) * 1e3,
                         "first_frame_cold_ms": first[name][0] * 1e3, "graphs_median_ms": graphs}
        if name != "pytorch" and "pytorch" in sessions:
            engines[name]["speedup_vs_pytorch"] = speedup(times["pytorch"], times[name])
            engines[name]["first_frame_speedup_vs_pytorch"] = speedup(first["pytorch"], first[name])
            engines[name]["alpha_vs_pytorch"] = compare_alphas(alphas[name], alphas["pytorch"])
    return {"resolution": f"{width}x{height}", "model_size": f"{model_w}x{model_h}", "frames_per_round": len(frames),
            "rounds": rounds, "engines": engines}


# ---- 3. RSS over a long run --------------------------------------------------------------------

def long_run(artifact: Path, backend: str, width: int, height: int, count: int, threads: int,
             marks: tuple[int, ...] = LONG_MARKS) -> dict:
    session = artifact_session(artifact, backend, threads)
    session.set_prompt(parity_prompt(height, width))
    marks = tuple(sorted({m for m in marks if m < count} | {count}))
    rss, times = {}, []
    started = time.perf_counter()
    for n, frame in enumerate(builtin_frames(ClipSpec(width=width, height=height, frames=count, shots=1)), start=1):
        t0 = time.perf_counter()
        session.step(frame)
        times.append(time.perf_counter() - t0)
        if n in marks:
            rss[n] = rss_bytes() / 2**20
    wall = time.perf_counter() - started
    ring = session.backend._rings["memory"]
    base = rss.get(100, rss[min(rss)])
    growth = rss[count] - base
    return {"backend": backend, "resolution": f"{width}x{height}", "frames": count, "wall_s": wall,
            "median_ms": statistics.median(times[1:] or times) * 1e3, "first_frame_ms": times[0] * 1e3,
            "rss_mb": {str(n): v for n, v in rss.items()}, "growth_from_mb": min(100, min(rss)),
            "growth_mb": growth, "flat": abs(growth) <= FLAT_MB,
            "ring": {"valid_shape": list(ring.valid.shape), "valid_sum": float(ring.valid.sum()),
                     "pushed": ring.pushed, "key_shape": list(ring.fields["key"].shape)}}


# ---- report ----------------------------------------------------------------------------------------

def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"


def results_markdown(result: dict) -> str:
    m, export = result["machine"], result["export"]
    parity = "; ".join(f"{p['resolution']} × {p['frames']} frames: {p['alpha_max_abs_diff']:.1e}" for p in export["parity"])
    rows = []
    for case in result["sizes"]:
        for name, e in case["engines"].items():
            ref = name == "pytorch"
            acc = e.get("alpha_vs_pytorch")
            rows.append(
                f"| {case['resolution']} ({case['model_size']}) | {name} | {e['first_frame_cold_ms'] / 1e3:.1f} "
                f"| {e['first_frame_ms'] / 1e3:.1f} | {e['median_ms']:.0f} | {e['p90_ms']:.0f} | {e['fps']:.2f} "
                f"| {'—' if ref else format(e['speedup_vs_pytorch'], '.2f') + '×'} "
                f"| {'—' if ref else format(e['first_frame_speedup_vs_pytorch'], '.2f') + '×'} "
                f"| {'—' if acc is None else format(acc['max_abs_diff'], '.1e')} "
                f"| {'—' if acc is None else format(acc['mean_abs_diff'], '.1e')} "
                f"| {'—' if acc is None else _yes(acc['within_tolerance'])} |")
    graph_names = ("image_encoder", "mask_encoder", "memory_readout", "segmenter")
    graph_rows = "\n".join(
        f"| {case['resolution']} | {name} | " + " | ".join(f"{e['graphs_median_ms'].get(g, 0.0):.0f}" for g in graph_names)
        + f" | {e['median_ms']:.0f} |"
        for case in result["sizes"] for name, e in case["engines"].items())
    long_rows = "\n".join(
        f"| {r['backend']} | {r['resolution']} | {r['frames']} | "
        + " | ".join(f"{v:.0f}" for v in r["rss_mb"].values())
        + f" | {r['growth_mb']:+.1f} | {_yes(r['flat'])} | {r['median_ms']:.0f} "
        f"| {r['ring']['valid_shape']} sum {r['ring']['valid_sum']:.0f}, {r['ring']['pushed']} pushed |"
        for r in result["long"])
    marks = result["long"][0]["rss_mb"].keys() if result["long"] else ()
    mark_head = " | ".join(f"RSS @{n} MB" for n in marks)
    net = "reduced test network (--tiny)" if export["tiny"] else "full-size network (`MatAnyoneConfig()`)"
    return f"""## MatAnyone: compiled artifact vs PyTorch reference (random weights, FP32)

{ran_on(result, 'python benchmarks/bench_matanyone.py')} (shared), {result['threads']} threads,
load average at the start {', '.join(f'{x:.1f}' for x in m.get('load_average', ()))}; onnxruntime {m.get('onnxruntime', '?')},
openvino {m.get('libraries', {}).get('openvino', '—')}, torch {result['torch']}. The {net}
with seeded random weights in the official layout ({export['parameters']:,} parameters): timing does not depend
on the weights' values, and the alphas are no measure of quality.

Export (child process): {export['total_s']:.0f} s (random checkpoint {export['checkpoint_s']:.0f} s, four ONNX graphs
{export['build_onnx_s']:.0f} s, sanitize + parity {export['compile_s']:.0f} s), peak RSS {export['peak_rss_mb']:.0f} MB, artifact
{export['artifact_mb']:.0f} MB; program parity ONNX Runtime vs PyTorch, max |Δalpha| {parity}{' (cached export)' if export.get('cached') else ''}.

Per frame: built-in clip, first-frame mask, {result['rounds']} rounds of {result['frames']} frames, engines interleaved frame
by frame (each its own stream). "PyTorch" is the same program (`ProgramEngine`, same session, resize and ring
bookkeeping) on the four PyTorch graph modules, `torch.inference_mode`, {result['threads']} threads,
`OMP_WAIT_POLICY={result.get('torch_omp_wait', 'active').upper()}` (ONNX Runtime runs with spinning off). Frame 0 (mask step +
11 first-frame steps) is reported apart: cold = round 1's (OpenVINO compiles there), warm = median of later rounds'
(round 1's when there is one); per-frame statistics over frames 1..; speedup = median over frames of PyTorch /
engine time, paired; |Δalpha| vs PyTorch over every frame of every round (tolerance {PARITY_TOLERANCE:.0e}: the export's).

| resolution (model) | engine | frame 0 cold s | frame 0 warm s | per-frame median ms | p90 ms | FPS | speedup | frame 0 speedup | max \\|Δα\\| | mean \\|Δα\\| | ≤ {PARITY_TOLERANCE:.0e} |
|---|---|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Where a frame's time goes (median ms per ordinary frame, shim around each graph's backend;
the mask encoder runs on every frame, the readout reads all 5 ring slots, masked):

| resolution | engine | image_encoder | mask_encoder | memory_readout | segmenter | frame |
|---|---|---|---|---|---|---|
{graph_rows}

RSS over one long stream (frames made on the fly), this process before PyTorch loads, psutil. Flat: RSS at the end within
{FLAT_MB:.0f} MB of RSS at frame 100. The ring holds the permanent frame + 4 working frames whatever was pushed.

| backend | size | frames | {mark_head} | growth MB | flat | median ms | ring valid |
|---|---|---|{'---|' * len(marks)}---|---|---|---|
{long_rows}
"""


def _size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(w), int(h)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("artifacts/bench-matanyone-random"),
                        help="folder of the random checkpoint and its artifact (reused when present)")
    parser.add_argument("--sizes", default=",".join(f"{w}x{h}" for w, h in SIZES), help="frame sizes WxH, comma-separated")
    parser.add_argument("--frames", type=int, default=6, help="frames per round (frame 0 timed apart)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--backends", default="onnxruntime,openvino",
                        help="artifact backends (openvino skipped when not installed)")
    parser.add_argument("--long-frames", type=int, default=1000, help="frames of the RSS run (0: skip)")
    parser.add_argument("--long-size", default="160x96")
    parser.add_argument("--long-backends", default="onnxruntime",
                        help="backends of the RSS run, comma-separated (e.g. onnxruntime,openvino)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--torch-omp-wait", choices=("passive", "active"), default="passive",
                        help="OMP_WAIT_POLICY of PyTorch's threads (passive, as ONNX Runtime runs without spinning: "
                             "spinning threads of interleaved engines steal each other's cores)")
    parser.add_argument("--json", help="also write the JSON here")
    parser.add_argument("--no-results", action="store_true", help="do not update RESULTS.md")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # reduced network, for the smoke test
    parser.add_argument("--export-only", action="store_true", help=argparse.SUPPRESS)  # the export's child process
    args = parser.parse_args()

    if args.export_only:
        export_here(args.work, args.tiny)
        return
    if args.frames < 2 or args.rounds < 1:
        parser.error("need --frames >= 2 and --rounds >= 1")
    if "torch" in sys.modules:
        parser.error("torch was imported before OMP_WAIT_POLICY could be set")
    os.environ["OMP_WAIT_POLICY"] = args.torch_omp_wait.upper()
    import torch

    def available(names: str) -> list[str]:
        chosen = [b.strip() for b in names.split(",") if b.strip()]
        if "openvino" in chosen:
            try:
                import openvino  # noqa: F401
            except ImportError:
                chosen.remove("openvino")
        return chosen

    export = ensure_export(args.work, args.tiny)
    artifact = args.work / "artifact"
    long = []
    if args.long_frames:  # first: this process's RSS is then the runtime's, not what PyTorch left behind
        lw, lh = _size(args.long_size)
        long = [long_run(artifact, b, lw, lh, args.long_frames, args.threads) for b in available(args.long_backends)]
    sessions = {b: artifact_session(artifact, b, args.threads) for b in available(args.backends)}
    sessions["pytorch"] = torch_session(args.work, args.tiny, args.threads)
    sizes = [bench_size(sessions, w, h, args.frames, args.rounds) for w, h in map(_size, args.sizes.split(","))]
    result = {"benchmark": "matanyone", "machine": machine(), "torch": torch.__version__,
              "torch_omp_wait": args.torch_omp_wait, "threads": args.threads,
              "frames": args.frames, "rounds": args.rounds, "export": export, "sizes": sizes, "long": long}
    dump(result, args.json)
    if not args.no_results:
        update_results(SECTION, results_markdown(result))


if __name__ == "__main__":
    main()
