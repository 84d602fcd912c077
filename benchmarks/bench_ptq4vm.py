"""PTQ4VM vs plain calibration on the official RVM, every conv in INT8 (the `dense` placement),
side by side with the peers, on OpenVINO.

Artifacts, from the FP32 artifact with mtc's built-in calibration data, each quantized in a
child process (wall time and peak memory measured):

- `speed`: `mtc quantize --int8` as shipped (the `speed` placement: the layers that carry the
  compute, equalization, the closed-form affine fit, the float budget, gates and fallback);
- `dense-<method>`: `--preset dense` (every conv in INT8, uint8 activations), plain range
  calibration with each `--methods` entry (default: mse), then equalization and the
  closed-form affine fit; no float budget, gates or fallback, so it shows what it costs;
- `dense-ptq4vm`: the same plan learned with `--method ptq4vm --preset fast` (block
  reconstruction, then global affine calibration competing with the closed-form fit);
- `dense-ptq4vm-thorough`, with `--thorough`: the same learned with `--preset thorough`
  (three times the iterations, two samples per step, five times the GAC steps);
- `dense-outputs-mse`: the dense placement as it was before it dropped the Q/DQ on the convs'
  outputs (mse ranges), the evidence for that choice;
- `dense-mse-checked`, with `--check-footage VIDEO`: `dense-mse` checked on that video instead
  of the built-in clip, so the layers whose inputs the video drives past their calibrated
  ranges stay in float (range coverage). The video stands for the user's footage: never pass
  evalset footage, on which the artifacts are scored.
- `dense-mse-calibrated` and `dense-ptq4vm-calibrated`, with `--calib-footage VIDEO`:
  `dense-mse` and `dense-ptq4vm` calibrated (and learned) on the built-in clip plus that video
  (`--calib builtin --calib VIDEO`), and checked on `--check-footage` if given (other footage
  like the user's: calibrating and checking on the same frames would make the check no check).
  They are measured beside the targets, which are for the built-in data.

Then `bench_peers.py` runs them through mtc.runtime on OpenVINO beside plain ONNX Runtime FP32
(the speed and fidelity reference), OpenVINO FP32/BF16, ONNX Runtime's `quantize_static` and
NNCF's defaults, and, as a yardstick, the reference on frames with one gray level of noise,
interleaved frame by frame: once on the built-in clip and, with `--evalset`,
once on ground-truth composites (evalset foregrounds moving over the evalset videos).

Targets (issue 22): the dense PTQ4VM artifact within MAD <= 0.5 and dtSSD <= 0.5 of FP32 at
512x288 and at 1920x1080; its dtSSD vs FP32 at least 30% below the best plain calibrator's on the
same plan, MAD not worse; the fast preset within 15 minutes on 2 cores.

    python benchmarks/bench_ptq4vm.py [--artifact artifacts/rvm-mobilenetv3-fp32] [--work DIR]
        [--methods mse,percentile] [--evalset ../shared/evalset] [--check-footage street.mp4]
        [--calib-footage street_calib.mp4] [--thorough]
        [--frames 16] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    NEAR_SUBJECT,
    ONE_GRAY_LEVEL,
    away_cell,
    dump,
    ensure_artifact,
    machine,
    ran_on,
    run_measured,
    update_results,
)

HERE = Path(__file__).resolve().parent
PLAIN_METHODS = ("mse", "minmax", "percentile", "entropy")
TARGETS = {"mad": 0.5, "dtssd": 0.5, "dtssd_cut": 0.30, "minutes": 15.0}


def configurations(methods: tuple[str, ...], footage: Path | None = None,
                   calib_footage: Path | None = None, thorough: bool = False) -> dict[str, dict]:
    """name -> how `make` quantizes it (placement, method, PTQ4VM's preset if not `fast`, the
    check video if not the built-in clip, the video calibrated on beside the built-in clip)."""
    configs = {"speed": {"placement": "speed", "method": "mse", "shipped": True}}
    for method in methods:
        configs[f"dense-{method}"] = {"placement": "dense", "method": method, "shipped": False}
    configs["dense-ptq4vm"] = {"placement": "dense", "method": "ptq4vm", "shipped": False}
    if thorough:
        configs["dense-ptq4vm-thorough"] = {"placement": "dense", "method": "ptq4vm", "learning": "thorough",
                                            "shipped": False}
    configs["dense-outputs-mse"] = {"placement": "dense", "method": "mse", "shipped": False,
                                    "overrides": {"quantize_outputs": True, "split_outlier_channels": False}}
    if footage is not None:
        configs["dense-mse-checked"] = {"placement": "dense", "method": "mse", "shipped": False, "check": str(footage)}
    if calib_footage is not None:
        for method in ("mse", "ptq4vm"):  # the same data, plain and learned
            configs[f"dense-{method}-calibrated"] = {"placement": "dense", "method": method, "shipped": False,
                                                     "calib": str(calib_footage),
                                                     **({"check": str(footage)} if footage is not None else {})}
    return configs


def make(name: str, source: Path, output: Path, methods: tuple[str, ...], footage: Path | None,
         calib_footage: Path | None = None, thorough: bool = False) -> None:
    """Quantize one configuration (run in a child process, so its time and memory are its own)."""
    from mtc.quant.calibration import BUILTIN
    from mtc.quant.config import Fallback, Gates
    from mtc.quant.data_plan import DataPlan
    from mtc.quant.pipeline import quantize_artifact

    spec = configurations(methods, footage, calib_footage, thorough)[name]
    if spec["shipped"]:
        quantize_artifact(source, output, precision="int8", overwrite=True)
        return
    quantize_artifact(source, output, precision="int8", config=preset_of(spec),
                      gates=Gates(max_mad=None, max_dtssd=None), fallback=Fallback(enabled=False),
                      data=DataPlan(calib=(BUILTIN, spec["calib"]) if "calib" in spec else BUILTIN,
                                    check=spec.get("check")), overwrite=True)


def preset_of(spec: dict):
    """The INT8 configuration a non-shipped configuration quantizes with."""
    from mtc.quant.config import preset, ptq4vm_preset

    learning = ptq4vm_preset(spec.get("learning", "fast")) if spec["method"] == "ptq4vm" else None
    return preset(spec["placement"], method="mse" if learning else spec["method"], learning=learning,
                  **spec.get("overrides", {}))


def make_all(source: Path, work: Path, prefix: str, methods: tuple[str, ...],
             footage: Path | None = None, calib_footage: Path | None = None,
             thorough: bool = False) -> tuple[dict[str, Path], dict]:
    """Every configuration quantized from `source` into `work/<prefix>-<name>`, each in a child
    process (wall time and peak memory measured), reused when already there; the folders, and
    per configuration its settings, time, memory and layer counts."""
    folders, made = {}, {}
    for name, spec in configurations(methods, footage, calib_footage, thorough).items():
        folders[name] = work / f"{prefix}-{name}"
        timing = folders[name] / "bench_timing.json"
        if (folders[name] / "manifest.json").exists() and timing.exists():
            measured = json.loads(timing.read_text())
            print(f"{name}: reusing {folders[name]}", file=sys.stderr)
        else:
            print(f"{name}: quantizing ({spec['placement']} placement, {spec['method']})", file=sys.stderr)
            run = run_measured([sys.executable, str(Path(__file__).resolve()), "--make", name, "--output",
                                str(folders[name]), "--artifact", str(source), "--methods", ",".join(methods),
                                *(("--check-footage", str(footage)) if footage is not None else ()),
                                *(("--calib-footage", str(calib_footage)) if calib_footage is not None else ()),
                                *(("--thorough",) if thorough else ())])
            measured = {"seconds": run["seconds"], "peak_mib": run["peak_mib"]}
            timing.write_text(json.dumps(measured))
            print(f"{name}: {measured['seconds'] / 60:.1f} min, peak {measured['peak_mib']:.0f} MiB", file=sys.stderr)
        made[name] = {**spec, **measured, **layers(folders[name])}
    return folders, made


def placement_label(info: dict) -> str:
    """A configuration's placement as the results tables name it."""
    outputs = " + conv outputs" if info.get("overrides", {}).get("quantize_outputs") else ""
    calibrated = f", calibrated also on {Path(info['calib']).name}" if info.get("calib") else ""
    checked = f", checked on {Path(info['check']).name}" if info.get("check") else ""
    return info["placement"] + outputs + calibrated + checked


