"""TensorRT engines without a GPU: profiles, shapes, buffer plans, cache keys, plan sidecars,
staleness, lazy imports, and the runtime backend's logic driven by fake tensorrt/cuda modules.
The real build and run are in the `gpu`-marked tests at the end (skipped without a GPU)."""

from __future__ import annotations

import ctypes
import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest

from mtc.artifact import plan as plan_mod
from mtc.artifact.manifest import DownsampleRule, FileEntry, Manifest, ModelIO, StatePair, TensorSpec
from mtc.artifact.plan import (
    BuilderSettings,
    PlanSidecar,
    Target,
    artifact_plan_path,
    cache_key,
    cache_plan_path,
    check_plan,
    make_sidecar,
    timing_cache_path,
    write_plan,
)
from mtc.artifact.profiles import (
    NAMED_PROFILES,
    ResolutionProfile,
    buffer_plan,
    downsampled_size,
    frozen_inputs,
    parse_profile,
    parse_profiles,
    profile_shapes,
    state_shapes,
)
from mtc.backends.onnxruntime.session import probe_state_shapes
from mtc.errors import MtcError
from mtc.models.rvm import RVM_IO

STATE_CHANNELS = {"r1": 16, "r2": 20, "r3": 40, "r4": 64}


def rvm_io() -> ModelIO:
    """RVM's I/O as the exporter writes it into the manifest (named dims, fixed channels)."""
    import dataclasses

    def dims(spec):
        if spec.role == "downsample_ratio":
            return (1,)
        channels = {"src": 3, "fgr": 3, "pha": 1}.get(spec.name) or STATE_CHANNELS.get(spec.name[:2])
        if spec.role == "state" and spec.name.endswith("i"):
            channels = f"{spec.name}_channels"
        return (f"{spec.name}_batch_size", channels, f"{spec.name}_height", f"{spec.name}_width")

    return dataclasses.replace(RVM_IO, inputs=tuple(dataclasses.replace(t, shape=dims(t)) for t in RVM_IO.inputs),
                               outputs=tuple(dataclasses.replace(t, shape=dims(t)) for t in RVM_IO.outputs))


HD = NAMED_PROFILES["hd"].for_model(RVM_IO)
TARGET = Target("10.9.0.34", "8.6", "NVIDIA RTX A4000")
SHA = "e395c326ca614d53fa9ecde6c96f1e61f1e963f004fed97c9839aa9a75501c10"


# ---- profiles and shapes ------------------------------------------------------------------------


def test_named_profiles_take_the_models_own_ratio_rule():
    assert NAMED_PROFILES["hd"].downsample_ratio is None  # a frame size; the model decides the ratio
    assert (HD.width, HD.height, HD.downsample_ratio) == (1920, 1080, 0.25)
    k4 = parse_profile("4K").for_model(RVM_IO)
    assert (k4.width, k4.height, k4.downsample_ratio) == (3840, 2160, 0.125)
    # the profile's ratio is what the session computes for that frame size, so its engine is used
    p720 = parse_profile("720p").for_model(RVM_IO)
    assert p720.downsample_ratio == RVM_IO.downsample.ratio_for(720, 1280)
    custom = parse_profile("1080x1920@0.25")
    assert (custom.width, custom.height, custom.downsample_ratio, custom.name) == (1080, 1920, 0.25, "1080x1920@0.25")
    assert [p.name for p in parse_profiles("hd,4k")] == ["hd", "4k"]


@pytest.mark.parametrize("text", ["8k", "1920x", "hd@0.5", "10x10@1.5"])
def test_bad_profiles_are_refused(text):
    with pytest.raises(MtcError):
        parse_profile(text)


def test_profile_range_validation():
    with pytest.raises(MtcError, match="outside"):
        ResolutionProfile("x", 100, 100, 1.0, min_size=(200, 200))
    with pytest.raises(MtcError, match="repeat"):
        parse_profiles("hd,hd")
    ranged = ResolutionProfile("r", 1280, 720, 0.25, min_size=(640, 360), max_size=(1920, 1080))
    assert ranged.accepts(1000, 500) and not ranged.accepts(2000, 500) and not ranged.is_static


