"""Where mtc keeps what it can rebuild: downloaded weights, optimized models, engines.

Two promises hold for everything a backend caches here (OpenVINO graphs and compiled models,
ONNX Runtime optimized models, TensorRT plans):

- **Sealed entries.** An entry is written first and its seal last: a small JSON file that
  records each of the entry's files with its size and sha256. A reader verifies the seal before
  it hands anything to a backend; an entry whose seal is missing or does not match its files is
  rebuilt with a warning, never used. A damaged compiled blob would otherwise run and give
  plausible-looking wrong mattes, since the artifact's own hash check cannot see it.
- **A size bound.** Engine caches grow with every frame size and model. After each new entry
  the least recently used ones are evicted until the engine areas fit in `MTC_CACHE_MAX_BYTES`
  (default 2 GiB). Downloaded weights are never evicted (fetching them again needs the network);
  `mtc cache clear --all` removes them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from mtc.errors import MtcError

log = logging.getLogger("mtc")

SEAL_SUFFIX = ".seal.json"
SEAL_FORMAT = "mtc-cache-seal"
# Areas backends rebuild on demand: the ones the size bound evicts from.
ENGINE_AREAS = ("openvino", "onnxruntime", "tensorrt", "onnxruntime-tensorrt")
DEFAULT_MAX_BYTES = 2 << 30
MAX_BYTES_ENV = "MTC_CACHE_MAX_BYTES"
# A loose (unsealed) file this recent may be another process's entry being written: never evict it.
WRITE_GRACE_SECONDS = 600
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def cache_dir() -> Path:
    """Return the mtc cache folder, creating it if needed.

    Returns:
        `$MTC_CACHE` if set, else the platform's user cache folder for "mtc".

    Raises:
        MtcError: if the folder cannot be created.
    """
    env = os.environ.get("MTC_CACHE")
    path = Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("mtc"))
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MtcError(
            f"cannot create the cache folder {path}: {exc.strerror or exc}",
            hint="set MTC_CACHE to a writable folder",
        ) from None
    return path


def cache_max_bytes() -> int:
    """The engine caches' size bound: `$MTC_CACHE_MAX_BYTES` (e.g. 500M, 4G, 0 for no caching) or 2 GiB."""
    text = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_BYTES
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", text.lower())
    if match is None:
        raise MtcError(f"{MAX_BYTES_ENV}={text!r} is not a size",
                       hint=f"set {MAX_BYTES_ENV} to a number of bytes, optionally with K, M, G or T (e.g. 4G)")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


# ---- sealed entries -------------------------------------------------------------------------


def seal_entry(seal: Path, files: Iterable[Path]) -> None:
    """Record `files` (siblings of `seal`) with their size and sha256, atomically, after them.

    Raises:
        OSError: a file vanished or the seal cannot be written (callers treat a failed seal as
            "not cached": the entry is rebuilt next time).
    """
    from mtc.artifact.manifest import sha256_file
    from mtc.fsutil import atomic_write_text

    records = {}
    for file in files:
        file = Path(file)
        if file.parent != seal.parent:
            raise ValueError(f"{file} is not beside its seal {seal}")
        records[file.name] = {"size": file.stat().st_size, "sha256": sha256_file(file)}
    atomic_write_text(seal, json.dumps({"format": SEAL_FORMAT, "files": records}, indent=1) + "\n")


def check_entry(seal: Path) -> str | None:
    """None when every file the seal lists has its recorded size and sha256, else why not.

    A good entry is marked as just used (the seal's mtime), which is what eviction orders by.
    """
    from mtc.artifact.manifest import sha256_file

    try:
        data = json.loads(seal.read_text(encoding="utf-8"))
        records = data["files"] if data.get("format") == SEAL_FORMAT else None
        if not isinstance(records, dict) or not records:
            return f"{seal.name} is not a cache seal"
        for name, record in records.items():
            file = seal.parent / name
            if Path(name).name != name or not file.is_file():
                return f"{name} is missing"
            if file.stat().st_size != record["size"] or sha256_file(file) != record["sha256"]:
                return f"{name} does not match the sha256 recorded when it was written"
    except FileNotFoundError:
        return "it has no seal (written by an interrupted run or an older mtc)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"its seal {seal.name} is unreadable ({exc})"
    with contextlib.suppress(OSError):
        os.utime(seal)
    return None


def verified_entry(seal: Path, files: Iterable[Path], *, what: str, then: str) -> bool:
    """Whether the entry sealed by `seal` exists and is intact. A damaged or unsealed one is
    deleted with a warning ("{what} is not used (why); {then}"), never handed to a backend."""
    files = list(files)
    if not seal.exists() and not any(file.exists() for file in files):
        return False
    reason = check_entry(seal)
    if reason is None:
        return True
    log.warning("%s is not used (%s); %s", what, reason, then)
    discard_entry(seal, files)
    return False