def layers_label(info: dict) -> str:
    """A configuration's INT8 layer count as the results tables show it, naming the float convs
    that read split-off outlier channels (mtc.quant.outliers)."""
    outliers = info.get("outlier_convs", 0)
    return f"{info['int8_layers']}/{info['quantized_layers']}" + (f" + {outliers} outlier float" if outliers else "")


def parse_methods(parser: argparse.ArgumentParser, text: str) -> tuple[str, ...]:
    """--methods as a tuple of plain calibrators (a usage error names any other)."""
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = sorted(set(methods) - set(PLAIN_METHODS))
    if unknown:
        parser.error(f"--methods: {', '.join(unknown)} is not one of {', '.join(PLAIN_METHODS)}")
    return methods


def footage_arg(parser: argparse.ArgumentParser, flag: str, video: Path | None, evalset: Path | None) -> Path | None:
    """--check-footage or --calib-footage, refused when missing or inside the evalset (the
    artifacts are scored there)."""
    if video is None:
        return None
    if not video.is_file():
        parser.error(f"{flag} {video}: no such video file")
    if evalset is not None and video.resolve().is_relative_to(evalset.resolve()):
        parser.error(f"{flag} {video} is evalset footage: quantizing on it would tune the artifact to the "
                     "clips it is scored on; pass other footage")
    return video.resolve()


