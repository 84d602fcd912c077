"""CI gates: thresholds from a TOML file, checked against a benchmark report, as JUnit XML.

A gates file::

    [gates]                  # applies to every benchmarked resolution
    min_fps = 10
    max_p99_ms = 150
    max_mad = 1.0            # alpha vs the reference artifact (x1e3)
    max_dtssd = 0.5          # temporal error vs the reference (x1e2)

    [gates."1920x1080"]      # overrides and additions for one resolution
    min_fps = 4
    max_gt_mad = 12          # alpha vs the ground truth given with --gt

A per-resolution table also asks for that resolution to be benchmarked when the command
line names none. A gate whose value was not measured (no reference, no --gt, metric not
computed, resolution not run) fails: a CI job must never pass by measuring nothing.
"""

from __future__ import annotations

import math
import re
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from mtc.errors import MtcError
from mtc.metrics import METRIC_NAMES, SOD_METRIC_NAMES
from mtc.runtime.frames import check_pixels


@dataclass(frozen=True)
class GateKind:
    """One gate key: where its value lives in a resolution's result, and how it compares."""

    key: str
    path: tuple[str, ...]
    op: str  # ">=" or "<="
    unit: str
    missing: str  # why the value can be absent, for the failure message
    scale: float = 1.0


def _kinds() -> dict[str, GateKind]:
    kinds = [
        GateKind("min_fps", ("model", "fps"), ">=", "FPS", "the model was not timed"),
        GateKind("min_fps_median", ("model", "fps_median"), ">=", "FPS", "the model was not timed"),
        GateKind("min_e2e_fps", ("end_to_end", "fps"), ">=", "FPS", "end-to-end timing was skipped (--no-e2e)"),
        GateKind("max_peak_rss_mb", ("memory", "host_peak_rss_bytes"), "<=", "MiB", "peak memory is unknown here",
                 scale=1 / 2**20),
    ]
    for stat in ("mean", "p50", "p90", "p99", "max"):
        kinds.append(GateKind(f"max_{stat}_ms", ("model", "latency_ms", stat), "<=", "ms", "the model was not timed"))
    for metric in METRIC_NAMES:
        kinds.append(GateKind(f"max_{metric}", ("accuracy", "reference", metric), "<=", "",
                              "no reference artifact to compare with (pass --reference, or metric left out by --metrics)"))
        kinds.append(GateKind(f"max_gt_{metric}", ("accuracy", "gt", metric), "<=", "",
                              "no ground truth (pass --gt, or metric left out by --metrics)"))
    for metric in SOD_METRIC_NAMES:  # higher is better, except for MAE: min_gt_s_measure, max_gt_mae
        op, bound = ("<=", "max") if metric == "mae" else (">=", "min")
        kinds.append(GateKind(f"{bound}_{metric}", ("accuracy", "reference", metric), op, "",
                              "no reference artifact to compare with (pass --reference, or metric left out by --metrics)"))
        kinds.append(GateKind(f"{bound}_gt_{metric}", ("accuracy", "gt", metric), op, "",
                              "no ground truth (pass --gt, or metric left out by --metrics)"))
    return {k.key: k for k in kinds}


GATE_KINDS = _kinds()
_RESOLUTION = re.compile(r"(\d+)x(\d+)")


@dataclass(frozen=True)
class Gates:
    """Thresholds by key: `common` for all resolutions, `per_resolution` overriding them."""

    source: str
    common: dict[str, float] = field(default_factory=dict)
    per_resolution: dict[str, dict[str, float]] = field(default_factory=dict)

    def for_resolution(self, name: str) -> dict[str, float]:
        return {**self.common, **self.per_resolution.get(name, {})}

    @property
    def resolutions(self) -> list[tuple[int, int]]:
        return [tuple(int(v) for v in _RESOLUTION.fullmatch(name).groups()) for name in self.per_resolution]


@dataclass(frozen=True)
class GateResult:
    resolution: str
    gate: str
    op: str
    threshold: float
    value: float | None
    passed: bool
    message: str

    def to_dict(self) -> dict:
        return {"resolution": self.resolution, "gate": self.gate, "op": self.op, "threshold": self.threshold,
                "value": self.value, "passed": self.passed, "message": self.message}


def _toml():
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    try:
        import tomli
    except ImportError:
        raise MtcError("reading gates files on Python 3.10 needs the tomli package",
                       hint="pip install tomli (or use Python 3.11+)") from None
    return tomli


def _threshold(source: str, where: str, key: str, value) -> float:
    if key not in GATE_KINDS:
        close = [k for k in GATE_KINDS if k.split("_")[-1] == key.split("_")[-1]] or sorted(GATE_KINDS)
        raise MtcError(f"{source}: unknown gate {key!r} in [{where}]", hint=f"known gates: {', '.join(close)}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise MtcError(f"{source}: gate {key} in [{where}] must be a non-negative number, got {value!r}",
                       hint=f"write e.g. {key} = 10")
    return float(value)