def sealed_files(seal: Path) -> list[Path]:
    """The files a seal lists (none when it is unreadable)."""
    try:
        records = json.loads(seal.read_text(encoding="utf-8")).get("files", {})
        return [seal.parent / name for name in records if Path(name).name == name]
    except (OSError, ValueError, AttributeError):
        return []


def discard_entry(seal: Path, files: Iterable[Path] = ()) -> None:
    """Delete an entry: the seal first, so that a half-deleted entry is never taken as good."""
    listed = sealed_files(seal)
    seal.unlink(missing_ok=True)
    for file in {*listed, *map(Path, files)}:
        with contextlib.suppress(OSError):
            file.unlink()


# ---- listing and the size bound -------------------------------------------------------------


@dataclass(frozen=True)
class CacheEntry:
    """One evictable unit: a seal and its files, or a group of loose files sharing a name stem."""

    area: str
    files: tuple[Path, ...]
    size: int
    last_used: float
    seal: Path | None = None


def _stem(path: Path) -> str:
    return path.name.lstrip(".").split(".")[0]


def cache_entries(root: Path | None = None, *, areas: Iterable[str] | None = None) -> list[CacheEntry]:
    """The entries under `root` (default: the mtc cache) in the given areas (default: all)."""
    root = cache_dir() if root is None else root
    if areas is None:
        areas = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    entries = []
    for area in areas:
        folder = root / area
        if not folder.is_dir():
            continue
        files = [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()]
        covered: set[Path] = set()
        for seal in (p for p in files if p.name.endswith(SEAL_SUFFIX)):
            members = [p for p in sealed_files(seal) if p.is_file()]
            covered.update([seal, *members])
            entries.append(_entry(area, [seal, *members], seal=seal))
        loose: dict[tuple[Path, str], list[Path]] = {}
        for file in files:
            if file not in covered:
                loose.setdefault((file.parent, _stem(file)), []).append(file)
        entries.extend(_entry(area, group) for group in loose.values())
    return entries


def _entry(area: str, files: list[Path], *, seal: Path | None = None) -> CacheEntry:
    stats = []
    for file in files:
        with contextlib.suppress(OSError):
            stats.append(file.stat())
    last_used = seal.stat().st_mtime if seal is not None and seal.exists() else max((s.st_mtime for s in stats),
                                                                                      default=0.0)
    return CacheEntry(area, tuple(files), sum(s.st_size for s in stats), last_used, seal)


def evict(entry: CacheEntry) -> None:
    if entry.seal is not None:
        discard_entry(entry.seal, entry.files)
    else:
        for file in entry.files:
            with contextlib.suppress(OSError):
                file.unlink()
    for folder in {f.parent for f in entry.files}:  # drop folders the entry leaves empty
        with contextlib.suppress(OSError):
            folder.rmdir()


def enforce_cache_bound(*, keep: Iterable[Path] = (), root: Path | None = None,
                        max_bytes: int | None = None) -> list[CacheEntry]:
    """Evict least recently used engine-cache entries until they fit the bound; returns them.

    `keep` names seals or files of entries just written, which stay even when they alone exceed
    the bound (the run that wrote them is about to use them). Loose files younger than
    WRITE_GRACE_SECONDS may be another process's entry in the making and are skipped too.
    """
    try:
        root = cache_dir() if root is None else root
        limit = cache_max_bytes() if max_bytes is None else max_bytes
        entries = cache_entries(root, areas=ENGINE_AREAS)
    except (MtcError, OSError) as exc:  # a cache we cannot read costs disk, not the run
        log.debug("cache: size bound not applied (%s)", getattr(exc, "message", exc))
        return []
    total = sum(e.size for e in entries)
    if total <= limit:
        return []
    kept = {Path(p) for p in keep}
    now = time.time()
    evicted = []
    for entry in sorted(entries, key=lambda e: e.last_used):
        if total <= limit:
            break
        if kept & {entry.seal, *entry.files} or (entry.seal is None and now - entry.last_used < WRITE_GRACE_SECONDS):
            continue
        evict(entry)
        total -= entry.size
        evicted.append(entry)
    if evicted:
        log.info("cache: evicted %d least recently used entr%s (%s) to stay within %s", len(evicted),
                 "y" if len(evicted) == 1 else "ies", format_bytes(sum(e.size for e in evicted)), format_bytes(limit))
    return evicted


def clear_cache(*, areas: Iterable[str], root: Path | None = None) -> int:
    """Delete whole cache areas; returns the bytes freed."""
    root = cache_dir() if root is None else root
    freed = 0
    for area in areas:
        folder = root / area
        if not folder.is_dir() or folder.is_symlink():
            continue
        freed += sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
        shutil.rmtree(folder, ignore_errors=True)
    return freed


def format_bytes(count: float) -> str:
    if count < 1024:
        return f"{int(count)} B"
    exponent = min(int(math.log(count, 1024)), 4)
    return f"{count / 1024 ** exponent:.1f} {'BKMGT'[exponent]}iB"
