"""`mtc bench` as a library call: measure an artifact folder and build the report.

Report schema ``mtc.bench/1`` (documented in docs/ci-gates.md): stable keys, null where a
figure was not measured, numbers in the units their names say.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mtc.bench.accuracy import IMAGE_METRIC_NAMES, compare_sessions, parse_metric_names
from mtc.bench.data import BUILTIN, bench_frames, check_ground_truth, iter_ground_truth, resolution_name
from mtc.bench.gates import Gates, evaluate_gates
from mtc.bench.images import bench_image_folder, pair_by_stem
from mtc.bench.machine import machine_info
from mtc.bench.measure import Clock, measure_end_to_end, measure_model, write_source_video
from mtc.bench.memory import PeakMemory
from mtc.errors import MtcError
from mtc.metrics import METRIC_NAMES

log = logging.getLogger("mtc")

SCHEMA = "mtc.bench/1"
REFERENCE_KEY = "reference_artifact"  # manifest provenance key naming the FP32 source artifact
REFERENCE_BACKEND = "onnxruntime"  # the most faithful CPU executor: no implicit BF16


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """What to measure. Paths are artifact folders / media files; None means "not given".

    `input` is "builtin", a video, or a folder of images (each matted at its own size, paired
    with `gt` by file stem; see mtc.bench.images).
    """

    folder: Path
    backend: str = "auto"
    resolutions: tuple[tuple[int, int], ...] = ()
    frames: int = 48
    warmup: int = 5
    input: str = BUILTIN
    reference: Path | None = None
    use_manifest_reference: bool = True
    gt: Path | None = None
    ratio: float | None = None
    threads: int | None = None
    # None: the matting metrics for video; for an image folder, all but dtSSD (SOD metrics too).
    metrics: tuple[str, ...] | None = None
    end_to_end: bool = True
    gflops: bool = True
    gates: Gates | None = None


def resolve_reference(folder: Path, manifest, explicit: Path | None, use_manifest: bool) -> tuple[Path | None, str | None]:
    """The reference artifact and where it came from ("cli" or "manifest"), or (None, None).

    The manifest's ``provenance.reference_artifact`` is tried as given (absolute), relative to
    the artifact folder, then relative to the working directory; it is used only if it exists
    and is not the artifact itself.
    """
    if explicit is not None:
        if not (Path(explicit) / "manifest.json").is_file():
            raise MtcError(f"reference {explicit} is not an mtc artifact folder",
                           hint="pass the FP32 artifact folder written by `mtc export`")
        return Path(explicit), "cli"
    named = manifest.provenance.get(REFERENCE_KEY) if use_manifest else None
    if not isinstance(named, str) or not named:
        return None, None
    candidates = [Path(named)] if Path(named).is_absolute() else [folder / named, Path.cwd() / named]
    for candidate in candidates:
        if (candidate / "manifest.json").is_file() and candidate.resolve() != folder.resolve():
            return candidate, "manifest"
    log.warning("the manifest names reference artifact %s, which does not exist here: no reference", named)
    return None, None


def backend_description(session) -> dict:
    backend = getattr(session, "backend", None)
    info = {"name": getattr(backend, "name", type(backend).__name__), "threads": getattr(backend, "threads", None)}
    describe = getattr(backend, "describe", None)
    if callable(describe):
        text = describe()
        if isinstance(text, dict):
            info.update(text)
        else:
            info["description"] = str(text)
    ort_session = getattr(backend, "session", None)
    if ort_session is not None and hasattr(ort_session, "get_providers"):
        info["providers"] = list(ort_session.get_providers())
    return info


def device_peak_bytes(session) -> int | None:
    """The backend's own device-memory peak, where it reports one (``peak_device_memory_bytes()``)."""
    probe = getattr(getattr(session, "backend", None), "peak_device_memory_bytes", None)
    if not callable(probe):
        return None
    value = probe()
    return int(value) if value is not None else None


def model_size(session, height: int, width: int) -> tuple[int, int]:
    """The size the network actually sees for a frame (fixed / reference resize rules)."""
    rule = getattr(session, "_model_size", None)
    return rule(height, width) if callable(rule) else (height, width)


