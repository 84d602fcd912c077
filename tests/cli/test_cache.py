"""`mtc cache ls|clear`."""

from __future__ import annotations

import os
import subprocess
import sys

from mtc.artifact.cache import SEAL_SUFFIX, format_bytes, seal_entry


def _mtc(*args, cache):
    env = {**os.environ, "MTC_CACHE": str(cache), "MTC_CACHE_MAX_BYTES": "1G"}
    return subprocess.run([sys.executable, "-m", "mtc", "cache", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def _size(folder):
    return format_bytes(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()))


def _fill(cache):
    entry = cache / "openvino" / "compiled" / "key"
    entry.mkdir(parents=True)
    (entry / "1.blob").write_bytes(b"b" * 3000)
    seal_entry(entry / f"compiled{SEAL_SUFFIX}", [entry / "1.blob"])
    weights = cache / "weights" / "abcd"
    weights.mkdir(parents=True)
    (weights / "model.pth").write_bytes(b"w" * 5000)
    return entry, weights


def test_ls_shows_each_area_its_size_and_the_bound(tmp_path):
    cache = tmp_path / "cache"
    _fill(cache)
    result = _mtc("ls", "-l", cache=cache)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"engine caches {_size(cache / 'openvino')} of 1.0 GiB (MTC_CACHE_MAX_BYTES)" in lines[0]
    assert any(line.split()[:3] == ["openvino", *_size(cache / "openvino").split()] and "rebuilt when needed" in line
               for line in lines)
    assert any(line.split()[:3] == ["weights", *_size(cache / "weights").split()] and "kept" in line for line in lines)
    assert any("sealed" in line and line.endswith(f"compiled{SEAL_SUFFIX}") for line in lines)


def test_clear_removes_engines_and_keeps_weights_unless_all(tmp_path):
    cache = tmp_path / "cache"
    entry, weights = _fill(cache)
    engines, kept = _size(cache / "openvino"), _size(cache / "weights")
    result = _mtc("clear", cache=cache)
    assert result.returncode == 0, result.stderr
    assert f"freed {engines}" in result.stdout
    assert not entry.exists() and (weights / "model.pth").exists()
    result = _mtc("clear", "--all", cache=cache)
    assert result.returncode == 0 and f"freed {kept}" in result.stdout
    assert not weights.exists()


def test_a_malformed_bound_is_a_one_line_error(tmp_path):
    env = {**os.environ, "MTC_CACHE": str(tmp_path / "cache"), "MTC_CACHE_MAX_BYTES": "lots"}
    result = subprocess.run([sys.executable, "-m", "mtc", "cache", "ls"], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: MTC_CACHE_MAX_BYTES='lots' is not a size")
    assert len(result.stderr.strip().splitlines()) == 1
