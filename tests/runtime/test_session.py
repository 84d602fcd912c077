import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort
import pytest

import mtc.runtime
from mtc.artifact.manifest import ModelIO, Preprocess, StatePair, TensorSpec
from mtc.errors import MtcError
from mtc.runtime.session import COMPOSITE_ROWS, MattingSession


class RecordingBackend:
    """A numpy backend: alpha = mean of the image tensor; state counts frames."""

    name = "recording"

    def __init__(self, with_state=False):
        self.input_names = ("img", "s_in") if with_state else ("img",)
        self.output_names = ("alpha", "s_out") if with_state else ("alpha",)
        self.feeds = []

    def run(self, feeds):
        self.feeds.append({k: v.copy() for k, v in feeds.items()})
        out = {"alpha": feeds["img"].mean(axis=1, keepdims=True)}
        if "s_in" in feeds:
            out["s_out"] = feeds["s_in"] + 1
        return out


def _toy_io(preprocess=Preprocess(), with_state=False):
    inputs = [TensorSpec("img", "image")] + ([TensorSpec("s_in", "state")] if with_state else [])
    # alpha = the mean of the normalized image, which a mean/std of 0.5 puts in [-1, 1]
    outputs = [TensorSpec("alpha", "alpha", value_range=(-1.0, 1.0))] + ([TensorSpec("s_out", "state")] if with_state else [])
    states = (StatePair("s_in", "s_out", initial_shape=(1,), initial_value=0.0),) if with_state else ()
    return ModelIO(tuple(inputs), tuple(outputs), states, preprocess)


def _frame(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_normalization_follows_manifest():
    backend = RecordingBackend()
    session = MattingSession(_toy_io(Preprocess(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))), backend)
    frame = _frame(20, 30)
    session.process(frame)
    expected = (frame.transpose(2, 0, 1)[None] / 255.0 - 0.5) / 0.5
    np.testing.assert_allclose(backend.feeds[0]["img"], expected, atol=1e-6)


def test_fixed_resize_rule_and_alpha_back_at_frame_size():
    backend = RecordingBackend()
    session = MattingSession(_toy_io(Preprocess(resize="fixed", fixed_size=(32, 48))), backend)
    matte = session.process(_frame(50, 70))
    assert backend.feeds[0]["img"].shape == (1, 3, 32, 48)
    assert matte.alpha.shape == (50, 70)
    assert matte.foreground.shape == (50, 70, 3)


def test_a_resized_alpha_stays_within_its_declared_range():
    """Lanczos overshoots beside a hard edge: the alpha the session returns at the frame's size
    is clipped back to the output's value range, as the model's own output is."""
    class Step:
        name, input_names, output_names = "step", ("img",), ("alpha",)

        def run(self, feeds):
            alpha = np.zeros((1, 1, 32, 48), np.float32)
            alpha[..., 24:] = 1.0  # a hard edge: the worst case for Lanczos
            return {"alpha": alpha}

    io = ModelIO((TensorSpec("img", "image"),), (TensorSpec("alpha", "alpha", value_range=(0.0, 1.0)),), (),
                 Preprocess(resize="fixed", fixed_size=(32, 48), resize_filter="lanczos"))
    unclipped = MattingSession(io, Step()).process(_frame(50, 170)).alpha
    import dataclasses

    free = dataclasses.replace(io, outputs=(TensorSpec("alpha", "alpha"),))
    overshoot = MattingSession(free, Step()).process(_frame(50, 170)).alpha

    assert overshoot.min() < -0.01 and overshoot.max() > 1.01  # what the filter alone gives
    assert unclipped.min() == 0.0 and unclipped.max() == 1.0
    np.testing.assert_array_equal(unclipped, np.clip(overshoot, 0, 1))