def frame_gflops(folder: Path, manifest, height: int, width: int, ratio: float | None) -> float | None:
    """GFLOPs of one frame at the network's input size; None when the model is not ONNX, or is
    several graphs (a program runs them a varying number of times per frame)."""
    import onnx

    from mtc.graph_stats import frame_cost

    if manifest.program is not None:
        return None
    names = [manifest.model_file] + [n for n in manifest.files if n != manifest.model_file]
    onnx_file = next((n for n in names if n.endswith(".onnx")), None)
    if onnx_file is None:
        return None
    feeds = manifest.io.example_feeds(height, width, downsample_ratio=ratio)
    return frame_cost(onnx.load(str(folder / onnx_file)), feeds).gflops


def _artifact_summary(folder: Path, manifest, session) -> dict:
    entry = manifest.files.get(manifest.model_file)
    return {
        "path": str(folder),
        "model": manifest.model,
        "variant": manifest.variant,
        "precision": manifest.precision.mode,
        "model_file": manifest.model_file,
        "model_sha256": entry.sha256 if entry else None,
        "backend": backend_description(session),
    }


def bench_resolution(session, config: BenchConfig, width: int, height: int, *, reference=None,
                     folder: Path | None = None, manifest=None, workdir: Path,
                     clock: Clock = time.perf_counter) -> dict:
    """Measure one resolution: model-only timing, end to end, memory, accuracy, GFLOPs."""
    name = resolution_name(width, height)
    frames = bench_frames(config.input, width, height, config.frames)
    model_h, model_w = model_size(session, height, width)
    ratio = session.ratio_for(model_h, model_w) if hasattr(session, "ratio_for") else None
    log.info("%s: timing %d frames after %d warm-up", name, len(frames), config.warmup)
    with PeakMemory() as memory:
        model = measure_model(session, frames, warmup=config.warmup, clock=clock)
        end_to_end = None
        if config.end_to_end:
            log.info("%s: end to end (decode -> matte -> encode)", name)
            source = _e2e_source(config.input, frames, width, height, workdir)
            end_to_end = measure_end_to_end(session, source, workdir / f"out-{name}.mp4", frames=len(frames),
                                            clock=clock)
            end_to_end["source"] = "input" if source == Path(config.input) else "re-encoded frames"
    memory_info = {**memory.as_dict(), "device_peak_bytes": device_peak_bytes(session)}

    accuracy = {"reference": None, "gt": None}
    if reference is not None or config.gt is not None:
        log.info("%s: accuracy (%s)", name, ", ".join(config.metrics))
        truth = iter_ground_truth(config.gt, width, height) if config.gt is not None else None
        accuracy = compare_sessions(session, frames, reference=reference, ground_truth=truth, metrics=config.metrics)

    gflops = None
    if config.gflops and folder is not None and manifest is not None:
        try:
            gflops = frame_gflops(folder, manifest, model_h, model_w, ratio)
        except MtcError as exc:  # cost is informative; never fail a benchmark on it
            log.warning("%s: GFLOPs not measured (%s)", name, exc)
    return {
        "resolution": name,
        "width": width,
        "height": height,
        "model_input": [model_w, model_h],
        "downsample_ratio": ratio,
        "frames": len(frames),
        "model": model,
        "end_to_end": end_to_end,
        "memory": memory_info,
        "cost": {"gflops_per_frame": gflops,
                 "achieved_gflops_per_s": gflops * model["fps"] if gflops is not None else None},
        "accuracy": accuracy,
    }


def _e2e_source(input: str, frames, width: int, height: int, workdir: Path) -> Path:
    """Decode the user's video directly when it already has the size; else re-encode the frames."""
    if input != BUILTIN:
        from mtc.runtime.video_reader import VideoReader

        with VideoReader(input) as video:
            if (video.width, video.height) == (width, height):
                return Path(input)
    return write_source_video(frames, workdir / f"source-{width}x{height}.mp4")


