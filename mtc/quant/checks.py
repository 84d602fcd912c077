"""Checks that gate a compiled model: run it and the FP32 reference side by side over held-out
clips, each with its own recurrent state, and measure what quantization costs, frame by frame."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from mtc import metrics
from mtc.artifact.manifest import ModelIO
from mtc.backends import Backend, OrtBackend
from mtc.errors import MtcError
from mtc.quant.calibration import Clip, RecordingBackend
from mtc.quant.config import Gates
from mtc.runtime.session import MattingSession


@dataclass
class ClipCheck:
    """One clip's comparison. Per-frame lists are what the report plots."""

    name: str
    resolution: str
    downsample_ratio: float | None
    mad: float
    mse: float
    grad: float
    dtssd: float
    mad_per_frame: list[float]
    dtssd_per_frame: list[float]
    nonfinite_frames: list[int]
    worst_frame: int
    worst_diff: np.ndarray = field(repr=False)  # |alpha - reference| of the worst frame, for the report
    vs_ground_truth: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"clip": self.name, "resolution": self.resolution, "downsample_ratio": self.downsample_ratio,
                "mad": self.mad, "mse": self.mse, "grad": self.grad, "dtssd": self.dtssd,
                "mad_per_frame": self.mad_per_frame, "dtssd_per_frame": self.dtssd_per_frame,
                "nonfinite_frames": self.nonfinite_frames, "worst_frame": self.worst_frame,
                "vs_ground_truth": self.vs_ground_truth}


def run_alphas(io: ModelIO, backend: Backend, clip: Clip) -> np.ndarray:
    """Alpha mattes (TxHxW float32) of one clip, recurrent state carried from frame to frame."""
    # A candidate's NaNs and out-of-range values are measured and reported, not refused.
    session = MattingSession(io, backend, downsample_ratio=clip.downsample_ratio, scene_cut_threshold=None,
                             check_outputs=False)
    if session.prompt_input is not None:  # a model that follows the object marked on the first frame
        from mtc.export.program import parity_prompt

        session.set_prompt(parity_prompt(*clip.frames[0].shape[:2]))
    return np.stack([session.process(frame).alpha.copy() for frame in clip.frames])


def compare_clip(clip: Clip, reference: np.ndarray, candidate: np.ndarray, *, with_grad: bool = True,
                 ground_truth: np.ndarray | None = None) -> ClipCheck:
    finite = np.isfinite(candidate).all(axis=(1, 2))
    nonfinite = [int(i) for i in np.flatnonzero(~finite)]
    safe = np.where(np.isfinite(candidate), candidate, 0.0).clip(0.0, 1.0)
    per_frame_mad = np.abs(safe - reference).mean(axis=(1, 2)) * 1e3
    dtssd = metrics.dtssd_per_frame(safe, reference) if len(clip.frames) > 1 else np.zeros(1)
    worst = int(np.argmax(per_frame_mad))
    h, w = reference.shape[1:]
    check = ClipCheck(
        name=clip.name, resolution=f"{w}x{h}", downsample_ratio=clip.downsample_ratio,
        mad=float(per_frame_mad.mean()) if not nonfinite else float("inf"),
        mse=metrics.mse(safe, reference),
        grad=metrics.grad(safe, reference) if with_grad else float("nan"),
        dtssd=float(dtssd.mean()) if not nonfinite else float("inf"),
        mad_per_frame=[float(v) for v in per_frame_mad], dtssd_per_frame=[float(v) for v in dtssd],
        nonfinite_frames=nonfinite, worst_frame=worst, worst_diff=np.abs(safe[worst] - reference[worst]),
    )
    if ground_truth is not None:
        for label, alphas in (("reference", reference), ("candidate", safe)):
            check.vs_ground_truth[label] = {"mad": metrics.mad(alphas, ground_truth),
                                            "dtssd": metrics.dtssd(alphas, ground_truth)}
    return check


@dataclass
class CheckResult:
    clips: list[ClipCheck]
    gates: Gates

    @property
    def failures(self) -> list[str]:
        problems = []
        for clip in self.clips:
            if clip.nonfinite_frames:
                problems.append(f"{clip.name}: NaN/Inf in {len(clip.nonfinite_frames)} frames")
            problems += [f"{clip.name}: {p}" for p in self.gates.failures(clip.mad, clip.dtssd)]
        return problems

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def score(self) -> float:
        """One number to rank candidates by: the worst clip's MAD + dtSSD."""
        return max(c.mad + c.dtssd for c in self.clips)

    def to_dict(self) -> dict:
        return {"passed": self.passed, "failures": self.failures,
                "gates": {"max_mad": self.gates.max_mad, "max_dtssd": self.gates.max_dtssd},
                "clips": [c.to_dict() for c in self.clips]}


