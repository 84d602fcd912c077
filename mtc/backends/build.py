"""`mtc build`: prepare an artifact for one backend ahead of run time.

- tensorrt: build a plan per profile into the artifact (engines/<profile>.plan + .json);
- openvino: compile the static per-resolution models into the OpenVINO cache;
- onnxruntime: save ORT's optimized model into the cache.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from mtc.artifact.plan import BuilderSettings, artifact_plan_path, check_plan, write_plan
from mtc.artifact.profiles import ResolutionProfile, parse_profiles
from mtc.errors import MtcError
from mtc.artifact.manifest import read_manifest

log = logging.getLogger("mtc")

BUILD_BACKENDS = ("tensorrt", "openvino", "onnxruntime")


@dataclass(frozen=True)
class BuildResult:
    backend: str
    what: str  # one line for the user
    path: Path | None = None


def build(folder: str | Path, *, backend: str, profiles: str | tuple = "hd", precision: str = "fp32",
          threads: int | None = None, optimization_level: int = 3, force: bool = False) -> list[BuildResult]:
    """Build what `backend` needs for the artifact in `folder` (see the module docstring)."""
    folder = Path(folder)
    if backend not in BUILD_BACKENDS:
        raise MtcError(f"unknown backend {backend!r} for build", hint=f"choose one of: {', '.join(BUILD_BACKENDS)}")
    manifest = read_manifest(folder)
    chosen: tuple[ResolutionProfile, ...] = parse_profiles(profiles)
    sha = manifest.files[manifest.model_file].sha256
    if backend == "onnxruntime":
        from mtc.backends.onnxruntime.build import save_optimized_model

        path = save_optimized_model(folder / manifest.model_file, sha)
        return [BuildResult(backend, f"optimized model saved to {path}", path)]
    if backend == "openvino":
        from mtc.backends.openvino.build import precompile

        results = precompile(folder, manifest, chosen, precision=precision, threads=threads)
        return [BuildResult(backend, f"profile {r['profile']}: compiled in {r['seconds']} s ({r['precision']}), cached")
                for r in results]

    from mtc.backends.tensorrt.build import build_plan, current_target, timing_cache_path

    target = current_target()
    settings = BuilderSettings(optimization_level=optimization_level)
    results = []
    for profile in chosen:
        profile = profile.for_model(manifest.io)
        path = artifact_plan_path(folder, profile)
        if not force:
            verdict = check_plan(path, model_sha256=sha, target=target, profile=profile, settings=settings)
            if verdict.usable:
                results.append(BuildResult(backend, f"profile {profile.name}: up to date ({path})", path))
                continue
            if path.exists():
                log.info("rebuilding %s: %s", path.name, verdict.reason)
        plan_bytes, sidecar = build_plan(folder / manifest.model_file, manifest.io, profile, model_sha256=sha,
                                         target=target, settings=settings, timing_cache=timing_cache_path(target))
        write_plan(path, plan_bytes, sidecar)
        results.append(BuildResult(backend, f"profile {profile.name}: {len(plan_bytes) / 1e6:.1f} MB plan -> {path}", path))
    return results
