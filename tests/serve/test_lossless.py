"""Lossless pieces: pictures come back exactly as written, and a failed write leaves nothing."""

from __future__ import annotations

import numpy as np
import pytest

from mtc.errors import MtcError
from mtc.serve.lossless import LosslessWriter, read_lossless


@pytest.mark.parametrize("shape", [(23, 33), (23, 33, 3), (24, 31, 4)])
def test_pictures_round_trip_exactly(tmp_path, shape):
    rng = np.random.default_rng(len(shape))
    pictures = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(4)]
    with LosslessWriter(tmp_path / "piece.mkv") as writer:
        for picture in pictures:
            writer.write(picture)
    back = list(read_lossless(tmp_path / "piece.mkv"))
    assert len(back) == 4 and all(np.array_equal(a, b) for a, b in zip(pictures, back))


def test_a_failed_or_empty_piece_leaves_no_file(tmp_path):
    with pytest.raises(MtcError, match="does not match the first"), LosslessWriter(tmp_path / "a.mkv") as writer:
        writer.write(np.zeros((8, 8, 3), np.uint8))
        writer.write(np.zeros((8, 9, 3), np.uint8))
    with pytest.raises(MtcError, match="no pictures were written"), LosslessWriter(tmp_path / "b.mkv"):
        pass
    assert list(tmp_path.iterdir()) == []
