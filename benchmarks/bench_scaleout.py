"""Scale-out throughput: Triton (Python backend) vs mtc.runtime in-process, Ray vs `mtc run`.

RVM MobileNetV3 FP32 artifact, CPU, ONNX Runtime. Two parts, each skipped with the reason in
the JSON when what it needs is missing (a Triton server environment, tritonclient, ray).

1. Triton vs in-process, N = 1, 2, 4 concurrent streams of the built-in clip (default 512x288,
   `--stream-frames` frames per stream per round, `--rounds` rounds).
   - Triton: nvidia-pytriton's bundled server (`mtc.serve.local_triton.LocalTriton`, 127.0.0.1)
     on a repository written by `package_triton(kind="python", backend="onnxruntime",
     threads=1)`, one model per N with N instances (`rvm_1`, `rvm_2`, `rvm_4`, all in one
     server). Each stream is a client thread with its own gRPC client and its own sequence ID
     (START on its first frame, END on its last) sending uint8 HxWx3 frames and asking for ALPHA.
   - In-process: N sessions from `mtc.runtime.load(artifact, backend="onnxruntime", threads=1,
     allow_spinning=False)` (what each Triton instance loads), each driven by its own thread
     (ONNX Runtime releases the GIL), reset at the first frame of each round. Both sides thus
     have N engines of one inference thread each, on the same 2 cores.
   - Each round runs every N on both sides, who goes first alternating. FPS = frames of all
     streams / wall time from the threads' common start to the last reply; latency = each
     request's (or `session.process` call's) time as the stream saw it.
   - Reported per N: medians over rounds of FPS, the median over rounds of the paired ratio
     Triton FPS / in-process FPS, latency medians over all frames, and the serving overhead per
     frame = Triton latency median - in-process latency median (at 1 stream: what serving adds
     to a frame: gRPC, (de)serialization, the queue, the backend stub's IPC, the stream lookup).
     Triton's own statistics over the measured rounds split its time per request into queue
     and compute (input, infer, output).
2. Ray vs `mtc run`, built-in clips written as H.264 (default 4 clips of 48 frames, 256x144).
   - `mtc run`: `python -m mtc run ART CLIP -o OUT --force` per clip, one after another, as a
     shell loop would (each pays its interpreter start and model load; default threads).
   - Ray: `matte_library(ART, clips, out, num_cpus=K, force=True)` for K = 1, 2, each on a fresh
     local cluster: `ray.init` (as matte_library starts one), the library, `ray.shutdown`. The
     wall time counts all three; the start, matting (worker start and model load included) and
     stop are also reported alone.
   - A long video with hard cuts (the built-in clip with `--long-shots` shots of `--clip-frames`
     frames each) on 2 workers, `split_shots=True, min_piece_frames=--clip-frames` vs unsplit.
   - Repetitions alternate the order; medians over repetitions, ratios are medians of the
     paired per-repetition ratios (speed-up > 1: faster than the reference).

No claim is made beyond the numbers: on a 2-core shared machine, parallel engines can only
share the same two cores.

    python benchmarks/bench_scaleout.py [--artifact DIR] [--triton-python PY] [--rounds 5]
        [--stream-frames 8] [--streams 1,2,4] [--size 512x288] [--ray-size 256x144] [--clips 4]
        [--clip-frames 48] [--long-shots 4] [--repeats 3] [--skip-triton] [--skip-ray] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import dump, ensure_artifact, machine, ran_on, update_results  # noqa: E402

import mtc  # noqa: E402
import mtc.runtime  # noqa: E402
from mtc.data.builtin_clip import ClipSpec, builtin_clip, write_builtin_clip  # noqa: E402
from mtc.errors import MtcError  # noqa: E402

SOURCE_ROOT = str(Path(mtc.__file__).resolve().parent.parent)
STAT_KEYS = ("queue", "compute_input", "compute_infer", "compute_output")


# --- concurrency -----------------------------------------------------------------------------

def drive(streams: list[Callable[[int, object], None]], frames, clock=time.perf_counter) -> dict:
    """Run every stream over `frames` in a thread of its own, all starting together.

    Each stream is called as stream(index, frame) per frame. Returns the wall time from the
    common start to the last stream's end and every call's latency (seconds).
    """
    barrier = threading.Barrier(len(streams) + 1)
    latencies: list[list[float]] = [[] for _ in streams]
    ends = [0.0] * len(streams)
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            barrier.wait()
            for i, frame in enumerate(frames):
                t0 = clock()
                streams[k](i, frame)
                latencies[k].append(clock() - t0)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            errors.append(exc)
        finally:
            ends[k] = clock()

    threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(len(streams))]
    for t in threads:
        t.start()
    barrier.wait()
    start = clock()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return {"wall": max(ends) - start, "frames": sum(len(x) for x in latencies),
            "latencies": [s for per_stream in latencies for s in per_stream]}


def stream_summary(triton: list[dict], inprocess: list[dict]) -> dict:
    """One N's rounds (results of `drive`, paired by round) as medians and ratios."""
    if not triton or len(triton) != len(inprocess):
        raise ValueError("need one in-process round per Triton round")
    fps = {name: [r["frames"] / r["wall"] for r in rounds] for name, rounds in
           (("triton", triton), ("inprocess", inprocess))}
    latency = {name: statistics.median(s for r in rounds for s in r["latencies"]) * 1e3 for name, rounds in
               (("triton", triton), ("inprocess", inprocess))}
    return {"triton_fps": statistics.median(fps["triton"]), "inprocess_fps": statistics.median(fps["inprocess"]),
            "triton_vs_inprocess": statistics.median(t / i for t, i in zip(fps["triton"], fps["inprocess"])),
            "triton_latency_ms": latency["triton"], "inprocess_latency_ms": latency["inprocess"],
            "overhead_ms_per_frame": latency["triton"] - latency["inprocess"],
            "triton_latency_mean_ms": statistics.fmean(s for r in triton for s in r["latencies"]) * 1e3,
            "rounds_fps": fps}


