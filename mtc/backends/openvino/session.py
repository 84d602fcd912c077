"""OpenVINO on the CPU: static shapes per resolution, explicit inference precision.

Why static shapes: OpenVINO plans memory and picks kernels once per compiled model, and a recurrent model's
graph is only static when both the frame size and the downsample ratio are known (the ratio
feeds a Resize). So for every input signature (frame size + ratio) this backend clones the
model, turns the ratio input into a constant, reshapes every input to its concrete shape and
compiles. The recurrent-state shapes come from OpenVINO's own shape inference on the 1x1x1x1
initial states (a broadcast), so one compiled model serves the whole shot: frame 0's
1x1x1x1 zero states are expanded to the real shape (the recurrent video model gives bit-identical output for both).

Why the precision is explicit: on CPUs with AVX-512 BF16 or AMX, OpenVINO runs FP32 models in
BF16 unless told otherwise (MAD ~0.3e-3 on a recurrent model's alpha). mtc never changes numerics silently:
`precision="fp32"` (the default) pins f32, "bf16" asks for bf16 and fails where the CPU has no
BF16 support. The precision the compiled model reports is logged and kept in `self.precision`.

Static shapes also let the backend rewrite what OpenVINO runs slowly, through the registered
graph passes (mtc.passes, backend "openvino"): e.g. a bilinear upsample of a few channels to
the frame size by an integer factor becomes a depthwise transposed convolution with the same
values. "read" passes run once on the graph as read, "static" passes once per input signature.

Two caches on disk, both under the mtc cache: the rewritten graphs (OpenVINO IR, keyed by the
model's hash, the input signature, the passes' fingerprint and the OpenVINO version), so a
load after `mtc build --backend openvino` (or after a first run) applies no pass; and the
compiled models (OpenVINO's `CACHE_DIR`, one folder per input signature and compile settings),
so it skips compilation too. Both are sealed (mtc.artifact.cache): a few damaged bytes in a
compiled blob still load and give wrong mattes, so every entry's sha256 is recorded when it is
written and checked before OpenVINO reads it; a damaged entry is rebuilt with a warning.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from mtc.artifact.cache import (
    SEAL_SUFFIX,
    check_entry,
    discard_entry,
    enforce_cache_bound,
    seal_entry,
    sealed_files,
    verified_entry,
)
from mtc.artifact.manifest import ModelIO
from mtc.backends.base import default_threads, is_broadcast_initial, require
from mtc.backends.openvino import MAX_STATIC_SHAPES
from mtc.errors import MtcError, exception_summary
from mtc.fsutil import atomic_write_text, out_of_space
from mtc.passes import PassContext, describe_counts, fingerprint, run_onnx_passes, run_passes
from mtc.passes.openvino.ops import openvino_ops
from mtc.passes.openvino.split_outputs import MergedOutput

log = logging.getLogger("mtc")

# mtc name -> OpenVINO INFERENCE_PRECISION_HINT
PRECISIONS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
# compiled models kept per backend: a handful of resolutions, each with its own memory plan
MAX_COMPILED = 6
# Below this much free space a failed compile with a blob cache is blamed on the disk (a blob
# is about the size of the model's weights).
CACHE_HEADROOM_BYTES = 64 << 20


def openvino_cache_dir() -> Path:
    from mtc.artifact.cache import cache_dir

    path = cache_dir() / "openvino"
    path.mkdir(parents=True, exist_ok=True)
    return path


def compile_config(*, precision: str, threads: int | None) -> dict:
    """The compile_model properties this backend uses (also what `mtc build` precompiles with);
    CACHE_DIR is added per input signature (`CompiledCache`)."""
    if precision not in PRECISIONS:
        raise MtcError(f"unknown precision {precision!r} for openvino", hint=f"choose one of: {', '.join(PRECISIONS)}")
    config = {
        "INFERENCE_PRECISION_HINT": PRECISIONS[precision],
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
        "INFERENCE_NUM_THREADS": threads or default_threads(),
    }
    return config


class _Compiled:
    __slots__ = ("request", "state_shapes", "input_names", "output_names", "seconds")

    def __init__(self, request, state_shapes, input_names, output_names, seconds):
        self.request, self.state_shapes = request, state_shapes
        self.input_names, self.output_names, self.seconds = input_names, output_names, seconds


class OpenVinoBackend:
    """OpenVINO on the CPU.

    Args:
        model: the artifact's ONNX file (plain FP32 or with Q/DQ nodes).
        io: the manifest's I/O contract; tells which inputs are recurrent state (their shapes
            come from shape inference) and which input is the downsample ratio (frozen to a
            constant per compiled model).
        precision: "fp32" (default) or "bf16" (or "fp16" where the device supports it).
        threads: inference threads; defaults to the CPUs this process may use.
        static_shapes: compile one static model per input signature (default); False compiles
            the dynamic model once (slower per frame, measured).
        max_static_shapes: with static shapes, the distinct input signatures compiled static;
            further ones share one dynamic-shape model (see MAX_STATIC_SHAPES).
        cache: keep compiled models in the mtc cache (CACHE_DIR).
        device: OpenVINO device name.
        rewrite_graph: run the registered OpenVINO graph passes (mtc.passes.openvino), each the
            same function within its stated exactness; False runs the file as OpenVINO reads
            it (what benchmarks compare against).
        log_compiles: log the first compile (its shapes, time and inference precision) at INFO;
            False logs it at DEBUG, for the many short-lived candidates a quantization checks.
    """

    name = "openvino"
    fresh_outputs = False

    def __init__(self, model: str | Path, *, io: ModelIO | None = None, precision: str = "fp32",
                 threads: int | None = None, static_shapes: bool = True, cache: bool = True, device: str = "CPU",
                 max_static_shapes: int = MAX_STATIC_SHAPES,
                 rewrite_graph: bool = True, model_sha256: str | None = None, log_compiles: bool = True):
        ov = require("openvino", what="OpenVINO")
        self._ov = ov
        self.core = ov.Core()
        self.device = device
        self.requested_precision = precision
        self.config = compile_config(precision=precision, threads=threads)
        self.threads = self.config["INFERENCE_NUM_THREADS"]
        if precision == "bf16" and device == "CPU":
            capabilities = self.core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
            if "BF16" not in capabilities:
                raise MtcError("this CPU has no BF16 support, so OpenVINO would silently run FP32",
                               hint="use precision='fp32' (or a CPU with AVX-512 BF16 / AMX)")
        self.rewrite_graph = rewrite_graph
        key = model_cache_key(Path(model), ov.__version__, sha256=model_sha256) if cache else None
        self._graphs = GraphCache(openvino_cache_dir() / "graphs" / key) if key and rewrite_graph else None
        self._compiled_cache = CompiledCache(openvino_cache_dir() / "compiled" / key) if key else None
        self.model, self._merged = self._read(Path(model))
        self.input_names = tuple(i.get_any_name() for i in self.model.inputs)
        self.output_names = tuple(name for o in self.model.outputs for name in self._output_parts(o.get_any_name()))
        self.static_shapes = static_shapes
        self.compiles_per_shape = static_shapes
        self.max_static_shapes = max_static_shapes
        self._static_signatures: set[tuple] = set()  # signatures given a static model so far
        self._states = {p.input: p.output for p in io.states} if io is not None else {}
        self._frozen = (io.downsample.input,) if io is not None and io.downsample is not None else ()
        self._frozen = tuple(n for n in self._frozen if n in self.input_names)
        self._compiled: OrderedDict[tuple, _Compiled] = OrderedDict()
        self.precision: str | None = None  # what the compiled model actually runs, once known
        self.compile_seconds: list[float] = []
        self._log_compiles = log_compiles

    def _read(self, path: Path):
        """The graph after the "onnx" and "read" passes (from the graph cache when it has it),
        and the outputs merged in it."""
        cached = self._graphs.load(self.core, "read") if self._graphs is not None else None
        if cached is not None:
            model, meta = cached
            log.debug("openvino: %s (from the graph cache)", describe_counts("openvino", "read", meta["counts"]))
            return model, {name: MergedOutput.from_dict(m) for name, m in meta["merged"].items()}
        graph, merged = _onnx_with_merged_outputs(path) if self.rewrite_graph else (str(path), {})
        try:
            model = self.core.read_model(graph)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses with long messages
            detail = exception_summary(exc, 300)
            raise MtcError(f"openvino cannot read {path}: {detail}",
                           hint="the file is corrupt or uses an op OpenVINO does not support; try backend='onnxruntime'") from None
        if not self.rewrite_graph:
            log.debug("openvino: graph passes off")
            return model, merged
        counts = run_passes(model, backend="openvino", stage="read")
        log.debug("openvino: %s", describe_counts("openvino", "read", counts))
        if self._graphs is not None:
            self._graphs.save(self._ov, model, "read", {"counts": counts,
                                                        "merged": {n: m.to_dict() for n, m in merged.items()}})
        return model, merged

    def describe(self) -> str:
        shapes = "static shapes per resolution" if self.static_shapes else "dynamic shapes"
        return f"openvino {self.device}, precision {self.precision or self.requested_precision}, {self.threads} threads, {shapes}"

    # ---- compilation ------------------------------------------------------------------------

    def _signature(self, feeds: dict) -> tuple:
        """Frame-size signature: non-state input shapes plus frozen input values."""
        parts = []
        for name in self.input_names:
            if name in self._states:
                continue
            value = feeds[name]
            if name in self._frozen:
                parts.append((name, tuple(np.asarray(value, np.float32).ravel().tolist())))
            else:
                parts.append((name, tuple(value.shape)))
        return tuple(parts)

    def _freeze(self, model, name: str, value: np.ndarray) -> None:
        ops = openvino_ops()
        parameter = next(p for p in model.get_parameters() if p.output(0).get_any_name() == name
                         or p.get_friendly_name() == name)
        constant = ops.constant(np.asarray(value, dtype=parameter.get_element_type().to_dtype()))
        for target in list(parameter.output(0).get_target_inputs()):
            target.replace_source_output(constant.output(0))
        model.remove_parameter(parameter)

    def _compile(self, feeds: dict, *, static: bool) -> _Compiled:
        signature = repr(self._signature(feeds)) if static else "dynamic"
        cached = self._graphs.load(self.core, signature) if self._graphs is not None else None
        if cached is not None:
            model, meta = cached
            state_shapes = {name: tuple(shape) for name, shape in meta["state_shapes"].items()}
            log.debug("openvino: %s (from the graph cache)", describe_counts("openvino", "static", meta["counts"]))
        else:
            model, state_shapes, counts = self._static_model(feeds, static=static)
            if self._graphs is not None and self._graphs.save(self._ov, model, signature,
                                                              {"counts": counts, "state_shapes": state_shapes}):
                # Compile what later loads will read: OpenVINO keys its compiled-model cache on
                # the graph, and a graph read from IR differs in details from the one in memory.
                reloaded = self._graphs.load(self.core, signature)
                if reloaded is not None:  # else evicted meanwhile by another process: compile the one in memory
                    model = reloaded[0]

        config, cache_hit = dict(self.config), False
        if self._compiled_cache is not None:
            folder = self._compiled_cache.folder_for(repr((signature, self.rewrite_graph, sorted(self.config.items()),
                                                           self.device)))
            cache_hit = self._compiled_cache.prepare(folder)
            if folder is not None:
                config["CACHE_DIR"] = str(folder)
        started = time.perf_counter()
        try:
            compiled = self.core.compile_model(model, self.device, config)
        except Exception as exc:
            # OpenVINO reports a blob it could not write as a generic error: say it was the disk.
            if "CACHE_DIR" in config and out_of_space(Path(config["CACHE_DIR"]), CACHE_HEADROOM_BYTES):
                raise MtcError(f"disk full while OpenVINO wrote its compiled-model cache in {config['CACHE_DIR']}",
                               hint="free some space, or set MTC_CACHE to a folder on another disk") from None
            detail = exception_summary(exc, 300)
            raise MtcError(f"openvino cannot compile the model for {self.device}: {detail}",
                           hint="try backend='onnxruntime'") from None
        seconds = time.perf_counter() - started
        if "CACHE_DIR" in config and not cache_hit:
            self._compiled_cache.seal(Path(config["CACHE_DIR"]))
        self.compile_seconds.append(seconds)
        first = self.precision is None
        self.precision = _precision_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
        announce = log.info if first and self._log_compiles else log.debug
        announce("openvino: compiled for %s in %.1f s, inference precision %s (requested %s)",
                 self._describe_signature(feeds), seconds, self.precision, self.requested_precision)
        if self.precision != self.requested_precision and self.device == "CPU":
            raise MtcError(f"openvino compiled the model in {self.precision}, not the requested {self.requested_precision}",
                           hint="this OpenVINO/CPU cannot honour the precision; use precision='fp32'")
        inputs = tuple(_port_name(i, self.input_names) for i in compiled.inputs)
        outputs = tuple(_port_name(o, (*self._merged, *self.output_names)) for o in compiled.outputs)
        return _Compiled(compiled.create_infer_request(), state_shapes, inputs, outputs, seconds)

    def _static_model(self, feeds: dict, *, static: bool):
        """A clone of the graph made static for `feeds` (ratio frozen, inputs reshaped, state
        shapes inferred) with the "static" passes run; returns it, the state shapes and the
        pass counts. Without static shapes: the graph as read."""
        model = self.model.clone()
        state_shapes, counts = {}, {}
        if not static:
            return model, state_shapes, counts
        try:
            for name in self._frozen:
                self._freeze(model, name, np.asarray(feeds[name]))
            # States first at their fed shape (1x1x1x1 on frame 0): shape inference then gives
            # the real state shapes, which the compiled model takes from frame 0 on.
            shapes = {name: list(np.shape(feeds[name])) for name in self.input_names if name not in self._frozen}
            model.reshape(shapes)
            for name, output in self._states.items():
                inferred = model.output(output).get_partial_shape()
                if inferred.is_static:
                    state_shapes[name] = tuple(int(d) for d in inferred.to_shape())
            if state_shapes:
                shapes.update({n: list(s) for n, s in state_shapes.items()})
                model.reshape(shapes)
            if self.rewrite_graph:
                frame_sizes = frozenset(tuple(shape[2:]) for name, shape in shapes.items()
                                        if name not in self._states and len(shape) == 4)
                counts = run_passes(model, backend="openvino", stage="static", context=PassContext(frame_sizes))
                log.debug("openvino: %s", describe_counts("openvino", "static", counts))
        except Exception as exc:  # OpenVINO raises plain RuntimeErrors from shape inference
            detail = exception_summary(exc, 300)
            raise MtcError(f"openvino cannot make the model static for {self._describe_signature(feeds)}: {detail}",
                           hint="pass static_shapes=False to OpenVinoBackend, or use backend='onnxruntime'") from None
        return model, state_shapes, counts

    def _describe_signature(self, feeds: dict) -> str:
        parts = []
        for name in self.input_names:
            if name in self._states:
                continue
            value = feeds[name]
            parts.append(f"{name}={np.asarray(value).ravel()[0]:g}" if name in self._frozen
                         else f"{name}={'x'.join(map(str, np.shape(value)))}")
        return ", ".join(parts)

    def compiled_for(self, feeds: dict) -> _Compiled:
        key = self._signature(feeds) if self.static_shapes else ()
        if key not in self._static_signatures and len(self._static_signatures) >= self.max_static_shapes:
            key = ()  # past the static budget: the shared dynamic-shape model
        entry = self._compiled.get(key)
        if entry is None:
            if key == () and self.static_shapes:
                log.info("openvino: more than %d input sizes; new sizes share one dynamic-shape model",
                         self.max_static_shapes)
            entry = self._compile(feeds, static=key != ())
            if key != ():
                self._static_signatures.add(key)
            self._compiled[key] = entry
            while len(self._compiled) > MAX_COMPILED:
                self._compiled.popitem(last=False)
        else:
            self._compiled.move_to_end(key)
        return entry

    # ---- inference --------------------------------------------------------------------------

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        entry = self.compiled_for(feeds)
        request = entry.request
        alive = []  # shared-memory tensors read these arrays during infer(): keep them referenced
        for name in entry.input_names:
            value = np.asarray(feeds[name])
            shape = entry.state_shapes.get(name)
            if shape is not None and tuple(value.shape) != shape:
                if not is_broadcast_initial(value, shape):
                    raise MtcError(f"state {name} has shape {value.shape}, expected {shape} for this frame size",
                                   hint="reset the session when the frame size changes")
                value = np.broadcast_to(value, shape)
            if value.dtype != np.float32 or not value.flags.c_contiguous:
                value = np.ascontiguousarray(value, dtype=np.float32)
            alive.append(value)
            request.set_tensor(name, self._ov.Tensor(value, shared_memory=True))
        request.infer()
        del alive
        # Outputs are views of the request's buffers; they stay valid until the next run (as
        # the session's contract allows), except state, which is fed back and must be a copy
        # because the next inference overwrites the same buffers while reading it.
        result = {}
        for index, name in enumerate(entry.output_names):
            data = request.get_output_tensor(index).data
            if name in self._merged:
                result.update(self._merged[name].split(data))
            else:
                result[name] = data.copy() if name in self._states.values() else data
        return result

    def _output_parts(self, name: str) -> tuple[str, ...]:
        merged = self._merged.get(name)
        return (name,) if merged is None else tuple(part for part, _, _ in merged.parts)


def _onnx_with_merged_outputs(path: Path) -> tuple[str | bytes, dict[str, MergedOutput]]:
    """The model for read_model after the "onnx" passes (its path, or its bytes, rewritten or
    not: the file is read once) and the outputs merged in it.

    See mtc.passes.openvino.split_outputs. Files that onnx cannot parse, or that keep their
    weights outside, go to OpenVINO by path (its reader gives the error, if any).
    """
    import onnx

    try:
        data = path.read_bytes()
        proto = onnx.load_from_string(data)
    except Exception:  # missing, not ONNX, or corrupt: OpenVINO's reader says which
        return str(path), {}
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        return str(path), {}
    proto, results = run_onnx_passes(proto, backend="openvino")
    if not any(results.values()):
        return data, {}
    log.debug("openvino: %s", describe_counts("openvino", "onnx", {name: len(result) if isinstance(result, list)
                                                                  else result for name, result in results.items()}))
    merged = results.get("merge_split_outputs") or []
    return proto.SerializeToString(), {m.name: m for m in merged}


def _port_name(port, known: tuple[str, ...]) -> str:
    """The graph's name for a port (compiled ports can carry extra tensor names)."""
    names = port.get_names()
    return next((n for n in known if n in names), port.get_any_name())


