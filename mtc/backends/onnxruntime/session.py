"""ONNX Runtime: CPU, CUDA and TensorRT execution providers.

Providers are chosen from `onnxruntime.get_available_providers()`: by default CUDA when this
onnxruntime build offers it, then CPU. ORT's own TensorRT provider is used only when asked for
(`providers=("tensorrt", "cuda", "cpu")`): a recurrent model's float downsample ratio feeds a Resize, which
TensorRT rejects ("shape tensor must have type Int32"), so that provider would hand most of the
graph back to CUDA after a long failed build. mtc's own TensorRT backend freezes the ratio per
optimization profile instead (see mtc.backends.tensorrt.build).

I/O binding keeps recurrent state where the provider computed it (GPU memory for CUDA) and
hands it back as the next frame's input. On the CPU it gains nothing: measured on the recurrent video model at
512x288 and 1920x1080 (2 cores), binding pre-allocated outputs was 6-8 % slower than
`session.run`, whose arena already reuses buffers; so it is on only for GPU providers.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from mtc.backends.base import DeviceState, default_threads
from mtc.errors import MtcError, exception_summary
from mtc.passes import describe_counts, onnx_passes_apply, run_onnx_passes

log = logging.getLogger("mtc")

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
OPTIMIZATION_LEVELS = ("all", "extended", "basic", "none")


def available_providers() -> tuple[str, ...]:
    import onnxruntime as ort

    return tuple(ort.get_available_providers())


def resolve_providers(requested: tuple[str, ...] | list[str] | None, available: tuple[str, ...]) -> list[str]:
    """Turn short names ("cpu", "cuda", "tensorrt") or full provider names into ORT's list.

    None picks CUDA (when this onnxruntime has it) then CPU; CPU is always appended last so
    nodes a GPU provider cannot run still have a home.
    """
    if requested is None:
        chosen = [p for p in ("CUDAExecutionProvider",) if p in available]
    else:
        chosen = []
        for name in requested:
            full = PROVIDER_ALIASES.get(name.lower(), name)
            if full not in available:
                hint = ("install onnxruntime-gpu (and CUDA/cuDNN) instead of onnxruntime" if full in GPU_PROVIDERS
                        else f"choose from: {', '.join(available)}")
                raise MtcError(f"onnxruntime here has no {full} (available: {', '.join(available)})", hint=hint)
            if full not in chosen:
                chosen.append(full)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def _provider_options(provider: str) -> dict:
    if provider == "TensorrtExecutionProvider":
        from mtc.artifact.cache import cache_dir

        folder = cache_dir() / "onnxruntime-tensorrt"
        folder.mkdir(parents=True, exist_ok=True)
        return {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(folder),
                "trt_timing_cache_enable": True, "trt_timing_cache_path": str(folder)}
    return {}


def session_options(*, threads: int | None, allow_spinning: bool, optimization: str):
    import onnxruntime as ort

    if optimization not in OPTIMIZATION_LEVELS:
        raise MtcError(f"unknown optimization level {optimization!r}", hint=f"choose one of: {', '.join(OPTIMIZATION_LEVELS)}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[optimization]
    # Spinning wastes the core a peer session needs when several sessions alternate.
    spin = "1" if allow_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    options.log_severity_level = 3
    return options


def with_onnx_passes(model: str | Path | bytes) -> str | bytes:
    """The model as this ONNX Runtime should load it: after the "onnx" passes that apply to it
    (mtc.passes.onnxruntime: ops an older version lacks), as bytes if they rewrote it, else as
    given. When no pass applies, the file is not even parsed."""
    source = model if isinstance(model, bytes) else str(model)
    if not onnx_passes_apply("onnxruntime"):
        return source
    import onnx

    try:
        proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(source)
    except Exception:  # missing, not ONNX, or corrupt: ONNX Runtime's loader says which
        return source
    proto, counts = run_onnx_passes(proto, backend="onnxruntime")
    if not any(counts.values()):
        return source
    log.debug("onnxruntime: %s", describe_counts("onnxruntime", "onnx", counts))
    return proto.SerializeToString()


class OrtBackend:
    """ONNX Runtime with the CPU, CUDA or TensorRT execution provider.

    Args:
        model: an ONNX file or its serialized bytes.
        threads: intra-op threads (CPU provider); defaults to the CPUs this process may use.
        allow_spinning: let idle worker threads spin (faster alone, slower beside other sessions).
        optimization: graph optimization level ("all", "extended", "basic", "none").
        providers: provider names ("cpu", "cuda", "tensorrt" or ORT's full names), best first;
            None: CUDA if available, then CPU.
        optimized_model: a model saved by `mtc build --backend onnxruntime` (already optimized
            for this onnxruntime and CPU); loaded with optimizations off to skip that work.
        state_pairs: (input, output) names of recurrent state, for I/O binding.
        io_binding: keep state outputs in provider memory and bind them as the next inputs;
            None turns it on for GPU providers only (on the CPU it measured slower).
    """

    name = "onnxruntime"
    fresh_outputs = True
    compiles_per_shape = False  # any input shape runs at once: a probe frame costs one inference

    def __init__(self, model: str | Path | bytes, *, threads: int | None = None, allow_spinning: bool = True,
                 optimization: str = "all", providers: tuple[str, ...] | list[str] | None = None,
                 optimized_model: Path | None = None, state_pairs: tuple[tuple[str, str], ...] = (),
                 io_binding: bool | None = None):
        import onnxruntime as ort

        self.providers = resolve_providers(providers, available_providers())
        source = with_onnx_passes(model)
        provider_list = [(p, _provider_options(p)) for p in self.providers]
        self.session = None
        self.optimized_model: Path | None = None  # set when the pre-optimized model is what runs
        if optimized_model is not None and Path(optimized_model).is_file():
            options = session_options(threads=threads, allow_spinning=allow_spinning, optimization="none")
            try:
                self.session = ort.InferenceSession(str(optimized_model), options, providers=provider_list)
                self.optimized_model = Path(optimized_model)
                log.debug("onnxruntime: loaded the pre-optimized model %s", optimized_model)
            except Exception as exc:  # a damaged cache entry must not stop the run: use the source
                log.warning("onnxruntime: ignoring the cached optimized model %s (%s)", optimized_model,
                            exception_summary(exc, 200))
        if self.session is None:
            options = session_options(threads=threads, allow_spinning=allow_spinning, optimization=optimization)
            try:
                self.session = ort.InferenceSession(source, options, providers=provider_list)
            except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
                what = "the model" if isinstance(model, bytes) else str(model)
                detail = exception_summary(exc, 300)
                raise MtcError(f"onnxruntime cannot load {what}: {detail}",
                               hint="the file is corrupt or uses an op this onnxruntime does not support; re-export it") from None
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self.threads = options.intra_op_num_threads
        self.active_providers = tuple(self.session.get_providers())
        on_gpu = self.active_providers[0] in GPU_PROVIDERS
        self.device = "cuda" if on_gpu else "cpu"
        self.precision = "fp32"
        self.state_pairs = tuple((i, o) for i, o in state_pairs if i in self.input_names and o in self.output_names)
        self.io_binding = bool(self.state_pairs) and (on_gpu if io_binding is None else io_binding)
        self._input_of = {o: i for i, o in self.state_pairs}
        self._state_values: dict[str, object] = {}  # input name -> OrtValue holding last frame's state
        self._generation = 0

    def describe(self) -> str:
        extras = (", pre-optimized model" if self.optimized_model else "") + (", I/O binding for state" if self.io_binding else "")
        return f"onnxruntime {self.active_providers[0].replace('ExecutionProvider', '')}, {self.threads} threads{extras}"

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.io_binding:
            return self._run_bound(feeds)
        outputs = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, outputs))

    def _is_current(self, handle: DeviceState) -> bool:
        return handle.owner is self and handle.generation == self._generation

    def _run_bound(self, feeds: dict) -> dict:
        binding = self.session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, DeviceState) and value.owner is self:
                if not self._is_current(value):
                    value.numpy()  # raises the stale-handle error
                binding.bind_ortvalue_input(name, self._state_values[name])
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in self.output_names:
            binding.bind_output(name, self.device if name in self._input_of else "cpu")
        self.session.run_with_iobinding(binding)
        self._generation += 1
        result = {}
        for name, value in zip(self.output_names, binding.get_outputs()):
            if name in self._input_of:
                target = self._input_of[name]
                self._state_values[target] = value
                result[name] = DeviceState(self, target, tuple(value.shape()), np.float32, self._generation,
                                           fetch=value.numpy, is_current=self._is_current)
            else:
                result[name] = value.numpy()
        return result


def cpu_fingerprint() -> str:
    """The CPU features an optimized ORT model may depend on (NCHWc layouts, VNNI kernels)."""
    flags: list[str] = []
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    found = set(line.split(":", 1)[1].split())
                    flags = sorted(found & {"avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
                                            "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"})
                    break
    except OSError:
        pass
    return f"{os.uname().machine}:{'+'.join(flags) or 'generic'}"


def probe_state_shapes(model_path, io, height: int, width: int, ratio: float | None) -> dict[str, tuple[int, ...]]:
    """Run the graph once on the CPU and return the state shapes it produces for one input size
    (what engine builders and the export check compare the manifest's declared strides with)."""
    backend = OrtBackend(model_path, optimization="basic")
    outputs = backend.run(io.example_feeds(height, width, downsample_ratio=ratio))
    return {pair.input: tuple(outputs[pair.output].shape) for pair in io.states}


def check_state_shapes(model_path, io, height: int, width: int, ratio: float | None, *, hint: str) -> None:
    """Run the graph once and raise if a state's shape is not what the manifest's strides give."""
    from mtc.artifact.profiles import state_shapes

    declared = state_shapes(io, height, width, ratio)
    for name, shape in probe_state_shapes(model_path, io, height, width, ratio).items():
        if shape != declared[name]:
            raise MtcError(f"state {name} is {shape} in the graph at {width}x{height}, but its declared stride "
                           f"gives {declared[name]}", hint=hint)
