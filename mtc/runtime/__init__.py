"""The torch-free runtime: load an artifact folder and matte frames.

    import mtc.runtime
    session = mtc.runtime.load("artifacts/rvm")
    matte = session.process(frame)          # frame: HxWx3 uint8 RGB
    matte.alpha, matte.foreground           # HxW and HxWx3 float32 in [0, 1]
"""

from __future__ import annotations

from pathlib import Path

from mtc.manifest import Manifest, read_manifest
from mtc.runtime.backends import create_backend
from mtc.runtime.session import Matte, MattingSession, check_frame

__all__ = ["load", "Matte", "MattingSession", "check_frame", "Manifest"]


def load(folder: str | Path, *, backend: str = "auto", downsample_ratio: float | None = None,
         scene_cut_threshold: float | None = 30.0, threads: int | None = None,
         allow_spinning: bool = True) -> MattingSession:
    """Load an artifact folder written by `mtc export` and return a ready session.

    Args:
        folder: the artifact folder (holds manifest.json).
        backend: "auto" or a backend name ("onnxruntime").
        downsample_ratio: fix the internal resolution ratio (RVM); None applies the auto rule
            min(512 / max(h, w), 1) per frame size.
        scene_cut_threshold: reset recurrent state when consecutive frames differ by more than
            this mean grey level (0..255); None disables.
        threads: intra-op threads; defaults to the CPUs this process may use.
        allow_spinning: let idle worker threads spin (faster alone, slower beside other sessions).

    Raises:
        MtcError: the folder is not a valid artifact, a file fails its hash, or the backend
            cannot load the model.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    engine = create_backend(backend, folder / manifest.model_file, threads=threads, allow_spinning=allow_spinning)
    session = MattingSession(manifest.io, engine, downsample_ratio=downsample_ratio,
                             scene_cut_threshold=scene_cut_threshold)
    session.manifest = manifest
    return session
