"""Which x86 class this CPU is, as far as integer kernels are concerned.

INT8 fidelity depends on it: without VNNI, u8 x s8 dot products go through `vpmaddubsw`,
whose int16 pair sums saturate when both products are large, so ONNX Runtime and OpenVINO
compute full-range INT8 weights wrongly there (docs/backends.md has the measurements).
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

# Best first; an artifact's checks are valid for the class they ran on.
CPU_CLASSES = ("amx", "avx512-vnni", "avx-vnni", "avx2", "other")


def class_from_flags(flags: set[str]) -> str:
    """The CPU class from /proc/cpuinfo-style feature flags."""
    if "amx_int8" in flags:
        return "amx"
    if "avx512_vnni" in flags:
        return "avx512-vnni"
    if "avx_vnni" in flags:
        return "avx-vnni"
    if "avx2" in flags:
        return "avx2"
    return "other"


def bf16_from_flags(flags: set[str]) -> bool:
    """Whether the CPU computes BF16 natively (AVX-512 BF16 or AMX), as OpenVINO's BF16 needs."""
    return bool({"avx512_bf16", "amx_bf16"} & flags)


@functools.cache
def _cpu_flags() -> frozenset[str] | None:
    """The feature flags of /proc/cpuinfo, or None where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    line = next((line for line in text.splitlines() if line.startswith("flags")), None)
    return frozenset(line.split(":", 1)[1].split()) if line is not None else frozenset()


def has_bf16() -> bool:
    """Whether this CPU computes BF16 natively (False where the flags cannot be read)."""
    flags = _cpu_flags()
    return flags is not None and bf16_from_flags(set(flags))


def cpu_class() -> str:
    """This machine's CPU class (see CPU_CLASSES); "other" where the flags cannot be read."""
    flags = _cpu_flags()
    if flags is None:
        return "other" if platform.machine().lower() not in ("x86_64", "amd64") else "avx2"
    return class_from_flags(set(flags)) if flags else "other"


def int8_saturates(cpu: str) -> bool:
    """Whether this class's integer kernels saturate on full-range INT8 weights (AVX2 without
    VNNI; VNNI and AMX accumulate in int32, and other architectures are not known to)."""
    return cpu == "avx2"
