"""TensorRT plans from an artifact's ONNX: strongly typed, one optimization profile per plan.

Precision lives in the ONNX (Q/DQ for INT8, FP16 tensors for FP16), so the network is created
strongly typed and no precision flags are set: TensorRT runs exactly the types the graph
declares, which is what mtc verified on the CPU. The build goes through Polygraphy's loaders
(`NetworkFromOnnxPath(strongly_typed=True)` -> `CreateConfig(profiles, timing cache,
optimization level)` -> `EngineBytesFromNetwork`), which handle parser errors, the timing
cache file (locked while read, merged when saved) and profile filling.

One plan per profile because the downsample ratio is frozen into it (see
mtc.artifact.profiles). TensorRT, Polygraphy and cuda-python are imported lazily; a missing
one raises MtcError naming `pip install 'mtc[trt]'`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from pathlib import Path

from mtc.artifact.cache import enforce_cache_bound, seal_entry
from mtc.artifact.manifest import Manifest, ModelIO
from mtc.artifact.plan import (
    BuilderSettings,
    PlanSidecar,
    Target,
    artifact_plan_path,
    cache_plan_path,
    check_plan,
    make_sidecar,
    sidecar_path,
    timing_cache_path,
    timing_cache_seal,
    usable_timing_cache,
    write_plan,
)
from mtc.artifact.profiles import ResolutionProfile, frozen_inputs, profile_shapes
from mtc.backends.onnxruntime.session import check_state_shapes
from mtc.errors import MtcError

log = logging.getLogger("mtc")

TRT_HINT = "pip install 'mtc[trt]' (TensorRT needs an NVIDIA GPU and driver)"


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as exc:
        raise MtcError(f"TensorRT is not installed ({exc})", hint=TRT_HINT) from None
    return tensorrt


def import_cudart():
    """cuda-python's runtime API (cuda.bindings.runtime since 12.6, cuda.cudart before)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime
        except ImportError as exc:
            raise MtcError(f"cuda-python is not installed ({exc})", hint=TRT_HINT) from None
    return runtime


def import_polygraphy_trt():
    try:
        from polygraphy.backend import trt as polygraphy_trt
    except ImportError as exc:
        raise MtcError(f"Polygraphy is not installed ({exc})", hint=TRT_HINT) from None
    return polygraphy_trt


def cuda_check(result, what: str):
    """cuda-python returns (error, *values); raise MtcError on anything but success."""
    err, *values = result if isinstance(result, tuple) else (result,)
    code = int(getattr(err, "value", err))
    if code != 0:
        name = getattr(err, "name", str(code))
        raise MtcError(f"CUDA error during {what}: {name}", hint="check the NVIDIA driver and that the GPU is visible")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def current_target(device: int = 0) -> Target:
    """TensorRT version and the GPU's compute capability (what plans are keyed by)."""
    trt = import_tensorrt()
    cudart = import_cudart()
    count = cuda_check(cudart.cudaGetDeviceCount(), "counting GPUs")
    if not count:
        raise MtcError("no NVIDIA GPU is visible", hint="TensorRT needs a GPU; use backend='onnxruntime' or 'openvino'")
    props = cuda_check(cudart.cudaGetDeviceProperties(device), "reading GPU properties")
    name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
    return Target(trt.__version__, f"{props.major}.{props.minor}", name)


def verify_state_rule(model_path: Path, io: ModelIO, profile: ResolutionProfile) -> None:
    """Check the derived state shapes against the real graph at each distinct profile size."""
    for width, height in dict.fromkeys(profile.sizes):
        check_state_shapes(model_path, io, height, width, profile.downsample_ratio,
                           hint=f"profile {profile.name}: the manifest's state strides do not match the model; "
                                "re-export it or report a bug")


def build_plan(model_path: Path, io: ModelIO, profile: ResolutionProfile, *, model_sha256: str, target: Target,
               settings: BuilderSettings = BuilderSettings(), timing_cache: Path | None = None,
               verify_states: bool = True) -> tuple[bytes, PlanSidecar]:
    """Build one plan (bytes) and its sidecar. Takes minutes for a large profile.

    Raises:
        MtcError: TensorRT/Polygraphy missing, the parser rejects the graph, or the build fails.
    """
    import onnx

    from mtc.backends.tensorrt.graph import freeze_inputs

    import_tensorrt()
    ptrt = import_polygraphy_trt()
    profile = profile.for_model(io)
    if verify_states and io.states:
        verify_state_rule(model_path, io, profile)
    shapes = profile_shapes(io, profile)
    frozen = frozen_inputs(io, profile)
    model = freeze_inputs(onnx.load(str(model_path)), frozen)
    trt_profile = ptrt.Profile()
    for name, rng in shapes.items():
        trt_profile.add(name, min=list(rng.min), opt=list(rng.opt), max=list(rng.max))
    load_cache = str(timing_cache) if timing_cache is not None and usable_timing_cache(timing_cache) else None
    if timing_cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mtc-trt-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        onnx.save(model, str(onnx_path))
        network = ptrt.NetworkFromOnnxPath(str(onnx_path), strongly_typed=settings.strongly_typed)
        config = ptrt.CreateConfig(profiles=[trt_profile], load_timing_cache=load_cache,
                                   builder_optimization_level=settings.optimization_level, tf32=settings.tf32)
        try:
            plan = ptrt.EngineBytesFromNetwork(network, config=config,
                                               save_timing_cache=str(timing_cache) if timing_cache else None)()
        except Exception as exc:  # Polygraphy reports parser/builder failures as PolygraphyException
            detail = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__
            raise MtcError(f"TensorRT could not build profile {profile.name}: {detail}",
                           hint="run with -v for TensorRT's log; check that the ONNX runs in onnxruntime") from None
    plan_bytes = bytes(memoryview(plan))
    if timing_cache is not None and timing_cache.is_file():
        try:
            seal_entry(timing_cache_seal(timing_cache), [timing_cache])
        except OSError as exc:  # unsealed, it is not read next time: a slower build, never a wrong one
            log.warning("tensorrt: could not seal the timing cache (%s)", exc)
    log.info("tensorrt: built profile %s (%s) in %.0f s, %.1f MB", profile.name, _describe(profile),
             time.perf_counter() - started, len(plan_bytes) / 1e6)
    sidecar = make_sidecar(plan_bytes, target=target, model_sha256=model_sha256, profile=profile, settings=settings,
                           input_shapes={n: {"min": list(r.min), "opt": list(r.opt), "max": list(r.max)}
                                         for n, r in shapes.items()},
                           frozen_inputs={n: v.ravel().tolist() for n, v in frozen.items()})
    return plan_bytes, sidecar