def test_hd_and_4k_shapes_from_the_manifest():
    io = rvm_io()
    hd = profile_shapes(io, HD)
    assert set(hd) == {"src", "r1i", "r2i", "r3i", "r4i"}  # the ratio is frozen, not an input
    assert hd["src"].opt == hd["src"].min == hd["src"].max == (1, 3, 1080, 1920)
    # 1080x1920 at 0.25 -> 270x480, then 1/2, 1/4, 1/8, 1/16 with ceil (stride-2 convs)
    assert [hd[f"r{i}i"].opt for i in range(1, 5)] == [(1, 16, 135, 240), (1, 20, 68, 120), (1, 40, 34, 60),
                                                       (1, 64, 17, 30)]
    k4 = profile_shapes(io, NAMED_PROFILES["4k"].for_model(io))  # 4K at 0.125 runs the network at the same size
    assert [k4[f"r{i}i"].opt for i in range(1, 5)] == [hd[f"r{i}i"].opt for i in range(1, 5)]
    assert frozen_inputs(io, HD)["downsample_ratio"].tolist() == [0.25]


def test_ranged_profile_gives_min_opt_max_per_input():
    shapes = profile_shapes(rvm_io(), ResolutionProfile("r", 1280, 720, 0.5, (640, 360), (1920, 1080)))
    assert shapes["src"].min == (1, 3, 360, 640) and shapes["src"].max == (1, 3, 1080, 1920)
    assert shapes["r4i"].min == (1, 64, 12, 20) and shapes["r4i"].max == (1, 64, 34, 60)


def test_downsampled_size_is_floor_like_onnx_resize():
    assert downsampled_size(357, 641, 0.37) == (132, 237)
    assert downsampled_size(1080, 1920, 1.0) == (1080, 1920)


def test_state_rule_matches_the_real_graph(rvm_onnx):
    io = rvm_io()
    for width, height, ratio in ((1920, 1080, 0.25), (641, 357, 0.37), (512, 288, 1.0)):
        assert probe_state_shapes(rvm_onnx, io, height, width, ratio) == state_shapes(io, height, width, ratio)


def test_models_without_states_or_ratio():
    io = ModelIO(inputs=(TensorSpec("x", "image", shape=("n", 3, "h", "w"), layout="NCHW"),),
                 outputs=(TensorSpec("a", "alpha", shape=("n", 1, "h", "w"), layout="NCHW"),))
    profile = HD.for_model(io)
    assert profile.downsample_ratio is None
    assert profile_shapes(io, HD)["x"].opt == (1, 3, 1080, 1920)
    assert frozen_inputs(io, HD) == {}
    assert ResolutionProfile("p", 64, 64).for_model(rvm_io()).downsample_ratio == 1.0


def test_state_channels_must_be_fixed_in_the_manifest():
    import dataclasses

    io = rvm_io()
    loose = dataclasses.replace(io, outputs=tuple(dataclasses.replace(t, shape=("b", "c", "h", "w"))
                                                  if t.name == "r1o" else t for t in io.outputs))
    with pytest.raises(MtcError, match="channel count is not fixed"):
        profile_shapes(loose, HD)


def test_device_buffer_plan_for_hd():
    plan = buffer_plan(rvm_io(), HD)
    by_name = {b.name: b for b in plan.buffers}
    assert "downsample_ratio" not in by_name
    assert by_name["src"].shape == (1, 3, 1080, 1920) and by_name["src"].host
    assert by_name["src"].nbytes == 3 * 1080 * 1920 * 4
    assert by_name["pha"].shape == (1, 1, 1080, 1920) and by_name["pha"].host and by_name["pha"].dtype == "float32"
    assert by_name["fgr"].shape == (1, 3, 1080, 1920)
    # state never crosses to the host: no pinned buffer, output copied on the device into its input
    assert by_name["r1i"].shape == (1, 16, 135, 240) and not by_name["r1i"].host
    assert by_name["r4o"].device_copy_to == "r4i" and not by_name["r4o"].host
    assert plan.host_bytes == (3 + 3 + 1) * 1080 * 1920 * 4
    state_bytes = sum(by_name[f"r{i}i"].nbytes for i in range(1, 5))
    assert plan.device_bytes == plan.host_bytes + 2 * state_bytes


def test_buffer_plan_uses_max_shapes_of_a_ranged_profile():
    plan = buffer_plan(rvm_io(), ResolutionProfile("r", 1280, 720, 0.5, (640, 360), (1920, 1080)))
    assert plan["src"].shape == (1, 3, 1080, 1920) and plan["r1i"].shape == (1, 16, 270, 480)


# ---- freezing the ratio -------------------------------------------------------------------------


