"""Atomic file and folder writes: a crash or a full disk never leaves a file that looks complete.

Temporaries are hidden siblings of their target named ``.<name>.mtc<pid>-<random>.part[<ext>]``
(``.old`` for a replaced folder on its way out). A run that ends normally or by an exception,
Ctrl-C or SIGTERM removes its own; one killed outright (SIGKILL, power loss) cannot, so every
write sweeps its folder for temporaries of this naming whose process is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from mtc.errors import MtcError

# The process id in a temporary's name is what lets a later run tell an orphan from the
# temporary of a run still going; the age check covers a folder shared with another machine,
# whose process ids mean nothing here.
_TEMPORARY = re.compile(r"\..+\.mtc(\d+)-[A-Za-z0-9_]+\.(part|old)(\.[A-Za-z0-9]+)?")
STALE_AFTER_SECONDS = 600


def temporary_prefix(name: str) -> str:
    """The start of a temporary's name for target `name` (tempfile adds the random part)."""
    return f".{name}.mtc{os.getpid()}-"


def _process_gone(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: alive, another user's
        pass
    return False


_swept: set[Path] = set()


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete temporaries of mtc's naming in `folder` left by processes that no longer run and
    untouched for STALE_AFTER_SECONDS; never anything else. Returns what was deleted.

    Each folder is swept once per process: a video's frame folder gets thousands of writes.
    """
    if sys.platform == "win32":  # os.kill(pid, 0) would terminate the process there
        return []
    folder = Path(os.path.abspath(folder))
    if folder in _swept:
        return []
    _swept.add(folder)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    now = time.time()
    for entry in entries:
        match = _TEMPORARY.fullmatch(entry.name)
        if not match or not _process_gone(int(match[1])):
            continue
        try:
            if now - entry.stat(follow_symlinks=False).st_mtime < STALE_AFTER_SECONDS:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError:
            continue  # gone already, or not ours to delete: leave it
        removed.append(Path(entry.path))
    return removed


@functools.cache
def _renameat2():
    """glibc's renameat2 (Linux 3.15+, glibc 2.28+), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    function = getattr(libc, "renameat2", None)
    if function is not None:
        function.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    return function


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def rename_no_replace(source: Path, target: Path) -> None:
    """Rename `source` to `target` only if nothing is at `target`, atomically where the system
    can (Linux renameat2 RENAME_NOREPLACE); elsewhere a check just before the rename.

    Raises:
        FileExistsError: Something is at `target`; `source` is left where it was.
        OSError: Any other failure of the rename.
    """
    function = _renameat2()
    if function is not None:
        if function(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            raise FileExistsError(code, os.strerror(code), str(target))
        if code not in (errno.ENOSYS, errno.EINVAL):  # EINVAL: a filesystem without the flag
            raise OSError(code, os.strerror(code), str(target))
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
    os.rename(source, target)


def _appeared_error(path: Path) -> MtcError:
    return MtcError(f"{path} appeared while this run was writing it (another run writing the same output?); "
                    "left it untouched", hint="pass --force to replace it, or choose another -o")


def terminate_like_interrupt() -> None:
    """Make SIGTERM (what `kill`, systemd and container runtimes send) raise KeyboardInterrupt in
    the main thread, as Ctrl-C does, so the cleanup that runs on Ctrl-C runs on it too."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def disk_error(path: Path, exc: OSError) -> MtcError:
    if exc.errno == errno.ENOSPC:
        return MtcError(f"disk full while writing {path}", hint="free space on that disk or write elsewhere")
    if exc.errno == errno.EFBIG:
        return MtcError(f"cannot write {path}: larger than this filesystem or the file-size limit allows",
                        hint="write to another disk, or raise the limit (ulimit -f)")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return MtcError(f"cannot write {path}: permission denied", hint="choose a writable output path")
    return MtcError(f"cannot write {path}: {exc.strerror or exc}", hint="check the output path")


def out_of_space(folder: Path, needed: int) -> bool:
    """Whether `folder`'s disk has less than `needed` bytes free: for libraries (ONNX Runtime,
    OpenVINO) that report a failed write as a generic error, which must not read as a bad model."""
    try:
        return shutil.disk_usage(folder).free < needed
    except OSError:
        return False


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
def atomic_file(path: str | os.PathLike, mode: str = "wb", *, replace: bool = True) -> Iterator:
    """Open a temporary sibling of `path` for writing; rename it to `path` only on success.

    With `replace=False` a file that appeared at `path` meanwhile is kept and this one dropped.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path.name), suffix=".part", dir=path.parent)
    except OSError as exc:
        raise disk_error(path, exc) from None
    tmp_path = Path(tmp)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        give_default_permissions(tmp_path)
        finish_file(tmp_path, path, replace=replace)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise disk_error(path, exc) from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def finish_file(tmp: Path, path: Path, *, replace: bool) -> None:
    """Move a complete temporary file to `path`: over what is there, or (`replace=False`) only if
    nothing is, else an MtcError that leaves the other file alone. The caller removes `tmp` on error."""
    if replace:
        os.replace(tmp, path)
    else:
        _move_into_place(tmp, path)
    fsync_dir(path.parent)


def _move_into_place(tmp: Path, path: Path) -> None:
    """Rename `tmp` to `path` unless something appeared there meanwhile (another run's output, a
    folder the user made): the rename itself refuses, and that is an MtcError."""
    try:
        rename_no_replace(tmp, path)
    except FileExistsError:
        raise _appeared_error(path) from None


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
        remove_stale_temporaries(path.parent)
        tmp = Path(tempfile.mkdtemp(prefix=temporary_prefix(path.name), suffix=".part", dir=path.parent))
        give_default_permissions(tmp, directory=True)
    except OSError as exc:
        raise disk_error(path, exc) from None
    try:
        yield tmp
        if overwrite and path.exists():
            trash = Path(tempfile.mkdtemp(prefix=temporary_prefix(path.name), suffix=".old", dir=path.parent))
            os.replace(path, trash / "old")
            os.replace(tmp, path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            _move_into_place(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise disk_error(path, exc) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
