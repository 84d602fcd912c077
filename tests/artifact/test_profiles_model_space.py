"""Engines are prepared for the shapes the session really feeds (model-input space)."""

import numpy as np
import pytest

from mtc.artifact.profiles import NAMED_PROFILES, parse_profile, profile_shapes
from mtc.errors import MtcError
from mtc.models.registry import get_model
from mtc.runtime.session import MattingSession


class _Recorder:
    def __init__(self, io):
        self.input_names = tuple(t.name for t in io.inputs)
        self.output_names = tuple(t.name for t in io.outputs)
        self.shapes = []

    def run(self, feeds):
        image = next(v for v in feeds.values() if np.ndim(v) == 4 and np.shape(v)[1] == 3)
        self.shapes.append({k: tuple(np.shape(v)) for k, v in feeds.items()})
        n, _, h, w = image.shape
        return {name: np.zeros((n, 1 if name != "fgr" else 3, h, w), np.float32) for name in self.output_names}


@pytest.mark.parametrize("model", ["u2net", "modnet"])
@pytest.mark.parametrize("profile", ["512", "720p", "hd", "4k", "1080x1920"])
def test_build_shapes_equal_what_the_session_feeds(model, profile):
    io = get_model(model).variant(None).io
    chosen = parse_profile(profile)
    backend = _Recorder(io)
    MattingSession(io, backend).process(np.zeros((chosen.height, chosen.width, 3), np.uint8))
    fed = backend.shapes[0]
    prepared = profile_shapes(io, chosen.for_model(io))
    assert {name: r.opt for name, r in prepared.items()} == fed
    assert all(r.min == r.opt == r.max for r in prepared.values())


def test_fixed_size_model_gets_its_input_size_whatever_the_frame():
    io = get_model("u2net").variant(None).io
    for name in NAMED_PROFILES:
        assert profile_shapes(io, NAMED_PROFILES[name].for_model(io))["src"].opt == (1, 3, 320, 320)


def test_rvm_profile_ratio_matches_the_sessions_auto_ratio():
    io = get_model("rvm").variant(None).io
    for name in NAMED_PROFILES:
        profile = NAMED_PROFILES[name].for_model(io)
        session = MattingSession(io, _Recorder(io))
        assert profile.downsample_ratio == session.ratio_for(profile.height, profile.width)


def test_a_profile_ratio_outside_the_models_range_is_refused():
    from tiny_artifacts import tiny_io

    io = tiny_io(with_ratio=True)
    assert parse_profile("1280x720@0.25").for_model(io).downsample_ratio == 0.25
    with pytest.raises(MtcError, match=r"downsample ratio 0.001 is outside this model's valid range \[0.0625, 1\]"):
        parse_profile("1280x720@0.001").for_model(io)
