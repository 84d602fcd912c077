"""What every backend shares: the protocol, thread defaults, device-resident state handles.

A backend runs a graph: named inputs in, named outputs out. Everything that is about matting
(pre/post-processing, recurrent state, resolution rules) lives in the session, so a backend
only implements `run()`.

Recurrent state and device memory: the session stores each state output and feeds it back as
the paired input on the next frame, without looking inside. A GPU backend therefore returns
state outputs as `DeviceState` handles instead of numpy arrays; when the same handle comes
back as an input it binds the memory it already holds (no device -> host -> device round trip).
A handle converts to numpy on demand (`np.asarray(handle)`), so code that inspects outputs,
such as the export parity check, keeps working.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from mtc.errors import MtcError


class Backend(Protocol):
    name: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    # True when every run returns arrays that no later run writes into (ONNX Runtime); False
    # when outputs are views of buffers the next run reuses (OpenVINO, TensorRT's pinned host
    # memory), so whoever keeps a result past the next frame must copy it.
    fresh_outputs: bool
    # True when a new input shape costs a compile or an engine build (OpenVINO static shapes,
    # TensorRT), so the session probes nothing at load that real frames do not need.
    compiles_per_shape: bool

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    # Optional: `host_input(name, shape) -> np.ndarray | None`, a host buffer the backend uploads
    # `name` from; the session writes the preprocessed image there instead of its own array.


def default_threads() -> int:
    """Physical-core count is what ORT wants; on these 2-core machines that is os.cpu_count()."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


# optional module -> the extra that installs it
EXTRAS = {"openvino": "openvino", "tensorrt": "trt", "polygraphy": "trt", "cuda": "trt"}


def require(module: str, *, what: str | None = None) -> Any:
    """Import an optional dependency, or raise MtcError naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        root = module.split(".")[0]
        extra = EXTRAS.get(root)
        hint = f"pip install 'mtc[{extra}]'" if extra else f"pip install {root}"
        raise MtcError(f"{what or root} is not installed ({exc.msg if hasattr(exc, 'msg') else exc})", hint=hint) from None


class DeviceState:
    """A state tensor that stays in backend memory between frames.

    Returned by GPU backends in place of a numpy array for recurrent state outputs. Passing it
    back as the paired input costs nothing; `np.asarray(handle)` copies it to the host. A handle
    is valid until the backend runs the next frame (the memory is then reused); using a stale
    handle raises MtcError instead of silently reading the next frame's state.
    """

    __slots__ = ("owner", "input_name", "shape", "dtype", "generation", "_fetch", "_is_current")

    def __init__(self, owner: object, input_name: str, shape: tuple[int, ...], dtype: np.dtype, generation: int,
                 fetch: Callable[[], np.ndarray], is_current: Callable[[DeviceState], bool]):
        self.owner = owner
        self.input_name = input_name
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.generation = generation
        self._fetch = fetch
        self._is_current = is_current

    @property
    def current(self) -> bool:
        return self._is_current(self)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def numpy(self) -> np.ndarray:
        if not self.current:
            raise MtcError(f"state {self.input_name!r} from frame generation {self.generation} was overwritten by a later frame",
                           hint="copy state with np.asarray(handle) before running the next frame")
        return self._fetch()

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        array = self.numpy()
        return array.astype(dtype) if dtype is not None else array

    def astype(self, dtype) -> np.ndarray:
        return self.numpy().astype(dtype)

    def __repr__(self) -> str:
        return f"DeviceState({self.input_name}, shape={self.shape}, dtype={self.dtype.name}, generation={self.generation})"


def is_broadcast_initial(value: np.ndarray, shape: tuple[int, ...]) -> bool:
    """True when `value` (e.g. a recurrent model's 1x1x1x1 zero state) broadcasts to `shape` without being it."""
    if tuple(value.shape) == tuple(shape) or value.ndim != len(shape):
        return False
    return all(v in (1, s) for v, s in zip(value.shape, shape))
