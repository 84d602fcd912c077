"""OpenVINO: precompile the static per-resolution models into the cache.

The runtime compiles one static model per frame size (see mtc.backends.openvino.session);
OpenVINO's CACHE_DIR keeps the result, in a sealed folder per input signature and compile
settings. `precompile` does that work ahead of time so the first frame of a video
does not wait for it.
"""

from __future__ import annotations

import time
from pathlib import Path

from mtc.artifact.manifest import Manifest
from mtc.artifact.profiles import ResolutionProfile, state_shapes


def precompile(folder: Path, manifest: Manifest, profiles: tuple[ResolutionProfile, ...], *, precision: str = "fp32",
               threads: int | None = None) -> list[dict]:
    """Compile the model for each profile (in model-input space) into OpenVINO's cache; returns timings."""
    from mtc.backends.openvino.session import OpenVinoBackend

    backend = OpenVinoBackend(Path(folder) / manifest.model_file, io=manifest.io, precision=precision,
                              threads=threads, cache=True, model_sha256=manifest.files[manifest.model_file].sha256)
    results = []
    for profile in profiles:
        feeds = manifest.io.example_feeds(profile.height, profile.width, downsample_ratio=profile.downsample_ratio)
        started = time.perf_counter()
        entry = backend.compiled_for(feeds)
        expected = state_shapes(manifest.io, profile.height, profile.width, profile.downsample_ratio)
        results.append({"profile": profile.name, "shape": f"{profile.width}x{profile.height}",
                        "seconds": round(time.perf_counter() - started, 2),
                        "precision": backend.precision,
                        "state_shapes_match_rule": all(entry.state_shapes.get(n) == s for n, s in expected.items())})
    return results