def stats_delta(before: dict, after: dict) -> dict:
    """Triton's per-request times (ms) between two `get_inference_statistics(as_json=True)` replies."""
    def totals(reply: dict) -> dict:
        stats = (reply.get("model_stats") or [{}])[0].get("inference_stats", {})
        return {key: (int(stats.get(key, {}).get("count", 0)), int(stats.get(key, {}).get("ns", 0)))
                for key in ("success", *STAT_KEYS)}

    a, b = totals(before), totals(after)
    requests = b["success"][0] - a["success"][0]
    if requests <= 0:
        return {"requests": 0}
    out = {"requests": requests, "success_ms": (b["success"][1] - a["success"][1]) / requests / 1e6}
    for key in STAT_KEYS:
        out[f"{key}_ms"] = (b[key][1] - a[key][1]) / requests / 1e6
    return out


# --- part 1: Triton vs in-process ------------------------------------------------------------

def triton_environment(python: str) -> str | None:
    """Why the Triton part cannot run with this interpreter, or None when it can."""
    try:
        import tritonclient.grpc  # noqa: F401
    except ImportError:
        return "tritonclient[grpc] is not installed here (pip install 'mtc[triton]')"
    from mtc.serve.local_triton import describe_environment

    try:
        describe_environment(python)
    except MtcError as exc:
        return f"no Triton server environment at {python}: {exc} (pass --triton-python or set MTC_TRITON_PYTHON)"
    return None


def _triton_stream(url: str, model: str, sequence_id: int, count: int, exit_stack: contextlib.ExitStack):
    import numpy as np
    import tritonclient.grpc as grpc

    client = grpc.InferenceServerClient(url)
    exit_stack.callback(client.close)  # an open connection holds the server at shutdown
    wanted = [grpc.InferRequestedOutput("ALPHA")]

    def send(i: int, frame) -> None:
        tensor = grpc.InferInput("FRAME", list(frame.shape), "UINT8")
        tensor.set_data_from_numpy(np.ascontiguousarray(frame))
        reply = client.infer(model, [tensor], outputs=wanted, sequence_id=sequence_id, sequence_start=i == 0,
                             sequence_end=i == count - 1)
        reply.as_numpy("ALPHA")

    return send