def test_freezing_the_ratio_leaves_constant_resize_scales_and_same_outputs(rvm_onnx):
    import onnxruntime as ort

    from mtc.backends.tensorrt.graph import freeze_inputs

    model = onnx.load(str(rvm_onnx))
    frozen = freeze_inputs(model, {"downsample_ratio": np.array([0.5], np.float32)})
    onnx.checker.check_model(frozen)
    assert "downsample_ratio" not in {i.name for i in frozen.graph.input}
    inits = {i.name for i in frozen.graph.initializer}
    resize = next(n for n in frozen.graph.node if n.op_type == "Resize" and n.input[0] == "src")
    assert resize.input[2] in inits  # scales are a plain initializer now
    feeds = {"src": np.random.default_rng(0).random((1, 3, 64, 96), dtype=np.float32),
             **{f"r{i}i": np.zeros((1, 1, 1, 1), np.float32) for i in range(1, 5)}}
    a = ort.InferenceSession(model.SerializeToString()).run(None, {**feeds, "downsample_ratio": np.array([0.5], np.float32)})
    b = ort.InferenceSession(frozen.SerializeToString()).run(None, feeds)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_freezing_an_unknown_input_fails(rvm_onnx):
    from mtc.backends.tensorrt.graph import freeze_inputs

    with pytest.raises(MtcError, match="no input"):
        freeze_inputs(onnx.load(str(rvm_onnx)), {"nope": np.zeros(1)})


# ---- cache keys, sidecars, staleness ------------------------------------------------------------


def test_cache_key_depends_on_model_version_gpu_profile_and_settings():
    base = cache_key(SHA, TARGET, HD, BuilderSettings())
    assert base == cache_key(SHA, Target("10.9.0.34", "8.6", "another name"), HD, BuilderSettings())
    variants = [cache_key("0" * 64, TARGET, HD, BuilderSettings()),
                cache_key(SHA, Target("10.8.0.43", "8.6"), HD, BuilderSettings()),
                cache_key(SHA, Target("10.9.0.34", "8.9"), HD, BuilderSettings()),
                cache_key(SHA, TARGET, NAMED_PROFILES["4k"], BuilderSettings()),
                cache_key(SHA, TARGET, HD, BuilderSettings(optimization_level=5))]
    assert len({base, *variants}) == 6


def test_cache_and_artifact_locations(tmp_path):
    path = cache_plan_path(SHA, TARGET, HD, BuilderSettings(), root=tmp_path)
    assert path.name == "hd.plan" and path.parent.name.startswith("e395c326ca61-trt10.9.0.34-sm86-")
    assert artifact_plan_path(tmp_path, HD) == tmp_path / "engines" / "hd.plan"
    assert timing_cache_path(TARGET, root=tmp_path).name == "timing-trt10.9.0.34-sm86.cache"


def _write_fake_plan(path: Path, *, target=TARGET, sha=SHA, profile=HD, data=b"fake plan bytes") -> PlanSidecar:
    sidecar = make_sidecar(data, target=target, model_sha256=sha, profile=profile, settings=BuilderSettings(),
                           input_shapes={}, frozen_inputs={"downsample_ratio": [0.25]})
    write_plan(path, data, sidecar)
    return sidecar


def test_sidecar_round_trip(tmp_path):
    path = tmp_path / "engines" / "hd.plan"
    written = _write_fake_plan(path)
    data = json.loads(plan_mod.sidecar_path(path).read_text())
    assert data["tensorrt_version"] == "10.9.0.34" and data["compute_capability"] == "8.6"
    assert data["model_sha256"] == SHA and data["profile"]["name"] == "hd"
    assert PlanSidecar.from_dict(data) == written


def test_usable_plan_passes(tmp_path):
    path = tmp_path / "hd.plan"
    _write_fake_plan(path)
    verdict = check_plan(path, model_sha256=SHA, target=TARGET, profile=HD, settings=BuilderSettings())
    assert verdict.usable, verdict.reason


@pytest.mark.parametrize("kwargs, message", [
    ({"target": Target("10.8.0.43", "8.6")}, "built with TensorRT 10.9.0.34; this is TensorRT 10.8.0.43"),
    ({"target": Target("10.9.0.34", "8.9", "RTX 4090")}, "compute capability 8.6 (NVIDIA RTX A4000); this GPU is 8.9"),
    ({"model_sha256": "f" * 64}, "built from another model"),
    ({"profile": NAMED_PROFILES["4k"]}, "built for profile"),
    ({"settings": BuilderSettings(optimization_level=5)}, "built with"),
])
def test_stale_or_foreign_plans_are_detected_before_deserializing(tmp_path, kwargs, message):
    path = tmp_path / "hd.plan"
    _write_fake_plan(path)
    args = {"model_sha256": SHA, "target": TARGET, "profile": HD, "settings": BuilderSettings(), **kwargs}
    verdict = check_plan(path, **args)
    assert not verdict.usable and message in verdict.reason


