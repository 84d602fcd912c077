"""Atomic writes: a failure part-way (full disk, crash) never leaves a file or folder that looks
complete, and never costs the previous one."""

from __future__ import annotations

import errno

import pytest

from mtc.errors import MtcError
from mtc.fsutil import atomic_dir, atomic_file


def _full_disk():
    return OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_replacing_an_artifact_keeps_the_old_one(tmp_path):
    target = tmp_path / "artifact"
    with atomic_dir(target) as folder:
        (folder / "model.onnx").write_bytes(b"old model")

    with pytest.raises(MtcError, match="disk full while writing .*artifact") as info:
        with atomic_dir(target, overwrite=True) as folder:
            (folder / "model.onnx").write_bytes(b"new mod")
            raise _full_disk()  # the rest of the write did not fit

    assert "free space" in info.value.hint
    assert (target / "model.onnx").read_bytes() == b"old model"
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]  # no temporary folder left


def test_a_full_disk_while_writing_a_file_leaves_neither_it_nor_its_temporary(tmp_path):
    target = tmp_path / "report.json"
    with pytest.raises(MtcError, match="disk full while writing .*report.json"):
        with atomic_file(target) as handle:
            handle.write(b"{")
            raise _full_disk()

    assert list(tmp_path.iterdir()) == []


def test_other_failures_propagate_and_still_clean_up(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(tmp_path / "artifact") as folder:
            (folder / "model.onnx").write_bytes(b"half")
            raise KeyboardInterrupt

    assert list(tmp_path.iterdir()) == []


# ---- output races: the final move never clobbers what this run did not create -------------


def test_two_runs_writing_the_same_folder_without_force_exactly_one_wins(tmp_path):
    target = tmp_path / "artifact"
    first, second = atomic_dir(target), atomic_dir(target)
    # Both start before either finishes: both pass the "already exists" check.
    first_folder, second_folder = first.__enter__(), second.__enter__()
    (first_folder / "model.onnx").write_bytes(b"first")
    (second_folder / "model.onnx").write_bytes(b"second")
    first.__exit__(None, None, None)
    with pytest.raises(MtcError, match="appeared while this run was writing it") as info:
        second.__exit__(None, None, None)
    assert "--force" in info.value.hint
    assert (target / "model.onnx").read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]


@pytest.mark.parametrize("contents", [[], ["notes.txt"]])
def test_a_folder_made_at_the_output_during_a_run_is_kept(tmp_path, contents):
    target = tmp_path / "artifact"
    with pytest.raises(MtcError, match="appeared while this run was writing it"):
        with atomic_dir(target) as folder:
            (folder / "model.onnx").write_bytes(b"model")
            target.mkdir()  # the user (or another tool) makes the folder meanwhile
            for name in contents:
                (target / name).write_text("mine")
    # An empty folder too: a plain rename would have replaced it without a word.
    assert sorted(p.name for p in target.iterdir()) == contents
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]


def test_force_replaces_what_is_there(tmp_path):
    target = tmp_path / "artifact"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_dir(target, overwrite=True) as folder:
        (folder / "model.onnx").write_bytes(b"new")
    assert [p.name for p in target.iterdir()] == ["model.onnx"]
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]


def test_the_no_replace_rename_refuses_without_renameat2_too(tmp_path, monkeypatch):
    from mtc import fsutil

    monkeypatch.setattr(fsutil, "_renameat2", lambda: None)  # macOS, old glibc
    source, target = tmp_path / "a", tmp_path / "b"
    source.write_text("new")
    target.write_text("theirs")
    with pytest.raises(FileExistsError):
        fsutil.rename_no_replace(source, target)
    assert target.read_text() == "theirs" and source.read_text() == "new"
    target.unlink()
    fsutil.rename_no_replace(source, target)
    assert target.read_text() == "new" and not source.exists()


def test_a_file_that_appeared_is_kept_when_replacing_is_not_asked_for(tmp_path):
    target = tmp_path / "out.png"
    with pytest.raises(MtcError, match="appeared while this run was writing it"):
        with atomic_file(target, replace=False) as handle:
            handle.write(b"ours")
            target.write_bytes(b"theirs")
    assert target.read_bytes() == b"theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


# ---- temporaries of runs that were killed -----------------------------------------------------


def _dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


def test_stale_temporaries_of_dead_runs_are_removed_and_nothing_else(tmp_path):
    import os
    import time

    from mtc import fsutil

    dead, alive = _dead_pid(), os.getppid()
    old = time.time() - 2 * fsutil.STALE_AFTER_SECONDS
    names = {
        f".clip.mtc{dead}-k2j4_x.part.mp4": True,  # a video a killed run was encoding
        f".report.json.mtc{dead}-ab12cd.part": True,  # a file
        f".artifact.mtc{dead}-zz9.part": True,  # an artifact folder
        f".artifact.mtc{alive}-zz9.part": False,  # a run still going
        f".photo.png.mtc{dead}-fresh1.part": False,  # too recent: maybe another machine's run
        ".photo.png.ab12cd.part": False,  # not mtc's naming (no process id)
        "clip.mtc1-a.part.mp4": False,  # not hidden: never a temporary
        "notes.txt": False,
    }
    for name in names:
        path = tmp_path / name
        if name.startswith(".artifact"):
            path.mkdir()
            (path / "model.onnx").write_bytes(b"half")
        else:
            path.write_bytes(b"half")
        if "fresh" not in name:
            os.utime(path, (old, old))
    removed = fsutil.remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted(n for n, stale in names.items() if stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, stale in names.items() if not stale)


def test_writing_into_a_folder_sweeps_it_once(tmp_path):
    import os
    import time

    from mtc import fsutil

    leftover = tmp_path / f".frame.png.mtc{_dead_pid()}-abc.part"
    leftover.write_bytes(b"half")
    old = time.time() - 2 * fsutil.STALE_AFTER_SECONDS
    os.utime(leftover, (old, old))
    with atomic_file(tmp_path / "frame.png") as handle:
        handle.write(b"png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frame.png"]