def _inprocess_stream(session):
    def run(i: int, frame) -> None:
        if i == 0:
            session.reset()  # a new stream, as Triton's START gives one
        session.process(frame)

    return run


def bench_triton(artifact: Path, python: str, streams: tuple[int, ...], rounds: int, frames_per_stream: int,
                 size: tuple[int, int]) -> dict:
    from tritonclient.grpc import InferenceServerClient

    from mtc.serve.local_triton import LocalTriton
    from mtc.serve.triton_repo import package_triton

    frames = builtin_clip(ClipSpec(width=size[0], height=size[1], frames=frames_per_stream))
    counts = sorted(set(streams))
    sessions = [mtc.runtime.load(artifact, backend="onnxruntime", threads=1, allow_spinning=False)
                for _ in range(max(counts))]
    with tempfile.TemporaryDirectory(prefix="mtc-bench-triton-") as tmp:
        repository = Path(tmp) / "repo"
        for n in counts:
            package_triton(artifact, repository, kind="python", name=f"rvm_{n}", instances=n, backend="onnxruntime",
                           threads=1)
        started = time.perf_counter()
        with LocalTriton(repository, python=python, extra_env={"PYTHONPATH": SOURCE_ROOT}) as server:
            startup = time.perf_counter() - started
            next_id = iter(range(1, 1_000_000))

            def triton_round(n: int, clip=frames) -> dict:
                with contextlib.ExitStack() as stack:
                    clients = [_triton_stream(server.grpc_url, f"rvm_{n}", next(next_id), len(clip), stack)
                               for _ in range(n)]
                    return drive(clients, clip)

            def inprocess_round(n: int, clip=frames) -> dict:
                return drive([_inprocess_stream(s) for s in sessions[:n]], clip)

            for n in counts:  # warm-up: every instance's first runs, every session's
                triton_round(n, frames[:2])
                inprocess_round(n, frames[:2])
            with contextlib.closing(InferenceServerClient(server.grpc_url)) as admin:
                before = {n: admin.get_inference_statistics(f"rvm_{n}", as_json=True) for n in counts}
                results: dict[int, dict[str, list]] = {n: {"triton": [], "inprocess": []} for n in counts}
                for r in range(rounds):
                    for k, n in enumerate(counts):
                        order = ("triton", "inprocess") if (r + k) % 2 == 0 else ("inprocess", "triton")
                        for side in order:
                            results[n][side].append((triton_round if side == "triton" else inprocess_round)(n))
                server_stats = {n: stats_delta(before[n], admin.get_inference_statistics(f"rvm_{n}", as_json=True))
                                for n in counts}
    cases = []
    for n in counts:
        case = {"streams": n, "instances": n, **stream_summary(results[n]["triton"], results[n]["inprocess"]),
                "server": server_stats[n]}
        if "success_ms" in case["server"]:
            # The same requests seen from both ends (means: Triton's statistics are totals).
            case["server"]["outside_ms"] = case["triton_latency_mean_ms"] - case["server"]["success_ms"]
        cases.append(case)
    return {"resolution": f"{size[0]}x{size[1]}", "frames_per_stream": len(frames), "rounds": rounds,
            "protocol": "grpc", "threads_per_engine": 1, "server_startup_s": startup, "cases": cases}


# --- part 2: Ray vs mtc run ------------------------------------------------------------------

