"""The export's parity check: the tolerance widens to what the candidate's graph differs from
itself between two implementations, and only there."""

from __future__ import annotations

import numpy as np
import pytest

from mtc.artifact.manifest import ModelIO, Preprocess, TensorSpec
from mtc.export.parity import FLOOR_FACTOR, ParityResult, compare_on_frames


def test_the_allowed_difference_is_the_tolerance_or_twice_the_floor_whichever_is_larger():
    def result(worst, floor):
        return ParityResult(8, 8, None, 1, {"alpha": worst}, 1e-4, None if floor is None else {"alpha": floor})

    assert result(1.5e-4, None).allowed == 1e-4 and not result(1.5e-4, None).passed
    assert result(1.5e-4, 1e-5).allowed == 1e-4 and not result(1.5e-4, 1e-5).passed  # a small floor changes nothing
    assert result(1.5e-4, 8e-5).allowed == pytest.approx(FLOOR_FACTOR * 8e-5) and result(1.5e-4, 8e-5).passed
    assert not result(1e-2, 8e-5).passed  # a broken export is far beyond any floor
    assert result(1.5e-4, 8e-5).to_dict()["floor"] == {"alpha": 8e-5}


class _Offset:
    """A backend whose alpha is the frame's mean channel plus a fixed offset."""

    name, fresh_outputs, compiles_per_shape = "offset", True, False
    input_names, output_names = ("src",), ("alpha",)

    def __init__(self, offset: float):
        self.offset = offset

    def run(self, feeds):
        return {"alpha": feeds["src"].mean(axis=1, keepdims=True) + np.float32(self.offset)}


def test_compare_on_frames_measures_the_floor_against_the_candidate():
    io = ModelIO(inputs=(TensorSpec("src", "image", shape=(1, 3, "h", "w")),),
                 outputs=(TensorSpec("alpha", "alpha", shape=(1, 1, "h", "w"), value_range=(0.0, 1.0)),),
                 preprocess=Preprocess())
    frames = [np.full((32, 32, 3), 100, np.uint8)]

    result = compare_on_frames(io, _Offset(0.0), _Offset(3e-4), frames, tolerance=1e-4, floor=_Offset(1e-4))

    assert result.max_abs_diff["alpha"] == pytest.approx(3e-4, rel=1e-3)
    assert result.floor["alpha"] == pytest.approx(2e-4, rel=1e-3)
    assert result.passed  # 3e-4 within twice the candidate's 2e-4 against its second implementation
    assert not compare_on_frames(io, _Offset(0.0), _Offset(3e-4), frames, tolerance=1e-4).passed
