"""Triton model configurations (`config.pbtxt` as data) derived from an artifact's manifest.

Three forms, one per `mtc package --kind`:

- `network`: the ONNX graph (or a TensorRT plan) itself. Dims and dtypes come from the
  manifest. Image models whose graph has a free batch dimension get dynamic batching; recurrent
  models get the sequence batcher with implicit state (Triton keeps each sequence's state, zero
  on its first request and on START).
- `python`: the Python backend running `mtc.runtime` (raw uint8 RGB frames in, alpha out); the
  model keeps each sequence's session itself, keyed by the correlation ID Triton passes in.
- `ensemble`: Python pre-processing, the network model, Python post-processing, so raw-frame
  clients reach a network model that can run on TensorRT.
"""

from __future__ import annotations

from dataclasses import dataclass

from mtc.artifact.manifest import Manifest, TensorSpec
from mtc.errors import MtcError
from mtc.serve.pbtxt import Enum

PLATFORMS = {"onnxruntime_onnx": "model.onnx", "tensorrt_plan": "model.plan"}
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
                "uint8": "TYPE_UINT8"}
# How long a sequence may stay silent before Triton frees its slot (and the Python model its
# session): long enough for a client that pauses between frames, short enough that abandoned
# streams do not pile up.
DEFAULT_IDLE_SECONDS = 60.0

# The raw-frame interface of the Python-backend and ensemble forms.
FRAME = "FRAME"  # HxWx3 uint8 RGB
PLATE = "PLATE"  # HxWx3 uint8 RGB: the empty scene, for models with a background input
ALPHA = "ALPHA"  # HxW float32 in [0, 1]
FOREGROUND = "FOREGROUND"  # HxWx3 float32 in [0, 1]
COMPOSITE = "COMPOSITE"  # HxWx3 uint8: the foreground over green
# Sequence controls Triton fills in for every request of a sequence-batched model.
START, END, READY, CORRID = "START", "END", "READY", "CORRID"


@dataclass(frozen=True)
class Layout:
    """What batching a network graph allows: Triton's max_batch_size and each tensor's dims."""

    max_batch_size: int
    dims: dict[str, list[int]]  # without the batch dimension when max_batch_size > 0
    reason: str  # why batching is on or off, for the command's report


def _dims(shape: tuple) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in shape]