def layers(folder: Path) -> dict:
    report = json.loads((folder / "report.json").read_text())["int8"]
    learned = report.get("learning") or {}
    return {"int8_layers": report["int8_layers"], "quantized_layers": report["quantized_layers"],
            "outlier_convs": len(report.get("split_outlier_channels") or []),
            "affine_choice": report.get("affine_choice"), "learning_timings": learned.get("timings")}


def peers(artifacts: dict[str, Path], args, evalset: Path | None) -> dict:
    """bench_peers.py on the artifacts (OpenVINO), its JSON."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [sys.executable, str(HERE / "bench_peers.py"), "--no-results", "--json", out.name, "--one-gray-level",
                   "--frames", str(args.frames), "--rounds", str(args.rounds), "--threads", str(args.threads),
                   *(arg for folder in artifacts.values() for arg in ("--artifact", f"{folder}@openvino"))]
        if evalset is not None:
            command += ["--evalset", str(evalset), "--clips", str(args.clips)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        return json.loads(Path(out.name).read_text())


def label_of(config: dict, folders: dict[str, str]) -> str | None:
    """Which of our artifacts a bench_peers configuration is: bench_peers labels the first mtc
    artifact of a kind by kind alone (`mtc_int8_openvino`), the others with their folder's name."""
    named = next((name for name, folder in folders.items() if config["label"].endswith("_" + Path(folder).name)), None)
    if named is None and config["label"].startswith("mtc_"):
        return next(iter(folders))
    return named


def verdicts(result: dict) -> list[str]:
    """The issue's targets, each with what was measured (for each PTQ4VM preset quantized)."""
    lines = []
    made = result["artifacts"]
    if "dense-ptq4vm" in made:
        minutes = made["dense-ptq4vm"]["seconds"] / 60
        lines.append(f"- fast preset on 2 cores: {minutes:.1f} min for the whole quantization "
                     f"({'met' if minutes <= TARGETS['minutes'] else 'missed'}: <= {TARGETS['minutes']:.0f} min)")
    if "dense-ptq4vm-thorough" in made:
        lines.append(f"- thorough preset on 2 cores: {made['dense-ptq4vm-thorough']['seconds'] / 60:.1f} min "
                     "(no time target)")
    for source, run in result["runs"].items():
        for case in run["cases"]:
            rows = {label_of(c, result["folders"]): c for c in case["configs"]}
            plain = [rows[n] for n in rows if n in made and made[n]["placement"] == "dense"
                     and made[n]["method"] != "ptq4vm" and not made[n].get("overrides") and not made[n].get("check")
                     and not made[n].get("calib")]
            # The targets' artifacts: PTQ4VM on the built-in data, one per preset quantized.
            for name in [n for n, info in made.items() if info["method"] == "ptq4vm" and not info.get("calib")]:
                learned, learning = rows.get(name), made[name].get("learning", "fast")
                if learned is None or learned["vs_fp32"] is None:
                    continue
                mad, dtssd = learned["vs_fp32"]["mad"], learned["vs_fp32"]["dtssd"]
                met = mad <= TARGETS["mad"] and dtssd <= TARGETS["dtssd"]
                lines.append(f"- {source}, {case['resolution']}: dense PTQ4VM ({learning}) vs FP32 MAD {mad:.2f} / "
                             f"dtSSD {dtssd:.2f} ({'met' if met else 'missed'}: <= {TARGETS['mad']} / "
                             f"{TARGETS['dtssd']})")
                if plain:
                    best = min(plain, key=lambda c: c["vs_fp32"]["dtssd"])
                    cut, change = _change(learned, best)
                    ok = cut >= TARGETS["dtssd_cut"] and mad <= best["vs_fp32"]["mad"]
                    lines.append(f"  - vs the best plain calibrator on the same plan "
                                 f"({label_of(best, result['folders'])}: MAD {best['vs_fp32']['mad']:.2f} / dtSSD "
                                 f"{best['vs_fp32']['dtssd']:.2f}): {change} ({'met' if ok else 'missed'}: >= "
                                 f"{100 * TARGETS['dtssd_cut']:.0f}% lower, MAD not worse)")
                if learning == "fast":
                    lines += _footage_comparison(rows, made)
    return lines


