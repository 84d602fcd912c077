"""Host peak memory without extra dependencies: /proc/self/status (VmHWM) and getrusage.

On Linux the high-water mark can be reset (``echo 5 > /proc/self/clear_refs``), which makes
peaks per measured phase possible; elsewhere the peak is the process's lifetime peak, and the
report says so (``scope``).
"""

from __future__ import annotations

import re
import resource
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kb(field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s*(\d+)\s*kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match[1]) if match else None


def current_rss_bytes() -> int | None:
    """Resident set size now (VmRSS), or None where /proc is missing."""
    kb = _status_kb("VmRSS")
    return kb * 1024 if kb is not None else None


def peak_rss_bytes() -> int:
    """Peak resident set size: VmHWM where available (resettable), else getrusage's ru_maxrss."""
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB elsewhere


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS; False where that is unsupported."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    kb, now = _status_kb("VmHWM"), _status_kb("VmRSS")
    return kb is not None and now is not None and kb <= now + 64  # allow pages touched meanwhile


class PeakMemory:
    """Measure the host memory peak of a block of work.

    Usage::

        with PeakMemory() as memory:
            ...
        memory.as_dict()  # {"host_peak_rss_bytes", "host_rss_before_bytes", "scope"}
    """

    def __init__(self):
        self.before: int | None = None
        self.peak: int | None = None
        self.scope = "process"

    def __enter__(self) -> PeakMemory:
        self.scope = "phase" if reset_peak_rss() else "process"
        self.before = current_rss_bytes()
        return self

    def __exit__(self, *exc) -> None:
        self.peak = peak_rss_bytes()

    def as_dict(self) -> dict:
        return {"host_peak_rss_bytes": self.peak, "host_rss_before_bytes": self.before, "scope": self.scope}