def test_reference_resize_rule_floors_to_multiple():
    backend = RecordingBackend()
    session = MattingSession(_toy_io(Preprocess(resize="reference", reference_side=64, multiple_of=32)), backend)
    session.process(_frame(100, 150))
    # Both sides above 64: the shorter becomes 64, 150 * 64 / 100 = 96.
    assert backend.feeds[0]["img"].shape == (1, 3, 64, 96)


def test_state_is_carried_reset_on_size_change_and_on_demand():
    backend = RecordingBackend(with_state=True)
    session = MattingSession(_toy_io(with_state=True), backend)
    for _ in range(3):
        session.process(_frame(20, 20))
    assert [float(f["s_in"][0]) for f in backend.feeds] == [0, 1, 2]
    session.process(_frame(24, 20))  # new size: the old state cannot apply
    session.reset()
    session.process(_frame(24, 20))
    assert [float(f["s_in"][0]) for f in backend.feeds[3:]] == [0, 0]
    assert session.state_resets == 1


def test_scene_cut_resets_state():
    backend = RecordingBackend(with_state=True)
    session = MattingSession(_toy_io(with_state=True), backend, scene_cut_threshold=30.0)
    dark, bright = np.full((36, 64, 3), 20, np.uint8), np.full((36, 64, 3), 220, np.uint8)
    for frame in (dark, dark, bright, bright):
        session.process(frame)
    assert [float(f["s_in"][0]) for f in backend.feeds] == [0, 1, 0, 1]
    assert session.state_resets == 1


# ---- the real pretrained RVM ---------------------------------------------------------------


@pytest.fixture(scope="module")
def clip():
    from mtc.data.builtin_clip import ClipSpec, builtin_clip

    return builtin_clip(ClipSpec(width=320, height=192, frames=12))


def test_runtime_equals_plain_onnxruntime_on_official_file(rvm_artifact, rvm_onnx, clip):
    session = mtc.runtime.load(rvm_artifact, backend="onnxruntime", scene_cut_threshold=None)
    plain = ort.InferenceSession(str(rvm_onnx), providers=["CPUExecutionProvider"])
    state = [np.zeros((1, 1, 1, 1), np.float32)] * 4
    for frame in clip:
        src = frame.transpose(2, 0, 1)[None].astype(np.float32) / 255.0
        fgr, pha, *state = plain.run(None, {"src": src, **dict(zip(["r1i", "r2i", "r3i", "r4i"], state)),
                                            "downsample_ratio": np.array([1.0], np.float32)})
        matte = session.process(frame)
        np.testing.assert_allclose(matte.alpha, pha[0, 0], atol=1e-5)
        np.testing.assert_allclose(matte.foreground, fgr[0].transpose(1, 2, 0), atol=1e-5)


def test_recurrent_state_changes_later_frames(rvm_artifact, clip):
    carried = mtc.runtime.load(rvm_artifact, scene_cut_threshold=None)
    stateless = mtc.runtime.load(rvm_artifact, scene_cut_threshold=None)
    for frame in clip[:11]:
        with_state = carried.process(frame).alpha.copy()
        stateless.reset()
        without_state = stateless.process(frame).alpha.copy()
    # Frame 10: the recurrent decoder has seen 10 frames of context.
    assert np.abs(with_state - without_state).mean() > 1e-3


def test_auto_downsample_ratio(rvm_artifact):
    session = mtc.runtime.load(rvm_artifact)
    # min(512 / max(h, w), 1), snapped to 1/k within 10%: RVM's recommended HD 0.25 and 4K 0.125
    assert session.ratio_for(1080, 1920) == 0.25 and session.ratio_for(2160, 3840) == 0.125
    assert session.ratio_for(720, 1280) == pytest.approx(0.4)  # 1/3 and 1/2 are too far from 0.4
    assert session.ratio_for(288, 512) == 1.0
    fixed = mtc.runtime.load(rvm_artifact, downsample_ratio=0.25)
    assert fixed.ratio_for(1080, 1920) == 0.25


