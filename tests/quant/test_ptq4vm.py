"""`mtc quantize --int8 --method ptq4vm` on a tiny matting artifact: the learned Q/DQ artifact
goes through the checks, equals the module it was learned as, resumes after an interruption
between blocks, and bad options stop with one line."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")

from mtc.artifact.manifest import (  # noqa: E402
    MANIFEST_NAME,
    CheckSize,
    Manifest,
    ModelIO,
    Preprocess,
    TensorSpec,
    file_entry,
)
from mtc.errors import MtcError  # noqa: E402
from mtc.quant.affine import apply_corrections  # noqa: E402
from mtc.quant.config import Fallback, Gates, Int8Config, Ptq4vmConfig  # noqa: E402
from mtc.quant.data_plan import DataPlan  # noqa: E402
from mtc.quant.pipeline import quantize_artifact, work_folder  # noqa: E402
from mtc.quant.ptq4vm import learn  # noqa: E402
from mtc.quant.qdq import insert_qdq, plan_qdq  # noqa: E402
from mtc.quant.ranges import asymmetric_range, collect_stats  # noqa: E402
from mtc.quant.torch_graph import to_torch_feeds  # noqa: E402
from mtc.runtime.progress import Stages  # noqa: E402

SMALL = DataPlan(calib_frames=4, check_frames=4, settings=((48, 32, None),))
LENIENT = Gates(max_mad=1000.0, max_dtssd=1000.0)
# Few iterations: these tests check the wiring, tests/quant/test_reconstruct.py what learning buys.
QUICK = Ptq4vmConfig(iterations=6, samples=4, gac_iterations=4, threads=1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _conv(rng, name, x, y, cin, cout, k=3):
    weight = rng.normal(0, np.sqrt(2 / (cin * k * k)), (cout, cin, k, k)).astype(np.float32)
    node = helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [y], name=name, pads=[k // 2] * 4)
    return node, [numpy_helper.from_array(weight, f"{name}_w"),
                  numpy_helper.from_array(rng.normal(0, 0.1, cout).astype(np.float32), f"{name}_b")]


def _residual_matting_model() -> onnx.ModelProto:
    """src -> conv, relu -> residual unit (conv, relu, conv, add) -> relu -> 1x1 conv -> sigmoid -> pha:
    three blocks of quantized convs."""
    rng = np.random.default_rng(3)
    n = helper.make_node
    c1, i1 = _conv(rng, "c1", "src", "a1", 3, 8)
    c2, i2 = _conv(rng, "c2", "r1", "a2", 8, 8)
    c3, i3 = _conv(rng, "c3", "r2", "a3", 8, 8)
    c4, i4 = _conv(rng, "c4", "r3", "logit", 8, 1, k=1)
    nodes = [c1, n("Relu", ["a1"], ["r1"], name="relu1"), c2, n("Relu", ["a2"], ["r2"], name="relu2"), c3,
             n("Add", ["a3", "r1"], ["s3"], name="add"), n("Relu", ["s3"], ["r3"], name="relu3"), c4,
             n("Sigmoid", ["logit"], ["pha"], name="sigmoid")]
    graph = helper.make_graph(nodes, "residual", [helper.make_tensor_value_info("src", TensorProto.FLOAT,
                                                                                [1, 3, "h", "w"])],
                              [helper.make_tensor_value_info("pha", TensorProto.FLOAT, [1, 1, "h", "w"])],
                              initializer=i1 + i2 + i3 + i4)
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _artifact(folder):
    folder.mkdir()
    onnx.save(_residual_matting_model(), str(folder / "model.onnx"))
    io = ModelIO(inputs=(TensorSpec("src", "image", shape=(1, 3, "h", "w")),),
                 outputs=(TensorSpec("pha", "alpha", shape=(1, 1, "h", "w")),), preprocess=Preprocess())
    manifest = Manifest(model="toy", variant="v", task="image_matting", license="MIT", model_file="model.onnx", io=io,
                        files={"model.onnx": file_entry(folder / "model.onnx")}, check_sizes=(CheckSize(48, 32),))
    (folder / MANIFEST_NAME).write_text(manifest.to_json())
    return folder


def _quantize(source, output, **options):
    config = Int8Config(learning=QUICK, weight_bits=8, activation_type="uint8", float_budget=0.0)
    return quantize_artifact(source, output, precision="int8", config=config, gates=LENIENT, data=SMALL,
                             fallback=Fallback(enabled=False), **options)


def test_cli_ptq4vm_writes_a_checked_qdq_artifact_with_its_loss_curves(tmp_path):
    source = _artifact(tmp_path / "toy")
    out = tmp_path / "int8"
    result = subprocess.run([sys.executable, "-m", "mtc", "quantize", str(source), "-o", str(out), "--int8",
                             "--method", "ptq4vm", "--preset", "fast", "--ptq4vm-iterations", "5",
                             "--ptq4vm-samples", "4", "--ptq4vm-threads", "1", "--calib-frames", "4",
                             "--max-mad", "1000", "--max-dtssd", "1000", "--no-fallback"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "PTQ4VM stage 1: block 1/2" in result.stderr  # one stage per block
    assert "speed: " in result.stdout and "x ONNX Runtime FP32 on " in result.stdout  # what its timing measured
    report = json.loads((out / "report.json").read_text())
    learning = report["int8"]["learning"]
    assert learning["method"] == "ptq4vm" and learning["iterations"] == 5 and learning["samples"] == 4
    # The speed preset leaves the small 1x1 conv c4 in float.
    assert [b["layers"] for b in learning["blocks"]] == [["c1"], ["c2", "c3"]]
    assert all(b["iterations"] == 5 and len(b["curve"]) == 5 for b in learning["blocks"])
    assert all(b["kept"] in ("learned", "nearest") and b["nearest_error"] >= 0 for b in learning["blocks"])
    choice = report["int8"]["affine_choice"]  # None when stage 2 did not lower its own error
    assert choice is None or choice["chosen"] in ("gac", "closed_form") and set(choice) > {"gac", "closed_form"}
    assert report["check"]["clips"] and report["int8"]["kernels_vs_simulation"]  # the same checks ran
    model = onnx.load(str(out / "model.onnx"))
    int8_weights = [i for i in model.graph.initializer if i.data_type == TensorProto.INT8 and len(i.dims) == 4]
    assert len(int8_weights) == 3
    assert json.loads((out / MANIFEST_NAME).read_text())["precision"]["mode"] == "int8"
    page = (out / "report.html").read_text()
    assert "(PTQ4VM)" in page and "block reconstruction loss per iteration" in page
    assert page.count("<polyline") == 2 + 2  # a curve per block, besides the two per-frame charts
    assert not work_folder(out).exists()  # checkpoints removed once the artifact is written


def _calibrated(model, feeds):
    plan = plan_qdq(model, quantize_outputs=True)
    stats = collect_stats(model, plan.activation_tensors(), feeds)
    return plan, {k: asymmetric_range(s, "mse") for k, s in stats.items()}


def test_the_exported_qdq_graph_equals_the_learned_fake_quant_module():
    model = _residual_matting_model()
    rng = np.random.default_rng(0)
    feeds = [{"src": rng.random((1, 3, 32, 48), dtype=np.float32)} for _ in range(6)]
    plan, ranges = _calibrated(model, feeds)
    # A learning rate that moves the affines a visible amount in a few steps, and a stage 1 short
    # enough to leave stage 2 something to gain, so that it is kept and the fold is exercised.
    config = Ptq4vmConfig(iterations=2, samples=6, batch=2, gac_iterations=20, gac_learning_rate=5e-3, threads=1)

    learned = learn(model, plan, ranges, feeds, config=config, activation_type="uint8", weight_bits=8,
                    outputs=["pha"], stages=Stages())

    assert learned.report["gac"]["kept"] and learned.corrections  # stage 2 is part of what is compared
    exported = apply_corrections(insert_qdq(model, plan, learned.ranges, activation_type="uint8",
                                            rounded=learned.rounded), learned.corrections)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the exact float simulation
    session = ort.InferenceSession(exported.SerializeToString(), options, providers=["CPUExecutionProvider"])
    for seed in (10, 11):
        feed = {"src": np.random.default_rng(seed).random((1, 3, 32, 48), dtype=np.float32)}
        with torch.no_grad():
            want = learned.module(to_torch_feeds(feed))["pha"].numpy()
        difference = np.abs(session.run(None, feed)[0] - want)
        # Within quantization tolerance: the folded gamma rounds differently in float32 from the
        # module's multiply, which flips a rare rounding (measured: one pixel of 1536, by 0.009).
        assert (difference > 1e-5).mean() <= 0.01 and difference.max() < 0.05


@pytest.mark.parametrize(("kernel_error", "bits"), [(0.0, 8), (5.0, 7)])
def test_learned_int8_decides_its_weight_bits_before_it_learns_and_learns_once(tmp_path, monkeypatch, kernel_error,
                                                                               bits):
    """Left open, the weight bits are decided on the calibrated plan before learning (7 where the
    kernels measure unfaithful to the simulation, as on CPUs whose u8s8 kernels saturate), so
    learning, the longest step, runs once."""
    from mtc.quant import pipeline, ptq4vm

    real_learn, real_fidelity = ptq4vm.learn, pipeline.kernel_fidelity
    learned_on = []

    def counting_learn(*args, **kwargs):
        learned_on.append(kwargs["weight_bits"])
        return real_learn(*args, **kwargs)

    monkeypatch.setattr(ptq4vm, "learn", counting_learn)
    monkeypatch.setattr(pipeline, "kernel_fidelity", lambda *args, **kwargs: {
        **real_fidelity(*args, **kwargs), "mad": kernel_error, "simulation_vs_fp32_mad": 1.0})
    config = Int8Config(learning=QUICK, activation_type="uint8", float_budget=0.0)
    result = quantize_artifact(_artifact(tmp_path / "toy"), tmp_path / "int8", precision="int8", config=config,
                               gates=LENIENT, data=SMALL, fallback=Fallback(enabled=False))

    assert learned_on == [bits]
    int8 = result.report["int8"]
    assert int8["weight_bits"] == int8["weight_bits_choice"]["chosen"] == bits
    assert int8["weight_bits_choice"]["probe"]["mad"] == kernel_error
    weights = [numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "int8" / "model.onnx")).graph.initializer
               if i.name.endswith("__int8")]
    assert weights and max(np.abs(w.astype(np.int32)).max() for w in weights) == (63 if bits == 7 else 127)


class _Interrupted(Exception):
    pass


class _StopAtBlock(Stages):
    """Stages that interrupt the run as block `number` starts (after the earlier ones were saved)."""

    def __init__(self, number: int):
        super().__init__()
        self.number = number

    @contextlib.contextmanager
    def stage(self, name, total=None, *, counts=True):
        if name.startswith(f"PTQ4VM stage 1: block {self.number}/"):
            raise _Interrupted
        with super().stage(name, total, counts=counts) as advance:
            yield advance


def test_a_run_interrupted_between_blocks_resumes_to_the_same_artifact(tmp_path, caplog):
    source = _artifact(tmp_path / "toy")
    straight = _quantize(source, tmp_path / "straight")

    out = tmp_path / "resumed"
    with pytest.raises(_Interrupted):
        _quantize(source, out, stages=_StopAtBlock(3))
    assert (work_folder(out) / "blocks-w8.pt").exists() and not out.exists()
    with caplog.at_level("INFO", logger="mtc"):
        resumed = _quantize(source, out)

    assert "resuming block reconstruction after block 2 of 3" in caplog.text
    assert resumed.report["int8"]["learning"]["blocks"] == straight.report["int8"]["learning"]["blocks"]
    want = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "straight" / "model.onnx")).graph.initializer}
    got = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(out / "model.onnx")).graph.initializer}
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
    assert not work_folder(out).exists()


@pytest.mark.parametrize(("flags", "message"), [
    (["--preset", "thorough"], "--preset thorough says how long PTQ4VM learns: add --method ptq4vm"),
    (["--method", "ptq4vm", "--preset", "fast", "--preset", "thorough"], "--preset fast and --preset thorough: choose one"),
    (["--ptq4vm-batch", "2"], "--ptq4vm-batch tunes PTQ4VM: add --method ptq4vm"),
    (["--method", "ptq4vm", "--weight-rounding", "gptq"], "drop --weight-rounding gptq"),
    (["--method", "ptq4vm", "--ptq4vm-iterations", "0"], "--ptq4vm-iterations"),
    (["--method", "ptq4vm", "--ptq4vm-qdrop", "1.5"], "--ptq4vm-qdrop"),
    (["--check-backend", "tensorrt"], "--check-backend"),
])
def test_bad_ptq4vm_options_stop_with_one_line(tmp_path, capsys, flags, message):
    from mtc.cli.main import main

    source = _artifact(tmp_path / "toy")
    with pytest.raises(SystemExit) as exit_info:
        main(["quantize", str(source), "-o", str(tmp_path / "out"), "--int8", *flags])
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and message in error
    assert error.splitlines()[-1].startswith("Error:") and "Traceback" not in error
    assert not (tmp_path / "out").exists()


def test_ptq4vm_with_fp16_is_refused(tmp_path, capsys):
    from mtc.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["quantize", str(_artifact(tmp_path / "toy")), "-o", str(tmp_path / "out"), "--fp16", "--method", "ptq4vm"])
    assert exit_info.value.code == 2 and "--method ptq4vm learns INT8 quantization" in capsys.readouterr().err


def test_check_backend_with_fp16_is_refused(tmp_path, capsys):
    from mtc.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["quantize", str(_artifact(tmp_path / "toy")), "-o", str(tmp_path / "out"), "--fp16",
              "--check-backend", "openvino"])
    assert exit_info.value.code == 2 and "--check-backend chooses whose integer kernels check INT8" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad", [{"iterations": 0}, {"samples": 0}, {"drop": -0.1}, {"threads": 0},
                                 {"gac_iterations": -1}])
def test_bad_ptq4vm_settings_are_refused_by_the_config(bad):
    with pytest.raises(MtcError):
        Ptq4vmConfig(**bad)


# ---- the flow-assisted temporal loss ---------------------------------------------------------


def _texture(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth random texture in [0, 1], (H, W, 3): structure DIS can follow."""
    cv2 = pytest.importorskip("cv2")
    noise = np.random.default_rng(seed).random((height, width, 3)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), 2.0)
    return (smooth - smooth.min()) / (smooth.max() - smooth.min())