def test_swapped_or_orphan_plans_are_refused(tmp_path):
    path = tmp_path / "hd.plan"
    _write_fake_plan(path)
    path.write_bytes(b"fake plan bytez")  # same size, other bytes
    assert "sha256" in check_plan(path, model_sha256=SHA, target=TARGET).reason
    orphan = tmp_path / "orphan.plan"
    orphan.write_bytes(b"x")
    assert "no sidecar" in check_plan(orphan, model_sha256=SHA, target=TARGET).reason
    plan_mod.sidecar_path(orphan).write_text('{"format": "something else"}')
    assert "not a valid plan sidecar" in check_plan(orphan, model_sha256=SHA, target=TARGET).reason
    assert "does not exist" in check_plan(tmp_path / "none.plan", model_sha256=SHA, target=TARGET).reason


def _manifest(io=None) -> Manifest:
    return Manifest(model="rvm", variant="mobilenetv3", task="video_matting", license="GPL-3.0",
                    model_file="model.onnx", io=io or rvm_io(), files={"model.onnx": FileEntry(SHA, 1)})


def test_resolve_plan_prefers_artifact_then_cache_then_builds(tmp_path, monkeypatch):
    from mtc.backends.tensorrt import build as builder

    built = []

    def fake_build(model_path, io, profile, **kwargs):
        built.append(profile.name)
        data = f"plan for {profile.name}".encode()
        return data, make_sidecar(data, target=kwargs["target"], model_sha256=kwargs["model_sha256"], profile=profile,
                                  settings=kwargs["settings"], input_shapes={}, frozen_inputs={})

    monkeypatch.setattr(builder, "build_plan", fake_build)
    folder, cache = tmp_path / "artifact", tmp_path / "cache"
    manifest = _manifest()
    # a stale artifact plan (other TensorRT) is skipped, a fresh one is built into the cache
    _write_fake_plan(artifact_plan_path(folder, HD), target=Target("8.6.1", "8.6"))
    path = builder.resolve_plan(folder, manifest, HD, target=TARGET, cache_root=cache)
    assert built == ["hd"] and path.is_relative_to(cache)
    # second time: the cache hit, no build
    assert builder.resolve_plan(folder, manifest, HD, target=TARGET, cache_root=cache) == path and built == ["hd"]
    # a good artifact plan wins over the cache
    _write_fake_plan(artifact_plan_path(folder, HD))
    assert builder.resolve_plan(folder, manifest, HD, target=TARGET, cache_root=cache) == artifact_plan_path(folder, HD)
    # refusing to build names the reason and the command that fixes it
    k4 = NAMED_PROFILES["4k"]
    with pytest.raises(MtcError, match="none was built") as err:
        builder.resolve_plan(folder, manifest, k4, target=TARGET, cache_root=cache, build_missing=False)
    assert "mtc build" in err.value.hint and "--profile 4k" in err.value.hint
    _write_fake_plan(artifact_plan_path(folder, k4), profile=k4, target=Target("10.9.0.34", "9.0", "H100"))
    with pytest.raises(MtcError, match="built for compute capability 9.0"):
        builder.resolve_plan(folder, manifest, k4, target=TARGET, cache_root=cache, build_missing=False)
    assert built == ["hd"]


def test_a_cached_plan_damaged_in_the_middle_is_rebuilt_with_a_warning(tmp_path, monkeypatch, caplog):
    from tiny_artifacts import flip_middle_bytes

    from mtc.backends.tensorrt import build as builder

    built = []

    def fake_build(model_path, io, profile, **kwargs):
        built.append(profile.name)
        data = b"plan bytes " * 100
        return data, make_sidecar(data, target=kwargs["target"], model_sha256=kwargs["model_sha256"], profile=profile,
                                  settings=kwargs["settings"], input_shapes={}, frozen_inputs={})

    monkeypatch.setattr(builder, "build_plan", fake_build)
    folder, cache = tmp_path / "artifact", tmp_path / "cache"
    path = builder.resolve_plan(folder, _manifest(), HD, target=TARGET, cache_root=cache)
    good = path.read_bytes()
    flip_middle_bytes(path)
    with caplog.at_level("WARNING", logger="mtc"):
        again = builder.resolve_plan(folder, _manifest(), HD, target=TARGET, cache_root=cache)
    assert "does not match its sidecar's sha256" in caplog.text
    assert built == ["hd", "hd"] and again == path and path.read_bytes() == good
    # without permission to build, the damaged plan is refused, never deserialized
    flip_middle_bytes(path)
    with pytest.raises(MtcError, match="does not match its sidecar's sha256"):
        builder.resolve_plan(folder, _manifest(), HD, target=TARGET, cache_root=cache, build_missing=False)


