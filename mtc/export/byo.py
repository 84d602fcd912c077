"""Bring your own ONNX: infer a matting model's I/O contract from its graph, then compile it.

Roles come from names and shapes, and every guess can be overridden:

- the image input: a float 4-D input with 3 channels (a second one, named like a background,
  is the background plate);
- recurrent states: input/output pairs whose names differ only by an in/out suffix (`r1i` /
  `r1o`, `h_in` / `h_out`), or `--state IN:OUT`; their strides are measured on the graph;
- a downsample control: a float scalar input named like a ratio or scale;
- the alpha output: a 4-D output with 1 channel, preferring names such as `pha`, `alpha`,
  `mask`, or `--alpha NAME`; a 3-channel output named like a foreground is the foreground;
  every other output is kept as `aux`;
- the input size: fixed when the graph fixes it, else `--input-size`, else any size (floored
  to `--multiple-of`);
- normalisation: RGB in [0, 1] unless `--mean` / `--std` say otherwise (a graph cannot tell).

What cannot be inferred is a one-line error naming the flag that sets it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import onnx

from mtc.artifact.manifest import DownsampleRule, ModelIO, Preprocess, StatePair, TensorSpec
from mtc.artifact.profiles import downsampled_size
from mtc.errors import MtcError

ALPHA_NAMES = ("pha", "alpha", "matte", "mask", "output", "out", "sigmoid")
FOREGROUND_NAMES = ("fgr", "fg", "foreground")
BACKGROUND_NAMES = ("bgr", "bg", "background")
RATIO_NAMES = ("ratio", "downsample", "scale")
# (input suffix, output suffix) of recurrent state names, most specific first.
STATE_SUFFIXES = (("_in", "_out"), ("in", "out"), ("_i", "_o"), ("i", "o"))
TASKS = ("image", "video")


@dataclass(frozen=True)
class ContractHints:
    """What the user told us about the model (None: infer it).

    Attributes:
        task: "image" (no state) or "video" (recurrent, or run frame by frame).
        input_size: (width, height) the image input is resized to.
        multiple_of: model input sides are floored to a multiple of this (dynamic-size models).
        mean, std: per-channel normalisation after scaling RGB to [0, 1].
        states: (input, output) names of recurrent state pairs.
        alpha: the name of the alpha output.
    """

    task: str | None = None
    input_size: tuple[int, int] | None = None
    multiple_of: int = 1
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    states: tuple[tuple[str, str], ...] = ()
    alpha: str | None = None


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param if d.dim_param else (d.dim_value or "?") for d in value.type.tensor_type.shape.dim]


def _is_float(value: onnx.ValueInfoProto) -> bool:
    return value.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)


def _named(name: str, words: tuple[str, ...]) -> bool:
    return any(re.search(rf"(^|[^a-z]){word}([^a-z]|$)", name.lower()) for word in words)


def _state_pairs(inputs: list[str], outputs: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for name in inputs:
        for in_suffix, out_suffix in STATE_SUFFIXES:
            if name.endswith(in_suffix) and len(name) > len(in_suffix):
                partner = name[: -len(in_suffix)] + out_suffix
                if partner in outputs:
                    pairs.append((name, partner))
                    break
    return pairs


def infer_contract(model: onnx.ModelProto, hints: ContractHints = ContractHints()) -> tuple[ModelIO, str]:
    """The I/O contract and task ("image_matting" / "video_matting") of a matting graph.

    Raises:
        MtcError: a role cannot be inferred, with the flag that sets it.
    """
    initializers = {i.name for i in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    outputs = list(model.graph.output)
    input_names, output_names = [v.name for v in inputs], [v.name for v in outputs]
    for state_in, state_out in hints.states:
        if state_in not in input_names or state_out not in output_names:
            raise MtcError(f"--state {state_in}:{state_out} does not name a graph input and output",
                           hint=f"inputs: {', '.join(input_names)}; outputs: {', '.join(output_names)}")
    pairs = list(hints.states) or _state_pairs(input_names, output_names)
    if hints.task == "image":
        pairs = []
    state_inputs, state_outputs = {a for a, _ in pairs}, {b for _, b in pairs}

    images, control, in_specs = [], None, []
    for value in inputs:
        dims = _dims(value)
        if value.name in state_inputs:
            in_specs.append(TensorSpec(value.name, "state", layout="NCHW"))
        elif _is_float(value) and len(dims) == 4 and dims[1] in (3, "?") or (
                _is_float(value) and len(dims) == 4 and isinstance(dims[1], str) and _named(value.name, ("src", "image", "input", "img"))):
            images.append(value)
        elif _is_float(value) and len(dims) <= 1 and _named(value.name, RATIO_NAMES):
            control = value.name
            in_specs.append(TensorSpec(value.name, "downsample_ratio"))
        else:
            raise MtcError(f"cannot tell what input {value.name!r} {dims} is: mtc feeds an RGB image, recurrent "
                           "states and a downsample ratio",
                           hint="if it is a recurrent state, pass --state INPUT:OUTPUT")
    if not images:
        raise MtcError("no input looks like an RGB image (float, 4-D, 3 channels)",
                       hint="mtc compiles models that take an NCHW RGB image")
    image = next((v for v in images if not _named(v.name, BACKGROUND_NAMES)), images[0])
    in_specs.insert(0, TensorSpec(image.name, "image", layout="NCHW", value_range=(0.0, 1.0)))
    for extra in images:
        if extra is image:
            continue
        if not _named(extra.name, BACKGROUND_NAMES) or any(s.role == "background" for s in in_specs):
            raise MtcError(f"the graph has a second image input {extra.name!r} that is not a background plate",
                           hint="mtc feeds one frame (and optionally a background plate named bgr/background)")
        in_specs.append(TensorSpec(extra.name, "background", layout="NCHW", value_range=(0.0, 1.0)))

    def channels(value) -> int | str:
        dims = _dims(value)
        return dims[1] if len(dims) == 4 else "?"

    candidates = [v for v in outputs if v.name not in state_outputs and channels(v) == 1]
    if hints.alpha is not None:
        alpha = next((v for v in outputs if v.name == hints.alpha), None)
        if alpha is None:
            raise MtcError(f"--alpha {hints.alpha!r} is not a graph output", hint=f"outputs: {', '.join(output_names)}")
    else:
        named = [v for v in candidates if _named(v.name, ALPHA_NAMES)]
        alpha = (named or candidates or [None])[0]
        if alpha is None:
            raise MtcError("no output looks like an alpha matte (4-D, 1 channel)",
                           hint=f"pass --alpha NAME (outputs: {', '.join(output_names)})")
    out_specs = []
    for value in outputs:
        if value.name == alpha.name:
            role = "alpha"
        elif value.name in state_outputs:
            role = "state"
        elif channels(value) == 3 and _named(value.name, FOREGROUND_NAMES):
            role = "foreground"
        else:
            role = "aux"
        out_specs.append(TensorSpec(value.name, role, layout="NCHW",
                                    value_range=(0.0, 1.0) if role in ("alpha", "foreground") else None))

    image_dims = _dims(image)
    if hints.input_size is not None:
        width, height = hints.input_size
        preprocess = Preprocess(mean=hints.mean, std=hints.std, resize="fixed", fixed_size=(height, width))
    elif isinstance(image_dims[2], int) and isinstance(image_dims[3], int):
        preprocess = Preprocess(mean=hints.mean, std=hints.std, resize="fixed", fixed_size=(image_dims[2], image_dims[3]))
    else:
        preprocess = Preprocess(mean=hints.mean, std=hints.std, multiple_of=hints.multiple_of)
    io = ModelIO(
        inputs=tuple(in_specs), outputs=tuple(out_specs),
        states=tuple(StatePair(a, b) for a, b in pairs), preprocess=preprocess,
        downsample=DownsampleRule(input=control) if control is not None else None)
    task = hints.task or ("video" if pairs else "image")
    return io, f"{task}_matting"


def measure_state_strides(model_bytes: bytes, io: ModelIO, *, width: int = 512, height: int = 288) -> ModelIO:
    """Give each state pair the stride the graph shows at one input size (None where the state
    is not a power-of-two reduction of the working size; engines then are not prepared ahead)."""
    import dataclasses

    from mtc.backends.onnxruntime.session import probe_state_shapes

    if not io.states:
        return io
    ratio = io.downsample.ratio_for(height, width) if io.downsample is not None else None
    work_h, work_w = downsampled_size(height, width, ratio)
    try:
        shapes = probe_state_shapes(model_bytes, io, height, width, ratio)
    except Exception as exc:  # noqa: BLE001 - any failure means the guess about the states is wrong
        raise MtcError(f"the graph does not run with zero initial states of shape (1, 1, 1, 1) ({exc})",
                       hint="check the --state pairs, or export with --task image if it has no recurrent state") from None
    states = []
    for pair in io.states:
        shape = shapes[pair.input]
        stride = None
        if len(shape) == 4 and shape[2] and shape[3]:
            guess = 2 ** round(math.log2(max(work_h / shape[2], 1)))
            if math.ceil(work_h / guess) == shape[2] and math.ceil(work_w / guess) == shape[3]:
                stride = guess
        states.append(dataclasses.replace(pair, stride=stride))
    return dataclasses.replace(io, states=tuple(states))


def describe_contract(io: ModelIO, task: str) -> str:
    """One line per role, for the user to check what was inferred."""
    lines = [f"task: {task}"]
    lines += [f"input {t.name}: {t.role}" for t in io.inputs]
    lines += [f"output {t.name}: {t.role}" for t in io.outputs]
    lines += [f"state {p.input} -> {p.output}: stride {p.stride}" for p in io.states]
    pre = io.preprocess
    size = f"{pre.fixed_size[1]}x{pre.fixed_size[0]}" if pre.resize == "fixed" else f"any (multiple of {pre.multiple_of})"
    lines.append(f"input size: {size}; normalisation: mean {pre.mean}, std {pre.std} on RGB in [0, 1]")
    return "\n".join(lines)
