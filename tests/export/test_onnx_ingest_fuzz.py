"""Fuzzing ONNX ingest with mutated small models: loading and sanitizing either works or fails with
one MtcError, never another exception, and never changes the file it reads."""

from __future__ import annotations

import hashlib

import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_artifacts import tiny_model

from mtc.errors import MtcError
from mtc.export.onnx_ingest import load_onnx, sanitize

# Modest counts: the suite runs on 2 shared cores in CI. The simplifier (onnxsim) is left out:
# it is optional, and its failures are already caught and logged as "skipped".
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.function_scoped_fixture])
BASE = tiny_model(with_ratio=True).SerializeToString()


def _ingest(path):
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    try:
        model, _ = sanitize(load_onnx(path), run_simplifier=False)
    except MtcError as exc:
        assert "\n" not in exc.message
        model = None
    else:
        onnx.checker.check_model(model)  # what ingest passes on is a valid model
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    return model


byte_edits = st.lists(st.tuples(st.integers(0, len(BASE) - 1), st.integers(0, 255)), min_size=1, max_size=8)


@FUZZ
@given(edits=byte_edits, cut=st.none() | st.integers(0, len(BASE)))
def test_a_model_with_damaged_bytes_loads_or_is_one_clear_error(tmp_path, edits, cut):
    data = bytearray(BASE)
    for position, value in edits:
        data[position] = value
    path = tmp_path / "damaged.onnx"
    path.write_bytes(bytes(data[:cut]))
    _ingest(path)


OPS = ["Conv", "Relu", "Sigmoid", "Mul", "Resize", "Loop", "If", "NoSuchOp", "Reshape", "QuantizeLinear", ""]
NAMES = ["", "missing", "alpha", "img", "c1", "w1"]
mutation = st.one_of(
    st.tuples(st.just("op_type"), st.integers(0, 4), st.sampled_from(OPS)),
    st.tuples(st.just("input"), st.integers(0, 4), st.sampled_from(NAMES)),
    st.tuples(st.just("attribute"), st.integers(0, 4),
              st.tuples(st.sampled_from(["pads", "kernel_shape", "strides", "axes", "group"]),
                        st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=5))),
    st.tuples(st.just("dim"), st.integers(0, 3), st.sampled_from([-1, 0, 1, 2**40])),
    st.tuples(st.just("opset"), st.just(0), st.sampled_from([1, 6, 11, 13, 22, 99, -1])),
    st.tuples(st.just("ir_version"), st.just(0), st.sampled_from([0, 1, 3, 99])),
    st.tuples(st.just("drop_initializer"), st.integers(0, 1), st.none()),
    st.tuples(st.just("output_name"), st.just(0), st.sampled_from(NAMES)),
)


def _mutate(model, kind, index, value):
    graph = model.graph
    node = graph.node[index % len(graph.node)]
    if kind == "op_type":
        node.op_type = value
    elif kind == "input" and node.input:
        node.input[0] = value
    elif kind == "attribute":
        node.attribute.append(onnx.helper.make_attribute(*value))
    elif kind == "dim":
        graph.input[0].type.tensor_type.shape.dim[index].dim_value = value
    elif kind == "opset":
        model.opset_import[0].version = value
    elif kind == "ir_version":
        model.ir_version = value
    elif kind == "drop_initializer" and graph.initializer:
        del graph.initializer[index % len(graph.initializer)]
    elif kind == "output_name":
        graph.output[0].name = value


@FUZZ
@given(mutations=st.lists(mutation, min_size=1, max_size=3))
def test_a_structurally_mutated_model_loads_or_is_one_clear_error(tmp_path, mutations):
    model = tiny_model(with_ratio=True)
    for kind, index, value in mutations:
        _mutate(model, kind, index, value)
    path = tmp_path / "mutated.onnx"
    path.write_bytes(model.SerializeToString())
    _ingest(path)
