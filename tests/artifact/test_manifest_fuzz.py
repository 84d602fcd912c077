"""Fuzzing the manifest parser: any JSON gives a valid manifest or one MtcError, never another
exception, and whatever it accepts survives a round trip."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_artifacts import write_tiny_artifact

from mtc.artifact.manifest import MANIFEST_NAME, Manifest, manifest_from_dict
from mtc.errors import MtcError

# Modest counts: the suite runs on 2 shared cores in CI.
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
           | st.sampled_from(["image", "alpha", "state", "model.onnx", "../x.onnx", "fixed", "int8", "RGB"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> dict:
    folder = write_tiny_artifact(tmp_path_factory.mktemp("fuzz") / "tiny", with_ratio=True)
    data = json.loads((folder / MANIFEST_NAME).read_text())
    data["io"]["states"] = [{"input": "img", "output": "alpha", "stride": 4}]
    data["check_sizes"] = [{"width": 512, "height": 288, "downsample_ratio": 0.5}]
    return data


def _parse(data):
    """The parser's only two outcomes: a Manifest, or one MtcError on one line."""
    try:
        manifest = manifest_from_dict(data)
    except MtcError as exc:
        assert "\n" not in str(exc)
        return None
    assert isinstance(manifest, Manifest)
    assert manifest_from_dict(json.loads(manifest.to_json())) == manifest  # what it accepts, it writes back
    return manifest


@FUZZ
@given(json_values)
def test_any_json_is_a_manifest_or_one_clear_error(data):
    _parse(data)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*prefix, index))


@FUZZ
@given(st.data())
def test_any_field_replaced_by_any_json_is_a_manifest_or_one_clear_error(valid, data):
    document = json.loads(json.dumps(valid))
    paths = [p for p in _paths(document) if p]
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        parent = document
        try:
            for key in path[:-1]:
                parent = parent[key]
            parent[path[-1]] = data.draw(json_values)
        except (KeyError, IndexError, TypeError):  # an earlier replacement removed this path
            continue
    _parse(document)


@FUZZ
@given(st.data())
def test_any_field_removed_is_a_manifest_or_one_clear_error(valid, data):
    document = json.loads(json.dumps(valid))
    path = data.draw(st.sampled_from([p for p in _paths(document) if p]))
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    _parse(document)