def test_a_plan_changed_after_its_check_is_not_deserialized(tmp_path):
    path = tmp_path / "hd.plan"
    _write_fake_plan(path, data=b"the checked plan")
    assert plan_mod.read_verified_plan(path) == b"the checked plan"
    path.write_bytes(b"the swapped plan")
    with pytest.raises(MtcError, match="no longer matches its sidecar's sha256"):
        plan_mod.read_verified_plan(path)
    assert path.read_bytes() == b"the swapped plan"  # reported, not silently rewritten


def test_a_damaged_or_unsealed_timing_cache_is_never_read(tmp_path, caplog):
    from tiny_artifacts import flip_middle_bytes

    from mtc.artifact.cache import seal_entry

    timing = timing_cache_path(TARGET, root=tmp_path)
    assert not plan_mod.usable_timing_cache(timing)  # none yet
    timing.write_bytes(bytes(range(256)) * 4)
    assert not plan_mod.usable_timing_cache(timing)  # written without its seal: not trusted
    assert not timing.exists()
    timing.write_bytes(bytes(range(256)) * 4)
    seal_entry(plan_mod.timing_cache_seal(timing), [timing])
    assert plan_mod.usable_timing_cache(timing)
    flip_middle_bytes(timing)
    with caplog.at_level("WARNING", logger="mtc"):
        assert not plan_mod.usable_timing_cache(timing)
    assert "the timing cache" in caplog.text and "is not used" in caplog.text and "does not match" in caplog.text
    assert not timing.exists() and not plan_mod.timing_cache_seal(timing).exists()


def test_builder_imports_are_lazy_and_name_the_extra():
    from mtc.backends.tensorrt import build as builder

    for importer, module in ((builder.import_tensorrt, "tensorrt"), (builder.import_polygraphy_trt, "polygraphy"),
                             (builder.import_cudart, "cuda")):
        try:
            __import__(module)
        except ImportError:
            with pytest.raises(MtcError) as err:
                importer()
            assert "mtc[trt]" in err.value.hint


def test_build_command_without_tensorrt_names_the_extra(rvm_artifact):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    from mtc.backends.build import build

    with pytest.raises(MtcError) as err:
        build(rvm_artifact, backend="tensorrt", profiles="hd")
    assert "mtc[trt]" in err.value.hint


# ---- the runtime backend on fake tensorrt / cuda modules --------------------------------------------


class FakeCudart:
    """cuda-python's runtime API over host memory, with stream capture recorded and replayed."""

    class cudaMemcpyKind:
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice = 1, 2, 3

    class cudaStreamCaptureMode:
        cudaStreamCaptureModeThreadLocal = 1

    def __init__(self, can_capture=True):
        self.memory, self.calls, self.copies = {}, Counter(), Counter()
        self.capturing, self.graphs, self.can_capture = None, {}, can_capture

    def _do(self, name, action):
        self.calls[name] += 1
        if self.capturing is not None:
            self.capturing.append(action)
        else:
            action()
        return (0,)

    def _alloc(self, n):
        buffer = np.zeros(n, np.uint8)
        self.memory[buffer.ctypes.data] = buffer
        return 0, buffer.ctypes.data

    cudaMalloc = cudaMallocHost = _alloc

    def cudaFree(self, ptr):
        self.memory.pop(ptr, None)
        return (0,)

    cudaFreeHost = cudaFree

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        self.copies[kind] += 1
        return self._do("memcpy", lambda: ctypes.memmove(dst, src, n))

    def cudaMemcpy(self, dst, src, n, kind):
        self.copies[kind] += 1
        ctypes.memmove(dst, src, n)
        return (0,)

    def cudaMemsetAsync(self, ptr, value, n, stream):
        return self._do("memset", lambda: ctypes.memset(ptr, value, n))

    def cudaSetDevice(self, index):
        return (0,)

    def cudaStreamCreate(self):
        return 0, 7

    def cudaStreamSynchronize(self, stream):
        return (0,)

    def cudaStreamDestroy(self, stream):
        return (0,)

    def cudaStreamBeginCapture(self, stream, mode):
        if not self.can_capture:
            return (SimpleNamespace(value=900, name="cudaErrorStreamCaptureUnsupported"),)
        self.capturing = []
        return (0,)

    def cudaStreamEndCapture(self, stream):
        ops, self.capturing = self.capturing, None
        return 0, ops

    def cudaGraphInstantiate(self, graph, flags):
        self.graphs[id(graph)] = graph
        return 0, id(graph)

    def cudaGraphDestroy(self, graph):
        return (0,)

    def cudaGraphExecDestroy(self, graph):
        return (0,)

    def cudaGraphLaunch(self, graph, stream):
        self.calls["graph_launch"] += 1
        for op in self.graphs[graph]:
            op()
        return (0,)


