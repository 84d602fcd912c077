"""benchmarks/bench_peers.py: the interleaving/accuracy bookkeeping and the GT composites."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtc.metrics import matting_metrics

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_peers.py"


@pytest.fixture(scope="module")
def peers():
    spec = importlib.util.spec_from_file_location("bench_peers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_peers"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_peers", None)


class Replay:
    """A peer that returns fixed alphas (its own recurrent position, reset per clip)."""

    def __init__(self, alphas):
        self.alphas, self.t, self.calls = alphas, 0, 0

    def reset(self):
        self.t = 0

    def process(self, frame):
        self.calls += 1
        alpha = self.alphas[self.t]
        self.t += 1
        return alpha


def test_parse_cases(peers):
    assert peers.parse_cases("512x288@1.0, 1920x1080@0.25") == [(512, 288, 1.0), (1920, 1080, 0.25)]
    assert peers.parse_cases("1024x576") == [(1024, 576, 0.5)]  # RVM's auto rule


def test_parse_artifact(peers):
    assert peers.parse_artifact("a/rvm-int8@onnxruntime", "auto") == (Path("a/rvm-int8"), "onnxruntime", "fp32")
    assert peers.parse_artifact("a/rvm-int8@openvino:bf16", "auto") == (Path("a/rvm-int8"), "openvino", "bf16")
    assert peers.parse_artifact("a/odd@name", "auto") == (Path("a/odd@name"), "auto", "fp32")


def test_mtc_runner_labels_precision_backend_and_alpha_only_exports(peers, rvm_artifact, rvm_alpha_artifact):
    assert peers.MtcRvm(rvm_artifact, 1.0, 2, "onnxruntime").label == "mtc_fp32_onnxruntime"
    alpha = peers.MtcRvm(rvm_alpha_artifact, 1.0, 2, "onnxruntime")
    assert alpha.label == "mtc_fp32_alpha_onnxruntime"
    assert alpha.process(np.zeros((36, 64, 3), np.uint8)).shape == (36, 64)


def test_openvino_peer_runs_static_and_matches_onnxruntime(peers, rvm_onnx):
    pytest.importorskip("openvino")
    frames = [np.full((36, 64, 3), v, np.uint8) for v in (30, 200, 90)]
    ov_peer, ort_peer = peers.OpenVinoRvm(rvm_onnx, 1.0, 2), peers.OrtRvm(rvm_onnx, 1.0, 2)
    for frame in frames:
        np.testing.assert_allclose(ov_peer.process(frame), ort_peer.process(frame), atol=1e-4)
    assert ov_peer.backend.static_shapes and ov_peer.backend.precision == "fp32"
    assert not ov_peer.backend.rewrite_graph and not ov_peer.backend._merged  # OpenVINO as a user wires it


def test_a_peer_running_the_network_at_another_resolution_is_flagged(peers, rvm_onnx):
    assert peers.network_resolution_problem(peers.OrtRvm(rvm_onnx, 0.5, 1), rvm_onnx, 96, 64, 0.5) is None
    # what NNCF did: the ratio input folded to another value
    problem = peers.network_resolution_problem(peers.OrtRvm(rvm_onnx, 1.0, 1), rvm_onnx, 96, 64, 0.5)
    assert problem.startswith("states [(32, 48)") and "instead of [(16, 24)" in problem


def test_markdown_marks_peers_at_another_resolution(peers):
    config = {"fps": 10.0, "speedup_vs_ort_fp32": 1.0, "vs_fp32": None, "vs_gt": None}
    result = {"machine": {"date": "d", "cpu": "c", "cores": 2, "onnxruntime": "1", "libraries": {}}, "threads": 2,
              "frames": 4, "rounds": 1, "evalset": None, "calib_frames": 4,
              "cases": [{"resolution": "96x64", "downsample_ratio": 0.5, "configs": [
                  {**config, "label": "ort_fp32", "network_resolution_problem": None},
                  {**config, "label": "ort_int8_qdq", "network_resolution_problem": "states X instead of Y"}]}]}
    text = peers.markdown(result)
    assert "| ort_int8_qdq † |" in text and "| ort_fp32 |" in text
    assert "96x64 ort_int8_qdq: states X instead of Y" in text


def test_bench_case_scores_against_the_first_configuration(peers):
    rng = np.random.default_rng(1)
    gt = rng.random((5, 8, 10)).astype(np.float32)
    ref = np.clip(gt + rng.normal(0, 0.05, gt.shape), 0, 1).astype(np.float32)
    other = np.clip(gt + rng.normal(0, 0.1, gt.shape), 0, 1).astype(np.float32)
    clip = peers.Clip("c", [np.zeros((8, 10, 3), np.uint8)] * 5, list(gt))
    runners = {"ort_fp32": Replay(ref), "other": Replay(other)}
    results = peers.bench_case(runners, [clip], rounds=3, warmup=2)
    assert runners["other"].calls == 2 + 3 * 5 and len(results["other"].times) == 15
    summary = peers.summarize(results["other"], reference_fps=None)
    assert summary["vs_fp32"]["mad"] == pytest.approx(matting_metrics(other, ref, which=("mad",))["mad"], rel=1e-9)
    assert summary["vs_fp32"]["dtssd"] == pytest.approx(matting_metrics(other, ref, which=("dtssd",))["dtssd"],
                                                         rel=1e-9)
    assert summary["vs_fp32"]["grad"] == pytest.approx(matting_metrics(other, ref, which=("grad",))["grad"], rel=1e-9)
    assert summary["vs_gt"]["mad"] == pytest.approx(matting_metrics(other, gt, which=("mad",))["mad"], rel=1e-9)
    assert peers.summarize(results["ort_fp32"], None)["vs_fp32"] == {"mad": 0.0, "dtssd": 0.0, "grad": 0.0}


def test_away_from_the_subject_starts_four_percent_of_the_height_from_its_alpha(peers):
    gt = np.zeros((100, 200), np.float32)
    gt[40:60, 90:110] = 1.0
    away = peers.away_from_subject(gt)
    assert not away[40:60, 90:110].any()
    assert not away[36, 100] and not away[50, 113]  # 4 pixels (4% of 100) from the subject
    assert away[35, 100] and away[50, 114] and away[0, 0]
    assert peers.away_from_subject(np.zeros((50, 60), np.float32)).all()


def test_bench_case_splits_off_the_error_away_from_the_subject(peers):
    rng = np.random.default_rng(2)
    gt = np.zeros((4, 50, 60), np.float32)
    gt[:, 20:30, 25:35] = 1.0
    ref = rng.random(gt.shape).astype(np.float32)
    other = np.clip(ref + rng.normal(0, 0.1, gt.shape), 0, 1).astype(np.float32)
    clip = peers.Clip("c", [np.zeros((50, 60, 3), np.uint8)] * 4, list(gt))
    results = peers.bench_case({"ort_fp32": Replay(ref), "other": Replay(other)}, [clip], rounds=1, warmup=0)
    summary = peers.summarize(results["other"], reference_fps=None)
    away = np.stack([peers.away_from_subject(g) for g in gt])
    expected = 1e3 * float(np.abs(other - ref)[away].sum()) / other.size
    assert summary["mad_vs_fp32_away_from_subject"] == pytest.approx(expected, rel=1e-6)
    assert 0 < summary["mad_vs_fp32_away_from_subject"] < summary["vs_fp32"]["mad"]
    assert peers.summarize(results["ort_fp32"], None)["mad_vs_fp32_away_from_subject"] == 0.0
    # no ground truth, no subject to be away from
    plain = peers.Clip("b", [np.zeros((50, 60, 3), np.uint8)] * 4, None)
    results = peers.bench_case({"ort_fp32": Replay(ref), "other": Replay(other)}, [plain], rounds=1, warmup=0)
    assert peers.summarize(results["other"], None)["mad_vs_fp32_away_from_subject"] is None


def test_markdown_shows_the_error_away_from_the_subject_for_evalset_runs_only(peers):
    config = {"fps": 10.0, "speedup_vs_ort_fp32": 1.0, "vs_fp32": None, "vs_gt": None, "network_resolution_problem": None}
    result = {"machine": {"date": "d", "cpu": "c", "cores": 2, "onnxruntime": "1", "libraries": {}}, "threads": 2,
              "frames": 4, "rounds": 1, "evalset": "/data/evalset", "calib_frames": 4,
              "cases": [{"resolution": "96x64", "downsample_ratio": 0.5, "configs": [
                  {**config, "label": "ort_fp32", "mad_vs_fp32_away_from_subject": 0.0},
                  {**config, "label": "mtc_int8", "mad_vs_fp32_away_from_subject": 1.234}]}]}
    text = peers.markdown(result)
    assert "MAD vs FP32 away from the subject |" in text and "| mtc_int8 | 10.0 | 1.00 | – | – | – | – | 1.23 |" in text
    assert "away from the subject" not in peers.markdown({**result, "evalset": None})


def test_the_one_gray_level_runner_feeds_the_same_noise_per_frame_index_on_every_clip(peers):
    class Recorder:
        def __init__(self):
            self.frames, self.resets = [], 0

        def reset(self):
            self.resets += 1

        def process(self, frame):
            self.frames.append(frame)
            return frame[..., 0]

    inner = Recorder()
    runner = peers.OneGrayLevel(inner)
    frame = np.full((6, 8, 3), 100, np.uint8)
    first = [runner.process(frame) for _ in range(2)]
    runner.reset()
    again = [runner.process(frame) for _ in range(2)]
    moved = np.stack(inner.frames).astype(int) - 100
    assert set(np.unique(moved)) == {-1, 0, 1} and inner.resets == 2  # the wrapped runner is reset too
    assert (first[0] == again[0]).all() and (first[1] == again[1]).all() and not (first[0] == first[1]).all()


def test_evalset_composites_have_exact_alpha(peers, tmp_path):
    from mtc.runtime.video_writer import VideoWriter

    root = tmp_path / "evalset"
    for sub in ("images", "alpha", "videos"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    name = peers.EVALSET_FOREGROUNDS[0]
    fg = rng.integers(0, 256, (60, 40, 3), dtype=np.uint8)
    alpha = np.zeros((60, 40), np.uint8)
    alpha[10:50, 8:32] = 255
    alpha[10:50, 6:8] = 128
    Image.fromarray(fg).save(root / "images" / f"{name}.png")
    Image.fromarray(alpha, mode="L").save(root / "alpha" / f"{name}.png")
    with VideoWriter(root / "videos" / "bg.mp4", width=96, height=54, fps=10, kind="rgb") as writer:
        for _ in range(4):
            writer.write(np.full((54, 96, 3), 40, np.uint8))
    (clip,) = peers.evalset_clips(root, 64, 36, frames=3, count=1)
    assert len(clip.frames) == len(clip.gt) == 3
    for frame, gt in zip(clip.frames, clip.gt):
        assert frame.shape == (36, 64, 3) and gt.shape == (36, 64) and gt.dtype == np.float32
        assert 0 <= gt.min() and gt.max() <= 1 and gt.max() > 0.99
        background = gt == 0
        # Outside the subject the composite is the (flat, lossy-coded) background itself.
        assert np.abs(frame[background].astype(int) - 40).max() <= 3
    assert not np.array_equal(clip.gt[0], clip.gt[-1])  # the subject moves
