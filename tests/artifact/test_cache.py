"""The mtc cache: sealed entries (sha256 recorded at write, checked at read) and the size bound
with least-recently-used eviction."""

from __future__ import annotations

import os
import time

import pytest
from tiny_artifacts import flip_middle_bytes

from mtc.artifact.cache import (
    SEAL_SUFFIX,
    WRITE_GRACE_SECONDS,
    cache_entries,
    cache_max_bytes,
    check_entry,
    discard_entry,
    enforce_cache_bound,
    seal_entry,
)
from mtc.errors import MtcError


def _entry(folder, name, size, *, used_ago=0.0):
    """A sealed entry of one file of `size` bytes, last used `used_ago` seconds ago."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.bin"
    data.write_bytes(os.urandom(size))
    seal = folder / f"{name}{SEAL_SUFFIX}"
    seal_entry(seal, [data])
    stamp = time.time() - used_ago
    os.utime(seal, (stamp, stamp))
    return seal, data


def test_a_sealed_entry_passes_and_any_change_fails(tmp_path):
    seal, data = _entry(tmp_path, "model", 4096)
    assert check_entry(seal) is None
    flip_middle_bytes(data)
    assert "does not match the sha256" in check_entry(seal)
    data.write_bytes(b"short")
    assert "does not match the sha256" in check_entry(seal)
    data.unlink()
    assert "is missing" in check_entry(seal)
    assert "has no seal" in check_entry(tmp_path / f"other{SEAL_SUFFIX}")
    seal.write_text("{ not json")
    assert "unreadable" in check_entry(seal)


def test_a_seal_cannot_vouch_for_files_outside_its_folder(tmp_path):
    seal, data = _entry(tmp_path / "entry", "model", 64)
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"x")
    seal.write_text('{"format": "mtc-cache-seal", "files": {"../secret.bin": {"size": 1, "sha256": "0"}}}')
    assert "is missing" in check_entry(seal)
    discard_entry(seal)
    assert outside.exists()  # discarding an entry never follows a name out of its folder
    with pytest.raises(ValueError):
        seal_entry(tmp_path / "entry" / f"x{SEAL_SUFFIX}", [outside])


def test_discarding_removes_the_seal_before_the_files(tmp_path):
    seal, data = _entry(tmp_path, "model", 64)
    discard_entry(seal)
    assert not seal.exists() and not data.exists()


def test_least_recently_used_entries_are_evicted_down_to_the_bound(tmp_path):
    area = tmp_path / "openvino"
    old, _ = _entry(area, "old", 1000, used_ago=300)
    middle, _ = _entry(area, "middle", 1000, used_ago=200)
    new, _ = _entry(area, "new", 1000, used_ago=100)
    weights = tmp_path / "weights" / "abc"
    weights.mkdir(parents=True)
    (weights / "w.pth").write_bytes(os.urandom(5000))  # over the bound alone, but never evicted
    evicted = enforce_cache_bound(root=tmp_path, max_bytes=2600)
    assert [e.seal for e in evicted] == [old]
    assert not old.exists() and middle.exists() and new.exists() and (weights / "w.pth").exists()
    assert check_entry(middle) is None  # using an entry makes it the most recent
    evicted = enforce_cache_bound(root=tmp_path, max_bytes=1500)
    assert [e.seal for e in evicted] == [new]


def test_the_entry_just_written_stays_even_when_it_alone_exceeds_the_bound(tmp_path):
    seal, data = _entry(tmp_path / "onnxruntime", "big", 4000)
    assert enforce_cache_bound(root=tmp_path, max_bytes=1000, keep=[seal]) == []
    assert data.exists()


def test_loose_files_are_evicted_only_when_no_writer_can_still_be_at_work(tmp_path):
    area = tmp_path / "openvino" / "legacy"
    area.mkdir(parents=True)
    stale, fresh = area / "1234.blob", area / "5678.blob"
    stale.write_bytes(os.urandom(2000))
    fresh.write_bytes(os.urandom(2000))
    past = time.time() - WRITE_GRACE_SECONDS - 60
    os.utime(stale, (past, past))
    evicted = enforce_cache_bound(root=tmp_path, max_bytes=100)
    assert [e.files for e in evicted] == [(stale,)]
    assert fresh.exists()


def test_entries_group_a_seal_with_its_files_and_loose_files_by_name(tmp_path):
    seal, data = _entry(tmp_path / "openvino", "graph", 100)
    plan = tmp_path / "tensorrt" / "key"
    plan.mkdir(parents=True)
    (plan / "hd.plan").write_bytes(b"p" * 10)
    (plan / "hd.plan.json").write_text("{}")
    entries = {(e.area, tuple(sorted(p.name for p in e.files))) for e in cache_entries(tmp_path)}
    assert entries == {("openvino", (data.name, seal.name)), ("tensorrt", ("hd.plan", "hd.plan.json"))}


@pytest.mark.parametrize("text, expected", [("", 2 << 30), ("1000", 1000), ("500M", 500 << 20), ("4G", 4 << 30),
                                            ("1.5GiB", int(1.5 * (1 << 30))), ("0", 0)])
def test_the_bound_comes_from_the_environment(monkeypatch, text, expected):
    monkeypatch.setenv("MTC_CACHE_MAX_BYTES", text)
    assert cache_max_bytes() == expected


@pytest.mark.parametrize("text", ["-1", "lots", "nan", "4X"])
def test_a_malformed_bound_is_one_clear_error(monkeypatch, text):
    monkeypatch.setenv("MTC_CACHE_MAX_BYTES", text)
    with pytest.raises(MtcError, match="MTC_CACHE_MAX_BYTES=.* is not a size") as err:
        cache_max_bytes()
    assert "4G" in err.value.hint


def test_openvino_cache_stays_within_the_bound_over_many_frame_sizes(tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    from tiny_artifacts import frames, write_tiny_artifact

    import mtc.runtime

    monkeypatch.setenv("MTC_CACHE", str(tmp_path / "cache"))
    artifact = write_tiny_artifact(tmp_path / "tiny")
    session = mtc.runtime.load(artifact, backend="openvino")
    session.process(frames(1, 32, 32)[0])
    per_size = sum(e.size for e in cache_entries(tmp_path / "cache"))
    monkeypatch.setenv("MTC_CACHE_MAX_BYTES", str(3 * per_size))
    for side in range(40, 120, 8):
        session.process(frames(1, side, side)[0])
        total = sum(e.size for e in cache_entries(tmp_path / "cache"))
        assert total <= 3 * per_size + per_size  # the bound, plus the entry in use
