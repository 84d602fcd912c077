"""How much of an INT8 artifact's error vs FP32 is rounding noise that the network carries.

For each INT8 artifact, on mtc's built-in check data at the FP32 artifact's check sizes
(`quantize`'s own checks), with ONNX Runtime's exact float simulation of the Q/DQ graph (graph
optimizations off, so no integer kernel is involved):

- the simulation vs the FP32 artifact: what quantization costs;
- the simulation vs itself with the input of every activation quantizer multiplied by
  1 + eps, for each --eps: a change a few times float32's own rounding, which moves a value
  across a rounding threshold only where it sits within eps of its size from one.

Where the second is close to the first, the quantized network turns a handful of flipped
roundings into another draw of its whole rounding noise: kernels that sum in another order
than the simulation land that far from it, and learning that fits one draw cannot cancel it.

With --draws K, it also splits the error into what fresh rounding noise explains and what it
does not:

- weights only: every activation quantizer left out (its consumers read the float tensor),
  the INT8 weights kept: what the weights' rounding alone costs;
- K dithered draws: every activation quantizer rounds x + u * step and takes u * step off
  again (subtractive dither, u uniform in [-1/2, 1/2) per element, a new draw per seed), so
  its rounding error keeps its spread but is a fresh draw independent of x (values already
  on the grid, such as an 8-bit image or exact zeros, and clipped values keep their own);
  one draw vs FP32, and the mean of the K draws' alphas vs FP32. The mean keeps what every
  draw shares (the weights, clipping, and what the network's nonlinearities make of the
  noise) and averages the rest away: the part of the error that is not fresh noise, the
  only part learning could act on.

Alpha MAD x1e3 and dtSSD x1e2, as everywhere in mtc.

    python benchmarks/bench_rounding_noise.py --reference artifacts/rvm-mobilenetv3-fp32 \\
        artifacts/rvm-int8 artifacts/rvm-int8-dense [--frames 16] [--eps 1e-6,1e-5] [--draws 8] \\
        [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import dump, machine, ran_on, update_results  # noqa: E402

from mtc.graph_edit import attribute, readers_by_tensor  # noqa: E402


def scaled_quantizer_inputs(model: onnx.ModelProto, gain: float) -> onnx.ModelProto:
    """A copy of `model` where every QuantizeLinear of an activation (not of an initializer)
    reads its input times `gain`."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    constants = {i.name for i in graph.initializer}
    gain_name = "rounding_noise_gain"
    graph.initializer.append(numpy_helper.from_array(np.array(gain, np.float32), gain_name))
    nodes = []
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in constants:
            scaled = f"{node.input[0]}__times_gain__{node.name}"
            nodes.append(onnx.helper.make_node("Mul", [node.input[0], gain_name], [scaled], name=f"{node.name}__gain"))
            node.input[0] = scaled
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return out


class UnsupportedGraph(ValueError):
    """An activation quantizer whose dequantization this benchmark cannot follow."""