def test_samples_are_the_smallest_and_spread_in_runs_over_every_source():
    from mtc.quant.ptq4vm import SAMPLE_RUN, choose_samples

    def feeds(source, count, side):
        return [{"src": np.zeros((1, 3, side, side), np.float32), "tag": np.array([source, i])} for i in range(count)]

    builtin, mine, hd = feeds(0, 24, 8), feeds(1, 24, 8), feeds(2, 24, 16)
    recorded = builtin + hd + mine + feeds(3, 1, 32)

    def tags(count):
        return [tuple(int(v) for v in recorded[i]["tag"]) for i in choose_samples(recorded, count)]

    picked = tags(24)
    assert len(picked) == 24 and all(source in (0, 1) for source, _ in picked)  # the smallest only
    assert sum(source == 1 for source, _ in picked) == 12  # both sources, not the first recorded
    runs = [picked[i:i + SAMPLE_RUN] for i in range(0, 24, SAMPLE_RUN)]
    for run in runs:  # consecutive frames of one clip
        assert len({source for source, _ in run}) == 1 and [i for _, i in run] == list(range(run[0][1], run[0][1] + 4))
    assert len(set(picked)) == 24 and picked == sorted(picked)  # no frame twice, recording order
    # room left after the smallest: the next size, spread likewise; everything when it all fits
    assert tags(50)[48:] == [(2, 0), (2, 1)]
    assert choose_samples(builtin, 24) == list(range(24)) and choose_samples(builtin[:5], 24) == list(range(5))
    odd = choose_samples(builtin, 7)
    assert len(odd) == len(set(odd)) == 7 and odd[0] == 0