def _change(row: dict, reference: dict) -> tuple[float, str]:
    """How much lower `row`'s dtSSD vs FP32 is than `reference`'s (a share), and in words with
    whether its MAD is worse."""
    (mad, dtssd), (reference_mad, reference_dtssd) = ((r["vs_fp32"]["mad"], r["vs_fp32"]["dtssd"])
                                                      for r in (row, reference))
    cut = 1 - dtssd / reference_dtssd
    return cut, (f"dtSSD {abs(100 * cut):.0f}% {'lower' if cut >= 0 else 'higher'}, "
                 f"MAD {'not worse' if mad <= reference_mad else 'worse'}")


def _footage_comparison(rows: dict, made: dict) -> list[str]:
    """PTQ4VM vs MSE, both calibrated also on the user's footage: beside the targets."""
    learned, plain = rows.get("dense-ptq4vm-calibrated"), rows.get("dense-mse-calibrated")
    if learned is None or plain is None or learned["vs_fp32"] is None or plain["vs_fp32"] is None:
        return []
    _, change = _change(learned, plain)
    return [f"  - beside the targets, both calibrated also on {Path(made['dense-ptq4vm-calibrated']['calib']).name}: "
            f"PTQ4VM MAD {learned['vs_fp32']['mad']:.2f} / dtSSD {learned['vs_fp32']['dtssd']:.2f} vs MSE "
            f"{plain['vs_fp32']['mad']:.2f} / {plain['vs_fp32']['dtssd']:.2f} ({change})"]


