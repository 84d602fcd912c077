"""Frames handed to the runtime and the pixel limit: any array is matted correctly or refused
with one clear error, and no picture over the limit gets anything allocated for it."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from runtime.media_helpers import smooth_frame
from tiny_artifacts import tiny_model, write_tiny_artifact

import mtc.runtime
from mtc.errors import MtcError
from mtc.runtime.frames import (
    DEFAULT_MAX_PIXELS,
    check_frame,
    check_pixels,
    max_pixels,
    parse_max_pixels,
    pixel_limit,
)


@pytest.mark.parametrize("text, pixels", [("100000000", 10**8), ("1e8", 10**8), (" 12000x9000 ", 108_000_000)])
def test_max_pixels_reads_counts_and_sizes(text, pixels):
    assert parse_max_pixels(text) == pixels


@pytest.mark.parametrize("text", ["0", "-5", "nan", "inf", "1.5", "x", "12000x0", "ten", ""])
def test_max_pixels_refuses_what_is_not_a_positive_count(text):
    with pytest.raises(MtcError, match="is not a positive pixel count"):
        parse_max_pixels(text)


def test_the_limit_comes_from_the_block_then_the_environment_then_the_default(monkeypatch):
    monkeypatch.delenv("MTC_MAX_PIXELS", raising=False)
    assert max_pixels() == DEFAULT_MAX_PIXELS == 8192 * 8192
    monkeypatch.setenv("MTC_MAX_PIXELS", "4000x3000")
    assert max_pixels() == 12_000_000
    with pixel_limit(5):
        assert max_pixels() == 5
    assert max_pixels() == 12_000_000


def test_check_pixels_names_the_size_the_limit_and_the_way_to_raise_it():
    check_pixels(8192, 8192, "resolution 8192x8192")  # the default limit itself is allowed
    with pytest.raises(MtcError) as info:
        check_pixels(8193, 8192, "resolution 8193x8192")
    assert str(info.value).startswith("resolution 8193x8192 is 8193x8192 = 67,117,056 pixels, over the limit of "
                                      "67,108,864 (hint: ")
    assert "--max-pixels" in info.value.hint and "MTC_MAX_PIXELS" in info.value.hint


def test_a_frame_over_the_limit_is_refused_by_the_api():
    frame = np.zeros((20, 20, 3), np.uint8)
    check_frame(frame)
    with pixel_limit(399), pytest.raises(MtcError, match="frame is 20x20 = 400 pixels, over the limit of 399"):
        check_frame(frame)


# ---- fuzzing: any array through the session's preprocessing ---------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = write_tiny_artifact(tmp_path_factory.mktemp("tiny") / "artifact")
    session = mtc.runtime.load(folder, backend="onnxruntime", threads=1)
    reference = ort.InferenceSession(tiny_model().SerializeToString(), providers=["CPUExecutionProvider"])
    return session, reference


_DTYPES = st.sampled_from([np.uint8, np.uint8, np.uint8, np.int8, np.uint16, np.int32, np.int64, np.float16,
                           np.float32, np.float64, np.bool_, np.complex64])
# Any shape at all, and (half the time) the HxWxC shapes near a valid frame, where mistakes hide.
_SHAPES = st.one_of(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=40),
                    st.tuples(st.integers(0, 40), st.integers(0, 40), st.integers(1, 5)))
_ARRAYS = hnp.arrays(dtype=_DTYPES, shape=_SHAPES)


@st.composite
def _any_array(draw):
    array = draw(_ARRAYS)
    if array.ndim >= 2 and draw(st.booleans()):  # a strided view, as slices and transposes give
        array = array.swapaxes(0, 1) if draw(st.booleans()) else array[::2, ::2]
    return array


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(frame=_any_array())
def test_any_array_is_matted_correctly_or_refused_with_one_clear_error(tiny, frame):
    session, reference = tiny
    valid = (frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8
             and min(frame.shape[:2]) >= 16)
    session.reset()
    try:
        matte = session.process(frame)
    except MtcError as exc:
        assert not valid, f"refused a valid frame: {exc}"
        assert "\n" not in str(exc) and exc.hint
        return
    assert valid, f"accepted {frame.dtype} {frame.shape}"
    tensor = np.ascontiguousarray(frame.transpose(2, 0, 1)[None], np.float32) / 255.0
    (expected,) = reference.run(None, {"img": tensor})
    assert matte.alpha.shape == frame.shape[:2] and matte.alpha.dtype == np.float32
    np.testing.assert_allclose(matte.alpha, expected[0, 0], atol=1e-5)


def test_a_full_frame_of_noise_matches_the_model_exactly(tiny):
    # Fixed example beside the fuzzing: 16 px sides at the minimum the runtime accepts.
    session, reference = tiny
    frame = np.random.default_rng(3).integers(0, 256, (16, 23, 3), dtype=np.uint8)
    (expected,) = reference.run(None, {"img": frame.transpose(2, 0, 1)[None].astype(np.float32) / 255.0})
    np.testing.assert_allclose(session.process(frame).alpha, expected[0, 0], atol=1e-5)


def test_check_frame_accepts_rgb_uint8_views():
    frame = smooth_frame(32, 48)
    check_frame(frame)
    check_frame(frame[:, ::-1])  # not C-contiguous
    check_frame(np.ascontiguousarray(frame[..., ::-1]))


@pytest.mark.parametrize(
    ("frame", "problem", "fix"),
    [
        (np.zeros((32, 48, 4), np.uint8), "RGBA", "frame[..., :3]"),
        (np.zeros((32, 48), np.uint8), "grayscale", "np.repeat(frame[..., None], 3, axis=2)"),
        (np.zeros((32, 48, 1), np.uint8), "grayscale", "np.repeat"),
        (np.zeros((32, 48, 3), np.uint16), "uint16", "convert to uint8"),
        (np.zeros((32, 48, 3), np.float32), "float32", "convert to uint8"),
        (np.zeros((3, 32, 48), np.uint8), "channels-first", "transpose"),
        (np.zeros((2, 32, 48, 3), np.uint8), "single HxWx3", "one frame at a time"),
        (np.zeros((0, 0, 3), np.uint8), "empty", "(height, width, 3)"),
        (np.zeros((8, 48, 3), np.uint8), "too small", "(height, width, 3)"),
        ([[0, 0, 0]], "numpy array", "np.asarray"),
    ],
)
def test_check_frame_explains_the_layout(frame, problem, fix):
    with pytest.raises(MtcError) as err:
        check_frame(frame)
    assert problem in err.value.message
    assert fix in err.value.hint
