"""`mtc build`: prepare an artifact for one backend ahead of run time.

Profiles name frame sizes; each is turned into the model's input space (what the session will
feed) before the backend builds for it. What each backend builds is its registry entry's
business (mtc.backends.<name>): TensorRT plans into the artifact, OpenVINO's compiled static
models and ONNX Runtime's optimized model into the cache.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from mtc.artifact.manifest import read_manifest
from mtc.artifact.profiles import ResolutionProfile, parse_profiles
from mtc.backends import BackendOptions
from mtc.backends.registry import get_backend

log = logging.getLogger("mtc")


def model_space_profiles(profiles: tuple[ResolutionProfile, ...], io) -> tuple[ResolutionProfile, ...]:
    """The profiles in model-input space, one per distinct input shape (a fixed-size model
    gets a single profile however many frame sizes are named)."""
    chosen: dict[tuple, ResolutionProfile] = {}
    for profile in profiles:
        mapped = profile.for_model(io)
        key = (mapped.sizes, mapped.downsample_ratio)
        if key in chosen:
            log.info("profile %s: same model input as %s (%dx%d), built once", profile.name, chosen[key].name,
                     mapped.width, mapped.height)
            continue
        chosen[key] = mapped
    return tuple(chosen.values())


def build(folder: str | Path, *, backend: str, profiles: str | tuple = "hd", precision: str = "fp32",
          threads: int | None = None, optimization_level: int = 3, force: bool = False) -> list[str]:
    """Build what `backend` needs for the artifact in `folder`; returns one line per item built."""
    folder = Path(folder)
    entry = get_backend(backend)
    manifest = read_manifest(folder)
    manifest.require_single_graph("building engines")
    chosen = model_space_profiles(parse_profiles(profiles), manifest.io)
    common = BackendOptions(threads=threads, precision=precision)
    options = entry.options()
    if hasattr(options, "optimization_level"):
        options = dataclasses.replace(options, optimization_level=optimization_level)
    return entry.build(folder, manifest, chosen, common=common, options=options, force=force)