def _activation_quantizers(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    constants = {i.name for i in graph.initializer}
    return [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in constants]


def _dequantizations(readers: defaultdict[str, list[onnx.NodeProto]], quantizer: onnx.NodeProto
                     ) -> list[tuple[onnx.NodeProto, onnx.NodeProto | None]]:
    """(DequantizeLinear, the constant Pad between it and `quantizer` or None) for every
    dequantization of `quantizer`'s output: directly, or through a Pad that Q/DQ was hoisted
    over (which pads with the zero point, that is with 0.0 once dequantized)."""
    found = []
    for reader in readers[quantizer.output[0]]:
        if reader.op_type == "DequantizeLinear":
            found.append((reader, None))
            continue
        if reader.op_type != "Pad" or attribute(reader, "mode", b"constant") != b"constant":
            raise UnsupportedGraph(f"{quantizer.name}'s output is read by a {reader.op_type} ({reader.name}): only "
                                   "DequantizeLinear, or a constant Pad before it, can be followed")
        for dequantize in readers[reader.output[0]]:
            if dequantize.op_type != "DequantizeLinear":
                raise UnsupportedGraph(f"{reader.name} (a Pad of {quantizer.name}'s output) is read by a "
                                       f"{dequantize.op_type}, not a DequantizeLinear")
            found.append((dequantize, reader))
    return found


def activations_in_float(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose activation quantizers are left out: each dequantization of one
    becomes the float tensor it quantized (padded alike where a Pad sits between), while the
    weights stay INT8."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    replaced = {}  # by the dequantization's output (node names may be empty)
    readers = readers_by_tensor(graph)
    for quantizer in _activation_quantizers(graph):
        for dequantize, pad in _dequantizations(readers, quantizer):
            name = dequantize.output[0]
            replaced[name] = (onnx.helper.make_node("Identity", [quantizer.input[0]], [name], name=dequantize.name)
                              if pad is None else
                              onnx.helper.make_node("Pad", [quantizer.input[0], *pad.input[1:2]], [name],
                                                    name=dequantize.name))
    nodes = [replaced.get(node.output[0], node) for node in graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    return out


def dithered_quantizer_inputs(model: onnx.ModelProto, seed: int) -> onnx.ModelProto:
    """A copy of `model` whose activation quantizers round with subtractive dither: each
    quantizes x + r and each of its dequantizations takes r off again, r = u * step with u
    uniform in [-1/2, 1/2) per element (seeded by `seed` and the quantizer), and r = 0 where x
    is already on the grid or clipped (their error is no rounding noise)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    graph.initializer.extend([numpy_helper.from_array(np.array(1e-4, np.float32), "dither/on_grid"),
                              numpy_helper.from_array(np.array(0.5 + 1e-4, np.float32), "dither/half_step")])
    # nodes to put before and after a node, by that node's (final) first output
    before: dict[str, list[onnx.NodeProto]] = {}
    after: dict[str, list[onnx.NodeProto]] = {}
    readers = readers_by_tensor(graph)  # of the tensors this leaves as they are: quantizer outputs and Pads
    for number, quantizer in enumerate(_activation_quantizers(graph)):
        x, step = quantizer.input[0], quantizer.input[1]
        tag = f"dither{number}/"
        make = onnx.helper.make_node
        before[quantizer.output[0]] = [
            make("RandomUniformLike", [x], [tag + "u"], low=-0.5, high=0.5, seed=float(seed * 100003 + number)),
            # x's own rounding error, in steps: on the grid below the tolerance, clipped beyond half a step
            make("QuantizeLinear", list(quantizer.input), [tag + "q"]),
            make("DequantizeLinear", [tag + "q", *quantizer.input[1:]], [tag + "dq"]),
            make("Sub", [tag + "dq", x], [tag + "error"]),
            make("Abs", [tag + "error"], [tag + "size"]),
            make("Div", [tag + "size", step], [tag + "steps"]),
            make("Greater", [tag + "steps", "dither/on_grid"], [tag + "off_grid"]),
            make("Less", [tag + "steps", "dither/half_step"], [tag + "not_clipped"]),
            make("And", [tag + "off_grid", tag + "not_clipped"], [tag + "rounded"]),
            make("Cast", [tag + "rounded"], [tag + "mask"], to=onnx.TensorProto.FLOAT),
            make("Mul", [tag + "u", tag + "mask"], [tag + "u_kept"]),
            make("Mul", [tag + "u_kept", step], [tag + "r"]),
            make("Add", [x, tag + "r"], [tag + "x"]),
        ]
        for dequantize, pad in _dequantizations(readers, quantizer):
            offset, rounded = tag + "r", f"{dequantize.output[0]}__dithered"
            if pad is not None:  # the offset padded as the quantized tensor was (0.0 where it holds the zero point)
                offset = f"{tag}r_padded_for_{dequantize.output[0]}"
                before[rounded] = [make("Pad", [tag + "r", *pad.input[1:2]], [offset])]
            after[rounded] = [make("Sub", [rounded, offset], [dequantize.output[0]])]
            dequantize.output[0] = rounded
        quantizer.input[0] = tag + "x"
    nodes = []
    for node in graph.node:
        nodes += [*before.get(node.output[0], []), node, *after.get(node.output[0], [])]
    del graph.node[:]
    graph.node.extend(nodes)
    return out


def measure(reference: Path, artifacts: list[Path], *, frames: int, eps: tuple[float, ...],
            draws: int = 0) -> list[dict]:
    """Per artifact and check size: the simulation vs FP32, each perturbed simulation vs it,
    and with `draws`, the weights-only graph and the dithered draws vs FP32."""
    from mtc import metrics
    from mtc.artifact.manifest import read_manifest
    from mtc.backends import OrtBackend
    from mtc.quant.checks import ReferenceAlphas
    from mtc.quant.data_plan import DataPlan, check_clips

    manifest = read_manifest(reference)
    io = manifest.io
    data = DataPlan(check_frames=frames,
                    settings=tuple((c.width, c.height, c.downsample_ratio) for c in manifest.checks()))
    clips = check_clips(io, data, photos=manifest.quantization.builtin_photos)
    print(f"FP32 reference on {len(clips)} check clips", file=sys.stderr)
    fp32 = ReferenceAlphas(io, OrtBackend(reference / manifest.model_file), clips)
    rows = []
    for artifact in artifacts:
        model = onnx.load(str(artifact / read_manifest(artifact).model_file))
        simulated = [(eps_value, OrtBackend(
            (model if eps_value == 0 else scaled_quantizer_inputs(model, 1 + eps_value)).SerializeToString(),
            optimization="none")) for eps_value in (0.0, *eps)]
        split = []
        if draws:
            split = [OrtBackend(activations_in_float(model).SerializeToString(), optimization="none"),
                     *(OrtBackend(dithered_quantizer_inputs(model, seed).SerializeToString(), optimization="none")
                       for seed in range(1, draws + 1))]
        for clip, expected in zip(fp32.clips, fp32.alphas):
            print(f"{artifact.name}: {clip.name}", file=sys.stderr)
            alphas = {eps_value: fp32.run(backend, clip) for eps_value, backend in simulated}
            base = alphas[0.0]

            def versus(got, want=expected):
                return {"mad": metrics.mad(got, want), "dtssd": metrics.dtssd(got, want)}

            row = {"artifact": artifact.name, "clip": clip.name, "frames": len(clip.frames),
                   "simulation_vs_fp32": versus(base),
                   "perturbed_vs_simulation": {f"{e:g}": versus(alphas[e], base) for e in eps}}
            if split:
                weights_only, *dithered = [np.asarray(fp32.run(backend, clip)) for backend in split]
                singles = [versus(d) for d in dithered]
                row["weights_only_vs_fp32"] = versus(weights_only)
                row["dithered"] = {"draws": draws,
                                   "one_draw_vs_fp32": {k: float(np.mean([s[k] for s in singles])) for k in singles[0]},
                                   "mean_of_draws_vs_fp32": versus(np.mean(dithered, axis=0))}
            rows.append(row)
    return rows


def render(result: dict) -> None:
    m = result["machine"]
    eps = result["eps"]
    lines = [
        "## Rounding noise: how far an INT8 graph carries a float-rounding-sized change", "",
        f"{ran_on(result, 'python benchmarks/bench_rounding_noise.py')}, onnxruntime {m['onnxruntime']}. "
        "ONNX Runtime's float simulation of each artifact's Q/DQ graph (no integer "
        f"kernels) on the built-in check clips of {Path(result['reference']).name}; alpha MAD ×1e3 / dtSSD ×1e2. "
        "\"× (1 + eps)\": every activation quantizer's input multiplied by it, against the unperturbed simulation; "
        "\"share\": its MAD over the simulation's MAD vs FP32.", "",
        "| artifact | clip | simulation vs FP32 | " + " | ".join(f"× (1 + {e:g}) vs simulation | share" for e in eps) + " |",
        "|---|---|---|" + "---|---|" * len(eps),
    ]
    for row in result["rows"]:
        base = row["simulation_vs_fp32"]
        cells = []
        for e in eps:
            moved = row["perturbed_vs_simulation"][f"{e:g}"]
            cells.append(f"{moved['mad']:.3g} / {moved['dtssd']:.3g} | {moved['mad'] / max(base['mad'], 1e-9):.0%}")
        lines.append(f"| {row['artifact']} | {row['clip']} | {_pair(base)} | " + " | ".join(cells) + " |")
    split = [row for row in result["rows"] if "dithered" in row]
    if split:
        draws = split[0]["dithered"]["draws"]
        lines += ["", f"Split by subtractive dither ({draws} draws of fresh rounding noise at every activation "
                  "quantizer; \"weights only\": the activation quantizers left out). The mean of the draws keeps "
                  "what every draw shares, the part that is not fresh noise; alpha MAD ×1e3 / dtSSD ×1e2 vs "
                  "FP32.", "",
                  "| artifact | clip | simulation | weights only | one dithered draw | mean of the draws |",
                  "|---|---|---|---|---|---|"]
        for row in split:
            dithered = row["dithered"]
            lines.append(f"| {row['artifact']} | {row['clip']} | {_pair(row['simulation_vs_fp32'])} | "
                         f"{_pair(row['weights_only_vs_fp32'])} | {_pair(dithered['one_draw_vs_fp32'])} | "
                         f"{_pair(dithered['mean_of_draws_vs_fp32'])} |")
    update_results("bench_rounding_noise", "\n".join(lines))


def _pair(scores: dict) -> str:
    return f"{scores['mad']:.3g} / {scores['dtssd']:.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", type=Path, nargs="+", help="INT8 artifacts quantized from --reference")
    parser.add_argument("--reference", type=Path, required=True, help="the FP32 artifact they were quantized from")
    parser.add_argument("--frames", type=int, default=16, help="check frames per clip [default: 16]")
    parser.add_argument("--eps", default="1e-6,1e-5", help="relative changes, comma-separated [default: 1e-6,1e-5]")
    parser.add_argument("--draws", type=int, default=0,
                        help="also split the error with this many dithered draws (at least 2; each a full run) "
                             "[default: 0, no split]")
    parser.add_argument("--json")
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()
    try:
        eps = tuple(float(e) for e in args.eps.split(","))
    except ValueError:
        parser.error(f"--eps takes numbers separated by commas, not {args.eps!r}")
    if any(not 0 < e < 1e-2 for e in eps):
        parser.error("--eps values must lie between 0 and 1e-2: larger ones are no rounding-sized change")
    if args.draws == 1 or args.draws < 0:
        parser.error(f"--draws {args.draws}: the mean of the draws needs at least 2 (or 0 for no split)")
    for folder in (args.reference, *args.artifacts):
        if not (folder / "manifest.json").exists():
            parser.error(f"{folder} is not an mtc artifact (no manifest.json): pass artifact folders")

    try:
        rows = measure(args.reference, list(args.artifacts), frames=args.frames, eps=eps, draws=args.draws)
    except UnsupportedGraph as problem:
        parser.error(f"--draws cannot split this artifact: {problem}")
    result = {"benchmark": "rounding_noise", "machine": machine(),
              "reference": str(args.reference), "eps": list(eps), "frames": args.frames, "draws": args.draws,
              "rows": rows}
    dump(result, args.json)
    if not args.no_results:
        render(result)


if __name__ == "__main__":
    main()
