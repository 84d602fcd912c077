"""Execution backends behind one small interface.

A backend runs a graph: named numpy inputs in, named numpy outputs out. Everything that is
about matting (pre/post-processing, recurrent state, resolution rules) lives in the session,
so TensorRT and OpenVINO only need to implement this protocol.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol

import numpy as np

from mtc.errors import MtcError

log = logging.getLogger("mtc")

# The order `backend="auto"` tries; only ONNX Runtime exists so far.
AUTO_ORDER = ("onnxruntime",)


class Backend(Protocol):
    name: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def default_threads() -> int:
    """Physical-core count is what ORT wants; on these 2-core machines that is os.cpu_count()."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class OrtBackend:
    """ONNX Runtime on the CPU."""

    name = "onnxruntime"

    def __init__(self, model: str | Path | bytes, *, threads: int | None = None, allow_spinning: bool = True,
                 optimization: str = "all"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }[optimization]
        # Spinning wastes the core a peer session needs when several sessions alternate.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
        options.log_severity_level = 3
        source = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
            what = "the model" if isinstance(model, bytes) else str(model)
            detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise MtcError(f"onnxruntime cannot load {what}: {detail}",
                           hint="the file is corrupt or uses an op this onnxruntime does not support; re-export it") from None
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self.threads = options.intra_op_num_threads

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, outputs))


def create_backend(name: str, model_path: Path, **options) -> Backend:
    """Instantiate a backend by name; "auto" picks the first available in AUTO_ORDER."""
    if name == "auto":
        name = AUTO_ORDER[0]
        log.info("backend: %s (the only one available in this build)", name)
    if name == "onnxruntime":
        return OrtBackend(model_path, **options)
    raise MtcError(f"unknown backend {name!r}", hint=f"choose one of: auto, {', '.join(AUTO_ORDER)}")
