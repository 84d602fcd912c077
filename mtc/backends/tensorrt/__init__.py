"""TensorRT: strongly typed plans per resolution profile, state kept on the GPU."""

from __future__ import annotations

from dataclasses import dataclass

from mtc.backends.registry import Availability, BackendEntry, Probe


@dataclass(frozen=True)
class Options:
    """TensorRT's own settings.

    Attributes:
        profiles: resolution profiles to serve ("hd,4k" or ResolutionProfile objects); None:
            an exact profile per frame size, built on first use.
        ratio_policy: when the session's downsample ratio differs from a profile's: "profile"
            runs at the profile's ratio, "strict" requires an exact match.
        cuda_graph: capture each frame into a CUDA graph.
        build_missing: build missing or stale plans into the cache (minutes, once).
        optimization_level: the builder's optimization level (`mtc build`).
    """

    profiles: tuple | str | None = None
    ratio_policy: str = "profile"
    cuda_graph: bool = False
    build_missing: bool = True
    optimization_level: int = 3


def probe(available: Availability) -> Probe:
    if not available.tensorrt:
        return Probe(False, reason="backend 'tensorrt' needs TensorRT and cuda-python", fix="pip install 'mtc[trt]'")
    if available.gpu_count == 0:
        return Probe(False, reason="backend 'tensorrt' needs an NVIDIA GPU, and none is visible",
                     fix="use backend='onnxruntime' or 'openvino' on this machine")
    return Probe(True, rank=0, reason=f"{available.gpu_count} NVIDIA GPU(s) and TensorRT are available")


def open_session(model_path, *, io=None, manifest=None, folder=None, common, options: Options, choice):
    from mtc.errors import MtcError

    if manifest is None or folder is None:
        raise MtcError("the tensorrt backend needs the artifact folder and its manifest",
                       hint="load it with mtc.runtime.load(FOLDER, backend='tensorrt')")
    from mtc.backends.tensorrt.session import TensorRTBackend

    return TensorRTBackend(folder, manifest, profiles=options.profiles, ratio_policy=options.ratio_policy,
                           cuda_graph=options.cuda_graph, build_missing=options.build_missing)


def prepare(folder, manifest, profiles, *, common, options: Options, force=False) -> list[str]:
    """Build a plan per profile into the artifact (engines/<profile>.plan + .json sidecar)."""
    from mtc.backends.tensorrt.build import build_artifact_plans

    return build_artifact_plans(folder, manifest, profiles, optimization_level=options.optimization_level,
                                force=force)


BACKEND = BackendEntry(name="tensorrt", title="TensorRT", probe=probe, open=open_session, options=Options,
                       build=prepare)
