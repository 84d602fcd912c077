"""The gates file parser under fuzzing: any text is a valid Gates or one clear MtcError."""

from __future__ import annotations

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from mtc.bench.gates import GATE_KINDS, Gates, parse_gates
from mtc.errors import MtcError
from mtc.runtime.frames import max_pixels

_KEYS = st.one_of(st.sampled_from(sorted(GATE_KINDS)), st.sampled_from(["64x48", "1920x1080", "0x0", "99999x99999",
                                                                        "16x16", "gates", "min_fps ", "x"]),
                  st.text(min_size=1, max_size=8))
_SCALARS = st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                     st.text(max_size=6))


def _toml_key(key: str) -> str:
    return json.dumps(key)  # a TOML basic string: quotes and escapes as JSON writes them


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(_KEYS, inner, max_size=3)), max_leaves=8)
_DOCUMENTS = st.dictionaries(st.sampled_from(["gates", "gate", "extra"]), st.dictionaries(_KEYS, _VALUES, max_size=4),
                             max_size=2)


def _check(text: str) -> None:
    try:
        gates = parse_gates(text, source="fuzz.toml")
    except MtcError as exc:
        assert str(exc).startswith("fuzz.toml") and "\n" not in exc.message
        return
    assert isinstance(gates, Gates)
    for table in (gates.common, *gates.per_resolution.values()):
        for key, threshold in table.items():
            assert key in GATE_KINDS and isinstance(threshold, float)
            assert math.isfinite(threshold) and threshold >= 0
    for width, height in gates.resolutions:
        assert min(width, height) >= 16 and width * height <= max_pixels()


@settings(max_examples=300, deadline=None)
@given(document=_DOCUMENTS)
def test_any_toml_document_is_valid_gates_or_one_clear_error(document):
    _check("\n".join(f"[{_toml_key(name)}]\n" + "\n".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items())
                     for name, table in document.items()))


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list('[]"=.\n #x0123456789abcdefgilmnpstu_{},-')), max_size=80))
def test_any_text_is_valid_gates_or_one_clear_error(text):
    _check(text)
