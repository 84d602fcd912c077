"""Model families are discovered through the `mtc.models` entry point group."""

import sys
import textwrap

from mtc.models import registry

FAMILY = '''
from mtc.artifact.manifest import ModelIO, Preprocess, TensorSpec
from mtc.models.registry import ModelSpec, VariantSpec, register
from mtc.weights import WeightFile

IO = ModelIO(inputs=(TensorSpec("x", "image"),), outputs=(TensorSpec("a", "alpha"),),
             preprocess=Preprocess(resize="fixed", fixed_size=(64, 64)))
register(ModelSpec(name="plugged", task="image_matting", summary="a family from another package", license="MIT",
                   paper="-", default_variant="v1",
                   variants={"v1": VariantSpec(name="v1", io=IO, build_onnx=lambda path: None,
                                               weights=WeightFile(filename="p.onnx", sha256=None, size=None,
                                                                  license="MIT", sources=()))}))
'''


def test_a_family_from_another_package_is_found(tmp_path, monkeypatch):
    (tmp_path / "plugged_family.py").write_text(textwrap.dedent(FAMILY))
    dist = tmp_path / "plugged_family-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: plugged-family\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[mtc.models]\nplugged = plugged_family\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.list_models()  # the built-ins register into the real registry first
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    spec = registry.get_model("plugged")
    assert spec.variant(None).io.preprocess.fixed_size == (64, 64)
    assert "plugged" in [m.name for m in registry.list_models()]
    assert "rvm" in [m.name for m in registry.list_models()]  # the built-ins are still there
    sys.modules.pop("plugged_family", None)


def test_a_broken_plugin_does_not_hide_the_other_models(tmp_path, monkeypatch, caplog):
    (tmp_path / "broken_family.py").write_text("raise RuntimeError('boom')\n")
    dist = tmp_path / "broken_family-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-family\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[mtc.models]\nbroken = broken_family\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "rvm" in [m.name for m in registry.list_models()]
    assert "broken_family" in caplog.text and "boom" in caplog.text