def mtc_run_sequential(artifact: Path, videos: list[Path], out: Path) -> dict:
    """`python -m mtc run` per video, one after another; wall time of the loop."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for video in videos:
        done = subprocess.run([sys.executable, "-m", "mtc", "run", str(artifact), str(video), "-o",
                               str(out / f"{video.stem}.mp4"), "--force"], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"mtc run {video} failed: {done.stderr.strip()[-400:]}")
    return {"wall_s": time.perf_counter() - started}


def ray_library(artifact: Path, videos: list[Path], out: Path, num_cpus: int, *, split_shots: bool = False,
                min_piece_frames: int = 250) -> dict:
    """`matte_library` on a fresh local cluster: start, matte, stop, each timed."""
    from mtc.serve.ray_batch import import_ray, matte_library

    ray = import_ray()
    if ray.is_initialized():
        ray.shutdown()
    t0 = time.perf_counter()
    # As matte_library starts a local cluster itself, timed apart.
    ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="warning", log_to_driver=False)
    t1 = time.perf_counter()
    try:
        report = matte_library(artifact, videos, out, num_cpus=num_cpus, force=True, split_shots=split_shots,
                               min_piece_frames=min_piece_frames)
        t2 = time.perf_counter()
    finally:
        ray.shutdown()
    t3 = time.perf_counter()
    if report.failed:
        raise RuntimeError(f"ray batch failed: {[(str(r.source), r.error) for r in report.failed]}")
    return {"wall_s": t3 - t0, "start_s": t1 - t0, "matte_s": t2 - t1, "stop_s": t3 - t2, "frames": report.frames,
            "pieces": sum(r.pieces for r in report.results)}


def ray_summary(runs: dict[str, list[dict]], reference: str, frames: int) -> dict:
    """Medians per configuration and the speed-up over `reference` (median of per-repetition ratios)."""
    out = {}
    for name, reps in runs.items():
        row = {key: statistics.median(r[key] for r in reps) for key in ("wall_s", "start_s", "matte_s", "stop_s")
               if key in reps[0]}
        row["fps"] = frames / row["wall_s"]
        row["speedup"] = statistics.median(ref["wall_s"] / r["wall_s"] for ref, r in zip(runs[reference], reps))
        if "matte_s" in reps[0] and "matte_s" not in runs[reference][0]:
            # Against the reference's whole wall time: what Ray gives once its cluster is up.
            row["speedup_without_cluster"] = statistics.median(ref["wall_s"] / r["matte_s"]
                                                               for ref, r in zip(runs[reference], reps))
        if "pieces" in reps[0]:
            row["pieces"] = reps[0]["pieces"]
        row["wall_s_reps"] = [r["wall_s"] for r in reps]
        out[name] = row
    return out


def bench_ray(artifact: Path, size: tuple[int, int], clips: int, clip_frames: int, long_shots: int,
              repeats: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="mtc-bench-ray-") as tmp:
        tmp = Path(tmp)
        library = [write_builtin_clip(tmp / "clips" / f"clip{k}.mp4",
                                      ClipSpec(width=size[0], height=size[1], frames=clip_frames, seed=k))
                   for k in range(clips)]
        long_video = write_builtin_clip(tmp / "long" / "long.mp4", ClipSpec(
            width=size[0], height=size[1], frames=clip_frames * long_shots, shots=long_shots))
        configs = {"mtc_run_sequential": lambda: mtc_run_sequential(artifact, library, tmp / "out_run"),
                   "ray_1_worker": lambda: ray_library(artifact, library, tmp / "out_ray1", 1),
                   "ray_2_workers": lambda: ray_library(artifact, library, tmp / "out_ray2", 2)}
        long_configs = {
            "unsplit_2_workers": lambda: ray_library(artifact, [long_video], tmp / "out_long", 2),
            "split_2_workers": lambda: ray_library(artifact, [long_video], tmp / "out_split", 2, split_shots=True,
                                                   min_piece_frames=clip_frames)}
        runs: dict[str, list[dict]] = {name: [] for name in configs}
        long_runs: dict[str, list[dict]] = {name: [] for name in long_configs}
        for r in range(repeats):
            for table, chosen in ((configs, runs), (long_configs, long_runs)):
                names = list(table) if r % 2 == 0 else list(reversed(table))
                for name in names:
                    chosen[name].append(table[name]())
    return {"resolution": f"{size[0]}x{size[1]}", "clips": clips, "clip_frames": clip_frames, "repeats": repeats,
            "library": ray_summary(runs, "mtc_run_sequential", clips * clip_frames),
            "long_video": {"frames": clip_frames * long_shots, "shots": long_shots, "min_piece_frames": clip_frames,
                           **ray_summary(long_runs, "unsplit_2_workers", clip_frames * long_shots)}}


# --- report ----------------------------------------------------------------------------------

def results_markdown(result: dict) -> str:
    """The scale-out section of RESULTS.md."""
    m = result["machine"]
    parts = [f"""## Scale-out: Triton (Python backend) vs in-process, Ray vs `mtc run` (RVM MobileNetV3, FP32)

