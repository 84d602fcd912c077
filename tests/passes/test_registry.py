"""The graph-pass registry: every pass states its exactness, and caches key on the passes' code."""

import re
from pathlib import Path

import pytest

from mtc import passes
from mtc.passes import STAGES, GraphPass, PassContext, all_passes, fingerprint, passes_for, run_passes

ROOT = Path(__file__).resolve().parents[2]


def test_every_pass_states_an_exactness_a_test_checks():
    assert all_passes(), "no pass registered"
    for graph_pass in all_passes():
        assert graph_pass.stage in STAGES
        if graph_pass.exactness == "bit-exact":
            continue
        match = re.fullmatch(r"within \S+.*\((tests/[\w/]+\.py)::(\w+)\)", graph_pass.exactness)
        assert match, f"{graph_pass.name}: exactness must be 'bit-exact' or 'within BOUND (tests/FILE.py::TEST)'"
        source = (ROOT / match[1]).read_text()
        assert f"def {match[2]}(" in source, f"{graph_pass.name}: {match[1]} has no {match[2]}"


def test_passes_by_backend_and_stage():
    assert [p.name for p in passes_for("openvino", "onnx")] == ["deform_conv_as_openvino_op", "merge_split_outputs"]
    assert [p.name for p in passes_for("openvino", "read")] == ["zero_padded_sampling", "hard_sigmoid_as_hsigmoid"]
    assert [p.name for p in passes_for("onnxruntime", "onnx")] == ["decompose_deform_conv"]
    assert {p.name for p in passes_for("openvino", "static")} >= {"upsample_as_transposed_conv", "guide_as_conv"}


def test_predicates_decide_what_runs_and_counts_are_reported(monkeypatch):
    ran = []
    fake = GraphPass(name="fake", backend="toy", stage="static", exactness="bit-exact",
                     run=lambda model, context: ran.append(context) or 2, describe="{} fakes",
                     applies=lambda context: bool(context.frame_sizes))
    monkeypatch.setattr(passes, "_PASSES", [*all_passes(), fake])
    assert run_passes(object(), backend="toy", stage="static") == {"fake": 0} and not ran
    assert run_passes(object(), backend="toy", stage="static", context=PassContext(frozenset({(4, 4)}))) == {"fake": 2}
    with pytest.raises(ValueError, match="registered twice"):
        passes.register_pass(fake)


def test_the_fingerprint_changes_with_the_passes(monkeypatch):
    before = fingerprint("openvino")
    assert fingerprint("openvino") == before
    extra = GraphPass(name="extra", backend="openvino", stage="read", exactness="bit-exact",
                      run=lambda model, context: 0, describe="{} extras")
    monkeypatch.setattr(passes, "_PASSES", [*all_passes(), extra])
    assert fingerprint("openvino") != before


def test_the_fingerprint_changes_with_any_pass_source(monkeypatch, tmp_path):
    """Registrations hold lambdas, so a pass's code is wherever its package keeps it: an edit to
    any module of the passes' package must change the fingerprint."""
    for source in passes.PASS_SOURCES.rglob("*.py"):
        target = tmp_path / source.relative_to(passes.PASS_SOURCES)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
    monkeypatch.setattr(passes, "PASS_SOURCES", tmp_path)
    passes._fingerprint.cache_clear()
    before = fingerprint("openvino")
    passes._fingerprint.cache_clear()
    (tmp_path / "openvino" / "deform_conv.py").write_text("# changed\n", encoding="utf-8")

    assert fingerprint("openvino") != before
    passes._fingerprint.cache_clear()
