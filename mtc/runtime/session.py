"""The matting session: frames in, alpha and foreground out, with recurrent state handled.

The session owns everything the manifest describes (preprocessing, resize rules, the
downsample ratio, recurrent state, scene cuts) so application code only passes frames.

It also holds the model to the roles the manifest declares: the first frame at every model
input size (and the probe frame `mtc.runtime.load` runs) has its outputs checked: the alpha is
1x1xHxW at the model's input size, the foreground 1x3xHxW, every value finite and inside its
declared range. A model that breaks its contract fails there, with one line, instead of
writing plausible-looking wrong mattes.
"""

from __future__ import annotations

import logging

import numpy as np

from mtc.artifact.manifest import ModelIO
from mtc.backends import Backend
from mtc.errors import MtcError
from mtc.runtime.frames import MIN_FRAME_SIDE, check_frame
from mtc.runtime.scenes import DEFAULT_SCENE_CUT_THRESHOLD, SceneCutDetector

log = logging.getLogger("mtc")


COMPOSITE_ROWS = 32  # x 1920 columns x 3 channels x 4 bytes: 0.7 MB of float scratch
# How far past its declared range (as a share of the range) an output may stray before it is
# refused: integer and half-precision outputs round past 0 and 1 a little, a broken model by far.
RANGE_SLACK = 0.05
DEFAULT_VALUE_RANGE = (0.0, 1.0)  # alpha and foreground, when the manifest declares none
# The largest model input a load-time probe runs (512x512): beyond it the probe would cost as
# much as a real frame, whose own first-frame check gives the same guarantee.
PROBE_MAX_PIXELS = 512 * 512


class Matte:
    """One frame's result. Arrays may be views of backend buffers or of the input frame: copy
    them (or the matte, `copy()`) to keep them.

    Attributes:
        alpha: HxW float32 in [0, 1].
        foreground: HxWx3 float32 in [0, 1]; for models without a foreground output, the input
            frame, converted only when read (compositing uses the uint8 frame directly).
    """

    __slots__ = ("alpha", "_foreground", "_source")

    def __init__(self, alpha: np.ndarray, foreground: np.ndarray | None = None, *, source: np.ndarray | None = None):
        if foreground is None and source is None:
            raise ValueError("a Matte needs the model's foreground or the source frame")
        self.alpha = alpha
        self._foreground = foreground
        self._source = source

    @property
    def foreground(self) -> np.ndarray:
        if self._foreground is None:
            self._foreground = self._source.astype(np.float32) * (1.0 / 255.0)
        return self._foreground

    def copy(self) -> Matte:
        """A matte that owns its arrays (the source frame is kept by reference: nothing reuses it)."""
        foreground = None if self._foreground is None else np.array(self._foreground)
        return Matte(np.array(self.alpha), foreground, source=self._source)

    def alpha_u8(self) -> np.ndarray:
        return _to_u8(self.alpha)

    def rgba(self) -> np.ndarray:
        """Straight-alpha RGBA uint8, as PNG and ProRes 4444 expect. Fully transparent pixels are
        zero in all four channels (their colour cannot be seen), as in rembg's cut-outs: runs of
        zeros make PNGs smaller and faster to write (docs/runtime.md)."""
        rgb = self._source if self._foreground is None else _to_u8(self._foreground)
        alpha = self.alpha_u8()
        out = np.empty((*alpha.shape, 4), np.uint8)
        np.multiply(rgb, (alpha > 0)[..., None], out=out[..., :3], casting="unsafe")
        out[..., 3] = alpha
        return out

    def composite(self, background: np.ndarray | tuple[int, int, int]) -> np.ndarray:
        """Foreground over `background` (an HxWx3 uint8 image or an RGB colour) as uint8.

        The result is HxWx3 with planar memory (a transposed view of 3xHxW), the layout the
        video writer encodes without an interleaving copy; `np.ascontiguousarray` gives HWC.
        """
        # The uint8 source frame is blended as it is (0..255): no float copy of it.
        foreground, to_255 = (self._source, 1.0) if self._foreground is None else (self._foreground, 255.0)
        foreground = foreground.transpose(2, 0, 1)
        colour = isinstance(background, tuple)
        background = np.asarray(background, np.float32)[:, None, None] if colour else background.transpose(2, 0, 1)
        height, width = self.alpha.shape
        out = np.empty((3, height, width), np.uint8)
        # bg + (fg - bg) * alpha in 0..255 units, rounded, in bands of rows whose float scratch
        # stays in the L2 cache: at HD this runs once per video frame next to inference on the
        # same cores. 1920x1080, whole-frame passes vs bands (interleaved): over a colour 8.2 ->
        # 5.0 ms with the model's foreground and 9.9 -> 7.3 ms with the source frame; over a
        # picture 18.7 -> 8.1 and 17.3 -> 10.1 ms. Planar, the per-pixel alpha and the
        # per-channel colour broadcast along whole rows.
        scratch = np.empty((2, 3, COMPOSITE_ROWS, width), np.float32)
        for top in range(0, height, COMPOSITE_ROWS):
            rows = slice(top, top + COMPOSITE_ROWS)
            band, bg = scratch[:, :, :min(COMPOSITE_ROWS, height - top)]
            if colour:
                bg = background
            else:  # read the (interleaved) image once per band, not twice
                np.copyto(bg, background[:, rows])
            np.multiply(foreground[:, rows], to_255, out=band, dtype=np.float32)
            band -= bg
            band *= self.alpha[rows]
            band += bg
            band += 0.5
            np.clip(band, 0.0, 255.5, out=band)
            out[:, rows] = band  # truncating the value + 0.5: rounding
        return out.transpose(1, 2, 0)


