"""Backend selection, the ONNX Runtime backend's options, and the backend-neutral pieces."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mtc.artifact.manifest import ModelIO, StatePair, TensorSpec
from mtc.backends import (
    Availability,
    DeviceState,
    OrtBackend,
    choose_backend,
    create_backend,
    default_threads,
    require,
)
from mtc.backends.onnxruntime.session import resolve_providers
from mtc.errors import MtcError
from mtc.runtime.session import MattingSession

CPU_ONLY = Availability(gpu_count=0, tensorrt=False, openvino=False, ort_providers=("CPUExecutionProvider",))


# ---- selection --------------------------------------------------------------------------------


@pytest.mark.parametrize("available, expected, reason_has", [
    (Availability(gpu_count=1, tensorrt=True, openvino=True,
                  ort_providers=("CUDAExecutionProvider", "CPUExecutionProvider")), "tensorrt", "TensorRT"),
    (Availability(gpu_count=1, tensorrt=False, openvino=True,
                  ort_providers=("CUDAExecutionProvider", "CPUExecutionProvider")), "onnxruntime", "CUDA"),
    (Availability(gpu_count=0, tensorrt=True, openvino=True,
                  ort_providers=("CUDAExecutionProvider", "CPUExecutionProvider")), "openvino", "CPU"),
    (Availability(gpu_count=1, tensorrt=False, openvino=False), "onnxruntime", "CPU"),
    (CPU_ONLY, "onnxruntime", "not installed"),
])
def test_auto_order(available, expected, reason_has):
    choice = choose_backend("auto", available)
    assert choice.name == expected
    assert reason_has in choice.reason


def test_auto_on_gpu_without_trt_uses_ort_cuda_provider():
    choice = choose_backend("auto", Availability(gpu_count=1, ort_providers=("CUDAExecutionProvider", "CPUExecutionProvider")))
    assert choice.providers == ("cuda",)
    assert "pip install 'mtc[trt]'" in choice.reason


def test_explicit_backends_that_cannot_run_say_how_to_fix():
    with pytest.raises(MtcError, match="needs TensorRT") as err:
        choose_backend("tensorrt", CPU_ONLY)
    assert "mtc[trt]" in err.value.hint
    with pytest.raises(MtcError, match="needs an NVIDIA GPU"):
        choose_backend("tensorrt", Availability(tensorrt=True))
    with pytest.raises(MtcError, match="not installed") as err:
        choose_backend("openvino", CPU_ONLY)
    assert "mtc[openvino]" in err.value.hint
    with pytest.raises(MtcError, match="unknown backend"):
        choose_backend("tflite", CPU_ONLY)


def test_signed_int8_artifacts_stay_on_onnxruntime_on_the_cpu(caplog):
    on_cpu = Availability(openvino=True)
    for activations in ("int8", None):  # None: artifacts written before the field existed
        choice = choose_backend("auto", on_cpu, model_precision="int8", activation_type=activations)
        assert choice.name == "onnxruntime" and "INT8" in choice.reason
    assert choose_backend("auto", on_cpu, model_precision="fp32").name == "openvino"
    with caplog.at_level(logging.WARNING, logger="mtc"):
        assert choose_backend("openvino", on_cpu, model_precision="int8", activation_type="int8").name == "openvino"
    assert "signed activations" in caplog.text


def test_uint8_activation_int8_artifacts_go_to_openvino_on_the_cpu(caplog):
    on_cpu = Availability(openvino=True)
    assert choose_backend("auto", on_cpu, model_precision="int8", activation_type="uint8").name == "openvino"
    with caplog.at_level(logging.WARNING, logger="mtc"):
        choose_backend("openvino", on_cpu, model_precision="int8", activation_type="uint8")
    assert "signed activations" not in caplog.text
    assert choose_backend("auto", Availability(), model_precision="int8", activation_type="uint8").name == "onnxruntime"
    gpu = Availability(gpu_count=1, tensorrt=True)
    assert choose_backend("auto", gpu, model_precision="int8").name == "tensorrt"


def test_precision_other_than_fp32_needs_openvino():
    assert choose_backend("auto", Availability(openvino=True), precision="bf16").name == "openvino"
    with pytest.raises(MtcError, match="needs OpenVINO"):
        choose_backend("auto", CPU_ONLY, precision="bf16")
    with pytest.raises(MtcError, match="OpenVINO option"):
        choose_backend("onnxruntime", Availability(openvino=True), precision="bf16")


def test_create_backend_logs_choice_and_reason(tiny_model, caplog):
    with caplog.at_level(logging.INFO, logger="mtc"):
        backend = create_backend("auto", tiny_model, availability=CPU_ONLY)
    assert isinstance(backend, OrtBackend)
    assert "backend: onnxruntime (CPU only" in caplog.text


def test_create_backend_accepts_the_old_keywords(tiny_model):
    backend = create_backend("onnxruntime", tiny_model, threads=1, allow_spinning=False)
    assert backend.threads == 1
    with pytest.raises(TypeError):
        create_backend("onnxruntime", tiny_model, thread=1)


def test_lazy_import_error_names_the_extra():
    with pytest.raises(MtcError) as err:
        require("tensorrt_definitely_missing_xyz")
    assert "pip install" in err.value.hint
    for module, extra in (("openvino", "openvino"), ("tensorrt", "trt")):
        try:
            __import__(module)
        except ImportError:
            with pytest.raises(MtcError) as err:
                require(module)
            assert f"mtc[{extra}]" in err.value.hint


def test_default_threads_is_positive():
    assert default_threads() >= 1


def test_runtime_import_pulls_in_no_optional_backend():
    code = "import mtc.runtime, mtc.backends, sys; print(' '.join(sorted(sys.modules)))"
    modules = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    assert not {"openvino", "tensorrt", "polygraphy", "cuda", "torch"} & modules


# ---- ONNX Runtime providers, I/O binding, optimized model -------------------------------------


def test_provider_resolution():
    cpu = ("CPUExecutionProvider",)
    gpu = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    assert resolve_providers(None, cpu) == ["CPUExecutionProvider"]
    # TensorRT's provider only when asked: RVM's float ratio would make it fail its build.
    assert resolve_providers(None, gpu) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers(("tensorrt", "cuda"), gpu) == list(gpu)
    with pytest.raises(MtcError, match="no CUDAExecutionProvider") as err:
        resolve_providers(("cuda",), cpu)
    assert "onnxruntime-gpu" in err.value.hint


def _stateful_model(path):
    """img (1,3,H,W), s_in (1,2,h,w) broadcastable -> alpha = mean(img), s_out = s_in + mean over img."""
    img = helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 3, "h", "w"])
    s_in = helper.make_tensor_value_info("s_in", TensorProto.FLOAT, ["b", "c", "sh", "sw"])
    alpha = helper.make_tensor_value_info("alpha", TensorProto.FLOAT, [1, 1, "h", "w"])
    s_out = helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [1, 2, 1, 1])
    nodes = [
        helper.make_node("ReduceMean", ["img"], ["alpha"], axes=[1], keepdims=1),
        helper.make_node("ReduceMean", ["img"], ["m"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Expand", ["m", "shape"], ["m2"]),
        helper.make_node("Add", ["s_in", "m2"], ["s_out"]),
    ]
    shape = helper.make_tensor("shape", TensorProto.INT64, [4], [1, 2, 1, 1])
    graph = helper.make_graph(nodes, "stateful", [img, s_in], [alpha, s_out], initializer=[shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


@pytest.fixture
def tiny_model(tmp_path):
    return _stateful_model(tmp_path / "tiny.onnx")


TINY_IO = ModelIO(inputs=(TensorSpec("img", "image"), TensorSpec("s_in", "state")),
                  outputs=(TensorSpec("alpha", "alpha"), TensorSpec("s_out", "state")),
                  states=(StatePair("s_in", "s_out", initial_shape=(1, 1, 1, 1)),))


def _frames(n, h=16, w=24):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_io_binding_keeps_state_in_backend_memory_and_matches_plain_run(tiny_model):
    plain = MattingSession(TINY_IO, OrtBackend(tiny_model), scene_cut_threshold=None)
    bound_backend = OrtBackend(tiny_model, state_pairs=(("s_in", "s_out"),), io_binding=True)
    bound = MattingSession(TINY_IO, bound_backend, scene_cut_threshold=None)
    for frame in _frames(4):
        a, b = plain.step(frame), bound.step(frame)
        assert isinstance(b["s_out"], DeviceState)  # the session passes it back untouched
        np.testing.assert_allclose(a["alpha"], b["alpha"], rtol=0, atol=0)
        np.testing.assert_allclose(a["s_out"], np.asarray(b["s_out"]), rtol=0, atol=0)
    assert bound_backend.describe().endswith("I/O binding for state")


def test_stale_state_handle_is_refused(tiny_model):
    backend = OrtBackend(tiny_model, state_pairs=(("s_in", "s_out"),), io_binding=True)
    img = np.zeros((1, 3, 4, 4), np.float32)
    first = backend.run({"img": img, "s_in": np.zeros((1, 1, 1, 1), np.float32)})["s_out"]
    backend.run({"img": img, "s_in": first})
    with pytest.raises(MtcError, match="overwritten by a later frame"):
        np.asarray(first)
    with pytest.raises(MtcError, match="overwritten"):
        backend.run({"img": img, "s_in": first})


def test_io_binding_is_off_on_cpu_by_default(tiny_model):
    assert not OrtBackend(tiny_model, state_pairs=(("s_in", "s_out"),)).io_binding


def test_saved_optimized_model_loads_with_same_outputs(tiny_model, tmp_path):
    from mtc.backends.onnxruntime.build import optimized_model_path, save_optimized_model

    path = save_optimized_model(tiny_model, "ab" * 32, root=tmp_path / "cache")
    assert path == optimized_model_path("ab" * 32, root=tmp_path / "cache") and path.is_file()
    assert not list(path.parent.glob("*.part"))
    feeds = {"img": np.random.default_rng(1).random((1, 3, 5, 6), dtype=np.float32),
             "s_in": np.ones((1, 2, 1, 1), np.float32)}
    a = OrtBackend(tiny_model).run(feeds)
    b = OrtBackend(tiny_model, optimized_model=path).run(feeds)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    # A different level or model is a different cache entry.
    assert optimized_model_path("ab" * 32, level="basic", root=tmp_path) != optimized_model_path("ab" * 32, root=tmp_path)
    assert optimized_model_path("cd" * 32, root=tmp_path) != optimized_model_path("ab" * 32, root=tmp_path)


def test_a_full_disk_while_saving_the_optimized_model_says_so(tiny_model, tmp_path, monkeypatch):
    import collections
    import shutil

    import onnxruntime as ort

    from mtc.backends.onnxruntime import build

    def failing_session(*args, **kwargs):  # what ONNX Runtime raises when its write fails
        raise ort.capi.onnxruntime_pybind11_state.Fail("[ONNXRuntimeError] : 1 : FAIL : invalid protobuf")

    monkeypatch.setattr(ort, "InferenceSession", failing_session)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 0))
    with pytest.raises(MtcError, match="disk full while writing") as caught:
        build.save_optimized_model(tiny_model, "ab" * 32, root=tmp_path / "cache")
    assert "re-export" not in str(caught.value)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # nothing half-written
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 0, 10**9))
    with pytest.raises(MtcError, match="could not optimize"):  # with room left, the model is to blame
        build.save_optimized_model(tiny_model, "ab" * 32, root=tmp_path / "cache")


def test_spinning_setting_reaches_the_session(tiny_model):
    backend = OrtBackend(tiny_model, allow_spinning=False, threads=1)
    assert backend.threads == 1
    assert backend.active_providers == ("CPUExecutionProvider",)


def test_device_state_behaves_like_an_array_until_stale():
    current = {"gen": 1}
    handle = DeviceState(object(), "s", (1, 2), np.float32, 1, fetch=lambda: np.ones((1, 2), np.float32),
                         is_current=lambda h: h.generation == current["gen"])
    assert handle.size == 2 and handle.ndim == 2
    np.testing.assert_array_equal(np.asarray(handle), np.ones((1, 2)))
    assert handle.astype(np.float64).dtype == np.float64
    assert (np.zeros((1, 2)) - handle).sum() == -2  # numpy converts it in arithmetic
    current["gen"] = 2
    with pytest.raises(MtcError, match="overwritten"):
        handle.numpy()


def test_load_passes_backend_options(rvm_artifact):
    import mtc.runtime

    session = mtc.runtime.load(rvm_artifact, backend="onnxruntime", threads=1, allow_spinning=False)
    assert session.backend.name == "onnxruntime" and session.backend.threads == 1
    with pytest.raises(MtcError, match="OpenVINO option"):
        mtc.runtime.load(rvm_artifact, backend="onnxruntime", precision="bf16")


def test_build_command_saves_ort_optimized_model(rvm_artifact, tmp_path, monkeypatch):
    from click.testing import CliRunner

    import mtc.runtime
    from mtc.cli.build import build
    from mtc.data.builtin_clip import ClipSpec, builtin_clip

    monkeypatch.setenv("MTC_CACHE", str(tmp_path / "cache"))
    plain = mtc.runtime.load(rvm_artifact, backend="onnxruntime", scene_cut_threshold=None)
    result = CliRunner().invoke(build, [str(rvm_artifact), "--backend", "onnxruntime"])
    assert result.exit_code == 0, result.output
    assert "optimized model saved to" in result.output
    session = mtc.runtime.load(rvm_artifact, backend="onnxruntime", scene_cut_threshold=None)
    assert session.backend.optimized_model is not None and plain.backend.optimized_model is None
    assert "pre-optimized model" in session.backend.describe()
    for frame in builtin_clip(ClipSpec(width=128, height=96, frames=3)):
        np.testing.assert_allclose(session.process(frame).alpha, plain.process(frame).alpha, rtol=0, atol=1e-6)


def test_damaged_optimized_model_falls_back_to_the_source(tiny_model, tmp_path, caplog):
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(b"garbage")
    backend = OrtBackend(tiny_model, optimized_model=damaged)
    assert backend.optimized_model is None
    assert "ignoring the cached optimized model" in caplog.text


def test_library_errors_are_summarised_by_their_cause_not_their_source_location():
    from mtc.errors import exception_summary

    nested = RuntimeError("Exception from src/inference/src/cpp/core.cpp:117:\n"
                          "Exception from src/core/src/pass/graph_rewrite.cpp:298:\n"
                          "[ConcatTransformation] END: node Concat_199 failed\nmore detail")
    assert exception_summary(nested) == "[ConcatTransformation] END: node Concat_199 failed"
    assert exception_summary(ValueError("")) == "ValueError"
    assert exception_summary(ValueError("x" * 500), 10) == "x" * 10


@pytest.mark.parametrize("source", ["builtin", "photo.png", "photos"])
def test_run_command_stops_onnxruntime_spinning_beside_the_codec_threads(rvm_artifact, tmp_path, monkeypatch,
                                                                         source):
    from click.testing import CliRunner
    from PIL import Image

    import mtc.runtime
    from mtc.cli.run import run

    Image.fromarray(np.full((96, 128, 3), 120, np.uint8)).save(tmp_path / "photo.png")
    (tmp_path / "photos").mkdir()
    Image.fromarray(np.full((96, 128, 3), 90, np.uint8)).save(tmp_path / "photos" / "a.png")
    monkeypatch.chdir(tmp_path)
    loaded = []
    real_load = mtc.runtime.load
    monkeypatch.setattr(mtc.runtime, "load", lambda *a, **kw: loaded.append(kw) or real_load(*a, **kw))
    output = {"builtin": "out.mp4", "photo.png": "out.png", "photos": "cutouts"}[source]
    result = CliRunner().invoke(run, [str(rvm_artifact), source, "-o", output, "--backend", "onnxruntime"])
    assert result.exit_code == 0, result.output
    assert [kw["allow_spinning"] for kw in loaded] == [False]  # videos and image folders have codec threads


def test_fp16_artifacts_stay_on_onnxruntime_on_the_cpu(caplog):
    on_cpu = Availability(openvino=True)
    choice = choose_backend("auto", on_cpu, model_precision="fp16")
    assert choice.name == "onnxruntime" and "FP16" in choice.reason
    with caplog.at_level(logging.WARNING, logger="mtc"):
        assert choose_backend("openvino", on_cpu, model_precision="fp16").name == "openvino"
    assert "FP16 artifacts less faithfully" in caplog.text
    assert choose_backend("auto", Availability(gpu_count=1, tensorrt=True), model_precision="fp16").name == "tensorrt"
