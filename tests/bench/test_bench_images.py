"""`mtc bench --input FOLDER --gt FOLDER`: image folders paired by file stem, matting and SOD metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from tiny_artifacts import write_tiny_artifact

from mtc.bench.accuracy import StreamingMetrics
from mtc.bench.images import pair_by_stem
from mtc.errors import MtcError
from mtc.metrics import SodScores, matting_metrics

SIZES = {"a": (40, 32), "b": (24, 56), "c": (33, 17)}  # (width, height): every image its own size


@pytest.fixture()
def photos(tmp_path):
    """Three images of different sizes, and ground truth with the same stems (as PNGs)."""
    rng = np.random.default_rng(3)
    images, truth = tmp_path / "images", tmp_path / "gt"
    images.mkdir()
    truth.mkdir()
    for stem, (width, height) in SIZES.items():
        picture = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(picture).save(images / f"{stem}.{'jpg' if stem == 'b' else 'png'}", quality=100)
        alpha = np.zeros((height, width), np.uint8)
        alpha[height // 4:3 * height // 4, width // 3:] = 255
        Image.fromarray(alpha, mode="L").save(truth / f"{stem}.png")
    return images, truth


def test_pairs_by_stem_and_refuses_an_image_without_truth(photos):
    images, truth = photos
    pairs = pair_by_stem(images, truth)
    assert [(p.name, t.name) for p, t in pairs] == [("a.png", "a.png"), ("b.jpg", "b.png"), ("c.png", "c.png")]
    (truth / "c.png").unlink()
    with pytest.raises(MtcError, match=r"1 image\(s\) .* have no ground truth .*: c"):
        pair_by_stem(images, truth)


def test_two_images_with_one_stem_are_refused(photos):
    images, truth = photos
    Image.new("RGB", (20, 20)).save(images / "a.jpg")
    with pytest.raises(MtcError, match="two images named 'a'"):
        pair_by_stem(images, truth)


def test_streaming_metrics_mix_matting_and_sod_metrics():
    pred = np.array([[0.0, 0.5], [1.0, 1.0]])
    gt = np.array([[0, 255], [255, 0]], dtype=np.uint8)
    acc = StreamingMetrics(("s_measure", "mad", "max_f"))
    acc.add(pred, gt)
    result = acc.result()
    assert list(result) == ["mad", "max_f", "s_measure", "frames"]
    assert result["mad"] == pytest.approx(375.0)  # |d| = 0, .5, 0, 1 -> mean .375, x1e3
    assert result["max_f"] == pytest.approx(13 / 18)  # see tests/test_metrics.py


def test_bench_image_folder_in_a_subprocess_reports_every_image_metric(photos, tmp_path):
    import mtc.runtime

    images, truth = photos
    artifact = write_tiny_artifact(tmp_path / "tiny")
    out = tmp_path / "report.json"
    result = subprocess.run([sys.executable, "-m", "mtc", "bench", str(artifact), "--input", str(images), "--gt",
                             str(truth), "--backend", "onnxruntime", "--warmup", "1", "--json", str(out)],
                            capture_output=True, text=True, env=os.environ.copy(), timeout=300)
    assert result.returncode == 0, result.stderr
    # The table names the SOD metrics beside the matting ones.
    for label in ("MAD", "Grad", "Conn", "MAE", "maxF", "wF", "maxE"):
        assert label in result.stdout
    report = json.loads(out.read_text())
    (r,) = report["results"]
    assert r["resolution"] == "images" and r["frames"] == 3 and r["model"]["frames"] == 3
    gt = r["accuracy"]["gt"]
    assert "dtssd" not in gt and gt["frames"] == 3

    # The same figures from mtc.metrics on the alpha the runtime gives for each image.
    session = mtc.runtime.load(artifact, backend="onnxruntime")
    sod, matting = SodScores(), []
    for stem in SIZES:
        picture = next(images.glob(f"{stem}.*"))
        alpha = np.clip(session.process(np.asarray(Image.open(picture).convert("RGB"))).alpha, 0, 1)
        target = np.asarray(Image.open(truth / f"{stem}.png"))
        sod.add(alpha, target)
        matting.append(matting_metrics(alpha, target, which=("mad", "mse", "grad", "conn")))
    expected = {**sod.result(), **{k: np.mean([m[k] for m in matting]) for k in matting[0]}}
    for name, value in expected.items():
        # Conn thresholds alpha: float32 rounding between runs could move a pixel.
        assert gt[name] == pytest.approx(value, rel=1e-2 if name == "conn" else 1e-5), name
    assert 0 < gt["mae"] < 1 and 0 < gt["s_measure"] < 1  # a random-weight model is neither perfect nor empty


def test_image_folder_refuses_dtssd_and_resolutions(photos, tmp_path):
    from click.testing import CliRunner

    from mtc.cli.bench import bench

    images, truth = photos
    artifact = write_tiny_artifact(tmp_path / "tiny")
    for extra, phrase in ((["--metrics", "mad,dtssd"], "no time axis"), (["-r", "64x48"], "own size")):
        result = CliRunner().invoke(bench, [str(artifact), "--input", str(images), "--gt", str(truth), *extra])
        assert result.exit_code != 0 and phrase in str(result.exception or result.output), extra


def test_sod_gates_check_the_right_direction(photos, tmp_path):
    from click.testing import CliRunner

    from mtc.cli.bench import bench

    images, truth = photos
    artifact = write_tiny_artifact(tmp_path / "tiny")
    gates = tmp_path / "gates.toml"
    out = tmp_path / "report.json"

    def run(text: str):
        gates.write_text(text)
        result = CliRunner().invoke(bench, [str(artifact), "--input", str(images), "--gt", str(truth), "--backend",
                                            "onnxruntime", "--metrics", "mae,s_measure", "--gate", str(gates),
                                            "--json", str(out)])
        return result.exit_code, {g["gate"]: g for g in json.loads(out.read_text())["gates"]["results"]}

    # S-measure is better when higher (min_), MAE when lower (max_): bounds either side of the value.
    code, passed = run("[gates]\nmin_gt_s_measure = 0.0\nmax_gt_mae = 1.0\n")
    assert code == 0 and all(g["passed"] for g in passed.values())
    s_value = passed["min_gt_s_measure"]["value"]
    code, failed = run(f"[gates]\nmin_gt_s_measure = {s_value + 0.01}\nmax_gt_mae = 0.0\n")
    assert code == 1 and not failed["min_gt_s_measure"]["passed"] and not failed["max_gt_mae"]["passed"]
    assert failed["min_gt_s_measure"]["op"] == ">=" and failed["max_gt_mae"]["op"] == "<="
    # A metric left out by --metrics is not measured: its gate fails rather than passing on nothing.
    code, missing = run("[gates]\nmin_gt_max_f = 0.0\n")
    assert code == 1 and missing["min_gt_max_f"]["value"] is None