def _view(ptr, shape):
    count = int(np.prod(shape))
    return np.frombuffer((ctypes.c_float * count).from_address(ptr), np.float32).reshape(shape)


class FakeContext:
    """alpha = mean over channels, fgr = src, each state = state + 1 (so state counts frames)."""

    def __init__(self, engine):
        self.engine, self.shapes, self.addresses = engine, {}, {}

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        src = self.shapes["src"]
        if name == "pha":
            return (src[0], 1, *src[2:])
        if name == "fgr":
            return src
        return self.shapes[name[:-1] + "i"]

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream):
        def run():
            src = _view(self.addresses["src"], self.shapes["src"])
            _view(self.addresses["pha"], self.get_tensor_shape("pha"))[:] = src.mean(axis=1, keepdims=True)
            _view(self.addresses["fgr"], self.shapes["src"])[:] = src
            for state in self.engine.states:
                shape = self.shapes[state + "i"]
                _view(self.addresses[state + "o"], shape)[:] = _view(self.addresses[state + "i"], shape) + 1
            self.engine.runs += 1
        self.engine.cudart._do("execute", run)
        return True


class FakeEngine:
    def __init__(self, states, cudart):
        self.states, self.cudart, self.runs = states, cudart, 0
        self.names = ["src", *(s + "i" for s in states), "fgr", "pha", *(s + "o" for s in states)]

    num_io_tensors = property(lambda self: len(self.names))

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return FakeTrt.TensorIOMode.INPUT if name == "src" or name.endswith("i") else FakeTrt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return "float"

    def create_execution_context(self):
        return FakeContext(self)


class FakeTrt:
    __version__ = TARGET.tensorrt_version

    class TensorIOMode:
        INPUT, OUTPUT = 1, 2

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    @staticmethod
    def nptype(dtype):
        return np.float32

    def __init__(self, cudart):
        trt = self

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, data):
                trt.deserialized.append(data)
                return FakeEngine(json.loads(data)["states"], cudart)

        self.Runtime, self.deserialized = Runtime, []


SMALL_IO = ModelIO(
    inputs=(TensorSpec("src", "image", shape=("n", 3, "h", "w"), layout="NCHW"),
            TensorSpec("r1i", "state", shape=("n", "c", "h", "w"), layout="NCHW"),
            TensorSpec("r2i", "state", shape=("n", "c", "h", "w"), layout="NCHW"),
            TensorSpec("downsample_ratio", "downsample_ratio", shape=(1,))),
    outputs=(TensorSpec("fgr", "foreground", shape=("n", 3, "h", "w"), layout="NCHW"),
             TensorSpec("pha", "alpha", shape=("n", 1, "h", "w"), layout="NCHW"),
             TensorSpec("r1o", "state", shape=("n", 4, "h", "w"), layout="NCHW"),
             TensorSpec("r2o", "state", shape=("n", 8, "h", "w"), layout="NCHW")),
    states=(StatePair("r1i", "r1o", stride=2), StatePair("r2i", "r2o", stride=4)),
    downsample=DownsampleRule("downsample_ratio"),
)


@pytest.fixture
def fake_trt(monkeypatch, tmp_path):
    from mtc.backends.tensorrt import session as trt_backend

    cudart = FakeCudart()
    trt = FakeTrt(cudart)
    resolved = []

    def fake_resolve(folder, manifest, profile, **kwargs):
        resolved.append((profile.name, kwargs["build_missing"]))
        path = tmp_path / f"{profile.name}.plan"
        _write_fake_plan(path, profile=profile, data=json.dumps({"states": ["r1", "r2"]}).encode())
        return path

    monkeypatch.setattr(trt_backend, "_modules", lambda: (trt, cudart))
    monkeypatch.setattr(trt_backend, "_target", lambda device: TARGET)
    monkeypatch.setattr(trt_backend, "_resolve_plan", fake_resolve)
    return SimpleNamespace(cudart=cudart, trt=trt, resolved=resolved, module=trt_backend)