{ran_on(result, 'python benchmarks/bench_scaleout.py')} (shared with other work, so absolute times are loose),
onnxruntime {m['onnxruntime']}, `MTC_TRITON_PYTHON` set to the Triton server environment's interpreter (see
docs/scale-out.md); the whole run took {result['seconds'] / 60:.1f} min."""]
    triton = result["triton"]
    if "skipped" in triton:
        parts.append(f"Triton part skipped: {triton['skipped']}")
    else:
        rows = "\n".join(
            f"| {c['streams']} | {c['instances']} | {c['triton_fps']:.1f} | {c['inprocess_fps']:.1f} "
            f"| {c['triton_vs_inprocess']:.2f} | {c['triton_latency_ms']:.0f} | {c['inprocess_latency_ms']:.0f} "
            f"| {c['overhead_ms_per_frame']:+.1f} | {c['server'].get('queue_ms', 0):.1f} "
            f"| {c['server'].get('outside_ms', 0):.1f} |" for c in triton["cases"])
        parts.append(f"""Triton (nvidia-pytriton's server, Python-backend repository from `package_triton`, gRPC client, one
thread and sequence ID per stream) vs `mtc.runtime` sessions in-process (one per stream, each in its own
thread): {triton['resolution']}, {triton['frames_per_stream']} frames per stream per round, {triton['rounds']} rounds
alternating who goes first; every engine has 1 inference thread, Triton has one instance per stream.
FPS = frames of all streams / wall time (median over rounds); Triton / in-process = median of the
per-round ratios; latency = median per frame as the stream saw it; overhead = Triton latency − in-process
latency; queue = Triton's own mean queue time per request over the measured rounds; outside Triton =
the client's mean latency − Triton's mean request time (gRPC transport, (de)serialization, the client).

| streams | instances | Triton FPS | in-process FPS | Triton / in-process | Triton ms/frame | in-process ms/frame | overhead ms/frame | Triton queue ms | outside Triton ms |
|---|---|---|---|---|---|---|---|---|---|
{rows}""")
    ray = result["ray"]
    if "skipped" in ray:
        parts.append(f"Ray part skipped: {ray['skipped']}")
    else:
        def row(name: str, r: dict, what: str) -> str:
            cluster = (f"{r['start_s']:.1f} | {r['matte_s']:.1f} | {r['stop_s']:.1f}" if "start_s" in r
                       else "– | – | –")
            extra = f" ({r['speedup_without_cluster']:.2f} without the cluster)" if "speedup_without_cluster" in r else ""
            return f"| {what} | {r['wall_s']:.1f} | {cluster} | {r['fps']:.1f} | {r['speedup']:.2f}{extra} |"

        lib, long = ray["library"], ray["long_video"]
        lib_rows = "\n".join([row("mtc_run_sequential", lib["mtc_run_sequential"], "`mtc run` per clip, in turn"),
                              row("ray_1_worker", lib["ray_1_worker"], "Ray, 1 worker"),
                              row("ray_2_workers", lib["ray_2_workers"], "Ray, 2 workers")])
        long_rows = "\n".join([row("unsplit", long["unsplit_2_workers"], "Ray, 2 workers, unsplit"),
                               row("split", long["split_2_workers"],
                                   f"Ray, 2 workers, split ({long['split_2_workers'].get('pieces', '?')} pieces)")])
        parts.append(f"""Ray (`matte_library`, one task per video, 1 inference thread per task, each run on a fresh local
cluster: start + matte + stop) vs `python -m mtc run` per clip one after another (interpreter start and
model load per clip, default threads): {ray['clips']} built-in clips of {ray['clip_frames']} frames,
{ray['resolution']}, H.264 in and out, {ray['repeats']} repetitions alternating the order, medians; speed-up =
median of per-repetition ratios of the reference's wall time to this one's (> 1: faster).