def render(result: dict) -> None:
    m = result["machine"]
    made = result["artifacts"]
    lines = [
        "## PTQ4VM vs plain calibration: RVM MobileNetV3, every conv in INT8, on OpenVINO", "",
        f"{ran_on(result, 'python benchmarks/bench_ptq4vm.py')}, {result['threads']} threads, onnxruntime {m['onnxruntime']}, openvino "
        f"{m['libraries'].get('openvino', 'absent')}. Quantized from the official FP32 file with the built-in data; "
        f"then `bench_peers.py` ({result['frames']} frames per clip, {result['rounds']} interleaved rounds; FPS ratio "
        "× plain ONNX Runtime FP32 on the same frames; MAD ×1e3, dtSSD ×1e2 and Grad /1e3 of alpha vs FP32 and vs "
        "ground truth).",
        "",
        "| artifact | placement | method | INT8 layers | quantize time | peak memory |",
        "|---|---|---|---|---|---|",
    ]
    for name, info in made.items():
        method = info["method"] + (f" ({info['learning']})" if info.get("learning") else "")
        lines.append(f"| {name} | {placement_label(info)} | {method} | {layers_label(info)} "
                     f"| {info['seconds'] / 60:.1f} min | {info['peak_mib'] / 1024:.1f} GB |")
    for source, run in result["runs"].items():
        away = run.get("evalset") is not None  # ground truth locates the subject
        lines += ["", f"### {source}", "",
                  "| resolution | configuration | × ORT FP32 | MAD vs FP32 | dtSSD vs FP32 | Grad vs FP32 | MAD vs GT "
                  "| dtSSD vs GT | Grad vs GT |" + (" MAD vs FP32 away from the subject |" if away else ""),
                  "|---|---|---|---|---|---|---|---|---|" + ("---|" if away else "")]
        fmt = lambda d, k: f"{d[k]:.3g}" if d else "–"  # noqa: E731
        for case in run["cases"]:
            for c in case["configs"]:
                name = label_of(c, result["folders"]) or c["label"]
                row = " | ".join(fmt(c[side], metric) for side in ("vs_fp32", "vs_gt") for metric in ("mad", "dtssd", "grad"))
                if away:
                    row += f" | {away_cell(c)}"
                lines.append(f"| {case['resolution']} | {name} | {c['speedup_vs_ort_fp32']:.2f}× | {row} |")
        if away:
            lines += ["", f"\"Away from the subject\": the part of the MAD vs FP32 farther than {NEAR_SUBJECT:.0%} of the "
                          "frame height from the subject's ground-truth alpha, where the background videos show people "
                          "of their own."]
    if any(c["label"] == ONE_GRAY_LEVEL for run in result["runs"].values() for case in run["cases"]
           for c in case["configs"]):
        lines += ["", f"`{ONE_GRAY_LEVEL}` is no peer but a yardstick: plain ONNX Runtime FP32 on the frames with "
                      "each pixel moved by one gray level at random (-1, 0, +1 with probabilities 1/4, 1/2, 1/4), "
                      "scored against itself on the clean frames."]
    lines += ["", "Targets:", *verdicts(result)]
    update_results("bench_ptq4vm", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, help="FP32 RVM artifact [default: artifacts/rvm-mobilenetv3-fp32]")
    parser.add_argument("--work", type=Path, help="folder for the quantized artifacts, reused when present "
                        "(default: temporary)")
    parser.add_argument("--methods", default="mse", help="plain calibrators on the dense plan [default: mse]")
    parser.add_argument("--evalset", type=Path, help="evalset folder: also score on ground-truth composites")
    parser.add_argument("--clips", type=int, default=3, help="evalset clips per resolution [default: 3]")
    parser.add_argument("--check-footage", type=Path, metavar="VIDEO",
                        help="also quantize dense-mse checked on this video (footage like the user's, not the "
                             "evalset's), its outgrown layers kept in float")
    parser.add_argument("--calib-footage", type=Path, metavar="VIDEO",
                        help="also quantize dense-mse calibrated on the built-in clip plus this video (other "
                             "footage than --check-footage's, which checks it)")
    parser.add_argument("--thorough", action="store_true",
                        help="also quantize dense-ptq4vm-thorough (PTQ4VM's thorough preset; about six times "
                             "as long to learn)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    parser.add_argument("--no-results", action="store_true")
    parser.add_argument("--make", help=argparse.SUPPRESS)  # internal: quantize one configuration
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    methods = parse_methods(parser, args.methods)
    footage = footage_arg(parser, "--check-footage", args.check_footage, args.evalset)
    calib_footage = footage_arg(parser, "--calib-footage", args.calib_footage, args.evalset)
    if calib_footage is not None and calib_footage == footage:
        parser.error("--calib-footage and --check-footage are the same video: checking on the frames it was "
                     "calibrated on is no check; pass other footage to one of them")
    source = ensure_artifact(args.artifact)
    if args.make:
        make(args.make, source, args.output, methods, footage, calib_footage, args.thorough)
        return

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        folders, made = make_all(source, work, "rvm-int8", methods, footage, calib_footage, args.thorough)
        runs = {"built-in clip": peers(folders, args, None)}
        if args.evalset is not None:
            runs["evalset composites (ground truth)"] = peers(folders, args, args.evalset)
        result = {"benchmark": "ptq4vm_dense", "machine": machine(), "threads": args.threads,
                  "frames": args.frames, "rounds": args.rounds, "artifacts": made,
                  "folders": {name: str(folder) for name, folder in folders.items()}, "runs": runs}
        dump(result, args.json)
        if not args.no_results:
            render(result)


if __name__ == "__main__":
    main()