def _session(fake, **kwargs):
    from mtc.runtime.session import MattingSession

    backend = fake.module.TensorRTBackend(Path("artifact"), _manifest(SMALL_IO), **kwargs)
    return MattingSession(SMALL_IO, backend, scene_cut_threshold=None), backend


def _frames(n, h=64, w=96):
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_state_stays_on_the_device_between_frames(fake_trt):
    session, backend = _session(fake_trt, profiles="96x64@0.5")
    frames = _frames(4)
    for index, frame in enumerate(frames):
        out = session.step(frame)
        state = out["r1o"]
        assert type(state).__name__ == "DeviceState"
        # the fake adds 1 per frame: frame t's state is t+1 everywhere, at the rule's shape
        np.testing.assert_array_equal(np.asarray(state), np.full((1, 4, 16, 24), index + 1, np.float32))
        np.testing.assert_allclose(out["pha"][0, 0], frame.mean(axis=2) / 255.0, atol=1e-6)
    kinds = fake_trt.cudart.copies
    # per frame: one image upload (async), two downloads (fgr, pha), two device-to-device state copies;
    # the only synchronous host<->device copies are the test's own np.asarray() state reads
    assert kinds[FakeCudart.cudaMemcpyKind.cudaMemcpyHostToDevice] == 4
    assert kinds[FakeCudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice] == 8
    assert kinds[FakeCudart.cudaMemcpyKind.cudaMemcpyDeviceToHost] == 8 + 4
    assert fake_trt.cudart.calls["memset"] == 2  # frame 0's 1x1x1x1 zero states became memsets
    assert len(fake_trt.trt.deserialized) == 1 and fake_trt.resolved == [("96x64@0.5", True)]


def test_buffers_are_allocated_once_per_profile(fake_trt):
    session, backend = _session(fake_trt, profiles="96x64@0.5")
    for frame in _frames(3):
        session.step(frame)
    allocations = len(fake_trt.cudart.memory)
    session.reset()
    for frame in _frames(3):
        session.step(frame)
    assert len(fake_trt.cudart.memory) == allocations
    assert fake_trt.cudart.calls["memset"] == 4  # the reset cleared state on the device again
    plan = buffer_plan(SMALL_IO, parse_profile("96x64@0.5"))
    assert backend.peak_device_memory_bytes() == plan.device_bytes
    backend.close()
    assert not fake_trt.cudart.memory


def test_stale_device_state_is_refused(fake_trt):
    session, backend = _session(fake_trt, profiles="96x64@0.5")
    frames = _frames(2)
    first = session.step(frames[0])["r1o"]
    session.step(frames[1])
    with pytest.raises(MtcError, match="overwritten by a later frame"):
        np.asarray(first)


def test_ratio_policy(fake_trt, caplog):
    import logging

    # auto ratio (96 px long side -> 1.0) but the profile fixes 0.5: runs at 0.5, says so once
    session, backend = _session(fake_trt, profiles="96x64@0.5")
    with caplog.at_level(logging.INFO, logger="mtc"):
        for frame in _frames(2):
            session.step(frame)
    assert caplog.text.count("fixes downsample_ratio 0.5") == 1
    # strict (the user fixed a ratio) and build_missing=False: no profile has it -> clear error
    strict, _ = _session(fake_trt, profiles="96x64@0.5", ratio_policy="strict", build_missing=False)
    with pytest.raises(MtcError, match="no TensorRT profile serves 96x64 at ratio 1") as err:
        strict.step(_frames(1)[0])
    assert "mtc build" in err.value.hint


def test_frames_without_a_profile_get_an_exact_one_on_demand(fake_trt):
    session, backend = _session(fake_trt)
    session.step(_frames(1, 64, 96)[0])
    session.step(_frames(1, 48, 80)[0])
    assert [name for name, _ in fake_trt.resolved] == ["96x64@1", "80x48@1"]


def test_cuda_graph_replays_the_whole_frame(fake_trt):
    session, backend = _session(fake_trt, profiles="96x64@0.5", cuda_graph=True)
    frames = _frames(5)
    for index, frame in enumerate(frames):
        out = session.step(frame)
        np.testing.assert_allclose(out["pha"][0, 0], frame.mean(axis=2) / 255.0, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(out["r2o"]), np.full((1, 8, 8, 12), index + 1, np.float32))
    # frame 0 runs plain (TensorRT wants one run before capture), frame 1 is captured, then replayed
    assert fake_trt.cudart.calls["graph_launch"] == 4


