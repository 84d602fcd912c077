"""TensorRT runtime: deserialized plans, device buffers allocated once, state kept on the GPU.

Why TensorRT's API directly (with cuda-python) rather than Polygraphy's `TrtRunner`: the
runner is a comparison tool. It copies every output back to the host on every call, owns its
buffers per call shape, and has no notion of an output that is the next call's input, so
a recurrent model's four state tensors would cross PCIe twice per frame; it also cannot capture a CUDA graph
around the whole frame. The runtime also should not need Polygraphy (only the builder does).
Here: one stream; per profile, device buffers for every engine tensor at the profile's max
shapes and pinned host buffers only for tensors that cross to the host (image in, alpha and
foreground out); state outputs are copied device-to-device into their paired input buffers
after each frame and returned as `DeviceState` handles, so the session's usual "feed the
state outputs back" costs nothing. Optionally the whole frame (upload, inference, downloads,
state copies) is captured once into a CUDA graph and replayed. The session preprocesses each
frame straight into the image's pinned buffer (`host_input`), so the only host-side copy of
the image is the uint8 -> float conversion itself.

The backend is told the state pairs by the manifest at construction; no session change is
needed. Frame 0 (and every reset) feeds numpy 1x1x1x1 zeros, which become a memset of the
full-size state buffers (the recurrent video model gives bit-identical results for both, see tests).

Plans are found or built by mtc.backends.tensorrt.build.resolve_plan (artifact engines/ first, then
the cache; stale plans are detected from their sidecar before deserialization).
"""

from __future__ import annotations

import ctypes
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mtc.artifact.manifest import Manifest
from mtc.artifact.plan import BuilderSettings, read_verified_plan
from mtc.artifact.profiles import (
    BufferPlan,
    ResolutionProfile,
    buffer_plan,
    parse_profiles,
    profile_for_frame,
    state_shapes,
)
from mtc.backends.base import DeviceState, is_broadcast_initial
from mtc.errors import MtcError

log = logging.getLogger("mtc")

RATIO_POLICIES = ("profile", "strict")


def _modules():
    """(tensorrt, cuda runtime) — a function so tests can substitute fakes for both."""
    from mtc.backends.tensorrt.build import import_cudart, import_tensorrt

    return import_tensorrt(), import_cudart()


def _target(device: int):
    from mtc.backends.tensorrt.build import current_target

    return current_target(device)


def _resolve_plan(folder, manifest, profile, **kwargs) -> Path:
    from mtc.backends.tensorrt.build import resolve_plan

    return resolve_plan(folder, manifest, profile, **kwargs)


def _check(result, what: str):
    from mtc.backends.tensorrt.build import cuda_check

    return cuda_check(result, what)


@dataclass
class _Buffer:
    device: int  # device pointer
    nbytes: int
    dtype: np.dtype
    host: np.ndarray | None = None  # pinned, flat, of dtype (max elements)
    host_ptr: int = 0


@dataclass
class _Engine:
    """One profile: its engine, context, buffers and (optional) CUDA graphs."""

    profile: ResolutionProfile
    plan: BufferPlan
    engine: object
    context: object
    buffers: dict[str, _Buffer]
    engine_inputs: tuple[str, ...]
    engine_outputs: tuple[str, ...]
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # current concrete shapes
    graphs: dict[tuple, object] = field(default_factory=dict)  # shape signature -> cudaGraphExec
    warm: set = field(default_factory=set)  # signatures run once (TensorRT wants one run before capture)


