"""`mtc bench`: timing statistics on a fake clock, accuracy figures, gates, JUnit, the command."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper
from PIL import Image

from mtc.bench import (
    SCHEMA,
    compare_sessions,
    evaluate_gates,
    junit_xml,
    latency_stats,
    measure_model,
    nearest_rank,
    parse_gates,
)
from mtc.bench.accuracy import StreamingMetrics
from mtc.bench.gates import GateResult, load_gates
from mtc.cli.bench import bench
from mtc.errors import MtcError
from mtc.metrics import matting_metrics

# ---- a controlled fake backend: deterministic cost on a fake clock ----------------------------


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeMatte:
    def __init__(self, alpha):
        self.alpha = alpha


class FakeSession:
    """Advances the fake clock by costs[i] on its i-th call; alpha from a list (or zeros)."""

    def __init__(self, clock: FakeClock, costs, alphas=None, shape=(4, 6)):
        self.clock, self.costs, self.alphas, self.shape = clock, list(costs), alphas, shape
        self.calls = 0
        self.resets = 0
        self.position = 0  # frame index since the last reset

    def process(self, frame):
        self.clock.now += self.costs[self.calls % len(self.costs)]
        self.calls += 1
        alpha = self.alphas[self.position] if self.alphas is not None else np.zeros(self.shape, np.float32)
        self.position += 1
        return FakeMatte(alpha)

    def reset(self):
        self.resets += 1
        self.position = 0


FRAMES = [np.zeros((4, 6, 3), np.uint8)] * 10


def test_latency_statistics_on_a_fake_clock_are_exact():
    clock = FakeClock()
    # Warm-up costs 1 s (untimed); then 10 frames of 1..10 ms: powers of two would be exact in
    # binary, so compare with a tolerance far below any rounding that matters.
    costs = [1.0, 1.0] + [k / 1000 for k in range(1, 11)]
    session = FakeSession(clock, costs)
    stats = measure_model(session, FRAMES, warmup=2, clock=clock)
    assert session.calls == 12 and session.resets == 1
    lat = stats["latency_ms"]
    assert stats["frames"] == 10
    assert stats["seconds"] == pytest.approx(0.055, abs=1e-12)
    assert stats["fps"] == pytest.approx(10 / 0.055, rel=1e-12)
    assert lat["mean"] == pytest.approx(5.5, abs=1e-9)
    assert lat["min"] == pytest.approx(1.0, abs=1e-9)
    assert lat["p50"] == pytest.approx(5.0, abs=1e-9)  # nearest rank: ceil(0.5 * 10) = 5th value
    assert lat["p90"] == pytest.approx(9.0, abs=1e-9)
    assert lat["p99"] == pytest.approx(10.0, abs=1e-9)
    assert lat["max"] == pytest.approx(10.0, abs=1e-9)
    assert stats["fps_median"] == pytest.approx(200.0, rel=1e-9)


def test_latency_outlier_shows_in_p99_not_p50():
    clock = FakeClock()
    costs = [0.5] * 3 + [0.010] * 99 + [0.500]  # 3 warm-up, 99 fast frames, one stall
    stats = measure_model(FakeSession(clock, costs), [FRAMES[0]] * 100, warmup=3, clock=clock)
    assert stats["latency_ms"]["p50"] == pytest.approx(10.0)
    assert stats["latency_ms"]["p99"] == pytest.approx(10.0)  # 99th of 100 values: still fast
    assert stats["latency_ms"]["max"] == pytest.approx(500.0)
    assert stats["latency_ms"]["mean"] == pytest.approx((99 * 10 + 500) / 100)


def test_nearest_rank_uses_integer_ranks():
    values = list(range(1, 101))
    assert [nearest_rank(values, p) for p in (1, 29, 50, 90, 99, 100)] == [1, 29, 50, 90, 99, 100]
    assert nearest_rank([7.0], 99) == 7.0
    with pytest.raises(MtcError):
        latency_stats([])


def test_warmup_cycles_frames_and_validates():
    clock = FakeClock()
    session = FakeSession(clock, [0.001])
    measure_model(session, FRAMES[:3], warmup=7, clock=clock)
    assert session.calls == 10
    with pytest.raises(MtcError):
        measure_model(session, [], clock=clock)


# ---- accuracy -------------------------------------------------------------------------------


def _clips(t=6, h=24, w=32, seed=0):
    rng = np.random.default_rng(seed)
    gt = np.clip(rng.random((t, h, w)) * 1.4 - 0.2, 0, 1).astype(np.float32)
    pred = np.clip(gt + rng.normal(0, 0.05, gt.shape), 0, 1).astype(np.float32)
    ref = np.clip(gt + rng.normal(0, 0.02, gt.shape), 0, 1).astype(np.float32)
    return pred, ref, gt


def test_accuracy_equals_mtc_metrics_on_the_same_frames():
    pred, ref, gt = _clips()
    clock = FakeClock()
    candidate = FakeSession(clock, [0.0], alphas=pred)
    reference = FakeSession(clock, [0.0], alphas=ref)
    frames = [np.zeros((24, 32, 3), np.uint8)] * len(pred)
    candidate.process(frames[0])  # state before the comparison must not matter: both are reset
    out = compare_sessions(candidate, frames, reference=reference, ground_truth=list(gt))
    for against, truth in (("reference", ref), ("gt", gt)):
        expected = matting_metrics(pred, truth)
        assert out[against]["frames"] == len(pred)
        for name, value in expected.items():
            assert out[against][name] == pytest.approx(value, rel=1e-9, abs=1e-12), (against, name)


def test_accuracy_clips_overshoot_and_accepts_uint8_truth():
    pred, _, gt = _clips(t=3)
    over = pred.copy()
    over[:, 0, 0] = 1.004  # low-precision overshoot: clipped as any consumer of the matte does
    gt8 = (gt * 255).round().astype(np.uint8)
    out = compare_sessions(FakeSession(FakeClock(), [0.0], alphas=over), [FRAMES[0]] * 3, ground_truth=list(gt8),
                           metrics=("mad", "dtssd"))
    expected = matting_metrics(np.clip(over, 0, 1), gt8, which=("mad", "dtssd"))
    assert set(out["gt"]) == {"mad", "dtssd", "frames"} and out["reference"] is None
    assert out["gt"]["mad"] == pytest.approx(expected["mad"], rel=1e-9)
    assert out["gt"]["dtssd"] == pytest.approx(expected["dtssd"], rel=1e-9)


def test_ground_truth_shorter_than_frames_is_a_clear_error():
    pred, _, gt = _clips(t=4)
    with pytest.raises(MtcError, match="ground truth ends after 2 frames"):
        compare_sessions(FakeSession(FakeClock(), [0.0], alphas=pred), [FRAMES[0]] * 4, ground_truth=list(gt[:2]))


def test_streaming_metrics_single_frame_dtssd_is_zero():
    acc = StreamingMetrics(("dtssd",))
    acc.add(np.zeros((5, 5), np.float32), np.ones((5, 5), np.float32))
    assert acc.result() == {"dtssd": 0.0, "frames": 1}


# ---- gates ----------------------------------------------------------------------------------

GATES = """
[gates]
min_fps = 10
max_p99_ms = 100
max_mad = 1.5

