"""The backend registry: backends found by name, probes, and auto avoiding unfaithful backends."""

import dataclasses
import logging
import sys
import types

import pytest

from mtc.backends import BackendOptions, registry
from mtc.backends.cpu import class_from_flags, int8_saturates
from mtc.backends.registry import Availability, BackendEntry, Probe, choose_backend, get_backend
from mtc.errors import MtcError


def test_every_backend_package_is_in_the_registry():
    assert set(registry.backend_names()) == {"onnxruntime", "openvino", "tensorrt"}
    for name in registry.backend_names():
        entry = get_backend(name)
        assert entry.name == name and callable(entry.probe) and callable(entry.open) and callable(entry.build)
        assert dataclasses.is_dataclass(entry.options()) and entry.options.__module__ == f"mtc.backends.{name}"


def test_each_backend_gets_its_own_typed_options():
    from mtc.backends import BackendOptions, openvino, tensorrt
    from mtc.errors import MtcError

    options = BackendOptions(threads=1, per_backend={"tensorrt": tensorrt.Options(profiles="hd", cuda_graph=True)})
    assert options.for_backend("tensorrt").cuda_graph and options.for_backend("tensorrt").profiles == "hd"
    assert options.for_backend("openvino") == openvino.Options()  # not named: its defaults
    with pytest.raises(MtcError, match="must be mtc.backends.openvino.Options"):
        BackendOptions(per_backend={"openvino": tensorrt.Options()}).for_backend("openvino")


@dataclasses.dataclass(frozen=True)
class FakeOptions:
    level: int = 1


def test_a_backend_added_by_one_registry_line_is_chosen_by_its_probe(monkeypatch):
    module = types.ModuleType("fake_backend_pkg")
    opened = []
    module.BACKEND = BackendEntry(
        name="fake", title="Fake", probe=lambda available: Probe(True, rank=-1, reason="fake accelerator present"),
        open=lambda *args, **kwargs: opened.append(kwargs) or types.SimpleNamespace(name="fake"), options=FakeOptions)
    monkeypatch.setitem(sys.modules, "fake_backend_pkg", module)
    monkeypatch.setattr(registry, "BACKEND_MODULES", (*registry.BACKEND_MODULES, "fake_backend_pkg"))
    choice = choose_backend("auto", Availability(openvino=True))
    assert (choice.name, choice.reason) == ("fake", "fake accelerator present")
    assert choose_backend("fake", Availability()).name == "fake"
    from mtc.backends import BackendOptions, create_backend

    session = create_backend("fake", "model.onnx", availability=Availability(),
                             options=BackendOptions(per_backend={"fake": FakeOptions(level=3)}))
    assert session.name == "fake" and opened[0]["options"] == FakeOptions(level=3)


@pytest.mark.parametrize("flags, expected", [
    ({"avx2", "avx512_vnni", "amx_int8"}, "amx"), ({"avx2", "avx512_vnni"}, "avx512-vnni"),
    ({"avx2", "avx_vnni"}, "avx-vnni"), ({"avx2", "fma"}, "avx2"), ({"neon"}, "other")])
def test_cpu_class_from_flags(flags, expected):
    assert class_from_flags(flags) == expected
    assert int8_saturates(expected) == (expected == "avx2")


def test_int8_checked_elsewhere_warns_on_an_avx2_only_cpu(caplog):
    avx2 = Availability(openvino=True, cpu="avx2")
    with caplog.at_level(logging.WARNING, logger="mtc"):
        choice = choose_backend("auto", avx2, model_precision="int8", activation_type="uint8", checked_cpu="amx")
    assert choice.name == "openvino"  # every CPU backend saturates alike: the fastest, with a warning
    assert "AVX2-only" in choice.reason and "AVX2-only" in caplog.text


def test_int8_checked_on_this_cpu_class_runs_without_warning(caplog):
    avx2 = Availability(openvino=True, cpu="avx2")
    with caplog.at_level(logging.WARNING, logger="mtc"):
        choice = choose_backend("auto", avx2, model_precision="int8", activation_type="uint8", checked_cpu="avx2")
    assert choice.name == "openvino" and not caplog.text
    vnni = Availability(openvino=True, cpu="avx512-vnni")
    with caplog.at_level(logging.WARNING, logger="mtc"):
        choose_backend("auto", vnni, model_precision="int8", activation_type="uint8", checked_cpu="amx")
    assert not caplog.text  # exact integer kernels on both classes


def test_a_gpu_backend_is_not_held_back_by_the_cpu_class():
    gpu = Availability(gpu_count=1, tensorrt=True, openvino=True, cpu="avx2")
    assert choose_backend("auto", gpu, model_precision="int8", checked_cpu="amx").name == "tensorrt"


@pytest.mark.parametrize("threads", [0, -2, 1.5, True])
def test_bad_thread_counts_are_refused_before_any_backend_starts(threads, tmp_path):
    from tiny_artifacts import write_tiny_artifact

    import mtc.runtime

    with pytest.raises(MtcError, match="is not a positive whole number"):
        BackendOptions(threads=threads)
    with pytest.raises(MtcError, match="is not a positive whole number"):  # through the API, as apps call it
        mtc.runtime.load(write_tiny_artifact(tmp_path / "tiny"), backend="onnxruntime", threads=threads)
