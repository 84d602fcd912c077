"""Peers: how fast and how faithful is each way of running RVM on this CPU, side by side.

Configurations, all run interleaved in one process on the same frames, each with its own
recurrent state and thread spinning off:

- `ort_fp32`: the official rvm_mobilenetv3_fp32.onnx in a plain ONNX Runtime session (the
  reference every other alpha is compared with);
- `ort_int8_qdq`: ONNX Runtime's stock `quantize_static` (QDQ, per-channel, min-max), after the
  opset-17 upgrade that keeps it valid (mtc's sanitize; quantizing the opset-12 file silently
  gives an invalid model), calibrated on the built-in clip at every benchmarked resolution
  with the official model's recurrent states carried; no `quant_pre_process` (its symbolic
  shape inference fails on RVM);
- OpenVINO, if `openvino` is importable, each compiled with static shapes per resolution (the
  ratio frozen, states reshaped: measured faster than dynamic shapes), an explicit inference
  precision, and the graph as OpenVINO reads it (none of mtc's rewrites): `openvino_fp32` and
  `openvino_bf16` (where the CPU has BF16) on the official file, `openvino_int8_qdq` on the
  stock QDQ model, and, if `nncf` is importable, `nncf_int8_openvino`: `nncf.quantize` with its
  defaults on the official model with the case's ratio frozen, calibrated on the same built-in
  frames and states as the stock INT8 at that case (each INT8 peer is checked to run the
  network at the requested resolution);
- `--artifact DIR[@BACKEND[:PRECISION]]` (repeatable): mtc artifacts through mtc.runtime
  (scene-cut detection off, as the plain sessions have none), labelled by manifest precision
  and backend (`_alpha`: an alpha-only export, `mtc export rvm --alpha-only`, which has no
  foreground output; `_bf16`: OpenVINO asked to run the float parts in BF16,
  e.g. `artifacts/rvm-int8@openvino:bf16`).

Per configuration: FPS (1 / median per-frame time over rounds, configurations interleaved
frame by frame), MAD and dtSSD of its alpha vs the FP32 reference on the same frames, and with `--evalset` also vs ground truth:
clips built by moving evalset foregrounds (images/ + alpha/) over the evalset videos, so every
frame has an exact alpha. Evalset files are read in place, never copied.

    python benchmarks/bench_peers.py [--artifact DIR[@BACKEND[:PRECISION]]]... [--evalset ../shared/evalset]
        [--cases 512x288@1.0,1920x1080@0.25] [--frames 16] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import logging
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import (  # noqa: E402
    NEAR_SUBJECT,
    ONE_GRAY_LEVEL,
    STATES,
    OrtRvm,
    away_cell,
    one_gray_level_noise,
    ran_on,
    update_results,
)

from mtc.bench.accuracy import StreamingMetrics, as_alpha  # noqa: E402
from mtc.bench.machine import machine_info  # noqa: E402
from mtc.bench.runner import report_json  # noqa: E402
from mtc.data.builtin_clip import CALIBRATION_SHOTS, ClipSpec, builtin_frames  # noqa: E402
from mtc.models.rvm import MOBILENETV3_ONNX  # noqa: E402
from mtc.weights import cache_dir, fetch_weights  # noqa: E402

log = logging.getLogger("mtc.peers")
DEFAULT_CASES = "512x288@1.0,1920x1080@0.25"
# Human subjects (RVM is a human matting model), paired with the evalset videos in turn.
EVALSET_FOREGROUNDS = ("c1k_girl_longhair", "c1k_boy", "c1k_woman_furcoat", "am_gt05_pooh")
PLOT = Path(__file__).with_name("peers.png")


# ---- the configurations -----------------------------------------------------------------------


class OpenVinoRvm:
    """RVM on OpenVINO's CPU plugin: static shapes for this resolution and ratio, explicit
    inference precision, the graph as OpenVINO reads it (mtc.runtime's OpenVINO backend with its
    graph rewrites off)."""

    def __init__(self, model: Path, ratio: float, threads: int, precision: str = "fp32"):
        from mtc.backends.openvino.session import OpenVinoBackend
        from mtc.models.rvm import RVM_IO

        self.backend = OpenVinoBackend(model, io=RVM_IO, precision=precision, threads=threads, cache=False,
                                       rewrite_graph=False)
        self.ratio = np.array([ratio], np.float32)
        self.reset()

    def reset(self) -> None:
        self.state = [np.zeros((1, 1, 1, 1), np.float32)] * 4

    def process(self, frame: np.ndarray) -> np.ndarray:
        src = frame.transpose(2, 0, 1)[None].astype(np.float32) * np.float32(1 / 255)
        out = self.backend.run(dict(zip(STATES, self.state), src=src, downsample_ratio=self.ratio))
        self.state = [out[f"r{i}o"].copy() for i in range(1, 5)]
        return out["pha"][0, 0].copy()


class MtcRvm:
    """An mtc artifact through mtc.runtime, labelled by its precision and the backend it got."""

    def __init__(self, folder: Path, ratio: float, threads: int, backend: str = "auto", precision: str = "fp32"):
        import mtc.runtime

        self.session = mtc.runtime.load(folder, backend=backend, precision=precision, downsample_ratio=ratio,
                                        scene_cut_threshold=None, threads=threads, allow_spinning=False)
        io = self.session.manifest.io
        alpha_only = "_alpha" if io.output_with_role("foreground") is None else ""
        inference = "" if precision == "fp32" else f"_{precision}"
        self.label = f"mtc_{self.session.manifest.precision.mode}{alpha_only}_{self.session.backend.name}{inference}"

    def reset(self) -> None:
        self.session.reset()

    def process(self, frame: np.ndarray) -> np.ndarray:
        return self.session.process(frame).alpha


class OneGrayLevel:
    """A runner fed each frame with one gray level of random noise (`one_gray_level_noise`; the
    same noise per frame index on every clip): not a peer, the yardstick for INT8's error, how
    far the model's own alpha moves for a change nobody sees."""

    def __init__(self, runner):
        self.runner = runner
        self.reset()

    def reset(self) -> None:
        self.runner.reset()
        self.index = 0

    def process(self, frame: np.ndarray) -> np.ndarray:
        self.index += 1
        return self.runner.process(one_gray_level_noise(frame, seed=self.index))