[gates."1920x1080"]
min_fps = 3          # HD gets its own floor
max_gt_dtssd = 2
"""


def _result(name, fps, p99, mad=None, gt_dtssd=None):
    return {"resolution": name, "model": {"fps": fps, "latency_ms": {"p99": p99}},
            "accuracy": {"reference": None if mad is None else {"mad": mad},
                         "gt": None if gt_dtssd is None else {"dtssd": gt_dtssd}}}


def test_gates_pass_fail_and_per_resolution_overrides():
    gates = parse_gates(GATES)
    assert gates.for_resolution("1920x1080") == {"min_fps": 3, "max_p99_ms": 100, "max_mad": 1.5, "max_gt_dtssd": 2}
    results = evaluate_gates(gates, [_result("512x288", 12.0, 90.0, mad=1.0),
                                     _result("1920x1080", 4.0, 250.0, mad=2.0)])
    verdict = {(r.resolution, r.gate): r.passed for r in results}
    assert verdict == {
        ("512x288", "min_fps"): True, ("512x288", "max_p99_ms"): True, ("512x288", "max_mad"): True,
        ("1920x1080", "min_fps"): True, ("1920x1080", "max_p99_ms"): False, ("1920x1080", "max_mad"): False,
        ("1920x1080", "max_gt_dtssd"): False,  # not measured: no --gt
    }
    missing = next(r for r in results if r.gate == "max_gt_dtssd")
    assert missing.value is None and "not measured" in missing.message and "--gt" in missing.message


def test_a_gated_resolution_that_was_not_run_fails():
    results = evaluate_gates(parse_gates(GATES), [_result("512x288", 12.0, 90.0, mad=1.0)])
    hd = [r for r in results if r.resolution == "1920x1080"]
    assert hd and not any(r.passed for r in hd) and "not benchmarked" in hd[0].message


@pytest.mark.parametrize("text, phrase", [
    ("[gates]\nmin_fps = ", "not valid TOML"),
    ("[gates]\nmin_fsp = 3", "unknown gate 'min_fsp'"),
    ("[gates]\nmin_fps = 'fast'", "must be a non-negative number"),
    ("[gates]\nmax_mad = -1", "must be a non-negative number"),
    ("[gates]\nmin_fps = true", "must be a non-negative number"),
    ("[gates.hd]\nmin_fps = 3", "is not a resolution"),
    ("min_fps = 3", "unexpected top-level key"),
    ("[thresholds]\nmin_fps = 3", "unexpected top-level key"),
    ("", "no [gates] table"),
    ("[gates]\n", "sets no thresholds"),
])
def test_bad_gates_files_are_one_line_errors(text, phrase):
    with pytest.raises(MtcError) as info:
        parse_gates(text, source="ci/gates.toml")
    message = str(info.value)
    assert phrase in message and "ci/gates.toml" in message, message
    assert "\n" not in message


def test_missing_gates_file(tmp_path):
    with pytest.raises(MtcError, match="not found"):
        load_gates(tmp_path / "nope.toml")


def test_junit_parses_and_marks_failures():
    results = [GateResult("512x288", "min_fps", ">=", 10, 12.0, True, "ok"),
               GateResult("512x288", "max_mad", "<=", 1, 3.5, False, "max_mad: 3.5 <= 1 FAILED"),
               GateResult("1920x1080", "max_gt_mad", "<=", 1, None, False, "not measured: no ground truth")]
    root = ET.fromstring(junit_xml(results).split("\n", 1)[1])
    suite = root.find("testsuite")
    assert suite.get("tests") == "3" and suite.get("failures") == "2"
    cases = suite.findall("testcase")
    assert [(c.get("classname"), c.get("name")) for c in cases] == [
        ("mtc.bench.512x288", "min_fps"), ("mtc.bench.512x288", "max_mad"), ("mtc.bench.1920x1080", "max_gt_mad")]
    assert cases[0].find("failure") is None
    assert cases[1].find("failure").get("message") == "max_mad: 3.5 <= 1 FAILED"
    assert "measured nothing" in cases[2].find("failure").text


# ---- the command on a tiny real artifact ----------------------------------------------------


def _tiny_artifact(folder: Path, *, gain=1.0, offset=0.0, reference: str | None = None) -> Path:
    """alpha = gain * mean(rgb) + offset: a real ONNX artifact that runs in microseconds."""
    from mtc.artifact.manifest import Manifest, ModelIO, Precision, TensorSpec, file_entry
    from mtc.fsutil import atomic_write_text

    src = helper.make_tensor_value_info("src", TensorProto.FLOAT, [1, 3, "h", "w"])
    pha = helper.make_tensor_value_info("pha", TensorProto.FLOAT, [1, 1, "h", "w"])
    nodes = [helper.make_node("ReduceMean", ["src"], ["m"], axes=[1], keepdims=1),
             helper.make_node("Mul", ["m", "gain"], ["g"]), helper.make_node("Add", ["g", "offset"], ["pha"])]
    inits = [helper.make_tensor("gain", TensorProto.FLOAT, [], [gain]),
             helper.make_tensor("offset", TensorProto.FLOAT, [], [offset])]
    model = helper.make_model(helper.make_graph(nodes, "tiny", [src], [pha], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True)
    onnx.save(model, str(folder / "model.onnx"))
    io = ModelIO(inputs=(TensorSpec("src", "image", shape=(1, 3, "h", "w")),),
                 outputs=(TensorSpec("pha", "alpha", shape=(1, 1, "h", "w")),))
    manifest = Manifest(model="tiny", variant="mean", task="image_matting", license="Apache-2.0",
                        model_file="model.onnx", io=io, precision=Precision(mode="int8" if reference else "fp32"),
                        files={"model.onnx": file_entry(folder / "model.onnx")},
                        provenance={"reference_artifact": reference} if reference else {})
    atomic_write_text(folder / "manifest.json", manifest.to_json())
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    fp32 = _tiny_artifact(root / "fp32")
    int8 = _tiny_artifact(root / "int8", gain=0.9, offset=0.02, reference="../fp32")
    return fp32, int8


def _invoke(*args):
    return CliRunner().invoke(bench, [str(a) for a in args], catch_exceptions=False)


# Pinned backend: "auto" depends on what is installed (OpenVINO, a GPU).
FAST = ("--backend", "onnxruntime", "-r", "64x48", "-n", "4", "--warmup", "1", "--no-e2e")


def test_cli_all_gates_pass_exit_0_and_json_schema(tiny, tmp_path):
    fp32, int8 = tiny
    gates = tmp_path / "gates.toml"
    gates.write_text("[gates]\nmin_fps = 0\nmax_p99_ms = 1e6\nmax_mad = 100\nmax_dtssd = 100\n")
    out, junit = tmp_path / "r.json", tmp_path / "r.xml"
    result = _invoke(int8, *FAST, "--gate", gates, "--json", out, "--junit", junit)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["schema"] == SCHEMA == "mtc.bench/1"
    assert set(report) >= {"schema", "artifact", "reference", "ground_truth", "settings", "machine", "results",
                           "gates", "passed", "seconds"}
    assert set(report["machine"]) >= {"cpu", "cores", "isa", "python", "onnxruntime", "libraries", "date"}
    assert report["artifact"]["precision"] == "int8" and report["artifact"]["backend"]["name"] == "onnxruntime"
    # The default reference comes from the manifest's provenance (relative to the artifact).
    assert report["reference"]["source"] == "manifest" and Path(report["reference"]["path"]).resolve() == fp32
    (r,) = report["results"]
    assert set(r) >= {"resolution", "width", "height", "downsample_ratio", "frames", "model", "end_to_end", "memory",
                      "cost", "accuracy"}
    assert r["resolution"] == "64x48" and r["frames"] == 4 and r["end_to_end"] is None
    assert set(r["model"]["latency_ms"]) == {"mean", "min", "p50", "p90", "p99", "max"}
    assert r["memory"]["host_peak_rss_bytes"] > 0
    assert r["cost"]["gflops_per_frame"] > 0 and r["cost"]["achieved_gflops_per_s"] > 0
    assert 0 < r["accuracy"]["reference"]["mad"] < 100 and r["accuracy"]["gt"] is None
    assert report["passed"] and ET.parse(junit).getroot().get("failures") == "0"


def test_cli_failing_gate_exit_1_and_junit_failure(tiny, tmp_path):
    _, int8 = tiny
    gates = tmp_path / "gates.toml"
    gates.write_text('[gates]\nmin_fps = 0\n[gates."64x48"]\nmax_mad = 0.001\n')
    junit = tmp_path / "r.xml"
    result = _invoke(int8, *FAST, "--metrics", "mad", "--gate", gates, "--junit", junit)
    assert result.exit_code == 1, result.output
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    assert cases["min_fps"].find("failure") is None
    assert "FAILED" in cases["max_mad"].find("failure").get("message")


def test_cli_bad_gates_file_is_a_usage_error(tiny, tmp_path):
    gates = tmp_path / "gates.toml"
    gates.write_text("[gates]\nmin_fps = = 3\n")
    result = CliRunner().invoke(bench, [str(tiny[0]), "--gate", str(gates)])
    assert result.exit_code == 2 and "not valid TOML" in result.output


def test_cli_gt_and_reference_match_metrics(tiny, tmp_path):
    """--gt folder + --reference: figures equal mtc.metrics on the same frames."""
    from mtc.data.builtin_clip import ClipSpec, builtin_alpha, builtin_clip

    fp32, int8 = tiny
    spec = ClipSpec(width=64, height=48, frames=4)
    gt = builtin_alpha(spec)
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    gt8 = (gt * 255).round().astype(np.uint8)
    for i, a in enumerate(gt8):
        Image.fromarray(a, mode="L").save(gt_dir / f"{i}.png")
    out = tmp_path / "r.json"
    result = _invoke(int8, *FAST, "--reference", fp32, "--gt", gt_dir, "--json", out)
    assert result.exit_code == 0, result.output
    acc = json.loads(out.read_text())["results"][0]["accuracy"]
    frames = builtin_clip(spec).astype(np.float32) / 255
    mean = frames.mean(axis=3)
    pred = np.clip(0.9 * mean + 0.02, 0, 1)
    for against, truth in (("reference", mean), ("gt", gt8)):
        expected = matting_metrics(pred, truth)
        for name, value in expected.items():
            # Conn thresholds alpha, so float32 rounding in ONNX Runtime vs numpy moves a few pixels.
            rel = 1e-2 if name == "conn" else 1e-4
            assert acc[against][name] == pytest.approx(value, rel=rel, abs=1e-6), (against, name)


def test_cli_json_to_stdout_and_no_reference(tiny):
    _, int8 = tiny
    result = CliRunner().invoke(bench, [str(int8), *FAST, "--no-reference", "--json", "-"])  # click >= 8.2
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["reference"] is None and report["results"][0]["accuracy"] == {"reference": None, "gt": None}


def test_cli_usage_errors_exit_2(tiny):
    fp32, _ = tiny
    for args in (["-r", "64by48"], ["--frames", "0"], ["--ratio", "2"], ["--metrics", "sad"],
                 ["--junit", "x.xml"], ["--reference", str(fp32), "--no-reference"]):
        result = CliRunner().invoke(bench, [str(fp32), *args])
        assert result.exit_code == 2, (args, result.output)


def test_end_to_end_on_the_tiny_artifact(tiny, tmp_path):
    out = tmp_path / "r.json"
    result = _invoke(tiny[0], "--backend", "onnxruntime", "-r", "64x48,96x64", "-n", "3", "--warmup", "0", "--no-gflops", "--json", out)
    assert result.exit_code == 0, result.output
    results = json.loads(out.read_text())["results"]
    assert [r["resolution"] for r in results] == ["64x48", "96x64"]
    from mtc.runtime.video_writer import HARDWARE_H264, hardware_encoder_problem

    usable = [HARDWARE_H264[n][0] for n in HARDWARE_H264 if hardware_encoder_problem(n) is None]
    for r in results:
        assert r["end_to_end"]["frames"] == 3 and r["end_to_end"]["fps"] > 0
        assert r["end_to_end"]["encoder"] == (usable[0] if usable else "libx264")  # what `mtc run` would use
        assert r["cost"]["gflops_per_frame"] is None


def test_console_entry_point_exit_codes(tiny, tmp_path, monkeypatch):
    """Through mtc.cli.main.main (click in non-standalone mode): 0 pass, 1 gate failed, 2 usage."""
    from mtc.cli import main as cli_main

    monkeypatch.setitem(cli_main.COMMANDS, "bench", "mtc.cli.bench:bench")
    monkeypatch.setitem(cli_main.SUMMARIES, "bench", "Benchmark an artifact.")
    logger = logging.getLogger("mtc")  # main() installs its own handler: restore it afterwards
    monkeypatch.setattr(logger, "handlers", list(logger.handlers))
    monkeypatch.setattr(logger, "propagate", logger.propagate)
    monkeypatch.setattr(logger, "level", logger.level)
    _, int8 = tiny

    def exit_code(*args) -> int:
        try:
            cli_main.main(["bench", str(int8), *FAST, *map(str, args)])
        except SystemExit as exc:
            return exc.code
        return 0

    (tmp_path / "ok.toml").write_text("[gates]\nmin_fps = 0\n")
    (tmp_path / "bad.toml").write_text("[gates]\nmax_mad = 0\n")
    assert exit_code("--gate", tmp_path / "ok.toml") == 0
    assert exit_code("--gate", tmp_path / "bad.toml") == 1
    assert exit_code("--gate", tmp_path / "missing.toml") == 2


def _bench_registered() -> bool:
    from mtc.cli.main import COMMANDS

    return "bench" in COMMANDS


@pytest.mark.skipif(not _bench_registered(), reason="`bench` is not yet in mtc.cli.main.COMMANDS")
def test_subprocess_exit_codes(tiny, tmp_path):
    _, int8 = tiny
    ok, bad = tmp_path / "ok.toml", tmp_path / "bad.toml"
    ok.write_text("[gates]\nmin_fps = 0\n")
    bad.write_text("[gates]\nmax_mad = 0\n")

    def run(*args):
        return subprocess.run([sys.executable, "-m", "mtc", "bench", str(int8), *FAST, *map(str, args)],
                              capture_output=True, text=True, env=os.environ.copy(), timeout=300)

    assert run("--gate", ok).returncode == 0
    assert run("--gate", bad).returncode == 1
    assert run("--gate", tmp_path / "missing.toml").returncode == 2


# ---- one real run: the pretrained RVM ------------------------------------------------------


def test_real_rvm_end_to_end(rvm_artifact, tmp_path):
    out = tmp_path / "r.json"
    gates = tmp_path / "gates.toml"
    gates.write_text('[gates]\nmin_fps = 0.1\nmax_mad = 0.01\nmax_dtssd = 0.01\n')
    result = _invoke(rvm_artifact, "--backend", "onnxruntime", "-r", "160x96", "-n", "4", "--warmup", "1", "--reference", rvm_artifact,
                     "--metrics", "mad,dtssd", "--gate", gates, "--json", out)
    assert result.exit_code == 0, result.output
    (r,) = json.loads(out.read_text())["results"]
    assert r["downsample_ratio"] == 1.0 and r["model_input"] == [160, 96]
    assert r["model"]["fps"] > 0 and r["end_to_end"]["fps"] > 0 and r["end_to_end"]["frames"] == 4
    assert r["cost"]["gflops_per_frame"] > 0.1
    # Same artifact, same backend, same frames: identical alpha.
    assert r["accuracy"]["reference"] == {"mad": 0.0, "dtssd": 0.0, "frames": 4}


def test_input_video_and_alpha_video_ground_truth(tiny, tmp_path):
    """--input VIDEO at its own size is decoded directly end to end; --gt may be an alpha video."""
    from mtc.bench.data import iter_ground_truth
    from mtc.data.builtin_clip import ClipSpec, builtin_alpha, write_builtin_clip
    from mtc.runtime.video_writer import VideoWriter

    spec = ClipSpec(width=64, height=48, frames=5)
    video = write_builtin_clip(tmp_path / "in.mp4", spec)
    gt = builtin_alpha(spec)
    gt_video = tmp_path / "gt.mp4"
    with VideoWriter(gt_video, width=64, height=48, fps=24, kind="rgb") as writer:
        for a in gt:
            writer.write(np.repeat((a * 255).round().astype(np.uint8)[..., None], 3, axis=2))
    decoded = list(iter_ground_truth(gt_video, 64, 48))
    assert len(decoded) == 5 and decoded[0].dtype == np.uint8
    assert np.abs(np.stack(decoded) / 255.0 - gt).mean() < 0.02  # lossy H.264, but the same matte
    resized = next(iter_ground_truth(gt_video, 32, 24))
    assert resized.shape == (24, 32) and resized.dtype == np.float32

    out = tmp_path / "r.json"
    result = _invoke(tiny[0], "--backend", "onnxruntime", "--input", video, "-n", "5", "--warmup", "1", "--gt", gt_video, "--metrics", "mad",
                     "--json", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    (r,) = report["results"]
    assert r["resolution"] == "64x48" and r["end_to_end"]["source"] == "input" and r["end_to_end"]["frames"] == 5
    assert report["settings"]["input"] == str(video) and r["accuracy"]["gt"]["frames"] == 5


def test_json_to_stdout_holds_only_the_json_even_when_a_library_prints(tiny, monkeypatch, capfd):
    import mtc.bench.runner

    real = mtc.bench.runner.run_bench

    def noisy(config):
        os.write(1, b"native library chatter on fd 1\n")  # as C++ code printing to stdout does
        print("a stray print()")
        logging.getLogger("mtc").warning("a log line")
        return real(config)

    monkeypatch.setattr(mtc.bench.runner, "run_bench", noisy)
    result = CliRunner().invoke(bench, [str(tiny[0]), *FAST, "--no-reference", "--json", "-"])
    captured = capfd.readouterr()
    assert result.exit_code == 0, result.output
    # CliRunner swaps sys.stdout; the file descriptor 1 stream is what a shell pipe would see.
    assert json.loads(result.stdout)["schema"] == SCHEMA
    assert "chatter" not in result.stdout and "stray" not in result.stdout
    assert "chatter" in captured.err and "chatter" not in captured.out


def test_bench_json_dash_in_a_real_process_parses_as_json(tiny):
    result = subprocess.run([sys.executable, "-m", "mtc", "bench", str(tiny[0]), "--backend", "onnxruntime", "-r",
                             "64x48", "-n", "2", "--warmup", "0", "--no-gflops", "--json", "-"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # nothing but the JSON: logs and the table are on stderr
    assert report["schema"] == SCHEMA and report["results"][0]["end_to_end"]["frames"] == 2
    assert "encoding" in result.stderr and "resolution" in result.stderr
