"""The torch-free runtime: load an artifact folder and matte frames.

    import mtc.runtime
    session = mtc.runtime.load("artifacts/my-model")
    matte = session.process(frame)          # frame: HxWx3 uint8 RGB
    matte.alpha, matte.foreground           # HxW and HxWx3 float32 in [0, 1]
"""

from __future__ import annotations

from pathlib import Path

from mtc.artifact.manifest import Manifest, read_manifest
from mtc.backends import BackendOptions, create_backend
from mtc.errors import MtcError
from mtc.runtime.scenes import DEFAULT_SCENE_CUT_THRESHOLD
from mtc.runtime.session import Matte, MattingSession, check_frame

__all__ = ["load", "BackendOptions", "Matte", "MattingSession", "check_frame", "Manifest"]


def load(folder: str | Path, *, backend: str = "auto", downsample_ratio: float | None = None,
         scene_cut_threshold: float | None = DEFAULT_SCENE_CUT_THRESHOLD, threads: int | None = None,
         allow_spinning: bool = True, precision: str = "fp32", providers: tuple[str, ...] | None = None,
         profiles: str | tuple | None = None, cuda_graph: bool = False,
         build_missing: bool = True) -> MattingSession:
    """Load an artifact folder written by `mtc export` and return a ready session.

    Args:
        folder: the artifact folder (holds manifest.json).
        backend: "auto", "onnxruntime", "openvino" or "tensorrt". "auto" takes TensorRT when a
            GPU and TensorRT are present, else ONNX Runtime with CUDA on a GPU, else OpenVINO
            when installed (measured faster on CPUs), else ONNX Runtime on the CPU; the choice
            and the reason are logged.
        downsample_ratio: fix the internal resolution ratio (models with a downsample input); None applies the auto rule
            min(512 / max(h, w), 1) per frame size, snapped to a unit fraction 1/k within 10%
            (0.25 at HD, 0.125 at 4K; see manifest.DownsampleRule). With TensorRT, None lets
            each profile's frozen ratio apply (0.25 at HD by the usual rule), a fixed value
            needs a profile built for exactly that ratio.
        scene_cut_threshold: reset recurrent state when consecutive frames differ by more than
            this mean grey level (0..255); None disables.
        threads: CPU inference threads; defaults to the CPUs this process may use.
        allow_spinning: let idle ONNX Runtime threads spin (faster alone, slower beside other sessions).
        precision: OpenVINO inference precision, "fp32" (default) or "bf16"; never changed
            silently (OpenVINO's own CPU default is bf16 where the CPU supports it).
        providers: ONNX Runtime providers ("cpu", "cuda", "tensorrt"), best first; None: auto.
        profiles: TensorRT resolution profiles, e.g. "hd,4k" (see mtc.artifact.profiles); None
            builds an exact profile per frame size on first use.
        cuda_graph: TensorRT: replay each frame as a captured CUDA graph.
        build_missing: TensorRT: build missing or stale plans into the cache (minutes, once)
            instead of failing.

    Raises:
        MtcError: the folder is not a valid artifact, a file fails its hash, the ratio is outside
            the model's valid range, the backend cannot load the model (a missing optional
            backend names the extra to install), or the probe frame's outputs do not match their
            declared roles.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    if downsample_ratio is not None and manifest.io.downsample is not None:  # before any backend work
        downsample_ratio = manifest.io.downsample.check(downsample_ratio)
    from mtc.backends import onnxruntime, tensorrt

    options = BackendOptions(threads=threads, precision=precision, per_backend={
        "onnxruntime": onnxruntime.Options(allow_spinning=allow_spinning,
                                           providers=tuple(providers) if providers is not None else None),
        "tensorrt": tensorrt.Options(profiles=profiles, cuda_graph=cuda_graph, build_missing=build_missing,
                                     ratio_policy="strict" if downsample_ratio is not None else "profile")})
    if manifest.program is not None:
        from mtc.runtime.program import open_program

        if backend == "tensorrt":
            raise MtcError("multi-graph artifacts run on ONNX Runtime and OpenVINO; TensorRT engines for them "
                           "are not built yet", hint="use --backend onnxruntime or openvino")
        engine = open_program(manifest, folder, lambda path: create_backend(backend, path, folder=folder,
                                                                            options=options))
    else:
        engine = create_backend(backend, folder / manifest.model_file, io=manifest.io, manifest=manifest,
                                folder=folder, options=options)
    session = MattingSession(manifest.io, engine, downsample_ratio=downsample_ratio,
                             scene_cut_threshold=scene_cut_threshold)
    session.manifest = manifest
    # One small probe frame where it costs one inference: a backend that compiles per input
    # shape (OpenVINO static, TensorRT) checks the first real frame at each size instead.
    if manifest.io.preprocess.resize == "fixed" or not getattr(engine, "compiles_per_shape", True):
        session.probe()
    return session