def test_scene_cut_in_builtin_clip_is_detected(rvm_artifact):
    from mtc.data.builtin_clip import ClipSpec, builtin_clip, scene_cut_frames

    spec = ClipSpec(width=160, height=96)
    session = mtc.runtime.load(rvm_artifact)
    for frame in builtin_clip(spec):
        session.process(frame)
    assert session.state_resets == len(scene_cut_frames(spec)) >= 1


def test_tampered_artifact_is_refused(rvm_artifact, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(rvm_artifact, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(MtcError, match="does not match its manifest hash"):
        mtc.runtime.load(copy)


# ---- boundaries ----------------------------------------------------------------------------


def _modules_after(code: str) -> set:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_runtime_import_leaves_torch_out():
    pytest.importorskip("torch", reason="torch is not installed, so importing it by accident is impossible")
    modules = _modules_after("import mtc.runtime, mtc.runtime.session, mtc.runtime.apply, mtc.runtime.images, "
                             "mtc.runtime.video_reader, mtc.runtime.video_writer")
    assert "torch" not in modules


def test_cli_help_and_version_import_nothing_heavy():
    code = ("from mtc.cli.main import cli\n"
            "for args in (['--help'], ['--version']):\n"
            "    try: cli.main(args=args, prog_name='mtc', standalone_mode=False)\n"
            "    except SystemExit: pass\n")
    modules = _modules_after(code)
    assert not modules & {"torch", "onnx", "onnxruntime", "numpy", "av", "PIL"}


def test_matte_stream_renders_each_frame_even_when_the_backend_reuses_its_buffers():
    from mtc.runtime.apply import Renderer, matte_stream
    from mtc.runtime.session import Matte

    class ReusingSession:
        """Like OpenVINO: every result is a view of the same output buffer."""

        def __init__(self):
            self.alpha = np.zeros((4, 6), np.float32)
            self.foreground = np.ones((4, 6, 3), np.float32)

        def process(self, frame):
            self.alpha[:] = frame[0, 0, 0] / 255.0
            return Matte(self.alpha, self.foreground)

    frames = [np.full((4, 6, 3), value, np.uint8) for value in (0, 51, 102, 153, 204, 255)]
    written = []

    def slow_write(picture):  # lets inference run ahead and overwrite the buffer before rendering
        time.sleep(0.02)
        written.append(picture)

    stats = matte_stream(ReusingSession(), iter(frames), slow_write, Renderer(kind="alpha"))
    assert stats.frames == len(frames)
    assert [int(out[0, 0]) for out in written] == [0, 51, 102, 153, 204, 255]


def test_matte_stream_skips_the_copy_when_the_backend_returns_fresh_arrays():
    from types import SimpleNamespace

    from mtc.runtime.apply import Renderer, matte_stream
    from mtc.runtime.session import Matte

    returned, rendered = [], []

    class FreshSession:
        backend = SimpleNamespace(fresh_outputs=True)  # like ONNX Runtime

        def process(self, frame):
            returned.append(np.full((4, 6), frame[0, 0, 0] / 255.0, np.float32))
            return Matte(returned[-1], np.ones((4, 6, 3), np.float32))

    class Recording(Renderer):
        def render(self, matte):
            rendered.append(matte.alpha)
            return super().render(matte)

    frames = [np.full((4, 6, 3), value, np.uint8) for value in (0, 128, 255)]
    matte_stream(FreshSession(), iter(frames), lambda picture: None, Recording(kind="alpha"))
    assert len(rendered) == 3 and all(a is b for a, b in zip(rendered, returned))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are a Linux feature")
def test_matte_stream_runs_codec_threads_below_inference_priority():
    import os
    import threading

    from mtc.runtime.apply import CODEC_NICENESS, Renderer, matte_stream
    from mtc.runtime.session import Matte

    def niceness():
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    seen = {}

    class Session:
        def process(self, frame):
            seen["inference"] = niceness()
            return Matte(np.zeros(frame.shape[:2], np.float32), None, source=frame)

    def decoded():
        seen["decode"] = niceness()
        yield np.zeros((4, 6, 3), np.uint8)

    def write(picture):
        seen["encode"] = niceness()

    before = niceness()
    matte_stream(Session(), decoded(), write, Renderer(kind="alpha"))
    assert seen["inference"] == before == niceness()  # the caller's thread keeps its priority
    assert seen["decode"] == seen["encode"] == min(before + CODEC_NICENESS, 19)


def test_alpha_only_model_composites_the_source_frame_without_a_float_copy():
    from mtc.runtime.session import Matte

    frame, plate = _frame(30, 40, seed=1), _frame(30, 40, seed=2)
    frame[:5] = 0  # black rows: this model's alpha is 0 there
    session = MattingSession(_toy_io(), RecordingBackend())  # no foreground output
    matte = session.process(frame)
    assert matte._foreground is None  # nothing converted until someone reads .foreground
    # The same pictures as the float path the model-foreground case takes.
    reference = Matte(matte.alpha.copy(), frame.astype(np.float32) / 255.0)
    for background in ((0, 255, 0), plate):
        got, expected = matte.composite(background), reference.composite(background)
        assert got.dtype == np.uint8 and int(np.abs(got.astype(int) - expected).max()) <= 1
    visible = (reference.alpha_u8() > 0)[..., None]
    assert 0 < visible.mean() < 1  # both kinds of pixel are there
    np.testing.assert_array_equal(matte.rgba()[..., :3], frame * visible)  # invisible colours are zero
    np.testing.assert_array_equal(matte.rgba()[..., 3], reference.alpha_u8())
    np.testing.assert_allclose(matte.foreground, frame / 255.0, atol=1e-6)


@pytest.mark.parametrize("height", [30, 2 * COMPOSITE_ROWS + 5])  # one band; three, the last one short
@pytest.mark.parametrize("has_foreground", [True, False])
def test_composite_is_planar_and_matches_the_blend(has_foreground, height):
    from mtc.runtime.session import Matte

    rng = np.random.default_rng(3)
    frame, plate = _frame(height, 40, seed=4), _frame(height, 40, seed=5)
    alpha = rng.random((height, 40), dtype=np.float32)
    foreground = rng.random((height, 40, 3), dtype=np.float32) if has_foreground else None
    matte = Matte(alpha, foreground, source=frame)
    fg = foreground * 255.0 if has_foreground else frame.astype(np.float64)
    for background in ((0, 255, 0), plate):
        got = matte.composite(background)
        expected = np.asarray(background, np.float64) * (1 - alpha[..., None]) + fg * alpha[..., None]
        assert got.dtype == np.uint8 and got.shape == (height, 40, 3)
        assert np.abs(got - expected).max() <= 0.5 + 1e-3  # rounded, not truncated
        assert got.transpose(2, 0, 1).flags.c_contiguous  # planar: the video writer's no-copy path


def test_composite_clips_a_foreground_outside_0_1():
    from mtc.runtime.session import Matte

    foreground = np.stack([np.full((3, 4), v, np.float32) for v in (1.5, -0.5, 0.5)], axis=2)
    got = Matte(np.ones((3, 4), np.float32), foreground).composite((0, 0, 0))
    assert got[..., 0].tolist() == [[255] * 4] * 3 and got[..., 1].tolist() == [[0] * 4] * 3
    assert got[..., 2].tolist() == [[128] * 4] * 3  # 127.5 rounds up


def test_matte_copy_owns_alpha_and_foreground():
    from mtc.runtime.session import Matte

    alpha, foreground = np.zeros((2, 3), np.float32), np.zeros((2, 3, 3), np.float32)
    copied = Matte(alpha, foreground).copy()
    alpha += 1
    foreground += 1
    assert copied.alpha.max() == 0 and copied.foreground.max() == 0
    with pytest.raises(ValueError, match="foreground or the source frame"):
        Matte(alpha)
