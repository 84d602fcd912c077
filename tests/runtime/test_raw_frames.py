"""mtc.runtime.video_reader.read_raw_frames: packed rgb24 frames from a pipe."""

from __future__ import annotations

import io

import numpy as np
import pytest

from mtc.errors import MtcError
from mtc.runtime.frames import pixel_limit
from mtc.runtime.video_reader import read_raw_frames


class Trickle(io.RawIOBase):
    """A pipe that hands over at most 7 bytes per read, as pipes may."""

    def __init__(self, data: bytes):
        self.data, self.position = data, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        chunk = self.data[self.position:self.position + min(7, len(buffer))]
        buffer[:len(chunk)] = chunk
        self.position += len(chunk)
        return len(chunk)


def test_frames_survive_short_reads_and_keep_their_pixels():
    frames = [np.random.default_rng(seed).integers(0, 256, (3, 5, 3), dtype=np.uint8) for seed in range(3)]
    got = list(read_raw_frames(Trickle(b"".join(f.tobytes() for f in frames)), 5, 3))
    assert len(got) == 3
    for mine, theirs in zip(got, frames):
        np.testing.assert_array_equal(mine, theirs)


def test_an_empty_stream_has_no_frames_and_a_cut_one_is_an_error():
    assert list(read_raw_frames(io.BytesIO(b""), 5, 3)) == []
    stream = read_raw_frames(io.BytesIO(bytes(45 + 20)), 5, 3)  # one frame of 45 bytes, then 20 of the next
    next(stream)
    with pytest.raises(MtcError, match="ended 20 bytes into frame 2, which needs 45"):
        next(stream)


def test_the_pixel_limit_applies_before_reading():
    with pixel_limit(100), pytest.raises(MtcError, match="over the limit"):
        next(read_raw_frames(io.BytesIO(b""), 20, 20))