def parse_gates(text: str, *, source: str = "gates.toml") -> Gates:
    """Parse and validate gates TOML; every problem is a one-line MtcError naming the spot.

    Raises:
        MtcError: invalid TOML, no [gates] table, an unknown key or table, a bad resolution
            name or one over the pixel limit, or a threshold that is not a non-negative number.
    """
    toml = _toml()
    try:
        data = toml.loads(text)
    except toml.TOMLDecodeError as exc:
        detail = " ".join(str(exc).split())
        raise MtcError(f"{source} is not valid TOML: {detail}", hint="fix the syntax; see `mtc bench --help`") from None
    extra = sorted(set(data) - {"gates"})
    if extra:
        raise MtcError(f"{source}: unexpected top-level key(s) {', '.join(map(repr, extra))}",
                       hint="put every threshold under [gates] or [gates.\"WIDTHxHEIGHT\"]")
    table = data.get("gates")
    if not isinstance(table, dict):
        raise MtcError(f"{source} has no [gates] table", hint="start the file with [gates], e.g. [gates]\\nmin_fps = 10")
    common: dict[str, float] = {}
    per_resolution: dict[str, dict[str, float]] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            match = _RESOLUTION.fullmatch(key)
            if not match or min(int(match[1]), int(match[2])) < 16:
                raise MtcError(f"{source}: table [gates.{key!r}] is not a resolution",
                               hint='name per-resolution tables like [gates."1920x1080"]')
            name = f"{int(match[1])}x{int(match[2])}"
            check_pixels(int(match[1]), int(match[2]), f"{source}: resolution [gates.{name!r}]")
            per_resolution[name] = {k: _threshold(source, f'gates."{name}"', k, v) for k, v in value.items()}
        else:
            common[key] = _threshold(source, "gates", key, value)
    if not common and not any(per_resolution.values()):
        raise MtcError(f"{source} sets no thresholds", hint="add e.g. min_fps = 10 under [gates]")
    return Gates(source=source, common=common, per_resolution=per_resolution)


def load_gates(path: str | Path) -> Gates:
    """Read a gates TOML file (see the module docstring for the format)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MtcError(f"gates file {path} not found", hint="check the --gate path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MtcError(f"cannot read gates file {path}: {exc}", hint="pass a UTF-8 TOML file") from None
    return parse_gates(text, source=str(path))


def _lookup(result: dict, path: tuple[str, ...]):
    node = result
    for part in path:
        if not isinstance(node, dict) or node.get(part) is None:
            return None
        node = node[part]
    return node


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def evaluate_gates(gates: Gates, results: list[dict]) -> list[GateResult]:
    """Check every gate against every benchmarked resolution (and gated but missing ones).

    Args:
        gates: the thresholds.
        results: the report's per-resolution results (each has "resolution").

    Returns:
        One GateResult per gate per resolution, in a stable order.
    """
    by_name = {r["resolution"]: r for r in results}
    names = list(by_name) + [n for n in gates.per_resolution if n not in by_name]
    out = []
    for name in names:
        for key, threshold in gates.for_resolution(name).items():
            kind = GATE_KINDS[key]
            result = by_name.get(name)
            if result is None:
                out.append(GateResult(name, key, kind.op, threshold, None, False,
                                      f"{name} was not benchmarked (add --resolution {name})"))
                continue
            raw = _lookup(result, kind.path)
            if raw is None:
                out.append(GateResult(name, key, kind.op, threshold, None, False, f"not measured: {kind.missing}"))
                continue
            value = float(raw) * kind.scale
            passed = value >= threshold if kind.op == ">=" else value <= threshold
            unit = f" {kind.unit}" if kind.unit else ""
            verdict = "ok" if passed else "FAILED"
            out.append(GateResult(name, key, kind.op, threshold, value, passed,
                                  f"{key}: {_fmt(value)}{unit} {kind.op} {_fmt(threshold)}{unit} {verdict}"))
    return out


def junit_xml(results: list[GateResult], *, suite: str = "mtc.bench", seconds: float = 0.0) -> str:
    """JUnit XML with one testcase per gate per resolution; failed gates carry a <failure>."""
    failures = sum(not r.passed for r in results)
    root = ET.Element("testsuites", name=suite, tests=str(len(results)), failures=str(failures), errors="0",
                      time=f"{seconds:.3f}")
    suite_el = ET.SubElement(root, "testsuite", name=suite, tests=str(len(results)), failures=str(failures),
                             errors="0", skipped="0", time=f"{seconds:.3f}")
    for r in results:
        case = ET.SubElement(suite_el, "testcase", classname=f"{suite}.{r.resolution}", name=r.gate, time="0")
        if not r.passed:
            failure = ET.SubElement(case, "failure", message=r.message, type="GateFailed")
            failure.text = (f"resolution {r.resolution}: {r.gate} requires value {r.op} {_fmt(r.threshold)}, "
                            f"measured {'nothing' if r.value is None else _fmt(r.value)}")
        else:
            ET.SubElement(case, "system-out").text = r.message
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
