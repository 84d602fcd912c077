"""Matting sessions per client stream, as a server model keeps them.

One model instance loads the artifact once and serves many streams: each stream (a Triton
sequence, keyed by its correlation ID) gets its own `MattingSession` over the shared engine, so
recurrent state, scene-cut memory and background plates never leak between streams. A stream
ends on END or after `idle_seconds` without a frame.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mtc.errors import MtcError
from mtc.runtime import Matte, MattingSession


@dataclass
class _Stream:
    session: MattingSession
    last_used: float


class StreamSessions:
    """Sessions keyed by stream ID over one loaded engine.

    Args:
        template: a loaded session; its engine, I/O contract and settings are shared by every stream.
        idle_seconds: forget a stream silent for this long (the server frees its slot then too).
        clock: the time source (seconds), replaceable in tests.
    """

    def __init__(self, template: MattingSession, *, idle_seconds: float, clock: Callable[[], float] = time.monotonic):
        self.template = template
        self.idle_seconds = idle_seconds
        self.clock = clock
        self._streams: dict[int, _Stream] = {}

    def __len__(self) -> int:
        return len(self._streams)

    def __contains__(self, stream_id: int) -> bool:
        return stream_id in self._streams

    def _new_session(self) -> MattingSession:
        t = self.template
        session = MattingSession(t.io, t.backend, downsample_ratio=t.downsample_ratio,
                                 scene_cut_threshold=t.scene_cut_threshold, check_outputs=t.checks_outputs)
        session.manifest = getattr(t, "manifest", None)
        return session

    def forget_idle(self) -> list[int]:
        """Drop the streams silent for longer than `idle_seconds`; returns their IDs."""
        now = self.clock()
        gone = [key for key, stream in self._streams.items() if now - stream.last_used > self.idle_seconds]
        for key in gone:
            del self._streams[key]
        return gone

    def process(self, stream_id: int, frame: np.ndarray, *, start: bool, end: bool,
                plate: np.ndarray | None = None) -> Matte:
        """Matte the next frame of a stream. `start` begins it afresh (state reset), `end` forgets
        it after this frame; `plate` sets the stream's background plate.

        Raises:
            MtcError: a stream that was never started (or was forgotten as idle), or a bad frame.
        """
        self.forget_idle()
        if start:
            self._streams[stream_id] = _Stream(self._new_session(), self.clock())
        stream = self._streams.get(stream_id)
        if stream is None:
            raise MtcError(f"stream {stream_id} has no state here: it was never started, ended, or idle "
                           f"for over {self.idle_seconds:g} s",
                           hint="send its first frame with the sequence START flag")
        stream.last_used = self.clock()
        try:
            if plate is not None:
                stream.session.set_background(plate)
            # The caller owns the result beyond this call: the session reuses its buffers.
            return stream.session.process(frame).copy()
        finally:
            if end:
                self._streams.pop(stream_id, None)