def run_bench(config: BenchConfig, *, clock: Clock = time.perf_counter) -> dict:
    """Benchmark an artifact folder and return the ``mtc.bench/1`` report.

    Raises:
        MtcError: the artifact, reference, input or ground truth is unusable.
    """
    import mtc.runtime
    from mtc.artifact.manifest import read_manifest

    config = _with_defaults(config)
    folder = Path(config.folder)
    manifest = read_manifest(folder)
    pairs = pair_by_stem(Path(config.input), config.gt) if is_image_folder(config.input) else None
    if config.gt is not None:
        check_ground_truth(config.gt)
    reference_path, reference_source = resolve_reference(folder, manifest, config.reference,
                                                         config.use_manifest_reference)
    started = time.perf_counter()
    session = mtc.runtime.load(folder, backend=config.backend, downsample_ratio=config.ratio, threads=config.threads)
    reference = None
    if reference_path is not None:
        reference = mtc.runtime.load(reference_path, backend=REFERENCE_BACKEND, downsample_ratio=config.ratio,
                                     threads=config.threads, allow_spinning=False)
    for each in (session, reference):
        if each is not None and each.prompt_input is not None:
            # A model that follows the object marked on the first frame: the middle of each
            # clip's first frame, the same for the artifact and its reference.
            from mtc.export.program import parity_prompt

            each.set_prompt(lambda frame: parity_prompt(*frame.shape[:2]))
    results = []
    if pairs is not None:
        log.info("%d images, each at its own size", len(pairs))
        results.append(bench_image_folder(session, pairs, metrics=config.metrics, warmup=config.warmup,
                                          reference=reference, clock=clock))
    else:
        _bench_resolutions(session, config, results, reference=reference, folder=folder, manifest=manifest,
                           clock=clock)
    report = build_report(config, results, artifact=_artifact_summary(folder, manifest, session),
                          reference=None if reference is None else {
                              "path": str(reference_path), "source": reference_source,
                              "precision": reference.manifest.precision.mode, "backend": REFERENCE_BACKEND},
                          seconds=time.perf_counter() - started)
    return report


def _bench_resolutions(session, config: BenchConfig, results: list, *, reference, folder: Path, manifest,
                       clock: Clock) -> None:
    with tempfile.TemporaryDirectory(prefix="mtc-bench-") as tmp:
        for width, height in config.resolutions:
            results.append(bench_resolution(session, config, width, height, reference=reference, folder=folder,
                                            manifest=manifest, workdir=Path(tmp), clock=clock))


def is_image_folder(source) -> bool:
    return str(source) != BUILTIN and Path(source).is_dir()


def _with_defaults(config: BenchConfig) -> BenchConfig:
    import dataclasses

    if is_image_folder(config.input):
        if config.resolutions:
            raise MtcError(f"--resolution does not apply to the image folder {config.input}",
                           hint="drop --resolution: each image is matted at its own size")
        metrics = parse_metric_names(config.metrics or IMAGE_METRIC_NAMES)
        if "dtssd" in metrics:
            raise MtcError("dtSSD measures a video's temporal error; an image folder has no time axis",
                           hint=f"drop dtssd from --metrics (image metrics: {', '.join(IMAGE_METRIC_NAMES)})")
        return dataclasses.replace(config, metrics=metrics)
    resolutions = config.resolutions
    if not resolutions and config.gates is not None and config.gates.per_resolution:
        resolutions = tuple(config.gates.resolutions)
    if not resolutions:
        if config.input == BUILTIN:
            resolutions = ((512, 288),)
        else:
            from mtc.runtime.video_reader import VideoReader

            with VideoReader(config.input) as video:
                resolutions = ((video.width, video.height),)
    return dataclasses.replace(config, resolutions=tuple(resolutions),
                               metrics=parse_metric_names(config.metrics or METRIC_NAMES))


def build_report(config: BenchConfig, results: list[dict], *, artifact: dict, reference: dict | None,
                 seconds: float = 0.0) -> dict:
    """Assemble the report and, when gates are set, evaluate them ("passed" is False if any fails)."""
    gate_results = evaluate_gates(config.gates, results) if config.gates is not None else None
    report = {
        "schema": SCHEMA,
        "artifact": artifact,
        "reference": reference,
        "ground_truth": None if config.gt is None else {"path": str(config.gt)},
        "settings": {
            "input": str(config.input),
            "frames": config.frames,
            "warmup": config.warmup,
            "downsample_ratio": config.ratio,
            "threads": config.threads,
            "metrics": list(config.metrics),
            "end_to_end": config.end_to_end,
            "resolutions": [resolution_name(w, h) for w, h in config.resolutions],
        },
        "machine": machine_info(),
        "results": results,
        "gates": None if gate_results is None else {
            "file": config.gates.source,
            "passed": all(g.passed for g in gate_results),
            "results": [g.to_dict() for g in gate_results],
        },
        "seconds": seconds,
    }
    report["passed"] = report["gates"]["passed"] if report["gates"] else True
    return report


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def report_json(report: dict) -> str:
    """The report as strict JSON (non-finite numbers, e.g. the FPS of a zero-time fake, become null)."""
    return json.dumps(_finite(report), indent=2, allow_nan=False) + "\n"
