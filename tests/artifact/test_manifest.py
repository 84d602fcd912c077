import json

import pytest

from mtc.artifact.manifest import MANIFEST_NAME, Manifest, Precision, file_entry, manifest_from_dict, read_manifest
from mtc.errors import MtcError
from mtc.models.rvm import RVM_IO


def _manifest(tmp_path) -> Manifest:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not really a model, but hashed all the same")
    return Manifest(model="rvm", variant="mobilenetv3", task="video_matting", license="GPL-3.0",
                    model_file="model.onnx", io=RVM_IO, precision=Precision(mode="fp32"),
                    files={"model.onnx": file_entry(model)}, provenance={"exporter": "test"})


def test_round_trip_preserves_every_field(tmp_path):
    manifest = _manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text(manifest.to_json())
    assert read_manifest(tmp_path) == manifest


def test_the_quantization_recipe_survives_and_is_checked(tmp_path):
    import dataclasses

    from mtc.artifact.manifest import QuantRecipe

    manifest = dataclasses.replace(_manifest(tmp_path), quantization=QuantRecipe("tensorrt", builtin_photos=True))
    data = json.loads(manifest.to_json())
    assert manifest_from_dict(data).quantization == QuantRecipe("tensorrt", builtin_photos=True)
    del data["quantization"]  # artifacts written before the recipe existed
    assert manifest_from_dict(data).quantization == QuantRecipe()
    data["quantization"] = {"int8_preset": "speed", "builtin_photos": "yes"}
    with pytest.raises(MtcError, match="builtin_photos"):
        manifest_from_dict(data)


def test_state_pairs_and_downsample_rule_survive(tmp_path):
    manifest = _manifest(tmp_path)
    parsed = manifest_from_dict(json.loads(manifest.to_json()))
    assert [(p.input, p.output) for p in parsed.io.states] == [("r1i", "r1o"), ("r2i", "r2o"), ("r3i", "r3o"), ("r4i", "r4o")]
    assert parsed.io.downsample.ratio_for(1080, 1920) == 0.25  # RVM's rule snaps 0.267 to 1/4
    assert parsed.io.downsample.ratio_for(288, 512) == 1.0


@pytest.mark.parametrize("size, plain, snapped", [
    ((1080, 1920), 512 / 1920, 0.25),     # 0.267 -> 1/4, 6% lower
    ((2160, 3840), 512 / 3840, 0.125),
    ((1440, 2560), 0.2, 0.2),             # already 1/5
    ((720, 1280), 0.4, 0.4),              # 1/3 and 1/2 are 17% and 25% away: kept
    ((480, 640), 0.8, 0.8),
    ((288, 512), 1.0, 1.0),
    ((100, 200), 1.0, 1.0),               # capped by max_ratio
])
def test_downsample_rule_snaps_to_a_nearby_unit_fraction_only_when_asked(size, plain, snapped):
    from mtc.artifact.manifest import DownsampleRule

    assert DownsampleRule("downsample_ratio").ratio_for(*size) == pytest.approx(plain)
    assert DownsampleRule("downsample_ratio", snap=0.1).ratio_for(*size) == pytest.approx(snapped)


def test_downsample_snap_survives_the_manifest_and_defaults_to_off(tmp_path):
    data = json.loads(_manifest(tmp_path).to_json())
    assert manifest_from_dict(data).io.downsample.snap == 0.1
    del data["io"]["downsample"]["snap"]  # a manifest written before the field existed
    assert manifest_from_dict(data).io.downsample.snap == 0.0


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.pop("model"), "model is missing"),
    (lambda d: d["io"]["inputs"][0].update(role="picture"), "io.inputs[0].role"),
    (lambda d: d["io"]["inputs"][0].update(name=3), "io.inputs[0].name must be str"),
    (lambda d: d["precision"].update(mode="int4"), "precision.mode"),
    (lambda d: d["io"]["states"][0].update(output="nope"), "io.states"),
    (lambda d: d.update(model_file="other.onnx"), "model_file"),
    (lambda d: d["io"]["preprocess"].update(mean=[0.5, 0.5]), "io.preprocess.mean must be 3 numbers"),
    (lambda d: d["io"]["outputs"].pop(1), "no tensor with role 'alpha'"),
])
def test_schema_errors_name_the_field(tmp_path, mutate, field):
    data = json.loads(_manifest(tmp_path).to_json())
    mutate(data)
    with pytest.raises(MtcError) as err:
        manifest_from_dict(data)
    assert field in str(err.value)
    assert "\n" not in str(err.value)


def test_newer_schema_version_is_refused(tmp_path):
    data = json.loads(_manifest(tmp_path).to_json())
    data["schema_version"] = 99
    with pytest.raises(MtcError, match="schema_version 99"):
        manifest_from_dict(data)


def test_modified_model_file_fails_hash_check(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text(_manifest(tmp_path).to_json())
    with open(tmp_path / "model.onnx", "ab") as handle:
        handle.write(b"x")
    with pytest.raises(MtcError, match="does not match its manifest hash"):
        read_manifest(tmp_path)
    read_manifest(tmp_path, verify_files=False)  # the schema itself is still fine


def test_not_an_artifact(tmp_path):
    with pytest.raises(MtcError, match="not an mtc artifact"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{ broken")
    with pytest.raises(MtcError, match="not valid JSON"):
        read_manifest(tmp_path)