def _to_u8(x: np.ndarray) -> np.ndarray:
    """uint8 of a float array in [0, 1], rounded."""
    x = np.clip(x, 0.0, 1.0, dtype=np.float32)
    x *= 255.0
    x += 0.5
    return x.astype(np.uint8)


class MattingSession:
    """Runs one matting model frame by frame.

    Args:
        io: the model's I/O contract (from the manifest).
        backend: the graph executor.
        downsample_ratio: fixed ratio for models with a downsample input, within the range the
            manifest declares for it; None applies the manifest's auto rule per frame size.
        scene_cut_threshold: mean absolute difference (0..255) between tiny grey thumbnails of
            consecutive frames above which recurrent state is reset; None disables detection.
        check_outputs: check the outputs of the first frame at each input size against their
            roles (off where a candidate's errors are being measured, not refused).
    """

    def __init__(self, io: ModelIO, backend: Backend, *, downsample_ratio: float | None = None,
                 scene_cut_threshold: float | None = DEFAULT_SCENE_CUT_THRESHOLD, check_outputs: bool = True):
        self.io = io
        self.checks_outputs = check_outputs
        self.backend = backend
        if downsample_ratio is not None and io.downsample is not None:
            downsample_ratio = io.downsample.check(downsample_ratio)
        self.downsample_ratio = downsample_ratio
        self.scene_cut_threshold = scene_cut_threshold
        # Only recurrent models have state a cut could make stale.
        self._cuts = SceneCutDetector(scene_cut_threshold) if scene_cut_threshold is not None and io.states else None
        self.image_input = io.input_with_role("image")
        self.background_input = io.input_with_role("background")
        self.prompt_input = io.input_with_role("prompt")
        self.frame_size_input = io.input_with_role("frame_size")  # a program choosing its steps by the frame's size
        self._prompt: np.ndarray | None = None  # the first frame's mask as given (HxW float32 in [0, 1])
        self._prompt_source = None  # or what makes it from the first frame
        self._prompt_due = True  # the next frame begins a stream and gets the prompt
        self.alpha_output = io.output_with_role("alpha")
        self.foreground_output = io.output_with_role("foreground")
        missing = {t.name for t in io.inputs} - set(backend.input_names)
        if missing:
            raise MtcError(f"the model file lacks inputs the manifest declares: {sorted(missing)}",
                           hint="the artifact is inconsistent; re-export it")
        pre = io.preprocess
        # x * scale then (x - mean) / std, folded into one multiply-add per channel.
        self._gain = (pre.scale / np.asarray(pre.std, np.float32)).astype(np.float32)
        self._offset = (-np.asarray(pre.mean, np.float32) / np.asarray(pre.std, np.float32)).astype(np.float32)
        self._identity_norm = bool(np.all(self._offset == 0) and np.all(self._gain == self._gain[0]))
        # A GPU backend may lend the pinned host buffer it uploads the image from (TensorRT's
        # `host_input`): preprocessing straight into it saves a full-frame host copy per frame.
        self._host_input = getattr(backend, "host_input", None)
        self._filter = io.preprocess.resize_filter
        self._buffer: np.ndarray | None = None
        self._plate: np.ndarray | None = None  # the background plate as given (HxWx3 uint8)
        self._plate_tensor: np.ndarray | None = None  # ... preprocessed at the last model size
        self._state: dict[str, np.ndarray] = {}
        self._frame_shape: tuple[int, int] | None = None
        self._checked_sizes: set[tuple[int, int]] = set()  # model input sizes whose outputs were checked
        self.frames_processed = 0
        self.state_resets = 0
        self.reset()

    # ---- state ------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the recurrent state (the next frame starts a new shot)."""
        self._reset_state()
        if self._cuts is not None:
            self._cuts.forget()
        self._prompt_due = True
        backend_reset = getattr(self.backend, "reset", None)  # a multi-graph engine's own memory
        if backend_reset is not None:
            backend_reset()

    def _reset_state(self) -> None:
        self._state = {
            pair.input: np.full(pair.initial_shape, pair.initial_value, dtype=np.float32) for pair in self.io.states
        }

    # ---- the frame path ---------------------------------------------------------------------

    def ratio_for(self, height: int, width: int) -> float | None:
        rule = self.io.downsample
        if rule is None:
            return None
        return self.downsample_ratio if self.downsample_ratio is not None else rule.ratio_for(height, width)

    def _model_size(self, height: int, width: int) -> tuple[int, int]:
        return self.io.preprocess.model_size(height, width)

    def set_background(self, plate: np.ndarray | None) -> None:
        """Give the clean background plate, for models with a background input.

        Args:
            plate: HxWx3 uint8 RGB picture of the scene without the subject, the size of the
                frames that follow; None forgets it.

        Raises:
            MtcError: the model takes no background, or the plate is not an RGB frame.
        """
        if plate is not None:
            if self.background_input is None:
                raise MtcError("this model takes no background plate", hint="drop the background plate")
            check_frame(plate)
            plate = np.ascontiguousarray(plate)
        self._plate, self._plate_tensor = plate, None

    def set_prompt(self, mask) -> None:
        """Give the mask of the object to matte on the first frame, for models that follow an
        object from a first-frame mask (the manifest has a `prompt` input).

        Args:
            mask: HxW, the size of the frames: bool, uint8 (0-255) or float in [0, 1]; or a
                function that makes one from the first frame (HxWx3 uint8), e.g. another
                session's alpha; None forgets it. Used on every first frame (the first, and the
                first after `reset`); a function is asked again each time.

        Raises:
            MtcError: the model takes no prompt, or the mask is not 2-D.
        """
        if mask is not None and self.prompt_input is None:
            raise MtcError("this model takes no first-frame mask", hint="drop --mask / --mask-from")
        self._prompt_source = mask if callable(mask) else None
        self._prompt = None if mask is None or callable(mask) else _as_mask(mask)

    def _prompt_tensor(self, height: int, width: int, model_h: int, model_w: int) -> np.ndarray | None:
        if self._prompt is None:
            return None  # the engine says what it needs
        if self._prompt.shape != (height, width):
            mh, mw = self._prompt.shape
            raise MtcError(f"the first-frame mask is {mw}x{mh} but the frames are {width}x{height}",
                           hint="make the mask from the video's first frame, at its size")
        plane = self._prompt if (model_h, model_w) == (height, width) else _resize_plane(self._prompt, model_h, model_w)
        return np.ascontiguousarray(plane, dtype=np.float32)[None, None]

    def _background_tensor(self, height: int, width: int, model_h: int, model_w: int) -> np.ndarray:
        if self._plate is None:
            raise MtcError("this model needs a background plate (a picture of the scene without the subject)",
                           hint="pass --background-plate IMAGE to `mtc run`, or call session.set_background(plate)")
        if self._plate.shape[:2] != (height, width):
            ph, pw = self._plate.shape[:2]
            raise MtcError(f"the background plate is {pw}x{ph} but the frames are {width}x{height}",
                           hint="capture the plate with the same camera and resolution as the footage")
        if self._plate_tensor is None or self._plate_tensor.shape[2:] != (model_h, model_w):
            plate = self._plate if (model_h, model_w) == (height, width) else _resize_rgb(self._plate, model_h, model_w, self._filter)
            self._plate_tensor = self._normalize(plate, np.empty((1, 3, model_h, model_w), np.float32))
        return self._plate_tensor

    def _image_tensor(self, frame: np.ndarray) -> np.ndarray:
        h, w = frame.shape[:2]
        pinned = self._host_input(self.image_input.name, (1, 3, h, w)) if self._host_input else None
        if pinned is not None:
            return self._normalize(frame, pinned)
        if self._buffer is None or self._buffer.shape[2:] != (h, w):
            self._buffer = np.empty((1, 3, h, w), dtype=np.float32)
        return self._normalize(frame, self._buffer)

    def _normalize(self, frame: np.ndarray, out: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 -> 1x3xHxW float32 written into `out`, as the manifest's preprocessing says."""
        if self.io.preprocess.color_order == "BGR":
            frame = frame[..., ::-1]
        chw = frame.transpose(2, 0, 1)
        if self._identity_norm:
            np.multiply(chw, self._gain[0], out=out[0], casting="unsafe")
        else:
            for c in range(3):
                np.multiply(chw[c], self._gain[c], out=out[0, c], casting="unsafe")
                out[0, c] += self._offset[c]
        return out

    def step(self, frame: np.ndarray) -> dict[str, np.ndarray]:
        """Run one frame and return the model's raw outputs (recurrent state advanced)."""
        check_frame(frame)
        h, w = frame.shape[:2]
        if self._frame_shape != (h, w):
            if self._frame_shape is not None:
                log.info("frame size changed to %dx%d: resetting recurrent state", w, h)
                self.state_resets += 1
            self.reset()
            self._frame_shape = (h, w)
            if self._cuts is not None:
                self._cuts.is_cut(frame)  # the first frame at this size: the reference for the next
        elif self._cuts is not None and self._cuts.is_cut(frame):
            log.debug("scene cut at frame %d: resetting recurrent state", self.frames_processed)
            self._reset_state()
            self.state_resets += 1
        if self.prompt_input is not None and self._prompt_due and self._prompt_source is not None:
            self._prompt = _as_mask(self._prompt_source(frame))  # from the frame as it came
        model_h, model_w = self._model_size(h, w)
        if (model_h, model_w) != (h, w):
            frame = _resize_rgb(frame, model_h, model_w, self._filter)
        feeds = {self.image_input.name: self._image_tensor(frame), **self._state}
        if self.frame_size_input is not None:
            feeds[self.frame_size_input.name] = np.array([h, w], np.float32)
        if self.background_input is not None:
            feeds[self.background_input.name] = self._background_tensor(h, w, model_h, model_w)
        if self.prompt_input is not None and self._prompt_due:
            prompt = self._prompt_tensor(h, w, model_h, model_w)
            if prompt is not None:
                feeds[self.prompt_input.name] = prompt
        ratio = self.ratio_for(model_h, model_w)
        if ratio is not None:
            feeds[self.io.downsample.input] = np.array([ratio], dtype=np.float32)
        outputs = self.backend.run(feeds)
        self._prompt_due = False
        if self.checks_outputs and (model_h, model_w) not in self._checked_sizes:
            self.check_outputs(outputs, model_h, model_w)
            self._checked_sizes.add((model_h, model_w))
        for pair in self.io.states:
            self._state[pair.input] = outputs[pair.output]
        self.frames_processed += 1
        return outputs

    def check_outputs(self, outputs: dict, model_h: int, model_w: int) -> None:
        """Raise MtcError unless the outputs match their declared roles for a model_w x model_h input."""
        for spec, channels in ((self.alpha_output, 1), (self.foreground_output, 3)):
            if spec is None:
                continue
            if spec.name not in outputs:
                raise MtcError(f"the model gives no output {spec.name!r}, which the manifest declares as its {spec.role}",
                               hint="the model does not match its manifest; re-export the artifact")
            value = np.asarray(outputs[spec.name])
            expected = (1, channels, model_h, model_w)
            if value.shape != expected:
                raise MtcError(f"the model's {spec.role} output {spec.name!r} has shape {value.shape}, not "
                               f"{'x'.join(map(str, expected))} for a {model_w}x{model_h} input",
                               hint="the model does not match its manifest; re-export the artifact")
            low, high = spec.value_range or DEFAULT_VALUE_RANGE
            slack = RANGE_SLACK * (high - low)
            lowest, highest = float(value.min()), float(value.max())
            if not (np.isfinite(lowest) and np.isfinite(highest) and lowest >= low - slack and highest <= high + slack):
                raise MtcError(f"the model's {spec.role} output {spec.name!r} spans [{lowest:.4g}, {highest:.4g}] "
                               f"on a {model_w}x{model_h} input, outside its declared range [{low:g}, {high:g}]",
                               hint="the model or its preprocessing does not match the manifest; re-export the artifact")
        for pair in self.io.states:
            state = outputs[pair.output]
            # State a GPU backend keeps on the device is left there: reading it back costs a copy.
            if isinstance(state, np.ndarray) and not np.isfinite(state).all():
                raise MtcError(f"the model's state output {pair.output!r} is not finite on a {model_w}x{model_h} input",
                               hint="the model or its preprocessing does not match the manifest; re-export the artifact")

    def probe(self) -> bool:
        """Run one small grey frame and check its outputs against their roles, then forget it.

        The frame is the smallest the model takes (its fixed input size, where it has one), so
        this costs one small inference; a model whose smallest input exceeds PROBE_MAX_PIXELS is
        not probed (its first frame is checked). Returns whether it probed.

        Raises:
            MtcError: an output breaks its declared role.
        """
        side = max(MIN_FRAME_SIDE, self.io.preprocess.multiple_of)
        if self.downsample_ratio is not None:  # keep the working resolution at least one side long
            side = max(side, int(np.ceil(MIN_FRAME_SIDE / self.downsample_ratio)))
        model_h, model_w = self._model_size(side, side)
        if model_h * model_w > PROBE_MAX_PIXELS or side * side > PROBE_MAX_PIXELS:
            return False
        frame = np.full((side, side, 3), 128, np.uint8)
        plate, self._plate, self._plate_tensor = self._plate, (frame if self.background_input is not None else None), None
        try:
            self.step(frame)
        finally:
            self._plate, self._plate_tensor = plate, None
            self.reset()
            self._frame_shape = None
            self.frames_processed = 0
        return True

    def process(self, frame: np.ndarray) -> Matte:
        """Matte one HxWx3 uint8 RGB frame; alpha and foreground come back at the frame's size."""
        outputs = self.step(frame)
        h, w = frame.shape[:2]
        alpha = outputs[self.alpha_output.name][0, 0]
        if alpha.shape != (h, w):
            alpha = _within(_resize_plane(alpha, h, w, self._filter), self.alpha_output.value_range)
        if self.foreground_output is None:
            return Matte(alpha, source=frame)
        foreground = outputs[self.foreground_output.name][0].transpose(1, 2, 0)
        if foreground.shape[:2] != (h, w):
            foreground = np.stack([_resize_plane(foreground[..., c], h, w, self._filter) for c in range(3)], axis=2)
            foreground = _within(foreground, self.foreground_output.value_range)
        return Matte(alpha, foreground)


def _within(plane: np.ndarray, value_range: tuple[float, float] | None) -> np.ndarray:
    """A resized output clipped back to its declared range: a Lanczos filter overshoots at sharp
    edges (an alpha of -0.03 or 1.05 beside a hard edge), which the model itself never gives.
    (PIL's arrays are read-only, so this is a new one.)"""
    if value_range is None:
        return plane
    return np.clip(plane, value_range[0], value_range[1])


def _pil_filter(name: str):
    from PIL import Image

    return {"bilinear": Image.BILINEAR, "lanczos": Image.LANCZOS}[name]


def _as_mask(mask) -> np.ndarray:
    """A first-frame mask as HxW float32 in [0, 1] (grey, RGB or an RGBA cut-out's alpha accepted)."""
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] in (1, 3, 4):
        mask = mask[..., 3] if mask.shape[2] == 4 else mask[..., 0]
    if mask.ndim != 2:
        raise MtcError(f"the first-frame mask must be a 2-D picture, got shape {mask.shape}",
                       hint="pass a black-and-white PNG the size of the video")
    return mask.astype(np.float32) / (255.0 if mask.dtype == np.uint8 else 1.0)


def _resize_rgb(frame: np.ndarray, height: int, width: int, filter_name: str = "bilinear") -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(frame)).resize((width, height), _pil_filter(filter_name)))


def _resize_plane(plane: np.ndarray, height: int, width: int, filter_name: str = "bilinear") -> np.ndarray:
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32), mode="F")
    return np.asarray(image.resize((width, height), _pil_filter(filter_name)))
