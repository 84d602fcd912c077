"""The Python-backend model `mtc package --kind python` writes: `mtc.runtime` inside Triton.

The repository's `model.py` only imports `TritonPythonModel` from here, so the serving logic is
the installed mtc's, not a copy. The artifact sits beside it (`<version>/artifact/`). Requests
carry one HxWx3 uint8 RGB frame (`FRAME`); responses hold the outputs the client asked for
(`ALPHA`, `FOREGROUND`, `COMPOSITE`). Per-stream models (recurrent state, background plates)
read Triton's sequence controls and keep one session per correlation ID (`StreamSessions`).

`triton_python_backend_utils` exists only inside Triton's Python backend: it is imported when
the model initializes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mtc.errors import MtcError
from mtc.serve.triton_config import ALPHA, COMPOSITE, CORRID, DEFAULT_IDLE_SECONDS, END, FOREGROUND, FRAME, PLATE, START

ARTIFACT_FOLDER = "artifact"
COMPOSITE_BACKGROUND = (0, 255, 0)


def _parameter(config: dict, key: str, default: str | None = None) -> str | None:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


def _scalar(request, name: str, pb_utils) -> int:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return 0 if tensor is None else int(tensor.as_numpy().reshape(-1)[0])


def matte_tensors(pb_utils, matte, request) -> list:
    """The outputs the request asks for (all computed only when asked), ALPHA when it names none."""
    wanted = set(request.requested_output_names()) or {ALPHA}
    tensors = []
    if ALPHA in wanted:
        tensors.append(pb_utils.Tensor(ALPHA, np.ascontiguousarray(matte.alpha, np.float32)))
    if FOREGROUND in wanted:
        tensors.append(pb_utils.Tensor(FOREGROUND, np.ascontiguousarray(matte.foreground, np.float32)))
    if COMPOSITE in wanted:
        tensors.append(pb_utils.Tensor(COMPOSITE, np.ascontiguousarray(matte.composite(COMPOSITE_BACKGROUND))))
    return tensors


def error_response(pb_utils, exc: MtcError):
    """A response that fails this request alone, with mtc's one-line message and fix."""
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc)))


class TritonPythonModel:
    """Triton's Python-backend entry points: initialize, execute, finalize."""

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils

        import mtc.runtime
        from mtc.serve.streams import StreamSessions

        self.pb_utils = pb_utils
        config = json.loads(args["model_config"])
        folder = Path(args["model_repository"]) / args["model_version"] / ARTIFACT_FOLDER
        threads = _parameter(config, "threads")
        self.template = mtc.runtime.load(folder, backend=_parameter(config, "backend", "auto"),
                                         threads=int(threads) if threads else None, allow_spinning=False)
        self.per_stream = "sequence_batching" in config
        idle = float(_parameter(config, "idle_seconds", str(DEFAULT_IDLE_SECONDS)))
        self.streams = StreamSessions(self.template, idle_seconds=idle)

    def execute(self, requests: list) -> list:
        # One bad request (a malformed frame, an unknown stream) fails alone: the others in the
        # same batch, and every other stream's state, are untouched.
        return [self._respond(request) for request in requests]

    def _respond(self, request):
        pb_utils = self.pb_utils
        try:
            return pb_utils.InferenceResponse(output_tensors=matte_tensors(pb_utils, self._matte(request), request))
        except MtcError as exc:
            return error_response(pb_utils, exc)

    def _matte(self, request):
        pb_utils = self.pb_utils
        frame = pb_utils.get_input_tensor_by_name(request, FRAME).as_numpy()
        plate_tensor = pb_utils.get_input_tensor_by_name(request, PLATE)
        plate = None if plate_tensor is None else plate_tensor.as_numpy()
        if not self.per_stream:
            return self.template.process(frame)
        return self.streams.process(_scalar(request, CORRID, pb_utils), frame, start=bool(_scalar(request, START, pb_utils)),
                                    end=bool(_scalar(request, END, pb_utils)), plate=plate)

    def finalize(self) -> None:
        self.streams = None
        self.template = None