def graph_shapes(model_path) -> dict[str, tuple]:
    """Every graph input's and output's shape from the ONNX file (names for free dimensions)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    shapes = {}
    for value in list(graph.input) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims)
    return shapes


def tensor_shapes(manifest: Manifest, graph: dict[str, tuple]) -> dict[str, tuple]:
    """The manifest's shape of every tensor, the graph's where the manifest declares none."""
    shapes = {}
    for spec in manifest.io.inputs + manifest.io.outputs:
        shape = spec.shape or graph.get(spec.name, ())
        if not shape:
            raise MtcError(f"neither the manifest nor the graph gives a shape for tensor {spec.name!r}",
                           hint="re-export the artifact with the current mtc, which records every shape")
        shapes[spec.name] = tuple(shape)
    return shapes


def network_layout(manifest: Manifest, shapes: dict[str, tuple], max_batch: int) -> Layout:
    """Batch frames of different requests together only where the graph allows it: every tensor
    has a free leading dimension and nothing is per sequence (state) or a per-call scalar."""
    io = manifest.io
    full = {name: _dims(shape) for name, shape in shapes.items()}
    if io.states:
        return Layout(0, full, "recurrent: one frame per sequence step, state kept by Triton")
    if io.downsample is not None:
        return Layout(0, full, f"the scalar input {io.downsample.input!r} has no batch dimension")
    fixed = [name for name, shape in shapes.items() if len(shape) < 2 or isinstance(shape[0], int)]
    if fixed:
        return Layout(0, full, f"the graph fixes the batch dimension of {fixed[0]!r}")
    if max_batch < 1:
        return Layout(0, full, "batching turned off (--max-batch 0)")
    return Layout(max_batch, {name: dims[1:] for name, dims in full.items()},
                  f"dynamic batching of up to {max_batch} frames")


def _triton_type(spec: TensorSpec) -> Enum:
    return Enum(TRITON_TYPES[spec.dtype])


def _state_dims(input_shape: tuple, output_shape: tuple, initial: tuple) -> list[int]:
    """One dims list for a state's input and output: fixed only where both sides and the
    initial value agree (a zero state of 1x1x1x1 broadcasts to any size, so often nothing is)."""
    dims = []
    for axis, (a, b) in enumerate(zip(input_shape, output_shape)):
        start = initial[axis] if axis < len(initial) else None
        dims.append(a if isinstance(a, int) and a == b and a == start else -1)
    return dims


def _idle_us(seconds: float) -> int:
    return int(seconds * 1_000_000)


def network_config(manifest: Manifest, shapes: dict[str, tuple], *, name: str, platform: str = "onnxruntime_onnx",
                   max_batch: int = 8, instances: int = 1, device: str = "gpu",
                   idle_seconds: float = DEFAULT_IDLE_SECONDS) -> tuple[dict, Layout]:
    """The network model's configuration and the batching layout it uses."""
    if platform not in PLATFORMS:
        raise MtcError(f"unknown Triton platform {platform!r}", hint=f"use one of {', '.join(PLATFORMS)}")
    io = manifest.io
    layout = network_layout(manifest, shapes, max_batch)
    state_names = {p.input for p in io.states} | {p.output for p in io.states}
    config = {
        "name": name,
        "platform": platform,
        "default_model_filename": PLATFORMS[platform],
        "max_batch_size": layout.max_batch_size,
        "input": [{"name": t.name, "data_type": _triton_type(t), "dims": layout.dims[t.name]}
                  for t in io.inputs if t.name not in state_names],
        "output": [{"name": t.name, "data_type": _triton_type(t), "dims": layout.dims[t.name]}
                   for t in io.outputs if t.name not in state_names],
        "instance_group": [{"count": instances, "kind": Enum("KIND_GPU" if device == "gpu" else "KIND_CPU")}],
    }
    if io.states:
        by_name = {t.name: t for t in io.inputs}
        states = []
        for pair in io.states:
            if pair.initial_value != 0.0:
                raise MtcError(f"state {pair.input!r} starts at {pair.initial_value:g}, and the network form "
                               "declares zero initial states only", hint="package it with --kind python instead")
            data_type = _triton_type(by_name[pair.input])
            states.append({
                "input_name": pair.input, "output_name": pair.output, "data_type": data_type,
                "dims": _state_dims(shapes[pair.input], shapes[pair.output], pair.initial_shape),
                "initial_state": [{"name": f"{pair.input}_zero", "data_type": data_type,
                                   "dims": list(pair.initial_shape), "zero_data": True}],
            })
        # No control inputs here: ONNX Runtime and TensorRT feed every declared input to the
        # graph, which has none for them; Triton itself resets implicit state on START.
        config["sequence_batching"] = {"max_sequence_idle_microseconds": _idle_us(idle_seconds),
                                       "oldest": {"max_candidate_sequences": 64}, "state": states}
    elif layout.max_batch_size:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": 1000}
    return config, layout


def _frame_tensor(name: str, dtype: str, dims: list[int], *, optional: bool = False) -> dict:
    tensor = {"name": name, "data_type": Enum(dtype), "dims": dims}
    if optional:
        tensor["optional"] = True
    return tensor


def sequence_controls() -> list[dict]:
    """START/END/READY as int32 0/1 and the correlation ID as uint64, for models that read them."""
    flags = [{"name": name, "control": [{"kind": Enum(f"CONTROL_SEQUENCE_{name}"), "int32_false_true": [0, 1]}]}
             for name in (START, END, READY)]
    return flags + [{"name": CORRID, "control": [{"kind": Enum("CONTROL_SEQUENCE_CORRID"),
                                                  "data_type": Enum("TYPE_UINT64")}]}]