def test_the_time_left_weighs_each_block_by_the_elements_it_produces(monkeypatch):
    import mtc.quant.ptq4vm as ptq4vm
    from mtc.quant.reconstruct import Block

    # relu (8x8 = 64 elements) | maxpool and relu (16 each) | relu (16)
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("MaxPool", ["a"], ["b"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Relu", ["b"], ["c"]), helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    blocks = [Block(0, 1, ("a",), ("a",)), Block(1, 3, ("c",), ("c",)), Block(3, 4, ("y",), ("y",))]
    names = []

    class Recorder:
        @contextlib.contextmanager
        def stage(self, name, total=None):
            names.append(name)
            yield lambda: None

    clock = iter([0.0, 4.0, 5.0])  # the first block learns for 4 s, the second for 1 s
    monkeypatch.setattr(ptq4vm.time, "perf_counter", lambda: next(clock))
    bars = ptq4vm.BlockBars(Recorder(), 10, model, {"x": np.zeros((1, 1, 8, 8), np.float32)})
    assert [bars.weight(b) for b in blocks] == [64.0, 32.0, 16.0]
    for number in range(3):
        with bars(number, blocks):
            pass
    assert names[0].endswith("block 1/3 (a)")  # nothing learned yet to estimate from
    # 4 s for 64 elements: the 48 left take 3 s (counting blocks would say 8 s)
    assert names[1].endswith("block 2/3 (c; all blocks: about 3.0 s left)")
    assert names[2].endswith("block 3/3 (y; all blocks: about 0.8 s left)")  # 5 s for 96: 16 more
    unsized = ptq4vm.BlockBars(Recorder(), 10, model, {})  # ONNX Runtime cannot run it: blocks count alike
    assert [unsized.weight(b) for b in blocks] == [1.0, 1.0, 1.0]


def test_the_temporal_loss_pairs_only_frames_recorded_one_after_the_other():
    from mtc.quant.ptq4vm import _frame_pairs

    rng = np.random.default_rng(3)
    base = rng.random((3, 40, 56)).astype(np.float32)
    # four frames of a texture moving one pixel a frame: every neighbouring pair can be followed
    samples = [{"src": np.roll(base, t, axis=2)[None]} for t in range(4)]
    targets = [{"pha": np.zeros((1, 1, 40, 56), np.float32)} for _ in samples]
    pairs, report = _frame_pairs(samples, [True, False, True], targets, "src", ["pha"], lambda: None)
    assert [(a, b) for a, b, _ in pairs] == [(0, 1), (2, 3)] and report["candidates"] == 2


def test_flow_warps_a_translated_frame_back_onto_the_first():
    from mtc.quant.flow import dis_flow, warp_back

    scene = _texture(112, 144, seed=1)
    dx, dy = 3, 2  # the content moves right and down
    first, second = scene[16:96, 16:128], scene[16 - dy:96 - dy, 16 - dx:128 - dx]

    flow = dis_flow(first, second)
    inner = (slice(12, -12), slice(12, -12))
    assert np.abs(flow[inner][..., 0] - dx).mean() < 0.25 and np.abs(flow[inner][..., 1] - dy).mean() < 0.25
    as_tensor = torch.from_numpy(np.ascontiguousarray(second.transpose(2, 0, 1)))[None]
    warped = warp_back(as_tensor, flow)[0].numpy().transpose(1, 2, 0)
    assert np.abs(warped[inner] - first[inner]).mean() < 0.1 * np.abs(second[inner] - first[inner]).mean()
    exact = warp_back(as_tensor, np.broadcast_to(np.float32([dx, dy]), flow.shape).copy())[0].numpy()
    np.testing.assert_allclose(exact.transpose(1, 2, 0)[:-dy, :-dx], first[:-dy, :-dx], atol=1e-5)


def _moving_square(shift: int):
    """A textured square over a textured background, moved right by `shift` pixels."""
    background, square = _texture(80, 112, seed=2), _texture(32, 32, seed=3)
    frames = []
    for x in (40, 40 + shift):
        frame = background.copy()
        frame[24:56, x:x + 32] = square
        frames.append(frame)
    return frames


def test_forward_backward_check_masks_the_disoccluded_and_covered_background():
    from mtc.quant.flow import consistent, frame_pair

    shift = 6
    first, second = _moving_square(shift)
    # Exact flows: the square moves by `shift`, the background stays.
    forward = np.zeros((80, 112, 2), np.float32)
    forward[24:56, 40:72, 0] = shift
    backward = np.zeros_like(forward)
    backward[24:56, 40 + shift:72 + shift, 0] = -shift
    exact = consistent(forward, backward)
    assert exact[24:56, 72:72 + shift].max() == 0  # background the square covers at t+1: no counterpart
    assert exact[24:56, 40:72].min() == 1 and exact[:20].min() == 1  # the square itself and far background
    revealed = consistent(backward, forward)  # seen from t+1: the strip the square uncovered
    assert revealed[24:56, 40:40 + shift].max() == 0 and revealed[24:56, 40 + shift:72 + shift].min() == 1

    estimated = frame_pair(second, first).valid  # DIS, from t+1 back to t
    assert estimated[26:54, 40:40 + shift].mean() < 0.3  # the disocclusion is mostly masked
    assert estimated[4:20, 8:104].mean() > 0.9 and estimated[30:50, 52:66].mean() > 0.9


def test_temporal_error_is_zero_for_the_teacher_and_counts_only_valid_pixels():
    from mtc.quant.flow import FramePair, temporal_error

    rng = np.random.default_rng(4)
    teacher_t, teacher_next = (torch.from_numpy(rng.random((1, 1, 16, 16), dtype=np.float32)) for _ in range(2))
    valid = np.ones((16, 16), np.float32)
    valid[:, :8] = 0
    pair = FramePair(np.zeros((16, 16, 2), np.float32), valid)
    assert temporal_error(teacher_t, teacher_next, teacher_t, teacher_next, pair).item() == 0
    flicker = teacher_next.clone()
    flicker[..., :8] += 0.5  # only where the mask says the motion cannot be followed
    assert temporal_error(teacher_t, flicker, teacher_t, teacher_next, pair).item() < 1e-12
    flicker[..., 8:] += 0.5
    assert temporal_error(teacher_t, flicker, teacher_t, teacher_next, pair).item() == pytest.approx(0.25)


def test_stage_2_adds_the_temporal_loss_on_consecutive_frames_it_can_follow():
    scene = _texture(64, 96, seed=5)
    frames = [scene[8 + k:40 + k, 8 + 2 * k:56 + 2 * k] for k in range(5)]  # a slow pan
    frames.append(_texture(32, 48, seed=6))  # then a scene cut
    feeds = [{"src": np.ascontiguousarray(f.transpose(2, 0, 1)[None])} for f in frames]
    model = _residual_matting_model()
    plan, ranges = _calibrated(model, feeds)
    config = Ptq4vmConfig(iterations=2, samples=6, batch=2, gac_iterations=3, threads=1)

    learned = learn(model, plan, ranges, feeds, config=config, activation_type="uint8", weight_bits=8,
                    outputs=["pha"], image="src", stages=Stages())

    temporal = learned.report["gac"]["temporal"]
    assert temporal["candidates"] == 5 and temporal["pairs"] == 4  # the pair across the cut is left out
    assert temporal["weight"] == 1.0 and temporal["valid_share"] > 0.7


def test_preset_names_a_placement_and_an_effort_and_flags_override_the_effort(tmp_path, monkeypatch):
    import mtc.quant.pipeline
    from mtc.cli.main import main
    from mtc.quant.config import PRESETS, PTQ4VM_PRESETS

    seen = {}

    def capture(source, output, **options):
        seen.update(options)
        raise SystemExit(0)

    monkeypatch.setattr(mtc.quant.pipeline, "quantize_artifact", capture)
    source = _artifact(tmp_path / "toy")
    with pytest.raises(SystemExit):
        main(["quantize", str(source), "-o", str(tmp_path / "out"), "--int8", "--method", "ptq4vm",
              "--preset", "openvino", "--preset", "thorough", "--ptq4vm-qdrop", "0.25"])
    config = seen["config"]
    assert config.min_mac_share == PRESETS["openvino"].min_mac_share and config.method == "mse"
    assert config.learning.iterations == PTQ4VM_PRESETS["thorough"].iterations and config.learning.drop == 0.25

    seen.clear()
    with pytest.raises(SystemExit):
        main(["quantize", str(source), "-o", str(tmp_path / "out"), "--int8", "--method", "ptq4vm"])
    assert seen["config"].learning == PTQ4VM_PRESETS["fast"]  # the default effort, the manifest's placement
    assert seen["config"].min_mac_share == PRESETS["speed"].min_mac_share