def _precision_name(value) -> str:
    text = str(value).lower()
    for token, name in (("bf16", "bf16"), ("bfloat16", "bf16"), ("f16", "fp16"), ("float16", "fp16"),
                        ("f32", "fp32"), ("float32", "fp32")):
        if token in text:
            return name
    return text


def model_cache_key(path: Path, openvino_version: str, *, sha256: str | None = None) -> str | None:
    """The cache key for the model at `path`: its hash, the passes' fingerprint, OpenVINO's
    version. `sha256` (the manifest's, already verified) saves hashing the file again; None when
    the model cannot be read (OpenVINO's reader reports why) or there is no cache folder."""
    import hashlib

    try:
        digest = (sha256 or hashlib.sha256(path.read_bytes()).hexdigest())[:24]
        openvino_cache_dir()
    except (OSError, MtcError) as exc:
        log.debug("openvino: no cache (%s)", getattr(exc, "message", exc))
        return None
    # A folder name: OpenVINO's version string holds slashes ("2026.4.1-...-releases/2026/4").
    return f"{digest}-{fingerprint('openvino')}-{re.sub(r'[^A-Za-z0-9._-]', '_', openvino_version)}"


class GraphCache:
    """Rewritten OpenVINO graphs on disk (IR + a JSON of facts, then a seal written last), one per
    stage or input signature, under a folder keyed by `model_cache_key`. A damaged entry is
    rebuilt, never trusted."""

    def __init__(self, folder: Path):
        self.folder = folder

    def _paths(self, key: str) -> tuple[Path, Path, Path]:
        import hashlib

        name = key if key == "read" else hashlib.sha256(key.encode()).hexdigest()[:24]
        return self.folder / f"{name}.xml", self.folder / f"{name}.json", self.folder / f"{name}{SEAL_SUFFIX}"

    def load(self, core, key: str):
        import json

        xml, meta, seal = self._paths(key)
        if not verified_entry(seal, [xml, xml.with_suffix(".bin"), meta],
                              what=f"openvino: graph cache entry {xml.name}", then="rebuilding it"):
            return None
        try:
            return core.read_model(str(xml)), json.loads(meta.read_text(encoding="utf-8"))
        except Exception as exc:  # sealed but unreadable by this OpenVINO: rebuild it
            log.warning("openvino: graph cache entry %s unreadable (%s); rebuilding it", xml.name,
                        exception_summary(exc, 120))
            discard_entry(seal, [xml, xml.with_suffix(".bin"), meta])
            return None

    def save(self, ov, model, key: str, meta: dict) -> bool:
        import json
        import os
        import tempfile

        xml, meta_path, seal = self._paths(key)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=self.folder) as scratch:
                tmp_xml = Path(scratch) / xml.name
                # Weights stay FP32: the cached graph must compute what the rewritten one does.
                ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
                os.replace(tmp_xml.with_suffix(".bin"), xml.with_suffix(".bin"))
                os.replace(tmp_xml, xml)
            atomic_write_text(meta_path, json.dumps(meta))
            seal_entry(seal, [xml, xml.with_suffix(".bin"), meta_path])
        except Exception as exc:  # a full or read-only cache costs time on the next load, not this run
            log.warning("openvino: could not cache the rewritten graph (%s)", exception_summary(exc, 200))
            return False
        enforce_cache_bound(keep=[seal], root=openvino_cache_dir().parent)
        return True


