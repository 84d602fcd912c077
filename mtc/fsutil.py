"""Atomic file and folder writes: a crash or a full disk never leaves a file that looks complete."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mtc.errors import MtcError


def disk_error(path: Path, exc: OSError) -> MtcError:
    if exc.errno == errno.ENOSPC:
        return MtcError(f"disk full while writing {path}", hint="free space on that disk or write elsewhere")
    if exc.errno == errno.EFBIG:
        return MtcError(f"cannot write {path}: larger than this filesystem or the file-size limit allows",
                        hint="write to another disk, or raise the limit (ulimit -f)")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return MtcError(f"cannot write {path}: permission denied", hint="choose a writable output path")
    return MtcError(f"cannot write {path}: {exc.strerror or exc}", hint="check the output path")


def give_default_permissions(path: Path, *, directory: bool = False) -> None:
    """mkstemp/mkdtemp create owner-only entries; results should look as open()/mkdir() make them."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if directory else 0o666) & ~mask)


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable; filesystems that cannot open folders are harmless."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Open a temporary sibling of `path` for writing; rename it over `path` only on success."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as exc:
        raise disk_error(path, exc) from None
    tmp_path = Path(tmp)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        give_default_permissions(tmp_path)
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise disk_error(path, exc) from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_file(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; it becomes `path` only if the block succeeds.

    An existing `path` is replaced only with `overwrite=True`, and only after the new folder
    is complete, so a failed rebuild keeps the old artifact intact.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise MtcError(f"{path} already exists", hint="pass --force to replace it, or choose another -o")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
        give_default_permissions(tmp, directory=True)
    except OSError as exc:
        raise disk_error(path, exc) from None
    try:
        yield tmp
        if path.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, trash / "old")
            os.replace(tmp, path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise disk_error(path, exc) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
