"""The Python steps around the network model in `mtc package --kind ensemble`.

Pre-processing turns a raw HxWx3 uint8 frame into the network's inputs (resize to the model
size, normalize, the downsample ratio); post-processing turns the network's outputs back into
a matte at the frame's size. Both run a `MattingSession` over a stand-in engine, so every rule
is the runtime's own: the pre step's engine records the feeds the session prepares, the post
step's engine hands the session the network's outputs (which the session also checks against
their declared roles on the first frame of each size).

Recurrent state stays in the network model (Triton's implicit state, per sequence); the
session here never carries it between requests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtc.errors import MtcError
from mtc.serve.triton_config import FRAME
from mtc.serve.triton_model import ARTIFACT_FOLDER, error_response, matte_tensors


class _RecordingEngine:
    """Takes the feeds a session prepares and answers with placeholders (state passes through)."""

    name = "feeds"

    def __init__(self, io):
        self.io = io
        self.input_names = tuple(t.name for t in io.inputs)
        self.output_names = tuple(t.name for t in io.outputs)
        self.feeds: dict = {}

    def run(self, feeds: dict) -> dict:
        self.feeds = dict(feeds)
        return {pair.output: feeds[pair.input] for pair in self.io.states}


class _ReplayEngine:
    """Answers the session with outputs computed elsewhere (the network model's)."""

    name = "network"

    def __init__(self, io):
        self.input_names = tuple(t.name for t in io.inputs)
        self.output_names = tuple(t.name for t in io.outputs)
        # The state stays in the network model: the session gets a placeholder to carry.
        self._no_state = {pair.output: np.zeros(1, np.float32) for pair in io.states}
        self.outputs: dict = {}

    def run(self, feeds: dict) -> dict:
        return {**self.outputs, **self._no_state}


def _load(args: dict, engine_type):
    """The artifact's I/O contract beside this model, and a session over a stand-in engine."""
    from mtc.artifact.manifest import read_manifest
    from mtc.runtime import MattingSession

    folder = Path(args["model_repository"]) / args["model_version"] / ARTIFACT_FOLDER
    io = read_manifest(folder, verify_files=False).io
    engine = engine_type(io)
    # No scene-cut resets: the state lives in the network model, reset by the client's START.
    return io, engine, MattingSession(io, engine, scene_cut_threshold=None, check_outputs=engine_type is _ReplayEngine)


class PreprocessModel:
    """FRAME -> the network's image input (and its downsample ratio, where it has one)."""

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils

        self.pb_utils = pb_utils
        self.io, self.engine, self.session = _load(args, _RecordingEngine)
        self.names = [t.name for t in self.io.inputs if t.role in ("image", "downsample_ratio")]

    def execute(self, requests: list) -> list:
        pb_utils, responses = self.pb_utils, []
        for request in requests:
            try:
                self.session.reset()
                self.session.step(pb_utils.get_input_tensor_by_name(request, FRAME).as_numpy())
                feeds = self.engine.feeds
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(name, np.ascontiguousarray(feeds[name])) for name in self.names]))
            except MtcError as exc:
                responses.append(error_response(pb_utils, exc))
        return responses


class PostprocessModel:
    """FRAME and the network's alpha (and foreground) -> ALPHA, FOREGROUND, COMPOSITE at the frame's size."""

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils

        self.pb_utils = pb_utils
        self.io, self.engine, self.session = _load(args, _ReplayEngine)
        self.names = [t.name for t in self.io.outputs if t.role in ("alpha", "foreground")]

    def execute(self, requests: list) -> list:
        pb_utils, responses = self.pb_utils, []
        for request in requests:
            try:
                self.engine.outputs = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                                       for name in self.names}
                self.session.reset()
                matte = self.session.process(pb_utils.get_input_tensor_by_name(request, FRAME).as_numpy())
                responses.append(pb_utils.InferenceResponse(output_tensors=matte_tensors(pb_utils, matte, request)))
            except MtcError as exc:
                responses.append(error_response(pb_utils, exc))
        return responses
