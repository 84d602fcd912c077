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
Alpha MAD x1e3 and dtSSD x1e2, as everywhere in mtc.

    python benchmarks/bench_rounding_noise.py --reference artifacts/rvm-mobilenetv3-fp32 \\
        artifacts/rvm-int8 artifacts/rvm-int8-dense [--frames 16] [--eps 1e-6,1e-5] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import dump, machine, update_results  # noqa: E402


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


def measure(reference: Path, artifacts: list[Path], *, frames: int, eps: tuple[float, ...]) -> list[dict]:
    """Per artifact and check size: the simulation vs FP32, and each perturbed simulation vs it."""
    from mtc import metrics
    from mtc.artifact.manifest import read_manifest
    from mtc.backends import OrtBackend
    from mtc.quant.checks import ReferenceAlphas
    from mtc.quant.pipeline import DataPlan, check_clips

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
        for clip, expected in zip(fp32.clips, fp32.alphas):
            print(f"{artifact.name}: {clip.name}", file=sys.stderr)
            alphas = {eps_value: fp32.run(backend, clip) for eps_value, backend in simulated}
            base = alphas[0.0]
            rows.append({
                "artifact": artifact.name, "clip": clip.name, "frames": len(clip.frames),
                "simulation_vs_fp32": {"mad": metrics.mad(base, expected), "dtssd": metrics.dtssd(base, expected)},
                "perturbed_vs_simulation": {f"{e:g}": {"mad": metrics.mad(alphas[e], base),
                                                        "dtssd": metrics.dtssd(alphas[e], base)} for e in eps},
            })
    return rows


def render(result: dict) -> None:
    m = result["machine"]
    eps = result["eps"]
    lines = [
        "## Rounding noise: how far an INT8 graph carries a float-rounding-sized change", "",
        f"`python benchmarks/bench_rounding_noise.py` — {m['date']}, {m['cpu']} (class {result['cpu_class']}), "
        f"onnxruntime {m['onnxruntime']}. ONNX Runtime's float simulation of each artifact's Q/DQ graph (no integer "
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
        lines.append(f"| {row['artifact']} | {row['clip']} | {base['mad']:.3g} / {base['dtssd']:.3g} | "
                     + " | ".join(cells) + " |")
    update_results("bench_rounding_noise", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", type=Path, nargs="+", help="INT8 artifacts quantized from --reference")
    parser.add_argument("--reference", type=Path, required=True, help="the FP32 artifact they were quantized from")
    parser.add_argument("--frames", type=int, default=16, help="check frames per clip [default: 16]")
    parser.add_argument("--eps", default="1e-6,1e-5", help="relative changes, comma-separated [default: 1e-6,1e-5]")
    parser.add_argument("--json")
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()
    try:
        eps = tuple(float(e) for e in args.eps.split(","))
    except ValueError:
        parser.error(f"--eps takes numbers separated by commas, not {args.eps!r}")
    if any(not 0 < e < 1e-2 for e in eps):
        parser.error("--eps values must lie between 0 and 1e-2: larger ones are no rounding-sized change")
    for folder in (args.reference, *args.artifacts):
        if not (folder / "manifest.json").exists():
            parser.error(f"{folder} is not an mtc artifact (no manifest.json): pass artifact folders")

    from mtc.backends.cpu import cpu_class

    rows = measure(args.reference, list(args.artifacts), frames=args.frames, eps=eps)
    result = {"benchmark": "rounding_noise", "machine": machine(), "cpu_class": cpu_class(),
              "reference": str(args.reference), "eps": list(eps), "frames": args.frames, "rows": rows}
    dump(result, args.json)
    if not args.no_results:
        render(result)


if __name__ == "__main__":
    main()
