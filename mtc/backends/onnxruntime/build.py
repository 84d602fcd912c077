"""ONNX Runtime's optimized model: the graph after ORT's optimizations, saved once.

ORT re-optimizes a model every time a session is created (a second or so for the recurrent video model at level
"all"). `save_optimized_model` runs the optimizations once and keeps the result in the mtc
cache; the runtime loads it with optimizations off. At level "all" the saved graph holds
layouts and fused kernels specific to this onnxruntime version, provider and CPU, so the cache
key includes all three (a model saved on an AVX-512 machine is never loaded on another CPU).

Each saved model is sealed (mtc.artifact.cache): its sha256 is recorded when it is written and
checked before every load, so a damaged file is rebuilt with a warning instead of being run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import time
from pathlib import Path

from mtc.artifact.cache import SEAL_SUFFIX, cache_dir, enforce_cache_bound, seal_entry, verified_entry
from mtc.errors import MtcError, exception_summary
from mtc.fsutil import out_of_space, temporary_prefix

log = logging.getLogger("mtc")


def optimized_model_path(model_sha256: str, *, providers=None, level: str = "all", root: Path | None = None) -> Path:
    import onnxruntime as ort

    from mtc.backends.onnxruntime.session import available_providers, cpu_fingerprint, resolve_providers

    resolved = resolve_providers(providers, available_providers())
    if root is None:
        root = cache_dir() / "onnxruntime"
    key = hashlib.sha256(json.dumps({"model": model_sha256, "ort": ort.__version__, "providers": resolved,
                                     "level": level, "cpu": cpu_fingerprint()}, sort_keys=True).encode()).hexdigest()
    return root / f"{model_sha256[:12]}-ort{ort.__version__}-{level}-{key[:16]}.onnx"


def save_optimized_model(model_path: Path, model_sha256: str, *, providers=None, level: str = "all",
                         root: Path | None = None) -> Path:
    """Optimize `model_path` with ONNX Runtime and save the result in the cache (atomically)."""
    import onnxruntime as ort

    from mtc.backends.onnxruntime.session import (
        available_providers,
        resolve_providers,
        session_options,
        with_onnx_passes,
    )

    target = optimized_model_path(model_sha256, providers=providers, level=level, root=root)
    target.parent.mkdir(parents=True, exist_ok=True)
    # mtc's temporary naming, so a killed run's leftover is swept by the next one.
    partial = target.with_name(f"{temporary_prefix(target.name)}{secrets.token_hex(4)}.part")
    options = session_options(threads=None, allow_spinning=False, optimization=level)
    options.optimized_model_filepath = str(partial)
    started = time.perf_counter()
    seal = seal_path(target)
    try:
        ort.InferenceSession(with_onnx_passes(model_path), options,
                             providers=resolve_providers(providers, available_providers()))
        os.replace(partial, target)
        seal_entry(seal, [target])
    except OSError as exc:
        raise MtcError(f"cannot write {target}: {exc.strerror or exc}", hint="set MTC_CACHE to a writable folder") from None
    except Exception as exc:
        # ONNX Runtime reports a failed write as a generic error; a full disk is not a bad model.
        if out_of_space(target.parent, 2 * model_path.stat().st_size):
            raise MtcError(f"disk full while writing {target}",
                           hint="free some space, or set MTC_CACHE to a folder on another disk") from None
        detail = exception_summary(exc, 300)
        raise MtcError(f"onnxruntime could not optimize {model_path}: {detail}", hint="re-export the artifact") from None
    finally:
        partial.unlink(missing_ok=True)
    log.info("onnxruntime: saved the %s-optimized model in %.1f s to %s", level, time.perf_counter() - started, target)
    enforce_cache_bound(keep=[seal], root=target.parent.parent)  # root: the cache holding this area
    return target


def seal_path(optimized_model: Path) -> Path:
    return optimized_model.with_name(optimized_model.name + SEAL_SUFFIX)


def cached_optimized_model(model_path: Path, model_sha256: str, *, providers=None, level: str = "all",
                           root: Path | None = None) -> Path | None:
    """The optimized model saved for this model here, verified against its seal; None if none was saved.

    A damaged or unsealed one is never loaded: it is rebuilt, with a warning.
    """
    target = optimized_model_path(model_sha256, providers=providers, level=level, root=root)
    seal = seal_path(target)
    if not target.exists() and not seal.exists():
        return None
    if verified_entry(seal, [target], what=f"onnxruntime: the cached optimized model {target.name}",
                      then="rebuilding it"):
        return target
    try:
        return save_optimized_model(model_path, model_sha256, providers=providers, level=level, root=root)
    except MtcError as exc:  # a read-only or full cache costs load time, not the run
        log.warning("onnxruntime: could not rebuild it (%s); optimizing in memory instead", exc.message)
        return None
