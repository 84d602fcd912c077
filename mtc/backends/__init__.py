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
from dataclasses import dataclass
from pathlib import Path

from mtc.errors import MtcError
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

__all__ = ["Backend", "BackendOptions", "DeviceState", "OrtBackend", "create_backend", "default_threads", "require",
           "Availability", "BackendChoice", "backend_names", "choose_backend", "get_backend", "probe_availability"]

log = logging.getLogger("mtc")


@dataclass(frozen=True)
class BackendOptions:
    """Backend settings; each backend reads the ones that apply to it.

    Attributes:
        threads: CPU inference threads (onnxruntime, openvino); default: all usable cores.
        allow_spinning: onnxruntime worker threads spin while idle (faster alone, slower
            beside other sessions).
        precision: inference precision for OpenVINO ("fp32" default, "bf16"); onnxruntime and
            TensorRT run the graph's own types and accept only "fp32" here.
        providers: onnxruntime providers ("cpu", "cuda", "tensorrt"), best first; None: auto.
        io_binding: onnxruntime I/O binding for state (None: on for GPU providers only).
        profiles: TensorRT resolution profiles ("hd,4k"); None: exact profiles on demand.
        ratio_policy: TensorRT, when the session's ratio differs from a profile's ("profile"
            runs at the profile's ratio, "strict" requires an exact match).
        cuda_graph: TensorRT, capture each frame into a CUDA graph.
        build_missing: TensorRT, build missing or stale plans into the cache (minutes, once).
        use_optimized_model: onnxruntime, load the model `mtc build --backend onnxruntime`
            saved in the cache, when present.
        openvino_cache: OpenVINO, keep compiled models in the mtc cache.
        optimization_level: TensorRT builder optimization level (`mtc build`).
    """

    threads: int | None = None
    allow_spinning: bool = True
    precision: str = "fp32"
    providers: tuple[str, ...] | None = None
    io_binding: bool | None = None
    profiles: tuple | str | None = None
    ratio_policy: str = "profile"
    cuda_graph: bool = False
    build_missing: bool = True
    use_optimized_model: bool = True
    openvino_cache: bool = True
    optimization_level: int = 3


def create_backend(name: str, model_path: Path, *, io: ModelIO | None = None, manifest: Manifest | None = None,
                   folder: Path | None = None, options: BackendOptions | None = None,
                   availability: Availability | None = None, **legacy) -> Backend:
    """Instantiate a backend by name; "auto" picks by availability and logs why.

    Args:
        name: "auto", "onnxruntime", "openvino" or "tensorrt".
        model_path: the ONNX model file.
        io, manifest, folder: what the backend may need beyond the file (state pairs, the
            downsample input, the model hash, the engines/ folder). TensorRT needs all three.
        options: backend settings; `threads=` / `allow_spinning=` keywords are still accepted.
        availability: what this machine offers (probed when None; tests pass fakes).
    """
    if legacy:
        unknown = set(legacy) - {"threads", "allow_spinning", "precision", "providers"}
        if unknown:
            raise TypeError(f"create_backend() got unexpected keyword arguments {sorted(unknown)}")
        import dataclasses

        options = dataclasses.replace(options or BackendOptions(), **legacy)
    options = options or BackendOptions()
    if io is None and manifest is not None:
        io = manifest.io
    int8 = manifest is not None and manifest.precision.mode == "int8"
    if name == "onnxruntime" and options.precision == "fp32" and availability is None and not int8:
        choice = BackendChoice("onnxruntime", "requested")  # the common path skips probing
    else:
        precision = manifest.precision if manifest is not None else None
        choice = choose_backend(name, availability or probe_availability(), precision=options.precision,
                                model_precision=precision.mode if precision else "fp32",
                                activation_type=precision.activation_type if precision else None,
                                checked_cpu=precision.checked_cpu if precision else None)
    backend = get_backend(choice.name).open(model_path, io=io, manifest=manifest, folder=folder, options=options,
                                            choice=choice)
    describe = getattr(backend, "describe", None)
    log.info("backend: %s (%s): %s", choice.name, choice.reason, describe() if describe else backend.name)
    return backend
