"""How fast a quantized model runs against its FP32 source on this machine's CPU: FP32 and the
candidate timed frame by frame in one interleaved run, on ONNX Runtime and, where `mtc.runtime`
would choose it, OpenVINO."""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from mtc.quant.calibration import Clip
from mtc.quant.checks import cpu_backend
from mtc.runtime.progress import Stages


def interleaved_fps(io, models: dict[str, tuple[str, Path | bytes]], clip: Clip, *, rounds: int = 3, frames: int = 8,
                    stages: Stages | None = None) -> dict[str, float]:
    """FPS (1 / median frame time) of each (backend, model) over the same frames, on the CPU,
    interleaved frame by frame (who goes first alternates) so bursts of load on a shared machine
    hit every model alike. Backends: "onnxruntime" (spinning off) or "openvino" (FP32, static
    shapes, no compile cache; "openvino-bf16" in BF16). With `stages`, the timing is a stage with a bar over its runs."""
    from mtc.runtime.session import MattingSession

    frames_used = clip.frames[:frames]
    steps = len(models) * (1 + rounds * len(frames_used))
    timing = stages.stage(f"speed timing: {len(models)} models interleaved", total=steps) \
        if stages is not None else contextlib.nullcontext(lambda: None)
    with timing as advance, tempfile.TemporaryDirectory(prefix="mtc-timing-") as scratch:
        sessions = {name: MattingSession(io, cpu_backend(backend, model, io, Path(scratch) / f"{name}.onnx"),
                                         downsample_ratio=clip.downsample_ratio, scene_cut_threshold=None)
                    for name, (backend, model) in models.items()}
        for session in sessions.values():
            session.process(frames_used[0])  # warm-up (and OpenVINO's compile)
            advance()
        times = {name: [] for name in sessions}
        for _ in range(rounds):
            for session in sessions.values():
                session.reset()
            for i, frame in enumerate(frames_used):
                for name in (list(sessions) if i % 2 == 0 else list(reversed(sessions))):
                    t0 = time.perf_counter()
                    sessions[name].process(frame)
                    times[name].append(time.perf_counter() - t0)
                    advance()  # outside the timed span
    return {name: 1.0 / float(np.median(t)) for name, t in times.items()}


def measure_speed(io, fp32_path: Path, candidate: onnx.ModelProto, clip: Clip, *, precision: str,
                  activation_type: str | None = None, all_int8: onnx.ModelProto | None = None,
                  stages: Stages | None = None) -> dict:
    """FP32 vs the candidate on ONNX Runtime CPU, and vs the all-INT8 model when layers went back
    to float: what the fallback cost. Where `backend="auto"` would run the artifact on OpenVINO
    here, all of them are timed there too, in the same interleaved run: on CPUs whose ONNX Runtime
    integer kernels gain little (1.2x on a Xeon with AMX) that is the speed users get, and the
    float layers' cost with it.
    Indicative only; benchmarks/ has the controlled comparison. `stages` reports the timing."""
    from mtc.backends.registry import choose_backend, probe_availability

    if precision == "bf16":  # the same graph: FP32 on both backends against OpenVINO's BF16
        fps = interleaved_fps(io, {"fp32": ("onnxruntime", fp32_path), "fp32_openvino": ("openvino", fp32_path),
                                   "candidate": ("openvino-bf16", fp32_path)}, clip, stages=stages)
        return {"backend": "openvino-bf16", "clip": clip.name, "fps_fp32": fps["fp32"], "fps": fps["candidate"],
                "speedup": fps["candidate"] / fps["fp32"], "auto_backend": "openvino",
                "openvino": {"fps_fp32": fps["fp32_openvino"], "fps": fps["candidate"],
                             "speedup": fps["candidate"] / fps["fp32_openvino"],
                             "vs_onnxruntime_fp32": fps["candidate"] / fps["fp32"]}}
    candidate_bytes = candidate.SerializeToString()
    models = {"fp32": ("onnxruntime", fp32_path), "candidate": ("onnxruntime", candidate_bytes)}
    if all_int8 is not None:
        models["all_int8"] = ("onnxruntime", all_int8.SerializeToString())
    available = probe_availability()
    auto = choose_backend("auto", available, model_precision=precision, activation_type=activation_type,
                          checked_cpu=available.cpu).name
    if auto == "openvino":
        models["fp32_openvino"] = ("openvino", fp32_path)
        models["candidate_openvino"] = ("openvino", candidate_bytes)
        if all_int8 is not None:  # where INT8 gains most, float layers cost most: measure it there too
            models["all_int8_openvino"] = ("openvino", models["all_int8"][1])
    fps = interleaved_fps(io, models, clip, stages=stages)
    speed = {"backend": "onnxruntime-cpu", "clip": clip.name, "fps_fp32": fps["fp32"], "fps": fps["candidate"],
             "speedup": fps["candidate"] / fps["fp32"], "auto_backend": auto}
    if all_int8 is not None:
        speed["fps_all_int8"] = fps["all_int8"]
        speed["float_layers_cost"] = 1.0 - fps["candidate"] / fps["all_int8"]  # share of all-INT8 FPS given up
    if auto == "openvino":
        speed["openvino"] = {"fps_fp32": fps["fp32_openvino"], "fps": fps["candidate_openvino"],
                             "speedup": fps["candidate_openvino"] / fps["fp32_openvino"],
                             "vs_onnxruntime_fp32": fps["candidate_openvino"] / fps["fp32"]}
        if all_int8 is not None:
            speed["openvino"]["fps_all_int8"] = fps["all_int8_openvino"]
            speed["openvino"]["float_layers_cost"] = 1.0 - fps["candidate_openvino"] / fps["all_int8_openvino"]
    return speed
