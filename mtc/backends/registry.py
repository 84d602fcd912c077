"""The backend registry: which backends exist, what each can do here, and `backend="auto"`.

Each backend is one package under mtc/backends/ whose `__init__` defines `BACKEND`, a
`BackendEntry`: a probe (is it usable on this machine, on which device, and which artifacts
does it run less faithfully than the ONNX Runtime they were checked on), a session factory and
an ahead-of-time build. Adding a backend is one package and one line in `BACKEND_MODULES`.
Backend packages import their engine libraries lazily, so the registry itself is cheap.

`auto` takes the usable backend with the best rank for this machine (TensorRT on a GPU, then
ONNX Runtime's CUDA provider, then OpenVINO on the CPU, then ONNX Runtime on the CPU), skipping
a backend whose probe says it runs this kind of artifact unfaithfully. The measurements behind
the order and the exceptions are in docs/backends.md.

Probing imports nothing heavy: `importlib.util.find_spec` for the optional packages,
onnxruntime's provider list, the CUDA driver (libcuda) for the GPU count, /proc/cpuinfo for
the CPU class. Tests pass a fake `Availability`.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mtc.backends.cpu import cpu_class, has_bf16, int8_saturates
from mtc.errors import MtcError

log = logging.getLogger("mtc")

BACKEND_MODULES = ("mtc.backends.onnxruntime", "mtc.backends.openvino", "mtc.backends.tensorrt")


@dataclass(frozen=True)
class Availability:
    """What this machine offers."""

    gpu_count: int = 0
    tensorrt: bool = False  # tensorrt and cuda-python importable
    polygraphy: bool = False  # needed only to build plans
    openvino: bool = False
    ort_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    cpu: str = "other"  # mtc.backends.cpu class
    bf16: bool = False  # the CPU computes BF16 natively (AVX-512 BF16 or AMX)


@dataclass(frozen=True)
class Probe:
    """What one backend can do on this machine.

    Attributes:
        usable: it can run here.
        rank: auto order on this machine, lower first.
        reason: why it is chosen (usable) or why it cannot run (unusable).
        fix: how to make it usable (unusable only).
        providers: onnxruntime providers to use, best first.
        unfaithful: artifact kind -> why this backend runs it less faithfully here (kinds:
            see `artifact_kind`).
        precisions: inference precisions it offers for an FP32 graph.
    """

    usable: bool
    rank: int = 99
    reason: str = ""
    fix: str = ""
    providers: tuple[str, ...] | None = None
    unfaithful: dict[str, str] = field(default_factory=dict)
    precisions: tuple[str, ...] = ("fp32",)


@dataclass(frozen=True)
class BackendEntry:
    """One backend: its probe, session factory and ahead-of-time build.

    `options` is the backend's own frozen dataclass of settings (its defaults when built with
    no arguments). `open(model_path, *, io, manifest, folder, common, options, choice)` returns
    a Backend, where `common` holds the settings every backend reads (threads, precision);
    `build(folder, manifest, profiles, *, common, options, force)` returns one line per thing built.
    """

    name: str
    title: str  # as people write it: "ONNX Runtime"
    probe: Callable[[Availability], Probe]
    open: Callable[..., Any]
    options: type
    build: Callable[..., list[str]] | None = None


@dataclass(frozen=True)
class BackendChoice:
    name: str
    reason: str
    providers: tuple[str, ...] | None = None  # for onnxruntime


def backends() -> dict[str, BackendEntry]:
    """Every registered backend by name."""
    entries = (importlib.import_module(module).BACKEND for module in BACKEND_MODULES)
    return {entry.name: entry for entry in entries}


def backend_names() -> tuple[str, ...]:
    return tuple(backends())


def get_backend(name: str) -> BackendEntry:
    entries = backends()
    if name not in entries:
        raise MtcError(f"unknown backend {name!r}", hint=f"choose one of: auto, {', '.join(entries)}")
    return entries[name]


def has_module(name: str) -> bool:
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

    return Availability(
        gpu_count=cuda_device_count(),
        tensorrt=has_module("tensorrt") and has_module("cuda"),
        polygraphy=has_module("polygraphy"),
        openvino=has_module("openvino"),
        ort_providers=tuple(ort.get_available_providers()),
        cpu=cpu_class(),
        bf16=has_bf16(),
    )


def artifact_kinds(model_precision: str, activation_type: str | None, *, cpu: str = "other",
                   checked_cpu: str | None = None) -> set[str]:
    """What a probe's `unfaithful` map is keyed by: "fp32", "fp16", "int8-s8" (signed or
    unrecorded activations) or "int8-u8", plus "int8-unchecked-cpu" for an INT8 artifact on a
    CPU whose integer kernels saturate when its checks ran on another class."""
    if model_precision != "int8":
        return {model_precision}
    kinds = {"int8-u8" if activation_type == "uint8" else "int8-s8"}
    if int8_saturates(cpu) and checked_cpu != cpu:
        kinds.add("int8-unchecked-cpu")
    return kinds


def _unfaithful(probe: Probe, kinds: set[str]) -> str | None:
    return next((probe.unfaithful[k] for k in sorted(kinds) if k in probe.unfaithful), None)


def choose_backend(requested: str, available: Availability, *, precision: str = "fp32",
                   model_precision: str = "fp32", activation_type: str | None = None,
                   checked_cpu: str | None = None) -> BackendChoice:
    """Resolve "auto" (or check an explicit name) against what is available.

    Args:
        precision: the inference precision asked for (OpenVINO's bf16 is the only non-fp32).
        model_precision: the artifact's precision (manifest precision.mode).
        activation_type: for INT8 artifacts, "int8" or "uint8" activations (manifest precision).
        checked_cpu: for INT8 artifacts, the CPU class their checks ran on (manifest precision).

    Raises:
        MtcError: unknown name, or the named backend cannot run here (with the fix).
    """
    kinds = artifact_kinds(model_precision, activation_type, cpu=available.cpu, checked_cpu=checked_cpu)
    entries = backends()
    if requested != "auto":
        entry = get_backend(requested)
        probe = entry.probe(available)
        offered = [e for e in entries.values() if precision in e.probe(available).precisions]
        if not offered:
            raise MtcError(f"unknown precision {precision!r}", hint="use fp32, or bf16 on OpenVINO")
        if precision not in probe.precisions:
            raise MtcError(f"{requested} runs the graph's own types; precision {precision!r} is an "
                           f"{' / '.join(e.title for e in offered)} option",
                           hint=f"use backend={offered[0].name!r} for {precision}, or precision='fp32'")
        if not probe.usable:
            raise MtcError(probe.reason, hint=probe.fix)
        problem = _unfaithful(probe, kinds)
        if problem:
            log.warning("%s runs %s", requested, problem)
        return BackendChoice(requested, "requested", providers=probe.providers)

    probes = sorted(((entry.probe(available), entry) for entry in entries.values()), key=lambda p: p[0].rank)
    usable = [(probe, entry) for probe, entry in probes if probe.usable and precision in probe.precisions]
    if not usable:
        offered = [(probe, entry) for probe, entry in probes if precision in probe.precisions]
        raise MtcError(f"precision {precision!r} needs {' or '.join(e.title for _, e in offered) or 'another backend'}",
                       hint=offered[0][0].fix if offered else "use precision='fp32'")
    faithful = [(probe, entry) for probe, entry in usable if _unfaithful(probe, kinds) is None]
    if not faithful:  # no backend here runs this artifact faithfully (e.g. INT8 on an AVX2-only CPU)
        probe, entry = usable[0]
        problem = _unfaithful(probe, kinds)
        log.warning("%s runs %s; no backend here does better", entry.name, problem)
        return BackendChoice(entry.name, f"{probe.reason}; it runs {problem}", providers=probe.providers)
    probe, entry = faithful[0]
    reason = probe.reason
    passed_over = [_unfaithful(p, kinds) for p, _ in usable[:usable.index(faithful[0])]]
    if passed_over:
        reason += f"; {passed_over[0].split(' less faithfully')[0]} stay off the faster backend, which runs them less faithfully"
    return BackendChoice(entry.name, reason, providers=probe.providers)