def test_failed_capture_falls_back_to_plain_runs(fake_trt, caplog):
    fake_trt.cudart.can_capture = False
    session, backend = _session(fake_trt, profiles="96x64@0.5", cuda_graph=True)
    for frame in _frames(3):
        session.step(frame)
    assert not backend.cuda_graph and fake_trt.cudart.calls["graph_launch"] == 0
    assert "capture failed" in caplog.text


def test_session_preprocesses_into_the_pinned_input_buffer(fake_trt):
    session, backend = _session(fake_trt, profiles="96x64@0.5")
    fed = []
    run = backend.run
    backend.run = lambda feeds: fed.append(feeds["src"]) or run(feeds)
    for frame in _frames(3):
        out = session.step(frame)
        np.testing.assert_allclose(out["pha"][0, 0], frame.mean(axis=2) / 255.0, atol=1e-6)
    pinned_ptr = backend._current.buffers["src"].host_ptr
    # frame 0 arrives before any engine exists; from then on the image is written where it is uploaded from
    assert fed[0].ctypes.data != pinned_ptr
    assert [f.ctypes.data for f in fed[1:]] == [pinned_ptr, pinned_ptr]
    # a frame the pinned buffer cannot hold goes through the session's own array
    assert backend.host_input("src", (1, 3, 640, 960)) is None


def test_create_backend_routes_to_tensorrt(fake_trt, tmp_path):
    from mtc.backends import Availability, BackendOptions, create_backend
    from mtc.backends.tensorrt import Options as TensorRTOptions

    backend = create_backend("auto", tmp_path / "model.onnx", manifest=_manifest(SMALL_IO), folder=tmp_path,
                             options=BackendOptions(per_backend={"tensorrt": TensorRTOptions(profiles="hd")}),
                             availability=Availability(gpu_count=1, tensorrt=True))
    assert backend.name == "tensorrt" and [p.name for p in backend.profiles] == ["hd"]
    assert "tensorrt 10.9.0.34" in backend.describe()


# ---- on a real GPU ----------------------------------------------------------------------------------


def _gpu_or_skip():
    from mtc.backends.registry import cuda_device_count

    if cuda_device_count() == 0:
        pytest.skip("no NVIDIA GPU visible")
    for module in ("tensorrt", "polygraphy", "cuda"):
        pytest.importorskip(module, reason=f"{module} is not installed (pip install 'mtc[trt]')")


@pytest.mark.gpu
def test_gpu_build_and_run_match_onnxruntime(rvm_artifact, tmp_path, monkeypatch):
    _gpu_or_skip()
    import shutil

    import mtc.runtime
    from mtc.backends.build import build
    from mtc.data.builtin_clip import ClipSpec, builtin_clip

    monkeypatch.setenv("MTC_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "rvm"
    shutil.copytree(rvm_artifact, folder)
    results = build(folder, backend="tensorrt", profiles="512x288@1.0")
    assert (folder / "engines" / "512x288@1.0.plan").is_file(), results
    frames = builtin_clip(ClipSpec(width=512, height=288, frames=8))
    ort_session = mtc.runtime.load(folder, backend="onnxruntime", downsample_ratio=1.0, scene_cut_threshold=None)
    for graphs in (False, True):
        trt_session = mtc.runtime.load(folder, backend="tensorrt", downsample_ratio=1.0, profiles="512x288@1.0",
                                       cuda_graph=graphs, build_missing=False, scene_cut_threshold=None)
        ort_session.reset()
        for frame in frames:
            a = ort_session.process(frame).alpha.copy()
            b = trt_session.process(frame).alpha
            assert np.abs(a - b).max() < 1e-3  # FP32 on the GPU (TF32 off), kernels differ from the CPU's


@pytest.mark.gpu
def test_gpu_foreign_plan_is_rebuilt(rvm_artifact, tmp_path, monkeypatch):
    _gpu_or_skip()
    import shutil

    from mtc.backends.build import build

    monkeypatch.setenv("MTC_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "rvm"
    shutil.copytree(rvm_artifact, folder)
    build(folder, backend="tensorrt", profiles="512x288@1.0")
    sidecar = plan_mod.sidecar_path(folder / "engines" / "512x288@1.0.plan")
    data = json.loads(sidecar.read_text())
    data["tensorrt_version"] = "8.6.1"
    sidecar.write_text(json.dumps(data))
    results = build(folder, backend="tensorrt", profiles="512x288@1.0")
    assert "plan ->" in results[0]