class CompiledCache:
    """OpenVINO's compiled-model cache (its CACHE_DIR), one folder per input signature and
    compile settings, under a folder keyed by `model_cache_key`.

    OpenVINO names and writes its blobs itself, so each folder holds one compiled model and is
    sealed after the compile that wrote it; before OpenVINO may read a folder, its seal is
    checked, and a folder that fails is emptied (with a warning) so that OpenVINO compiles again.
    """

    SEAL = "compiled" + SEAL_SUFFIX

    def __init__(self, folder: Path):
        self.folder = folder

    def folder_for(self, key: str) -> Path | None:
        import hashlib

        folder = self.folder / hashlib.sha256(key.encode()).hexdigest()[:24]
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a read-only cache costs compile time, not the run
            log.warning("openvino: compiled models will not be cached (%s)", exc)
            return None
        return folder

    @staticmethod
    def _members(folder: Path) -> list[Path]:
        return [p for p in folder.iterdir() if p.is_file() and p.name != CompiledCache.SEAL and not p.name.startswith(".")]

    def prepare(self, folder: Path | None) -> bool:
        """True when `folder` holds a compiled model that matches its seal; a damaged or
        unsealed one is deleted first."""
        if folder is None:
            return False
        seal = folder / self.SEAL
        members = self._members(folder)
        if not members and not seal.exists():
            return False
        reason = check_entry(seal)
        if reason is None and {p.name for p in members} <= {p.name for p in sealed_files(seal)}:
            return True
        log.warning("openvino: compiled-model cache %s not used (%s); recompiling", folder.name,
                    reason or "it holds files its seal does not list")
        discard_entry(seal, members)
        return False

    def seal(self, folder: Path) -> None:
        """Seal what the compile just wrote (nothing, when OpenVINO wrote no blob)."""
        members = self._members(folder)
        if not members:
            return
        try:
            seal_entry(folder / self.SEAL, members)
        except OSError as exc:  # unsealed, the entry is rebuilt next time: never trusted
            log.warning("openvino: could not seal the compiled-model cache (%s)", exc)
            return
        enforce_cache_bound(keep=[folder / self.SEAL], root=openvino_cache_dir().parent)

