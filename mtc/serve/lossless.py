"""Lossless intermediate video: rendered pictures stored exactly, to be encoded once later.

When a video is matted in pieces on several workers, each piece keeps its pictures in FFV1
(lossless) until one writer encodes them all, in order, into the final file: encoding pieces
separately would change the encoder's decisions at every seam, and the result would differ from
a single run's.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from mtc.errors import MtcError
from mtc.fsutil import finish_file, temporary_prefix
from mtc.runtime.video_reader import FrameConverter

# Pixel formats FFV1 stores the pictures in, by channel count (2: a grey matte, HxW).
_FORMATS = {2: ("gray", "gray"), 3: ("rgb24", "bgr0"), 4: ("rgba", "bgra")}
_TIME_BASE = Fraction(1, 1000)


def _layout(picture: np.ndarray) -> tuple[str, str]:
    if picture.dtype != np.uint8 or picture.ndim not in (2, 3) or (picture.ndim == 3 and picture.shape[2] not in (3, 4)):
        raise MtcError(f"cannot store a picture of {picture.dtype} {picture.shape} losslessly",
                       hint="pass uint8 HxW, HxWx3 or HxWx4 pictures")
    return _FORMATS[2 if picture.ndim == 2 else picture.shape[2]]


class LosslessWriter:
    """Write uint8 pictures (all of one shape) to an FFV1 .mkv, atomically; a context manager."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(self.path.stem), suffix=".part.mkv", dir=self.path.parent)
        os.close(fd)
        self._tmp = Path(tmp)
        self._container = None
        self._stream = None
        self._layout: tuple[str, str] | None = None
        self._shape: tuple[int, ...] | None = None
        self._to_stored = FrameConverter()
        self.count = 0

    def write(self, picture: np.ndarray) -> None:
        layout = _layout(picture)
        if self._container is None:
            self._container = av.open(str(self._tmp), "w", format="matroska")
            self._stream = self._container.add_stream("ffv1", rate=1000)
            self._stream.width, self._stream.height = picture.shape[1], picture.shape[0]
            self._stream.pix_fmt = layout[1]
            self._stream.codec_context.time_base = _TIME_BASE
            self._layout, self._shape = layout, picture.shape
        elif picture.shape != self._shape:
            raise MtcError(f"picture {picture.shape} does not match the first {self._shape} in {self.path}",
                           hint="one lossless piece holds pictures of one size and kind")
        frame = self._to_stored(av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format=self._layout[0]),
                                format=self._layout[1])
        frame.pts, frame.time_base = self.count, _TIME_BASE
        self._container.mux(self._stream.encode(frame))
        self.count += 1

    def __enter__(self) -> LosslessWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        try:
            if self._container is not None:
                if kind is None:
                    self._container.mux(self._stream.encode(None))
                self._container.close()
            if kind is None:
                if self.count == 0:
                    raise MtcError(f"no pictures were written to {self.path}", hint="check that the piece has frames")
                finish_file(self._tmp, self.path, replace=True)
        finally:
            self._tmp.unlink(missing_ok=True)  # gone already where it became `path`


def read_lossless(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """The pictures of a file `LosslessWriter` wrote, in order, exactly as they were written."""
    with av.open(str(path), "r") as container:
        stream = container.streams.video[0]
        layout = {fmt: plain for plain, fmt in _FORMATS.values()}[stream.codec_context.pix_fmt]
        to_picture = FrameConverter()
        for frame in container.decode(stream):
            yield to_picture(frame, format=layout).to_ndarray()
