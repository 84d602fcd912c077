"""What a benchmark ran on, so numbers are never compared across machines by accident.

Reads ``/proc/cpuinfo`` and ``/proc/meminfo`` where they exist and library versions from
package metadata (nothing optional is imported just to learn its version).
"""

from __future__ import annotations

import os
import platform
import re
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from mtc.backends.cpu import cpu_class

# Instruction-set features that decide which kernels a CPU backend can use.
ISA_FLAGS = frozenset({
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8",
    # Arm (the "Features" line)
    "asimd", "asimddp", "asimdhp", "sve", "sve2", "i8mm", "bf16",
})

# Distribution name -> key in the description; absent packages are left out.
LIBRARIES = {
    "mtc": "mtc", "numpy": "numpy", "onnx": "onnx", "onnxruntime": "onnxruntime",
    "onnxruntime-gpu": "onnxruntime_gpu", "openvino": "openvino", "tensorrt": "tensorrt", "av": "av",
    "pillow": "pillow",
}


def _cpu() -> tuple[str, list[str]]:
    cpu, flags = platform.processor() or platform.machine() or "?", []
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return cpu, flags
    for pattern in (r"model name\s*:\s*(.*)", r"Hardware\s*:\s*(.*)", r"cpu model\s*:\s*(.*)"):
        match = re.search(pattern, text)
        if match:
            cpu = match[1].strip()
            break
    match = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", text, re.MULTILINE)
    if match:
        flags = sorted(set(match[1].split()) & ISA_FLAGS)
    return cpu, flags


def _memory_bytes() -> int | None:
    try:
        match = re.search(r"MemTotal:\s*(\d+)\s*kB", Path("/proc/meminfo").read_text())
    except OSError:
        return None
    return int(match[1]) * 1024 if match else None


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape the numbers (only those present)."""
    versions = {}
    for dist, key in LIBRARIES.items():
        try:
            versions[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


def machine_info() -> dict:
    """Describe this machine: CPU model, usable cores, ISA flags, memory, OS and library versions.

    The keys ``cpu``, ``cores``, ``isa``, ``python``, ``numpy``, ``onnxruntime`` and ``date`` are
    the ones ``benchmarks/common.py`` has always written, so older RESULTS keep their meaning.

    Returns:
        A JSON-ready dict.
    """
    cpu, flags = _cpu()
    libraries = library_versions()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return {
        "cpu": cpu,
        "cores": cores,
        "logical_cpus": os.cpu_count(),
        "isa": flags,
        # Integer kernels, speed and even INT8 fidelity differ between CPU classes.
        "cpu_class": cpu_class(),
        "arch": platform.machine(),
        "memory_bytes": _memory_bytes(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "numpy": libraries.get("numpy", "?"),
        "onnxruntime": libraries.get("onnxruntime", libraries.get("onnxruntime_gpu", "?")),
        "libraries": libraries,
        # Other work on the machine skews timings; the 1/5/15-minute load says how busy it was.
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
