"""Execution backends behind one small interface.

A backend runs a graph: named numpy inputs in, named outputs out. Everything that is about
matting (pre/post-processing, recurrent state, resolution rules) lives in the session, so
ONNX Runtime, OpenVINO and TensorRT only implement `run()`.

- `onnxruntime` (ort.py): CPU, CUDA or TensorRT execution provider; always installed.
- `openvino` (openvino.py): CPU, static shapes per resolution, explicit FP32/BF16.
- `tensorrt` (tensorrt.py): prebuilt or cached plans, state kept on the GPU.

`create_backend("auto", ...)` picks by availability in the order documented in select.py and
logs which backend runs and why. Optional packages are imported only when their backend is used.
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
    BACKENDS,
    Availability,
    BackendChoice,
    choose_backend,
    probe_availability,
)

__all__ = ["Backend", "BackendOptions", "DeviceState", "OrtBackend", "create_backend", "default_threads", "require",
           "Availability", "BackendChoice", "choose_backend", "probe_availability", "AUTO_ORDER", "BACKENDS"]

log = logging.getLogger("mtc")

# The order `backend="auto"` tries (details and measurements in select.py).
AUTO_ORDER = ("tensorrt", "onnxruntime-cuda", "openvino", "onnxruntime")


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
    if name == "onnxruntime" and options.precision == "fp32" and availability is None:
        choice = BackendChoice("onnxruntime", "requested")  # the common path skips probing
    else:
        choice = choose_backend(name, availability or probe_availability(), precision=options.precision,
                                model_precision=manifest.precision.mode if manifest is not None else "fp32",
                                activation_type=manifest.precision.activation_type if manifest is not None else None)
    if choice.name == "onnxruntime":
        providers = options.providers if options.providers is not None else choice.providers
        optimized = None
        if options.use_optimized_model and manifest is not None:
            from mtc.backends.onnxruntime.build import optimized_model_path

            try:
                optimized = optimized_model_path(manifest.files[manifest.model_file].sha256, providers=providers)
            except MtcError as exc:  # no usable cache folder: run from the artifact's model
                log.debug("onnxruntime: no optimized-model cache (%s)", exc.message)
        state_pairs = tuple((p.input, p.output) for p in io.states) if io is not None else ()
        backend = OrtBackend(model_path, threads=options.threads, allow_spinning=options.allow_spinning,
                             providers=providers, optimized_model=optimized, state_pairs=state_pairs,
                             io_binding=options.io_binding)
    elif choice.name == "openvino":
        from mtc.backends.openvino.session import OpenVinoBackend

        backend = OpenVinoBackend(model_path, io=io, precision=options.precision, threads=options.threads,
                                  cache=options.openvino_cache)
    else:
        if manifest is None or folder is None:
            raise MtcError("the tensorrt backend needs the artifact folder and its manifest",
                           hint="load it with mtc.runtime.load(FOLDER, backend='tensorrt')")
        from mtc.backends.tensorrt.session import TensorRTBackend

        backend = TensorRTBackend(folder, manifest, profiles=options.profiles, ratio_policy=options.ratio_policy,
                                  cuda_graph=options.cuda_graph, build_missing=options.build_missing)
    describe = getattr(backend, "describe", None)
    log.info("backend: %s (%s): %s", choice.name, choice.reason, describe() if describe else backend.name)
    return backend