def python_config(manifest: Manifest, *, name: str, instances: int = 1, backend: str = "auto",
                  threads: int | None = None, idle_seconds: float = DEFAULT_IDLE_SECONDS) -> dict:
    """The Python-backend model: raw frames in, mattes out, `mtc.runtime` inside."""
    io = manifest.io
    inputs = [_frame_tensor(FRAME, "TYPE_UINT8", [-1, -1, 3])]
    if io.input_with_role("background") is not None:
        # Optional: sent with the first frame (or whenever the scene changes), then kept.
        inputs.append(_frame_tensor(PLATE, "TYPE_UINT8", [-1, -1, 3], optional=True))
    parameters = {"backend": backend, "idle_seconds": str(idle_seconds)}
    if threads:
        parameters["threads"] = str(threads)
    config = {
        "name": name,
        "backend": "python",
        "max_batch_size": 0,
        "input": inputs,
        "output": [_frame_tensor(ALPHA, "TYPE_FP32", [-1, -1]), _frame_tensor(FOREGROUND, "TYPE_FP32", [-1, -1, 3]),
                   _frame_tensor(COMPOSITE, "TYPE_UINT8", [-1, -1, 3])],
        "instance_group": [{"count": instances, "kind": Enum("KIND_CPU")}],
        "parameters": [{"key": key, "value": {"string_value": value}} for key, value in parameters.items()],
    }
    if io.states or io.input_with_role("background") is not None:
        # Per-stream models: recurrent state, or a plate that later frames reuse.
        config["sequence_batching"] = {"max_sequence_idle_microseconds": _idle_us(idle_seconds),
                                       "control_input": sequence_controls(),
                                       "oldest": {"max_candidate_sequences": 64}}
    return config


def ensemble_names(name: str) -> dict[str, str]:
    """The models of an ensemble called `name`: its steps and itself (written last)."""
    return {"pre": f"{name}_pre", "network": f"{name}_network", "post": f"{name}_post", "ensemble": name}


def ensemble_configs(manifest: Manifest, shapes: dict[str, tuple], *, name: str, platform: str = "onnxruntime_onnx",
                     instances: int = 1, device: str = "gpu",
                     idle_seconds: float = DEFAULT_IDLE_SECONDS) -> dict[str, dict]:
    """Configs of the four models, by role: Python pre-processing, the network, Python
    post-processing, and the ensemble that chains them for raw-frame clients.

    The network runs unbatched here (the pre step emits one frame per request); a recurrent
    network keeps its implicit state, and the ensemble passes each request's sequence ID and
    flags on to it.
    """
    io = manifest.io
    if io.input_with_role("background") is not None:
        raise MtcError("the ensemble form takes no background plate", hint="package this model with --kind python")
    names = ensemble_names(name)
    network, layout = network_config(manifest, shapes, name=names["network"], platform=platform, max_batch=0,
                                     instances=instances, device=device, idle_seconds=idle_seconds)
    fed = [t for t in io.inputs if t.role in ("image", "downsample_ratio")]
    returned = [t for t in io.outputs if t.role in ("alpha", "foreground")]
    cpu = [{"count": instances, "kind": Enum("KIND_CPU")}]
    frame = _frame_tensor(FRAME, "TYPE_UINT8", [-1, -1, 3])
    matte_outputs = [_frame_tensor(ALPHA, "TYPE_FP32", [-1, -1]), _frame_tensor(FOREGROUND, "TYPE_FP32", [-1, -1, 3]),
                     _frame_tensor(COMPOSITE, "TYPE_UINT8", [-1, -1, 3])]

    def tensor(spec: TensorSpec) -> dict:
        return {"name": spec.name, "data_type": _triton_type(spec), "dims": layout.dims[spec.name]}

    def mapping(pairs) -> list[dict]:
        return [{"key": key, "value": value} for key, value in pairs]

    pre = {"name": names["pre"], "backend": "python", "max_batch_size": 0, "input": [frame],
           "output": [tensor(t) for t in fed], "instance_group": cpu}
    post = {"name": names["post"], "backend": "python", "max_batch_size": 0,
            "input": [frame] + [tensor(t) for t in returned], "output": matte_outputs, "instance_group": cpu}
    steps = [
        {"model_name": names["pre"], "model_version": -1, "input_map": mapping([(FRAME, FRAME)]),
         "output_map": mapping((t.name, f"_{t.name}_in") for t in fed)},
        {"model_name": names["network"], "model_version": -1, "input_map": mapping((t.name, f"_{t.name}_in") for t in fed),
         "output_map": mapping((t.name, f"_{t.name}_out") for t in returned)},
        {"model_name": names["post"], "model_version": -1,
         "input_map": mapping([(FRAME, FRAME)] + [(t.name, f"_{t.name}_out") for t in returned]),
         "output_map": mapping((out, out) for out in (ALPHA, FOREGROUND, COMPOSITE))},
    ]
    ensemble = {"name": name, "platform": "ensemble", "max_batch_size": 0, "input": [frame], "output": matte_outputs,
                "ensemble_scheduling": {"step": steps}}
    return {"pre": pre, "network": network, "post": post, "ensemble": ensemble}