class TensorRTBackend:
    """Runs an artifact's TensorRT plans on an NVIDIA GPU.

    Args:
        folder: the artifact folder.
        manifest: its manifest (I/O roles, state pairs, model hash).
        profiles: resolution profiles ("hd,4k", or ResolutionProfile objects) to serve; a frame
            no listed profile accepts gets an exact profile built on demand when
            `build_missing`, else an error. None: exact profiles on demand only.
        ratio_policy: "profile" runs a frame at its profile's frozen downsample ratio when the
            session asks for another (an artifact exported before the auto rule snapped to 1/k
            asks for 0.267 at HD, which becomes a recurrent model's recommended 0.25; logged once); "strict"
            requires the requested ratio (used when the user fixed one) and builds or picks a
            profile with exactly that ratio.
        cuda_graph: capture each frame's work into a CUDA graph and replay it.
        build_missing: build plans that are missing or stale (minutes, once, into the cache).
        device: CUDA device index.
        settings: TensorRT builder settings for plans built here.
    """

    name = "tensorrt"
    fresh_outputs = False
    compiles_per_shape = True  # a frame outside every profile means building a plan

    def __init__(self, folder: str | Path, manifest: Manifest, *, profiles=None, ratio_policy: str = "profile",
                 cuda_graph: bool = False, build_missing: bool = True, device: int = 0,
                 settings: BuilderSettings = BuilderSettings()):
        if ratio_policy not in RATIO_POLICIES:
            raise MtcError(f"unknown ratio policy {ratio_policy!r}", hint=f"choose one of: {', '.join(RATIO_POLICIES)}")
        self.trt, self.cudart = _modules()
        self.folder = Path(folder)
        self.manifest = manifest
        self.io = manifest.io
        self.ratio_policy = ratio_policy
        self.cuda_graph = cuda_graph
        self.build_missing = build_missing
        self.settings = settings
        self.device_index = device
        self.profiles = list(parse_profiles(profiles)) if profiles else []
        self.profiles = [p.for_model(self.io) for p in self.profiles]
        _check(self.cudart.cudaSetDevice(device), "selecting the GPU")
        self.target = _target(device)
        self.stream = _check(self.cudart.cudaStreamCreate(), "creating a stream")
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        self.runtime = self.trt.Runtime(self.logger)
        self.input_names = tuple(t.name for t in self.io.inputs)
        self.output_names = tuple(t.name for t in self.io.outputs)
        self.image_name = self.io.input_with_role("image").name
        self.ratio_name = self.io.downsample.input if self.io.downsample is not None else None
        self._state_input_of = {p.output: p.input for p in self.io.states}
        self._state_inputs = {p.input for p in self.io.states}
        self._engines: dict[str, _Engine] = {}
        self._generation = 0
        self._current: _Engine | None = None
        self._warned_ratio: set = set()
        self.precision = manifest.precision.mode
        self.device = "cuda"

    def describe(self) -> str:
        graphs = ", CUDA graphs" if self.cuda_graph else ""
        names = ", ".join(p.name for p in self.profiles) or "built per frame size"
        return (f"tensorrt {self.trt.__version__} on {self.target.device_name or 'GPU'} (sm {self.target.compute_capability}), "
                f"profiles: {names}{graphs}")

    # ---- profiles and engines ---------------------------------------------------------------

    def profile_for(self, width: int, height: int, ratio: float | None) -> ResolutionProfile:
        """Pick the profile that serves a frame, following the ratio policy."""
        accepting = [p for p in self.profiles if p.accepts(width, height)]
        if ratio is not None and self.ratio_policy == "strict":
            accepting = [p for p in accepting if math.isclose(p.downsample_ratio, ratio, rel_tol=0, abs_tol=1e-6)]
        if accepting:
            # the tightest range first: a static profile beats a wide dynamic one
            chosen = min(accepting, key=lambda p: (p.sizes[2][0] * p.sizes[2][1] - p.sizes[0][0] * p.sizes[0][1],
                                                   p.name))
            if ratio is not None and not math.isclose(chosen.downsample_ratio, ratio, abs_tol=1e-6) \
                    and chosen.name not in self._warned_ratio:
                self._warned_ratio.add(chosen.name)
                log.info("tensorrt: profile %s fixes downsample_ratio %g (the session asked for %g)",
                         chosen.name, chosen.downsample_ratio, ratio)
            return chosen
        if not self.build_missing:
            listed = ", ".join(f"{p.name} ({p.width}x{p.height}@{p.downsample_ratio})" for p in self.profiles) or "none"
            raise MtcError(f"no TensorRT profile serves {width}x{height}" + (f" at ratio {ratio:g}" if ratio else "")
                           + f" (profiles: {listed})",
                           hint=f"build one: mtc build {self.folder} --backend tensorrt --profile {width}x{height}"
                                + (f"@{ratio:g}" if ratio else ""))
        profile = profile_for_frame(width, height, ratio).for_model(self.io)
        self.profiles.append(profile)
        return profile

    def _engine_for(self, profile: ResolutionProfile) -> _Engine:
        entry = self._engines.get(profile.name)
        if entry is not None:
            return entry
        plan_path = _resolve_plan(self.folder, self.manifest, profile, target=self.target, settings=self.settings,
                                  build_missing=self.build_missing)
        engine = self.runtime.deserialize_cuda_engine(read_verified_plan(plan_path))
        if engine is None:
            raise MtcError(f"TensorRT could not deserialize {plan_path}",
                           hint=f"delete it and its .json sidecar, then rebuild with `mtc build {self.folder} --backend tensorrt`")
        context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = tuple(n for n in names if engine.get_tensor_mode(n) == self.trt.TensorIOMode.INPUT)
        outputs = tuple(n for n in names if engine.get_tensor_mode(n) != self.trt.TensorIOMode.INPUT)
        plan = buffer_plan(self.io, profile)
        buffers = {}
        for spec in plan.buffers:
            if spec.name not in names:
                raise MtcError(f"plan {plan_path.name} has no tensor {spec.name!r}",
                               hint="the plan does not belong to this artifact; rebuild it")
            dtype = np.dtype(self.trt.nptype(engine.get_tensor_dtype(spec.name)))
            nbytes = max(1, int(np.prod(spec.shape))) * dtype.itemsize
            pointer = _check(self.cudart.cudaMalloc(nbytes), f"allocating {nbytes} bytes for {spec.name}")
            buffer = _Buffer(pointer, nbytes, dtype)
            if spec.host:
                buffer.host_ptr = _check(self.cudart.cudaMallocHost(nbytes), f"allocating pinned memory for {spec.name}")
                raw = (ctypes.c_byte * nbytes).from_address(buffer.host_ptr)
                buffer.host = np.frombuffer(raw, dtype=dtype)
            buffers[spec.name] = buffer
            if not context.set_tensor_address(spec.name, pointer):
                raise MtcError(f"TensorRT refused the address for {spec.name}", hint="report this as a bug")
        unplanned = sorted(set(names) - set(buffers))
        if unplanned:  # TensorRT needs an address for every I/O tensor
            raise MtcError(f"plan {plan_path.name} has tensors the manifest does not describe: {', '.join(unplanned)}",
                           hint="the plan does not belong to this artifact, or the model has outputs mtc cannot size")
        entry = _Engine(profile, plan, engine, context, buffers, inputs, outputs)
        log.info("tensorrt: profile %s ready (%s), %.1f MB device, %.1f MB pinned host", profile.name, plan_path.name,
                 plan.device_bytes / 1e6, plan.host_bytes / 1e6)
        self._engines[profile.name] = entry
        return entry

    # ---- the frame path ---------------------------------------------------------------------

    def _is_current(self, handle: DeviceState) -> bool:
        return handle.owner is self._current and handle.generation == self._generation

    def host_input(self, name: str, shape: tuple[int, ...]) -> np.ndarray | None:
        """The pinned buffer the next frame's `name` input is read from, if it exists yet.

        A session that writes its preprocessed image straight into it saves one host copy.
        """
        engine = self._current
        if engine is None or name not in engine.buffers or engine.buffers[name].host is None:
            return None
        count = int(np.prod(shape))
        buffer = engine.buffers[name]
        return buffer.host[:count].reshape(shape) if count * buffer.dtype.itemsize <= buffer.nbytes else None

    def run(self, feeds: dict[str, np.ndarray]) -> dict:
        image = feeds[self.image_name]
        spec = self.io.input_with_role("image")
        layout = spec.layout or "NCHW"
        height, width = image.shape[layout.index("H")], image.shape[layout.index("W")]
        ratio = float(np.asarray(feeds[self.ratio_name]).ravel()[0]) if self.ratio_name else None
        profile = self.profile_for(width, height, ratio)
        engine = self._engine_for(profile)
        if engine is not self._current:
            self._current = engine  # handles from another profile's buffers are stale from here on
            self._generation += 1
        shapes = {n: tuple(feeds[n].shape) for n in engine.engine_inputs if n not in self._state_inputs}
        shapes.update(state_shapes(self.io, height, width, profile.downsample_ratio))
        self._set_shapes(engine, shapes)
        stream = self.stream
        memcpy_kind = self.cudart.cudaMemcpyKind
        for name in engine.engine_inputs:
            value, buffer, shape = feeds[name], engine.buffers[name], shapes[name]
            count = int(np.prod(shape)) * buffer.dtype.itemsize
            if name in self._state_inputs:
                if isinstance(value, DeviceState):
                    if not self._is_current(value):
                        value.numpy()  # raises the stale-handle error
                    continue  # already in the input buffer (copied there after the last frame)
                value = np.asarray(value)
                if not np.any(value):
                    _check(self.cudart.cudaMemsetAsync(buffer.device, 0, count, stream), f"clearing {name}")
                    continue
                if is_broadcast_initial(value, shape):
                    value = np.broadcast_to(value, shape)
                host = np.ascontiguousarray(value, dtype=buffer.dtype)
                _check(self.cudart.cudaMemcpy(buffer.device, host.ctypes.data, count,
                                              memcpy_kind.cudaMemcpyHostToDevice), f"uploading {name}")
                continue
            staged = buffer.host[: count // buffer.dtype.itemsize]
            if not (isinstance(value, np.ndarray) and value.ctypes.data == buffer.host_ptr):
                np.copyto(staged.reshape(shape), value, casting="same_kind")
        signature = tuple(sorted(shapes.items()))
        graph = engine.graphs.get(signature)
        if graph is not None:
            _check(self.cudart.cudaGraphLaunch(graph, stream), "launching the CUDA graph")
        elif self.cuda_graph and signature in engine.warm:
            graph = self._capture(engine, shapes)
            if graph is not None:
                engine.graphs[signature] = graph
                _check(self.cudart.cudaGraphLaunch(graph, stream), "launching the CUDA graph")
            else:
                self._enqueue(engine, shapes)
        else:
            self._enqueue(engine, shapes)
            engine.warm.add(signature)
        _check(self.cudart.cudaStreamSynchronize(stream), "running the engine")
        self._generation += 1
        return self._outputs(engine, shapes)

    def _set_shapes(self, engine: _Engine, shapes: dict) -> None:
        for name in engine.engine_inputs:
            if engine.shapes.get(name) != shapes[name]:
                if not engine.context.set_input_shape(name, shapes[name]):
                    raise MtcError(f"profile {engine.profile.name} does not accept {name} of shape {shapes[name]}",
                                   hint="build a profile for this frame size")
                engine.shapes[name] = shapes[name]
        for name in engine.engine_outputs:
            engine.shapes[name] = tuple(engine.context.get_tensor_shape(name))

    def _enqueue(self, engine: _Engine, shapes: dict) -> None:
        """Upload the image, run, download host outputs, copy state outputs to state inputs."""
        stream, kind = self.stream, self.cudart.cudaMemcpyKind
        for name in engine.engine_inputs:
            if name in self._state_inputs:
                continue
            buffer = engine.buffers[name]
            count = int(np.prod(shapes[name])) * buffer.dtype.itemsize
            _check(self.cudart.cudaMemcpyAsync(buffer.device, buffer.host_ptr, count, kind.cudaMemcpyHostToDevice,
                                               stream), f"uploading {name}")
        if not engine.context.execute_async_v3(int(stream)):
            raise MtcError(f"TensorRT failed to run profile {engine.profile.name}", hint="run with -v for TensorRT's log")
        for name in engine.engine_outputs:
            if name not in engine.buffers:
                continue
            buffer = engine.buffers[name]
            count = int(np.prod(engine.shapes[name])) * buffer.dtype.itemsize
            if name in self._state_input_of:
                target = engine.buffers[self._state_input_of[name]]
                _check(self.cudart.cudaMemcpyAsync(target.device, buffer.device, count, kind.cudaMemcpyDeviceToDevice,
                                                   stream), f"keeping state {name}")
            else:
                _check(self.cudart.cudaMemcpyAsync(buffer.host_ptr, buffer.device, count, kind.cudaMemcpyDeviceToHost,
                                                   stream), f"downloading {name}")

    def _capture(self, engine: _Engine, shapes: dict):
        cudart = self.cudart
        try:
            mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
            _check(cudart.cudaStreamBeginCapture(self.stream, mode), "starting CUDA graph capture")
            self._enqueue(engine, shapes)
            graph = _check(cudart.cudaStreamEndCapture(self.stream), "ending CUDA graph capture")
            executable = _check(cudart.cudaGraphInstantiate(graph, 0), "instantiating the CUDA graph")
            _check(cudart.cudaGraphDestroy(graph), "releasing the captured graph")
        except MtcError as exc:
            log.warning("tensorrt: CUDA graph capture failed (%s); running without graphs", exc.message)
            self.cuda_graph = False
            return None
        log.debug("tensorrt: captured a CUDA graph for profile %s", engine.profile.name)
        return executable

    def _outputs(self, engine: _Engine, shapes: dict) -> dict:
        result = {}
        generation = self._generation
        for name in self.output_names:
            if name not in engine.buffers:
                continue
            shape = engine.shapes[name]
            buffer = engine.buffers[name]
            if name in self._state_input_of:
                target_name = self._state_input_of[name]
                result[name] = DeviceState(engine, target_name, shape, buffer.dtype, generation,
                                           fetch=self._fetcher(engine.buffers[target_name], shape),
                                           is_current=self._is_current)
            else:
                result[name] = buffer.host[: int(np.prod(shape))].reshape(shape)
        return result

    def _fetcher(self, buffer: _Buffer, shape: tuple[int, ...]):
        def fetch() -> np.ndarray:
            out = np.empty(shape, buffer.dtype)
            _check(self.cudart.cudaStreamSynchronize(self.stream), "waiting for the GPU")
            _check(self.cudart.cudaMemcpy(out.ctypes.data, buffer.device, out.nbytes,
                                          self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost), "downloading state")
            return out

        return fetch

    def peak_device_memory_bytes(self) -> int:
        """Device memory this backend holds: its buffers plus each engine's activation memory."""
        total = 0
        for engine in self._engines.values():
            total += sum(b.nbytes for b in engine.buffers.values())
            total += int(getattr(engine.engine, "device_memory_size_v2", getattr(engine.engine, "device_memory_size", 0)))
        return total

    # ---- cleanup ----------------------------------------------------------------------------

    def close(self) -> None:
        """Free device and pinned memory, graphs and the stream (also on garbage collection)."""
        cudart = getattr(self, "cudart", None)
        if cudart is None:
            return
        for engine in self._engines.values():
            for graph in engine.graphs.values():
                cudart.cudaGraphExecDestroy(graph)
            for buffer in engine.buffers.values():
                cudart.cudaFree(buffer.device)
                if buffer.host_ptr:
                    buffer.host = None
                    cudart.cudaFreeHost(buffer.host_ptr)
        self._engines.clear()
        if getattr(self, "stream", None) is not None:
            cudart.cudaStreamDestroy(self.stream)
            self.stream = None
        self.cudart = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: modules may already be gone
            pass