| run | wall s | cluster start s | matte s | cluster stop s | FPS (wall) | speed-up vs `mtc run` |
|---|---|---|---|---|---|---|
{lib_rows}

One {long['frames']}-frame video of {long['shots']} shots with hard cuts, 2 workers, `split_shots=True,
min_piece_frames={long['min_piece_frames']}` vs unsplit:

| run | wall s | cluster start s | matte s | cluster stop s | FPS (wall) | speed-up vs unsplit |
|---|---|---|---|---|---|---|
{long_rows}""")
    return "\n\n".join(parts) + "\n"


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT") from None
    return w, h


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, help="FP32 RVM artifact (exported if omitted)")
    parser.add_argument("--triton-python", default=os.environ.get("MTC_TRITON_PYTHON", sys.executable),
                        help="interpreter of the Triton server environment (default: $MTC_TRITON_PYTHON, else this one)")
    parser.add_argument("--streams", default="1,2,4", help="concurrent stream counts for the Triton part")
    parser.add_argument("--rounds", type=int, default=5, help="Triton/in-process rounds")
    parser.add_argument("--stream-frames", type=int, default=8, help="frames per stream per round")
    parser.add_argument("--size", type=_size, default=(512, 288), help="frame size of the Triton part")
    parser.add_argument("--ray-size", type=_size, default=(256, 144), help="frame size of the Ray clips")
    parser.add_argument("--clips", type=int, default=4, help="clips in the Ray library")
    parser.add_argument("--clip-frames", type=int, default=48, help="frames per clip (and per shot of the long video)")
    parser.add_argument("--long-shots", type=int, default=4, help="shots of the long video (at most 6)")
    parser.add_argument("--repeats", type=int, default=3, help="Ray repetitions")
    parser.add_argument("--skip-triton", action="store_true")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--json", help="also write the JSON here")
    parser.add_argument("--no-results", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args()
    streams = tuple(int(v) for v in args.streams.split(",") if v.strip())
    if not streams or min(streams) < 1:
        parser.error("--streams takes positive counts, e.g. 1,2,4")

    artifact = ensure_artifact(args.artifact).resolve()
    started = time.perf_counter()
    result = {"benchmark": "scaleout", "machine": machine(), "artifact": str(artifact)}
    if args.skip_triton:
        result["triton"] = {"skipped": "--skip-triton"}
    elif (reason := triton_environment(args.triton_python)) is not None:
        result["triton"] = {"skipped": reason}
    else:
        result["triton"] = bench_triton(artifact, args.triton_python, streams, args.rounds, args.stream_frames,
                                        args.size)
        result["triton"]["seconds"] = time.perf_counter() - started
    if args.skip_ray:
        result["ray"] = {"skipped": "--skip-ray"}
    else:
        try:
            import ray  # noqa: F401
        except ImportError:
            result["ray"] = {"skipped": "ray is not installed (pip install 'mtc[ray]')"}
        else:
            ray_started = time.perf_counter()
            result["ray"] = bench_ray(artifact, args.ray_size, args.clips, args.clip_frames, args.long_shots,
                                      args.repeats)
            result["ray"]["seconds"] = time.perf_counter() - ray_started
    result["seconds"] = time.perf_counter() - started
    dump(result, args.json)
    if not args.no_results:
        update_results("scaleout", results_markdown(result))


if __name__ == "__main__":
    main()