def _describe(profile: ResolutionProfile) -> str:
    text = f"{profile.width}x{profile.height}"
    if not profile.is_static:
        text += f" [{profile.sizes[0][0]}x{profile.sizes[0][1]} .. {profile.sizes[2][0]}x{profile.sizes[2][1]}]"
    if profile.downsample_ratio is not None:
        text += f" ratio {profile.downsample_ratio:g}"
    return text


def model_sha256(manifest: Manifest) -> str:
    return manifest.files[manifest.model_file].sha256


def resolve_plan(folder: Path, manifest: Manifest, profile: ResolutionProfile, *, target: Target,
                 settings: BuilderSettings = BuilderSettings(), build_missing: bool = True,
                 write_artifact: bool = False, cache_root: Path | None = None) -> Path:
    """Find a usable plan for `profile` (artifact first, then the cache), or build one.

    Stale or foreign plans (other TensorRT version, GPU, model or settings) are detected from
    their sidecar before TensorRT reads them; they are rebuilt when `build_missing`, otherwise
    refused with the reason.

    Args:
        write_artifact: put a newly built plan into the artifact's engines/ (what `mtc build`
            does) instead of the cache (what the runtime does: it never writes into an artifact).
    """
    folder = Path(folder)
    profile = profile.for_model(manifest.io)
    sha = model_sha256(manifest)
    candidates = [artifact_plan_path(folder, profile), cache_plan_path(sha, target, profile, settings, root=cache_root)]
    reasons = []
    for path in candidates:
        if not path.exists():
            continue
        verdict = check_plan(path, model_sha256=sha, target=target, profile=profile, settings=settings)
        if verdict.usable:
            log.debug("tensorrt: using %s", path)
            with contextlib.suppress(OSError):  # recently used: the cache's size bound evicts others first
                os.utime(sidecar_path(path))
            return path
        log.warning("tensorrt: not using %s: %s", path, verdict.reason)
        reasons.append(verdict.reason)
    if not build_missing:
        why = "; ".join(reasons) if reasons else "none was built"
        raise MtcError(f"no usable TensorRT plan for profile {profile.name} ({why})",
                       hint=f"run `mtc build {folder} --backend tensorrt --profile {profile.name}` on this machine")
    target_path = candidates[0] if write_artifact else candidates[1]
    log.info("tensorrt: building profile %s for %s (TensorRT %s, sm %s); this takes a few minutes once",
             profile.name, target.device_name or "this GPU", target.tensorrt_version, target.compute_capability)
    plan_bytes, sidecar = build_plan(folder / manifest.model_file, manifest.io, profile, model_sha256=sha,
                                     target=target, settings=settings,
                                     timing_cache=timing_cache_path(target, root=cache_root))
    write_plan(target_path, plan_bytes, sidecar)
    if not write_artifact:
        enforce_cache_bound(keep=[target_path, sidecar_path(target_path)],
                            root=None if cache_root is None else cache_root.parent)
    return target_path


def build_artifact_plans(folder: Path, manifest: Manifest, profiles, *, optimization_level: int = 3,
                         force: bool = False) -> list[str]:
    """Build a plan per profile (already in model-input space) into `folder/engines/`, skipping
    plans whose sidecar says they are current unless `force`."""
    from mtc.artifact.plan import artifact_plan_path, check_plan, write_plan

    target = current_target()
    settings = BuilderSettings(optimization_level=optimization_level)
    sha = model_sha256(manifest)
    lines = []
    for profile in profiles:
        path = artifact_plan_path(folder, profile)
        if not force:
            verdict = check_plan(path, model_sha256=sha, target=target, profile=profile, settings=settings)
            if verdict.usable:
                lines.append(f"profile {profile.name}: up to date ({path})")
                continue
            if path.exists():
                log.info("rebuilding %s: %s", path.name, verdict.reason)
        plan_bytes, sidecar = build_plan(folder / manifest.model_file, manifest.io, profile, model_sha256=sha,
                                         target=target, settings=settings, timing_cache=timing_cache_path(target))
        write_plan(path, plan_bytes, sidecar)
        lines.append(f"profile {profile.name}: {len(plan_bytes) / 1e6:.1f} MB plan -> {path}")
    return lines