def spread(items: Sequence, count: int) -> list:
    """At most `count` of `items`, evenly spaced from the first to the last."""
    if len(items) <= count:
        return list(items)
    if count == 1:
        return [items[0]]
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)]


class ReferenceAlphas:
    """FP32 alphas of the check clips, computed once and reused for every candidate."""

    def __init__(self, io: ModelIO, reference: Backend | None, clips: Sequence[Clip],
                 alphas: Sequence[np.ndarray] | None = None, *, record_inputs: int = 0):
        """`record_inputs`: also keep up to this many of the inputs the reference got, spread over
        the check frames (`feeds`: the model's inputs, recurrent state included), for
        measurements beyond the alphas."""
        self.io, self.clips = io, list(clips)
        recorder = None
        if record_inputs and alphas is None:  # one run per frame: record only the runs kept
            runs = sum(len(clip.frames) for clip in self.clips)
            recorder = RecordingBackend(reference, keep=spread(range(runs), record_inputs))
        runner = recorder or reference
        self.alphas = list(alphas) if alphas is not None else [run_alphas(io, runner, clip) for clip in self.clips]
        self.feeds: list[dict[str, np.ndarray]] | None = recorder.feeds if recorder is not None else None

    def head(self, *, clips: int, frames: int) -> ReferenceAlphas:
        """The first `frames` frames of the first `clips` clips, without re-running the reference."""
        short = [dataclasses.replace(c, frames=c.frames[:frames]) for c in self.clips[:clips]]
        return ReferenceAlphas(self.io, None, short, [a[:frames] for a in self.alphas[:clips]])

    def run(self, candidate: Backend, clip: Clip) -> np.ndarray:
        """The candidate's alphas on `clip`, run the way the reference's were."""
        return run_alphas(self.io, candidate, clip)

    def check(self, candidate: Backend, gates: Gates, *, with_grad: bool = True) -> CheckResult:
        results = [compare_clip(clip, ref, self.run(candidate, clip), with_grad=with_grad)
                   for clip, ref in zip(self.clips, self.alphas)]
        return CheckResult(results, gates)


class Counted:
    """A backend that calls `advance()` after each run (one per frame): progress through
    code that runs a backend and takes no callback. Everything else is the backend's."""

    def __init__(self, backend, advance):
        self._backend, self._advance = backend, advance

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def run(self, feeds):
        outputs = self._backend.run(feeds)
        self._advance()
        return outputs


def check_runner(backend: str, io) -> Callable[[onnx.ModelProto], Backend]:
    """model -> a backend running it as `backend`'s kernels do (FP32 for whatever stays float),
    for the INT8 checks (Int8Config.check_backend)."""
    if backend == "onnxruntime":
        return lambda model: OrtBackend(model.SerializeToString())
    from mtc.backends.registry import has_module

    if not has_module("openvino"):
        raise MtcError("this INT8 placement is checked on OpenVINO, which is not installed",
                       hint="pip install 'mtc[openvino]', or pass --check-backend onnxruntime")

    def on_openvino(model: onnx.ModelProto) -> Backend:
        with tempfile.TemporaryDirectory(prefix="mtc-check-") as scratch:  # OpenVINO reads the file at load only
            return cpu_backend("openvino", model.SerializeToString(), io, Path(scratch) / "candidate.onnx")

    return on_openvino


def cpu_backend(backend: str, model: Path | bytes, io, scratch_file: Path):
    """A CPU backend on `model`: "onnxruntime" (spinning off), "openvino" or "openvino-bf16";
    OpenVINO reads files, so bytes are written to `scratch_file` first. Its compiles are logged at
    DEBUG: a quantization builds one backend per candidate."""
    if backend == "onnxruntime":
        return OrtBackend(model, allow_spinning=False)
    from mtc.backends.openvino.session import OpenVinoBackend

    if isinstance(model, bytes):  # OpenVINO reads files
        scratch_file.write_bytes(model)
        model = scratch_file
    return OpenVinoBackend(model, io=io, precision="bf16" if backend == "openvino-bf16" else "fp32", cache=False,
                           log_compiles=False)
