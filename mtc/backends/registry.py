"""Which backend runs a model: availability probing and the `backend="auto"` order.

The order, best first:

1. `tensorrt` — an NVIDIA GPU is visible and TensorRT + cuda-python are installed;
2. `onnxruntime` with the CUDA provider — a GPU and an onnxruntime build that has CUDA;
3. on the CPU, `openvino` when installed, else `onnxruntime`. Measured with
   benchmarks/bench_backends.py (FP32 RVM artifact, mtc.runtime sessions, interleaved, same
   frames, 2 threads): on an AMD EPYC with AVX-512 VNNI/BF16, OpenVINO FP32 with static shapes
   14.7 vs ONNX Runtime 9.7 FPS at 512x288 ratio 1.0 (1.52x) and 10.0 vs 7.4 FPS at 1920x1080
   ratio 0.25 (1.35x, with mtc's graph rewrites; 0.98x before the refiner's upsamples became
   transposed convolutions); on an Intel Xeon with AMX (the run in benchmarks/RESULTS.md) 24.0 vs
   12.9 (1.86x) and 15.1 vs 9.9 FPS (1.52x); alpha max |diff| 8e-6 vs ONNX Runtime. OpenVINO is
   pinned to FP32 here; BF16 (EPYC 2.69x / 1.78x, Xeon 3.59x / 1.89x, alpha MAD 0.34-0.43e-3)
   only when asked. Dynamic shapes would lose (1.20x / 0.83x), which is why the OpenVINO backend
   compiles a static model per resolution.

INT8 (Q/DQ) artifacts follow the activation type. With signed int8 activations OpenVINO's
low-precision transformations lose accuracy: on RVM, alpha MAD x1e3 vs FP32 of 30-44 for both
onnxruntime's `quantize_static` output and an mtc int8-activation artifact, where ONNX Runtime
running the same files gives 6-7 and 1-3 (benchmarks/bench_peers.py). With uint8 activations
(mtc's `speed` and `openvino` presets) OpenVINO matches ONNX Runtime (MAD 0.65 vs 0.62, dtSSD
0.49 vs 0.48 on evalset composites at 512x288) and runs 2.28x plain ONNX Runtime FP32 where
ONNX Runtime runs the same file at 1.51x; at 1920x1080 ratio 0.25 it is 1.98x against 1.39x
(bench_peers on the EPYC; 1.30x against 1.36x before the transposed-conv upsampling; on the Xeon
2.56x against 1.27x and 1.89x against 1.18x). So `auto` sends
uint8-activation INT8 artifacts to OpenVINO like FP32 ones and keeps int8-activation ones on
ONNX Runtime; `backend="openvino"` still runs those (logged).

FP16 artifacts stay on ONNX Runtime on the CPU too: it is where their gates were checked, and
OpenVINO runs them less faithfully and slower than the FP32 artifact (RVM on a Xeon with AMX,
8 built-in frames, alpha MAD x1e3 vs FP32: 0.19 / 0.13 against ONNX Runtime's 0.11 / 0.08 at
512x288 / HD; 50.7 / 81.4 ms against 43.3 / 68.0 for the FP32 artifact on OpenVINO).

Probing is cheap and imports nothing heavy: `importlib.util.find_spec` for the optional
packages, onnxruntime's provider list, and the CUDA driver (libcuda) for the GPU count.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
from dataclasses import dataclass

from mtc.errors import MtcError

log = logging.getLogger("mtc")

BACKENDS = ("onnxruntime", "openvino", "tensorrt")
CPU_PREFERENCE = ("openvino", "onnxruntime")  # by measurement, see the module docstring


@dataclass(frozen=True)
class Availability:
    """What this machine offers."""

    gpu_count: int = 0
    tensorrt: bool = False  # tensorrt and cuda-python importable
    polygraphy: bool = False  # needed only to build plans
    openvino: bool = False
    ort_providers: tuple[str, ...] = ("CPUExecutionProvider",)


@dataclass(frozen=True)
class BackendChoice:
    name: str
    reason: str
    providers: tuple[str, ...] | None = None  # for onnxruntime


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def cuda_device_count() -> int:
    """GPUs the CUDA driver sees (0 without a driver); needs no Python CUDA package."""
    for library in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            cuda = ctypes.CDLL(library)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return count.value
    return 0


def probe_availability() -> Availability:
    import onnxruntime as ort

    has_cuda_python = _has_module("cuda")
    return Availability(
        gpu_count=cuda_device_count(),
        tensorrt=_has_module("tensorrt") and has_cuda_python,
        polygraphy=_has_module("polygraphy"),
        openvino=_has_module("openvino"),
        ort_providers=tuple(ort.get_available_providers()),
    )


def _unfaithful_on_openvino(model_precision: str, activation_type: str | None) -> tuple[str, str] | None:
    """(which artifacts, the fix) where OpenVINO runs an artifact less faithfully than the ONNX
    Runtime its gates were checked on (see the module docstring), else None."""
    if model_precision == "int8" and activation_type != "uint8":
        return ("INT8 artifacts with signed activations",
                "on RVM alpha MAD 30-44e-3 vs FP32; re-quantize with --preset speed (uint8 activations) for OpenVINO")
    if model_precision == "fp16":
        return ("FP16 artifacts", "they also run slower than their FP32 artifact: on a CPU, run that on OpenVINO")
    return None


def choose_backend(requested: str, available: Availability, *, precision: str = "fp32",
                   model_precision: str = "fp32", activation_type: str | None = None) -> BackendChoice:
    """Resolve "auto" (or check an explicit name) against what is available.

    Args:
        precision: the inference precision asked for (OpenVINO's bf16 is the only non-fp32).
        model_precision: the artifact's precision (manifest precision.mode).
        activation_type: for INT8 artifacts, "int8" or "uint8" activations (manifest precision).

    Raises:
        MtcError: unknown name, or the named backend cannot run here (with the fix).
    """
    if requested not in ("auto", *BACKENDS):
        raise MtcError(f"unknown backend {requested!r}", hint=f"choose one of: auto, {', '.join(BACKENDS)}")
    gpu = available.gpu_count > 0
    if requested in ("tensorrt", "onnxruntime") and precision != "fp32":
        raise MtcError(f"{requested} runs the graph's own types; precision {precision!r} is an OpenVINO option",
                       hint="use backend='openvino' for bf16, or precision='fp32'")
    if requested == "tensorrt":
        if not available.tensorrt:
            raise MtcError("backend 'tensorrt' needs TensorRT and cuda-python", hint="pip install 'mtc[trt]'")
        if not gpu:
            raise MtcError("backend 'tensorrt' needs an NVIDIA GPU, and none is visible",
                           hint="use backend='onnxruntime' or 'openvino' on this machine")
        return BackendChoice("tensorrt", "requested")
    if requested == "openvino":
        if not available.openvino:
            raise MtcError("backend 'openvino' is not installed", hint="pip install 'mtc[openvino]'")
        unfaithful = _unfaithful_on_openvino(model_precision, activation_type)
        if unfaithful is not None:
            what, fix = unfaithful
            log.warning("openvino runs %s less faithfully than the ONNX Runtime they were checked on; %s", what, fix)
        return BackendChoice("openvino", "requested")
    if requested == "onnxruntime":
        return BackendChoice("onnxruntime", "requested")

    if precision != "fp32":  # only OpenVINO turns an FP32 graph into bf16/fp16 at run time
        if available.openvino:
            return BackendChoice("openvino", f"precision {precision} is only offered by OpenVINO")
        raise MtcError(f"precision {precision!r} needs OpenVINO", hint="pip install 'mtc[openvino]', or use precision='fp32'")
    if gpu and available.tensorrt:
        return BackendChoice("tensorrt", f"{available.gpu_count} NVIDIA GPU(s) and TensorRT are available")
    if gpu and "CUDAExecutionProvider" in available.ort_providers:
        why = "an NVIDIA GPU and onnxruntime's CUDA provider are available"
        if not available.tensorrt:
            why += " (TensorRT is not installed: pip install 'mtc[trt]')"
        return BackendChoice("onnxruntime", why, providers=("cuda",))
    unfaithful = _unfaithful_on_openvino(model_precision, activation_type)
    if unfaithful is not None:
        return BackendChoice("onnxruntime", f"CPU only; {unfaithful[0]} stay on ONNX Runtime, where they were checked "
                             "(OpenVINO runs them less faithfully)", providers=("cpu",))
    for name in CPU_PREFERENCE:
        if name == "openvino" and available.openvino:
            return BackendChoice("openvino", "CPU only; OpenVINO (static shapes) measured faster than ONNX Runtime")
        if name == "onnxruntime":
            extra = "" if available.openvino else " (OpenVINO, faster on CPU, is not installed: pip install 'mtc[openvino]')"
            return BackendChoice("onnxruntime", f"CPU only{extra}", providers=("cpu",))
    raise AssertionError("unreachable: onnxruntime is always available")
