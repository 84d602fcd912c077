"""Sessions per stream over one engine: what the Triton Python model keeps per correlation ID."""

from __future__ import annotations

import numpy as np
import pytest
from serve.artifacts import stream, write_recurrent_artifact

import mtc.runtime
from mtc.errors import MtcError
from mtc.serve.streams import StreamSessions


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return write_recurrent_artifact(tmp_path_factory.mktemp("serve") / "rec")


def _alone(artifact, frames):
    session = mtc.runtime.load(artifact, backend="onnxruntime", threads=1)
    return [session.process(f).alpha.copy() for f in frames]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_interleaved_streams_equal_each_stream_run_alone(artifact):
    a, b = stream(4, seed=1), stream(4, seed=2)
    streams = StreamSessions(mtc.runtime.load(artifact, backend="onnxruntime", threads=1), idle_seconds=60)
    got = {1: [], 2: []}
    for i in range(4):
        for key, frames in ((1, a), (2, b)):
            got[key].append(streams.process(key, frames[i], start=i == 0, end=False).alpha)
    for key, frames in ((1, a), (2, b)):
        for mine, alone in zip(got[key], _alone(artifact, frames)):
            np.testing.assert_array_equal(mine, alone)
    # The state matters: frame 3 of a stream differs from the same frame on a fresh state.
    assert np.abs(got[1][3] - _alone(artifact, a[3:])[0]).max() > 1e-3


def test_start_resets_and_end_forgets(artifact):
    frames = stream(3, seed=3)
    streams = StreamSessions(mtc.runtime.load(artifact, backend="onnxruntime", threads=1), idle_seconds=60)
    first = streams.process(5, frames[0], start=True, end=False).alpha
    streams.process(5, frames[1], start=False, end=False)
    np.testing.assert_array_equal(streams.process(5, frames[0], start=True, end=False).alpha, first)
    streams.process(5, frames[1], start=False, end=True)
    assert 5 not in streams
    with pytest.raises(MtcError, match="stream 5 has no state here.*START"):
        streams.process(5, frames[2], start=False, end=False)


def test_idle_streams_are_dropped_and_active_ones_kept(artifact):
    clock = Clock()
    frames = stream(2, seed=4)
    streams = StreamSessions(mtc.runtime.load(artifact, backend="onnxruntime", threads=1), idle_seconds=10, clock=clock)
    streams.process(1, frames[0], start=True, end=False)
    clock.now = 6.0
    streams.process(2, frames[0], start=True, end=False)
    clock.now = 12.0
    assert streams.forget_idle() == [1] and 2 in streams and len(streams) == 1


def test_a_bad_frame_fails_alone(artifact):
    frames = stream(3, seed=5)
    streams = StreamSessions(mtc.runtime.load(artifact, backend="onnxruntime", threads=1), idle_seconds=60)
    got = [streams.process(9, frames[0], start=True, end=False).alpha]
    with pytest.raises(MtcError):
        streams.process(9, np.zeros((24, 32), np.uint8), start=False, end=False)
    got += [streams.process(9, f, start=False, end=False).alpha for f in frames[1:]]
    for mine, alone in zip(got, _alone(artifact, frames)):
        np.testing.assert_array_equal(mine, alone)
