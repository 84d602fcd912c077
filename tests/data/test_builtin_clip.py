"""The built-in clip: deterministic, moving, with a detectable cut and a plausible alpha."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

import mtc.data.builtin_clip as clip_module
from mtc.data.builtin_clip import (
    CALIBRATION_SHOTS,
    SOURCES,
    ClipSpec,
    builtin_alpha,
    builtin_clip,
    builtin_frames,
    scene_cut_frames,
    write_builtin_clip,
)
from mtc.errors import MtcError
from mtc.runtime.video_reader import VideoReader

SMALL = ClipSpec(width=160, height=96, frames=12)


def test_default_spec():
    spec = ClipSpec()
    assert (spec.width, spec.height, spec.frames, spec.fps, spec.seed) == (512, 288, 48, 24.0, 0)
    with pytest.raises(TypeError):
        ClipSpec(320, 192)  # keyword-only
    with pytest.raises(MtcError):
        ClipSpec(width=8)
    with pytest.raises(MtcError):
        ClipSpec(frames=0)
    for shots in (0, CALIBRATION_SHOTS + 1):
        with pytest.raises(MtcError, match="shots"):
            ClipSpec(shots=shots)


def test_deterministic_for_a_spec():
    a, b = builtin_clip(SMALL), builtin_clip(SMALL)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.stack(list(builtin_frames(SMALL))), a)
    np.testing.assert_array_equal(builtin_alpha(SMALL), builtin_alpha(SMALL))
    other_seed = builtin_clip(ClipSpec(width=160, height=96, frames=12, seed=1))
    assert not np.array_equal(a, other_seed)


@pytest.mark.parametrize(
    "spec", [ClipSpec(), ClipSpec(width=1920, height=1080, frames=3), ClipSpec(width=97, height=161, frames=2)]
)
def test_shapes_and_dtypes(spec):
    frames = builtin_clip(spec)
    assert frames.shape == (spec.frames, spec.height, spec.width, 3) and frames.dtype == np.uint8
    alpha = builtin_alpha(spec)
    assert alpha.shape == (spec.frames, spec.height, spec.width) and alpha.dtype == np.float32
    first = next(builtin_frames(spec))
    assert first.shape == (spec.height, spec.width, 3) and first.dtype == np.uint8 and first.flags.writeable


def test_frames_move_and_the_cut_is_the_biggest_change():
    spec = ClipSpec(width=256, height=144, frames=20)
    frames = builtin_clip(spec).astype(np.int16)
    diffs = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))  # diffs[i-1]: frame i vs i-1
    assert (diffs > 0.5).all(), "every frame should move"
    (cut,) = scene_cut_frames(spec)
    assert cut == 10
    assert int(np.argmax(diffs)) + 1 == cut
    assert diffs[cut - 1] > 2.5 * np.delete(diffs, cut - 1).max()


def test_scene_cut_frames():
    assert scene_cut_frames(ClipSpec()) == [24]
    assert scene_cut_frames(ClipSpec(frames=1)) == []
    assert scene_cut_frames(ClipSpec(frames=2)) == [1]
    assert scene_cut_frames(ClipSpec(frames=24, shots=6)) == [4, 8, 12, 16, 20]
    assert scene_cut_frames(ClipSpec(frames=3, shots=6)) == [1, 2]  # one shot per frame


def test_calibration_clip_has_a_shot_per_background_photo():
    spec = ClipSpec(width=128, height=72, frames=12 * CALIBRATION_SHOTS, shots=CALIBRATION_SHOTS)
    frames = builtin_clip(spec).astype(np.int16)
    diffs = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))
    cuts = scene_cut_frames(spec)
    assert len(cuts) == CALIBRATION_SHOTS - 1
    # Each cut is a bigger change than any motion inside a shot: every shot is another photo.
    inside = np.delete(diffs, [c - 1 for c in cuts])
    assert diffs[[c - 1 for c in cuts]].min() > 1.5 * inside.max()
    # The first shots are the demo clip's.
    demo = builtin_clip(ClipSpec(width=128, height=72, frames=8))
    np.testing.assert_array_equal(frames[0], demo[0])


def test_alpha_is_a_soft_person_matte():
    alpha = builtin_alpha(SMALL)
    assert alpha.min() == 0.0 and alpha.max() == 1.0
    soft = (alpha > 0.02) & (alpha < 0.98)
    assert soft.mean() > 0.01, "feathered edges should give in-between values"
    coverage = (alpha > 0.5).mean(axis=(1, 2))
    assert ((coverage > 0.1) & (coverage < 0.6)).all(), "the person should fill part of every frame"
    # The person stands on the bottom edge and does not reach the top rows.
    assert (alpha[:, -1] == 1).any(axis=1).all()
    assert (alpha[:, 0] == 0).all()


def test_alpha_matches_the_composite():
    # First shot: the person's orange suit over a dusk-blue sky.
    frame, alpha = builtin_clip(SMALL)[0].astype(int), builtin_alpha(SMALL)[0]
    person, sky = frame[alpha == 1], frame[alpha == 0]
    assert len(person) > 500 and len(sky) > 500
    assert person[:, 0].mean() > person[:, 2].mean() + 20
    assert sky[:, 2].mean() > sky[:, 0].mean() + 20


def test_write_builtin_clip_is_a_readable_video(tmp_path):
    spec = ClipSpec(width=160, height=96, frames=10, fps=12.0)
    path = write_builtin_clip(tmp_path / "clip.mp4", spec)
    assert path == tmp_path / "clip.mp4"
    with VideoReader(path) as video:
        assert (video.width, video.height, video.fps) == (160, 96, 12.0)
        decoded = np.stack(list(video))
    assert len(decoded) == 10
    assert np.abs(decoded.astype(int) - builtin_clip(spec)).mean() < 6


def test_sources_record_licences():
    names = [name for name, _, _ in SOURCES]
    assert names[0] == "astronaut.png" and len(names) >= 3
    assert all("public domain" in licence.lower() or "cc0" in licence.lower() for _, _, licence in SOURCES)


def test_missing_scikit_image_is_a_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "skimage" else real(name, *a))
    clip_module._sources.cache_clear()
    try:
        with pytest.raises(MtcError) as err:
            next(builtin_frames(SMALL))
        assert "mtc[compile]" in err.value.hint
    finally:
        clip_module._sources.cache_clear()


def test_does_not_import_skimage():
    code = (
        "from mtc.data.builtin_clip import ClipSpec, builtin_frames\n"
        "next(builtin_frames(ClipSpec(frames=1)))\n"
        "import sys; print('skimage' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