# ---- the stock INT8 peer ------------------------------------------------------------------------


def calibration_feeds(official: Path, cases: list[tuple[int, int, float]], frames: int):
    """Model inputs for INT8 calibration: the built-in clip as mtc calibrates on it (every
    background photo a shot), with the FP32 model's states carried."""
    for width, height, ratio in cases:
        runner = OrtRvm(official, ratio, threads=2)
        for frame in builtin_frames(ClipSpec(width=width, height=height, frames=frames, shots=CALIBRATION_SHOTS)):
            src = frame.transpose(2, 0, 1)[None].astype(np.float32) * np.float32(1 / 255)
            yield dict(zip(STATES, runner.state), src=src, downsample_ratio=runner.ratio)
            runner.process(frame)  # advance the FP32 state exactly as inference will


def _calibration_reader(official: Path, cases: list[tuple[int, int, float]], frames: int):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._feeds = calibration_feeds(official, cases, frames)

        def get_next(self):
            return next(self._feeds, None)

    return Reader()


def _peer_cache(name: str, *key) -> Path:
    # The calibration clip's shot count is in the key: a peer calibrated on other scenes is stale.
    digest = hashlib.sha256(repr((MOBILENETV3_ONNX.sha256, CALIBRATION_SHOTS, *key)).encode()).hexdigest()[:16]
    return cache_dir() / "peers" / f"{name}_{digest}"


