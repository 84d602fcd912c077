"""The built-in photos: two disjoint splits, any size, cropped rather than stretched."""

from __future__ import annotations

import numpy as np
import pytest

from mtc.data.builtin_photos import CALIBRATION_PHOTOS, CHECK_PHOTOS, builtin_photos
from mtc.errors import MtcError


def test_calibration_and_check_photos_are_disjoint_and_licensed():
    calibration = {name for name, _, _ in CALIBRATION_PHOTOS}
    check = {name for name, _, _ in CHECK_PHOTOS}
    assert calibration and check and not calibration & check
    assert all(licence for _, _, licence in CALIBRATION_PHOTOS + CHECK_PHOTOS)


@pytest.mark.parametrize("size", [(64, 48), (40, 96)])
def test_photos_come_at_the_asked_size_as_rgb_uint8(size):
    photos = builtin_photos("check", size)
    assert [name for name, _ in photos] == [name for name, _, _ in CHECK_PHOTOS]
    for _, frame in photos:
        assert frame.shape == (size[1], size[0], 3) and frame.dtype == np.uint8


def test_a_photo_is_centre_cropped_not_stretched():
    from PIL import Image

    from mtc.data.builtin_clip import _data_dir

    # A square crop of a wide photo equals the photo's own centre square, resized.
    name, frame = builtin_photos("calibration", (32, 32))[2]
    photo = Image.open(_data_dir() / name).convert("RGB")
    side = min(photo.size)
    left = (photo.width - side) / 2
    centre = photo.resize((32, 32), Image.Resampling.LANCZOS, box=(left, (photo.height - side) / 2, left + side,
                                                                  (photo.height + side) / 2))
    np.testing.assert_array_equal(frame, np.asarray(centre))
    assert photo.width != photo.height  # the case only tests something on a non-square photo


def test_bad_split_or_size_is_one_clear_error():
    with pytest.raises(MtcError, match="unknown built-in photo split 'test'"):
        builtin_photos("test", (64, 64))
    with pytest.raises(MtcError, match="too small"):
        builtin_photos("check", (8, 64))
