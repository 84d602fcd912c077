"""What the benchmark scripts' tests share: loading a script as a module."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@contextlib.contextmanager
def _script_module(name: str):
    """benchmarks/<name>.py as a module, with the benchmarks folder importable while it is in
    use (the scripts import their shared helpers and each other from there)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="session")
def script_module():
    """A context manager: `with script_module("bench_x") as bench: ...`."""
    return _script_module