def stock_int8(official: Path, cases: list[tuple[int, int, float]], calib_frames: int) -> Path:
    """ORT's quantize_static on the opset-17 official model; cached by inputs and ORT version."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    from mtc.export.onnx_ingest import load_onnx, sanitize

    target = _peer_cache("rvm_int8_qdq", ort.__version__, sorted(cases), calib_frames).with_suffix(".onnx")
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("quantizing the official RVM with quantize_static (QDQ, per-channel, min-max) ...")
    started = time.perf_counter()
    sanitized, _ = sanitize(load_onnx(official))
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "rvm_opset17.onnx"
        fp32.write_bytes(sanitized.SerializeToString())
        partial = Path(tmp) / "rvm_int8.onnx"
        # The min-max calibrator keeps only per-tensor ReduceMin/ReduceMax outputs, so memory stays
        # small. (Do not set CalibMaxIntermediateOutputs: in ORT 1.32 it discards what it collected.)
        quantize_static(fp32, partial, _calibration_reader(official, cases, calib_frames),
                        quant_format=QuantFormat.QDQ, per_channel=True, calibrate_method=CalibrationMethod.MinMax)
        partial.replace(target)
    log.info("quantized in %.0f s -> %s", time.perf_counter() - started, target)
    return target


def nncf_int8(official: Path, case: tuple[int, int, float], calib_frames: int) -> Path:
    """NNCF post-training INT8 (defaults) of the official model with this case's ratio frozen,
    as OpenVINO IR; cached like stock_int8.

    The ratio is frozen first because NNCF, calibrated over several ratios, folded the ratio
    input into a constant (the calibration mean: 0.625 for 1.0 and 0.25), so the network ran at
    the wrong resolution at every case (`network_resolution_problem` now reports that).
    """
    import nncf
    import onnx
    import openvino as ov

    from mtc.backends.tensorrt.graph import freeze_inputs

    target = _peer_cache("rvm_nncf_int8", nncf.__version__, ov.__version__, case, calib_frames)
    xml = target.with_suffix(".xml")
    if xml.is_file() and xml.with_suffix(".bin").is_file():
        return xml
    xml.parent.mkdir(parents=True, exist_ok=True)
    log.info("quantizing the official RVM at %dx%d ratio %g with nncf.quantize (defaults) ...", *case)
    started = time.perf_counter()
    items = [{k: v for k, v in feeds.items() if k != "downsample_ratio"}
             for feeds in calibration_feeds(official, [case], calib_frames)]
    with tempfile.TemporaryDirectory(dir=xml.parent) as tmp:
        frozen = Path(tmp) / "rvm_fixed_ratio.onnx"
        onnx.save(freeze_inputs(onnx.load(str(official)), {"downsample_ratio": np.array([case[2]], np.float32)}),
                  str(frozen))
        quantized = nncf.quantize(ov.Core().read_model(str(frozen)), nncf.Dataset(items), subset_size=len(items))
        partial = Path(tmp) / xml.name
        ov.save_model(quantized, str(partial))
        partial.with_suffix(".bin").replace(xml.with_suffix(".bin"))
        partial.replace(xml)
    log.info("quantized in %.0f s -> %s", time.perf_counter() - started, xml)
    return xml


def network_resolution_problem(runner, official: Path, width: int, height: int, ratio: float) -> str | None:
    """Why `runner` does not run the network at the size the official FP32 model uses at this
    ratio (its recurrent states have other shapes), or None. Such a peer is measured at another
    speed and accuracy than asked, which the table must say."""
    frame = np.zeros((height, width, 3), np.uint8)
    reference = OrtRvm(official, ratio, threads=1)
    reference.process(frame)
    runner.process(frame)
    expected, got = [np.shape(s)[2:] for s in reference.state], [np.shape(s)[2:] for s in runner.state]
    runner.reset()
    if got == expected:
        return None
    return f"states {got} instead of {expected} at ratio {ratio:g}"


# ---- frames -------------------------------------------------------------------------------------


@dataclass
class Clip:
    name: str
    frames: list[np.ndarray]
    gt: list[np.ndarray] | None = None  # HxW float32 alpha in [0, 1]


def evalset_clips(root: Path, width: int, height: int, frames: int, count: int) -> list[Clip]:
    """Foregrounds with exact alpha moving over real background videos (I = aF + (1 - a)B)."""
    from mtc.runtime.images import cover, read_image
    from mtc.runtime.video_reader import VideoReader

    videos = sorted((root / "videos").glob("*.mp4"))
    if not videos:
        raise SystemExit(f"no videos in {root / 'videos'}")
    clips = []
    for index in range(count):
        name = EVALSET_FOREGROUNDS[index % len(EVALSET_FOREGROUNDS)]
        image_path = next((root / "images").glob(f"{name}.*"))
        fg = Image.fromarray(read_image(image_path))
        alpha = Image.open(root / "alpha" / f"{name}.png").convert("L")
        # The subject fills ~90 % of the frame height, standing on the bottom edge.
        scale = 0.9 * height / fg.height
        size = (max(1, round(fg.width * scale)), max(1, round(fg.height * scale)))
        fg, alpha = fg.resize(size, Image.LANCZOS), alpha.resize(size, Image.LANCZOS)
        video = videos[index % len(videos)]
        with VideoReader(video) as reader:
            backgrounds = []
            for frame in reader:
                backgrounds.append(np.asarray(cover(Image.fromarray(frame), (width, height)), np.float32))
                if len(backgrounds) == frames:
                    break
        rgb_frames, gts = [], []
        for t, bg in enumerate(backgrounds):
            u = t / max(len(backgrounds) - 1, 1)
            x = (0.15 + 0.5 * u) * width - size[0] * 0.25  # drifts right, sub-pixel
            y = height - size[1] + 0.02 * height * math.sin(2 * math.pi * u)
            # Inverse affine map output -> source: a pure sub-pixel translation.
            coeffs = (1, 0, -x, 0, 1, -y)
            a = np.asarray(alpha.transform((width, height), Image.AFFINE, coeffs, Image.BILINEAR), np.float32) / 255
            f = np.asarray(fg.transform((width, height), Image.AFFINE, coeffs, Image.BILINEAR), np.float32)
            composite = f * a[..., None] + bg * (1 - a[..., None])
            rgb_frames.append(np.clip(composite + 0.5, 0, 255).astype(np.uint8))
            gts.append(a)
        clips.append(Clip(f"{name}@{video.stem}", rgb_frames, gts))
    return clips


def builtin_clips(width: int, height: int, frames: int) -> list[Clip]:
    return [Clip("builtin", list(builtin_frames(ClipSpec(width=width, height=height, frames=frames))))]


# ---- measuring ------------------------------------------------------------------------------------


def away_from_subject(gt: np.ndarray) -> np.ndarray:
    """The pixels of an HxW ground-truth alpha farther than NEAR_SUBJECT of its height from the subject."""
    from scipy.ndimage import maximum_filter

    radius = max(1, round(NEAR_SUBJECT * gt.shape[0]))
    return ~maximum_filter(gt > 0.01, size=2 * radius + 1)


@dataclass
class AwayError:
    """The part of the MAD vs FP32 (x1e3, over all pixels) that lies away from the subject."""

    total: float = 0.0
    pixels: int = 0

    def add(self, alpha: np.ndarray, reference: np.ndarray, away: np.ndarray) -> None:
        self.total += float(np.abs(alpha - reference, dtype=np.float64)[away].sum())
        self.pixels += alpha.size

    @property
    def mad(self) -> float | None:
        return 1e3 * self.total / self.pixels if self.pixels else None


@dataclass
class Result:
    label: str
    times: list[float] = field(default_factory=list)
    vs_fp32: list[StreamingMetrics] = field(default_factory=list)
    vs_gt: list[StreamingMetrics] = field(default_factory=list)
    away: AwayError = field(default_factory=AwayError)


# Scored per configuration on round 0: alpha error, its temporal change and its gradient error.
METRICS = ("mad", "dtssd", "grad")


def _mean_over_clips(accs: list[StreamingMetrics]) -> dict | None:
    if not accs:
        return None
    results = [a.result() for a in accs]
    total = sum(r["frames"] for r in results)
    return {m: sum(r[m] * r["frames"] for r in results) / total for m in METRICS}


def bench_case(runners: dict, clips: list[Clip], rounds: int, warmup: int) -> dict[str, Result]:
    """Interleave the configurations frame by frame (who goes first rotates), so a burst of load
    on a shared machine hits every configuration alike; round 0 also scores accuracy."""
    results = {label: Result(label) for label in runners}
    for runner in runners.values():
        for frame in clips[0].frames[:warmup]:
            runner.process(frame)
    labels = list(runners)
    reference_label = labels[0]
    for r in range(rounds):
        for clip in clips:
            for runner in runners.values():
                runner.reset()
            scores = {label: (StreamingMetrics(METRICS), StreamingMetrics(METRICS) if clip.gt is not None else None)
                      for label in labels} if r == 0 else {}
            for t, frame in enumerate(clip.frames):
                shift = t % len(labels)
                alphas = {}
                for label in labels[shift:] + labels[:shift]:
                    start = time.perf_counter()
                    alpha = runners[label].process(frame)
                    results[label].times.append(time.perf_counter() - start)
                    if scores:
                        alphas[label] = as_alpha(alpha)  # a copy: backends may reuse their buffers
                away = away_from_subject(clip.gt[t]) if scores and clip.gt is not None else None
                for label, (vs_fp32, vs_gt) in scores.items():
                    vs_fp32.add(alphas[label], alphas[reference_label])
                    if vs_gt is not None:
                        vs_gt.add(alphas[label], clip.gt[t])
                    if away is not None:
                        results[label].away.add(alphas[label], alphas[reference_label], away)
            for label, (vs_fp32, vs_gt) in scores.items():
                results[label].vs_fp32.append(vs_fp32)
                if vs_gt is not None:
                    results[label].vs_gt.append(vs_gt)
    return results


def summarize(result: Result, reference_fps: float | None) -> dict:
    ordered = sorted(result.times)
    median = statistics.median(ordered)
    fps = 1.0 / median
    return {"label": result.label, "frames_timed": len(ordered), "fps": fps, "median_ms": median * 1e3,
            "p90_ms": ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)] * 1e3,
            "speedup_vs_ort_fp32": fps / reference_fps if reference_fps else 1.0,
            "vs_fp32": _mean_over_clips(result.vs_fp32), "vs_gt": _mean_over_clips(result.vs_gt),
            "mad_vs_fp32_away_from_subject": result.away.mad}


# ---- output ---------------------------------------------------------------------------------------


def parse_artifact(spec: str, default_backend: str) -> tuple[Path, str, str]:
    """'DIR', 'DIR@BACKEND' or 'DIR@BACKEND:PRECISION' -> (folder, backend, inference precision)."""
    folder, _, backend = spec.rpartition("@")
    backend, _, precision = backend.partition(":")
    if folder and backend in ("auto", "onnxruntime", "openvino", "tensorrt"):
        return Path(folder), backend, precision or "fp32"
    return Path(spec), default_backend, "fp32"


def parse_cases(text: str) -> list[tuple[int, int, float]]:
    cases = []
    for part in text.split(","):
        size, _, ratio = part.strip().partition("@")
        width, height = (int(v) for v in size.lower().split("x"))
        cases.append((width, height, float(ratio) if ratio else min(512 / max(width, height), 1.0)))
    return cases


def markdown(result: dict) -> str:
    m = result["machine"]
    source = "evalset composites (moving foregrounds with exact alpha over real videos)" if result["evalset"] \
        else "the built-in clip"
    lines = [
        "## Peers: RVM MobileNetV3 on this CPU, side by side",
        "",
        f"{ran_on(result, 'python benchmarks/bench_peers.py')}, {result['threads']} "
        f"threads, onnxruntime {m['onnxruntime']}, openvino {m['libraries'].get('openvino', 'absent')}"
        + (f", load average {m['load_average'][0]:.1f} at start" if m.get("load_average") else "") + ". "
        f"{result['frames']} frames per clip of {source}; FPS = 1 / median per-frame time over "
        f"{result['rounds']} rounds, configurations interleaved frame by frame (spinning off). "
        "MAD ×1e3 and dtSSD ×1e2 of alpha vs the "
        "FP32 reference (`ort_fp32`) on the same frames" + (
            ", and vs ground truth. The background videos have people of their own (a juggler, a dog walker), "
            "whom every configuration mattes and the ground truth counts as background: GT errors carry that "
            "share equally for all configurations. The last column is the part of the MAD vs FP32 that lies "
            f"farther than {NEAR_SUBJECT:.0%} of the frame height from the subject's ground-truth alpha: "
            "decisions about those people, not the subject's edges." if result["evalset"] else "."),
        "",
        "Peers: `ort_*` plain ONNX Runtime sessions on the official file (`ort_int8_qdq`: its stock "
        "`quantize_static`); `openvino_*` and `nncf_int8_openvino` (NNCF's `nncf.quantize` with defaults) "
        "compiled with static shapes per resolution and explicit inference precision; both INT8 peers calibrated "
        f"on {result['calib_frames']} built-in frames per resolution with the FP32 states carried. `mtc_*`: mtc "
        "artifacts through mtc.runtime (`_bf16`: OpenVINO runs the float parts in BF16).",
        "",
        "| resolution | ratio | configuration | FPS | × ORT FP32 | MAD vs FP32 | dtSSD vs FP32 | MAD vs GT | dtSSD vs GT |"
        + (" MAD vs FP32 away from the subject |" if result["evalset"] else ""),
        "|---|---|---|---|---|---|---|---|---|" + ("---|" if result["evalset"] else ""),
    ]
    fmt = lambda d, k: f"{d[k]:.3g}" if d else "–"  # noqa: E731  (3 significant digits: 2e-05 is not 0)
    footnotes = []
    for case in result["cases"]:
        for c in case["configs"]:
            label = c["label"]
            if c.get("network_resolution_problem"):
                footnotes.append(f"{case['resolution']} {label}: {c['network_resolution_problem']}")
                label += " †"
            lines.append(f"| {case['resolution']} | {case['downsample_ratio']:g} | {label} | {c['fps']:.1f} "
                         f"| {c['speedup_vs_ort_fp32']:.2f} | {fmt(c['vs_fp32'], 'mad')} | {fmt(c['vs_fp32'], 'dtssd')} "
                         f"| {fmt(c['vs_gt'], 'mad')} | {fmt(c['vs_gt'], 'dtssd')} |"
                         + (f" {away_cell(c)} |" if result["evalset"] else ""))
    if footnotes:
        lines += ["", "† runs the network at another resolution than the official model at that ratio (the model "
                  "quantized the downsample ratio's path): " + "; ".join(footnotes) + "."]
    lines += ["", "![FPS vs temporal error](peers.png)" if result.get("plot") else ""]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the plot (pip install matplotlib)", file=sys.stderr)
        return False
    # Temporal error vs the FP32 reference separates the configurations (vs ground truth, the
    # model's own error dominates); symlog keeps the exact ones (0) on the axis. One legend
    # instead of 16 overlapping annotations.
    labels = list(dict.fromkeys(c["label"] for case in result["cases"] for c in case["configs"]))
    colors = plt.get_cmap("tab20")
    markers = "osD^v<>Ph*X"
    fig, axes = plt.subplots(1, len(result["cases"]), figsize=(5.5 * len(result["cases"]) + 3, 4.8), squeeze=False)
    for ax, case in zip(axes[0], result["cases"]):
        for c in case["configs"]:
            i = labels.index(c["label"])
            x = c["vs_fp32"]["dtssd"] if c["vs_fp32"] else float("nan")
            ax.scatter(x, c["fps"], s=50, color=colors(i % 20), marker=markers[i % len(markers)], label=c["label"])
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_title(f"{case['resolution']}, ratio {case['downsample_ratio']:g}")
        ax.set_xlabel("dtSSD ×1e2 vs FP32 reference (lower is better)")
        ax.set_ylabel("frames / s (higher is better)")
        ax.grid(alpha=0.3)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="center right", fontsize=8, frameon=False)
    fig.suptitle(f"RVM MobileNetV3 peers — {result['machine']['cpu']}, {result['threads']} threads")
    fig.tight_layout(rect=(0, 0, 1 - 2.8 / fig.get_figwidth(), 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _cpu_has_bf16() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", action="append", default=[],
                        help="mtc artifact DIR, DIR@BACKEND or DIR@BACKEND:PRECISION (repeatable)")
    parser.add_argument("--artifact-backend", default="auto", help="mtc backend for --artifact (default: auto)")
    parser.add_argument("--cases", default=DEFAULT_CASES, help="WxH@ratio list (default: %(default)s)")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (round 0 also scores accuracy)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--evalset", type=Path, help="evalset folder (e.g. ../shared/evalset): GT composites")
    parser.add_argument("--clips", type=int, default=3, help="evalset clips per resolution")
    parser.add_argument("--calib-frames", type=int, default=16, help="built-in clip frames per case for INT8")
    parser.add_argument("--no-openvino", action="store_true")
    parser.add_argument("--one-gray-level", action="store_true",
                        help="also plain ONNX Runtime FP32 on frames with one gray level of noise (a yardstick)")
    parser.add_argument("--json", help="also write the JSON here")
    parser.add_argument("--plot", type=Path, default=PLOT, help="PNG plot path (default: %(default)s)")
    parser.add_argument("--no-results", action="store_true", help="do not update RESULTS.md or the plot")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    cases = parse_cases(args.cases)
    official = fetch_weights(MOBILENETV3_ONNX)
    int8 = stock_int8(official, cases, args.calib_frames)
    use_openvino = not args.no_openvino and importlib.util.find_spec("openvino") is not None
    if not args.no_openvino and not use_openvino:
        print("openvino is not installed: skipping the OpenVINO peers (pip install openvino)", file=sys.stderr)
    use_nncf = use_openvino and importlib.util.find_spec("nncf") is not None
    if use_openvino and not use_nncf:
        print("nncf is not installed: skipping the NNCF peer (pip install 'mtc[peers]')", file=sys.stderr)
    use_bf16 = use_openvino and _cpu_has_bf16()

    out_cases, nncf_models = [], []
    for width, height, ratio in cases:
        log.info("%dx%d ratio %g: preparing frames", width, height, ratio)
        clips = evalset_clips(args.evalset, width, height, args.frames, args.clips) if args.evalset \
            else builtin_clips(width, height, args.frames)
        runners = {"ort_fp32": OrtRvm(official, ratio, args.threads),
                   "ort_int8_qdq": OrtRvm(int8, ratio, args.threads)}
        if args.one_gray_level:
            runners[ONE_GRAY_LEVEL] = OneGrayLevel(OrtRvm(official, ratio, args.threads))
        if use_openvino:
            runners["openvino_fp32"] = OpenVinoRvm(official, ratio, args.threads)
            if use_bf16:
                runners["openvino_bf16"] = OpenVinoRvm(official, ratio, args.threads, "bf16")
            runners["openvino_int8_qdq"] = OpenVinoRvm(int8, ratio, args.threads)
            if use_nncf:
                nncf_models.append(nncf_int8(official, (width, height, ratio), args.calib_frames))
                runners["nncf_int8_openvino"] = OpenVinoRvm(nncf_models[-1], ratio, args.threads)
        notes = {}
        for label in ("ort_int8_qdq", "openvino_int8_qdq", "nncf_int8_openvino"):
            problem = network_resolution_problem(runners[label], official, width, height, ratio) \
                if label in runners else None
            if problem:
                log.warning("%s runs the network at another resolution: %s", label, problem)
                notes[label] = problem
        for spec in args.artifact:
            folder, backend, precision = parse_artifact(spec, args.artifact_backend)
            runner = MtcRvm(folder, ratio, args.threads, backend, precision)
            label = runner.label if runner.label not in runners else f"{runner.label}_{folder.name}"
            runners[label] = runner
        log.info("%dx%d: %d configurations x %d rounds x %d frames", width, height, len(runners), args.rounds,
                 sum(len(c.frames) for c in clips))
        results = bench_case(runners, clips, args.rounds, args.warmup)
        reference_fps = 1.0 / statistics.median(results["ort_fp32"].times)
        out_cases.append({"resolution": f"{width}x{height}", "downsample_ratio": ratio,
                          "clips": [c.name for c in clips],
                          "configs": [{**summarize(r, reference_fps), "network_resolution_problem": notes.get(r.label)}
                                      for r in results.values()]})
        del runners, clips

    result = {"benchmark": "peers", "machine": machine_info(), "threads": args.threads, "frames": args.frames,
              "rounds": args.rounds, "calib_frames": args.calib_frames, "int8_model": str(int8),
              "nncf_models": [str(p) for p in nncf_models],
              "evalset": str(args.evalset) if args.evalset else None, "cases": out_cases}
    text = report_json(result)
    print(text, end="")
    if args.json:
        Path(args.json).write_text(text)
    if not args.no_results:
        result["plot"] = plot(result, args.plot)
        update_results("bench_peers", markdown(result))


if __name__ == "__main__":
    main()
