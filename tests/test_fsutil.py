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
