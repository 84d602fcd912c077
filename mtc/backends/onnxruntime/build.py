"""ONNX Runtime's optimized model: the graph after ORT's optimizations, saved once.

ORT re-optimizes a model every time a session is created (a second or so for the recurrent video model at level
"all"). `save_optimized_model` runs the optimizations once and keeps the result in the mtc
cache; the runtime loads it with optimizations off. At level "all" the saved graph holds
layouts and fused kernels specific to this onnxruntime version, provider and CPU, so the cache
key includes all three (a model saved on an AVX-512 machine is never loaded on another CPU).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

from mtc.errors import MtcError, exception_summary

log = logging.getLogger("mtc")


def optimized_model_path(model_sha256: str, *, providers=None, level: str = "all", root: Path | None = None) -> Path:
    import onnxruntime as ort

    from mtc.backends.onnxruntime.session import available_providers, cpu_fingerprint, resolve_providers

    resolved = resolve_providers(providers, available_providers())
    if root is None:
        from mtc.artifact.cache import cache_dir

        root = cache_dir() / "onnxruntime"
    key = hashlib.sha256(json.dumps({"model": model_sha256, "ort": ort.__version__, "providers": resolved,
                                     "level": level, "cpu": cpu_fingerprint()}, sort_keys=True).encode()).hexdigest()
    return root / f"{model_sha256[:12]}-ort{ort.__version__}-{level}-{key[:16]}.onnx"


def save_optimized_model(model_path: Path, model_sha256: str, *, providers=None, level: str = "all",
                         root: Path | None = None) -> Path:
    """Optimize `model_path` with ONNX Runtime and save the result in the cache (atomically)."""
    import onnxruntime as ort

    from mtc.backends.onnxruntime.session import available_providers, resolve_providers, session_options

    target = optimized_model_path(model_sha256, providers=providers, level=level, root=root)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    options = session_options(threads=None, allow_spinning=False, optimization=level)
    options.optimized_model_filepath = str(partial)
    started = time.perf_counter()
    try:
        ort.InferenceSession(str(model_path), options, providers=resolve_providers(providers, available_providers()))
        os.replace(partial, target)
    except OSError as exc:
        raise MtcError(f"cannot write {target}: {exc.strerror or exc}", hint="set MTC_CACHE to a writable folder") from None
    except Exception as exc:
        detail = exception_summary(exc, 300)
        raise MtcError(f"onnxruntime could not optimize {model_path}: {detail}", hint="re-export the artifact") from None
    finally:
        partial.unlink(missing_ok=True)
    log.info("onnxruntime: saved the %s-optimized model in %.1f s to %s", level, time.perf_counter() - started, target)
    return target
