"""Execution backends behind one small interface, found through a registry.

A backend runs a graph: named numpy inputs in, named outputs out. Everything that is about
matting (pre/post-processing, recurrent state, resolution rules) lives in the session, so
ONNX Runtime, OpenVINO and TensorRT only implement `run()`. Each backend is a package here
(mtc.backends.<name>) registered in mtc.backends.registry, with its probe, session and build.

`create_backend("auto", ...)` picks by what the probes report and logs which backend runs and
why. Optional packages are imported only when their backend is used.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtc.artifact.manifest import Manifest, ModelIO
from mtc.backends.base import Backend, DeviceState, default_threads, require
from mtc.backends.onnxruntime.session import OrtBackend
from mtc.backends.registry import (
    Availability,
    BackendChoice,
    backend_names,
    choose_backend,
    get_backend,
    probe_availability,
)
from mtc.errors import MtcError

__all__ = ["Backend", "BackendOptions", "DeviceState", "OrtBackend", "create_backend", "default_threads", "require",
           "Availability", "BackendChoice", "backend_names", "choose_backend", "get_backend", "probe_availability"]

log = logging.getLogger("mtc")


@dataclass(frozen=True)
class BackendOptions:
    """What a caller asks of whichever backend runs: settings every backend reads, plus each
    backend's own typed options (used when that backend is chosen, `auto` included).

    Attributes:
        threads: CPU inference threads (onnxruntime, openvino); default: all usable cores.
        precision: inference precision: "fp32" (default), or "bf16" where a backend offers it
            (OpenVINO); the others run the graph's own types.
        per_backend: backend name -> that backend's Options (e.g.
            `{"tensorrt": mtc.backends.tensorrt.Options(profiles="hd,4k")}`); a backend not
            named here runs with its defaults.
    """

    threads: int | None = None
    precision: str = "fp32"
    per_backend: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise MtcError(f"threads={self.threads!r} is not a positive whole number",
                           hint="pass threads=N with N >= 1, or None for all usable cores")

    def for_backend(self, name: str) -> Any:
        """The typed options of backend `name` (its defaults when none were given)."""
        entry = get_backend(name)
        options = self.per_backend.get(name) or entry.options()
        if not isinstance(options, entry.options):
            raise MtcError(f"options for {name} must be {entry.options.__module__}.{entry.options.__qualname__}, "
                           f"not {type(options).__name__}", hint="build them with that backend's Options class")
        return options


def create_backend(name: str, model_path: Path, *, io: ModelIO | None = None, manifest: Manifest | None = None,
                   folder: Path | None = None, options: BackendOptions | None = None,
                   availability: Availability | None = None, **legacy) -> Backend:
    """Instantiate a backend by name; "auto" picks by availability and logs why.

    Args:
        name: "auto", "onnxruntime", "openvino" or "tensorrt".
        model_path: the ONNX model file.
        io, manifest, folder: what the backend may need beyond the file (state pairs, the
            downsample input, the model hash, the engines/ folder). TensorRT needs all three.
        options: what to ask of the backend; `threads=`, `allow_spinning=`, `precision=` and
            `providers=` keywords are still accepted.
        availability: what this machine offers (probed when None; tests pass fakes).
    """
    options = options or BackendOptions()
    if legacy:  # the onnxruntime keywords of the first API (threads=, allow_spinning=, ...)
        options = _with_legacy_keywords(options, legacy)
    if io is None and manifest is not None:
        io = manifest.io
    if manifest is not None and manifest.precision.mode == "bf16":
        name, options = _bf16_artifact(name, options, availability)
    int8 = manifest is not None and manifest.precision.mode == "int8"
    if name == "onnxruntime" and options.precision == "fp32" and availability is None and not int8:
        choice = BackendChoice("onnxruntime", "requested")  # the common path skips probing
    else:
        precision = manifest.precision if manifest is not None else None
        choice = choose_backend(name, availability or probe_availability(), precision=options.precision,
                                model_precision=precision.mode if precision else "fp32",
                                activation_type=precision.activation_type if precision else None,
                                checked_cpu=precision.checked_cpu if precision else None)
    backend = get_backend(choice.name).open(model_path, io=io, manifest=manifest, folder=folder, common=options,
                                            options=options.for_backend(choice.name), choice=choice)
    describe = getattr(backend, "describe", None)
    log.info("backend: %s (%s): %s", choice.name, choice.reason, describe() if describe else backend.name)
    return backend


def _bf16_artifact(name: str, options: BackendOptions, availability: Availability | None) -> tuple[str, BackendOptions]:
    """A BF16 artifact holds the FP32 graph, checked on OpenVINO's CPU BF16: that is where it runs
    (auto and openvino) when OpenVINO and a BF16 CPU are here. Anywhere else it runs in FP32,
    more exact than it was checked and slower, and the log says so."""
    import dataclasses

    available = availability or probe_availability()
    cpu_bf16 = available.bf16
    if name in ("auto", "openvino") and cpu_bf16 and get_backend("openvino").probe(available).usable:
        return "openvino", dataclasses.replace(options, precision="bf16")
    why = "this CPU has no BF16" if not cpu_bf16 else f"{name} was asked for" if name != "auto" else "no OpenVINO here"
    log.warning("BF16 artifact runs its graph in FP32 (%s): as exact as FP32, at FP32's speed", why)
    return name, dataclasses.replace(options, precision="fp32")


def _with_legacy_keywords(options: BackendOptions, legacy: dict) -> BackendOptions:
    import dataclasses

    unknown = set(legacy) - {"threads", "allow_spinning", "precision", "providers"}
    if unknown:
        raise TypeError(f"create_backend() got unexpected keyword arguments {sorted(unknown)}")
    common = {k: legacy[k] for k in ("threads", "precision") if k in legacy}
    ort = {k: legacy[k] for k in ("allow_spinning", "providers") if k in legacy}
    per_backend = dict(options.per_backend)
    if ort:
        per_backend["onnxruntime"] = dataclasses.replace(options.for_backend("onnxruntime"), **ort)
    return dataclasses.replace(options, **common, per_backend=per_backend)
